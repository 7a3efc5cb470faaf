"""Scoring frames with a trained model, or an ensemble of models, on any device.

The model resizes and normalises its input itself, so callers (test-video, scan, evaluate) hand it the
sampler's uint8 frames at whatever size they come and cannot get the preprocessing wrong.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from typing import Any, Iterable, Protocol, Sequence

import torch
import torch.nn.functional as F

from .._geometry import centre_offset
from ._inference import cpu_inference_network
from ._network import HighlightNet

log = logging.getLogger(__name__)

#: The decision threshold of a card that has none (cards written by ``save_model`` always have one).
DEFAULT_THRESHOLD = 0.5
#: Frames per forward pass on the CPU, whatever batch the caller gives: 16 frames' activations stay in the caches
#: (EfficientNet-Lite0, 2-core Xeon: 8.9 ms/frame in chunks of 16 against 13.3 in chunks of 128)
CPU_CHUNK_FRAMES = 16


def decision_threshold(card: dict[str, Any]) -> float:
    """A model's highlight threshold: the one training chose on validation videos, kept in its card."""
    return float(card.get("threshold", DEFAULT_THRESHOLD))


def mean_threshold(thresholds: Iterable[float]) -> float:
    """The threshold of models averaged into one score (an ensemble): the mean of theirs, so every command
    (test-video, evaluate, scan) calls the same videos highlights."""
    values = [float(t) for t in thresholds]
    if not values:
        raise ValueError("no thresholds to average")
    return sum(values) / len(values)


def preprocess_frames(frames: torch.Tensor, image_size: int, mean: Sequence[float], std: Sequence[float],
                      device: torch.device | None = None) -> torch.Tensor:
    """uint8 (N,3,H,W) RGB -> normalised float (N,3,S,S): short side to S, then the centre S x S."""
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be (N,3,H,W) RGB, got shape {tuple(frames.shape)}")
    if frames.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 RGB (0-255), got {frames.dtype}")
    x = frames.to(device if device is not None else frames.device, non_blocking=True).float()
    h, w = x.shape[-2:]
    scale = image_size / min(h, w)
    new_h, new_w = max(image_size, round(h * scale)), max(image_size, round(w * scale))
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    top, left = centre_offset(new_h, image_size), centre_offset(new_w, image_size)
    x = x[:, :, top:top + image_size, left:left + image_size]
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1) * 255.0
    return (x - m) / s


class FrameScorer(Protocol):
    """What test-video, evaluate and scan need: one model and an ensemble both satisfy it."""

    name: str
    card: dict[str, Any]
    fingerprint: str
    threshold: float
    image_size: int

    def score_frames(self, frames: torch.Tensor, *, batch_size: int = 128) -> torch.Tensor: ...


class HighlightModel:
    """A loaded model: ``score_frames(uint8 frames) -> probabilities (N,)`` float32 on the CPU."""

    def __init__(self, network: HighlightNet, card: dict[str, Any], *, fingerprint: str,
                 device: torch.device, name: str) -> None:
        # NHWC: tensor cores on GPUs, and on CPUs oneDNN runs these nets about twice as fast as in NCHW
        self.network = network.to(device, memory_format=torch.channels_last).eval()
        self._cpu_lock = threading.Lock()
        self.card = card
        self.fingerprint = fingerprint
        #: older fingerprints of this model whose rows decoded by DALI on NVDEC still hold its scores (a scoring
        #: change that moved only the CPU paths' pixels): a scan's resume keeps those rows
        self.nvdec_fingerprints: tuple[str, ...] = ()
        #: older fingerprints of this model whose rows of SDR videos still hold its scores (a change that moved
        #: only HDR videos' pixels)
        self.sdr_fingerprints: tuple[str, ...] = ()
        #: its fingerprints under every older scoring code version: rows scored with them are this model's
        self.older_fingerprints: tuple[str, ...] = ()
        self.device = device
        self.name = name

    @property
    def network(self) -> HighlightNet:
        """The trained network (its weights as saved). CPU scoring runs a faster copy of it, made on first use:
        give the model another network rather than changing this one's weights in place, which the copy misses."""
        return self._network

    @network.setter
    def network(self, network: HighlightNet) -> None:
        self._network = network
        self._cpu_network: torch.nn.Module | None = None

    def __getstate__(self) -> dict[str, Any]:  # a lock does not pickle; the CPU copy is made again on first use
        state = dict(self.__dict__)
        state.pop("_cpu_lock")
        state["_cpu_network"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._cpu_lock = threading.Lock()

    def _scoring_network(self) -> torch.nn.Module:
        if self.device.type != "cpu":
            return self._network
        with self._cpu_lock:
            if self._cpu_network is None:
                self._cpu_network = cpu_inference_network(self._network, self.image_size)
            return self._cpu_network

    @property
    def threshold(self) -> float:
        return decision_threshold(self.card)

    @property
    def image_size(self) -> int:
        return int(self.card["image_size"])

    @property
    def architecture(self) -> str:
        return str(self.card["architecture"])

    def __repr__(self) -> str:
        return f"HighlightModel({self.name!r}, {self.architecture}, {self.image_size}px, {self.device})"

    @torch.inference_mode()
    def score_frames(self, frames: torch.Tensor, *, batch_size: int = 128) -> torch.Tensor:
        """Highlight probabilities for uint8 (N,3,H,W) RGB frames on any device; bf16 autocast on CUDA."""
        if frames.shape[0] == 0:
            return torch.zeros(0, dtype=torch.float32)
        out = []
        cuda = self.device.type == "cuda"
        network = self._scoring_network()
        if self.device.type == "cpu":
            batch_size = min(batch_size, CPU_CHUNK_FRAMES)
        for start in range(0, frames.shape[0], batch_size):
            x = preprocess_frames(frames[start:start + batch_size], self.image_size, self.card["mean"],
                                  self.card["std"], self.device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                logits = network(x.contiguous(memory_format=torch.channels_last))
            out.append(torch.sigmoid(logits.float()).cpu())
        return torch.cat(out)


def warn_repeated(models: Sequence[FrameScorer]) -> None:
    """Logs a model given twice (the same weights and card, under any name): averaged with itself, it counts
    twice in the ensemble's mean, which is rarely what was meant."""
    seen: dict[str, str] = {}
    for model in models:
        if model.fingerprint in seen:
            log.warning("model %s is the same model as %s (fingerprint %s): it counts twice in the ensemble's mean",
                        model.name, seen[model.fingerprint], model.fingerprint)
        seen.setdefault(model.fingerprint, model.name)


class Ensemble:
    """Several models voting by their mean probability (e.g. style-specific models combined)."""

    def __init__(self, models: Sequence[FrameScorer]) -> None:
        if not models:
            raise ValueError("an ensemble needs at least one model")
        self.models = list(models)
        self.name = "+".join(m.name for m in self.models)
        self.threshold = mean_threshold(m.threshold for m in self.models)
        self.image_size = max(m.image_size for m in self.models)
        joined = ",".join(m.fingerprint for m in self.models).encode()
        self.fingerprint = hashlib.sha256(joined).hexdigest()[:16]
        self.card: dict[str, Any] = {"ensemble": [m.card for m in self.models], "threshold": self.threshold,
                                     "classes": ["normal", "highlight"], "image_size": self.image_size}

    def __repr__(self) -> str:
        return f"Ensemble({self.models!r})"

    def score_frames(self, frames: torch.Tensor, *, batch_size: int = 128) -> torch.Tensor:
        """Mean of the members' probabilities, float32 (N,) on the CPU."""
        return torch.stack([m.score_frames(frames, batch_size=batch_size) for m in self.models]).mean(0)

    def member_scores(self, frames: torch.Tensor, *, batch_size: int = 128) -> torch.Tensor:
        """(n_models, N) probabilities, for outputs that keep each model's score."""
        return torch.stack([m.score_frames(frames, batch_size=batch_size) for m in self.models])
