"""One DALI video pipeline as a decoder of in-memory clips: clips in, ``(F, 3, H, W)`` uint8 tensors out.

A clip DALI cannot decode fails the whole DALI batch it is in, so a failed batch is retried clip by clip
on a fresh pipeline and only the bad clip reports its error.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import DecodeError
from ._remux import Clip

log = logging.getLogger(__name__)

#: Clips per DALI run (per decode stream); the decoder works on the samples of a batch in parallel. On the
#: H200, 4 streams x 4 samples per run x 4 threads sampled 1.3-1.9x faster than 8 streams x 2 x 2 (and than
#: 1 x 2 x 2) on all four clip kinds of ``sampling_bench`` (2026-11-26).
CLIPS_PER_RUN = 4
#: Threads of each stream's DALI pipeline (it decodes a run's samples on them), measured with the above.
DECODE_THREADS = 4


@dataclass
class DecodeStats:
    """DALI runs, samples and the frames they returned (exact mode decodes more than it returns), summed over
    a sampler's streams; runs that failed are not counted. Each DALI sample pays a fixed set-up (a decoder,
    its buffers; ~10 ms on an H200, serialised within a process), so frames per sample says how well
    merging and the sample budget amortise it. Also how the decode streams took their work: how often, how
    many clips were queued when they did, and how long they waited for one (all streams summed): streams
    that wait are short of prepared clips, and a short queue keeps their samples small."""

    runs: int = 0
    samples: int = 0
    frames: int = 0
    takes: int = 0
    queued_at_takes: int = 0  # clips queued when each take began, summed
    wait_s: float = 0.0  # time the streams waited for a first clip, summed
    decoder_opens: int = 0  # FFmpeg decode client: decoders opened (a CUDA context each on NVDEC)
    drains: int = 0  # FFmpeg decode client: times a decoder gave up the pictures it held back
    frames_on_device: int = 0  # FFmpeg decode client: pictures NVDEC left on the GPU (proof the hardware decoded)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, samples: int, frames: int, runs: int = 1) -> None:
        with self._lock:
            self.runs += runs
            self.samples += samples
            self.frames += frames

    def note_take(self, queued: int, waited_s: float) -> None:
        """A decode stream took a run's work, finding ``queued`` clips (the stop markers a run ends with count
        too) after waiting ``waited_s`` for one."""
        with self._lock:
            self.takes += 1
            self.queued_at_takes += queued
            self.wait_s += waited_s

    def note_wait(self, waited_s: float) -> None:
        """A decode stream waited ``waited_s`` and got the stop marker: idle at the end of a run, counted too."""
        with self._lock:
            self.wait_s += waited_s

    def note_decoder_open(self) -> None:
        with self._lock:
            self.decoder_opens += 1

    def note_drain(self) -> None:
        with self._lock:
            self.drains += 1

    def note_on_device(self) -> None:
        with self._lock:
            self.frames_on_device += 1

    #: The counts a decoding process reports to its parent (``take``, then ``add_counts`` there)
    REPORTED = ("runs", "samples", "frames", "decoder_opens", "drains", "frames_on_device")

    def take(self) -> dict[str, int]:
        """The ``REPORTED`` counts since the last ``take``, zeroed: a decoding process sends them to its parent,
        whose rows would otherwise say no NVDEC picture came out of children that decoded on NVDEC."""
        with self._lock:
            counts = {name: getattr(self, name) for name in self.REPORTED}
            for name in self.REPORTED:
                setattr(self, name, 0)
        return counts

    def add_counts(self, counts: dict[str, int]) -> None:
        """A decoding process's ``take`` (a child of an older version sends runs, samples and frames only)."""
        with self._lock:
            for name in self.REPORTED:
                value = counts.get(name, 0)
                if isinstance(value, int):
                    setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict[str, float]:
        with self._lock:
            return {"dali_runs": self.runs, "dali_samples": self.samples, "frames_returned": self.frames,
                    "frames_per_sample": round(self.frames / self.samples, 2) if self.samples else 0.0,
                    "samples_per_run": round(self.samples / self.runs, 2) if self.runs else 0.0,
                    "takes": self.takes, "queued_at_takes": self.queued_at_takes,
                    "decode_wait_s": round(self.wait_s, 3), "decoder_opens": self.decoder_opens,
                    "drains": self.drains, "frames_on_device": self.frames_on_device}


class CopyFence:
    """The end of PyTorch's copies out of a DALI run's buffers (gpu only): DALI may reuse or free them once
    it runs again, and nothing makes it wait for PyTorch's stream, so a decoder waits here before each run.

    It also holds the run's outputs until then (``keep``): DALI 2.4's executor hands them over without a copy
    and returns their memory to a pool every pipeline of the process draws from, ordered after DALI's own
    work but not after PyTorch's copies, so another decode stream's run could refill a buffer still being
    copied out of."""

    def __init__(self) -> None:
        self._event: torch.cuda.Event | None = None
        self._kept: object = None

    def mark(self, device: torch.device | None, keep: object = None) -> None:
        """After queuing copies on ``device``'s current stream (``None``: nothing was queued on a GPU) out of
        ``keep`` (the run's outputs, released by ``wait``)."""
        if device is not None:
            self._event = torch.cuda.Event()
            self._event.record(torch.cuda.current_stream(device))
            self._kept = keep

    def wait(self) -> None:
        if self._event is not None:
            self._event.synchronize()
            self._event = None
        self._kept = None

    def forget(self) -> None:
        """Drops a fence whose wait failed (a CUDA error: the copies it marked are lost anyway)."""
        self._event = None
        self._kept = None


#: DALI decodes the clips from their own bytes instead of copying them when fed (``external_source(no_copy=True)``;
#: ``_run`` holds the clips until the run returns). Why: on the H100 a py-spy ``--gil`` profile put 19 % of the
#: GIL-holding samples in ``Pipeline.feed_input``. The default since stop 21, after three H100 calls agreed
#: (``sampling_bench`` layout ``4x4x4n`` against ``4x4x4`` in the same call): 1.34x / 1.23x (1080p H.264 /
#: 2160p HEVC, stop 19), 1.11x / 1.31x (8-s videos) and 1.33x / 1.07x (40-s videos, stop 21); the layout suffix
#: ``y`` copies as before, for the A/B.
FEED_WITHOUT_COPY = True


class ClipDecoder:
    """One DALI video pipeline: clips in, one ``(F, 3, H, W)`` uint8 tensor per clip out."""

    def __init__(self, decoder_device: str, device_id: int | None, size: int, square: bool,
                 clips_per_run: int = CLIPS_PER_RUN, num_threads: int = 2, stats: DecodeStats | None = None) -> None:
        self.decoder_device = decoder_device
        self.device_id = device_id if decoder_device == "mixed" else None
        self.size, self.square = size, square
        self.clips_per_run = clips_per_run
        self.num_threads = num_threads
        self.stats = stats if stats is not None else DecodeStats()
        self._pipe: Any = None
        self._copies = CopyFence()  # the copies out of the last run's buffers

    def close(self) -> None:
        """Ends this decoder once the frames of its last run are copied out."""
        try:
            self._discard_pipeline()
        except Exception as exc:  # noqa: BLE001 - a CUDA error here has already failed those clips
            log.debug("closing the DALI decoder: %s", exc)
            self._pipe = None

    def _discard_pipeline(self) -> None:
        """Drops a pipeline that raised (it is not reused), once nothing reads its buffers."""
        self._copies.wait()
        self._pipe = None

    def _pipeline(self) -> Any:
        if self._pipe is None:
            from ..pipelines import video_sampling_pipeline

            pipe = video_sampling_pipeline(decoder_device=self.decoder_device, size=self.size, square=self.square,
                                           feed_without_copy=FEED_WITHOUT_COPY, batch_size=self.clips_per_run,
                                           num_threads=self.num_threads, device_id=self.device_id)
            pipe.build()
            self._pipe = pipe
        return self._pipe

    def _run(self, clips: list[Clip]) -> list[torch.Tensor]:
        self._copies.wait()
        pipe = self._pipeline()
        feed_clips(pipe, clips)  # ``clips`` holds the fed bytes (``FEED_WITHOUT_COPY``) until the run returns
        (out,) = pipe.run()
        tensors = []
        copying_on: torch.device | None = None  # set once a copy out of DALI's buffers is queued on the GPU
        try:
            for i, clip in enumerate(clips):
                # DLPack makes PyTorch's stream wait for DALI's; the clone is queued on PyTorch's stream
                # and must finish before DALI's next run reuses the buffer (``CopyFence``).
                frames = torch.from_dlpack(out[i]).clone()
                if frames.is_cuda:
                    copying_on = frames.device
                if frames.shape[0] != len(clip):
                    raise DecodeError(f"decoder returned {frames.shape[0]} frames, {len(clip)} were asked for")
                tensors.append(frames)
        finally:
            self._copies.mark(copying_on, keep=out)  # also when a check failed after a copy was queued
        self.stats.add(len(clips), sum(len(c) for c in clips))
        return tensors

    def decode(self, clips: list[Clip]) -> list[torch.Tensor | Exception]:
        """Decodes ``clips``; a clip that fails yields its exception, the others their frames."""
        try:
            return list(self._run(clips))
        except Exception as exc:  # noqa: BLE001 - DALI raises RuntimeError for any bad input
            self._discard_pipeline()
            if len(clips) == 1:
                return [exc]
            log.debug("DALI batch of %d clips failed (%s); retrying them one by one", len(clips), exc)
        results: list[torch.Tensor | Exception] = []
        for clip in clips:
            try:
                results.extend(self._run([clip]))
            except Exception as exc:  # noqa: BLE001
                self._discard_pipeline()
                results.append(exc)
        return results


def feed_clips(pipe: Any, clips: Sequence[Clip], indices: Sequence[np.ndarray] | None = None) -> None:
    """Feeds one run of ``video_sampling_pipeline``: each clip's bytes, the frames wanted from it (``indices``
    instead of the clips' own, to test DALI), and the region of its decoded frames to keep."""
    from ..pipelines import ENCODED_INPUT, FRAMES_INPUT, ROI_INPUT

    pipe.feed_input(ENCODED_INPUT, [np.frombuffer(c.data, dtype=np.uint8) for c in clips])
    pipe.feed_input(FRAMES_INPUT, [np.ascontiguousarray(f, dtype=np.int32)
                                   for f in (indices if indices is not None else [c.frames for c in clips])])
    pipe.feed_input(ROI_INPUT, [np.array(c.roi, dtype=np.float32) for c in clips])


def error_summary(exc: BaseException, limit: int = 300) -> str:
    """DALI's multi-line error as one line: the reason after 'encountered:', without the boilerplate."""
    text = str(exc)
    text = text.split("encountered:", 1)[-1]
    noise = ("Critical error", "C++ context", "Current pipeline object", "Error in ", "which was used", "File ")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith(noise)]
    summary = " ".join(lines) or type(exc).__name__
    return summary if len(summary) <= limit else summary[: limit - 3] + "..."
