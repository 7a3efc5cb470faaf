"""``quadvault demo``: the whole flow on generated sample footage."""

from __future__ import annotations

from pathlib import Path

import click

from quadvault_dali.demo import run_demo

from ._options import device_option, long_job


@click.command()
@click.argument("folder", required=False, default="quadvault-demo", type=click.Path(path_type=Path, file_okay=False))
@click.option("--epochs", type=click.IntRange(1, 100), default=4, show_default=True, help="Training epochs.")
@device_option
def demo(folder: Path, epochs: int, device: str) -> None:
    """Build a sample library, label it, train, scan and cut a reel, all in FOLDER.

    No footage needed: the clips are generated (two visibly different styles, plus broken files).
    Runs on the GPU where there is one, else on the CPU (one to two minutes on a laptop CPU).

    \b
    Example:
      quadvault demo                 # into ./quadvault-demo
      quadvault demo /tmp/qv --epochs 2
    """
    long_job()
    run_demo(folder, device=device, epochs=epochs, report=click.echo)
