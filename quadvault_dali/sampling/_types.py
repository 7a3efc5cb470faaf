"""Result types shared by every sampling backend, so every caller is written once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ..errors import QuadvaultError
from ..probe import VideoInfo

SamplingMode = Literal["auto", "exact", "keyframe"]
ResolvedMode = Literal["exact", "keyframe"]

if TYPE_CHECKING:  # not at run time: clip-cutting worker processes import this module and must start fast
    import torch


class Abandoned(Exception):
    """The consumer stopped or the video failed while a CPU decode of it was still running."""


@dataclass
class VideoOutcome:
    """How one video went: reported once, in the batch that holds (or follows) its last frame."""

    path: Path
    info: VideoInfo | None
    mode: ResolvedMode | None
    frames: int = 0
    bytes_read: int = 0
    error: QuadvaultError | None = None
    #: which decoder produced the frames: ``nvdec``, ``pyav`` (the ``cpu`` backend, or the gpu backend's
    #: fallback for a video the hardware cannot decode), ``nvdec+pyav`` (the hardware failed mid-video, the
    #: CPU decoded the rest) or ``dali-cpu`` (tests); ``None`` before decoding
    decoder: str | None = None
    #: why the gpu backend decoded this video (or its rest) on the CPU (``None`` when it did not)
    fallback_reason: str | None = None
    #: frames its sampling plan holds (``None`` before it was planned); fewer ``frames`` than this means
    #: seconds that did not decode (damaged data the decoder skipped), though the video is ``ok``
    frames_expected: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class FrameBatch:
    """Frames from one or more videos, in the order they were sampled.

    ``frames`` is ``(N, 3, H, W)`` uint8 RGB on the backend's device (CUDA for ``gpu``).
    ``paths[i]`` and ``timestamps[i]`` describe frame ``i``; timestamps are presentation times in
    seconds from the start of the video. ``completed`` lists the videos that finished (ok or not)
    with this batch; a batch may hold no frames and only completions.
    """

    frames: torch.Tensor
    paths: list[Path]
    timestamps: list[float]
    completed: list[VideoOutcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.frames.ndim != 4 or self.frames.shape[1] != 3:
            raise ValueError(f"frames must be (N, 3, H, W), got {tuple(self.frames.shape)}")
        if not (len(self.paths) == len(self.timestamps) == self.frames.shape[0]):
            raise ValueError(
                f"{self.frames.shape[0]} frames but {len(self.paths)} paths and {len(self.timestamps)} timestamps"
            )

    def __len__(self) -> int:
        return int(self.frames.shape[0])
