"""Progress bars for long work: tqdm with items/s and ETA, silent in quiet mode and when not a TTY."""

from __future__ import annotations

import functools
import logging
import math
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


def _log_interval() -> float:
    """Seconds between progress lines when stderr is not a terminal (``QUADVAULT_PROGRESS_SECONDS``; 0: none)."""
    import os

    text = os.environ.get("QUADVAULT_PROGRESS_SECONDS", "60")
    try:
        seconds = float(text.strip().removesuffix("s"))  # "30s" is meant as 30
    except ValueError:
        seconds = float("nan")
    if not math.isfinite(seconds) or seconds < 0:
        _warn_once(f"QUADVAULT_PROGRESS_SECONDS={text!r} is not a number of seconds (0: no progress lines); "
                   "writing one every 60 s")
        return 60.0
    return seconds


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    logging.getLogger(__name__).warning("%s", message)


class _LogTqdm(tqdm):
    """A bar for a log file: a line no more often than ``mininterval``, and none before ``delay``; tqdm's
    ``set_postfix`` refreshes at once, which gave a training log a line per batch on a GPU."""

    _shown: tuple[object, object] | None = None  # (n, postfix) of the last line written

    def refresh(self, nolock: bool = False, lock_args: object = None) -> bool:  # type: ignore[override]
        now = self._time()
        if now - self.last_print_t < self.mininterval or now < self.start_t + self.delay:
            return False
        return super().refresh(nolock=nolock, lock_args=lock_args)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:  # type: ignore[override]
        if msg is None:
            self._shown = (self.n, self.postfix)
        return super().display(msg=msg, pos=pos)

    def close(self) -> None:
        if self._shown == (self.n, self.postfix):  # its last line said this already: a log had each 100 % twice
            self.leave = False
        super().close()


class _LineFile:
    """What tqdm writes, as whole lines: no carriage returns, no padding, no empty lines."""

    def __init__(self, stream: object) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.strip("\r\n ")
        if text:
            try:
                self.stream.write(text + "\n")  # type: ignore[attr-defined]
                self.stream.flush()  # type: ignore[attr-defined]
            except (OSError, ValueError):  # the log's reader is gone: the work goes on
                pass

    def flush(self) -> None:
        pass


def progress_enabled() -> bool:
    return not _quiet and sys.stderr.isatty()


@contextmanager
def progress_bar(total: int | float | None, desc: str, unit: str = "it", **kwargs: object) -> Iterator[tqdm]:
    """A tqdm bar that routes log lines above it; disabled under ``-q`` or without a terminal.

    Log lines go through the root logger's handlers (the CLI's), so only those are redirected;
    redirecting a child logger as well would print every line twice.
    """
    enabled = progress_enabled()
    interval = _log_interval() if not enabled and not _quiet else 0.0
    if interval > 0:  # a log file (nohup, cron, a pipe): whole lines, rarely
        bar = _LogTqdm(total=total, desc=desc, unit=unit, file=_LineFile(sys.stderr), mininterval=interval,
                       maxinterval=interval, delay=interval, ascii=True, ncols=0, **kwargs)
        try:
            yield bar
        finally:
            bar.close()
        return
    redirect = logging_redirect_tqdm() if enabled else nullcontext()
    with redirect:
        bar = tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True, **kwargs)
        try:
            yield bar
        finally:
            bar.close()
