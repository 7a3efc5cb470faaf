"""``quadvault scan`` and ``quadvault batch-classify``: parse options, then call ``scan_library``."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import click

from quadvault_dali.cli._options import (command_line, device_option, fps_option, long_job, sampling_option,
                                         stops_cleanly, terminal_may_be_gone)
from quadvault_dali.progress import progress_bar


def _parse_shard(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int]:
    if value is None:
        return (0, 1)
    try:
        i, n = (int(x) for x in value.split("/"))
    except ValueError:
        raise click.BadParameter(f"expected i/n like 0/4, got {value!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise click.BadParameter(f"need 0 <= i < n (parts count from 0: a job array --array=0-{max(n, 1) - 1} "
                                 f"for {n} parts), got {value!r}")
    return (i, n)


def card_threshold(models: tuple[str, ...]) -> float:
    """The models' decision threshold from their cards (the mean over an ensemble), as test-video's and
    evaluate's verdicts, without loading their weights."""
    from quadvault_dali.model import decision_threshold, mean_threshold, read_card

    return mean_threshold(decision_threshold(read_card(m)) for m in models)


def scan_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The options ``scan`` and ``batch-classify`` share."""
    opts = [
        click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=None,
                     help="A video is a highlight when its score (mean of its seconds) reaches this. Default: the "
                          "threshold in the model card (tuned on validation videos; the mean over an ensemble), "
                          "as test-video and evaluate use."),
        sampling_option, fps_option, device_option,
        click.option("--streams", type=click.IntRange(1, 64), default=4, show_default=True,
                     help="Videos decoded at once (per GPU, per --processes)."),
        click.option("--processes", type=click.IntRange(1, 64), default=1, show_default=True,
                     help="Decoding processes per GPU, each with --streams streams: a decoder that crashes or "
                          "hangs on a damaged file then costs one video, not the scan (docs/scan.md says what "
                          "it does to speed)."),
        click.option("--prepare-processes", type=click.IntRange(0, 64), default=0, show_default=True,
                     help="Experimental, GPU only: probe videos and cut their clips in N worker processes "
                          "instead of threads of the decoding process (on an H100: keyframe scans 1.14x and "
                          "1.29x faster in two leases, 0.52x the time to read the library; sampling at 4 streams "
                          "no faster than threads). 0: threads."),
        click.option("--decoder", "decode_client", type=click.Choice(["dali", "ffmpeg"]), default="dali",
                     show_default=True,
                     help="Experimental, GPU only: what decodes on NVDEC. dali: DALI's video decoder, a new one "
                          "per clip; ffmpeg: FFmpeg's decoders through PyAV, one kept open per stream and fed "
                          "every video's packets (H.264 and HEVC; other codecs decode on the CPU). On an H200 "
                          "with --processes 4 --streams 2 it sampled 2.1x the 1080p frames/s of the DALI "
                          "default, but an H100 scan of 200 videos took 2.1x as long: its processes start "
                          "slowly and decoding is not what bounds a scan (docs/scan.md)."),
        click.option("--batch-size", type=click.IntRange(1, 4096), default=64, show_default=True,
                     help="Frames per inference batch (mixing videos)."),
        click.option("--gpus", default=None, metavar="all|0,1",
                     help="One worker process per listed GPU, sharing the work."),
        click.option("--shard", callback=_parse_shard, default=None, metavar="i/n",
                     help="Scan only part i of n, i from 0 to n-1 (deterministic by path), for job arrays across "
                          "machines."),
        click.option("--resume/--no-resume", default=True, show_default=True,
                     help="Skip videos the output already holds with the same path (or moved: same name, size and "
                          "mtime), size, mtime, models and --fps (exact frames when --sampling exact); files that "
                          "could not be read are tried again."),
        click.option("--retry-errors", is_flag=True, help="On resume, scan videos that failed before again."),
        click.option("--replace-models", is_flag=True,
                     help="--out holds results of this library by other models: score those videos again with "
                          "these models, retiring the old rows (without it the scan refuses; one --out per model "
                          "keeps both). Rows of an ensemble that included these models are rebuilt from their "
                          "stored scores, without decoding."),
        click.option("--restarts", type=click.IntRange(0, 1000), default=3, show_default=True,
                     help="The scan runs in a child process; if a decoder or driver crash kills it (a signal, not a "
                          "Python error), it is started again and resumes, the videos it was decoding checked one "
                          "at a time first: at most N restarts in a row without a new video saved. 0: scan in this "
                          "process, never restart."),
        click.option("--shard-videos", type=click.IntRange(1), default=200, show_default=True,
                     help="Start a new Parquet shard after this many videos..."),
        click.option("--shard-seconds", type=click.FloatRange(1.0), default=60.0, show_default=True,
                     help="...or after this many seconds, whichever comes first."),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


def _run(libraries: tuple[str, ...], models: tuple[str, ...], out: Path, highlights: Path | None,
         kw: dict[str, Any]) -> None:
    from quadvault_dali._supervisor import runs_in_process

    argv = command_line()
    if kw["restarts"] and argv is not None and not runs_in_process():
        sys.exit(_supervise(argv, out, kw))
    if not runs_in_process():  # --restarts 0: this process scans; torch's OpenMP is not loaded yet
        from quadvault_dali.scan.supervise import thread_environment

        for name, value in thread_environment().items():
            os.environ.setdefault(name, value)

    from quadvault_dali.device import resolve_device
    from quadvault_dali.errors import BackendUnavailableError
    from quadvault_dali._lifetime import STOP_SIGNALS, signal_name
    from quadvault_dali.scan.parallel import WorkerCrashed, parse_gpus
    from quadvault_dali.scan.runner import ScanOptions, scan_library
    from quadvault_dali._supervisor import DONE_FD_ENV, WORKER_CRASH_EXIT, report_done
    from quadvault_dali.scan.supervise import SHARD_SECONDS_ENV

    gpus = None
    if kw["gpus"]:
        if kw["device"] == "cpu":
            raise BackendUnavailableError("--gpus needs the GPU backend", hint="drop --device cpu or --gpus")
        if resolve_device(kw["device"]) != "gpu":
            from quadvault_dali.device import gpu_status

            raise BackendUnavailableError(f"--gpus needs CUDA GPUs, but {gpu_status()[1]}", hint="drop --gpus")
        gpus = parse_gpus(kw["gpus"])
    if kw["decode_client"] != "dali" and kw["device"] == "cpu":
        raise click.UsageError(f"--decoder {kw['decode_client']} decodes on the GPU's NVDEC; --device cpu decodes "
                               "with PyAV on the CPU: drop one of them")
    shard_seconds = kw["shard_seconds"]
    if runs_in_process() and os.environ.get(SHARD_SECONDS_ENV):  # a restart after crashes that saved nothing
        shard_seconds = min(shard_seconds, float(os.environ[SHARD_SECONDS_ENV]))
    threshold = kw["threshold"] if kw["threshold"] is not None else card_threshold(models)
    options = ScanOptions(out_dir=out, threshold=threshold, device=kw["device"], mode=kw["mode"],
                          fps=kw["fps"], streams=kw["streams"], processes=kw["processes"],
                          prepare_processes=kw["prepare_processes"], decode_client=kw["decode_client"],
                          batch_size=kw["batch_size"], resume=kw["resume"],
                          retry_errors=kw["retry_errors"], replace_models=kw["replace_models"], shard=kw["shard"],
                          shard_videos=kw["shard_videos"],
                          shard_seconds=shard_seconds, highlights_path=highlights)
    with progress_bar(None, "Scanning", unit="video") as bar:
        started = time.perf_counter()

        def progress(stats: Any, total: int) -> None:
            if bar.total != total:
                bar.total = total
            elapsed = max(time.perf_counter() - started, 1e-6)
            bar.set_postfix_str(f"{stats.frames / elapsed:.0f} frames/s, {stats.bytes_read / elapsed / 1e6:.1f} MB/s, "
                                f"{stats.errors} errors", refresh=False)
            bar.update(stats.videos - bar.n)

        seen: list[int] = []

        def stopped(by_sigterm: bool) -> str:
            bar.close()
            how = f"Stopped ({signal_name(seen[0])})" if by_sigterm else "Interrupted"
            return f"{how}. Finished videos are saved in {out}; {_resume_hint(kw)}."

        # a batch system's SIGTERM (preemption, time limit) and a closed terminal's SIGHUP stop like Ctrl-C, once
        # each process: Ctrl-C reaches a supervised scan from the terminal and from its supervisor
        with stops_cleanly(stopped, STOP_SIGNALS, seen=seen):
            long_job()
            try:
                summary = scan_library(libraries, options, model_paths=models, gpus=gpus, on_progress=progress)
            except WorkerCrashed as exc:
                if not os.environ.get(DONE_FD_ENV):  # not under a supervisor: an error like any other
                    raise
                bar.close()
                reason = exc.args[0] if exc.args else str(exc)
                click.secho(f"A GPU worker crashed ({reason}); the scan starts again.", fg="yellow", err=True)
                sys.exit(WORKER_CRASH_EXIT)  # the supervisor starts the scan again, as after its own crash
    report_done()  # everything is saved: a crash from here on (printing, exiting) is no reason to scan again
    with terminal_may_be_gone():  # a hangup the scan outlived: the results are on disk
        _print_summary(summary)


def _size(n: int) -> str:
    """Bytes in the unit that shows them: a run over small clips read "0.1 MB of 0.0 MB"."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,} bytes"


def _print_summary(summary: Any) -> None:
    run = summary.run
    rate = run.videos / summary.wall_s if summary.wall_s else 0.0
    click.echo(f"This run: {run.videos:,} videos scanned ({run.errors} errors), {summary.skipped:,} already done, "
               f"{summary.wall_s:.1f} s, {rate:.1f} videos/s, {_size(run.bytes_read)} read of {_size(run.file_bytes)}.")
    if run.cpu_fallbacks:
        click.echo(f"{run.cpu_fallbacks:,} videos were decoded (in part) on the CPU: NVDEC cannot or did not "
                   "decode them (see the decoder_note column of the videos table).")
    if summary.unreadable:
        shown = ", ".join(str(p) for p in summary.unreadable[:3])
        more = f" and {len(summary.unreadable) - 3} more" if len(summary.unreadable) > 3 else ""
        n = len(summary.unreadable)
        click.echo(f"Warning: {n} {'folder or link' if n == 1 else 'folders or links'} could not be read, so their "
                   f"videos are not in this scan (earlier rows kept): {shown}{more}", err=True)
    if summary.not_utf8:
        shown = ", ".join(summary.not_utf8[:3])
        more = f" and {len(summary.not_utf8) - 3} more" if len(summary.not_utf8) > 3 else ""
        click.echo(f"Warning: {len(summary.not_utf8)} videos were skipped because their paths are not valid UTF-8 "
                   f"(rename them to scan them): {shown}{more}", err=True)
    failed = summary.totals.failed
    if failed:
        n = summary.totals.errors
        click.echo(f"Failed videos ({n:,} in {summary.out_dir}, each with an error row; a scan tries one again once "
                   f"it changes, or with --retry-errors):")
        for message in failed:
            click.echo(f"  {message}")
        if n > len(failed):
            quoted = str(summary.out_dir).replace("'", "''")  # SQL's quote in a quoted name: "John's drive"
            click.echo(f"  ... and {n - len(failed):,} more: SELECT path, error_message FROM "
                       f"'{quoted}/videos/*.parquet' WHERE status = 'error' (DuckDB)")
    click.echo(f"Highlights: {summary.highlights_path}")
    click.echo(summary.line)


def _supervise(argv: list[str], out: Path, kw: dict[str, Any]) -> int:
    """Runs this command line again in a child with restarts after crashes (``scan.supervise``): its exit status."""
    from quadvault_dali.scan.shards import shard_tag
    from quadvault_dali.scan.supervise import ScanSupervisor

    tag = shard_tag(kw["shard"])  # this job's shards, not its --shard siblings'
    supervisor = ScanSupervisor(argv, out, kw["restarts"], tag=tag, device=kw["device"],
                            shard_seconds=kw["shard_seconds"])
    code = supervisor.run()
    with terminal_may_be_gone():  # SIGHUP: the status says what happened
        _report_supervision(supervisor, code, out, kw)
    return code


def _report_supervision(supervisor: Any, code: int, out: Path, kw: dict[str, Any]) -> None:
    from quadvault_dali._lifetime import signal_name
    from quadvault_dali._supervisor import STOP_STATUSES

    if supervisor.crashes:
        times = f"{len(supervisor.crashes)} time{'s' if len(supervisor.crashes) > 1 else ''}"
        what = (f"the counts above are the last run's. Every finished video is in {out}" if code == 0
                else f"finished videos are saved in {out}")
        click.echo(f"The scan process crashed {times} ({', '.join(supervisor.crashes)}) and was started again; "
                   f"{what}.", err=True)
    if supervisor.stopped_by is not None and code not in STOP_STATUSES:  # stopped before the child could say so
        click.echo(f"Stopped ({signal_name(supervisor.stopped_by)}). Finished videos are saved in {out}; "
                   f"{_resume_hint(kw)}.", err=True)


def _resume_hint(kw: dict[str, Any]) -> str:
    return "run the same command to resume" if kw["resume"] else "run the command again without --no-resume to resume"


@click.command("scan")
@click.argument("library", nargs=-1, required=True, type=click.Path(exists=True, file_okay=True))
@click.option("-m", "--model", "models", multiple=True, required=True, type=click.Path(exists=True),
              help="Model folder (or model.json); repeat for an ensemble (scores are averaged).")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder for seconds/, videos/ and highlights.json (never inside LIBRARY).")
@scan_options
def scan(library: tuple[str, ...], models: tuple[str, ...], out: Path, **kw: Any) -> None:
    """Score every video in LIBRARY at --fps frames per second (default 1) into Parquet shards in --out.

    Interrupted scans resume where they stopped (same command); changed files are rescanned.

    \b
    Examples:
      quadvault scan /footage --model model/ --out scan/
      quadvault scan /footage -m model_a/ -m model_b/ --out scan/ --gpus all
      quadvault scan /footage -m model/ -o /shared/scan --shard $SLURM_ARRAY_TASK_ID/16  # --array=0-15
      # the top 20, with DuckDB (pip install -e '.[analytics]', or the duckdb CLI):
      python3 -c "import duckdb; duckdb.sql(\\"SELECT path, score FROM 'scan/videos/*.parquet' ORDER BY score DESC LIMIT 20\\").show()"
    """
    _run(library, models, out, None, kw)


@click.command("batch-classify")
@click.argument("library", type=click.Path(exists=True, file_okay=True))
@click.argument("model", type=click.Path(exists=True))
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-m", "--model", "extra_models", multiple=True, type=click.Path(exists=True),
              help="More models for an ensemble.")
@scan_options
def batch_classify(library: str, model: str, output: Path, extra_models: tuple[str, ...], **kw: Any) -> None:
    """Classify every video in LIBRARY and write the highlights to OUTPUT (JSON).

    The same scan as ``quadvault scan``: its Parquet shards go next to OUTPUT, in OUTPUT_STEM.scan/.

    \b
    Example:
      quadvault batch-classify /footage model/ highlights.json --threshold 0.8
    """
    from quadvault_dali.errors import OutputError

    if output.suffix.lower() != ".json":
        raise OutputError("OUTPUT is the highlights JSON file; give it a .json name", path=output,
                          hint=f"e.g. {output.with_suffix('.json').name}")
    if output.exists() and not _is_highlights_json(output):
        raise OutputError("exists and is not a highlights file this command wrote; it would be replaced",
                          path=output, hint="choose another OUTPUT name")
    out_dir = output.parent / f"{output.stem}.scan"
    _run((library,), (model, *extra_models), out_dir, output, kw)


def _is_highlights_json(path: Path) -> bool:
    """Whether ``path`` holds a highlights document (so batch-classify may refresh it)."""
    import json

    try:
        with open(path, "rb") as fh:
            doc = json.loads(fh.read(64 * 1024 * 1024))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and "highlights" in doc and "schema_version" in doc
