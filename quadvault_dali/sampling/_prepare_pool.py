"""Clips cut in worker processes (``SamplerConfig.prepare_processes``, experimental): probing, reading the
packet index and cutting clips run outside the decoding process's GIL.

Why: on the H200 (2026-11-26) sampling 1080p H.264 reached 1,292 frames/s with NVDEC 30 % busy. Its decode
threads merge whatever clips are queued, and the samples held 42 frames of the 188 the memory budget allows,
with at most 220 MB of the 2 GB queue budget used: the prepare threads could not keep the queue full, and
more of them only contend for the GIL (16 threads prepared half as fast as 4). Here each video is prepared by
one of N processes that hold no CUDA context; the decoding process's prepare thread only relays the clips
(a few hundred kB to a few MB each, pickled over a pipe) into the work queue, with the same slots, byte
budget and failure handling as when it cuts them itself.

Protocol, per video, over one duplex pipe per worker (every job ends with ``("end", bytes_read)``):
    parent: (path, CutSettings)
    worker: ("probed", VideoInfo) | ("error", QuadvaultError)
    parent: ("cut", stream_cap) | ("skip",)           -- the parent's backend decides what it can decode
    worker: ("plan", mode, expected_frames), then ("clip", Clip)..., or ("cut_error", summary)
    parent: ("stop",) at any time after "cut"          -- the video is no longer wanted
A worker that dies (a decoder crashing on a damaged file) costs that video an error, and is replaced.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import time
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import multiprocessing as mp
import multiprocessing.connection as mp_connection

from ..errors import DecodeError, QuadvaultError, unexpected_failure
from ..probe import probe_open
from ._plan import plan_samples
from ._reader import CuttingSource
from ._remux import start_clips
from ._types import Abandoned

log = logging.getLogger(__name__)
DOING = "preparing for GPU decoding"
#: how long a new worker may take to import its libraries and say it is ready
START_TIMEOUT_S = 300.0
#: how often a worker checks that its parent is still there
PARENT_CHECK_S = 1.0


@dataclass(frozen=True)
class CutSettings:
    """What cutting a video depends on, from the decoding process's sampler."""

    fps: float
    mode: str
    uncrop: bool
    clip_pixels: int
    mux: bool = True  # False: clips of packets only (``_remux.packets_clip``), for the FFmpeg decode client


def serve(conn: Any) -> None:
    """A worker: cuts the videos the parent sends until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _exit_with_parent()
    try:
        conn.send(("ready",))  # imports done: the pool does not hand a video to a worker still starting
    except (BrokenPipeError, OSError):  # the pool gave up on starting (another worker failed): nothing to do
        return
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if len(message) == 2 and isinstance(message[1], CutSettings):
            cut_one(conn, Path(message[0]), message[1])
        # else a "stop" that crossed this worker's "end": the pipe is in order, so it comes before the next job


def cut_one(conn: Any, path: Path, settings: CutSettings) -> None:
    """One video's messages (see the module's docstring)."""
    source: CuttingSource | None = None
    container = None
    try:
        try:
            source = CuttingSource(path)
            container = source.open()
            info, index = probe_open(container, path)
        except Exception as exc:  # noqa: BLE001 - becomes the video's error, as in the decoding process
            conn.send(("error", unexpected_failure(exc, DOING, path)))
            return
        conn.send(("probed", info))
        reply = _recv_not_counted(conn, source)
        if reply[0] != "cut":
            return
        stream_cap = reply[1]
        try:
            plan = plan_samples(info, index, fps=settings.fps, mode=settings.mode)  # type: ignore[arg-type]
            conn.send(("plan", plan.mode, plan.expected_frames))
            container, cut = start_clips(plan, container, source.file, stream_cap=stream_cap,
                                         clip_pixels=settings.clip_pixels, uncrop=settings.uncrop,
                                         by_path=source.by_path, mux=settings.mux)
        except Exception as exc:  # noqa: BLE001
            conn.send(("error", unexpected_failure(exc, DOING, path)))
            return
        while not (conn.poll() and _recv_not_counted(conn, source)[0] == "stop"):
            try:
                clip = next(cut)
            except StopIteration:
                break
            except Exception as exc:  # noqa: BLE001 - the CPU decoder may still read what the cutter cannot
                conn.send(("cut_error", str(exc).removeprefix(f"{path}: "), unexpected_failure(exc, DOING, path)))
                break
            clip.stream_cap = stream_cap
            conn.send(("clip", clip))
    except (EOFError, OSError):  # the parent is gone (its pipe closed or reset)
        raise SystemExit(0) from None
    finally:
        if container is not None:
            container.close()
        bytes_read = source.bytes_read() if source is not None else 0
        if source is not None:
            source.close()
        try:
            conn.send(("end", bytes_read))
        except (BrokenPipeError, OSError):
            pass


def _recv_not_counted(conn: Any, source: CuttingSource) -> Any:
    """The parent's next message; the pipe's bytes are not the video's."""
    with source.not_counting():
        return conn.recv()


class PrepareWorkerDied(DecodeError):
    """The process preparing a video died (a native crash on a damaged file)."""


class PoolUnavailable(Exception):
    """No worker can take a video (the pool is closed, or a worker could not be restarted): the caller cuts
    the video itself, in its thread, as without workers."""


#: how often a prepare thread waiting for its worker checks whether the run was stopped
POLL_S = 0.5


class _Worker:
    def __init__(self, ctx: Any, target: Callable[[Any], None]) -> None:
        self.conn, theirs = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=target, args=(theirs,), name="quadvault-prepare", daemon=True)
        self.proc.start()
        theirs.close()

    def close(self) -> None:
        self.conn.close()
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=5)


def _kill(workers: list[_Worker]) -> None:
    """Stops workers that are still starting, all at once (closing them one by one waited 5 s for each)."""
    for worker in workers:
        worker.conn.close()
        if worker.proc.is_alive():
            worker.proc.kill()
    for worker in workers:
        worker.proc.join(timeout=5)


class PreparePool:
    """``processes`` workers, each serving one video at a time to whichever prepare thread holds it.

    Workers leave when their parent does, by their pipe's EOF or, busy in native code, by watching their
    parent's pid (``_exit_with_parent``), not by ``PR_SET_PDEATHSIG``: Linux sends that when the *thread*
    that started the child ends, and replacements start on prepare threads, which end with every run. A
    worker that cannot be restarted makes the pool unusable (``usable``); the videos left are then cut in
    their prepare threads."""

    def __init__(self, processes: int, target: Callable[[Any], None] = serve) -> None:
        self._ctx = mp.get_context("spawn")  # the decoding process holds CUDA: never fork it
        self._target = target  # what a worker runs (tests give one that crashes)
        self._idle: "queue.Queue[_Worker]" = queue.Queue()
        self._all: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        self.usable = True
        starting: list[_Worker] = []
        try:
            # all started before any is waited for: each imports its libraries (av, numpy; seconds on a cold
            # page cache), and one after another the first scan of a stop-17 lease spent 15 s starting 4
            for _ in range(processes):
                starting.append(_Worker(self._ctx, self._target))
            waiting = {worker.conn: worker for worker in starting}
            deadline = time.monotonic() + START_TIMEOUT_S
            while waiting:  # in the order they get ready (or die): a slow one does not hide a dead one
                ready = mp_connection.wait(list(waiting), timeout=max(0.0, deadline - time.monotonic()))
                if not ready:
                    raise QuadvaultError(f"a process to prepare clips did not start within {START_TIMEOUT_S:.0f} s",
                                         hint="run with -v to see its log")
                for conn in ready:
                    self._admit(waiting.pop(conn))  # type: ignore[arg-type]
        except BaseException:
            _kill([w for w in starting if w not in self._all])  # still starting: nothing of theirs to keep
            self.close()
            raise

    def _add(self) -> None:
        """Starts a worker and waits until it is ready; raises ``QuadvaultError`` when it cannot start."""
        self._admit(_Worker(self._ctx, self._target))

    def _admit(self, worker: _Worker) -> None:
        """Waits until a started worker is ready and makes it idle; closes it and raises ``QuadvaultError``
        when it is not."""
        if not worker.conn.poll(START_TIMEOUT_S) or _recv_or_none(worker.conn) != ("ready",):
            worker.close()
            how = f"exited with code {worker.proc.exitcode}" if worker.proc.exitcode is not None else \
                f"did not start within {START_TIMEOUT_S:.0f} s"
            raise QuadvaultError(f"a process to prepare clips {how}", hint="run with -v to see its log")
        with self._lock:
            if self._closed:  # closed meanwhile: close() did not see it
                worker.close()
                return
            self._all.append(worker)
        self._idle.put(worker)

    def _replace(self, worker: _Worker) -> None:
        with self._lock:
            if worker in self._all:
                self._all.remove(worker)
            closed = self._closed
        worker.close()
        if closed:
            return
        try:
            self._add()
        except Exception as exc:  # noqa: BLE001 - also OSError: no process can be started (EAGAIN, EMFILE)
            self.usable = False
            log.warning("%s; the remaining videos are cut in this process", exc)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self.usable = False
            workers, self._all = self._all, []
        for worker in workers:
            worker.close()

    def _take(self, stop: threading.Event | None) -> _Worker:
        """An idle, live worker (a dead one is replaced first); ``PoolUnavailable`` once none can come."""
        while True:
            if not self.usable:
                raise PoolUnavailable()
            if stop is not None and stop.is_set():
                raise Abandoned()
            try:
                worker = self._idle.get(timeout=POLL_S)
            except queue.Empty:
                continue
            if worker.proc.is_alive():
                return worker
            self._replace(worker)  # died while idle (killed from outside): not this video's fault

    @contextmanager
    def job(self, path: Path, settings: CutSettings, stop: threading.Event | None = None) -> Iterator["Job"]:
        """A worker cutting ``path`` for the caller; it goes back to the pool (or is replaced) afterwards.
        ``stop`` set while the caller waits for a message: the worker is killed and ``Abandoned`` raised."""
        worker = self._take(stop)
        job = Job(worker, path, stop)
        try:
            job.send(str(path), settings)  # a worker found dead here says so at the first recv
            yield job
        finally:  # also when the caller failed on the video: the worker ends its job and counts its bytes
            if not job.finish():  # dead or killed: closed now, replaced when a video next needs it (``_take``)
                worker.close()
            self._idle.put(worker)


class Job:
    """One video's messages from its worker, as the prepare thread reads them."""

    def __init__(self, worker: _Worker, path: Path, stop: threading.Event | None = None) -> None:
        self._worker, self.path, self._stop = worker, path, stop
        self.bytes_read = 0
        self.ended = False
        self.died = False

    def recv(self) -> tuple[Any, ...]:
        """The next message; ``("end", bytes)`` closes the job. A dead worker raises ``PrepareWorkerDied``; a
        stopped run (the consumer gone, Ctrl-C) kills a worker that is still busy and raises ``Abandoned``."""
        conn = self._worker.conn
        try:
            while not conn.poll(POLL_S):
                if self._stop is not None and self._stop.is_set():
                    self.died = True
                    self._worker.proc.kill()
                    raise Abandoned()
            message = conn.recv()
        except (EOFError, OSError) as exc:
            self.died = True
            self._worker.proc.join(timeout=5)
            code = self._worker.proc.exitcode
            how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            raise PrepareWorkerDied(f"the process preparing it died ({how})", path=self.path,
                                    hint="the file is probably damaged; check it in a player") from exc
        if message[0] == "end":
            self.ended, self.bytes_read = True, int(message[1])
        return message  # type: ignore[no-any-return]

    def send(self, *message: Any) -> None:
        try:
            self._worker.conn.send(message)
        except (BrokenPipeError, OSError):  # it died: the next recv says so
            pass

    def finish(self) -> bool:
        """Reads to the job's end (telling the worker to stop if it still cuts); whether the worker is fit for
        another video."""
        if self.died:
            return False
        if not self.ended:
            self.send("stop")
            try:
                while not self.ended:
                    self.recv()
            except (PrepareWorkerDied, Abandoned):
                return False
        return True


def _exit_with_parent() -> None:
    """Exits this worker once its parent is gone, even while it is busy in native code (a stalled read): the
    pipe's EOF only reaches a worker that reads it. (``PR_SET_PDEATHSIG`` would follow the thread that
    started the worker, and replacements start on prepare threads that end with every run.)"""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _recv_or_none(conn: Any) -> Any:
    try:
        return conn.recv()
    except (EOFError, OSError):
        return None
