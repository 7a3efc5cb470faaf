"""The scan's on-disk format: two Parquet tables, versioned, read by DuckDB/pandas/polars/pyarrow directly.

This module is the authoritative description of the columns; ``docs/scan.md`` explains them for users
and the reel builder reads the seconds table through it. Layout of a scan folder ``DIR``::

    DIR/seconds/part-NNNNN.parquet   one row per sampled frame
    DIR/videos/part-NNNNN.parquet    one row per video (status ok or error)
    DIR/highlights.json              videos above the threshold, best first

A shard *pair* (same file name in ``seconds/`` and ``videos/``) is the unit of work and of resume:
the seconds file is renamed into place first and the videos file last, so a videos file's presence
means its pair is complete. Among the complete shards of a folder each path appears at most once.

Key-value metadata on every file (all values are UTF-8 strings):

* ``quadvault.schema_version`` - :data:`SCHEMA_VERSION`; readers refuse a newer major version.
* ``quadvault.table`` - ``seconds`` or ``videos``.
* ``quadvault.models`` - JSON list of ``{"name", "fingerprint"}`` in the order of ``model_scores``.
* ``quadvault.threshold`` - the highlight threshold used for ``is_highlight``/``frac_above_threshold``.
* ``quadvault.model_fingerprint`` - the combined fingerprint stored in each video row.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import pyarrow as pa

SCHEMA_VERSION = "1.6"  # 1.1: videos.decoder, videos.decoder_note; 1.2: videos.sampling_fps; 1.3: videos.frames_expected;
#                          1.4: videos.real_path; 1.5: videos.recorded_at; 1.6: videos.color_transfer
Table = Literal["seconds", "videos"]


def _field(name: str, type_: pa.DataType, doc: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={"description": doc})


SECONDS_SCHEMA = pa.schema([
    _field("video_id", pa.string(), "Joins to videos.video_id (16 hex of sha1(path|size|mtime_ns)).", False),
    _field("path", pa.string(), "Absolute path of the video as found under LIBRARY.", False),
    _field("timestamp_s", pa.float64(), "Presentation time of the sampled frame, seconds from the first frame.", False),
    _field("score", pa.float32(), "Highlight probability of this frame: mean over the models (ensemble).", False),
    _field("model_scores", pa.list_(pa.float32()),
           "Per-model probabilities, in the order of the quadvault.models metadata.", False),
])

VIDEOS_SCHEMA = pa.schema([
    _field("video_id", pa.string(), "16 hex of sha1(path|size|mtime_ns): changes when the file changes.", False),
    _field("path", pa.string(), "Absolute path of the video as found under LIBRARY.", False),
    _field("real_path", pa.string(), "The path with every symlink resolved when scanned: resume knows the file by "
                                     "it once the link it was scanned through is gone. Since 1.4."),
    _field("size_bytes", pa.int64(), "File size when scanned (resume compares it).", False),
    _field("mtime_ns", pa.int64(), "File modification time, ns since the epoch (resume compares it).", False),
    _field("recorded_at", pa.timestamp("us", tz="UTC"), "When the camera recorded the video: the container's "
                                                        "creation time (many cameras write local time as UTC); "
                                                        "null when the file has none or was not probed. Since 1.5."),
    _field("duration_s", pa.float64(), "Duration from the container; null when the file could not be probed."),
    _field("fps", pa.float64(), "Average frame rate; null when unknown."),
    _field("codec", pa.string(), "Canonical codec name (h264, hevc, vp9, ...); null when unknown."),
    _field("color_transfer", pa.string(), "The stream's transfer function, FFmpeg's name: smpte2084 (PQ) and "
                                          "arib-std-b67 (HLG) are HDR, tone-mapped to SDR before scoring; "
                                          "unknown when untagged; null when not probed. Since 1.6."),
    _field("width", pa.int32(), "Displayed width after rotation."),
    _field("height", pa.int32(), "Displayed height after rotation."),
    _field("rotation", pa.int32(), "Display rotation, clockwise degrees."),
    _field("sampling_mode", pa.string(), "How frames were picked: exact or keyframe."),
    _field("sampling_fps", pa.float64(), "Frames sampled per second of video (--fps); resume rescans a video "
                                         "scanned at another rate. Since 1.2 (older rows: 1.0)."),
    _field("decoder", pa.string(), "What decoded the frames: nvdec (GPU hardware), pyav (CPU), or nvdec+pyav (NVDEC "
                                  "failed mid-video and the CPU decoded the rest). Since 1.1."),
    _field("decoder_note", pa.string(), "Why a GPU scan decoded this video on the CPU (AV1 on an H100, 4:2:2, "
                                        "a size NVDEC does not take); null otherwise. Since 1.1."),
    _field("frames_scored", pa.int32(), "Number of rows this video has in the seconds table.", False),
    _field("frames_expected", pa.int32(), "Frames the sampling plan held: more than frames_scored in an ok row "
                                          "means seconds that did not decode (damaged data). Since 1.3."),
    _field("bytes_read", pa.int64(), "Bytes of the file read to sample it (keyframe mode reads far less).", False),
    _field("score_mean", pa.float32(), "Mean of the per-second ensemble scores."),
    _field("score_max", pa.float32(), "Best second's ensemble score."),
    _field("score_top3_mean", pa.float32(), "Mean of the 3 best seconds (all of them when fewer)."),
    _field("frac_above_threshold", pa.float32(), "Fraction of seconds whose ensemble score >= the threshold of "
                                                "the run that scored the video (highlights.json recomputes it "
                                                "for its own threshold)."),
    _field("model_means", pa.list_(pa.float32()), "Per-model mean over the seconds, metadata order."),
    _field("score", pa.float32(), "The video's highlight score: the mean over its seconds of the ensemble "
                                  "score (same as test-video and evaluation)."),
    _field("best_timestamp_s", pa.float64(), "Timestamp of the best second (the first one on ties)."),
    _field("is_highlight", pa.bool_(), "score >= the threshold of the run that scored the video (false for "
                                       "error rows); compare score yourself for another threshold.", False),
    _field("status", pa.string(), "ok or error.", False),
    _field("error_kind", pa.string(), "Error class (VideoOpenError, UnsupportedCodecError, DecodeError, ...)."),
    _field("error_message", pa.string(), "One-line message naming the file and what is wrong."),
    _field("model_fingerprint", pa.string(), "Combined fingerprint of the models (resume compares it).", False),
    _field("scanned_at", pa.timestamp("us", tz="UTC"), "When the row was written.", False),
    _field("scan_seconds", pa.float64(), "Wall time from the video's first frame to its outcome.", False),
])

SCHEMAS: dict[str, pa.Schema] = {"seconds": SECONDS_SCHEMA, "videos": VIDEOS_SCHEMA}

KEY_VERSION = b"quadvault.schema_version"
KEY_TABLE = b"quadvault.table"
KEY_MODELS = b"quadvault.models"
KEY_THRESHOLD = b"quadvault.threshold"
KEY_FINGERPRINT = b"quadvault.model_fingerprint"


@dataclass(frozen=True)
class ModelRef:
    """Which model produced a ``model_scores`` entry."""

    name: str
    fingerprint: str


@dataclass(frozen=True)
class ScanMetadata:
    """What a shard's key-value metadata says about how it was produced."""

    schema_version: str
    table: Table
    models: tuple[ModelRef, ...]
    threshold: float
    model_fingerprint: str

    def to_kv(self) -> dict[bytes, bytes]:
        return {
            KEY_VERSION: self.schema_version.encode(),
            KEY_TABLE: self.table.encode(),
            KEY_MODELS: json.dumps([{"name": m.name, "fingerprint": m.fingerprint} for m in self.models]).encode(),
            KEY_THRESHOLD: repr(float(self.threshold)).encode(),
            KEY_FINGERPRINT: self.model_fingerprint.encode(),
        }

    @classmethod
    def from_kv(cls, kv: dict[bytes, bytes] | None, *, source: str | Path = "?") -> "ScanMetadata":
        """Parses and checks the metadata; raises ``ValueError`` naming ``source`` when it is not ours."""
        kv = kv or {}
        if KEY_VERSION not in kv:
            raise ValueError(f"{source}: not a QuadVault scan shard (no {KEY_VERSION.decode()} metadata)")
        version = kv[KEY_VERSION].decode()
        if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
            raise ValueError(f"{source}: scan schema version {version} is not readable by this version "
                             f"(reads {SCHEMA_VERSION.split('.')[0]}.x); rescan with --no-resume into a new folder")
        table = kv.get(KEY_TABLE, b"").decode()
        if table not in SCHEMAS:
            raise ValueError(f"{source}: unknown scan table {table!r}")
        models = tuple(ModelRef(m["name"], m["fingerprint"]) for m in json.loads(kv.get(KEY_MODELS, b"[]")))
        return cls(version, table, models, float(kv.get(KEY_THRESHOLD, b"nan")),  # type: ignore[arg-type]
                   kv.get(KEY_FINGERPRINT, b"").decode())


def combined_fingerprint(models: Sequence[ModelRef]) -> str:
    """One fingerprint for an ensemble: order matters, since ``model_scores`` are stored in order."""
    if len(models) == 1:
        return models[0].fingerprint
    digest = hashlib.sha256("+".join(m.fingerprint for m in models).encode()).hexdigest()
    return digest[:16]


def video_id(path: str, size_bytes: int, mtime_ns: int) -> str:
    """Stable id of one version of one file: a changed file gets a new id."""
    return hashlib.sha1(f"{path}|{size_bytes}|{mtime_ns}".encode()).hexdigest()[:16]


def schema_with_metadata(meta: ScanMetadata) -> pa.Schema:
    return SCHEMAS[meta.table].with_metadata(meta.to_kv())
