"""Options shared by several commands, declared once."""

from __future__ import annotations

import errno
import signal
import sys
from contextlib import contextmanager
from typing import Callable, Iterator

import click


#: The arguments this process was started with, when the command line (not a caller's ``main(args)``) chose the
#: command: only then may a command run itself again in a child (``scan``'s supervisor). Kept here, not in
#: ``main``: run as ``python -m quadvault_dali.cli.main``, that module is loaded twice.
_command_line: list[str] | None = None


def set_command_line(argv: list[str] | None) -> None:
    global _command_line
    _command_line = argv


def command_line() -> list[str] | None:
    """``sys.argv[1:]`` when the ``quadvault`` command runs as this process's program, else ``None``."""
    return _command_line


def long_job() -> None:
    """Called by the commands that run for long, once their libraries are imported: keeps what startup built
    out of the garbage collector's passes (``quadvault_dali._gc``). Library functions do not do this to the
    process that calls them; a command owns its process."""
    from quadvault_dali import _gc

    _gc.freeze_startup_objects()

device_option = click.option(
    "--device", type=click.Choice(["auto", "gpu", "cpu"]), default="auto", show_default=True,
    help="Where to decode and compute: gpu (DALI + NVDEC + CUDA), cpu (PyAV + PyTorch), auto = gpu when usable.")
sampling_option = click.option(
    "--sampling", "mode", type=click.Choice(["auto", "keyframe", "exact"]), default="auto", show_default=True,
    help="exact: the frame nearest each sampling time; keyframe: the nearest keyframe (reads and decodes far "
         "less; error up to half the keyframe interval); auto: keyframe when keyframes are at most 1.5 "
         "sampling intervals apart, else exact.")
fps_option = click.option("--fps", type=click.FloatRange(min=0.01, max=120), default=1.0, show_default=True,
                          help="Frames sampled per second of video.")


@contextmanager
def terminal_may_be_gone() -> Iterator[None]:
    """Skips the rest of a message the terminal can no longer take (EIO after a hangup, EPIPE)."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.EIO, errno.EPIPE):
            raise


def stop_word(by_signal: bool, seen: list[int]) -> str:
    """"Interrupted" (Ctrl-C) or "Stopped (SIGTERM)" / "Stopped (SIGHUP)", for ``stops_cleanly``'s messages."""
    from quadvault_dali._lifetime import signal_name

    return f"Stopped ({signal_name(seen[0])})" if by_signal and seen else "Interrupted"


def nothing_written(seen: list[int]) -> Callable[[bool], str]:
    """``stops_cleanly``'s message for a command that writes no file (``evaluate``, ``test-video``); ``seen`` is
    the list given to ``stops_cleanly`` too."""
    return lambda by_signal: f"{stop_word(by_signal, seen)}; nothing was written."


@contextmanager
def stops_cleanly(message: Callable[[bool], str | None], signals: tuple[int, ...] = (signal.SIGTERM,),
                  seen: list[int] | None = None) -> Iterator[None]:
    """Runs a long command's work with ``signals`` raising ``KeyboardInterrupt`` once (``stop_on_signals``: a
    scheduler's SIGTERM stops like Ctrl-C, so temporaries go). On an interrupt, prints ``message(by_sigterm)``
    and exits 128 + the signal (143 for SIGTERM, 129 for SIGHUP) or 130; a message of ``None`` lets the interrupt
    go on to click ("Aborted!"). ``seen`` receives the signals that came, for a message that names them."""
    from quadvault_dali.scan.parallel import stop_on_signals

    stopped_by: list[int] = seen if seen is not None else []
    previous = stop_on_signals(signals, seen=stopped_by)
    try:
        yield
    except KeyboardInterrupt:
        by_sigterm = bool(stopped_by) and stopped_by[0] != signal.SIGINT
        text = message(by_sigterm)
        if text is None:
            raise
        try:
            click.echo(text, err=True)
        except OSError:  # the terminal is gone (SIGHUP): the work is saved all the same
            pass
        sys.exit(128 + stopped_by[0] if stopped_by else 130)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
