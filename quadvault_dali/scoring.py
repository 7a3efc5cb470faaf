"""Scoring whole videos with one or more models: per-second scores, and their mean as the video score.

``test-video``, ``evaluate`` and ``scan`` all score the same way, so a clip gets the same number
everywhere: frames are sampled with the shared sampler (square, at ``sampling_size``: 256 px, the short
side prepare-dataset stores, whatever models score them, so a model scores the same frames alone and in
any ensemble; each model resizes them to its own image size), each model gives a probability per frame,
the ensemble probability is the models' mean, and a video's score is the mean over its frames.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Protocol, Sequence

import numpy as np
import torch

from .errors import QuadvaultError
from .model import FrameScorer, mean_threshold
from .sampling import Sampler, SamplingMode, VideoOutcome, create_sampler


@dataclass
class VideoScore:
    """One video's scores. ``model_scores`` is ``(n_models, n_frames)``; ``frame_scores`` their mean."""

    path: Path
    timestamps: list[float]
    model_scores: np.ndarray
    outcome: VideoOutcome | None = None
    error: QuadvaultError | None = None
    models: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def frame_scores(self) -> np.ndarray:
        """Ensemble probability per sampled frame (mean over the models)."""
        if self.model_scores.size == 0:
            return np.zeros(self.model_scores.shape[-1] if self.model_scores.ndim == 2 else 0, np.float32)
        return self.model_scores.mean(axis=0)

    @property
    def score(self) -> float:
        """The video's highlight probability: the mean of its frame scores (NaN without frames)."""
        frames = self.frame_scores
        return float(frames.mean()) if frames.size else float("nan")

    def per_model(self) -> list[float]:
        """Each model's own video score (its frame scores' mean)."""
        return [float(row.mean()) if row.size else float("nan") for row in self.model_scores]


def ensemble_threshold(models: Sequence[FrameScorer]) -> float:
    """The decision threshold of the averaged models: the mean of their card thresholds."""
    return mean_threshold(m.threshold for m in models)


#: Sizes frames are sampled at for scoring: the first that covers the largest model. Sampling at the largest
#: model's size made a model's scores depend on its companions: a 64 px model scored 96 px frames (resized
#: again) inside an ensemble with a 96 px model and moved by up to 0.1 per second. Models up to 256 px
#: (every backbone's default) now always see the same frames.
SAMPLING_SIZES = (256, 512, 1024)


class _Sized(Protocol):
    @property
    def image_size(self) -> int: ...


def sampling_size(models: Iterable[_Sized]) -> int:
    """The square size to sample frames at for ``models`` (``SAMPLING_SIZES``): never an upscale for any."""
    sizes = [int(m.image_size) for m in models]
    if not sizes:
        raise ValueError("scoring needs at least one model")
    largest = max(sizes)
    return next((s for s in SAMPLING_SIZES if s >= largest), largest)


def scoring_sampler(models: Sequence[FrameScorer], *, device: str = "auto", fps: float = 1.0,
                    mode: SamplingMode = "auto", batch_size: int = 64, streams: int = 4) -> Sampler:
    """The sampler that feeds ``models``: square frames at ``sampling_size``."""
    return create_sampler(device, fps=fps, mode=mode, size=sampling_size(models), square=True,
                          batch_size=batch_size, streams=streams)


def _score_frames(models: Sequence[FrameScorer], frames: torch.Tensor) -> np.ndarray:
    return torch.stack([m.score_frames(frames) for m in models]).numpy().astype(np.float32)


def score_videos(videos: Iterable[str | os.PathLike[str]], models: Sequence[FrameScorer], *,
                 sampler: Sampler) -> Iterator[VideoScore]:
    """Scores many videos in one sampling stream, yielding each as soon as it is complete.

    Videos that fail to open or decode are yielded with ``error`` set; the stream goes on.
    """
    names = [m.name for m in models]
    parts: dict[Path, list[tuple[list[float], np.ndarray]]] = {}
    for batch in sampler.iter_batches([Path(v) for v in videos]):
        if len(batch):
            scores = _score_frames(models, batch.frames)
            start = 0
            # split the batch into runs of one video (frames of a video arrive in time order)
            while start < len(batch):
                path = Path(batch.paths[start])
                end = start
                while end < len(batch) and Path(batch.paths[end]) == path:
                    end += 1
                parts.setdefault(path, []).append((batch.timestamps[start:end], scores[:, start:end]))
                start = end
        for outcome in batch.completed:
            path = Path(outcome.path)
            chunks = parts.pop(path, [])
            times = [t for ts, _ in chunks for t in ts]
            matrix = (np.concatenate([s for _, s in chunks], axis=1) if chunks
                      else np.zeros((len(models), 0), np.float32))
            error = outcome.error
            if error is None and not times:
                error = QuadvaultError("no frames could be sampled", path=path)
            yield VideoScore(path=path, timestamps=times, model_scores=matrix, outcome=outcome, error=error,
                             models=names)


def score_video(video: str | os.PathLike[str], models: Sequence[FrameScorer], *, sampler: Sampler | None = None,
                device: str = "auto", fps: float = 1.0, mode: SamplingMode = "auto") -> VideoScore:
    """Scores one video; raises its error when it cannot be read. Pass ``sampler`` to reuse one."""
    sampler = sampler or scoring_sampler(models, device=device, fps=fps, mode=mode)
    result = None
    for result in score_videos([video], models, sampler=sampler):
        pass
    if result is None:  # pragma: no cover - the sampler reports every video
        raise QuadvaultError("the sampler reported nothing", path=Path(video))
    if result.error is not None:
        raise result.error
    return result
