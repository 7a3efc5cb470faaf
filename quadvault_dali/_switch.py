"""The GIL switch interval of the processes this project owns: 0.5 ms instead of Python's 5 ms.

A sampling process runs Python threads that hold the GIL briefly between native calls that release it:
prepare threads (probe, cut clips), one feeding thread per DALI pipeline, the consumer (scoring, writing
shards). While one of them runs Python, a thread coming back from a native call waits for the GIL up to
the switch interval, at every return: a convoy that keeps the decoders waiting for their next clip. On the
H200 (2026-11-26, ``sampling_bench``/``scan_bench`` rows ending in ``i``) 0.5 ms sampled 1.05x (1080p H.264)
and 1.09x (2160p HEVC) the frames/s of the default, and the keyframe scan of 200 videos took 4.6 s instead
of 6.5 s (1.41x). Like ``_gc``, only the project's own processes set it (``cli._options.long_job``, the
decoding children, the per-GPU scan workers, the benchmarks); a library call leaves its caller's
interpreter alone.
"""

from __future__ import annotations

import sys

#: seconds; Python's default is 0.005
SWITCH_INTERVAL_S = 0.0005


def use_short_switch_interval() -> None:
    """Sets this process's switch interval to ``SWITCH_INTERVAL_S`` (idempotent)."""
    sys.setswitchinterval(SWITCH_INTERVAL_S)
