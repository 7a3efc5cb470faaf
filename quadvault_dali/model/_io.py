"""The model file format: ``DIR/model.safetensors`` (weights) + ``DIR/model.json`` (the card).

Safetensors holds only tensors, so loading someone's shared model can never run code (a pickled
``.pth`` can). The card says how to rebuild and feed the network, what it scored on validation and
what it was trained on; it records the weights' sha256 so a mixed-up or half-written pair is detected.
While a save replaces the pair, the previous weights wait beside it as ``.previous-<sha16>.safetensors``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
import platform
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._files import atomic_path, default_file_mode, file_sha256
from ..errors import BackendUnavailableError, ModelFormatError, OutputError
from ._network import HighlightNet, build_network, spec_for
from ._scorer import DEFAULT_THRESHOLD, HighlightModel

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


#: The card's fields that decide a frame's score besides the weights: rows scored under other values are not
#: the same model's, whatever the weights
SCORING_KEYS = ("architecture", "image_size", "mean", "std")


def _scoring_sha256(card: dict[str, Any]) -> str:
    text = json.dumps({key: card[key] for key in SCORING_KEYS}, sort_keys=True, separators=(",", ":"), default=float)
    return hashlib.sha256(text.encode()).hexdigest()


#: How this code turns a video's frames into the network's input (sampling size, resize, centre crop): bumped
#: when a change moves the scores, so a resumed scan rescans its videos instead of mixing two scorings.
#: 1: until stop 26; 2: the CPU paths' centre crops start where DALI's do (a pixel later on odd margins);
#: 3: HDR (PQ, HLG) frames are tone-mapped to SDR on every decoder path (SDR videos score as under 2).
SCORING_CODE_VERSION = 3


def _edited_scoring(card: dict[str, Any]) -> str | None:
    """The digest of the card's ``SCORING_KEYS`` when they differ from the ones it was saved with
    (``scoring_sha256``), else ``None``: unedited, or written before that was recorded."""
    saved = card.get("scoring_sha256")
    now = _scoring_sha256(card)
    return None if saved is None or saved == now else now


def model_fingerprint(card: dict[str, Any], weights_sha256: str) -> str:
    """The 16 hex digits a scan's resume compares: the weights' sha256 mixed with ``SCORING_CODE_VERSION``
    while the card's ``SCORING_KEYS`` are the ones it was saved with (``scoring_sha256``; a card written
    before that was recorded counts as unedited), else with a digest of those too: a card whose
    ``image_size`` or normalisation was edited scores differently, and a resumed scan rescans its videos
    instead of mixing the two. Version 1 was the weights' sha256 alone."""
    return _fingerprint_at(SCORING_CODE_VERSION, weights_sha256, _edited_scoring(card))


def _fingerprint_at(version: int, weights_sha256: str, edited: str | None) -> str:
    """The fingerprint under scoring code ``version`` (2 or later), ``edited``: ``_edited_scoring``'s digest."""
    scoring = f"v{version}" + (f":{edited}" if edited else "")
    return hashlib.sha256(f"{weights_sha256}:{scoring}".encode()).hexdigest()[:16]


def version1_fingerprint(card: dict[str, Any], weights_sha256: str) -> str:
    """The fingerprint scans wrote before ``SCORING_CODE_VERSION`` 2. Version 2 moved only the CPU paths' crop:
    rows DALI decoded on NVDEC (``decoder`` "nvdec") score the same pixels, and resume keeps them."""
    edited = _edited_scoring(card)
    if edited is None:
        return weights_sha256[:16]
    return hashlib.sha256(f"{weights_sha256}:{edited}".encode()).hexdigest()[:16]


def sdr_fingerprints(card: dict[str, Any], weights_sha256: str) -> tuple[str, ...]:
    """The fingerprints under scoring versions whose rows still hold for SDR videos: version 3 changed only HDR
    videos' pixels, so a resumed scan rescans the HDR videos of a library, not all of it."""
    return (_fingerprint_at(2, weights_sha256, _edited_scoring(card)),)


def older_fingerprints(card: dict[str, Any], weights_sha256: str) -> tuple[str, ...]:
    """This model's fingerprints under every earlier ``SCORING_CODE_VERSION``, oldest first: rows scanned with them
    are this model's, scored by older code (rescanned, never refused as another model's)."""
    edited = _edited_scoring(card)
    later = (_fingerprint_at(v, weights_sha256, edited) for v in range(2, SCORING_CODE_VERSION))
    return (version1_fingerprint(card, weights_sha256), *later)


def _unwrap(module: nn.Module) -> nn.Module:
    return getattr(module, "module", module)  # DistributedDataParallel / DataParallel


PREVIOUS_WEIGHTS = ".previous-{}.safetensors"  # the weights a card names while a save replaces them


def _previous_weights(directory: Path, sha256: str) -> Path:
    return directory / PREVIOUS_WEIGHTS.format(sha256[:16])


def _set_aside_previous_weights(directory: Path) -> None:
    """Moves the weights the current card names to ``_previous_weights``, where ``load_model`` finds them
    when the card still names them but ``model.safetensors`` is already the new (or no) file."""
    try:
        expected = json.loads((directory / CARD_FILE).read_text(encoding="utf-8"))["weights_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # no readable card, so no loadable model to keep
    if not isinstance(expected, str) or not re.fullmatch(r"[0-9a-f]{64}", expected):
        return
    kept = _previous_weights(directory, expected)
    if (directory / WEIGHTS_FILE).is_file() and not kept.exists():  # an interrupted save may have kept them
        os.replace(directory / WEIGHTS_FILE, kept)


def save_model(directory: str | Path, module: nn.Module, card: dict[str, Any]) -> Path:
    """Writes weights and card so that an interruption at any point leaves a loadable model, old or new.

    Both are written, and the weights hashed, under temporary names; then the old weights are set aside,
    the new ones renamed into place and the card last. Two renames are not one atomic step: between them
    the old card names the set-aside weights, which ``load_model`` then loads (renaming the weights, then
    hashing them, left new weights with the old card: the previous best model could not be loaded).
    ``card`` needs ``architecture`` and ``image_size``; format, classes, normalisation, versions, date and
    the weights' sha256 are filled in. Returns the directory.
    """
    from safetensors.torch import save_file

    net = _unwrap(module)
    if "architecture" not in card or "image_size" not in card:
        raise ValueError("card needs 'architecture' and 'image_size'")
    spec = spec_for(str(card["architecture"]))
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in net.state_dict().items()}
    full = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "classes": CLASSES,
            "mean": list(spec.mean), "std": list(spec.std), "threshold": DEFAULT_THRESHOLD, "metrics": {},
            "library_versions": library_versions(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    full.update(card)
    # the inner block's rename runs first on exit: weights, then the card; a failure removes both temporaries
    with atomic_path(directory / CARD_FILE) as card_tmp, atomic_path(directory / WEIGHTS_FILE) as weights_tmp:
        try:
            # one metadata key: safetensors writes its map in hash order, so two saves of the same weights differed
            # in their header (by process), and so in weights_sha256 and the fingerprint a resumed scan compares
            header = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "architecture": str(card["architecture"])}
            save_file(state, str(weights_tmp), metadata={"quadvault": json.dumps(header, sort_keys=True)})
        except Exception as exc:  # safetensors reports a full disk as its own SafetensorError
            raise OutputError(f"cannot write the model weights: {exc}", path=directory / WEIGHTS_FILE,
                              hint="free space on that disk, or choose another --output-dir") from exc
        os.chmod(weights_tmp, default_file_mode())  # safetensors writes 0o600: others could read the card only
        full.update({"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "weights_file": WEIGHTS_FILE,
                     "weights_sha256": file_sha256(weights_tmp), "scoring_sha256": _scoring_sha256(full)})
        card_tmp.write_text(json.dumps(full, indent=2, sort_keys=True, default=float) + "\n", encoding="utf-8")
        _set_aside_previous_weights(directory)
    for kept in directory.glob(PREVIOUS_WEIGHTS.format("*")):
        kept.unlink(missing_ok=True)
    log.debug("saved model to %s", directory)
    return directory


def _locate(path: Path) -> tuple[Path, Path]:
    """(card, weights) for a model directory, its model.json, or its model.safetensors."""
    if not path.exists():
        raise ModelFormatError("model not found", path=path, hint="give the directory written by quadvault train")
    if path.is_dir():
        card = path / CARD_FILE
        if not card.is_file() and (path / TRAINING_STATE_FILE).is_file():  # stopped before its first model
            raise ModelFormatError("holds a training run that was stopped before it saved a model", path=path,
                                   hint=f"finish it: quadvault train DATASET --output-dir {path} --resume (with the "
                                        "run's options)")
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
        card = json.loads(card_path.read_text(encoding="utf-8-sig"))  # a BOM from a Windows editor is harmless
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"is not a model card (not JSON: {exc})", path=card_path) from None
    if not isinstance(card, dict) or card.get("format") != FORMAT_NAME:
        found = card.get("format") if isinstance(card, dict) else type(card).__name__
        raise ModelFormatError(f"is not a QuadVault model card (format {found!r}, expected {FORMAT_NAME!r})",
                               path=card_path)
    version = card.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool) or not isinstance(version, int):
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise ModelFormatError(
            f"model format version {version!r} is not supported (this QuadVault reads version {FORMAT_VERSION})",
            path=card_path, hint="upgrade quadvault-dali" if newer else "retrain the model with this version")
    for key in ("architecture", "image_size", "mean", "std", "threshold", "classes", "weights_sha256"):
        if key not in card:  # save_model writes every one: a card without one was edited, and no default is safe
            raise ModelFormatError(f"model card lacks {key!r}", path=card_path)
    digest = card["weights_sha256"]
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ModelFormatError(f"model card's weights_sha256 {digest!r} is not 64 lowercase hex digits", path=card_path)
    named = card.get("weights_file", WEIGHTS_FILE)
    if named != WEIGHTS_FILE:  # never loaded from another name: a card must not point at a pickle
        raise ModelFormatError(f"model card names the weights file {named!r}; a QuadVault model's weights are "
                               f"{WEIGHTS_FILE} (safetensors) beside its card", path=card_path,
                               hint="use the model directory as quadvault train wrote it")
    classes = card.get("classes", CLASSES)
    if classes != CLASSES:  # the network's output is P(highlight): another order would invert every score
        raise ModelFormatError(f"model card's classes {classes!r} are not {CLASSES!r}: the model's output is the "
                               "probability of the second, a highlight", path=card_path,
                               hint="a QuadVault model has classes [\"normal\", \"highlight\"]")
    threshold = card.get("threshold", DEFAULT_THRESHOLD)
    if not _is_number(threshold) or not 0.0 <= threshold <= 1.0:
        raise ModelFormatError(f"model card's threshold {threshold!r} is not a number within 0..1", path=card_path)
    size = card["image_size"]
    if not isinstance(size, int) or isinstance(size, bool) or not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        raise ModelFormatError(f"model card's image_size {size!r} is not a whole number of pixels within "
                               f"{MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE}", path=card_path)
    for key in ("mean", "std"):  # per RGB channel; a std of 0 would divide by zero
        value = card[key]
        if (not isinstance(value, list) or len(value) != 3 or not all(_is_number(v) for v in value)
                or (key == "std" and not all(v > 0 for v in value))):
            raise ModelFormatError(f"model card's {key} {value!r} is not three {'positive ' if key == 'std' else ''}"
                                   "numbers (one per RGB channel)", path=card_path)
    try:
        spec_for(str(card["architecture"]))
    except ModelFormatError as exc:
        raise ModelFormatError(exc.reason, path=card_path, hint=exc.hint) from None
    return card


#: The image sizes a card may give (the networks work from 32 px; above 4096 is no frame classifier).
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 1024  # train's --image-size range


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _misfit(net: torch.nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """How ``state`` does not fit ``net``, in a line (torch lists every key, hundreds for a wrong architecture)."""
    want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    missing = [k for k in want if k not in state]
    extra = [k for k in state if k not in want]
    shapes = [f"{k} is {tuple(state[k].shape)}, not {want[k]}" for k in want if k in state
              and tuple(state[k].shape) != want[k]]
    parts = []
    for count, what, examples in ((len(missing), "missing", missing), (len(extra), "unexpected", extra),
                                  (len(shapes), "of another shape", shapes)):
        if count:
            parts.append(f"{count} tensors {what} (e.g. {'; '.join(examples[:2])})")
    return ", ".join(parts) or None


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


def _weights_of(card: dict[str, Any], card_path: Path, weights: Path) -> tuple[Path, str]:
    """(the weights file ``card`` describes, its sha256): ``weights``, or after an interrupted save the
    previous weights set aside beside it, which the card still names."""
    digest = file_sha256(weights) if weights.is_file() else None
    expected = card.get("weights_sha256")
    if expected and digest != expected:
        kept = _previous_weights(weights.parent, str(expected))
        if kept.is_file() and file_sha256(kept) == expected:
            log.warning("%s: the last save of this model was interrupted; loading the weights its card names, "
                        "%s", weights.parent, kept.name)
            return kept, str(expected)
    if digest is None:
        raise ModelFormatError("weights file is missing", path=weights,
                               hint=f"it belongs beside its card {card_path}; copy the whole model directory")
    if expected and expected != digest:
        raise ModelFormatError("weights do not match their model card (sha256 differs): the pair was mixed up "
                               "or half-written", path=weights)
    return weights, digest


#: Beside the model while its training run is unfinished (``training/_resume.py`` writes and removes it)
TRAINING_STATE_FILE = "training_state.safetensors"


def _warn_if_unfinished(root: Path) -> None:
    """A model folder whose training was stopped holds the best epoch so far, not the finished model: scoring
    with it is allowed (it may be all a user wants), but said, with how to finish the run."""
    if not (root / TRAINING_STATE_FILE).exists():
        return
    from ..training._resume import describe_state  # training imports this module: here, not at the top

    where = describe_state(root)
    log.warning("%s holds the best epoch so far of an unfinished training run%s; `quadvault train DATASET "
                "--output-dir %s --resume` (with the run's options) finishes it", root,
                f" (stopped after {where})" if where else "", root)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> HighlightModel:
    """Loads a model directory (or its ``model.json`` / ``model.safetensors``) without unpickling."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    card_path, weights = _locate(Path(path))
    card = _read_card(card_path)
    weights, digest = _weights_of(card, card_path, weights)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFormatError(f"is not a safetensors weights file ({exc})", path=weights) from None
    net: HighlightNet = build_network(str(card["architecture"]), image_size=int(card["image_size"]),
                                      pretrained="none")
    misfit = _misfit(net, state)
    if misfit is not None:
        raise ModelFormatError(f"weights do not fit a {card['architecture']} network at {card['image_size']} px: "
                               f"{misfit}", path=weights, hint="the card and the weights belong to different models")
    wanted = net.state_dict()
    for key, tensor in state.items():
        if tensor.dtype != wanted[key].dtype:
            raise ModelFormatError(f"weights tensor {key} is {tensor.dtype}, not {wanted[key].dtype}", path=weights,
                                   hint="use the model directory as quadvault train wrote it")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelFormatError(f"weights tensor {key} holds NaN or infinite values: the model would score NaN",
                                   path=weights, hint="the training diverged or the file was damaged; retrain")
    net.load_state_dict(state, strict=True)
    if _edited_scoring(card) is not None:
        log.warning("%s: its image_size, mean, std or architecture were edited since training; scores differ from "
                    "those of the model as trained", card_path)
    root = card_path.parent
    _warn_if_unfinished(root)
    name = str(card.get("name") or root.name or card_path.stem)
    model = HighlightModel(net, card, fingerprint=model_fingerprint(card, digest), device=_torch_device(device),
                           name=name)
    model.nvdec_fingerprints = (version1_fingerprint(card, digest),)
    model.sdr_fingerprints = sdr_fingerprints(card, digest)
    model.older_fingerprints = older_fingerprints(card, digest)
    return model
