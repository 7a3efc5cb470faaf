"""``quadvault evaluate``: metrics, confusion matrix and the videos to label next (parse, call, print)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from quadvault_dali._lifetime import STOP_SIGNALS

from ._numbers import score_text, threshold_text
from ._options import (device_option, fps_option, long_job, nothing_written, sampling_option,
                       stops_cleanly)


def _metrics_line(title: str, m: "object") -> str:
    auc = "n/a" if m.roc_auc is None else f"{m.roc_auc:.3f}"  # type: ignore[attr-defined]
    return (f"{title:<13}(n={m.n:,}): accuracy {m.accuracy:.1%} (balanced {m.balanced_accuracy:.1%}) | "  # type: ignore[attr-defined]
            f"precision {m.precision:.1%} | "  # type: ignore[attr-defined]
            f"recall {m.recall:.1%} | F1 {m.f1:.3f} | ROC-AUC {auc}")  # type: ignore[attr-defined]


def _video_line(v: "object", threshold: float) -> str:
    label = "highlight" if v.label else "normal"  # type: ignore[attr-defined]
    return f"  {score_text(v.score, threshold)}  labelled {label:<9}  {v.path}"  # type: ignore[attr-defined]


@click.command("evaluate")
@click.argument("source", type=click.Path(path_type=Path, exists=True))
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--model", "more_models", multiple=True, type=click.Path(path_type=Path),
              help="Another model to average with (an ensemble); repeat for more.")
@click.option("--split", type=click.Choice(["auto", "test", "val", "train", "all"]), default="auto", show_default=True,
              help="Which frames of a dataset to score: auto = its held-out test split where it has one with both "
                   "classes, else validation (a labels.json is always scored whole).")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=None,
              help="Decision threshold [default: the model card's; the mean for an ensemble].")
@click.option("--skip-missing", is_flag=True, help="With a labels.json: skip entries that do not exist.")
@click.option("--limit", type=click.IntRange(min=0), default=20, show_default=True,
              help="How many misclassified/uncertain videos to list (--json lists all).")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
@fps_option
@sampling_option
@device_option
def evaluate(source: Path, model: Path, more_models: tuple[Path, ...], split: str, threshold: float | None,
             skip_missing: bool, limit: int, as_json: bool, fps: float, mode: str, device: str) -> None:
    """Evaluate MODEL on SOURCE: a prepared dataset (its test split, else validation) or a labels.json.

    Prints frame- and video-level metrics (a video's score is the mean of its frames'), the
    confusion matrix, the misclassified videos and the uncertain ones (score within 0.2 of the
    threshold): the clips worth labelling (or re-checking) next.

    \b
    Example:
      quadvault evaluate data/dataset.parquet model/
      quadvault evaluate more_labels.json model/ --model model_sunsets/ --json > report.json
    """
    from quadvault_dali.device import resolve_device
    from quadvault_dali.evaluate import evaluate as run_evaluate
    from quadvault_dali.model import load_model, warn_repeated

    backend = resolve_device(device)
    models = [load_model(p, device=backend) for p in (model, *more_models)]
    warn_repeated(models)
    long_job()
    seen: list[int] = []
    with stops_cleanly(nothing_written(seen), STOP_SIGNALS, seen=seen):
        report = run_evaluate(source, models, split=split, device=backend, fps=fps, mode=mode,  # type: ignore[arg-type]
                              skip_missing=skip_missing, threshold=threshold)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
        return
    t = report.threshold
    what = f"{report.split} split of dataset" if report.kind == "dataset" else "labels file"
    names = ", ".join(m["name"] for m in report.models)
    dropped = f" of {len(report.videos) + len(report.failed):,} ({len(report.failed):,} not scored, below)" \
        if report.failed else ""
    click.echo(f"Evaluated {names} on {len(report.videos):,}{dropped} videos ({report.frame_metrics.n:,} frames), "
               f"{what} {report.source} — threshold {threshold_text(t)}")
    click.echo(_metrics_line("Frame level", report.frame_metrics))
    click.echo(_metrics_line("Video level", report.video_metrics))
    if len(models) > 1:
        for m, metrics in zip(report.models, report.model_video_metrics):
            click.echo(_metrics_line(f"  {m['name']}"[:12], metrics))
    for name, count in report.tuned_on.items():
        share = "all" if count == len(report.videos) else f"{count:,} of the {len(report.videos):,}"
        click.echo(f"Note: {share} videos are those the best epoch and threshold of model '{name}' were chosen on (its "
                   "validation split): expect a little less on footage it has never seen; evaluate a labels.json "
                   "of new videos for that number")
    (tn, fp), (fn, tp) = report.video_metrics.confusion.tolist()
    click.echo("Confusion matrix (videos):")
    click.echo(f"  {'':<18}{'predicted normal':>18}{'predicted highlight':>21}")
    click.echo(f"  {'true normal':<18}{tn:>18,}{fp:>21,}")
    click.echo(f"  {'true highlight':<18}{fn:>18,}{tp:>21,}")
    for title, videos in (("Misclassified videos", report.misclassified()),
                          (f"Uncertain videos ({report.uncertain_range[0]:.4g}–{report.uncertain_range[1]:.4g}), "
                           "label these next", report.uncertain())):
        click.echo(f"{title} ({len(videos):,}):" if videos else f"{title}: none")
        for v in videos[:limit]:
            click.echo(_video_line(v, t))
        if len(videos) > limit:
            click.echo(f"  … and {len(videos) - limit:,} more (--limit, or --json for all)")
    if report.failed:
        click.secho(f"Not scored ({len(report.failed):,}):", fg="yellow", err=True)
        for path, error in report.failed:
            click.echo(f"  {path}: {error}", err=True)
    if report.bad_frames:
        click.secho(f"Skipped {len(report.bad_frames):,} unreadable frame file(s):", fg="yellow", err=True)
        shown = min(limit, 5)
        for path, error in report.bad_frames[:shown]:
            click.echo(f"  {path}: {error}", err=True)
        if len(report.bad_frames) > shown:
            click.echo(f"  … and {len(report.bad_frames) - shown:,} more", err=True)
