"""``dataset.parquet``: one row per stored frame; the file every later step reads.

Columns: ``frame_path`` (JPEG path relative to the dataset folder, so the folder can move),
``video_path``, ``video_id``, ``timestamp_s``, ``label`` (1 highlight / 0 normal), ``label_name``,
``split`` ("train" | "val" | "test"), and the video's ``video_size_bytes`` / ``video_mtime_ns`` so that
``--merge`` can tell a changed file from an unchanged one, and ``frame_fingerprint`` (``_shared_footage``: 32
bytes of the picture, empty for a flat one; absent from older datasets, which get it on their next run). How
the frames were sampled (fps, size, mode) lives in the Parquet key-value metadata; ``--merge`` refuses to mix
settings.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .._files import atomic_path
from ..errors import DatasetError, OutputError

DATASET_FILE = "dataset.parquet"
FRAMES_DIR = "frames"
#: Written into a video's frame folder once all its frames are: what a killed run's re-run reuses
MANIFEST = ".frames.json"
#: 2: frames of HDR (PQ, HLG) videos are tone-mapped to SDR (``sampling._colour``); a dataset of version 1 holds
#: them as read, grey and dim, and prepare-dataset extracts those videos again
FORMAT_VERSION = 2
_META_KEY = b"quadvault.dataset"

SCHEMA = pa.schema([
    ("frame_path", pa.string()),
    ("video_path", pa.string()),
    ("video_id", pa.string()),
    ("timestamp_s", pa.float64()),
    ("label", pa.int8()),
    ("label_name", pa.string()),
    ("split", pa.string()),
    ("video_size_bytes", pa.int64()),
    ("video_mtime_ns", pa.int64()),
    ("frame_fingerprint", pa.binary()),
])
REQUIRED = ("frame_path", "video_path", "video_id", "timestamp_s", "label", "split")


@dataclass
class Dataset:
    """A prepared dataset: its folder, rows and how it was made."""

    root: Path
    table: pa.Table
    settings: dict[str, Any]

    @property
    def path(self) -> Path:
        return self.root / DATASET_FILE

    def frame_file(self, relative: str) -> Path:
        return self.root / relative

    def rows(self) -> list[dict[str, Any]]:
        return self.table.to_pylist()


def dataset_path(path: str | os.PathLike[str]) -> Path:
    """``dataset.parquet`` given either the file or its folder."""
    p = Path(path)
    return p / DATASET_FILE if p.is_dir() else p


def _starts_like_json(file: Path) -> bool:
    try:
        with open(file, "rb") as fh:
            head = fh.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    except OSError:
        return False
    return head[:1] in (b"{", b"[")


def read_dataset(path: str | os.PathLike[str]) -> Dataset:
    """Opens a prepared dataset (the parquet file or its folder); clear errors when it is not one."""
    file = dataset_path(path)
    if not file.exists():
        raise DatasetError("no prepared dataset here", path=file,
                           hint="run `quadvault prepare-dataset labels.json OUT` first")
    try:
        table = pq.read_table(file)
    except (OSError, pa.ArrowInvalid) as exc:
        if _starts_like_json(file):  # ``train labels.json``: the labels, not the dataset prepared from them
            raise DatasetError("is a labels file, not a prepared dataset", path=file,
                               hint=f"prepare one first: quadvault prepare-dataset {file} data/, then give "
                                    "data/") from None
        raise DatasetError(f"cannot read dataset: {exc}", path=file) from None
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise DatasetError(f"not a QuadVault dataset: missing column(s) {', '.join(missing)}", path=file,
                           hint="prepare it with `quadvault prepare-dataset`")
    raw = (table.schema.metadata or {}).get(_META_KEY)
    settings: dict[str, Any] = json.loads(raw) if raw else {}
    if settings.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise DatasetError(f"dataset format {settings['format_version']} is newer than this version "
                           f"understands ({FORMAT_VERSION})", path=file, hint="upgrade quadvault")
    return Dataset(root=file.parent, table=table, settings=settings)


def table_format_version(path: str | os.PathLike[str]) -> int:
    """The ``format_version`` a dataset table was written with, from its footer alone (1 where it has none or
    cannot be read): what prepare-dataset must redo for an older one."""
    try:
        raw = (pq.read_schema(dataset_path(path)).metadata or {}).get(_META_KEY)
        return int(json.loads(raw).get("format_version", 1)) if raw else 1
    except (OSError, ValueError, TypeError, AttributeError, pa.ArrowException):
        return 1


def write_dataset(root: Path, rows: list[dict[str, Any]], settings: dict[str, Any]) -> Path:
    """Writes ``root/dataset.parquet`` atomically (temporary name, then rename)."""
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    meta = {_META_KEY: json.dumps({**settings, "format_version": FORMAT_VERSION}).encode()}
    table = table.replace_schema_metadata(meta)
    final = root / DATASET_FILE
    try:
        with atomic_path(final) as tmp:
            pq.write_table(table, tmp)
    except OSError as exc:
        raise OutputError(f"cannot write dataset: {exc.strerror or exc}", path=final) from None
    return final
