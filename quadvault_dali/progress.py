"""Progress bars for long work: tqdm with items/s and ETA, silent in quiet mode and when not a TTY."""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from typing import Iterator

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def progress_enabled() -> bool:
    return not _quiet and sys.stderr.isatty()


@contextmanager
def progress_bar(total: int | float | None, desc: str, unit: str = "it", **kwargs: object) -> Iterator[tqdm]:
    """A tqdm bar that routes log lines above it; disabled under ``-q`` or without a terminal."""
    with logging_redirect_tqdm(loggers=[logging.getLogger("quadvault_dali")]):
        bar = tqdm(total=total, desc=desc, unit=unit, disable=not progress_enabled(), dynamic_ncols=True,
                   **kwargs)
        try:
            yield bar
        finally:
            bar.close()
