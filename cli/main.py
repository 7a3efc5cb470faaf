"""The ``quadvault`` group: global options, logging, and lazily loaded commands (fast ``--help``)."""

from __future__ import annotations

import errno
import importlib
import logging
import os
import sys

import click

from quadvault_dali import __version__
from quadvault_dali.cli._options import set_command_line
from quadvault_dali.errors import QuadvaultError
from quadvault_dali.progress import set_quiet

#: command name -> (module in quadvault_dali.cli, attribute)
COMMANDS: dict[str, tuple[str, str]] = {
    "probe": ("probe", "probe"),
    "sample": ("sample", "sample"),
    "prepare-dataset": ("prepare_dataset", "prepare_dataset"),
    "train": ("train", "train"),
    "test-video": ("test_video", "test_video"),
    "evaluate": ("evaluate", "evaluate"),
    "scan": ("scan", "scan"),
    "batch-classify": ("scan", "batch_classify"),
    "reel": ("reel", "reel"),
    "demo": ("demo", "demo"),
}


class LazyGroup(click.Group):
    """Imports a command's module only when that command runs, so torch loads only where needed."""

    def main(self, args: list[str] | None = None, *rest: object, **kwargs: object) -> object:  # type: ignore[override]
        if args is None:
            _ensure_utf8_mode()
        set_command_line(list(sys.argv[1:]) if args is None else None)
        try:
            return super().main(args, *rest, **kwargs)  # type: ignore[arg-type]
        finally:
            _flush_or_forget()

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module_name, attr = COMMANDS[name]
        module = importlib.import_module(f"quadvault_dali.cli.{module_name}")
        command = getattr(module, attr)
        _accept_log_options(command)
        return command

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except QuadvaultError as exc:
            if os.environ.get("QUADVAULT_DEBUG"):
                raise
            logging.getLogger("quadvault_dali").debug("error detail", exc_info=True)
            click.secho(f"Error: {exc}", fg="red", err=True)
            sys.exit(1)
        except BrokenPipeError:  # `quadvault ... | head`: the reader has what it wanted; stop quietly as cat does
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit would fail
            except (OSError, ValueError):  # no file descriptor behind stdout (a test runner's capture)
                pass
            sys.exit(141)  # 128 + SIGPIPE, what a shell reports for a writer its pipe closed on
        except OSError as exc:  # a file system failure no step anticipated (a full or read-only disk): one line
            if os.environ.get("QUADVAULT_DEBUG"):
                raise
            logging.getLogger("quadvault_dali").debug("error detail", exc_info=True)
            click.secho(f"Error: {os_error_line(exc)}", fg="red", err=True)
            sys.exit(1)


def _flush_or_forget() -> None:
    """Flushes stdout and stderr; one whose reader is gone (``| head``, a dropped ssh session) is pointed at
    /dev/null, so that Python's flush at exit cannot turn the command's status into 120."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
            except (OSError, ValueError):
                pass


def _ensure_utf8_mode() -> None:
    """Runs the command again in Python's UTF-8 mode when the locale is not UTF-8 (``LANG=de_DE`` = ISO-8859-1,
    ``PYTHONUTF8=0``): file names are then decoded in the locale's encoding, so UTF-8 names were skipped as
    "not valid UTF-8" (ASCII) or stored double-encoded in Parquet (Latin-1), and the summary's dash crashed."""
    if sys.flags.utf8_mode or sys.getfilesystemencoding().lower().replace("-", "") == "utf8":
        return
    if os.environ.get("_QUADVAULT_UTF8_REEXEC"):  # could not switch: go on as before
        return
    env = {**os.environ, "PYTHONUTF8": "1", "_QUADVAULT_UTF8_REEXEC": "1"}
    argv = getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]
    try:
        os.execve(sys.executable, [sys.executable, "-X", "utf8", *argv[1:]], env)
    except OSError:
        return


def os_error_line(exc: OSError) -> str:
    """``path: reason (hint)`` for an operating-system error."""
    where = f"{exc.filename}: " if exc.filename else ""
    hint = (" (free space on that disk, or write somewhere else)" if exc.errno in (errno.ENOSPC, errno.EDQUOT)
            else " (check that the folder exists and can be written)"
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR) else "")
    return f"{where}{exc.strerror or exc}{hint}"


def _accept_log_options(command: click.Command) -> None:
    """``-v``/``-q`` after the command's name as well as before it: ``quadvault scan -q ...`` was refused with "No
    such option: -q" and exit status 2, which an overnight script reads as a failed scan (a README review's find)."""
    if any(param.name == "quiet_here" for param in command.params):
        return
    command.params += [
        click.Option(["-v", "--verbose", "verbose_here"], count=True, expose_value=False, hidden=True,
                     callback=_log_level_here),
        click.Option(["-q", "--quiet", "quiet_here"], is_flag=True, expose_value=False, hidden=True,
                     callback=_log_level_here)]


def _log_level_here(ctx: click.Context, param: click.Parameter, value: object) -> None:
    """Sets the log level again with the command's own -v/-q added to the ones before it."""
    if not value:
        return
    ctx.meta[param.name] = value
    before = ctx.parent.params if ctx.parent is not None else {}
    configure_logging(int(before.get("verbose") or 0) + int(ctx.meta.get("verbose_here") or 0),
                      bool(before.get("quiet")) or bool(ctx.meta.get("quiet_here")))


class _CliFormatter(logging.Formatter):
    """Plain messages for information, a level prefix for what needs attention, names under -vv."""

    def __init__(self, debug: bool) -> None:
        super().__init__()
        self.debug = debug

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info and self.debug:
            message += "\n" + self.formatException(record.exc_info)
        if self.debug:
            return f"{record.levelname} {record.name}: {message}"
        return message if record.levelno == logging.INFO else f"{record.levelname}: {message}"


def configure_logging(verbose: int, quiet: bool) -> None:
    """-q: warnings only; default: our INFO lines; -v: also other libraries' INFO; -vv: debug with names."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_CliFormatter(debug=verbose > 1))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.getLogger("quadvault_dali").setLevel(logging.DEBUG if verbose > 1 else logging.INFO if not quiet else logging.WARNING)
    logging.getLogger("libav").setLevel(logging.ERROR)
    set_quiet(quiet)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="quadvault")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors; no progress bars.")
def main(verbose: int, quiet: bool) -> None:
    """QuadVault DALI: find the highlights in a huge drone-footage library.

    \b
    Typical flow:
      quadvault demo                          # the whole flow on generated sample footage
      quadvault prepare-dataset labels.json data/
      quadvault train data/dataset.parquet --output-dir model/
      quadvault scan /footage --model model/ --out scan/
      quadvault reel scan/ best.mp4
    """
    configure_logging(verbose, quiet)


if __name__ == "__main__":  # pragma: no cover
    main()
