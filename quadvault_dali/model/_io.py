"""The model file format: ``DIR/model.safetensors`` (weights) + ``DIR/model.json`` (the card).

Safetensors holds only tensors, so loading someone's shared model can never run code (a pickled
``.pth`` can). The card says how to rebuild and feed the network, what it scored on validation and
what it was trained on; it records the weights' sha256 so a mixed-up or half-written pair is detected.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import platform
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._files import atomic_path, file_sha256
from ..errors import BackendUnavailableError, ModelFormatError
from ._network import HighlightNet, build_network, spec_for
from ._scorer import HighlightModel

log = logging.getLogger(__name__)

FORMAT_NAME = "quadvault-highlight-model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model.json"
CLASSES = ["normal", "highlight"]


def library_versions() -> dict[str, str]:
    """Versions that affect what the weights mean, recorded in every card."""
    import numpy
    import torchvision

    from .. import __version__

    versions = {"quadvault_dali": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
                "numpy": numpy.__version__, "python": platform.python_version()}
    try:
        import nvidia.dali as dali

        versions["nvidia_dali"] = dali.__version__
    except ImportError:
        pass
    return versions


def _unwrap(module: nn.Module) -> nn.Module:
    return getattr(module, "module", module)  # DistributedDataParallel / DataParallel


def save_model(directory: str | Path, module: nn.Module, card: dict[str, Any]) -> Path:
    """Writes weights then card, each under a temporary name renamed into place; returns the directory.

    ``card`` needs ``architecture`` and ``image_size``; format, classes, normalisation, versions, date and
    the weights' sha256 are filled in.
    """
    from safetensors.torch import save_file

    net = _unwrap(module)
    if "architecture" not in card or "image_size" not in card:
        raise ValueError("card needs 'architecture' and 'image_size'")
    spec = spec_for(str(card["architecture"]))
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in net.state_dict().items()}
    weights = directory / WEIGHTS_FILE
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION),
                                             "architecture": str(card["architecture"])})
    full = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "classes": CLASSES,
            "mean": list(spec.mean), "std": list(spec.std), "threshold": 0.5, "metrics": {},
            "library_versions": library_versions(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    full.update(card)
    full.update({"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "weights_file": WEIGHTS_FILE,
                 "weights_sha256": file_sha256(weights)})
    text = json.dumps(full, indent=2, sort_keys=True, default=float)
    with atomic_path(directory / CARD_FILE) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    log.debug("saved model to %s", directory)
    return directory


def _locate(path: Path) -> tuple[Path, Path]:
    """(card, weights) for a model directory, its model.json, or its model.safetensors."""
    if not path.exists():
        raise ModelFormatError("model not found", path=path, hint="give the directory written by quadvault train")
    if path.is_dir():
        card = path / CARD_FILE
        if not card.is_file():
            raise ModelFormatError(f"is not a model directory: {CARD_FILE} (the model card) is missing",
                                   path=path, hint="give the directory written by quadvault train")
        return card, path / WEIGHTS_FILE
    if path.suffix == ".json":
        return path, path.parent / WEIGHTS_FILE
    card = path.with_name(CARD_FILE)
    if not card.is_file():
        card = path.with_suffix(".json")
    if not card.is_file():
        raise ModelFormatError(f"has no model card next to it ({CARD_FILE} is missing)", path=path)
    return card, path


def read_card(path: str | Path) -> dict[str, Any]:
    """The validated model card of a model directory or file."""
    card_path, _ = _locate(Path(path))
    return _read_card(card_path)


def _read_card(card_path: Path) -> dict[str, Any]:
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"is not a model card (not JSON: {exc})", path=card_path) from None
    if not isinstance(card, dict) or card.get("format") != FORMAT_NAME:
        found = card.get("format") if isinstance(card, dict) else type(card).__name__
        raise ModelFormatError(f"is not a QuadVault model card (format {found!r}, expected {FORMAT_NAME!r})",
                               path=card_path)
    version = card.get("format_version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise ModelFormatError(
            f"model format version {version!r} is not supported (this QuadVault reads version {FORMAT_VERSION})",
            path=card_path, hint="upgrade quadvault-dali" if newer else "retrain the model with this version")
    for key in ("architecture", "image_size", "mean", "std"):
        if key not in card:
            raise ModelFormatError(f"model card lacks {key!r}", path=card_path)
    spec_for(str(card["architecture"]))
    return card


def _torch_device(device: str | torch.device) -> torch.device:
    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device("cuda" if device == "gpu" else device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError(f"model device {device!r} asked for, but no CUDA device is visible",
                                      hint="use device='cpu'")
    return dev


def load_model(path: str | Path, device: str | torch.device = "cpu") -> HighlightModel:
    """Loads a model directory (or its ``model.json`` / ``model.safetensors``) without unpickling."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    card_path, weights = _locate(Path(path))
    card = _read_card(card_path)
    if not weights.is_file():
        raise ModelFormatError("weights file is missing", path=weights, hint=f"the card {card_path} names it")
    digest = file_sha256(weights)
    expected = card.get("weights_sha256")
    if expected and expected != digest:
        raise ModelFormatError("weights do not match their model card (sha256 differs): the pair was mixed up "
                               "or half-written", path=weights)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFormatError(f"is not a safetensors weights file ({exc})", path=weights) from None
    net: HighlightNet = build_network(str(card["architecture"]), image_size=int(card["image_size"]),
                                      pretrained="none")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:2]
        raise ModelFormatError(f"weights do not fit a {card['architecture']} network: {' '.join(first)}",
                               path=weights) from None
    root = card_path.parent
    name = str(card.get("name") or root.name or card_path.stem)
    return HighlightModel(net, card, fingerprint=digest[:16], device=_torch_device(device), name=name)
