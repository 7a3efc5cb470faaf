"""A labelled video's identity: its content, not the place it is mounted.

A dataset outlives mounts: the same card dump is ``/media/a`` today and ``/mnt/nas`` tomorrow, and
pilots keep copies (a "best of" folder, a backup). With the path as identity a moved library would
be extracted and split again, and two copies of one clip could land one in train and one in
validation, so validation would measure memory. The id hashes the size and three 64 KiB samples
(start, middle, end): camera files differ there (creation times and sample tables in the
header, coded frames elsewhere), and reading them costs three seeks, not a pass over the file.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

CHUNK = 64 * 1024
_SCHEME = b"quadvault-content-v1\0"


def content_id(path: str | os.PathLike[str]) -> str:
    """16 hex of a hash of the file's size and its first, middle and last 64 KiB.

    An empty file has no content to tell it apart, so its id comes from its resolved path. Raises
    ``OSError`` when the file cannot be read, or is not a regular file: opened without waiting (a named pipe
    opened plainly waits for a writer for ever, and no Ctrl-C reaches a thread stuck there).
    """
    nonblock = getattr(os, "O_NONBLOCK", 0)  # none on Windows, where set_blocking refuses a regular file
    fd = os.open(path, os.O_RDONLY | nonblock)
    try:
        fh = open(fd, "rb")  # noqa: SIM115 - closed by the with below
    except BaseException:  # a folder named like a video: the descriptor must not leak
        os.close(fd)
        raise
    with fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        if nonblock:
            os.set_blocking(fd, True)
        size = st.st_size
        if size == 0:
            where = str(Path(path).expanduser().resolve()).encode("utf-8", "surrogateescape")
            return hashlib.sha1(b"quadvault-empty-v1\0" + where).hexdigest()[:16]
        digest = hashlib.sha1(_SCHEME)
        digest.update(size.to_bytes(8, "little"))
        if size <= 3 * CHUNK:
            digest.update(fh.read())
        else:
            for offset in (0, (size - CHUNK) // 2, size - CHUNK):
                fh.seek(offset)
                digest.update(fh.read(CHUNK))
    return digest.hexdigest()[:16]


def content_ids(paths: Iterable[Path], *, workers: int = 8) -> dict[Path, str | OSError]:
    """``content_id`` of many files, read in threads (seeks on a NAS overlap); errors are returned."""
    def one(path: Path) -> str | OSError:
        try:
            return content_id(path)
        except OSError as exc:
            return exc

    paths = list(paths)
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(paths)))) as pool:
        return dict(zip(paths, pool.map(one, paths)))
