"""How good is a model on *your* footage: metrics, confusion matrix, and which clips to label next.

Two sources: a prepared dataset (its held-out test split by default, else its validation split, its stored
JPEGs scored through training's own DALI loader, so the numbers are the ones training reported) or any ``labels.json`` (every video sampled and scored the
way ``test-video`` and ``scan`` do). A video's score is the mean of its frame scores. Misclassified
videos and uncertain ones (score within 0.2 of the threshold: 0.3–0.7 at 0.5) are listed: they are the clips
whose labels teach the model most, or the ones whose label is wrong.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch

from .dataset import load_labels, read_dataset, read_jpeg
from .dataset._identity import content_ids
from .dataset._table import DATASET_FILE
from .errors import DatasetError, QuadvaultError
from .metrics import BinaryMetrics, binary_metrics, video_scores
from .model import FrameScorer, HighlightModel
from .progress import progress_bar
from .scoring import ensemble_threshold, score_videos, scoring_sampler

log = logging.getLogger(__name__)
#: auto: the held-out test split where the dataset has one (``dataset._split``), else validation
SplitChoice = Literal["auto", "test", "val", "train", "all"]
#: Scores this close to the threshold are "uncertain": the band follows the threshold (a model tuned to 0.2
#: is unsure around 0.2, not around 0.5)
UNCERTAIN_HALF_WIDTH = 0.2


def uncertain_band(threshold: float, half_width: float = UNCERTAIN_HALF_WIDTH) -> tuple[float, float]:
    """The scores within ``half_width`` of ``threshold``, clipped to 0..1."""
    return max(0.0, threshold - half_width), min(1.0, threshold + half_width)


@dataclass
class VideoResult:
    path: str
    label: int
    score: float
    frames: int
    model_scores: list[float]

    def as_dict(self, threshold: float) -> dict[str, Any]:
        return {"path": self.path, "label": "highlight" if self.label else "normal", "score": round(self.score, 6),
                "predicted": "highlight" if self.score >= threshold else "normal", "frames": self.frames,
                "model_scores": [round(s, 6) for s in self.model_scores]}


@dataclass
class EvaluationReport:
    """Everything ``evaluate`` prints; ``as_dict`` is its JSON form."""

    source: str
    kind: Literal["dataset", "labels"]
    split: str
    models: list[dict[str, str]]
    threshold: float
    frame_metrics: BinaryMetrics
    video_metrics: BinaryMetrics
    model_video_metrics: list[BinaryMetrics]
    videos: list[VideoResult]
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, error) for videos not scored
    bad_frames: list[tuple[str, str]] = field(default_factory=list)  # (frame file, error), skipped
    uncertain_range: tuple[float, float] = (0.3, 0.7)  # ``uncertain_band`` of the threshold
    #: per model, how many of the videos are the validation videos its best epoch and threshold were chosen on
    tuned_on: dict[str, int] = field(default_factory=dict)

    def misclassified(self) -> list[VideoResult]:
        """Wrong predictions, the most confidently wrong first."""
        wrong = [v for v in self.videos if (v.score >= self.threshold) != bool(v.label)]
        return sorted(wrong, key=lambda v: -abs(v.score - v.label))

    def uncertain(self) -> list[VideoResult]:
        """Videos the model cannot decide on, the closest to a coin flip first: label these next."""
        low, high = self.uncertain_range
        return sorted((v for v in self.videos if low <= v.score <= high), key=lambda v: abs(v.score - self.threshold))

    def as_dict(self) -> dict[str, Any]:
        t = self.threshold
        return {
            "source": self.source, "kind": self.kind, "split": self.split, "models": self.models,
            "threshold": t, "frame_level": self.frame_metrics.as_dict(), "video_level": self.video_metrics.as_dict(),
            "per_model_video_level": [m.as_dict() for m in self.model_video_metrics],
            "confusion_matrix": {"rows": "true normal, true highlight", "columns": "predicted normal, predicted highlight",
                                 "videos": self.video_metrics.confusion.tolist(),
                                 "frames": self.frame_metrics.confusion.tolist()},
            "misclassified": [v.as_dict(t) for v in self.misclassified()],
            "uncertain": [v.as_dict(t) for v in self.uncertain()], "uncertain_range": list(self.uncertain_range),
            "videos": [v.as_dict(t) for v in self.videos],
            "failed": [{"path": p, "error": e} for p, e in self.failed],
            "bad_frames": [{"path": p, "error": e} for p, e in self.bad_frames],
            "tuned_on": self.tuned_on,
        }


def is_dataset(source: str | os.PathLike[str]) -> bool:
    """A dataset is a ``.parquet`` file or a folder holding ``dataset.parquet``; anything else is labels."""
    path = Path(source)
    return path.suffix.lower() == ".parquet" or (path.is_dir() and (path / DATASET_FILE).exists())


@dataclass
class _Collected:
    frame_scores: list[np.ndarray] = field(default_factory=list)  # (n_models, n) per video
    labels: list[int] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    ids: dict[str, str] = field(default_factory=dict)  # key -> content id, where the source knows it
    failed: list[tuple[str, str]] = field(default_factory=list)
    bad_frames: list[tuple[str, str]] = field(default_factory=list)

    def add(self, key: str, label: int, scores: np.ndarray) -> None:
        self.frame_scores.append(scores)
        self.labels.append(label)
        self.keys.append(key)


def _decode_frames(files: list[Path], device: torch.device, bad: list[tuple[str, str]]) -> torch.Tensor | None:
    """Stored JPEGs of one video as uint8 (N,3,H,W); damaged files are recorded in ``bad`` and skipped."""
    if device.type == "cuda":
        from torchvision.io import decode_jpeg

        try:
            datas = [torch.frombuffer(bytearray(f.read_bytes()), dtype=torch.uint8) for f in files]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                decoded = decode_jpeg(datas, device=device)  # nvJPEG, one batched call
            return torch.stack(decoded)
        except (RuntimeError, OSError, ValueError):
            pass  # find the damaged file(s) on the CPU below
    images = []
    for f in files:
        try:
            images.append(read_jpeg(f))
        except DatasetError as exc:  # listed once at the end by the caller, not one warning per frame
            bad.append((str(f), exc.reason))
            log.debug("%s", exc)
    if not images:
        return None
    shapes = {img.shape for img in images}
    if len(shapes) > 1:  # cannot happen with prepare-dataset; crop to the common size rather than fail
        h, w = min(s[0] for s in shapes), min(s[1] for s in shapes)
        images = [img[:h, :w] for img in images]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def _score_as_trained(dataset: Any, by_video: dict[str, list[dict]], models: Sequence[HighlightModel],
                      device: torch.device, out: _Collected) -> None:
    """Scores the stored frames through the DALI loader training validates with (decode, resize, crop, normalise,
    bf16 on a GPU), so a model's numbers on its validation or test split are the ones ``train`` reported: the
    model's own preprocessing of PIL-decoded JPEGs (``score_frames``: another JPEG decoder and resize, 0.3 grey
    levels apart on average) differed by up to 0.02 a frame, which moved videos on the threshold (a new user's
    find); stop 31's review measured 0.016 a frame on average and up to 0.066 on small models trained for a few
    epochs (0.024 at most a video). The card's numbers are this path's."""
    from .training._data import DaliFrameLoader, FrameTable, validate_jpegs
    from .training._loop import frame_probabilities

    keys = [(path, r) for path, video_rows in by_video.items() for r in video_rows]
    files = [str(dataset.frame_file(r["frame_path"])) for _, r in keys]
    verdicts = validate_jpegs(files)  # one damaged JPEG would fail DALI's whole batch
    for file, why in zip(files, verdicts):
        if why is not None:  # worded as read_jpeg words it
            out.bad_frames.append((file, f"not a readable JPEG ({why})"))
    usable = [i for i, why in enumerate(verdicts) if why is None]
    table = FrameTable([files[i] for i in usable], np.asarray([int(keys[i][1]["label"]) for i in usable]),
                       [str(keys[i][1]["video_id"]) for i in usable])
    probs = np.zeros((len(models), len(usable)))
    if usable:
        for k, model in enumerate(models):
            loader = DaliFrameLoader(table, image_size=model.image_size, mean=model.card["mean"],
                                     std=model.card["std"], train=False, batch_size=64,
                                     backend="gpu" if device.type == "cuda" else "cpu", device_id=device.index or 0)
            probs[k], _ = frame_probabilities(model.network, loader, table, model.device, 1,
                                              f"Scoring ({model.name})", True)
    by_key: dict[str, list[int]] = {}
    for j, i in enumerate(usable):
        by_key.setdefault(keys[i][0], []).append(j)
    for path, video_rows in by_video.items():
        if path not in by_key:
            out.failed.append((path, "no readable frames in the dataset"))
            continue
        out.add(path, int(video_rows[0]["label"]), probs[:, by_key[path]])
        out.ids[path] = str(video_rows[0]["video_id"])


def _from_dataset(source: Path, models: Sequence[FrameScorer], split: SplitChoice, device: torch.device,
                  out: _Collected) -> tuple[str, str]:
    """Scores the ``split`` frames of a dataset into ``out``; returns (the dataset's path, the split scored)."""
    dataset = read_dataset(source)
    every = list(dataset.rows())
    if split == "auto":  # a test split of one class (left by --merge or relabels) measures no balanced accuracy
        split = "test" if len({r["label"] for r in every if r["split"] == "test"}) == 2 else "val"
    rows = [r for r in every if split == "all" or r["split"] == split]
    if not rows:
        hint = ("it holds none when a class has fewer than 10 videos: --split val (the default then) scores the "
                "videos that chose the threshold, a labels.json of new clips measures best") if split == "test" \
            else "use --split all, or prepare it with more videos"
        raise DatasetError(f"the dataset has no {split!r} frames", path=dataset.path, hint=hint)
    by_video: dict[str, list[dict]] = {}
    for r in rows:
        by_video.setdefault(r["video_path"], []).append(r)
    for video_rows in by_video.values():
        video_rows.sort(key=lambda r: r["timestamp_s"])
    if all(isinstance(m, HighlightModel) for m in models):  # training's own loader: training's own numbers
        _score_as_trained(dataset, by_video, models, device, out)  # type: ignore[arg-type]
        return str(dataset.path), split
    with progress_bar(len(by_video), desc="Scoring", unit="video") as bar:
        for path, video_rows in by_video.items():
            frames = _decode_frames([dataset.frame_file(r["frame_path"]) for r in video_rows], device,
                                    out.bad_frames)
            bar.update(1)
            if frames is None:
                out.failed.append((path, "no readable frames in the dataset"))
                continue
            out.add(path, int(video_rows[0]["label"]), torch.stack([m.score_frames(frames) for m in models]).numpy())
            out.ids[path] = str(video_rows[0]["video_id"])
    return str(dataset.path), split


#: Warnings about a labels file shown one by one; the rest are counted (and listed under -v)
SHOWN_WARNINGS = 10


def _from_labels(source: Path, models: Sequence[FrameScorer], device: str, fps: float, mode: str,
                 skip_missing: bool, out: _Collected) -> str:
    labels = load_labels(source, skip_missing=skip_missing, one_class=True)  # recall on new highlights alone
    for message in labels.warnings[:SHOWN_WARNINGS]:
        log.warning("%s", message)
    if len(labels.warnings) > SHOWN_WARNINGS:  # 50,000 skipped entries printed 66,000 lines
        log.warning("… and %d more warnings about %s (-v lists them)", len(labels.warnings) - SHOWN_WARNINGS, source)
        for message in labels.warnings[SHOWN_WARNINGS:]:
            log.info("%s", message)
    label_of = {v.path: v.label for v in labels.videos}
    out.ids.update({str(v.path): v.video_id for v in labels.videos})
    sampler = scoring_sampler(models, device=device, fps=fps, mode=mode)  # type: ignore[arg-type]
    with progress_bar(len(label_of), desc="Scoring", unit="video") as bar:
        for result in score_videos(list(label_of), models, sampler=sampler):
            bar.update(1)
            if result.error is not None:
                out.failed.append((str(result.path), str(result.error.reason)))
                continue
            out.add(str(result.path), label_of[result.path], result.model_scores)
    return str(source)


def trained_on(models: Sequence[FrameScorer], videos: Sequence[str],
               known_ids: dict[str, str] | None = None) -> dict[str, list[str]]:
    """For each model whose training dataset is still where its card says, the ``videos`` it trained on.

    Matched by content id as well as path, so a copy or a moved file counts. Metrics over videos a
    model was trained on are optimistic; the report warns rather than guess. ``known_ids``: content ids
    the caller has already (a dataset's rows, a labels file's check); only the other videos are read.
    """
    return seen_in_datasets(models, videos, known_ids)["train"]


def seen_in_datasets(models: Sequence[FrameScorer], videos: Sequence[str],
                     known_ids: dict[str, str] | None = None) -> dict[str, dict[str, list[str]]]:
    """``{"train": {model: videos}, "val": {model: videos}}``: the ``videos`` in each split of the dataset each
    model's card names (as ``trained_on``). A model's best epoch and threshold were chosen on its ``val`` videos,
    so metrics over them are a little optimistic too."""
    overlap: dict[str, dict[str, list[str]]] = {"train": {}, "val": {}}
    ids: dict[str, str | OSError] | None = None
    for model in models:
        cards = model.card.get("ensemble", [model.card])
        if not isinstance(cards, list):  # a hand-edited card: no dataset to compare with, no warning to give
            continue
        for card in cards:
            splits = _card_splits(card) if isinstance(card, dict) else None
            if splits is None:
                continue
            if ids is None:
                ids = dict(known_ids or {})
                unknown = [Path(v) for v in videos if v not in ids]
                ids.update({str(k): v for k, v in content_ids(unknown).items()} if unknown else {})
            for split, found in overlap.items():
                split_ids, split_paths = splits[split]
                seen = sorted(v for v in videos if v in split_paths or ids.get(str(Path(v))) in split_ids)
                if seen:
                    found[str(card.get("name") or model.name)] = seen
    return overlap


def _card_splits(card: dict) -> dict[str, tuple[set[str], set[str]]] | None:
    """split -> (content ids, paths) of the videos a model's card says it was trained and tuned on: the ids the
    card records (cards since stop 28), else its dataset's rows as they are now, if it is still there (a dataset
    changed since, by ``--merge`` or a relabel, is said to be: its splits may hold videos the model never saw)."""
    recorded = card.get("split_videos")
    if isinstance(recorded, dict) and all(isinstance(recorded.get(s), list) for s in ("train", "val")):
        return {split: ({str(v) for v in recorded[split]}, set()) for split in ("train", "val")}
    where = card.get("dataset")
    if not isinstance(where, str) or not where or not is_dataset(Path(where)):
        return None
    try:
        dataset = read_dataset(where)
        rows = list(dataset.rows())
    except QuadvaultError:
        return None
    from .training._data import dataset_fingerprint

    if card.get("dataset_fingerprint") and dataset_fingerprint(dataset.table) != card["dataset_fingerprint"]:
        log.warning("the dataset model %s was trained on (%s) has changed since (prepare-dataset --merge or a "
                    "relabel): which evaluated videos it saw is judged from its splits as they are now",
                    card.get("name", "?"), where)
    return {split: ({r["video_id"] for r in rows if r["split"] == split},
                    {r["video_path"] for r in rows if r["split"] == split}) for split in ("train", "val")}


def evaluate(source: str | os.PathLike[str], models: Sequence[FrameScorer], *, split: SplitChoice = "auto",
             device: str = "auto", fps: float = 1.0, mode: str = "auto", skip_missing: bool = False,
             threshold: float | None = None, uncertain: tuple[float, float] | None = None) -> EvaluationReport:
    """Scores ``source`` (dataset or labels.json) with ``models`` and computes the report; ``uncertain`` is the
    score range listed as uncertain (default: ``uncertain_band`` of the threshold)."""
    from .device import resolve_device, torch_device

    if not models:
        raise ValueError("evaluate needs at least one model")
    backend = resolve_device(device)
    collected = _Collected()
    path = Path(source)
    kind: Literal["dataset", "labels"] = "dataset" if is_dataset(path) else "labels"
    if kind == "labels" and path.is_dir():
        raise DatasetError(f"is a folder without {DATASET_FILE}", path=path,
                           hint="give a prepare-dataset output folder, its dataset.parquet, or a labels.json")
    if kind == "dataset":
        shown, split = _from_dataset(path, models, split, torch_device(backend), collected)  # type: ignore[assignment]
    else:
        shown = _from_labels(path, models, backend, fps, mode, skip_missing, collected)
    if not collected.keys:
        raise QuadvaultError("no video could be scored", path=path,
                             hint="; ".join(f"{p}: {e}" for p, e in collected.failed[:3]) or None)
    seen = seen_in_datasets(models, collected.keys, collected.ids)
    for name, trained in seen["train"].items():
        log.warning("%d of the %d evaluated videos were in the training split of model %s (e.g. %s): these "
                    "metrics are optimistic", len(trained), len(collected.keys), name, trained[0])
    thr = ensemble_threshold(models) if threshold is None else float(threshold)
    per_frame = np.concatenate(collected.frame_scores, axis=1)  # (n_models, total frames)
    frame_labels = np.repeat(collected.labels, [s.shape[1] for s in collected.frame_scores])
    frame_keys = np.repeat(collected.keys, [s.shape[1] for s in collected.frame_scores]).tolist()
    ensemble = per_frame.mean(axis=0)
    ids, means, video_labels = video_scores(ensemble, frame_labels, frame_keys)
    member_means = [video_scores(row, frame_labels, frame_keys)[1] for row in per_frame]
    counts = {k: s.shape[1] for k, s in zip(collected.keys, collected.frame_scores)}
    videos = [VideoResult(path=str(k), label=int(y), score=float(s), frames=counts[str(k)],
                          model_scores=[float(m[i]) for m in member_means])
              for i, (k, s, y) in enumerate(zip(ids, means, video_labels))]
    return EvaluationReport(
        source=shown, kind=kind, split=split if kind == "dataset" else "all",
        models=[{"name": m.name, "fingerprint": m.fingerprint} for m in models], threshold=thr,
        frame_metrics=binary_metrics(ensemble, frame_labels, thr),
        video_metrics=binary_metrics(means, video_labels, thr),
        # each member at its own card's threshold, unless one was given: then all at that one (a header reading
        # "threshold 0.30" over member lines judged at 0.5 and 0.9 showed 0 % recall that was not at 0.30)
        model_video_metrics=[binary_metrics(scores, video_labels, model.threshold if threshold is None else thr)
                             for scores, model in zip(member_means, models)],
        videos=videos, failed=collected.failed, bad_frames=collected.bad_frames,
        tuned_on={name: len(found) for name, found in seen["val"].items()},
        uncertain_range=uncertain if uncertain is not None else uncertain_band(thr))
