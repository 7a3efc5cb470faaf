"""Where an interrupted training run stands, saved after every epoch so ``train --resume`` continues it.

On a CPU an epoch of a few hundred clips takes many minutes, and a run of 50 epochs hours: Ctrl-C, a
reboot or a full disk used to keep only the best model so far, and starting again lost every epoch. The
state is one safetensors file (no pickle: model folders are shared between users) in the model folder,
replaced atomically at each epoch's end and removed when the run finishes:

* tensors: the network as it is now (not the best epoch's), every optimizer tensor (AdamW's moments and
  step counts), PyTorch's random generator states;
* metadata ``state``: JSON with the epochs done, the early-stopping counters, the best epoch so far, the
  history, the optimizer's hyper-parameters, the schedule's position and numpy's generator, the run's
  settings, which a resumed run must repeat (another learning rate or dataset would be another run), and
  the training loader's DALI checkpoint (reader order and position, augmentation generators).

On one GPU or the CPU a resumed run is the run it would have been: the same batches, augmentations and final
weights. With several GPUs only rank 0's loader is saved, so the resumed epochs draw an order of their own
(seeded from the epoch they start at), as did states saved before the loader's checkpoint was kept.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._files import atomic_path, default_file_mode
from ..errors import OutputError
from ..model._io import TRAINING_STATE_FILE
from ._config import EpochRecord, TrainConfig, pretrained_label

log = logging.getLogger(__name__)

STATE_FILE = TRAINING_STATE_FILE  # the model folder's layout: load_model warns while it is there
STATE_FORMAT = "quadvault-training-state"
STATE_VERSION = 1
#: The settings a resumed run must share with the interrupted one, with the option that sets each.
RESUMED_SETTINGS = {"dataset_fingerprint": "the dataset's frames, labels or split (prepare-dataset ran again?)",
                    "dataset_settings": "the dataset's prepare-dataset settings", "architecture": "--backbone", "image_size": "--image-size",
                    "batch_size": "--batch-size", "learning_rate": "--learning-rate", "epochs": "--epochs",
                    "seed": "--seed", "freeze_backbone_epochs": "--freeze-backbone-epochs",
                    "pretrained": "--pretrained", "weight_decay": "weight decay", "world": "the number of GPUs",
                    "loss_weighting": "the loss weighting (a version since weights frames by their video's length: "
                                      "--overwrite starts the run again with it)"}
#: How frames weigh in the loss (``_data.video_balance_weights``); a run saved under another resumes no further
LOSS_WEIGHTING = "1/sqrt(frames of the video), classes balanced by weight"


class TrainingStateError(OutputError):
    """The model folder's saved training state cannot be resumed (missing, damaged, another run's)."""


@dataclass
class RunPosition:
    """Where the run stands after ``epoch`` epochs: what the loop needs besides the tensors."""

    epoch: int = 0
    best_key: tuple[float, float, float] | None = None
    since_best: int = 0
    best_epoch: int = 0
    best_video_accuracy: float = -1.0
    threshold: float = 0.5
    history: list[EpochRecord] = field(default_factory=list)
    stopped_early: bool = False  # killed after its last epoch, before the state was removed
    run_id: str = ""  # in the model card too: whose best model the folder holds


def run_settings(config: TrainConfig, architecture: str, dataset_fingerprint: str, world: int,
                 dataset_settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """What makes a run this run (``RESUMED_SETTINGS``); the device and loader threads may change.
    ``dataset_settings``: prepare-dataset's (frame size, fps, mode, quality): the fingerprint names the frames,
    not their pixels, and ``--overwrite --size 48`` rewrites the same names."""
    return {"dataset_fingerprint": dataset_fingerprint,
            "dataset_settings": {k: v for k, v in (dataset_settings or {}).items() if k != "format_version"},
            "architecture": architecture,
            "image_size": config.image_size, "batch_size": config.batch_size,
            "learning_rate": config.learning_rate, "epochs": config.epochs, "seed": config.seed,
            "freeze_backbone_epochs": config.freeze_backbone_epochs, "pretrained": pretrained_label(str(config.pretrained)),
            "weight_decay": config.weight_decay, "world": world, "loss_weighting": LOSS_WEIGHTING}


def resume_seed(seed: int, epochs_done: int) -> int:
    """The data loaders' seed for a run resumed after ``epochs_done`` epochs without the loader's checkpoint
    (several GPUs, or a state from before it was kept): its own order, not epoch 1's again; the seed itself
    for a run from the start."""
    return seed if epochs_done == 0 else (seed + 1_000_003 * epochs_done) % (2 ** 31)


def save_state(directory: Path, net: nn.Module, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, settings: dict[str, Any],
               position: RunPosition, loader_checkpoint: bytes | None = None, loader_seed: int | None = None) -> None:
    """Replaces the folder's state with this epoch's, in one rename (a kill leaves the previous epoch's).
    ``loader_checkpoint``: the training loader's (``DaliFrameLoader.checkpoint``), so a resumed run sees the
    frames in the order and with the augmentations this one would have; ``loader_seed``: the seed that loader was
    built with (its file order comes from it, so the checkpoint restores only into a loader built alike)."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().to("cpu").contiguous().clone() for k, v in net.state_dict().items()}
    optim = optimizer.state_dict()
    optim_values: dict[str, dict[str, Any]] = {}
    for param, values in optim["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{param}.{key}"] = value.detach().to("cpu").contiguous().clone()
            else:
                optim_values.setdefault(str(param), {})[key] = value
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    bit_generator = np.random.get_state(legacy=False)
    meta = {"format": STATE_FORMAT, "format_version": STATE_VERSION, "settings": settings,
            "position": {**asdict(position), "best_key": list(position.best_key) if position.best_key else None},
            "optimizer": {"param_groups": optim["param_groups"], "values": optim_values},
            "scheduler": scheduler.state_dict(),
            "numpy_rng": {k: v for k, v in bit_generator.items() if k != "state"},
            "numpy_rng_state": {k: int(v) for k, v in bit_generator["state"].items() if k != "key"},
            "loader_checkpoint": base64.b64encode(loader_checkpoint).decode("ascii") if loader_checkpoint else None,
            "loader_seed": loader_seed}
    tensors["rng.numpy.key"] = torch.from_numpy(bit_generator["state"]["key"].astype(np.int64))
    meta["tensors_sha256"] = _tensors_digest(tensors)
    with atomic_path(directory / STATE_FILE) as tmp:
        try:
            save_file(tensors, str(tmp), metadata={"state": json.dumps(meta, default=float)})
        except Exception as exc:  # safetensors reports a full disk as its own SafetensorError
            raise OutputError(f"cannot save the training state ({exc})", path=directory / STATE_FILE) from exc
        os.chmod(tmp, default_file_mode())


def _tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of every tensor's name and bytes: safetensors checks the header, not the data (a state with 5 MB
    zeroed in its middle resumed, and every later epoch scored 50 %). ~0.1 s for ResNet18's 134 MB."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].detach().contiguous().reshape(-1).view(torch.uint8).numpy())  # no copy
    return digest.hexdigest()


def describe_state(directory: Path) -> str | None:
    """"epoch 7 of 50" for a folder holding a state, else ``None`` (none, or unreadable). From its header only:
    the CLI asks before every run and after Ctrl-C, and reading and hashing the tensors cost 0.2 s of 134 MB."""
    with contextlib.suppress(TrainingStateError):
        meta = _read_meta(directory / STATE_FILE)
        return f"epoch {meta['position']['epoch']} of {meta['settings']['epochs']}"
    return None


def remove_state(directory: Path) -> None:
    """The finished (or restarted) run's state goes: it holds the network and optimizer, ~3x the model."""
    with contextlib.suppress(FileNotFoundError):
        (directory / STATE_FILE).unlink()


@dataclass
class SavedState:
    """A model folder's saved state, read and checked against the new run's settings (``load_saved``)."""

    path: Path
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]

    @property
    def epochs_done(self) -> int:
        return int(self.meta["position"]["epoch"])

    @property
    def loader_seed(self) -> int | None:
        """The seed the saved loader was built with (``None`` in states from before it was kept)."""
        seed = self.meta.get("loader_seed")
        return seed if isinstance(seed, int) else None

    @property
    def loader_checkpoint(self) -> bytes | None:
        """The training loader's checkpoint (``None`` in states from before it was kept, or from several GPUs)."""
        saved = self.meta.get("loader_checkpoint")
        try:
            return base64.b64decode(saved, validate=True) if isinstance(saved, str) and saved else None
        except ValueError:
            return None


def load_saved(directory: Path, settings: dict[str, Any]) -> SavedState:
    """The folder's saved state, if it belongs to a run with these ``settings``; else ``TrainingStateError``
    saying why not (none, damaged, or which options differ)."""
    tensors, meta = _read(directory)
    path = directory / STATE_FILE
    then = meta["settings"].get("pretrained")
    if isinstance(then, str):  # a state from before stop 30 held the path; a label names itself
        meta["settings"]["pretrained"] = pretrained_label(then)
    differ = [k for k, v in settings.items() if meta["settings"].get(k) != v]
    if {"dataset_fingerprint", "dataset_settings"} & set(differ):
        raise TrainingStateError("the dataset changed since the interrupted run started: "
                                 + "; ".join(RESUMED_SETTINGS[k] for k in differ if k.startswith("dataset")),
                                 path=path, hint="a run resumes on the dataset it started on; --overwrite to "
                                                 "train a new model on this one")
    if differ:
        raise TrainingStateError("the interrupted run had other settings: " + "; ".join(
            f"{RESUMED_SETTINGS.get(k, k)} ({meta['settings'].get(k)!r} then, {settings[k]!r} now)" for k in differ),
            path=path, hint="repeat the interrupted run's options, or --overwrite to start a new run")
    return SavedState(path, tensors, meta)


def restore(saved: SavedState, net: nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: torch.optim.lr_scheduler.LRScheduler) -> RunPosition:
    """Loads ``saved`` into ``net``, ``optimizer``, ``scheduler`` and the random generators; returns where the
    run stands."""
    tensors, meta = saved.tensors, saved.meta
    try:
        net.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, param, name = key.split(".", 2)
                state.setdefault(int(param), {})[name] = value
        for param, values in meta["optimizer"]["values"].items():
            state.setdefault(int(param), {}).update(values)
        optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
        scheduler.load_state_dict(meta["scheduler"])
        torch.set_rng_state(tensors["rng.torch"])
        cuda_states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
        if cuda_states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda_states[:torch.cuda.device_count()])
        key = tensors["rng.numpy.key"].numpy().astype(np.uint32)
        np.random.set_state({**meta["numpy_rng"], "state": {**meta["numpy_rng_state"], "key": key}})
        pos = dict(meta["position"])
        pos["best_key"] = tuple(pos["best_key"]) if pos["best_key"] else None
        pos["history"] = [EpochRecord(**record) for record in pos["history"]]
        return RunPosition(**pos)
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise TrainingStateError(f"the saved training state does not fit this run ({exc})", path=saved.path,
                                 hint="--overwrite to start a new run") from exc


def _read(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state's tensors, checked against their checksum, and its metadata."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = directory / STATE_FILE
    if not path.is_file():
        raise TrainingStateError("nothing to resume: no interrupted run's training state here", path=directory,
                                 hint="a run saves it after each epoch and removes it when it finishes; "
                                      "train without --resume to start one")
    meta = _read_meta(path)
    try:
        tensors = load_file(str(path))
        if meta.get("tensors_sha256") != _tensors_digest(tensors):
            raise ValueError("its tensors do not match their checksum: the file is damaged")
    except (SafetensorError, OSError, ValueError) as exc:
        raise _unreadable(path, exc) from exc
    return tensors, meta


def _read_meta(path: Path) -> dict[str, Any]:
    """The state's JSON metadata, from the file's header (no tensor is read), with its format checked."""
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            header = handle.metadata() or {}
        meta = json.loads(header.get("state", "null"))
        if not isinstance(meta, dict) or meta.get("format") != STATE_FORMAT:
            raise ValueError("not a QuadVault training state")
        if meta.get("format_version") != STATE_VERSION:
            raise ValueError(f"format version {meta.get('format_version')!r}, this version reads {STATE_VERSION}")
    except (SafetensorError, OSError, ValueError) as exc:
        raise _unreadable(path, exc) from exc
    return meta


def _unreadable(path: Path, exc: Exception) -> TrainingStateError:
    return TrainingStateError(f"the saved training state cannot be read ({exc})", path=path,
                              hint="--overwrite to start a new run (the best model so far is kept until the new "
                                   "run's first epoch)")
