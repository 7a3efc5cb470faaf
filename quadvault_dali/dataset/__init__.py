"""Labelled footage -> a frame dataset: ``labels.json`` validation, the by-video split, extraction.

``load_labels`` validates a labels file (every problem at once), ``prepare_dataset`` samples the
videos into JPEGs plus ``dataset.parquet``, ``read_dataset`` opens the result for training/evaluation.
"""

from ._identity import content_id, content_id as video_id
from ._jpeg import encode_jpegs, read_jpeg
from ._labels import CLASSES, Labels, LabelledVideo, load_labels, parse_labels
from ._prepare import PrepareResult, frame_name, prepare_dataset
from ._split import TEST_FRACTION, VAL_FRACTION, Split, assign_splits, held_out_target, val_target
from ._table import DATASET_FILE, FRAMES_DIR, SCHEMA, Dataset, dataset_path, read_dataset, write_dataset

__all__ = [
    "CLASSES", "DATASET_FILE", "FRAMES_DIR", "SCHEMA", "TEST_FRACTION", "VAL_FRACTION", "Dataset", "Labels", "LabelledVideo",
    "PrepareResult", "Split", "assign_splits", "content_id", "dataset_path", "encode_jpegs", "frame_name", "load_labels",
    "parse_labels", "prepare_dataset", "read_dataset", "read_jpeg", "held_out_target", "val_target", "video_id", "write_dataset",
]
