"""Binary classification metrics from probabilities, at frame and video level, in plain numpy.

Training, ``evaluate`` and the model card all report the same numbers, so they are computed in one place.
A video's score is the mean of its frames' scores: that is how users see a clip, and it is the level at
which the best checkpoint is chosen (frame metrics flatter a model that is right on long videos only).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Hashable, Iterable, Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["BinaryMetrics", "binary_metrics", "balanced_accuracy", "roc_auc", "confusion_matrix", "video_scores",
           "best_threshold"]

ArrayLike = npt.ArrayLike


@dataclass(frozen=True)
class BinaryMetrics:
    """Metrics at one threshold; ``roc_auc`` is ``None`` when only one class is present."""

    n: int
    threshold: float
    accuracy: float
    #: the mean of the two classes' recalls: a rare class (highlights, usually) counts as much as a common one
    balanced_accuracy: float
    precision: float
    recall: float
    f1: float
    roc_auc: float | None
    tp: int
    fp: int
    tn: int
    fn: int

    def as_dict(self) -> dict[str, float | int | None]:
        """Plain JSON-serialisable dict (model card, evaluate output)."""
        return asdict(self)

    @property
    def confusion(self) -> np.ndarray:
        """2x2 matrix, rows = true class (normal, highlight), columns = predicted class."""
        return np.array([[self.tn, self.fp], [self.fn, self.tp]], dtype=np.int64)


def _as_arrays(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length: {s.shape[0]} vs {y.shape[0]}")
    if y.size and not np.isin(y, (0, 1)).all():
        bad = sorted(set(np.unique(y).tolist()) - {0, 1})
        raise ValueError(f"labels must be 0 (normal) or 1 (highlight), got {bad[:5]}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    return s, y.astype(np.int64)


def confusion_matrix(scores: ArrayLike, labels: ArrayLike, threshold: float = 0.5) -> np.ndarray:
    """2x2 counts ``[[tn, fp], [fn, tp]]``; a score >= threshold predicts highlight."""
    s, y = _as_arrays(scores, labels)
    pred = s >= threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    tn = int(np.sum(~pred & (y == 0)))
    return np.array([[tn, fp], [fn, tp]], dtype=np.int64)


def roc_auc(scores: ArrayLike, labels: ArrayLike) -> float | None:
    """Area under the ROC curve via average ranks (Mann-Whitney U); ties count half.

    Returns ``None`` when either class is absent: the AUC is undefined then, and 0.5 would be a lie.
    """
    s, y = _as_arrays(scores, labels)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    # average rank (1-based) over runs of equal scores
    boundaries = np.flatnonzero(np.diff(sorted_s)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [s.size]))
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def binary_metrics(scores: ArrayLike, labels: ArrayLike, threshold: float = 0.5) -> BinaryMetrics:
    """Accuracy, precision, recall, F1 and ROC-AUC; undefined ratios (0/0) are reported as 0."""
    s, y = _as_arrays(scores, labels)
    (tn, fp), (fn, tp) = confusion_matrix(s, y, threshold).tolist()
    n = int(y.size)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    accuracy = (tp + tn) / n if n else 0.0
    return BinaryMetrics(n=n, threshold=float(threshold), accuracy=accuracy,
                         balanced_accuracy=balanced_accuracy(tp, fp, tn, fn),
                         precision=precision, recall=recall, f1=f1, roc_auc=roc_auc(s, y),
                         tp=tp, fp=fp, tn=tn, fn=fn)


def balanced_accuracy(tp: int, fp: int, tn: int, fn: int) -> float:
    """Mean recall of the classes present (with one class only, its recall: the accuracy)."""
    rates = [hits / total for hits, total in ((tp, tp + fn), (tn, tn + fp)) if total]
    return sum(rates) / len(rates) if rates else 0.0


def video_scores(frame_scores: ArrayLike, frame_labels: ArrayLike,
                 video_ids: Sequence[Hashable] | Iterable[Hashable]) -> tuple[list[Hashable], np.ndarray, np.ndarray]:
    """Groups frames by video: ``(ids in first-seen order, mean score per video, label per video)``.

    Raises ``ValueError`` when one video's frames carry different labels (a broken dataset).
    """
    s, y = _as_arrays(frame_scores, frame_labels)
    ids = list(video_ids)
    if len(ids) != s.size:
        raise ValueError(f"video_ids has {len(ids)} entries for {s.size} scores")
    index: dict[Hashable, int] = {}
    codes = np.empty(s.size, dtype=np.int64)
    for i, vid in enumerate(ids):
        codes[i] = index.setdefault(vid, len(index))
    n_videos = len(index)
    sums = np.bincount(codes, weights=s, minlength=n_videos)
    counts = np.bincount(codes, minlength=n_videos)
    pos = np.bincount(codes, weights=y, minlength=n_videos)
    mixed = (pos > 0) & (pos < counts)
    if mixed.any():
        first = list(index)[int(np.flatnonzero(mixed)[0])]
        raise ValueError(f"video {first!r} has frames with both labels")
    return list(index), sums / np.maximum(counts, 1), (pos > 0).astype(np.int64)


def best_threshold(scores: ArrayLike, labels: ArrayLike, default: float = 0.5) -> float:
    """The threshold maximising balanced accuracy (then F1, then closeness to ``default``).

    Balanced, because highlights are usually the rare class: on 2 highlights among 33 videos, plain accuracy
    is best calling nothing a highlight, and that threshold, kept in the card, made scans flag nothing.
    Candidates are midpoints between consecutive distinct scores, so the choice generalises a little
    better than sitting exactly on a validation score. With one class only, ``default`` is kept.
    """
    s, y = _as_arrays(scores, labels)
    if s.size == 0 or y.min() == y.max():
        return float(default)
    uniq = np.unique(s)
    candidates = np.concatenate(([default], (uniq[:-1] + uniq[1:]) / 2.0, [uniq[0] - 1e-6, uniq[-1] + 1e-6]))
    candidates = candidates[(candidates > 0.0) & (candidates < 1.0)] if ((s >= 0) & (s <= 1)).all() else candidates
    if candidates.size == 0:
        return float(default)
    best: tuple[float, float, float] | None = None
    chosen = float(default)
    for t in candidates:
        m = binary_metrics(s, y, float(t))
        key = (m.balanced_accuracy, m.f1, -abs(float(t) - default))
        if best is None or key > best:
            best, chosen = key, float(t)
    return chosen
