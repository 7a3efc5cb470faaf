"""prepare-dataset and a labelled file that crashes the decoder: it costs one run, never every run.

A native decoder (FFmpeg, NVDEC through DALI) can die on a malformed file with a signal no Python ``except``
sees. The killed run keeps every video whose frames were all written (``_prepare``'s manifests), but the same
command would open the same file again and die again, for ever. So the extraction keeps the scan's journal of
videos started and finished (``scan.crashguard.CrashJournal``, ``OUT/.inflight-prepare.log``); a journal left
behind names the videos that were in flight when the process died, and the next run samples each of them alone
in a child process first (``isolate_suspects``). One that crashes (or hangs) its child is left out of the dataset
with the reason, like any undecodable video, and is remembered in ``OUT/.decoder-crashes.json`` by its content id:
later runs (``--merge`` after labelling more) leave it out without opening it, moved or renamed, until its
content changes or ``--overwrite`` rebuilds from scratch.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping

from ..errors import DecodeError
from ..scan.crashguard import isolate_suspects, take_suspects
from ._jpeg import write_atomic

log = logging.getLogger(__name__)

#: The journal tag of prepare-dataset's extraction (``OUT/.inflight-prepare.log``)
JOURNAL_TAG = "prepare"
#: The videos found to crash the decoder, by content id, with the path they had and why
CRASHES_FILE = ".decoder-crashes.json"
FORMAT = 2  # 1 (stop 26, never released) was keyed by path
HINT = "check the file in a player; re-copy it if it is damaged (a changed file is tried again)"


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


class DecoderCrashes:
    """``OUT/.decoder-crashes.json``: video id (its content, ``_identity``) -> the path it had and why it crashed a
    decoder. By content, not path: a crasher moved or renamed is still known, and a file whose content changed
    (re-copied) has another id and is tried again."""

    def __init__(self, out_dir: Path, *, forget: bool = False) -> None:
        self.file = out_dir / CRASHES_FILE
        self.known: dict[str, dict[str, Any]] = {} if forget else self._load()
        self._dirty = False  # forgetting is written with the first verdict or by ``forget_on_disk``, not before:
        # a rebuild stopped before its first frame keeps the old table, so it keeps the old record too

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            doc = json.loads(self.file.read_text(encoding="utf-8"))
            if doc.get("format") != FORMAT:
                raise ValueError(f"format {doc.get('format')!r}, not {FORMAT}")
            return {str(vid): dict(v) for vid, v in doc["videos"].items() if isinstance(v, dict)}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("%s: unreadable (%s); the files it named are tried again", self.file, exc)
            return {}

    def error_for(self, path: Path, video_id: str) -> DecodeError | None:
        """The remembered crash of this content; ``None`` when it never crashed a decoder here, or when the file is
        where it was but re-copied (its size or mtime changed: damage elsewhere than the three blocks the content id
        reads is mended by a copy the id does not see)."""
        entry = self.known.get(video_id)
        if entry is None:
            return None
        was = entry.get("path")
        if was == str(path) and _stat(path) != (entry.get("size_bytes"), entry.get("mtime_ns")):
            del self.known[video_id]
            self._dirty = True
            return None
        where = f" as {was}" if was and was != str(path) else ""
        return DecodeError(f"{entry.get('reason', 'the decoder crashed on this file')} (in an earlier run{where}; not "
                           "opened again until the file changes)", path=path, hint=HINT)

    def forget_changed(self, todo: Mapping[Path, str]) -> None:
        """Drops the entries of paths that now hold other content (re-copied after the crash), unless that content is
        still labelled elsewhere (moved, and another video copied to its old name)."""
        labelled = set(todo.values())
        for video_id, entry in list(self.known.items()):
            now = todo.get(Path(str(entry.get("path"))))
            if now is not None and now != video_id and video_id not in labelled:
                del self.known[video_id]
                self._dirty = True

    def add(self, path: Path, video_id: str, why: str) -> DecodeError:
        size, mtime = _stat(path) or (None, None)
        self.known[video_id] = {"path": str(path), "size_bytes": size, "mtime_ns": mtime, "reason": why}
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
            write_atomic(self.file, json.dumps({"format": FORMAT, "videos": self.known}, indent=1).encode())
        else:
            self.file.unlink(missing_ok=True)
        self._dirty = False


def isolate_crashers(out_dir: Path, todo: Mapping[Path, str], crashes: DecoderCrashes, *, device: str, mode: str,
                     fps: float, size: int) -> dict[Path, DecodeError]:
    """The ``todo`` videos (path -> video id) to leave out: known crashers, and the ones a killed run had in flight
    that crash (or hang) a decoder sampled alone in a child process. Saves the record before returning."""
    crashes.forget_changed(todo)
    left_out: dict[Path, DecodeError] = {}
    for path, video_id in todo.items():
        error = crashes.error_for(path, video_id)
        if error is not None:
            left_out[path] = error
    wanted = set(todo) - set(left_out)
    suspects = [p for p in take_suspects(out_dir, JOURNAL_TAG) if p in wanted]
    verdicts = isolate_suspects(suspects, what="prepare-dataset run", device=device, mode=mode, fps=fps,
                                size=size)
    for path, why in verdicts.items():
        left_out[path] = crashes.add(path, todo[path], why)
    crashes.save()
    return left_out
