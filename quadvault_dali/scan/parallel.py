"""``--gpus``: one worker process per GPU, each with its own sampler, decode streams and models.

The parent plans the work (resume included) and splits the to-do list without overlap, balancing bytes;
each worker writes its own shard pairs (tag ``gK``, joined to the ``--shard`` tag), so workers never
touch each other's files. Processes are started with ``spawn``: CUDA cannot be used in a forked child.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import os
import queue
import signal
from pathlib import Path
from typing import Any, Callable, Sequence

from .._gc import freeze_startup_objects
from .._lifetime import die_with_parent
from ..errors import BackendUnavailableError, QuadvaultError

log = logging.getLogger(__name__)


def parse_gpus(spec: str, available: int | None = None) -> list[int]:
    """``all`` or ``0,1,3`` -> GPU indices; checks them against the GPUs this machine has."""
    if available is None:
        import torch

        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if spec.strip().lower() == "all":
        if available == 0:
            raise BackendUnavailableError("--gpus all asked for, but no CUDA GPU is visible",
                                          hint="drop --gpus to scan on the CPU")
        return list(range(available))
    try:
        ids = [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise BackendUnavailableError(f"--gpus must be 'all' or indices like 0,1; got {spec!r}") from None
    if not ids or len(set(ids)) != len(ids) or min(ids) < 0:
        raise BackendUnavailableError(f"--gpus must list distinct GPU indices, got {spec!r}")
    missing = [i for i in ids if i >= available]
    if missing:
        raise BackendUnavailableError(f"--gpus {spec}: GPU {missing[0]} does not exist",
                                      hint=f"this machine has {available} GPU(s)")
    return ids


def split_work(files: Sequence[Any], workers: int) -> list[list[Any]]:
    """Deterministic split without overlap: biggest files first to the least-loaded worker.

    Each worker's list keeps the input (path) order so its shards read like a single scan's.
    """
    loads = [0] * workers
    chosen: list[list[int]] = [[] for _ in range(workers)]
    order = sorted(range(len(files)), key=lambda i: (-files[i].size_bytes, str(files[i].path)))
    for i in order:
        k = min(range(workers), key=lambda w: (loads[w], w))
        loads[k] += files[i].size_bytes
        chosen[k].append(i)
    return [[files[i] for i in sorted(idx)] for idx in chosen]


def worker_tag(base: str, gpu: int) -> str:
    return f"{base}-g{gpu}" if base else f"g{gpu}"


def _worker(files: list[Any], model_paths: list[Path], options: Any, gpu: int, out: Any,
            crashed: dict[Path, str]) -> None:
    """Runs in the child: loads the models on its GPU and scans its part; reports through ``out``."""
    from ..device import resolve_device, torch_device
    from ..model import load_model
    from .runner import scan_files
    from .shards import TagLock

    tag = worker_tag(options.tag, gpu)
    die_with_parent()  # a kill -9 of the scan must not leave workers writing shards under its tags
    stop_on_signals()
    try:
        backend = resolve_device(options.device)
        if backend == "gpu":
            import torch

            torch.cuda.set_device(gpu)
        options = dataclasses.replace(options, device_id=gpu)
        scorers = [load_model(p, device=torch_device(backend, gpu)) for p in model_paths]
        lock = TagLock(options.out_dir, tag)
        if not lock.acquire():
            raise QuadvaultError(f"another writer holds shard tag {tag}", path=options.out_dir)
        try:
            freeze_startup_objects()  # this worker process's imports and models (see _gc)
            stats = scan_files(files, scorers, options, tag=tag, crashed=crashed,
                               on_progress=lambda s: out.put(("progress", gpu, dataclasses.asdict(s))))
        finally:
            lock.release()
        out.put(("done", gpu, dataclasses.asdict(stats)))
    except QuadvaultError as exc:
        out.put(("error", gpu, str(exc)))
    except KeyboardInterrupt:
        out.put(("error", gpu, "interrupted"))


def scan_on_gpus(todo: Sequence[Any], model_paths: Sequence[Path], options: Any, gpus: Sequence[int], *,
                 on_progress: Callable[[Any], None] | None = None, crashed: dict[Path, str] | None = None) -> Any:
    """Scans ``todo`` with one process per GPU; returns the merged ``RunStats``."""
    from .runner import RunStats

    ctx = mp.get_context("spawn")
    messages = ctx.Queue()
    parts = split_work(list(todo), len(gpus))
    procs = {gpu: ctx.Process(target=_worker, args=(part, list(model_paths), options, gpu, messages,
                                                    dict(crashed or {})),
                              name=f"quadvault-scan-gpu{gpu}", daemon=False)
             for gpu, part in zip(gpus, parts)}
    for gpu, proc in procs.items():
        log.info("GPU %d worker: %d videos", gpu, len(parts[list(procs).index(gpu)]))
        proc.start()
    latest: dict[int, RunStats] = {g: RunStats() for g in gpus}
    finished: set[int] = set()
    failures: list[str] = []
    try:
        _collect(procs, messages, latest, finished, failures, on_progress)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM in the parent: the workers flush what they finished first
        for proc in procs.values():
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in procs.values():
            proc.join(timeout=WORKER_STOP_S)
        raise
    for proc in procs.values():
        proc.join()
    merged = RunStats()
    for s in latest.values():
        merged.merge(s)
    if failures:
        crashed = [gpu for gpu, proc in procs.items() if (proc.exitcode or 0) < 0]
        kind = WorkerCrashed if crashed else QuadvaultError
        raise kind("scan workers failed: " + "; ".join(failures),
                   hint="finished videos are saved; run the same command again to resume")
    return merged


class WorkerCrashed(QuadvaultError):
    """A GPU worker died by a signal (a decoder or driver crash): a supervised scan starts again, as after its own
    crash; the workers' journals name the videos they had in flight."""


#: How long an interrupted scan waits for its GPU workers to save what they finished.
WORKER_STOP_S = 300.0


def stop_on_signals(signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM),
                    seen: list[int] | None = None) -> dict[int, Any]:
    """``signals`` raise ``KeyboardInterrupt`` once (the scan then saves its finished videos; the signal is
    appended to ``seen``); later ones are ignored, so a second signal (Ctrl-C reaching every process, then
    the parent's forward) cannot break that save. A signal this process was started ignoring stays ignored (a
    script's ``quadvault scan ... &`` ignores the script's Ctrl-C). Returns the handlers it replaced."""
    def stop(signum: int, frame: Any) -> None:
        if seen is not None:
            seen.append(signum)
        for number in signals:
            try:
                signal.signal(number, signal.SIG_IGN)
            except OSError:  # that signal is pending ("ignored due to race condition"): ignoring it is the point
                pass
        raise KeyboardInterrupt

    return {number: signal.signal(number, stop) for number in signals
            if signal.getsignal(number) is not signal.SIG_IGN}


def _collect(procs: dict[int, Any], messages: Any, latest: dict[int, Any], finished: set[int],
             failures: list[str], on_progress: Callable[[Any], None] | None) -> None:
    """Reads the workers' messages until every worker is done (or gone)."""
    from .runner import RunStats

    while len(finished) < len(procs):
        try:
            kind, gpu, payload = messages.get(timeout=1.0)
        except queue.Empty:
            for gpu, proc in procs.items():
                if gpu not in finished and not proc.is_alive() and messages.empty():
                    finished.add(gpu)
                    failures.append(f"GPU {gpu} worker exited with code {proc.exitcode}")
            continue
        if kind == "error":
            finished.add(gpu)
            failures.append(f"GPU {gpu}: {payload}")
            continue
        latest[gpu] = RunStats(**payload)
        if kind == "done":
            finished.add(gpu)
        if on_progress is not None:
            merged = RunStats()
            for s in latest.values():
                merged.merge(s)
            on_progress(merged)
