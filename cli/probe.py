"""``quadvault probe``: what the prober sees in each video, and why the bad ones are bad."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click

from quadvault_dali.discovery import find_videos
from quadvault_dali.errors import QuadvaultError
from quadvault_dali.probe import HDR_NAMES, VideoInfo, probe_video
from quadvault_dali.sampling import nvdec_limitation


def _probe_one(path: Path) -> VideoInfo | QuadvaultError:
    try:
        return probe_video(path)  # type: ignore[return-value]
    except QuadvaultError as exc:
        return exc


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per video instead of a table.")
@click.option("--threads", type=click.IntRange(1, 64), default=8, show_default=True, help="Files probed at once.")
def probe(paths: tuple[Path, ...], as_json: bool, threads: int) -> None:
    """Probe videos (files or folders, searched recursively) without decoding them.

    The nvdec column says whether the GPU's hardware decoder can take the video; the ones it cannot
    (AV1 on an H100, 4:2:2, sizes outside its range) are decoded on the CPU by a GPU scan. --json gives
    the reason in "nvdec_limitation".

    Exits with 1 when a path is missing or a video cannot be read (the others are still listed).

    \b
    Example:
      quadvault probe /footage/2024 clip.mp4
      quadvault probe --json /footage > probe.jsonl
    """
    unreadable: list[tuple[Path, OSError]] = []
    videos = find_videos(paths, on_error=lambda p, exc: unreadable.append((p, exc)))
    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(_probe_one, videos))
    bad = sum(isinstance(result, QuadvaultError) for result in results)
    for path, exc in unreadable:  # a path given that does not exist, or a folder that cannot be listed
        reason = "does not exist" if isinstance(exc, FileNotFoundError) else f"cannot be read: {exc.strerror or exc}"
        if as_json:
            click.echo(json.dumps({"path": str(path), "status": "error", "error_kind": "FileAccessError",
                                   "error": reason}))
        else:
            click.secho(f"ERROR FileAccessError: {path}: {reason}", fg="red", err=True)
    if as_json:
        for path, result in zip(videos, results):
            if isinstance(result, QuadvaultError):
                click.echo(json.dumps({"path": str(path), "status": "error", "error_kind": result.kind,
                                       "error": result.reason}))
            else:
                click.echo(json.dumps({"status": "ok", **result.to_dict(),
                                       "nvdec_limitation": nvdec_limitation(result)}))
    else:
        header = (f"{'codec':6} {'size':>10} {'rot':>3} {'fps':>6} {'seconds':>8} {'keyframes':>9} {'max gap':>7} "
                  f"{'hdr':>3} {'nvdec':>5}  path")
        click.echo(header)
        for path, result in zip(videos, results):
            if isinstance(result, QuadvaultError):
                continue
            i = result
            nvdec = "no" if nvdec_limitation(i) else "yes"
            hdr = HDR_NAMES.get(i.color_transfer, "-")  # tone-mapped to SDR
            click.echo(f"{i.codec:6} {f'{i.width}x{i.height}':>10} {i.rotation:>3} {i.avg_fps:>6.2f} "
                       f"{i.duration_s:>8.1f} {len(i.keyframe_times):>9} {i.max_keyframe_interval_s:>6.2f}s {hdr:>3} "
                       f"{nvdec:>5}  {path}")
        for path, result in zip(videos, results):
            if isinstance(result, QuadvaultError):
                click.secho(f"ERROR {result.kind}: {result}", fg="red", err=True)
        click.echo(f"{len(videos)} videos, {len(videos) - bad} readable, {bad} with errors"
                   + (f", {len(unreadable)} paths not found or unreadable" if unreadable else ""), err=True)
    if not videos and not unreadable:
        raise click.ClickException(f"no video files found under {', '.join(map(str, paths))}")
    if bad or unreadable:
        raise SystemExit(1)  # the table and the errors are printed; scripts see that not all went well
