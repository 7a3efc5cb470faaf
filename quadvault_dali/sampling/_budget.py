"""A bound on the host memory the gpu backend's queued clips hold, in bytes rather than in clips.

Clips wait in memory between the prepare threads that cut them and the decode streams that take them.
Counting clips alone let that grow with the footage: 128 queued 2160p keyframe clips of up to 32 MB,
each kept twice (the muxed MP4 and its packets, for merging), could hold ~8 GB per process, and
``processes=N`` multiplied it. A prepare thread now takes a clip's bytes from a ``ByteBudget`` before
queueing it and the decode stream gives them back once the clip is decoded.
"""

from __future__ import annotations

import os
import threading

from ._remux import Clip

#: The most queued clips may hold in one sampler, before its share (``SamplerConfig.memory_share``):
#: a few runs of every stream at the card-sized samples, far above what 1080p keyframe clips need.
MAX_QUEUED_BYTES = 2 << 30
#: ...and at most this fraction of the machine's memory (a laptop must not swap overnight).
RAM_FRACTION = 1 / 8
#: Never below this, whatever the share: a budget smaller than one run of clips starves the decoders.
MIN_QUEUED_BYTES = 128 << 20


def host_memory_bytes() -> int | None:
    """Physical memory of this machine, where the OS says (Linux, macOS); ``None`` elsewhere."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def queued_bytes_for(share: float = 1.0, ram: int | None = None) -> int:
    """The byte budget of one sampler's queued clips: ``MAX_QUEUED_BYTES`` or ``RAM_FRACTION`` of the
    machine's memory, whichever is smaller, times this sampler's ``share`` (1/N for N processes)."""
    ram = host_memory_bytes() if ram is None else ram
    limit = MAX_QUEUED_BYTES if ram is None else min(MAX_QUEUED_BYTES, int(ram * RAM_FRACTION))
    return max(MIN_QUEUED_BYTES, int(limit * share))


def clip_bytes(clip: Clip) -> int:
    """Host memory a queued clip holds: its MP4 where made, and its packets where kept (to merge or join)."""
    return clip.data_bytes_held + sum(len(p.data) + len(p.original or b"") for run in clip.runs for p in run.packets)


class ByteBudget:
    """Bytes held by queued clips, at most ``limit``; one clip larger than that still passes alone (never a
    deadlock), and ``close`` wakes every waiting thread (the run is stopping)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.peak = 0
        self._closed = False
        self._cond = threading.Condition()

    def acquire(self, count: int) -> bool:
        """Waits until ``count`` bytes fit (or nothing else is held); ``False`` if the budget was closed."""
        with self._cond:
            while not self._closed and self.held and self.held + count > self.limit:
                self._cond.wait()
            if self._closed:
                return False
            self.held += count
            self.peak = max(self.peak, self.held)
            return True

    def release(self, count: int) -> None:
        with self._cond:
            self.held = max(0, self.held - count)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
