"""Python's cyclic garbage collector against long jobs: what startup built is left out of its passes.

A scan process holds torch, DALI, PyAV and a model: ~370,000 objects the collector tracks. Every full
(generation 2) collection walks all of them with every Python thread stopped -- 167 ms measured on the
2-core EPYC, one of them inside a single second of sampling (16 % of that second), while the decode
streams' feeding threads and the consumer all waited. ``gc.freeze()`` moves the objects alive now into a
permanent generation that collections skip; they are still freed by reference counting, and everything
created afterwards is collected as before.

Only processes this project owns call it: the command-line entry points (``cli._options.long_job``), the
decoding children, the per-GPU scan workers and training ranks, the benchmarks. Library functions leave
the garbage collector of the process that calls them (a notebook, a service) alone.
"""

from __future__ import annotations

import gc
import logging
import threading

log = logging.getLogger(__name__)
_lock = threading.Lock()
_frozen = False


def freeze_startup_objects() -> None:
    """Once per process, when the long work starts (imports done, models loaded): collect, then freeze."""
    global _frozen
    with _lock:
        if _frozen:
            return
        _frozen = True
        gc.collect()
        gc.freeze()
        log.debug("%d objects moved out of the garbage collector's passes", gc.get_freeze_count())
