"""prepare-dataset and a labelled file that crashes the decoder: it costs one run, never every run.

A native decoder (FFmpeg, NVDEC through DALI) can die on a malformed file with a signal no Python ``except``
sees. The killed run keeps every video whose frames were all written (``_prepare``'s manifests), but the same
command would open the same file again and die again, for ever. So the extraction keeps the scan's journal of
videos started and finished (``scan.crashguard.CrashJournal``, ``OUT/.inflight-prepare.log``); a journal left
behind names the videos that were in flight when the process died, and the next run samples each of them alone
in a child process first (``isolate_suspects``). One that crashes (or hangs) its child is left out of the dataset
with the reason, like any undecodable video, and is remembered in ``OUT/.decoder-crashes.json`` with its size and
mtime: later runs (``--merge`` after labelling more) leave it out without opening it, until the file changes or
``--overwrite`` rebuilds from scratch.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable

from ..errors import DecodeError
from ..scan.crashguard import isolate_suspects, take_suspects
from ._jpeg import write_atomic

log = logging.getLogger(__name__)

#: The journal tag of prepare-dataset's extraction (``OUT/.inflight-prepare.log``)
JOURNAL_TAG = "prepare"
#: The videos found to crash the decoder, with the file's size and mtime when they did
CRASHES_FILE = ".decoder-crashes.json"
HINT = "check the file in a player; re-copy it if it is damaged (a changed file is tried again)"


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


class DecoderCrashes:
    """``OUT/.decoder-crashes.json``: path -> (size, mtime, why) of the labelled files that crashed a decoder."""

    def __init__(self, out_dir: Path, *, forget: bool = False) -> None:
        self.file = out_dir / CRASHES_FILE
        self.known: dict[str, dict[str, Any]] = {} if forget else self._load()
        self._dirty = False  # forgetting is written with the first verdict or by ``forget_on_disk``, not before:
        # a rebuild stopped before its first frame keeps the old table, so it keeps the old record too

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            doc = json.loads(self.file.read_text(encoding="utf-8"))
            videos = doc["videos"]
            return {str(p): dict(v) for p, v in videos.items() if isinstance(v, dict)}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("%s: unreadable (%s); the files it named are tried again", self.file, exc)
            return {}

    def error_for(self, path: Path) -> DecodeError | None:
        """The remembered crash of ``path`` while the file is as it was then; ``None`` otherwise."""
        entry = self.known.get(str(path))
        if entry is None:
            return None
        if _stat(path) != (entry.get("size_bytes"), entry.get("mtime_ns")):  # changed: tried again, forgotten
            del self.known[str(path)]
            self._dirty = True
            return None
        return DecodeError(f"{entry.get('reason', 'the decoder crashed on this file')} (in an earlier run; not "
                           "opened again until the file changes)", path=path, hint=HINT)

    def add(self, path: Path, why: str) -> DecodeError:
        stat = _stat(path)
        if stat is not None:
            self.known[str(path)] = {"size_bytes": stat[0], "mtime_ns": stat[1], "reason": why}
            self._dirty = True
        return DecodeError(why, path=path, hint=HINT)

    def forget_on_disk(self) -> None:
        """The old dataset is gone (a rebuild wrote its first frame): the record on disk is this run's alone."""
        self._dirty = True
        self.save()

    def save(self) -> None:
        """Writes the record (atomically) if it changed; removes it when it is empty."""
        if not self._dirty:
            return
        if self.known:
            write_atomic(self.file, json.dumps({"format": 1, "videos": self.known}, indent=1).encode())
        else:
            self.file.unlink(missing_ok=True)
        self._dirty = False


def isolate_crashers(out_dir: Path, todo: Iterable[Path], crashes: DecoderCrashes, *, device: str, mode: str,
                     fps: float, size: int) -> dict[Path, DecodeError]:
    """The ``todo`` videos to leave out: known crashers whose file is unchanged, and the ones a killed run had in
    flight that crash (or hang) a decoder sampled alone in a child process. Saves the record before returning."""
    todo = list(todo)
    left_out: dict[Path, DecodeError] = {}
    for path in todo:
        error = crashes.error_for(path)
        if error is not None:
            left_out[path] = error
    wanted = set(todo) - set(left_out)
    suspects = [p for p in take_suspects(out_dir, JOURNAL_TAG) if p in wanted]
    verdicts = isolate_suspects(suspects, what="prepare-dataset run", device=device, mode=mode, fps=fps,
                                size=size)
    for path, why in verdicts.items():
        left_out[path] = crashes.add(path, why)
    crashes.save()
    return left_out
