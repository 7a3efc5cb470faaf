"""``quadvault test-video``: one video's highlight score from one model or an ensemble."""

from __future__ import annotations

import json
from pathlib import Path

import click

from quadvault_dali._lifetime import STOP_SIGNALS

from ._numbers import score_text, threshold_text
from ._options import (device_option, fps_option, long_job, nothing_written, sampling_option,
                       stops_cleanly)


def _clock(seconds: float, decimals: int = 0) -> str:
    """``mm:ss`` (``h:mm:ss`` past an hour), with ``decimals`` of a second (``timeline_decimals``)."""
    minutes, secs = divmod(round(seconds, decimals), 60.0)
    hours, minutes = divmod(int(minutes), 60)
    sec = f"{secs:0{3 + decimals}.{decimals}f}" if decimals else f"{int(round(secs)):02d}"
    return f"{hours}:{minutes:02d}:{sec}" if hours else f"{minutes:02d}:{sec}"


def timeline_decimals(timestamps: "list[float]") -> int:
    """The decimals every time of a timeline needs (0 at 1 fps, 2 at 4 fps: 0.25 was shown as ".3"), one
    count for all rows so the columns line up; at most 3."""
    for decimals in range(3):
        scale = 10 ** decimals
        if all(abs(t * scale - round(t * scale)) < 1e-6 * scale for t in timestamps):
            return decimals
    return 3


def _bar(score: float, width: int = 20) -> str:
    return "█" * int(round(score * width)) + "·" * (width - int(round(score * width)))


@click.command("test-video")
@click.argument("video", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--model", "more_models", multiple=True, type=click.Path(path_type=Path),
              help="Another model to average with (an ensemble); repeat for more.")
@click.option("--timeline", is_flag=True, help="Also print the score of every sampled second.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of text.")
@fps_option
@sampling_option
@device_option
def test_video(video: Path, model: Path, more_models: tuple[Path, ...], timeline: bool, as_json: bool,
               fps: float, mode: str, device: str) -> None:
    """Score VIDEO with MODEL: the mean of its per-second highlight probabilities.

    Several models (MODEL plus each --model) average their probabilities.

    \b
    Example:
      quadvault test-video DJI_0042.MP4 model/ --timeline
      quadvault test-video DJI_0042.MP4 model_sunsets/ --model model_action/
    """
    from quadvault_dali.device import resolve_device
    from quadvault_dali.model import load_model, warn_repeated
    from quadvault_dali.scoring import ensemble_threshold, score_video, scoring_sampler

    backend = resolve_device(device)
    models = [load_model(p, device=backend) for p in (model, *more_models)]
    warn_repeated(models)
    sampler = scoring_sampler(models, device=backend, fps=fps, mode=mode)  # type: ignore[arg-type]
    long_job()
    seen: list[int] = []
    with stops_cleanly(nothing_written(seen), STOP_SIGNALS, seen=seen):
        result = score_video(video, models, sampler=sampler)
    threshold = ensemble_threshold(models)
    score = result.score
    if as_json:
        click.echo(json.dumps({
            "video": str(video), "score": round(score, 6), "threshold": threshold,
            "is_highlight": score >= threshold, "frames": len(result.timestamps), "fps": fps,
            "frames_at_or_above_threshold": int(sum(float(x) >= threshold for x in result.frame_scores)),
            "models": [{"name": m.name, "fingerprint": m.fingerprint, "score": round(s, 6)}
                       for m, s in zip(models, result.per_model())],
            "timeline": [{"timestamp_s": round(t, 6), "score": round(float(s), 6),
                          "model_scores": [round(float(x), 6) for x in result.model_scores[:, i]]}
                         for i, (t, s) in enumerate(zip(result.timestamps, result.frame_scores))],
        }, indent=2))
        return
    shown = score_text(score, threshold)
    if abs(threshold - 0.5) < 1e-9:  # the guide's line: a probability read as confidence agrees with the verdict
        click.echo(f"Highlight score: {shown} ({round(score * 100)}% confidence this is a highlight)")
    else:  # "41% confidence" beside "Verdict: highlight" at a tuned threshold of 0.37 read as a contradiction
        click.echo(f"Highlight score: {shown} (this model calls {threshold_text(threshold)} and above a highlight)")
    verdict = "highlight" if score >= threshold else "not a highlight"
    frames = len(result.timestamps)
    click.echo(f"Verdict: {verdict} (threshold {threshold_text(threshold)}; {frames} frame{'' if frames == 1 else 's'} "
               f"at {fps:g} fps)")
    if frames > 1:  # a long flight's mean hides its few great seconds; its best one is where to look
        scores = [float(x) for x in result.frame_scores]
        best = max(range(frames), key=lambda i: (scores[i], -i))
        above = sum(x >= threshold for x in scores)
        click.echo(f"Best moment: {_clock(float(result.timestamps[best]), timeline_decimals(list(result.timestamps)))}"
                   f" scores {scores[best]:.2f}; {above} of {frames} frames score {threshold_text(threshold)} or more")
    if len(models) > 1:
        click.echo("Models (averaged):")
        for m, s in zip(models, result.per_model()):
            click.echo(f"  {score_text(s, threshold)}  {m.name} [{m.fingerprint}]")
    if timeline:
        click.echo("Timeline:")
        decimals = timeline_decimals(list(result.timestamps))
        for t, s in zip(result.timestamps, result.frame_scores):
            click.echo(f"  {_clock(t, decimals)}  {float(s):.2f}  {_bar(float(s))}")
