"""Whether one folder is inside another as the disk sees it, through bind mounts and second mounts.

``realpath`` resolves symlinks but not bind mounts: a Docker volume ``-v /footage/results:/out`` makes
``/out`` a different path for the very folder ``/footage/results``. Linux's ``/proc/self/mountinfo`` says,
for each mount, which filesystem (device) and which folder of it is mounted where; a path is then known by
(device, path within that filesystem), the same for every way of reaching it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")
_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def _mounts() -> list[tuple[str, str, str]]:
    """(device, folder of the filesystem mounted, mount point) for each mount, in mount order."""
    try:
        text = MOUNTINFO.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError:
        return []
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        if len(fields) >= 5:
            mounts.append((fields[2], _unescape(fields[3]), _unescape(fields[4])))
    return mounts


def disk_location(path: str | os.PathLike[str], mounts: list[tuple[str, str, str]] | None = None
                  ) -> tuple[str, str] | None:
    """``(device, path within its filesystem)`` of a real (symlink-free, absolute) path, or ``None`` where the
    mount table cannot be read (not Linux)."""
    table = _mounts() if mounts is None else mounts
    real = os.path.normpath(os.fspath(path))
    best: tuple[str, str, str] | None = None
    for device, root, point in table:  # the longest mount point that holds the path; a later mount over it wins
        if real == point or real.startswith(point.rstrip("/") + "/"):
            if best is None or len(point) >= len(best[2]):
                best = (device, root, point)
    if best is None:
        return None
    device, root, point = best
    rest = os.path.relpath(real, point)
    return device, os.path.normpath(os.path.join(root, rest)) if rest != "." else os.path.normpath(root)


def within_on_disk(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> bool:
    """Whether real path ``path`` is ``folder`` or inside it on the same filesystem, however each is mounted."""
    mounts = _mounts()
    inner, outer = disk_location(path, mounts), disk_location(folder, mounts)
    if inner is None or outer is None or inner[0] != outer[0]:
        return False
    return inner[1] == outer[1] or inner[1].startswith(outer[1].rstrip("/") + "/")
