"""Decode streams in separate processes: ``SamplerConfig.processes`` for any backend.

Why: isolation. A decoder that crashes (or hangs) in native code on a damaged file takes down its
process; in-process, that is the whole scan (``scan.crashguard`` then isolates the file on the next start).
Here it costs one child, which is replaced. It was also meant to be faster: each DALI sample ends with
``cudaFree``, which waits for everything in its CUDA context, and 8 decode-everything pipelines in 8
processes decoded 5.9x one. Measured on an H200 it is not: 4 processes x 2 streams scanned 200 videos in
35.4 s against 30.2 s for 8 streams in one process (contexts of different processes time-slice the GPU).
On the H200 again (2026-11-26, DALI 2.4), at equal streams and samples in flight, 2 processes sampled at
0.93-0.97x one process, and with 4 (and in 2- and 4-process scans) children died with
CUDA_ERROR_ILLEGAL_ADDRESS raised in DALI: their videos were decoded again one at a time, correct but
2-6x slower. Cause not found yet; with DALI decoding on the GPU the pool warns (``GPU_WARNING``). With the
FFmpeg decode client (``decode_client="ffmpeg"``) processes are what makes it fast: on an H200 (stop 25) 4
processes x 2 streams sampled 2,827 1080p H.264 frames/s, 2.12x DALI's 4 streams in one process, with no crash.

How: ``processes`` children (``spawn``: CUDA cannot live in a forked child) each build the wrapped
backend's sampler once and keep it for the sampler's lifetime (imports, CUDA context and DALI's decoder
cache stay warm between calls). ``iter_batches`` is one *job*: the parent deals videos to the children
through one pipe each, a couple ahead of what each has taken (a busy child is dealt less), children send
back their batches, and the parent yields them as they come. CUDA frames travel by CUDA IPC (no copy
through the host; the parent copies them so the child may reuse its memory), CPU frames as arrays inside
the message (see ``_process_child``). A video's frames all come from one
child, in order, so per-video semantics are those of the wrapped backend; batches of different children interleave.

A child that dies (a decoder crashing on a damaged file takes only its process) is replaced. The
videos it held are decoded again one at a time after the rest, so only the one that crashes a decoder
on its own gets an error outcome.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field, replace
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
import torch.multiprocessing as tmp

from .._clock import awake
from ..errors import DecodeError, QuadvaultError
from ._base import Sampler, SamplerConfig, VideoSource, path_of
from ._clip_decoder import DecodeStats
from ._process_child import ACK, child_main
from ._types import FrameBatch, VideoOutcome

log = logging.getLogger(__name__)

#: A child holding videos that says nothing for this long (the parent waiting, not the caller) is taken for
#: hung in native code and killed; the same as the scan's stall warning (``scan.crashguard.STALL_S``).
HANG_S = 900.0
HANG_POLL_S = 5.0
BROKEN_CHECK_S = 1.0
#: Seconds a child may take to import its libraries and build its sampler.
START_TIMEOUT_S = 300.0
#: Videos dealt into a child's pipe ahead of it taking them.
QUEUED_PER_PROCESS = 2
#: Children that may die in a row (beyond one per process) without any progress between, before the
#: sampler concludes they die of the machine rather than of a file.
MAX_EXTRA_DEATHS = 8


#: Said once per sampler when the children decode on the GPU (see the module's docstring).
GPU_WARNING = ("decoding processes on the GPU are slower than one process and their DALI decoders crashed with "
               "an illegal memory access on the H200 (videos are then decoded again, one at a time): use them "
               "for crash isolation only, or leave --processes at 1")


class ProcessSampler(Sampler):
    """``inner`` (a sampler class) run in ``config.processes`` processes, behind the same interface.

    ``attrs`` are set on each child's sampler after it is built (benchmarks use it for decoder layouts).
    Call ``close()`` (or use ``with``) to stop the children; they also stop with the parent.
    """

    def __init__(self, inner: type[Sampler], config: SamplerConfig | None = None, *,
                 attrs: dict[str, Any] | None = None, hang_s: float = HANG_S, **overrides: object) -> None:
        super().__init__(config, **overrides)
        self.hang_s = hang_s
        if self.config.processes < 2:
            raise ValueError(f"ProcessSampler needs processes >= 2, got {self.config.processes}")
        self.inner = inner
        self.backend = getattr(inner, "backend", inner.__name__)  # type: ignore[misc]  # the backend it runs
        self.attrs = dict(attrs or {})
        # prepare workers stay with in-process samplers: decoding children are daemonic, which may not have children
        self.child_config = replace(self.config, processes=1, prepare_processes=0,
                                    memory_share=self.config.memory_share / self.config.processes)
        # built here too: a backend that cannot run says so now, in the caller's process, not in a child
        self._device = inner(self.child_config).device
        if self._device.type == "cuda" and self.config.decode_client == "dali":  # FFmpeg's: the fastest layout
            log.warning(GPU_WARNING)
        self._pool: _Pool | None = None
        self._finalizer: weakref.finalize | None = None
        #: the children's DALI runs, samples and frames, summed as each round ends (benchmarks read it)
        self.decode_stats = DecodeStats()
        self.queued_bytes_peak = 0  # the children's queued-clip peaks summed (an upper bound of what they held)

    @property
    def device(self) -> torch.device:
        return self._device

    def close(self) -> None:
        """Stops the child processes (a later ``iter_batches`` starts new ones)."""
        if self._finalizer is not None:
            self._finalizer()
        self._pool = self._finalizer = None

    def _started_pool(self) -> "_Pool":
        if self._pool is None or not self._pool.usable:
            self.close()
            self._pool = _Pool(self.inner, self.child_config, self.attrs, self.config.processes, self.hang_s,
                               stats=self.decode_stats)
            self._finalizer = weakref.finalize(self, self._pool.close)
        return self._pool

    def iter_batches(self, videos: Iterable[VideoSource]) -> Iterator[FrameBatch]:
        pool = self._started_pool()
        finished = False
        try:
            yield from pool.run(videos, self._device, self.config.size)
            finished = True
            self.queued_bytes_peak = max(self.queued_bytes_peak, sum(pool.queued_peaks.values()))
        finally:
            if not finished:  # abandoned or failed mid-job: children may hold work; start afresh next time
                self.close()


@dataclass
class _Child:
    """One decoding process, the parent's end of its pipe, and what the parent has dealt it."""

    proc: Any
    conn: Any
    #: video path -> task id until its outcome comes. A child never holds one path twice, so every frame of a
    #: path it sends belongs to that one task (a retry must know which frames were already handed over).
    dealt: dict[str, int] = field(default_factory=dict)
    unread: int = 0  # dealt tasks the child has not taken from its pipe yet
    ended: bool = False  # sent the end marker of this round
    done: bool = False  # said it finished this round
    broken: bool = False  # alive, but a message from it could not be read: nothing after it is trusted (killed)
    stopped: bool = False  # killed by the parent for hanging
    heard_at: float = field(default_factory=time.monotonic)  # when its last message was read
    caller_s_at_heard: float = 0.0  # the pool's ``caller_s`` then

    def busy(self) -> bool:
        """Holds videos, or has not yet said it finished the round it was told to end."""
        return bool(self.dealt) or (self.ended and not self.done)

    def stop_hung(self, why: str) -> None:
        """Kills the process, taken for hung (``why``); its death then retries its videos."""
        log.warning("decoding process %s %s; stopping it", self.proc.pid, why)
        self.stopped = True
        self.proc.kill()


class _Pool:
    """The children, each with its own pipe (a child that dies mid-message cannot block the others, as it
    could with a queue's shared lock); runs one job (one ``iter_batches``) at a time."""

    def __init__(self, inner: type[Sampler], config: SamplerConfig, attrs: dict[str, Any], processes: int,
                 hang_s: float = HANG_S, stats: DecodeStats | None = None) -> None:
        self._ctx = tmp.get_context("spawn")
        self._inner, self._config, self._attrs = inner, config, attrs
        self._processes = processes
        self.hang_s = hang_s
        self.stats = stats if stats is not None else DecodeStats()
        self.queued_peaks: dict[int, int] = {}  # child index -> the most its queued clips held, this job
        self._device = torch.device("cpu")  # the caller's device, for frames copied out of a child (``run``)
        self.caller_s = 0.0  # time spent in the caller between batches (not a child's silence)
        self.deaths = 0
        self.usable = True
        self.running = False
        self.children: list[_Child] = []
        self._receiving: tuple[_Child, float] | None = None  # the child being read from, since when
        self._closed = threading.Event()
        threading.Thread(target=self._watch_receives, name="quadvault-receive-watch", daemon=True).start()
        try:
            for i in range(processes):
                self.children.append(self._spawn(i))
            for index, child in enumerate(self.children):
                self._await_ready(index, child)
        except BaseException:
            self.close()
            raise

    def _spawn(self, index: int) -> _Child:
        mine, theirs = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=child_main, name=f"quadvault-decode-{index}", daemon=True,
                                 args=(index, self._inner, self._config, self._attrs, theirs,
                                       logging.getLogger("quadvault_dali").getEffectiveLevel(), self._processes))
        proc.start()
        theirs.close()  # the child's end lives in the child: EOF here once it is gone
        return _Child(proc, mine, caller_s_at_heard=self.caller_s)

    def _await_ready(self, index: int, child: _Child) -> None:
        try:
            self._ready(index, child)
        except BaseException:
            self.close()
            raise

    def _ready(self, index: int, child: _Child) -> None:
        """Waits for ``child`` to say it is ready; ``_StartFailed`` where it died or stayed silent starting."""
        if not wait([child.conn], timeout=START_TIMEOUT_S):
            raise _StartFailed(f"decoding process {index} did not start within {START_TIMEOUT_S:.0f} s")
        message = _recv(child.conn)
        if message is None:
            child.proc.join(timeout=5)
            raise _StartFailed(f"decoding process {index} exited with code {child.proc.exitcode} while "
                               f"starting", hint="run with -v to see its log")
        if message[0] == "fatal":  # the sampler cannot be built there: every child would say the same
            raise message[1]
        self._heard(child)

    def _replacement(self, index: int) -> _Child:
        """A started child in place of a dead one. One that dies starting (killed with its predecessor's
        group, out of memory a moment) counts as a death and another is started: the first such death
        ended the whole scan."""
        while True:
            child = self._spawn(index)
            try:
                self._ready(index, child)
                return child
            except _StartFailed as exc:
                if child.proc.is_alive():
                    child.proc.kill()
                child.proc.join(timeout=10)
                child.conn.close()
                remove_shared_files(child.proc.pid)
                self.deaths += 1
                if self.deaths > len(self.children) + MAX_EXTRA_DEATHS:
                    raise QuadvaultError(f"the decoding processes keep dying ({exc.reason})",
                                         hint="run with -v to see their logs, or try --device cpu") from None
                log.warning("%s; starting another", exc.reason)

    def close(self) -> None:
        self.usable = False
        self._closed.set()
        for child in self.children:
            if child.proc.is_alive():
                child.proc.terminate()
        for child in self.children:
            child.proc.join(timeout=10)
            if child.proc.is_alive():
                child.proc.kill()
                child.proc.join(timeout=10)
            child.conn.close()
            remove_shared_files(child.proc.pid)

    def _heard(self, child: _Child) -> None:
        child.heard_at, child.caller_s_at_heard = awake(), self.caller_s

    def _messages(self) -> list[tuple[int, str, Any]]:
        """The next (child, kind, payload) messages; a child that ended comes last, as ``died``, after what
        it sent before (except what cannot be read: a CUDA tensor of a dead process, a cut-off message). After
        one unreadable message nothing more of that child is read, so no video completes without frames."""
        self._stop_hung()
        live = [c for c in self.children if not c.broken]
        by_conn = {id(c.conn): i for i, c in enumerate(self.children)}
        by_sentinel = {c.proc.sentinel: i for i, c in enumerate(self.children)}
        out: list[tuple[int, str, Any]] = []
        for ready in wait([c.conn for c in live] + list(by_sentinel), timeout=min(HANG_POLL_S, self.hang_s)):
            index = by_conn.get(id(ready), by_sentinel.get(ready))  # type: ignore[arg-type]
            child = self.children[index]
            if ready is child.conn:
                if child.broken or (self._device.type == "cuda" and child.proc.exitcode is not None):
                    continue  # a dead GPU child's frames are not mapped (its sentinel says it died)
                message = self._recv_watched(child)
                if message is not None and message[0] == "batch":
                    message = self._copied(child, message)
                if message is None:
                    child.proc.join(timeout=BROKEN_CHECK_S)  # usually it died: its sentinel comes next
                    if child.proc.exitcode is None:  # alive, but what it sent is lost: no longer trusted
                        log.warning("a message from decoding process %s could not be read; stopping it (run "
                                    "with -v for the error)", child.proc.pid)
                        child.broken = True
                        child.proc.kill()
                else:
                    self._heard(child)
                    out.append((index, *message))
                continue
            # the process ended: what it sent first, unless its frames were in its GPU memory (mapping a dead
            # process's CUDA memory is undefined: its videos are decoded again instead, as ones it never sent)
            while not child.broken and self._device.type != "cuda" and _poll(child.conn):
                message = _recv(child.conn)  # gone if it died with messages of ours unread (ECONNRESET)
                if message is None:
                    break
                out.append((index, *message))
            child.proc.join()
            out.append((index, "died", child.proc.exitcode))
            return out  # the caller replaces it before anything else is read
        return out

    def _recv_watched(self, child: _Child) -> tuple[str, Any] | None:
        """``_recv``, watched by ``_watch_receives``: a child stopped part-way through sending (a frozen process;
        batches of CPU frames are megabytes, so a freeze mostly lands inside a send) held the parent in ``recv``
        for good, and the other children blocked on their full pipes behind it."""
        self._receiving = (child, awake())
        try:
            return _recv(child.conn)
        finally:
            self._receiving = None

    def _watch_receives(self) -> None:
        """One thread for the pool's life: kills the child whose message has not completed within ``hang_s``;
        its pipe then ends, ``recv`` returns, and the message counts as lost (its death retries its videos)."""
        while not self._closed.wait(min(HANG_POLL_S, self.hang_s / 4)):
            receiving = self._receiving
            if receiving is None or awake() - receiving[1] < self.hang_s:
                continue
            child = receiving[0]
            if child.proc.is_alive() and not child.stopped:
                child.stop_hung(f"stopped part-way through a message for {self.hang_s:.0f} s")

    def _copied(self, child: _Child, message: tuple[str, Any]) -> tuple[str, Any] | None:
        """A batch message with its CUDA frames copied into this process at once (not after batches yielded
        before it: the child could die meanwhile), and the child told it may go on (``MAX_UNACKED``)."""
        kind, (frames, paths, stamps, completed) = message
        if isinstance(frames, torch.Tensor) and frames.is_cuda:
            try:
                frames = frames.to(self._device, copy=True)
                torch.cuda.current_stream(frames.device).synchronize()
            except torch.cuda.OutOfMemoryError:  # this process's own trouble, not the child's
                raise
            except RuntimeError as exc:  # its memory could not be read: the message is lost
                log.debug("copying frames out of a decoding process failed: %r", exc)
                return None
        try:
            child.conn.send(ACK)
        except OSError:  # it died: its death is the next thing read from it
            pass
        return kind, (frames, paths, stamps, completed)

    def _stop_hung(self) -> None:
        """Kills a child that holds work but has said nothing for ``hang_s`` while the parent waited (a decoder
        stuck in native code); its death then retries its videos, and one that hangs alone is an error."""
        now = awake()
        for child in self.children:
            quiet = (now - child.heard_at) - (self.caller_s - child.caller_s_at_heard)
            if child.busy() and not child.stopped and quiet >= self.hang_s and child.proc.is_alive():
                child.stop_hung(f"said nothing for {quiet:.0f} s while decoding {len(child.dealt)} videos")

    def _new_round(self) -> None:
        """Every child takes videos again until its next end marker (a job, another round for paths listed
        twice, or a retry)."""
        for child in self.children:
            child.ended = child.done = False

    def _deal(self, index: int, task_id: int | None, source: VideoSource | None) -> None:
        child = self.children[index]
        try:
            # only the path: a few small messages always fit the pipe, so this never waits on a child that is
            # itself waiting to send (a probed VideoInfo can be large: one keyframe time per second)
            child.conn.send((task_id, None if source is None else path_of(source)))
        except OSError:  # it died: its death is the next thing read from it
            return
        if task_id is None:
            child.ended = True
        else:
            child.dealt[_key(path_of(source))] = task_id  # type: ignore[arg-type]
            child.unread += 1

    def _target(self, source: VideoSource, start: int) -> int | None:
        """The next child (round robin from ``start``) with room in its pipe that does not hold ``source``."""
        key = _key(path_of(source))
        n = len(self.children)
        for k in range(n):
            child = self.children[(start + k) % n]
            if not child.ended and child.unread < QUEUED_PER_PROCESS and key not in child.dealt:
                return (start + k) % n
        return None

    def run(self, videos: Iterable[VideoSource], device: torch.device, size: int) -> Iterator[FrameBatch]:
        """One job: every video in ``videos`` gets exactly one outcome."""
        if self.running:
            raise RuntimeError("this ProcessSampler is already running an iter_batches; run one at a time")
        self.running = True
        self._device = device
        self.queued_peaks = {}
        try:
            yield from self._run(videos, device, size)
        finally:
            self.running = False

    def _run(self, videos: Iterable[VideoSource], device: torch.device, size: int) -> Iterator[FrameBatch]:
        sources = enumerate(videos)
        backlog: deque[tuple[int, VideoSource]] = deque()  # taken from ``videos``, not yet dealt
        sources_done = False
        # a path listed again while a child holds it waits for the next round: a child finishes (and reports)
        # its videos only at the end of a round if no new one comes, so waiting for that child could deadlock
        deferred: list[tuple[int, VideoSource]] = []
        pending: dict[int, VideoSource] = {}  # dealt, outcome not yet seen
        delivered: dict[int, float] = {}  # task id -> time of the last frame yielded (for a retry)
        suspects: deque[int] = deque()  # in flight when a child died: retried alone after the rest
        retrying: int | None = None  # the suspect now being retried alone
        turn = 0  # the child dealt to next
        self._new_round()
        for child in self.children:
            self._heard(child)  # idle between jobs is not silence

        while True:
            while retrying is None:  # keep every child's pipe stocked, in turn
                if not backlog and not sources_done:
                    item = next(sources, None)
                    if item is None:
                        sources_done = True
                    else:
                        backlog.append(item)
                if not backlog:
                    break
                target = self._target(backlog[0][1], turn)
                if target is None:
                    if any(not c.ended and c.unread < QUEUED_PER_PROCESS for c in self.children):
                        deferred.append(backlog.popleft())  # a path listed again: to the next round
                        continue
                    break  # every pipe is full
                task_id, source = backlog.popleft()
                pending[task_id] = source
                self._deal(target, task_id, source)
                turn = target + 1
            exhausted = sources_done and not backlog
            if exhausted and retrying is None:
                for index, child in enumerate(self.children):
                    if not child.ended:
                        self._deal(index, None, None)
            messages = self._messages()
            while messages:
                index, kind, payload = messages.pop(0)
                child = self.children[index]
                if kind == "took":
                    child.unread -= 1
                elif kind == "batch":
                    batch = self._received(child, payload, pending, delivered, retrying)
                    payload = None  # the child's CUDA memory is released with the last reference
                    if len(batch) or batch.completed:
                        self.deaths = 0  # progress: the children are not dying of the machine
                        paused = awake()
                        yield batch
                        self.caller_s += awake() - paused
                    batch = None
                elif kind == "done":
                    child.done = True
                    if isinstance(payload, dict):  # the round's decoder counts (None from older children)
                        self.stats.add_counts(payload)
                        self.queued_peaks[index] = max(self.queued_peaks.get(index, 0),
                                                       payload.get("queued_bytes_peak", 0))
                elif kind == "fatal":
                    raise payload
                elif kind == "died":
                    outcome = self._replace_dead(index, payload, suspects, retrying, pending)
                    if outcome is not None:
                        retrying = None
                        paused = awake()
                        yield FrameBatch(_no_frames(size, device), [], [], [outcome])
                        self.caller_s += awake() - paused
                    if exhausted and retrying is not None:  # in a retry round nothing is for the new child
                        self._deal(index, None, None)
            if not (exhausted and all(not c.busy() and c.done for c in self.children)):
                continue
            if deferred:  # another round for the paths listed more than once
                backlog.extend(deferred)
                deferred = []
                self._new_round()
                continue
            retrying = None  # a retried video that came through: its outcome was in a batch
            # dealt videos whose outcome never came (in a message lost with its dead sender): retried too
            suspects.extend(sorted(set(pending) - set(suspects)))
            if not suspects:
                return
            retrying = suspects.popleft()
            log.info("%s: decoding it again on its own (a decoding process died while it was in flight)",
                     path_of(pending[retrying]))
            self._new_round()
            self._deal(0, retrying, pending[retrying])
            for index in range(len(self.children)):
                self._deal(index, None, None)

    @staticmethod
    def _received(child: _Child, payload: Any, pending: dict[int, VideoSource], delivered: dict[int, float],
                  retrying: int | None) -> FrameBatch:
        """A child's batch as the caller gets it (CUDA frames were copied out of the child's memory as the
        message was read, ``_copied``): a retried video's frames already yielded before its first child died
        left out."""
        frames, paths, stamps, completed = payload
        if isinstance(frames, np.ndarray):  # CPU frames travel inside the message (see child_main)
            frames = torch.from_numpy(frames)
        if retrying is not None and retrying in delivered:
            keep = [i for i, (p, t) in enumerate(zip(paths, stamps))
                    if child.dealt.get(_key(p)) != retrying or t > delivered[retrying]]
            if len(keep) < len(paths):
                frames = frames[keep]
                paths, stamps = [paths[i] for i in keep], [stamps[i] for i in keep]
        for p, t in zip(paths, stamps):
            task_id = child.dealt.get(_key(p))
            if task_id is not None:
                delivered[task_id] = max(t, delivered.get(task_id, float("-inf")))
        for outcome in completed:
            task_id = child.dealt.pop(_key(outcome.path), None)
            if task_id is not None:
                pending.pop(task_id, None)
                delivered.pop(task_id, None)
        return FrameBatch(frames, list(paths), list(stamps), list(completed))

    def _replace_dead(self, index: int, exitcode: int, suspects: deque[int], retrying: int | None,
                      pending: dict[int, VideoSource]) -> VideoOutcome | None:
        """Starts a new child in place of a dead one; the error outcome of a retried video that crashed it again."""
        dead = self.children[index]
        lost = set(dead.dealt.values())
        how = (f"no frame for {self.hang_s:.0f} s: stopped" if dead.stopped
               else f"signal {-exitcode}" if exitcode < 0 else f"exit code {exitcode}")
        outcome = None
        # blamed when alone in flight and the death its child's own (not a kill for an unreadable message)
        if retrying is not None and retrying in lost and not dead.broken:
            path = path_of(pending.pop(retrying))
            what = "hung the decoder" if dead.stopped else "crashed the decoder process"
            outcome = VideoOutcome(path, None, None, error=DecodeError(
                f"decoding it {what} ({how})", path=path, hint="the file is probably damaged; check it in a player"))
            log.warning("%s: decoding it %s (%s)", path, what, how)
        else:
            self.deaths += 1  # unexplained until its suspects are retried
            if self.deaths > len(self.children) + MAX_EXTRA_DEATHS:
                raise QuadvaultError(f"the decoding processes keep dying (the last with {how}) without decoding "
                                     f"anything in between", hint="run with -v to see their logs, or try --device cpu")
            log.warning("a decoding process died (%s) with %d videos in flight; they are decoded again, one at a "
                        "time, at the end", how, len(lost))
            suspects.extend(sorted(lost - set(suspects)))
        dead.conn.close()
        remove_shared_files(dead.proc.pid)
        try:
            self.children[index] = self._replacement(index)
        except BaseException:
            self.close()
            raise
        return outcome


class _StartFailed(QuadvaultError):
    """A decoding process died or stayed silent while starting."""


def remove_shared_files(pid: int | None, shm: Path = Path("/dev/shm")) -> int:
    """Removes the shared-memory files torch made for a child's CUDA IPC (``torch_<pid>_*``): a child that is
    killed leaves them behind. Returns how many went."""
    if pid is None or not shm.is_dir():
        return 0
    removed = 0
    for leftover in shm.glob(f"torch_{pid}_*"):
        try:
            leftover.unlink()
            removed += 1
        except OSError:  # gone already, or not ours to remove
            pass
    return removed


def _poll(conn: Any) -> bool:
    try:
        return bool(conn.poll())
    except (EOFError, OSError):
        return False


def _recv(conn: Any) -> tuple[str, Any] | None:
    """The next message, or ``None`` when it cannot be read: a cut-off message, a dead sender's CUDA memory
    (torch raises a RuntimeError for an IPC handle that is gone), too many open files."""
    try:
        return conn.recv()  # type: ignore[no-any-return]
    except Exception as exc:  # noqa: BLE001 - whatever it is, this child's message is lost and handled so
        log.debug("a message from a decoding process could not be read: %r", exc)
        return None


def _no_frames(size: int, device: torch.device) -> torch.Tensor:
    return torch.empty((0, 3, size, size), dtype=torch.uint8, device=device)


def _key(path: object) -> str:
    return str(path)
