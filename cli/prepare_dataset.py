"""``quadvault prepare-dataset``: labels.json -> JPEG frames + dataset.parquet (parse options, call the library)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from quadvault_dali._lifetime import STOP_SIGNALS, signal_name
from quadvault_dali._supervisor import report_done, runs_in_process
from quadvault_dali.dataset import DATASET_FILE
from quadvault_dali.dataset import TEST_FRACTION, prepare_dataset as run_prepare
from quadvault_dali.dataset._supervise import TYPED_OVERWRITE_ENV

from ._options import (command_line, device_option, fps_option, long_job, sampling_option, stops_cleanly,
                       terminal_may_be_gone)


@click.command("prepare-dataset")
@click.argument("labels", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.option("--merge", is_flag=True,
              help="Update an existing dataset: keep extracted frames and splits, add new videos, move "
                   "re-labelled ones, drop unlabelled ones.")
@click.option("--overwrite", is_flag=True, help="Rebuild an existing dataset from scratch.")
@fps_option
@click.option("--size", type=click.IntRange(min=32, max=2048), default=256, show_default=True,
              help="Short side of the stored frames in pixels (training crops from these).")
@sampling_option
@device_option
@click.option("--skip-missing", is_flag=True,
              help="Skip labelled files/folders that do not exist or are unreadable instead of stopping.")
@click.option("--quality", type=click.IntRange(min=50, max=100), default=90, show_default=True,
              help="JPEG quality of the stored frames.")
@click.option("--test-fraction", type=click.FloatRange(0.0, 0.5), default=None,
              help=f"Share of each class's videos held out as the test split, when every class has 10 or more "
                   f"videos: train measures the final model on them, having used them for nothing else. 0: none. "
                   f"[default: {TEST_FRACTION}; with --merge into a dataset without a test split, none]")
@click.option("--restarts", type=click.IntRange(0, 1000), default=3, show_default=True,
              help="The extraction runs in a child process; if a decoder or driver crash kills it (a signal, not a "
                   "Python error), it is started again and goes on, the videos it was decoding checked one at a "
                   "time first (a crasher is left out): at most N restarts in a row without a new video. 0: run "
                   "in this process, never restart.")
def prepare_dataset(labels: Path, out: Path, merge: bool, overwrite: bool, fps: float, size: int, mode: str,
                    device: str, skip_missing: bool, quality: int, test_fraction: float | None, restarts: int) -> None:
    """Sample the labelled videos in LABELS into JPEG frames and OUT/dataset.parquet.

    LABELS is a JSON file {"highlights": [...], "normal": [...]} whose entries are video files,
    folders (every video under them) or glob patterns; relative paths are relative to the file.
    The split is by video, so no video is on two sides: 20% of each class for validation (at least one
    video of a class of two or more), which picks the best epoch and the threshold; 15% for test (when every
    class has 10 or more videos), held out for the final, honest measurement; the rest trains. Chunks of one
    recording stay together.
    Interrupted, the same command (without --overwrite) goes on: videos whose frames were all written are
    not extracted again.

    \b
    Example:
      quadvault prepare-dataset labels.json data/
      quadvault prepare-dataset labels.json data/ --merge     # after labelling more clips
    """
    if merge and overwrite:
        raise click.UsageError("--merge and --overwrite exclude each other")
    argv = command_line()
    if restarts and argv is not None and not runs_in_process():
        sys.exit(_supervise(argv, out, restarts, device))
    long_job()

    seen: list[int] = []

    def stopped(by_signal: bool) -> str:
        how = f"Stopped ({signal_name(seen[0])})" if by_signal else "Interrupted"
        # --overwrite removes the old table with the first new frame: before that, nothing was replaced yet (and
        # a child restarted after a crash runs without it, though the user typed it)
        typed = overwrite or (runs_in_process() and os.environ.get(TYPED_OVERWRITE_ENV) == "1")
        begun = typed and not (out.expanduser() / DATASET_FILE).exists()
        return (f"{how}; the videos whose frames were all written are kept: run the same command"
                f"{' without --overwrite' if begun else ''} to go on.")

    # a closed terminal's SIGHUP stops like Ctrl-C too: from the terminal, and passed on by the supervisor
    with stops_cleanly(stopped, STOP_SIGNALS, seen=seen):
        result = run_prepare(labels, out, merge=merge, overwrite=overwrite, fps=fps, size=size,
                             mode=mode, device=device, skip_missing=skip_missing, quality=quality,  # type: ignore[arg-type]
                             test_fraction=test_fraction)
    report_done()  # the dataset is written: a crash from here on (printing, exiting) is no reason to start again
    for message in result.warnings:
        click.secho(f"Warning: {message}", fg="yellow", err=True)
    if result.failed:
        click.secho(f"Failed to decode {len(result.failed)} video{'s' if len(result.failed) != 1 else ''} "
                    "(left out):", fg="yellow", err=True)
        for path, error in result.failed:
            click.echo(f"  {path}: {error.reason} [{error.kind}]", err=True)
    click.echo(f"Dataset prepared: {result.frames:,} frames — Highlights: {result.frames_by_label[1]:,} — "
               f"Normal: {result.frames_by_label[0]:,} — Saved to: {result.path}")
    videos = result.videos_by_split
    held_out = f", test {videos['test']:,}" if videos.get("test") else ""
    line = (f"Videos: {sum(videos.values()):,} (train {videos['train']:,}, val {videos['val']:,}{held_out}) — "
            f"extracted {len(result.extracted):,}, reused {len(result.reused):,}")
    if result.relabelled:
        line += f", relabelled {len(result.relabelled):,}"
    if result.dropped:
        line += f", dropped {len(result.dropped):,} no longer labelled"
    click.echo(line)


def _supervise(argv: list[str], out: Path, restarts: int, device: str) -> int:
    """Runs this command line again in a child with restarts after crashes (``dataset._supervise``): its status."""
    from quadvault_dali.dataset._supervise import PrepareSupervisor

    supervisor = PrepareSupervisor(argv, out, restarts, device=device)
    code = supervisor.run()
    if supervisor.crashes:
        times = f"{len(supervisor.crashes)} time{'s' if len(supervisor.crashes) > 1 else ''}"
        with terminal_may_be_gone():  # SIGHUP: the status says what happened
            click.echo(f"The prepare-dataset process crashed {times} ({', '.join(supervisor.crashes)}) and was started "
                       f"again{'; the summary above is the last run' if code == 0 else ''}.", err=True)
    return code
