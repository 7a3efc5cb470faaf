"""``quadvault train``: fine-tune the highlight classifier on a prepared dataset."""

from __future__ import annotations

import os
from pathlib import Path

import click

from quadvault_dali._lifetime import STOP_SIGNALS

from ._options import device_option, long_job, stop_word, stops_cleanly


@click.command()
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("--output-dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Model directory to write (model.safetensors + model.json + training_history.json).")
@click.option("--epochs", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=2), default=32, show_default=True,
              help="Images per step (per GPU with --multi-gpu).")
@click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), default=1e-4, show_default=True,
              help="AdamW learning rate of the backbone; the new head learns 10x faster.")
@click.option("--image-size", type=click.IntRange(min=32, max=1024), default=224, show_default=True,
              help="Square input size in pixels.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for weights, shuffling, augmentation.")
@device_option
@click.option("--patience", type=click.IntRange(min=1), default=10, show_default=True,
              help="Stop after this many epochs without a better epoch: higher video-level validation balanced "
                   "accuracy (the mean of the two classes' recalls), or the same with a higher ROC-AUC, or both the "
                   "same with a lower validation loss (a model at 100 % goes on while its loss falls).")
@click.option("--freeze-backbone-epochs", type=click.IntRange(min=0), default=0, show_default=True,
              help="Train only the new head for the first N epochs.")
@click.option("--multi-gpu", is_flag=True,
              help="DistributedDataParallel on every visible GPU (spawned here, or run under torchrun).")
@click.option("--backbone", type=click.Choice(["resnet18", "efficientnet-lite0"]), default=None,
              help="Default: resnet18 when its ImageNet weights can be had, else efficientnet-lite0 "
                   "(weights ship with the package, no network needed).")
@click.option("--loader-threads", type=click.IntRange(min=1), default=None,
              help="CPU threads of the DALI loader per GPU (file reads, JPEG entropy decoding). "
                   "Default: this process's share of the cores, 2 to 16.")
@click.option("--overwrite", is_flag=True, help="Replace a model already in --output-dir.")
@click.option("--resume", is_flag=True,
              help="Continue the run that was interrupted in --output-dir after its last finished epoch "
                   "(saved after every epoch; give the same options).")
@click.option("--pretrained", default="auto", show_default=True, metavar="auto|none|PATH",
              help="auto = the backbone's ImageNet weights; none = train from scratch; PATH = a weights "
                   "file (.pth or .safetensors), e.g. resnet18-f37072fd.pth for offline machines, or a "
                   "QuadVault model folder (another pilot's model, fine-tuned on your labels, head included).")
def train(dataset: Path, output_dir: Path, epochs: int, batch_size: int, learning_rate: float, image_size: int,
          seed: int, device: str, patience: int, freeze_backbone_epochs: int, multi_gpu: bool,
          backbone: str | None, loader_threads: int | None, overwrite: bool, resume: bool, pretrained: str) -> None:
    """Fine-tune an ImageNet backbone on DATASET (the prepare-dataset folder or its dataset.parquet).

    JPEG frames are decoded and augmented by a DALI pipeline (on the GPU when there is one), the best
    epoch by video-level validation balanced accuracy is kept, and its threshold (tuned the same way, so
    rare highlights are not traded for the common class) goes into the model card.

    \b
    Examples:
      quadvault train data/ --output-dir model/
      quadvault train data/dataset.parquet --output-dir model/ --epochs 20 --batch-size 64 \\
          --backbone efficientnet-lite0 --freeze-backbone-epochs 2
      torchrun --nproc-per-node 4 -m quadvault_dali.cli.main train data/ --output-dir model/ --multi-gpu
      quadvault train data/ --output-dir model/ --resume     # after Ctrl-C or a reboot, same options
    """
    from quadvault_dali.errors import OutputError, QuadvaultError
    from quadvault_dali.model import CARD_FILE
    from quadvault_dali.progress import is_quiet
    from quadvault_dali.training import TrainConfig, train_model
    from quadvault_dali.training._resume import STATE_FILE, describe_state

    if resume and overwrite:
        raise QuadvaultError("--resume continues the run in --output-dir and --overwrite starts a new one: "
                             "give one of them")
    if not overwrite and not resume:
        interrupted = describe_state(output_dir)  # also where killed before its first model was saved
        if interrupted or (output_dir / STATE_FILE).exists():
            raise OutputError(f"an interrupted training run is here (stopped after {interrupted or 'an epoch'})",
                              path=output_dir, hint="--resume to continue it with the same options, "
                                                    "or --overwrite to start again")
        if (output_dir / CARD_FILE).exists():
            raise OutputError("a model is already here; training would replace it", path=output_dir,
                              hint="use another --output-dir, or --overwrite to replace it")
    config = TrainConfig(dataset, output_dir, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                         image_size=image_size, seed=seed, device=device, patience=patience,
                         freeze_backbone_epochs=freeze_backbone_epochs, multi_gpu=multi_gpu, backbone=backbone,
                         pretrained=pretrained, num_threads=loader_threads, resume=resume)
    quiet = is_quiet()
    long_job()

    seen: list[int] = []

    def stopped(by_signal: bool) -> str:
        state = describe_state(output_dir)
        again = (f"run the same command with --resume to continue after {state}" if state
                 else "no epoch had finished; nothing to resume")
        return f"{stop_word(by_signal, seen)}; {again}."

    with stops_cleanly(stopped, STOP_SIGNALS, seen=seen):
        result = train_model(config, (lambda line: None) if quiet else click.echo)
    if quiet and int(os.environ.get("RANK", "0")) == 0:  # -q: the one line that says where the model went
        best = result.history[result.best_epoch - 1].video if result.best_epoch else {}
        balanced = f"balanced accuracy {100 * best['balanced_accuracy']:.1f}%, " if "balanced_accuracy" in best else ""
        click.echo(f"Model saved to: {result.model_dir} (video-level val {balanced}accuracy "
                   f"{100 * result.best_video_accuracy:.1f}%, epoch {result.best_epoch})")
