"""Scanning a library into Parquet shards: ``scan_library(...)``; the format lives in :mod:`.schema`."""

from .schema import (SCHEMA_VERSION, SECONDS_SCHEMA, VIDEOS_SCHEMA, ModelRef, ScanMetadata,
                     combined_fingerprint, video_id)

__all__ = ["SCHEMA_VERSION", "SECONDS_SCHEMA", "VIDEOS_SCHEMA", "ModelRef", "ScanMetadata",
           "combined_fingerprint", "video_id"]
