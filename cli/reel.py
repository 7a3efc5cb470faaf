"""``quadvault reel``: parse options, then call ``plan_reel_for`` (``--dry-run``, with the real run's
checks of the output, device and encoder) or ``make_reel``."""

from __future__ import annotations

from pathlib import Path

import click

from quadvault_dali._lifetime import STOP_SIGNALS

from ._options import stop_word, stops_cleanly


def _parse_resolution(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"expected WIDTHxHEIGHT like 1920x1080, got {value!r}") from None
    if w < 16 or h < 16 or w % 2 or h % 2:
        raise click.BadParameter(f"{value}: width and height must be even and at least 16 (H.264 4:2:0)")
    if w > MAX_SIDE or h > MAX_SIDE:  # beyond H.264's largest level; libx264 refused 20000x20000 to open
        raise click.BadParameter(f"{value}: at most {MAX_SIDE} pixels a side (H.264)")
    return w, h


#: The largest reel side: H.264's level 6.2 frames are 8192x4320
MAX_SIDE = 8192


@click.command("reel")
@click.argument("scores", type=click.Path(exists=True, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--top", type=click.IntRange(1), default=50, show_default=True, help="At most this many clips.")
@click.option("--min-score", type=click.FloatRange(0.0, 1.0), default=None,
              help="Only windows whose mean per-second score reaches this.  [default: the highlight threshold of "
                   "the scan's latest run (the model card's, or its --threshold); 0.85 for scores that name none]")
@click.option("--duration", "max_duration_s", type=click.FloatRange(min=0.1), default=None, metavar="SECONDS",
              help="Maximum reel length, crossfades counted; best clips first.  [default: no limit]")
@click.option("--clip-seconds", type=click.FloatRange(min=0.5), default=4.0, show_default=True,
              help="Length of each cut: the best-scoring window of that many seconds of each video.")
@click.option("--per-video", type=click.IntRange(1), default=1, show_default=True,
              help="Windows a video may give (never overlapping).")
@click.option("--transitions/--no-transitions", default=True, show_default=True,
              help="Crossfade between clips, or hard cuts.")
@click.option("--fade", "fade_s", type=click.FloatRange(min=0.0), default=0.5, show_default=True,
              help="Crossfade length in seconds.")
@click.option("--order", type=click.Choice(["score", "time"]), default="score", show_default=True,
              help="score: best first; time: by when the footage was shot (the camera's date in the scan's "
                   "recorded_at, else the file's modification time), then path, then in-point.")
@click.option("--resolution", callback=_parse_resolution, default="1920x1080", show_default=True,
              help="Reel size; every source is scaled and letterboxed into it.")
@click.option("--fps", type=click.FloatRange(min=1.0, max=120.0), default=30.0, show_default=True,
              help="Reel frame rate; sources are resampled by time (they play at real speed).")
@click.option("--audio", type=click.Choice(["none", "keep"]), default="none", show_default=True,
              help="keep: the sources' sound under each clip, crossfaded; none: a silent reel.")
@click.option("--encoder", type=click.Choice(["auto", "nvenc", "x264"]), default="auto", show_default=True,
              help="H.264 encoder: nvenc (NVIDIA hardware), x264 (CPU), auto = nvenc when it opens.")
@click.option("--device", type=click.Choice(["auto", "gpu", "cpu"]), default="auto", show_default=True,
              help="gpu: require a CUDA GPU (error without one): windows decode on NVDEC where it takes the "
                   "source, NVENC encodes where it opens; cpu: never use the GPU (PyAV decode, libx264); auto: gpu "
                   "when there is one.")
@click.option("--dry-run", is_flag=True, help="Print the plan (what the clip list would hold); encode nothing.")
def reel(scores: Path, out: Path, resolution: tuple[int, int], dry_run: bool, **kw: object) -> None:
    """Cut a highlight reel OUT (.mp4, .mov, .mkv or .m4v) from the best seconds in SCORES.

    SCORES is a scan folder (per-second scores) or a highlights.json. Each chosen video gives its
    best --clip-seconds window. Next to OUT goes OUT.clips.csv: source, in/out, score, reel time.

    \b
    Examples:
      quadvault reel scan/ best.mp4
      quadvault reel scan/ best.mp4 --duration 60 --min-score 0.9 --order time
      quadvault reel scan/highlights.json teaser.mp4 --top 10 --resolution 1280x720 --audio keep
      quadvault reel scan/ best.mp4 --dry-run
    """
    from quadvault_dali.reel import ReelOptions, format_plan, make_reel, plan_reel_for, sidecar_path

    options = ReelOptions(width=resolution[0], height=resolution[1], **kw)  # type: ignore[arg-type]
    if dry_run:
        prepared = plan_reel_for(scores, out, options)
        click.echo(format_plan(prepared.plan))
        for message in prepared.skipped:
            click.echo(f"skipped: {message}")
        click.echo(f"Dry run: nothing encoded; {out} and {sidecar_path(out).name} would be written.")
        return
    # SIGTERM (timeout, kill, a scheduler) and a closed terminal's SIGHUP stop like Ctrl-C: the partial file goes
    seen: list[int] = []
    earlier = Path(out).is_file()  # an earlier reel there is replaced only when the new one is complete
    written: list[object] = []

    def stopped(by_signal: bool) -> str:
        if written:  # the stop came while the reel and its list were renamed into place: it waited for both
            return f"{stop_word(by_signal, seen)} as the reel was finished: {out} and its clip list are written."
        kept = f"; the earlier {Path(out).name} is kept as it was" if earlier else ""
        return f"{stop_word(by_signal, seen)}; no reel written to {out}{kept}."

    with stops_cleanly(stopped, STOP_SIGNALS, seen=seen):
        result = make_reel(scores, out, options, on_written=lambda: written.append(True))
    plan = result.prepared.plan
    for message in result.prepared.skipped:
        click.echo(f"skipped: {message}", err=True)
    if result.render.failed_clips:
        click.echo(f"warning: clip(s) {', '.join(map(str, result.render.failed_clips))} broke while decoding "
                   "and hold their last good frame", err=True)
    decoded = result.render.decoders
    on_gpu = f", {decoded.count('nvdec')} of {len(decoded)} windows decoded on NVDEC" if "nvdec" in decoded else ""
    click.echo(f"Reel: {result.render.path} ({len(plan.clips)} clips, {plan.duration_s:.1f} s, "
               f"{options.width}x{options.height} @ {options.fps:g} fps, {result.render.encoder}"
               f"{', with sound' if result.render.audio else ''}{on_gpu})")
    click.echo(f"Clip list: {result.sidecar}")
    for note in plan.notes[1:]:  # what was left out and why (the first note only counts the windows used)
        click.echo(f"note: {note}")
