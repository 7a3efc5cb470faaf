"""One video's ordered, bounded hand-over from the gpu backend's decode threads to the consumer.

Clips of a video are decoded by several streams at once and finish in any order; the consumer takes
them strictly in order. At most ``INFLIGHT_PER_VIDEO`` clips of a video are cut, decoded or waiting at
any time (a slot each), so memory stays bounded however long the video is.

When the hardware decoder fails on a clip, the decode thread only records it. The consumer decides the
take-over when it reaches that clip: everything before it was handed over already, so the CPU decoder
continues from exactly there, without a gap or a repeated frame, however the streams raced.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch

from ..errors import QuadvaultError, detached, unexpected_failure
from ._base import VideoSource, path_of
from ._types import Abandoned, VideoOutcome

log = logging.getLogger(__name__)

#: Clips of one video that may be decoded ahead of the consumer (bounds memory per video).
INFLIGHT_PER_VIDEO = 4


@dataclass(frozen=True)
class TakeOver:
    """The consumer reached a clip the hardware decoder failed on: the CPU decoder delivers the rest."""

    first_seq: int  # sequence number of the first chunk the CPU delivers
    after_s: float  # time of the last frame already handed over (-inf: none)
    failure: str  # what the hardware decoder said


class VideoTask:
    """One video's progress: its clips' results, handed to the consumer in order."""

    def __init__(self, source: VideoSource) -> None:
        self.path = path_of(source)
        self.outcome = VideoOutcome(self.path, None, None)
        self.slots = threading.Semaphore(INFLIGHT_PER_VIDEO)
        self._cond = threading.Condition()
        self._results: dict[int, tuple[torch.Tensor, list[float]]] = {}
        self._clips: int | None = None  # known once preparation has finished
        self._next = 0
        self._last_time = float("-inf")  # time of the last frame handed to the consumer
        self._hardware_failures: dict[int, str] = {}
        self._preparer_done = False  # its bytes are counted: the outcome may be reported
        #: the CPU decoder has taken over; hardware results are no longer wanted
        self.on_cpu = False

    @property
    def failed(self) -> bool:
        return self.outcome.error is not None

    def fail(self, error: QuadvaultError) -> None:
        with self._cond:
            if self.outcome.error is None:
                self.outcome.error = error
            self._cond.notify_all()
        for _ in range(INFLIGHT_PER_VIDEO):  # unblock a preparer waiting for a slot
            self.slots.release()

    @contextmanager
    def failures_reported(self, doing: str, *, cpu_takeover: bool = False) -> Iterator[None]:
        """Any failure inside becomes this video's error outcome; one broken file never stops the others.

        Once the CPU decoder has taken over, only its failures (``cpu_takeover``) decide the outcome.
        """
        try:
            yield
        except Abandoned:
            pass
        except Exception as exc:  # noqa: BLE001 - FFmpeg, DALI and PyTorch raise many types
            if self.on_cpu and not cpu_takeover:
                log.debug("%s: %s failed after the CPU took over: %s", self.path, doing, exc)
            else:
                if not isinstance(exc, QuadvaultError):
                    log.debug("unexpected failure %s %s", doing, self.path, exc_info=True)
                self.fail(detached(unexpected_failure(exc, doing, self.path)))

    def add_bytes(self, count: int) -> None:
        """Bytes read for this video (the preparer and a CPU decode may both add)."""
        with self._cond:
            self.outcome.bytes_read += count

    def wants(self, seq: int) -> bool:
        """Whether clip ``seq`` is still worth decoding (not failed, not taken over, not past a failure)."""
        with self._cond:
            return not (self.failed or self.on_cpu or any(f < seq for f in self._hardware_failures))

    def prepared(self, clips: int, *, from_cpu: bool = False) -> None:
        """All ``clips`` results are delivered or on their way (after a take-over, only the CPU's count);
        the preparer calls it last, after counting its bytes."""
        with self._cond:
            if not from_cpu:
                self._preparer_done = True
            if not (self.on_cpu and not from_cpu):
                self._clips = clips
            self._cond.notify_all()

    def deliver(self, seq: int, frames: torch.Tensor, times: list[float], *, from_cpu: bool = False) -> None:
        with self._cond:
            if self.on_cpu and not from_cpu:  # a hardware result that lost the race to a take-over
                self.slots.release()
                return
            self._results[seq] = (frames, times)
            self._cond.notify_all()

    def discard(self) -> None:
        """A clip that will not be delivered (failed, or no longer wanted): give its slot back."""
        self.slots.release()

    def hardware_failed(self, seq: int, failure: str) -> None:
        with self._cond:
            self._hardware_failures[seq] = failure
            self._cond.notify_all()

    def take(self) -> tuple[torch.Tensor, list[float]] | TakeOver | None:
        """The next clip's frames in order; a ``TakeOver`` once for the clip the hardware failed on (the
        caller starts the CPU decode); ``None`` once the video is finished (or failed)."""
        with self._cond:
            while True:
                if self.failed:
                    return None
                if self._next in self._results:
                    item = self._results.pop(self._next)
                    self._next += 1
                    if item[1]:
                        self._last_time = item[1][-1]
                    self.slots.release()
                    return item
                if not self.on_cpu and self._next in self._hardware_failures:
                    self.on_cpu = True
                    for _ in self._results:  # later clips from the hardware: superseded
                        self.slots.release()
                    self._results.clear()
                    self._clips = None
                    return TakeOver(self._next, self._last_time, self._hardware_failures[self._next])
                if self._clips is not None and self._next >= self._clips and self._preparer_done:
                    return None
                self._cond.wait()
