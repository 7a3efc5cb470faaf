"""Reads the display rotation of an MP4/MOV video track from its ``tkhd`` box.

PyAV reports rotation only on decoded frames; decoding a 4K frame per file would cost the prober
tens of milliseconds, so the matrix is read from the (small) ``moov`` box instead.
"""

from __future__ import annotations

import math
import struct
from typing import BinaryIO, Iterator

_CONTAINER_BOXES = {b"moov", b"trak", b"mdia"}


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


def _track_rotation(moov: bytes, track_id: int | None) -> int | None:
    for kind, start, end in _boxes(moov, 8, len(moov)):
        if kind != b"trak":
            continue
        tkhd = None
        handler = None
        for sub, s_start, s_end in _boxes(moov, start, end):
            if sub == b"tkhd":
                tkhd = moov[s_start:s_end]
            elif sub == b"mdia":
                for leaf, l_start, _ in _boxes(moov, s_start, s_end):
                    if leaf == b"hdlr":
                        handler = moov[l_start + 8:l_start + 12]
        if tkhd is None or handler != b"vide":
            continue
        version = tkhd[0]
        tid_off = 4 + (16 if version == 1 else 8)
        tid = struct.unpack_from(">I", tkhd, tid_off)[0]
        if track_id is not None and tid != track_id:
            continue
        matrix_off = tid_off + 4 + 4 + (8 if version == 1 else 4) + 8 + 2 + 2 + 2 + 2
        a, b, _u, c, d, _v = struct.unpack_from(">iiiiii", tkhd, matrix_off)
        if a == b == c == d == 0:
            return 0
        # The matrix maps coded to displayed pixels; atan2 of its first column is the clockwise
        # rotation a viewer applies (the 'rotate' tag players used to write).
        degrees = math.degrees(math.atan2(b, a))
        return int(round(degrees / 90.0)) * 90 % 360
    return None


def read_rotation(fh: BinaryIO, file_size: int, track_id: int | None = None) -> int:
    """Clockwise display rotation (0, 90, 180 or 270) of the video track; 0 where none is stored."""
    moov = _find_moov(fh, file_size)
    if moov is None:
        return 0
    rotation = _track_rotation(moov, track_id)
    if rotation is None and track_id is not None:
        rotation = _track_rotation(moov, None)
    return rotation or 0
