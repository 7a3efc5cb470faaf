"""A file that crashes the decoder must not stop the overnight scan twice.

A native decoder (FFmpeg, NVDEC through DALI) can die on a malformed file with a signal that no Python
``except`` sees. The scan resumes after any death, but it would open the same file again and die again,
forever. So each scan writes a small journal of the videos it started and finished
(``DIR/.inflight[-TAG].log``, removed whenever the run ends in Python, cleanly or by an exception). A
journal still there at the next start means the last run died in native code or was killed; the videos it
had started but not finished are the suspects. Each suspect is sampled once in a child process: if the
child dies by a signal or hangs, the video gets an error row saying so and is not opened again in this
process; if it survives, the video is scanned normally (a plain ``kill -9`` costs only these checks).

A decoder can also hang instead of dying. ``StallWatch`` notices when no frame has arrived for a long
time, names the videos in flight, and keeps the journal even if the user then stops the scan with Ctrl-C,
so the same command isolates them on the next start.

``python -m quadvault_dali.scan.crashguard --device ... -- VIDEO...`` is that child.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterable, Sequence, TextIO

from .._clock import awake
from .._files import atomic_path
from .._lifetime import STOP_SIGNALS, dies_with_this_process, same_python, signal_name
from .shards import output_error

log = logging.getLogger(__name__)

#: How long a suspect's isolated check may go without a new sampled frame before the decoder is declared hung.
CHECK_STALL_S = 300.0
#: No new frame for this long during a scan counts as a stall (a hung decoder).
STALL_S = 900.0
_STARTED, _FINISHED = "S", "F"


def journal_path(out_dir: Path, tag: str) -> Path:
    return out_dir / (f".inflight-{tag}.log" if tag else ".inflight.log")


def _encode(path: Path) -> str:
    """One journal line's name: JSON, so a file name with a line break (or undecodable bytes) survives."""
    return json.dumps(str(path))


def _decode(name: str) -> str:
    return json.loads(name) if name.startswith('"') else name  # journals before names were JSON: raw


def _journals(out_dir: Path, tag: str) -> list[Path]:
    """This tag's journal and its per-GPU workers' (``parallel.worker_tag``'s names)."""
    workers = f".inflight-{tag}-g" if tag else ".inflight-g"
    return [journal_path(out_dir, tag), *sorted(out_dir.glob(f"{workers}*.log"))]


def _entries(journal: Path) -> list[tuple[str, str]]:
    """``(kind, path)`` of each line of a journal (``S``: started, ``F``: finished); ``OSError`` if unreadable."""
    entries = []
    for line in journal.read_text(encoding="utf-8", errors="surrogateescape").split("\n"):
        kind, _, name = line.partition(" ")
        if kind in (_STARTED, _FINISHED):
            entries.append((kind, _decode(name)))
    return entries


def take_suspects(out_dir: Path, tag: str) -> list[Path]:
    """Videos the previous run with this tag (or its per-GPU workers) started but never finished.

    They stay in this tag's journal, as started, until this run records a verdict on each (a scan, or
    the crash row ``settle`` is told about once it is on disk): a Ctrl-C or another crash before that
    leaves them suspects for the next start instead of losing them. Workers' journals are merged in.
    """
    own = journal_path(out_dir, tag)
    journals = _journals(out_dir, tag)
    open_paths: dict[str, None] = {}
    for journal in journals:
        try:
            entries = _entries(journal)
        except FileNotFoundError:
            continue
        started: dict[str, None] = {}
        for kind, name in entries:
            if kind == _STARTED:
                started[name] = None
            else:
                started.pop(name, None)
        open_paths.update(started)
    if open_paths:
        with atomic_path(own) as tmp:
            tmp.write_text("".join(f"{_STARTED} {_encode(Path(p))}\n" for p in open_paths),
                           encoding="utf-8", errors="surrogateescape")
    for journal in journals:
        if journal != own or not open_paths:
            journal.unlink(missing_ok=True)
    return [Path(p) for p in open_paths]


def finished_in_journals(out_dir: Path, tag: str) -> set[str]:
    """The video paths a dead run with this tag (or its per-GPU workers) finished: what it had done, saved in a
    shard or not (the supervisor compares them with the shards it closed)."""
    finished: set[str] = set()
    for journal in _journals(out_dir, tag):
        try:
            finished.update(name for kind, name in _entries(journal) if kind == _FINISHED)
        except OSError:
            continue
    return finished


class CrashJournal:
    """Appends ``S path`` when a video is handed to the decoder and ``F path`` when its outcome arrives."""

    def __init__(self, out_dir: Path, tag: str) -> None:
        self.path = journal_path(out_dir, tag)
        self.in_flight: dict[Path, None] = {}
        self.keep = False  # set by StallWatch: a hang is suspected, so even a clean exit keeps the journal
        self._fh: TextIO | None = None

    def _write(self, kind: str, path: Path) -> None:
        try:
            if self._fh is None:
                self._fh = open(self.path, "a", encoding="utf-8", errors="surrogateescape")  # noqa: SIM115
            self._fh.write(f"{kind} {_encode(path)}\n")
            self._fh.flush()  # in the kernel's hands: survives the process, whatever kills it
        except OSError as exc:
            raise output_error(exc, self.path) from exc

    def started(self, path: Path) -> None:
        self.in_flight[path] = None
        self._write(_STARTED, path)

    def finished(self, path: Path) -> None:
        self.in_flight.pop(path, None)
        self._write(_FINISHED, path)

    def discard(self) -> None:
        """The run ended in Python (done, interrupted or failed): nothing in flight crashed the decoder."""
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:  # a full disk: the write that failed has been reported already
                pass
            self._fh = None
        if not self.keep:
            self.path.unlink(missing_ok=True)


class StallWatch:
    """Warns once when no frame has arrived for ``stall_s`` and marks the journal to be kept."""

    def __init__(self, journal: CrashJournal, stall_s: float = STALL_S) -> None:
        self.journal, self.stall_s = journal, stall_s
        self._last = awake()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scan-stall-watch", daemon=True)

    def __enter__(self) -> "StallWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def beat(self) -> None:
        self._last = awake()

    def _run(self) -> None:
        while not self._stop.wait(min(30.0, self.stall_s / 4)):
            idle = awake() - self._last
            if idle >= self.stall_s and self.journal.in_flight:
                self.journal.keep = True
                names = ", ".join(str(p) for p in list(self.journal.in_flight)[:8])
                log.warning("no frame for %.0f min; a decoder may hang on one of: %s. If the scan stays stuck, "
                            "stop it and run the same command again: these videos are then checked one at a "
                            "time and a hanging one becomes an error row", idle / 60, names)
                return


def check_in_child(path: Path, *, device: str, mode: str, fps: float, size: int, device_id: int = 0,
                   decode_client: str = "dali", stall_s: float = CHECK_STALL_S) -> str | None:
    """Samples ``path`` in a child process; ``None`` when the decoder survives it, else what happened."""
    return check_videos([path], device=device, mode=mode, fps=fps, size=size, device_id=device_id,
                        decode_client=decode_client, stall_s=stall_s).get(path)


def check_videos(paths: Sequence[Path], *, device: str, mode: str, fps: float, size: int, device_id: int = 0,
                 decode_client: str = "dali", stall_s: float = CHECK_STALL_S) -> dict[Path, str]:
    """``{path: what happened}`` for the ``paths`` the decoder crashed or hung on, sampled one after another
    in child processes.

    One child takes them in turn, saying when each starts and ends; a crash or a hang ends it, the video it
    was on is the culprit, and a new child goes on after it. So N suspects cost one process start (a second
    or more: Python, PyTorch, DALI) plus one per culprit, not one each: a ``kill -9`` of a GPU scan leaves
    every video it had queued (~100) as a suspect. A hang is ``stall_s`` without a sign of progress (a frame,
    a video started or done), not a limit on the whole check: a long 4K file decoded on the CPU in exact mode
    may take far longer than any fixed limit and still be fine. The children decode with the scan's decoder
    (``decode_client``): a file that crashes FFmpeg's NVDEC decoder may well pass DALI's.
    """
    verdicts: dict[Path, str] = {}
    todo = list(paths)
    killed_once: set[Path] = set()
    while todo:
        done, on, why = _check_in_one_child(todo, device=device, mode=mode, fps=fps, size=size,
                                            device_id=device_id, decode_client=decode_client, stall_s=stall_s)
        if why == _STOPPED:  # a stop signal is no verdict on a video: the rest is scanned as usual
            log.warning("the isolated check was stopped by a signal; its videos are not judged and are scanned as "
                        "usual")
            break
        if why == _KILLED and on is not None and todo[on] not in killed_once:
            killed_once.add(todo[on])  # the out-of-memory killer may have picked it for another's memory: once more
            log.warning("%s: the isolated check was killed (SIGKILL) on it; checking it once more", todo[on])
            todo = todo[on:]
            continue
        if why == _KILLED:
            why = ("the isolated check was killed on this file twice (SIGKILL: most likely the out-of-memory killer, "
                   "see dmesg); skipped so the rest can go on")
        if why is None:
            if on is not None:  # a Python error on that video, no crash: it is scanned as usual, the rest checked
                todo = todo[on + 1:]
                continue
            if 0 < done < len(todo):  # stopped between videos without a signal: a fresh child for the rest
                todo = todo[done:]
                continue
            break  # all checked (or the child could not run at all: the scan itself will tell)
        if on is None:  # died between two videos: no culprit; the rest get a fresh child, unless none started
            log.warning("the check process died between two videos, on none of them; %s", "the rest are checked in a "
                        "fresh one" if done else "no video is judged")
            if done == 0:
                break
            todo = todo[done:]
            continue
        verdicts[todo[on]] = why
        todo = todo[on + 1:]
    return verdicts


#: What ``_check_in_one_child`` says of a child ended by a stop signal (SIGINT, SIGTERM, SIGHUP: a user or a batch
#: system stopping the work, not the decoder crashing) and by SIGKILL (the out-of-memory killer or a kill -9)
_STOPPED, _KILLED = "stopped", "killed"


def _check_in_one_child(paths: Sequence[Path], *, device: str, mode: str, fps: float, size: int, device_id: int,
                        decode_client: str, stall_s: float) -> tuple[int, int | None, str | None]:
    """(videos finished, index of the one in progress or ``None``, why the child stopped early or ``None``)."""
    # this interpreter, flags and import path (``same_python``): an ``av.py`` in the working directory once made
    # every check die on import, and each suspect was then blamed for a crash
    cmd = [*same_python("from quadvault_dali.scan.crashguard import _main; raise SystemExit(_main())"),
           "--device", device, "--mode", mode, "--fps", repr(fps), "--size", str(size), "--device-id",
           str(device_id), "--decode-client", decode_client, "--", *map(str, paths)]
    child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             preexec_fn=dies_with_this_process())  # a hung check must not outlive a killed scan
    last = [awake()]
    state = {"finished": 0, "on": None}  # what the child said last
    stderr: list[bytes] = []

    def follow() -> None:  # "S i" / "F i" around each video, "." per batch of frames
        assert child.stdout is not None
        for line in child.stdout:
            last[0] = awake()
            kind, _, index = line.decode(errors="replace").strip().partition(" ")
            if kind == _STARTED and index.isdigit():
                state["on"] = int(index)
            elif kind == _FINISHED and index.isdigit():
                state["on"], state["finished"] = None, int(index) + 1

    readers = [threading.Thread(target=follow, daemon=True),
               threading.Thread(target=lambda: stderr.append(child.stderr.read() if child.stderr else b""),
                                daemon=True)]
    for reader in readers:
        reader.start()
    why: str | None = None
    try:
        while child.poll() is None:
            if awake() - last[0] > stall_s:
                why = f"no frame came for {stall_s:.0f} s in an isolated check (the decoder hangs on it)"
                break
            time.sleep(min(0.2, stall_s / 10))
    finally:  # a hang, or the scan stopped meanwhile (Ctrl-C, SIGTERM): the child must not outlive it
        if child.poll() is None:
            child.kill()
            child.wait()
    for reader in readers:
        reader.join(timeout=5)
    if why is None and -child.returncode in STOP_SIGNALS:
        why = _STOPPED
    elif why is None and child.returncode == -signal.SIGKILL:
        why = _KILLED
    elif why is None and child.returncode < 0:
        why = f"the decoder crashed on this file ({signal_name(-child.returncode)}); skipped so the rest can go on"
    elif why is None and child.returncode != 0:
        tail = b"".join(stderr).decode(errors="replace").strip().splitlines()[-1:] or [""]
        log.debug("isolated check exited %d: %s", child.returncode, tail[0])
        if state["on"] is not None:  # Python errors are caught per video: this exit is the decoder's doing
            why = f"the decoder process exited with code {child.returncode} on this file; skipped so the rest can go on"
    return int(state["finished"]), state["on"], why  # type: ignore[arg-type]


def isolate_suspects(suspects: Iterable[Path], what: str = "scan", **check: object) -> dict[Path, str]:
    """``{path: why}`` for the suspects whose isolated check crashed or hung (``what`` died: a scan, a
    prepare-dataset run)."""
    suspects = list(suspects)
    if not suspects:
        return {}
    names = ", ".join(str(p) for p in suspects[:3]) + (f" and {len(suspects) - 3} more" if len(suspects) > 3 else "")
    log.warning("%d video(s) were being decoded when the last %s died (%s); checking them in a separate process",
                len(suspects), what, names)
    crashed = check_videos(suspects, **check)  # type: ignore[arg-type]
    for path, why in crashed.items():
        log.warning("%s: %s", path, why)
    return crashed


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Sample videos one at a time, as a scan would, to see whether the "
                                 "decoder survives each.")
    ap.add_argument("videos", type=Path, nargs="+")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mode", default="auto")
    ap.add_argument("--fps", type=float, default=1.0)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--device-id", type=int, default=0)
    ap.add_argument("--decode-client", default="dali")
    args = ap.parse_args(argv)
    from ..sampling import create_sampler

    sampler = create_sampler(args.device, fps=args.fps, mode=args.mode, size=args.size, streams=1, batch_size=1,
                             device_id=args.device_id, decode_client=args.decode_client)
    for i, video in enumerate(args.videos):
        print(f"{_STARTED} {i}", flush=True)  # the parent blames the video in progress when this process dies
        try:
            for batch in sampler.iter_batches([video]):
                if len(batch):
                    print(".", flush=True)  # progress for the parent's stall watch
                for outcome in batch.completed:
                    if outcome.error is not None:  # an ordinary bad file: the scan itself records it
                        print(outcome.error, file=sys.stderr)
        except Exception as exc:  # noqa: BLE001 - a Python error is no crash: the scan records it; go on
            print(f"{video}: {exc}", file=sys.stderr)
        print(f"{_FINISHED} {i}", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(_main())
