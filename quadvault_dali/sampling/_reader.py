"""A binary file that counts the bytes it reads, so samplers can report how much of a file they read."""

from __future__ import annotations

import io
from pathlib import Path

from ..errors import FileAccessError


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
