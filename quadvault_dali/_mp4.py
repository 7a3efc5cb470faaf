"""Reads what PyAV does not expose from an MP4/MOV video track: display rotation and composition offsets.

PyAV reports rotation only on decoded frames, and its index entries carry decode times only; decoding a
4K frame per file would cost the prober tens of milliseconds, and demuxing reads the whole file, so the
``tkhd`` matrix and the ``ctts`` table are read from the (small) ``moov`` box instead.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import BinaryIO, Iterator

import numpy as np

_CONTAINER_BOXES = (b"mdia", b"minf", b"stbl")


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """Yields (type, payload_start, payload_end) of the boxes in ``data[start:end]``."""
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            if pos + 16 > end:
                return
            size = struct.unpack_from(">Q", data, pos + 8)[0]
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            return
        yield kind, pos + header, pos + size
        pos += size


def _find_moov(fh: BinaryIO, file_size: int, limit: int = 256 << 20) -> bytes | None:
    pos = 0
    while pos + 8 <= file_size:
        fh.seek(pos)
        head = fh.read(16)
        if len(head) < 8:
            return None
        size, kind = struct.unpack_from(">I4s", head)
        header = 8
        if size == 1 and len(head) >= 16:
            size = struct.unpack_from(">Q", head, 8)[0]
            header = 16
        elif size == 0:
            size = file_size - pos
        if size < header:
            return None
        if kind == b"moov":
            if size > limit:
                return None
            fh.seek(pos)
            return fh.read(size)
        pos += size
    return None


def leaf_boxes(data: bytes, start: int, end: int, containers: tuple[bytes, ...]) -> dict[bytes, tuple[int, int]]:
    """(payload start, payload end) of the first box of each kind in ``data[start:end]``, in file order,
    descending into the boxes named in ``containers``."""
    found: dict[bytes, tuple[int, int]] = {}

    def walk(lo: int, hi: int) -> None:
        for kind, b_start, b_end in _boxes(data, lo, hi):
            if kind in containers:
                walk(b_start, b_end)
            else:
                found.setdefault(kind, (b_start, b_end))

    walk(start, end)
    return found


def _collect(moov: bytes, start: int, end: int, found: dict[bytes, bytes]) -> None:
    """Records the payloads of the leaf boxes we read, descending into mdia/minf/stbl."""
    for kind, (b_start, b_end) in leaf_boxes(moov, start, end, _CONTAINER_BOXES).items():
        if kind in (b"tkhd", b"hdlr", b"ctts"):
            found.setdefault(kind, moov[b_start:b_end])


def _video_track(moov: bytes, track_id: int | None) -> dict[bytes, bytes] | None:
    fallback = None
    for kind, start, end in _boxes(moov, 8, len(moov)):
        if kind != b"trak":
            continue
        found: dict[bytes, bytes] = {}
        _collect(moov, start, end, found)
        tkhd, hdlr = found.get(b"tkhd"), found.get(b"hdlr")
        if tkhd is None or hdlr is None or hdlr[8:12] != b"vide":
            continue
        tid = struct.unpack_from(">I", tkhd, 4 + (16 if tkhd[0] == 1 else 8))[0]
        if track_id is None or tid == track_id:
            return found
        fallback = fallback or found
    return fallback


def _rotation(tkhd: bytes) -> int:
    version = tkhd[0]
    tid_off = 4 + (16 if version == 1 else 8)
    matrix_off = tid_off + 4 + 4 + (8 if version == 1 else 4) + 8 + 2 + 2 + 2 + 2
    a, b, _u, c, d, _v = struct.unpack_from(">iiiiii", tkhd, matrix_off)
    if a == b == c == d == 0:
        return 0
    # The matrix maps coded to displayed pixels; atan2 of its first column is the clockwise
    # rotation a viewer applies (the 'rotate' tag players used to write).
    degrees = math.degrees(math.atan2(b, a))
    return int(round(degrees / 90.0)) * 90 % 360


def _composition_offsets(ctts: bytes) -> np.ndarray:
    """Per-sample presentation-minus-decode offsets, expanded from ctts's run-length table."""
    version = ctts[0]
    count = struct.unpack_from(">I", ctts, 4)[0]
    runs = np.frombuffer(ctts, dtype=">u4" if version == 0 else ">i4", count=2 * count, offset=8)
    runs = runs.reshape(count, 2).astype(np.int64)
    if version == 0:  # unsigned, but writers store negatives as two's complement anyway
        runs[:, 1] = np.where(runs[:, 1] >= 1 << 31, runs[:, 1] - (1 << 32), runs[:, 1])
    return np.repeat(runs[:, 1], runs[:, 0])


@dataclass(frozen=True)
class TrackFacts:
    rotation: int
    composition_offsets: np.ndarray | None  # ticks of the track's timescale, one per sample


def read_track_facts(fh: BinaryIO, file_size: int, track_id: int | None = None) -> TrackFacts:
    """Rotation (clockwise 0/90/180/270) and composition offsets of the video track (none if absent)."""
    moov = _find_moov(fh, file_size)
    track = _video_track(moov, track_id) if moov is not None else None
    if track is None:
        return TrackFacts(0, None)
    ctts = track.get(b"ctts")
    return TrackFacts(_rotation(track[b"tkhd"]), _composition_offsets(ctts) if ctts else None)
