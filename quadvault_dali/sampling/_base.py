"""The one sampler interface; backends register under a name (``cpu`` on PyAV, ``gpu`` on DALI)."""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Iterable, Iterator, Sequence

import torch

from ..device import nvdec_status, resolve_device
from ..errors import BackendUnavailableError, QuadvaultError
from ..probe import VideoInfo
from ._types import FrameBatch, SamplingMode, VideoOutcome

log = logging.getLogger(__name__)

VideoSource = str | os.PathLike[str] | VideoInfo
#: what decodes on the GPU (``SamplerConfig.decode_client``)
DECODE_CLIENTS = ("dali", "ffmpeg")


@dataclass(frozen=True)
class SamplerConfig:
    """What every backend honours.

    ``size``: frames are resized so the short side is ``size`` (aspect kept); with ``square`` they are
    then centre-cropped to ``size`` x ``size`` (classifier input, batches mix videos). Without
    ``square``, each batch holds frames of one video only, since shapes differ between videos.
    ``cpu_fallback`` (gpu backend): a video the hardware decoder cannot take (codec, chroma, bit depth,
    size), or fails on, is decoded (from there) on the CPU and its frames still land on the GPU;
    ``False`` makes it an error outcome.
    ``processes``: decode in that many child processes, each running the backend with ``streams`` streams
    (``_processes``): a decoder that crashes or hangs costs one video, not the run.
    ``memory_share``: the part of the memory budgets this sampler may use (GPU memory for decoded frames,
    host memory for queued clips, ``_budget``); the process sampler gives each of its N children 1/N.
    ``stream_decode`` (gpu backend, experimental): decode merged keyframe clips with DALI's streaming
    operator, one decoder set-up per long clip (``_stream_decoder``); the other backends ignore it.
    ``prepare_processes`` (gpu backend, experimental): probe and cut clips in that many worker processes
    instead of threads of this process (``_prepare_pool``); 0 keeps the threads. The cpu backend ignores it.
    ``spread_min_frames`` (DALI backends, experimental): spread a DALI run's clips evenly over its samples, each
    at least that many frames, instead of filling the first (``_samples.spread_pixels``); ``None`` fills.
    ``budget_samples`` (gpu backend, experimental): the samples in flight the card's memory is divided by when
    sizing samples; ``None``: streams x samples per run.
    ``decode_client`` (gpu backend, experimental): ``dali`` decodes with DALI's video decoder; ``ffmpeg`` with
    FFmpeg's NVDEC decoders through PyAV, one kept open per stream and set-up and fed every video's packets
    (``_ffmpeg_decoder``; H.264 and HEVC, other codecs go to the CPU decoder). The other backends ignore it.
    """

    fps: float = 1.0
    mode: SamplingMode = "auto"
    size: int = 224
    square: bool = True
    batch_size: int = 64
    streams: int = 4
    device_id: int = 0
    cpu_fallback: bool = True
    processes: int = 1
    memory_share: float = 1.0
    stream_decode: bool = False
    prepare_processes: int = 0
    spread_min_frames: int | None = None
    budget_samples: int | None = None
    decode_client: str = "dali"

    def __post_init__(self) -> None:
        if self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if self.mode not in ("auto", "exact", "keyframe"):
            raise ValueError(f"mode must be auto, exact or keyframe, got {self.mode!r}")
        if self.size < 8:
            raise ValueError(f"size must be at least 8 pixels, got {self.size}")
        if self.batch_size < 1 or self.streams < 1 or self.processes < 1:
            raise ValueError(f"batch_size, streams and processes must be >= 1, got {self.batch_size}, "
                             f"{self.streams}, {self.processes}")
        if self.prepare_processes < 0:
            raise ValueError(f"prepare_processes must be >= 0, got {self.prepare_processes}")
        for name in ("spread_min_frames", "budget_samples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {getattr(self, name)}")
        if self.decode_client not in DECODE_CLIENTS:
            raise ValueError(f"decode_client must be one of {', '.join(DECODE_CLIENTS)}, got {self.decode_client!r}")
        if not 0 < self.memory_share <= 1:
            raise ValueError(f"memory_share must be in (0, 1], got {self.memory_share}")


class Sampler(ABC):
    """Samples frames at ``fps`` from many videos, streaming batches; bad videos become outcomes."""

    backend: ClassVar[str]

    def __init__(self, config: SamplerConfig | None = None, **overrides: object) -> None:
        base = config or SamplerConfig()
        self.config = SamplerConfig(**{**base.__dict__, **overrides}) if overrides else base

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """Where the frames of the batches live."""

    @abstractmethod
    def iter_batches(self, videos: Iterable[VideoSource]) -> Iterator[FrameBatch]:
        """Frames of all ``videos`` in batches of at most ``batch_size``; every video gets one outcome."""

    def close(self) -> None:
        """Frees what the sampler keeps between calls (decoding processes); in-process backends keep nothing."""

    def __enter__(self) -> "Sampler":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def sample_video(self, video: VideoSource) -> tuple[torch.Tensor, list[float], VideoOutcome]:
        """All frames of one video (N, 3, H, W) with timestamps; raises the video's error if it failed."""
        chunks: list[torch.Tensor] = []
        times: list[float] = []
        outcome: VideoOutcome | None = None
        for batch in self.iter_batches([video]):
            if len(batch):
                chunks.append(batch.frames)
                times.extend(batch.timestamps)
            for done in batch.completed:
                outcome = done
        if outcome is None:  # pragma: no cover - backends always report
            raise QuadvaultError("sampler reported no outcome", path=path_of(video))
        if outcome.error is not None:
            raise outcome.error
        size = self.config.size
        frames = torch.cat(chunks) if chunks else torch.empty((0, 3, size, size), dtype=torch.uint8, device=self.device)
        return frames, times, outcome


def path_of(video: VideoSource) -> Path:
    """The file a video source names (a path, or a probed ``VideoInfo``)."""
    return video.path if isinstance(video, VideoInfo) else Path(video)


_BACKENDS: dict[str, Callable[..., Sampler]] = {}


def register_backend(name: str) -> Callable[[type[Sampler]], type[Sampler]]:
    def wrap(cls: type[Sampler]) -> type[Sampler]:
        cls.backend = name
        _BACKENDS[name] = cls
        return cls
    return wrap


def _load_backends() -> None:
    """Imports the built-in backends, which register themselves (``gpu`` only where DALI imports); a backend
    registered before under the same name (a plugin, a test) keeps its place, as when the package imported
    them first."""
    earlier = dict(_BACKENDS)
    from . import _cpu  # noqa: F401
    try:
        from . import _gpu  # noqa: F401
    except ImportError:  # pragma: no cover - depends on the machine
        pass
    _BACKENDS.update(earlier)


def available_backends() -> list[str]:
    _load_backends()
    return sorted(_BACKENDS)


def create_sampler(device: str = "auto", config: SamplerConfig | None = None, **overrides: object) -> Sampler:
    """The sampler for ``device`` (auto|gpu|cpu). ``gpu`` never falls back silently: it raises instead.

    ``auto`` on a GPU without NVDEC (the driver's decode library missing) decodes on the CPU and says so;
    ``gpu`` there is an error naming the library.
    """
    _load_backends()
    backend = resolve_device(device)
    if backend == "gpu":
        usable, reason = nvdec_status()
        if not usable:
            if device == "gpu":
                raise BackendUnavailableError(f"--device gpu asked for, but {reason}",
                                              hint="use --device cpu to decode on the CPU")
            log.warning("decoding video on the CPU: %s", reason)
            backend = "cpu"
    if backend not in _BACKENDS:
        raise BackendUnavailableError(f"sampling backend {backend!r} is not available",
                                      hint=f"available: {', '.join(available_backends()) or 'none'}")
    chosen = _BACKENDS[backend]
    base = config or SamplerConfig()
    processes = int(overrides.get("processes", base.processes))  # type: ignore[call-overload]
    if int(overrides.get("prepare_processes", base.prepare_processes)):  # type: ignore[call-overload]
        if backend != "gpu":
            log.warning("prepare processes cut clips for the GPU decoder: not used by the %s backend", backend)
        elif processes > 1:
            log.warning("prepare processes are not used inside %d decoding processes", processes)
    client = str(overrides.get("decode_client", base.decode_client))
    if client != "dali" and backend != "gpu":
        log.warning("the %s decode client decodes on NVDEC: not used by the %s backend", client, backend)
    if processes > 1:
        from ._processes import ProcessSampler

        return ProcessSampler(chosen, config, **overrides)
    return chosen(config, **overrides)


def as_sources(videos: Sequence[VideoSource]) -> list[VideoSource]:
    return list(videos)
