"""A binary file that counts the bytes it reads, so samplers can report how much of a file they read."""

from __future__ import annotations

import functools
import importlib
import io
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, ContextManager, Iterator

from .._mp4 import is_plain_mp4
from ..errors import FileAccessError
from ..probe import open_container

if TYPE_CHECKING:
    import av


class CountingFile(io.RawIOBase):
    """Read-only file wrapper; ``bytes_read`` is what was actually fetched from the file."""

    def __init__(self, path: Path, buffer_size: int = 64 * 1024) -> None:
        super().__init__()
        try:
            self._fh = open(path, "rb", buffering=0)  # noqa: SIM115 - closed in close()
        except PermissionError:
            raise FileAccessError("permission denied", path=path, hint="check the file's read permission") from None
        except OSError as exc:
            raise FileAccessError(f"cannot open the file: {exc.strerror or exc}", path=path) from None
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = self._fh.readinto(buffer)
        self.bytes_read += n or 0
        return n or 0

    def read_at(self, offset: int, size: int) -> bytes:
        """Reads exactly ``size`` bytes at ``offset`` (fewer only at end of file)."""
        self._fh.seek(offset)
        data = self._fh.read(size)
        self.bytes_read += len(data)
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def close(self) -> None:
        self._fh.close()
        super().close()


_THREAD_IO = "/proc/thread-self/io"


@functools.cache  # once a process: every video's ThreadReads.start() calls it
def _import_what_cutting_imports_later() -> None:
    """Modules numpy and PyAV import on first use inside a video's probe and cut (``np.median`` imports
    ``numpy.ma``; opening a container, ``av.subtitles.stream``, whose shared library the loader reads):
    imported now, their files are not counted as the first video's reads."""
    for name in _IMPORTED_ON_FIRST_USE:
        try:
            importlib.import_module(name)
        except ImportError:  # another PyAV or numpy version: nothing to warm
            pass


#: see ``_import_what_cutting_imports_later``
_IMPORTED_ON_FIRST_USE = ("av.subtitles.codeccontext", "av.subtitles.stream", "av.subtitles.subtitle", "numpy.ma")


def _thread_rchar() -> tuple[int, int] | None:
    """(bytes this thread has read through read-like system calls, the length of the report that said so),
    from Linux's per-thread I/O accounting; ``None`` where there is none."""
    try:
        with open(_THREAD_IO, "rb", buffering=0) as report:
            text = report.read(4096)
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(b"rchar:"):
            return int(line[6:]), len(text)
    return None


class ThreadReads:
    """Counts every byte the calling thread reads while it is active, FFmpeg's own reads among them.

    Why: FFmpeg reading a file through a Python file object (``CountingFile``) takes the GIL for every
    read and seek, ~15 times to open an MP4. Four prepare threads beside the decode threads queued for it:
    on the H100 (stop 17) they spent two thirds of their time inside ``av.open``, and the scan was 1.5x
    faster with a 0.5 ms switch interval. Opened by path, FFmpeg reads without the GIL, and this thread's
    ``rchar`` still says how many bytes the video cost (on this machine within 1 % of what the file object
    counted). ``start()`` is ``None`` where Linux does not account per thread; callers then read through
    ``CountingFile``. Only what runs on this thread between ``start`` and ``bytes_read`` counts, so keep
    other reads (logs are writes; imports, the first time) out of that stretch.
    """

    def __init__(self, start: int, own: int) -> None:
        # Linux counts a read when it returns: every report read after ``start`` is in later values, so its
        # length is left out with whatever ``paused`` left out
        self._start, self._left_out = start, own
        self._paused = False

    @classmethod
    def start(cls) -> ThreadReads | None:
        _import_what_cutting_imports_later()
        first = _thread_rchar()
        return None if first is None else cls(first[0], first[1])

    def bytes_read(self) -> int:
        """Bytes read since ``start``, less what was read while ``paused``."""
        if self._paused:
            raise RuntimeError("ThreadReads.bytes_read() inside paused()")
        now = _thread_rchar()
        if now is None:  # pragma: no cover - the file went away mid-run
            return 0
        self._left_out += now[1]
        return max(0, now[0] - self._start - (self._left_out - now[1]))

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Reads in here are not the video's (a worker's pipe from its parent). Not nested, and no
        ``bytes_read`` inside: either would leave a report's length out twice."""
        if self._paused:
            raise RuntimeError("ThreadReads.paused() does not nest")
        self._paused = True
        before = _thread_rchar()
        try:
            yield
        finally:
            after = _thread_rchar()
            self._paused = False
            if before is not None and after is not None:
                self._left_out += (after[0] - before[0]) + after[1]


class CuttingSource:
    """One video as a prepare thread or worker reads it. A plain MP4/MOV (a ``moov``, no movie fragments) is
    opened by FFmpeg by its path where ``ThreadReads`` can count that (FFmpeg then reads only the header and
    the first pictures; packets are read at their index positions through ``file``); everything else, and
    a plain MP4 that will not open by path, through ``file``, as before.

    Why only plain MP4s: FFmpeg's own file reader turns a failing disk (EIO) into the end of the file for
    the Matroska, WebM and MPEG-TS demuxers, so a damaged disk would give a short, "ok" video; through the
    Python file the ``OSError`` reaches us. ``bytes_read()`` is what the video cost either way (by path it
    also counts the prober's own reads: the top-level box headers, the ``moov`` a second time); call it on
    the thread that made this source.
    """

    def __init__(self, path: Path, quick: bool = True) -> None:
        self.path = path
        self.quick = quick  # ``open_container(quick=...)``: False only to compare with FFmpeg's full probing
        self.file = CountingFile(path) if path.is_file() else None  # else open() says what the path is
        self._reads: ThreadReads | None = None
        self.by_path = False  # decided by open()
        self._plain: bool | None = None  # whether it is a plain MP4/MOV, once read

    def open(self) -> "av.container.InputContainer":
        if self.file is not None and not self.by_path:
            reads = ThreadReads.start()
            if reads is not None:
                self._plain = is_plain_mp4(self.file, self.path.stat().st_size)
                if self._plain:
                    self._reads, self.by_path = reads, True
                self.file.seek(0)  # FFmpeg reads a file object from where it is
        if self.by_path:
            try:
                return open_container(self.path, plain_mp4=True, quick=self.quick)
            except Exception:  # noqa: BLE001 - again through the file, whose reads say what went wrong (EIO)
                self.by_path = False
        return open_container(self.path, self.file, plain_mp4=self._plain, quick=self.quick)

    def bytes_read(self) -> int:
        if self._reads is not None:
            return self._reads.bytes_read()
        return self.file.bytes_read if self.file is not None else 0

    def not_counting(self) -> ContextManager[None]:
        """Reads in here are not the video's (``ThreadReads.paused``)."""
        return self._reads.paused() if self._reads is not None else nullcontext()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()

    def __enter__(self) -> CuttingSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
