"""Fine-tuning the highlight classifier on a prepared dataset, fed by DALI pipelines.

``train_model(TrainConfig(dataset, output_dir, ...), report=click.echo) -> TrainResult``.
"""

from ._config import EpochRecord, TrainConfig, TrainResult, resolve_backbone
from ._data import DaliFrameLoader, FrameTable, TrainingData, check_jpeg, load_training_data, validate_jpegs
from ._distributed import train_model
from ._loop import run_training

__all__ = [
    "DaliFrameLoader", "EpochRecord", "FrameTable", "TrainConfig", "TrainResult", "TrainingData", "check_jpeg",
    "load_training_data", "resolve_backbone", "run_training", "train_model", "validate_jpegs",
]
