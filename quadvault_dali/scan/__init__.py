"""Scanning a library into Parquet shards: ``runner.scan_library(files, runner.ScanOptions(...))``; the format
lives in :mod:`.schema` (re-exported here)."""

from .schema import (SCHEMA_VERSION, SECONDS_SCHEMA, VIDEOS_SCHEMA, ModelRef, ScanMetadata,
                     combined_fingerprint, video_id)

__all__ = ["SCHEMA_VERSION", "SECONDS_SCHEMA", "VIDEOS_SCHEMA", "ModelRef", "ScanMetadata",
           "combined_fingerprint", "video_id"]
