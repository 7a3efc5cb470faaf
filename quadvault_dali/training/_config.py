"""What a training run is asked to do, what it produced, and which backbone it gets."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import QuadvaultError
from ..model import BACKBONES, OFFLINE_BACKBONE, read_card, resnet18_weights_available
from ..model._network import model_folder

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Options of ``quadvault train``; defaults follow the issue (and the guide users know)."""

    dataset: Path
    output_dir: Path
    epochs: int = 50
    batch_size: int = 32
    learning_rate: float = 1e-4
    weight_decay: float = 1e-4
    head_lr_multiplier: float = 10.0  # a fresh head learns faster than ImageNet features should move
    warmup_epochs: float = 1.0
    image_size: int = 224
    seed: int = 0
    device: str = "auto"
    patience: int = 10
    freeze_backbone_epochs: int = 0
    multi_gpu: bool = False
    backbone: str | None = None  # None: resnet18 when its weights can be had, else efficientnet-lite0
    pretrained: str = "auto"  # auto | none | PATH
    num_threads: int | None = None  # DALI loader CPU threads per GPU; None: ``loader_threads`` decides
    resume: bool = False  # continue the interrupted run saved in ``output_dir`` (``_resume``)

    def __post_init__(self) -> None:
        self.dataset, self.output_dir = Path(self.dataset), Path(self.output_dir)
        checks = [(self.epochs >= 1, "--epochs must be at least 1"),
                  (self.batch_size >= 2, "--batch-size must be at least 2 (BatchNorm needs 2 images)"),
                  (self.learning_rate > 0, "--learning-rate must be positive"),
                  (32 <= self.image_size <= 1024, "--image-size must be between 32 and 1024"),
                  (self.patience >= 1, "--patience must be at least 1"),
                  (self.freeze_backbone_epochs >= 0, "--freeze-backbone-epochs must be >= 0"),
                  (self.num_threads is None or self.num_threads >= 1, "--loader-threads must be at least 1")]
        for ok, message in checks:
            if not ok:
                raise QuadvaultError(message)
        if self.backbone is not None and self.backbone not in BACKBONES:
            raise QuadvaultError(f"unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}")


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    frame: dict[str, Any]
    video: dict[str, Any]
    threshold: float
    seconds: float
    images_per_s: float


@dataclass
class TrainResult:
    model_dir: Path
    architecture: str
    best_epoch: int
    best_video_accuracy: float
    threshold: float
    history: list[EpochRecord] = field(default_factory=list)
    stopped_early: bool = False
    skipped_frames: list[tuple[str, str]] = field(default_factory=list)
    #: the best model's metrics on the held-out test split (``_loop._measure_test``); None without one
    test: dict | None = None


def resolve_backbone(backbone: str | None, pretrained: str) -> tuple[str, str | None]:
    """(architecture, note for the user or None). The default prefers resnet18 when it can be had."""
    if backbone is not None:
        return backbone, None
    folder = model_folder(pretrained)
    if folder is not None:  # fine-tuning a shared model: its own architecture
        try:
            return str(read_card(folder)["architecture"]), None
        except (QuadvaultError, OSError):
            return "resnet18", None  # load_model names what is wrong with the card
    if pretrained != "auto" or resnet18_weights_available():
        return "resnet18", None
    return OFFLINE_BACKBONE, (f"ResNet18 ImageNet weights cannot be downloaded; using {OFFLINE_BACKBONE} "
                              "(weights ship with the package). Give --pretrained PATH to train ResNet18.")


def pretrained_label(pretrained: str) -> str:
    """How a model card and a training state name ``--pretrained``: ``auto`` and ``none`` as they are, a weights
    file by its name and content (``effnet.pth sha256:1f2e...``), never its absolute path: a shared card showed
    the trainer's home folder, and a run could not be resumed on another machine with the same file elsewhere."""
    if pretrained in ("auto", "none"):
        return pretrained
    path = Path(pretrained).expanduser()
    folder = model_folder(pretrained)
    if folder is not None:  # a QuadVault model: its card names its weights' content
        try:
            digest = str(read_card(folder)["weights_sha256"])
        except (QuadvaultError, OSError):
            return f"{folder.name} (model)"
        return f"{folder.name} (model, weights sha256:{digest[:16]})"
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError:
        return path.name
    return f"{path.name} sha256:{digest}"


#: Upper bound of the automatic loader threads: past it DALI's CPU stage (file reads, the Huffman part of
#: nvJPEG's hybrid decode for frames this small) gains little and the threads only contend.
MAX_LOADER_THREADS = 16


def loader_threads(requested: int | None, ranks_on_this_machine: int = 1) -> int:
    """DALI loader threads per process: ``requested``, or this process's share of the usable cores
    (at least 2, at most ``MAX_LOADER_THREADS``). Two threads, the old fixed value, fed a fraction of what
    the H200 trains at: the benchmark measured its 11,000 images/s with 16."""
    if requested is not None:
        return requested
    try:
        cores = len(os.sched_getaffinity(0))  # what this process may run on (containers, taskset)
    except (AttributeError, OSError):
        cores = os.cpu_count() or 2
    return max(2, min(MAX_LOADER_THREADS, cores // max(1, ranks_on_this_machine)))
