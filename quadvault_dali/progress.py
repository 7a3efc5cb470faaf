"""Progress bars for long work: tqdm with items/s and ETA, silent in quiet mode and when not a TTY."""

from __future__ import annotations

import sys
from contextlib import contextmanager, nullcontext
from typing import Iterator

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    """Whether ``-q`` was given: commands then print only their result."""
    return _quiet


def progress_enabled() -> bool:
    return not _quiet and sys.stderr.isatty()


@contextmanager
def progress_bar(total: int | float | None, desc: str, unit: str = "it", **kwargs: object) -> Iterator[tqdm]:
    """A tqdm bar that routes log lines above it; disabled under ``-q`` or without a terminal.

    Log lines go through the root logger's handlers (the CLI's), so only those are redirected;
    redirecting a child logger as well would print every line twice.
    """
    enabled = progress_enabled()
    redirect = logging_redirect_tqdm() if enabled else nullcontext()
    with redirect:
        bar = tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True, **kwargs)
        try:
            yield bar
        finally:
            bar.close()
