"""Writing outputs so that a crash, Ctrl-C or full disk never leaves a half-written file under the real name."""

from __future__ import annotations

import errno
import fcntl
import glob
import hashlib
import logging
import os
import re
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_log = logging.getLogger(__name__)


#: The errors of a write that found no room: a full disk, a quota, a file size limit (``ulimit -f``)
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def default_file_mode() -> int:
    """The permissions a plain ``open(path, "w")`` gives a new file here (0o666 less the umask). Libraries
    that write private files (safetensors: 0o600) would keep a shared model's weights from its users."""
    try:  # Linux: read it, rather than set and restore it (the umask is the whole process's, threads included)
        with open("/proc/self/status", encoding="ascii") as fh:
            mask = next(int(line.split()[1], 8) for line in fh if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


#: The longest file name most file systems take, in bytes (ext4, XFS, APFS, NTFS in UTF-16 units)
NAME_MAX = 255


def temp_name(name: str) -> str:
    """``.NAME.PID-THREAD.tmp``; where that passes ``NAME_MAX`` bytes (a 230-byte reel name's clip list), NAME is
    cut and a hash of the whole name keeps two long names apart."""
    tail = f".{os.getpid()}-{threading.get_ident()}.tmp"
    full = f".{name}{tail}"
    if len(os.fsencode(full)) <= NAME_MAX:
        return full
    digest = "~" + hashlib.sha1(os.fsencode(name)).hexdigest()[:8]
    room = NAME_MAX - len(os.fsencode(tail)) - len(digest) - 1
    raw = os.fsencode(name)[:room]
    for end in range(len(raw), max(len(raw) - 4, 0), -1):  # not through a multibyte letter
        try:
            cut = raw[:end].decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    else:
        cut = os.fsdecode(raw)  # a name that was never UTF-8: its bytes as they are
    return f".{cut}{digest}{tail}"


@contextmanager
def atomic_path(path: Path, tmp: Path | None = None, *, fsync: bool = False) -> Iterator[Path]:
    """Yields a temporary path beside ``path`` to write to; renames it over ``path`` when the block ends
    normally, removes it when the block raises (and re-raises).

    ``tmp`` names the temporary file where its name matters (the scan's cleanup looks for a prefix, an
    encoder picks the container from the suffix); by default it is hidden and unique to this thread.
    ``fsync`` makes the content durable before the rename and the rename durable after it (shards a
    resumed scan will trust must survive a power cut, not only a crash).
    """
    tmp = tmp or path.with_name(temp_name(path.name))
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Flushes a folder's entries (a rename or unlink in it) to disk; a no-op where folders cannot be
    opened (Windows) or synced (some network file systems)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (weights files are tens of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def process_gone(pid: int) -> bool:
    """Whether no process ``pid`` runs: the file it was writing was left by a kill. One of another user's
    (which cannot be signalled) counts as running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """Linux: a process that has died but that no one has waited for yet (its parent, say a container's shell
    that reaps nothing, still holds it): gone for every purpose here, though signal 0 still reaches it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[-1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


_TEMP_TAIL = re.compile(r"\.(\d+)-\d+\.tmp$")
_CUT_DIGEST = re.compile(rb"~[0-9a-f]{8}\.$")


def _named_like(base: bytes, prefix: bytes) -> bool:
    """Whether a temporary's ``NAME.`` (``base``, with the dot before its PID, so a prefix ``NAME.`` asks for
    NAME itself) starts with ``prefix``, also where ``temp_name`` cut NAME short: then the part kept (before its
    ``~hash``) must start the prefix, and a prefix naming a whole NAME must have that hash. Without the hash, two
    reel names alike in their first ~217 bytes took each other's killed run's list as their own, and a reel
    replaced a user's video as one it had made (a review's find)."""
    if base.startswith(prefix):
        return True
    digest = _CUT_DIGEST.search(base)
    if digest is None or not prefix.startswith(base[:digest.start()]):
        return False
    if prefix.endswith(b"."):  # the whole NAME: its hash says whether the cut name is this one
        return base[digest.start() + 1:digest.end() - 1] == hashlib.sha1(prefix[:-1]).hexdigest()[:8].encode()
    return True


def dead_temporaries(directory: Path, prefix: str = "") -> list[Path]:
    """Temporary files of ``atomic_path`` (``.NAME.PID-THREAD.tmp``) in ``directory`` whose process is gone: a
    killed run's; a live one (another run's) is not listed. ``prefix``: only those whose NAME starts with it,
    shortened names (``temp_name``'s, of names near ``NAME_MAX``) included."""
    dead = []
    wanted = os.fsencode(prefix)
    # NAME is never cut to under ~200 bytes: 50 letters of the prefix (4 bytes at most each) are in every name
    for tmp in directory.glob(f".{glob.escape(prefix[:50])}*.tmp"):
        tail = _TEMP_TAIL.search(tmp.name)
        if tail and _named_like(os.fsencode(tmp.name[1:tail.start() + 1]), wanted) and process_gone(int(tail.group(1))):
            dead.append(tmp)
    return dead


def remove_dead_temporaries(directory: Path, prefix: str = "") -> None:
    """Removes ``dead_temporaries``: a killed run's (a model folder's 40-MB training state, a dataset's table).
    ``prefix``: only those whose NAME starts with it (a reel's, in a folder of the user's)."""
    for tmp in dead_temporaries(directory, prefix):
        _log.info("removing %s, left by a run that was killed", tmp)
        tmp.unlink(missing_ok=True)


class FolderLock:
    """An exclusive ``flock`` on a lock file: one writer at a time; released when the process dies, however."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, *, wait: bool = False, timeout_s: float | None = None) -> bool:
        """Takes the lock; ``wait`` blocks until it is free, ``timeout_s`` gives up after that long. Raises the
        ``OSError`` of a lock file that cannot be created."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout_s if timeout_s is not None else None
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait and deadline is None else fcntl.LOCK_NB))
                    break
                except BlockingIOError:
                    if deadline is None or time.monotonic() >= deadline:
                        os.close(fd)
                        return False
                    time.sleep(0.2)
        except BaseException:  # ENOLCK (a NAS without locks), an interrupt: the descriptor is not kept
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
