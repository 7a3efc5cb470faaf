"""One exception family for the package, so callers can isolate a bad file without catching everything.

Every message names the file (or object), says what is wrong and, where there is one, the next step.
"""

from __future__ import annotations

import errno
import traceback
from pathlib import Path
from typing import TypeVar


class QuadvaultError(Exception):
    """Base class. ``str(err)`` is a one-line message fit for a CLI error or a Parquet error row."""

    def __init__(self, reason: str, *, path: str | Path | None = None, hint: str | None = None) -> None:
        self.reason = reason
        self.path = Path(path) if path is not None else None
        self.hint = hint
        super().__init__(self._message())

    def _message(self) -> str:
        text = f"{self.path}: {self.reason}" if self.path is not None else self.reason
        if self.hint:
            text += f" ({self.hint})"
        return text

    @property
    def kind(self) -> str:
        """Short machine-readable error class, stored in scan error rows."""
        return type(self).__name__

    def __reduce__(self) -> tuple[object, ...]:
        # pickled whole (path, hint, subclass fields), so an error raised in a decoding process reads the
        # same in the caller's; Exception's default would rebuild it from the message alone
        return _restore_error, (type(self), str(self), dict(self.__dict__))


def _restore_error(cls: type[QuadvaultError], message: str, state: dict[str, object]) -> QuadvaultError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class VideoOpenError(QuadvaultError):
    """The file cannot be opened as a video: missing, empty, not a video, truncated, no index."""


class FileAccessError(VideoOpenError):
    """The file could not be read at all: missing, permission denied, an I/O error. Often temporary (a
    disk or NAS share not mounted for a moment, a permission fixed later), so a resumed scan retries it."""


class UnsupportedCodecError(VideoOpenError):
    """The container opens but the video codec cannot be decoded by the chosen backend."""


class DecodeError(QuadvaultError):
    """The video opened but frames could not be decoded."""


class BackendUnavailableError(QuadvaultError):
    """A backend (e.g. ``gpu``) was asked for but cannot run on this machine."""


class ModelFormatError(QuadvaultError):
    """A file is not a QuadVault model, or one from an incompatible version."""


class LabelsError(QuadvaultError):
    """A labels file is invalid; ``problems`` lists every problem found, not just the first."""

    def __init__(self, reason: str, *, path: str | Path | None = None, problems: list[str] | None = None,
                 hint: str | None = None) -> None:
        self.problems = list(problems or [])
        if self.problems:
            reason = reason + ":\n  - " + "\n  - ".join(self.problems)
        super().__init__(reason, path=path, hint=hint)


class DatasetError(QuadvaultError):
    """A prepared dataset is missing, malformed or unusable for training."""


class OutputError(QuadvaultError):
    """Results cannot be written (disk full, permission, would write into the library)."""


def unexpected_failure(exc: Exception, doing: str, path: str | Path | None) -> QuadvaultError:
    """The error row for an exception nothing anticipated while ``doing`` something to the file at ``path``.

    An operating-system error is worded as one (a failing disk says "Input/output error"), anything
    else names its type; a ``QuadvaultError`` is returned as it is.
    """
    if isinstance(exc, QuadvaultError):
        return exc
    if isinstance(exc, OSError) and exc.errno is not None:
        hint = ("the disk or the file may be damaged; copy the file to another disk and scan it again"
                if exc.errno == errno.EIO else None)
        return FileAccessError(f"cannot read the file while {doing}: {exc.strerror or exc}", path=path, hint=hint)
    return DecodeError(f"{doing} failed: {type(exc).__name__}: {exc}", path=path)


E = TypeVar("E", bound=BaseException)


def detached(error: E) -> E:
    """``error``, just caught, made safe to keep (in a video's outcome, a list of failures): its traceback, and
    those of the errors it chains, are let go, the frames that raised it written into a note instead
    (``QUADVAULT_DEBUG=1`` and debug logs still show it).

    Kept as raised, a decode error's traceback held its frames and their callers' (``f_back``): the decoder's
    last picture (a 4K frame, 12 MB), its container and stream, and the catching frame, whose outcome held the
    error, a cycle only the cycle collector freed. A scan with 100 damaged 4K videos in 200 grew from 0.9 to
    2.2 GB, and prepare-dataset kept every failed video's frame until it ended (a memory audit's find).
    """
    if error.__traceback__ is not None:
        error.add_note("raised at (the traceback is kept as text):\n"
                       + "".join(traceback.format_tb(error.__traceback__)).rstrip())
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.__traceback__ = None
        current = current.__cause__ or current.__context__
    return error
