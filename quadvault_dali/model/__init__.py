"""The highlight classifier: backbones, the safetensors + JSON model format, scoring and ensembles.

``load_model(path, device=) -> HighlightModel``; ``HighlightModel.score_frames(uint8 NCHW) -> (N,)``
probabilities on the CPU. ``Ensemble([...])`` averages several models and is usable wherever one is.
"""

from ._io import (CARD_FILE, CLASSES, FORMAT_NAME, FORMAT_VERSION, WEIGHTS_FILE, library_versions, load_model,
                  read_card, save_model)
from ._network import (BACKBONES, OFFLINE_BACKBONE, BackboneSpec, HighlightNet, build_network,
                       check_trained_batchnorm, pretrained_state, resnet18_weights_available, spec_for)
from ._scorer import (Ensemble, FrameScorer, HighlightModel, decision_threshold, mean_threshold, preprocess_frames,
                      warn_repeated)


def load_models(paths: "list[str] | tuple[str, ...]", device: str = "cpu") -> "HighlightModel | Ensemble":
    """One path gives that model; several give their ``Ensemble``."""
    models = [load_model(p, device=device) for p in paths]
    return models[0] if len(models) == 1 else Ensemble(models)


__all__ = [
    "BACKBONES", "CARD_FILE", "CLASSES", "FORMAT_NAME", "FORMAT_VERSION", "OFFLINE_BACKBONE", "WEIGHTS_FILE",
    "BackboneSpec", "Ensemble", "FrameScorer", "HighlightModel", "HighlightNet", "build_network",
    "check_trained_batchnorm", "decision_threshold", "library_versions", "load_model", "load_models",
    "mean_threshold", "preprocess_frames", "pretrained_state", "read_card", "resnet18_weights_available",
    "save_model", "spec_for", "warn_repeated",
]
