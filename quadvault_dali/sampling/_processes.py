"""Decode streams in separate processes: ``SamplerConfig.processes`` for any backend.

Why: several DALI pipelines in one process share one CUDA context, and each DALI sample ends with
``cudaFree``, which waits for the whole context: every pipeline's work, not just its own. On the H100,
1/4/8 streams in one process gave 146/186/135 sampled frames/s, while 8 pipelines in 8 processes
decoded 5.9x what one did (``../shared/gpu/README.md``). A process per decoder group gives each its own
context, its own Python interpreter (no shared GIL for the clip cutting) and its own crash domain.

How: ``processes`` children (``spawn``: CUDA cannot live in a forked child) each build the wrapped
backend's sampler once and keep it for the sampler's lifetime (imports, CUDA context and DALI's decoder
cache stay warm between calls). ``iter_batches`` is one *job*: the parent deals videos to the children
through one pipe each, a couple ahead of what each has taken (a busy child is dealt less), children send
back their batches, and the parent yields them as they come. Frames travel as torch tensors over
``torch.multiprocessing``: CUDA frames by CUDA IPC (no copy through the host; the parent clones them so
the child may reuse its memory), CPU frames through shared memory. A video's frames all come from one
child, in order, so per-video semantics are those of the wrapped backend; batches of different children interleave.

A child that dies (a decoder crashing on a damaged file takes only its process) is replaced. The
videos it held are decoded again one at a time after the rest, so only the one that crashes a decoder
on its own gets an error outcome.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections import deque
from dataclasses import dataclass, field, replace
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
import torch.multiprocessing as tmp

from ..errors import DecodeError, QuadvaultError
from ..probe import VideoInfo
from ._base import Sampler, SamplerConfig, VideoSource
from ._process_child import child_main
from ._types import FrameBatch, VideoOutcome

log = logging.getLogger(__name__)

#: A child holding videos that says nothing for this long (the parent waiting, not the caller) is taken for
#: hung in native code and killed; the same as the scan's stall warning (``scan.crashguard.STALL_S``).
HANG_S = 900.0
HANG_POLL_S = 5.0
#: Seconds a child may take to import its libraries and build its sampler.
START_TIMEOUT_S = 300.0
#: Videos dealt into a child's pipe ahead of it taking them.
QUEUED_PER_PROCESS = 2
#: Children that may die in a row (beyond one per process) without any progress between, before the
#: sampler concludes they die of the machine rather than of a file.
MAX_EXTRA_DEATHS = 8


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
        self.child_config = replace(self.config, processes=1)
        # built here too: a backend that cannot run says so now, in the caller's process, not in a child
        self._device = inner(self.child_config).device
        self._pool: _Pool | None = None
        self._finalizer: weakref.finalize | None = None

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
            self._pool = _Pool(self.inner, self.child_config, self.attrs, self.config.processes, self.hang_s)
            self._finalizer = weakref.finalize(self, self._pool.close)
        return self._pool

    def iter_batches(self, videos: Iterable[VideoSource]) -> Iterator[FrameBatch]:
        pool = self._started_pool()
        finished = False
        try:
            yield from pool.run(videos, self._device, self.config.size)
            finished = True
        finally:
            if not finished:  # abandoned or failed mid-job: children may hold work; start afresh next time
                self.close()


@dataclass
class _Child:
    """One decoding process, the parent's end of its pipe, and what the parent has dealt it."""

    proc: Any
    conn: Any
    #: video path -> task ids dealt, oldest first, until their outcomes come (a path may be listed twice;
    #: the wrapped samplers finish videos in input order, so the oldest is the one whose frames arrive)
    dealt: dict[str, deque[int]] = field(default_factory=dict)

    def current(self, path: object) -> int | None:
        ids = self.dealt.get(_key(path))
        return ids[0] if ids else None

    def finished(self, path: object) -> int | None:
        ids = self.dealt.get(_key(path))
        if not ids:
            return None
        task_id = ids.popleft()
        if not ids:
            del self.dealt[_key(path)]
        return task_id
    unread: int = 0  # dealt tasks the child has not taken from its pipe yet
    ended: bool = False  # sent the end marker of this round
    done: bool = False  # said it finished this round
    heard_at: float = field(default_factory=time.monotonic)  # when its last message was read
    stopped: bool = False  # killed by the parent for hanging


class _Pool:
    """The children, each with its own pipe (a child that dies mid-message cannot block the others, as it
    could with a queue's shared lock); runs one job (one ``iter_batches``) at a time."""

    def __init__(self, inner: type[Sampler], config: SamplerConfig, attrs: dict[str, Any], processes: int,
                 hang_s: float = HANG_S) -> None:
        self._ctx = tmp.get_context("spawn")
        self._inner, self._config, self._attrs = inner, config, attrs
        self.hang_s = hang_s
        self.resumed_at = time.monotonic()  # when the caller last gave control back (its time is not silence)
        self.deaths = 0
        self.usable = True
        self.children: list[_Child] = [self._spawn(i) for i in range(processes)]
        for index, child in enumerate(self.children):
            self._await_ready(index, child)

    def _spawn(self, index: int) -> _Child:
        mine, theirs = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=child_main, name=f"quadvault-decode-{index}", daemon=True,
                                 args=(index, self._inner, self._config, self._attrs, theirs,
                                       logging.getLogger("quadvault_dali").getEffectiveLevel()))
        proc.start()
        theirs.close()  # the child's end lives in the child: EOF here once it is gone
        return _Child(proc, mine)

    def _await_ready(self, index: int, child: _Child) -> None:
        if not wait([child.conn], timeout=START_TIMEOUT_S):
            self.close()
            raise QuadvaultError(f"decoding process {index} did not start within {START_TIMEOUT_S:.0f} s")
        try:
            kind, payload = child.conn.recv()
        except (EOFError, OSError):
            child.proc.join(timeout=5)
            self.close()
            raise QuadvaultError(f"decoding process {index} exited with code {child.proc.exitcode} while "
                                 f"starting", hint="run with -v to see its log") from None
        if kind == "fatal":
            self.close()
            raise payload

    def close(self) -> None:
        self.usable = False
        for child in self.children:
            if child.proc.is_alive():
                child.proc.terminate()
        for child in self.children:
            child.proc.join(timeout=10)
            if child.proc.is_alive():
                child.proc.kill()
            child.conn.close()

    def _messages(self) -> Iterator[tuple[int, str, Any]]:
        """(child, kind, payload) as they come; a child that died comes as ``died`` after its readable
        messages (a CPU tensor's memory is fetched from its sender while the message is read, so a message
        of a dead child may be lost: its videos are then retried like the ones it held)."""
        by_conn = {id(c.conn): i for i, c in enumerate(self.children)}
        by_sentinel = {c.proc.sentinel: i for i, c in enumerate(self.children)}
        ready_now = wait([c.conn for c in self.children] + list(by_sentinel), timeout=min(HANG_POLL_S, self.hang_s))
        if not ready_now:
            self._stop_hung()
        for ready in ready_now:
            index = by_conn.get(id(ready), by_sentinel.get(ready))  # type: ignore[arg-type]
            child = self.children[index]
            if ready is not child.conn:  # the process ended: what it sent first, then its death
                while _poll(child.conn):
                    message = _recv(child.conn)
                    if message is None:
                        break
                    yield index, *message
                child.proc.join()
                yield index, "died", child.proc.exitcode
                return
            message = _recv(child.conn)
            if message is not None:
                child.heard_at = time.monotonic()
                yield index, *message

    def _stop_hung(self) -> None:
        """Kills a child that holds videos but has said nothing for ``hang_s`` of the parent's waiting (a
        decoder stuck in native code); its death then retries them, and one that hangs alone is an error."""
        now = time.monotonic()
        for child in self.children:
            quiet = now - max(child.heard_at, self.resumed_at)
            if child.dealt and not child.stopped and quiet >= self.hang_s and child.proc.is_alive():
                log.warning("decoding process %s said nothing for %.0f s while decoding %d videos; stopping it",
                            child.proc.pid, quiet, sum(len(ids) for ids in child.dealt.values()))
                child.stopped = True
                child.proc.kill()

    def _deal(self, index: int, task_id: int | None, source: VideoSource | None) -> None:
        child = self.children[index]
        try:
            # only the path: a few small messages always fit the pipe, so this never waits on a child that is
            # itself waiting to send (a probed VideoInfo can be large: one keyframe time per second)
            child.conn.send((task_id, None if source is None else _path_of(source)))
        except OSError:  # it died: its death is the next thing read from it
            return
        if task_id is None:
            child.ended = True
        else:
            child.dealt.setdefault(_key(_path_of(source)), deque()).append(task_id)  # type: ignore[arg-type]
            child.unread += 1

    def run(self, videos: Iterable[VideoSource], device: torch.device, size: int) -> Iterator[FrameBatch]:
        """One job: every video in ``videos`` gets exactly one outcome."""
        sources = enumerate(videos)
        exhausted = False
        pending: dict[int, VideoSource] = {}  # dealt, outcome not yet seen
        delivered: dict[int, float] = {}  # task id -> time of the last frame yielded (for a retry)
        suspects: deque[int] = deque()  # in flight when a child died: retried alone after the rest
        retrying: int | None = None  # the suspect now being retried alone
        for child in self.children:
            child.ended = child.done = False
        self.resumed_at = time.monotonic()

        while True:
            dealing = retrying is None
            while dealing and not exhausted:  # keep every child's pipe stocked, one video each in turn
                dealing = False
                for index, child in enumerate(self.children):
                    if child.unread >= QUEUED_PER_PROCESS:
                        continue
                    item = next(sources, None)
                    if item is None:
                        exhausted = True
                        break
                    pending[item[0]] = item[1]
                    self._deal(index, *item)
                    dealing = True
            if exhausted and retrying is None:
                for index, child in enumerate(self.children):
                    if not child.ended:
                        self._deal(index, None, None)
            for index, kind, payload in self._messages():
                child = self.children[index]
                if kind == "took":
                    child.unread -= 1
                elif kind == "batch":
                    batch = self._received(child, payload, pending, delivered, retrying, device)
                    if len(batch) or batch.completed:
                        self.deaths = 0  # progress: the children are not dying of the machine
                        yield batch
                        self.resumed_at = time.monotonic()
                elif kind == "done":
                    child.done = True
                elif kind == "fatal":
                    raise payload
                elif kind == "died":
                    outcome = self._replace_dead(index, payload, suspects, retrying, pending)
                    if outcome is not None:
                        yield FrameBatch(_no_frames(size, device), [], [], [outcome])
                        self.resumed_at = time.monotonic()
                    if exhausted and retrying is not None:  # in a retry round nothing is for the new child
                        self._deal(index, None, None)
            if not (exhausted and all(c.done and not c.dealt for c in self.children)):
                continue
            retrying = None  # a retried video that came through: its outcome was in a batch
            # dealt videos whose outcome never came (in a message lost with its dead sender): retried too
            suspects.extend(sorted(set(pending) - set(suspects)))
            if not suspects:
                return
            retrying = suspects.popleft()
            log.info("%s: decoding it again on its own (a decoding process died while it was in flight)",
                     _path_of(pending[retrying]))
            for child in self.children:
                child.ended = child.done = False
            self._deal(0, retrying, pending[retrying])
            for index in range(len(self.children)):
                self._deal(index, None, None)

    @staticmethod
    def _received(child: _Child, payload: Any, pending: dict[int, VideoSource], delivered: dict[int, float],
                  retrying: int | None, device: torch.device) -> FrameBatch:
        """A child's batch as the caller gets it: CUDA frames copied out of the child's memory, a retried
        video's frames already yielded before its first child died left out."""
        frames, paths, stamps, completed = payload
        if retrying is not None and retrying in delivered:
            keep = [i for i, (p, t) in enumerate(zip(paths, stamps))
                    if child.current(p) != retrying or t > delivered[retrying]]
            if len(keep) < len(paths):
                frames = frames[keep]
                paths, stamps = [paths[i] for i in keep], [stamps[i] for i in keep]
        if frames.is_cuda:  # the child's memory: copy it, so the child may reuse it once the copy is done
            received = frames
            frames = received.to(device, copy=True)
            torch.cuda.current_stream(frames.device).synchronize()
            del received
        for p, t in zip(paths, stamps):
            task_id = child.current(p)
            if task_id is not None:
                delivered[task_id] = max(t, delivered.get(task_id, float("-inf")))
        for outcome in completed:
            task_id = child.finished(outcome.path)
            if task_id is not None:
                pending.pop(task_id, None)
                delivered.pop(task_id, None)
        return FrameBatch(frames, list(paths), list(stamps), list(completed))

    def _replace_dead(self, index: int, exitcode: int, suspects: deque[int], retrying: int | None,
                      pending: dict[int, VideoSource]) -> VideoOutcome | None:
        """Starts a new child in place of a dead one; the error outcome of a retried video that crashed it again."""
        lost = {task_id for ids in self.children[index].dealt.values() for task_id in ids}
        hung = self.children[index].stopped
        how = (f"no frame for {self.hang_s:.0f} s: stopped" if hung
               else f"signal {-exitcode}" if exitcode < 0 else f"exit code {exitcode}")
        outcome = None
        if retrying is not None and retrying in lost:  # alone in flight, and its child died: this video did it
            path = _path_of(pending.pop(retrying))
            what = "hung the decoder" if hung else "crashed the decoder process"
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
        self.children[index].conn.close()
        self.children[index] = self._spawn(index)
        self._await_ready(index, self.children[index])
        return outcome


def _poll(conn: Any) -> bool:
    try:
        return bool(conn.poll())
    except (EOFError, OSError):
        return False


def _recv(conn: Any) -> tuple[str, Any] | None:
    try:
        return conn.recv()  # type: ignore[no-any-return]
    except (EOFError, OSError) as exc:  # the sender died before its tensors could be fetched
        log.debug("a message from a decoding process that died could not be read: %r", exc)
        return None


def _no_frames(size: int, device: torch.device) -> torch.Tensor:
    return torch.empty((0, 3, size, size), dtype=torch.uint8, device=device)


def _path_of(source: VideoSource) -> Path:
    return source.path if isinstance(source, VideoInfo) else Path(source)


def _key(path: object) -> str:
    return str(path)
