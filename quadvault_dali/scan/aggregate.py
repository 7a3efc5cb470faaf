"""Per-video aggregation: collects each video's per-second scores and turns them into its rows.

Frames of a video arrive spread over several batches (batches mix videos); the scores wait here until
the sampler reports the video's outcome, so a video's seconds rows and its video row are produced
together and always land in the same shard.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DecodeError, QuadvaultError
from ..probe import VideoInfo
from .schema import video_id


@dataclass
class VideoRows:
    """One finished video: its seconds rows (column lists) and its single videos row."""

    seconds: dict[str, list[Any]]
    video: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.video["status"] == "ok"

    @property
    def is_highlight(self) -> bool:
        return bool(self.video["is_highlight"])


@dataclass
class _Pending:
    started: float
    timestamps: list[float] = field(default_factory=list)
    scores: list[np.ndarray] = field(default_factory=list)  # (n, n_models) chunks


def score_aggregates(ensemble: np.ndarray, threshold: float) -> dict[str, float | None]:
    """mean, max, top-3 mean and fraction above ``threshold`` of one video's per-second scores."""
    if ensemble.size == 0:
        return {"score_mean": None, "score_max": None, "score_top3_mean": None, "frac_above_threshold": None}
    top = np.sort(ensemble)[::-1][:3]
    return {
        "score_mean": float(ensemble.mean(dtype=np.float64)),
        "score_max": float(ensemble.max()),
        "score_top3_mean": float(top.mean(dtype=np.float64)),
        "frac_above_threshold": float((ensemble >= threshold).mean()),
    }


def scored_rows(vid: str, path: str, times: np.ndarray, per_model: np.ndarray, threshold: float, *,
                ok: bool = True) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """A video's seconds rows and the score columns of its video row, from its time-ordered per-second scores of
    each model ``(n, n_models)`` float32: the ensemble is their mean. A scan's ``Aggregator`` and a rescore from
    stored scores (``rescore``) both build them here, so both write the same numbers."""
    ensemble = per_model.mean(axis=1).astype(np.float32) if per_model.shape[1] else np.zeros(len(times), np.float32)
    seconds = {
        "video_id": [vid] * len(times),
        "path": [path] * len(times),
        "timestamp_s": times.tolist(),
        "score": ensemble.tolist(),
        "model_scores": per_model.tolist(),
    }
    aggs = score_aggregates(ensemble, threshold)
    score = aggs["score_mean"]
    columns = {
        **aggs,
        "model_means": per_model.mean(axis=0).tolist() if len(times) else None,
        "score": score,
        "best_timestamp_s": float(times[int(np.argmax(ensemble))]) if len(times) else None,
        "is_highlight": bool(ok and score is not None and score >= threshold),
    }
    return seconds, columns


class Aggregator:
    """Accumulates scores per path and builds rows when the video's outcome arrives."""

    def __init__(self, *, threshold: float, model_fingerprint: str, fps: float = 1.0) -> None:
        self.threshold = threshold
        self.model_fingerprint = model_fingerprint
        self.fps = float(fps)
        self._pending: dict[Path, _Pending] = {}

    def add(self, paths: list[Path], timestamps: list[float], model_scores: np.ndarray) -> None:
        """``model_scores`` is (N, n_models) float32 for the N frames of one batch."""
        now = time.perf_counter()
        rows_by_path: dict[Path, list[int]] = {}
        for i, p in enumerate(paths):
            rows_by_path.setdefault(p, []).append(i)
        for p, idx in rows_by_path.items():
            pending = self._pending.setdefault(p, _Pending(started=now))
            pending.timestamps.extend(timestamps[i] for i in idx)
            pending.scores.append(model_scores[idx])

    def start(self, path: Path) -> None:
        """Marks when work on ``path`` began (for ``scan_seconds``) if no frame has arrived yet."""
        self._pending.setdefault(path, _Pending(started=time.perf_counter()))

    def finish(self, path: Path, *, info: VideoInfo | None, mode: str | None, bytes_read: int,
               error: QuadvaultError | None, size_bytes: int, mtime_ns: int, decoder: str | None = None,
               decoder_note: str | None = None, frames_expected: int | None = None,
               real_path: str | None = None) -> VideoRows:
        """The rows of ``path``; its pending scores are dropped from memory."""
        pending = self._pending.pop(path, None) or _Pending(started=time.perf_counter())
        n_models = pending.scores[0].shape[1] if pending.scores else 0
        per_model = np.concatenate(pending.scores) if pending.scores else np.zeros((0, n_models), np.float32)
        times = np.asarray(pending.timestamps, dtype=np.float64)
        if error is None and not pending.timestamps:  # as test-video: a video without frames failed
            error = DecodeError("no frames could be sampled", path=path)
        if error is not None:  # a failed video keeps no partial seconds: its row says it failed
            per_model = per_model[:0]
            times = times[:0]
        order = np.argsort(times, kind="stable")
        times, per_model = times[order], per_model[order].astype(np.float32)
        path_s = str(path)
        vid = video_id(path_s, size_bytes, mtime_ns)
        seconds, scores = scored_rows(vid, path_s, times, per_model, self.threshold, ok=error is None)
        video = {
            "video_id": vid, "path": path_s, "real_path": real_path, "size_bytes": size_bytes, "mtime_ns": mtime_ns,
            "recorded_at": info.recorded_at if info else None,
            "duration_s": info.duration_s if info else None,
            "fps": info.avg_fps if info else None,
            "codec": info.codec if info else None,
            "color_transfer": info.color_transfer if info else None,
            "width": info.width if info else None,
            "height": info.height if info else None,
            "rotation": info.rotation if info else None,
            "sampling_mode": mode,
            "sampling_fps": self.fps,
            "decoder": decoder,
            "decoder_note": decoder_note,
            "frames_scored": len(times),
            "frames_expected": frames_expected,
            "bytes_read": int(bytes_read),
            **scores,
            "status": "ok" if error is None else "error",
            "error_kind": error.kind if error is not None else None,
            "error_message": str(error) if error is not None else None,
            "model_fingerprint": self.model_fingerprint,
            "scanned_at": datetime.now(timezone.utc),
            "scan_seconds": time.perf_counter() - pending.started,
        }
        return VideoRows(seconds, video)
