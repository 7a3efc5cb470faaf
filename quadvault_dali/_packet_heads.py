"""What a packet's leading H.264/HEVC NAL units say, read without decoding: whether a keyframe can start
decoding (periodic intra refresh flags recovery points as keyframes) and whether a display-orientation SEI comes
before the first slice (FFmpeg turns the pictures by it); and reading a packet's head from the file for that."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from ._nal import DISPLAY_ORIENTATION_SEI, SEI_UNITS, nal_type, nal_units, sei_types, unescape

#: bytes of an MP4's first packet read for its parameter sets and SEI units, which come before the slices: a
#: first read of ``HEAD_FIRST_BYTES`` (an x264 or camera head is a few hundred bytes, a 1080p keyframe 100+
#: KiB: the prober read 64 KiB of it twice per video, counted as the video's bytes where it is read by path),
#: then up to ``SEI_HEAD_BYTES`` where no slice starts within it. From the page cache both cost the same.
SEI_HEAD_BYTES = 64 << 10
HEAD_FIRST_BYTES = 4 << 10


def is_slice(kind: int, codec: str) -> bool:
    """Whether a NAL unit type is a coded slice (H.264 1-5, HEVC's VCL types 0-31)."""
    return 1 <= kind <= 5 if codec == "h264" else kind <= 31


def leading_units(data: bytes, codec: str, length_size: int | None) -> Iterator[tuple[int, int, int]]:
    """(type, start, end) of the length-prefixed NAL units at the start of ``data`` whose header it holds (the
    last one's ``end`` may lie past it); none once a length does not cover a header (not framed so)."""
    if length_size is None:
        return
    header, at = (1 if codec == "h264" else 2), 0
    while at + length_size < len(data):
        start = at + length_size
        size = int.from_bytes(data[at:start], "big")
        if size < header:
            return
        yield nal_type(data[start], codec), start, start + size
        at = start + size


def _exp_golomb(bits: str, at: int) -> tuple[int, int]:
    """An unsigned Exp-Golomb value read from a string of '0'/'1' at ``at``: (value, next position)."""
    zeros = 0
    while bits[at + zeros] == "0":
        zeros += 1
    end = at + 2 * zeros + 1
    return int(bits[at + zeros:end], 2) - 1, end


def starts_decoding(data: bytes, codec: str, length_size: int | None) -> bool | None:
    """Whether a packet flagged as a keyframe can start decoding: its first slice is an IDR (H.264) or an I slice
    (an open GOP's keyframe, whose leading pictures alone need the GOP before), or an IRAP picture (HEVC).
    ``False`` for the recovery-point P pictures that periodic intra refresh flags as keyframes (x264
    ``intra-refresh``: no IDR after the first picture; a run from one decodes nothing); ``None`` where ``data``
    holds no slice header."""
    if length_size is None:
        units = [(nal_type(data[start], codec), start, end) for start, end in nal_units(data, None) or []
                 if end > start]
    else:
        units = list(leading_units(data, codec, length_size))
    for kind, start, end in units:
        if not is_slice(kind, codec):
            continue
        if codec != "h264":
            return 16 <= kind <= 23
        if kind == 5:
            return True
        rbsp = unescape(data[start + 1:min(end, start + 17)])
        try:
            bits = "".join(f"{byte:08b}" for byte in rbsp)
            _, at = _exp_golomb(bits, 0)  # first_mb_in_slice
            slice_type, _ = _exp_golomb(bits, at)
        except (IndexError, ValueError):
            return None
        return slice_type % 5 in (2, 4)  # I or SI
    return None


def _reaches_a_slice(data: bytes, codec: str, length_size: int | None) -> bool:
    """Whether length-prefixed NAL units from the start of ``data`` get to a slice's header within it."""
    return any(is_slice(kind, codec) for kind, _, _ in leading_units(data, codec, length_size))


def packet_head(path: Path, pos: int, size: int, codec: str, length_size: int | None) -> bytes:
    """The start of the packet at ``pos`` (``size`` bytes), through its leading units (see ``HEAD_FIRST_BYTES``);
    ``OSError`` where it cannot be read."""
    with open(path, "rb") as fh:
        fh.seek(pos)
        data = fh.read(min(size, HEAD_FIRST_BYTES))
        if len(data) < min(size, SEI_HEAD_BYTES) and not _reaches_a_slice(data, codec, length_size):
            data += fh.read(min(size, SEI_HEAD_BYTES) - len(data))
    return data


def orientation_sei_first(data: bytes, codec: str, length_size: int | None, cut: bool = False) -> bool:
    """Whether the NAL units at the start of ``data`` hold a display-orientation SEI message before the first
    slice (FFmpeg ignores one after it; ``data`` may end inside a slice: only what precedes it is read;
    ``cut``: it was cut short, so an SEI unit it ends inside counts as one, and the caller decodes a picture
    to be sure). Length-prefixed as the stream says (``None``: start codes), else start codes where the packet
    begins with one (a remux can leave them behind; FFmpeg decodes either). Length prefixes first: a
    256-511-byte first unit's 4-byte length reads ``00 00 01 xx``. A wrong guess costs one decoded picture."""
    header = 1 if codec == "h264" else 2

    def holds(units: list[tuple[int, int]]) -> bool:
        for a, b in units:
            if b <= a + header:
                continue
            kind = nal_type(data[a], codec)
            if kind in SEI_UNITS[codec]:
                if DISPLAY_ORIENTATION_SEI in sei_types(data[a + header:b]) or (cut and b == len(data)):
                    return True
            elif kind <= (5 if codec == "h264" else 31) and (codec == "hevc" or kind >= 1):  # a slice: no SEI after
                return False
        return False

    if length_size is None:
        return holds(nal_units(data, None) or [])
    prefixed, at = [], 0
    while at + length_size < len(data):
        size = int.from_bytes(data[at:at + length_size], "big")
        start = at + length_size
        if size <= header or start + header > len(data) or (start + size > len(data) and not cut):
            break  # not length-prefixed after all (a slice cut by ``data``'s end is a slice: the walk stops there)
        prefixed.append((start, min(start + size, len(data))))
        at = start + size
    return holds(prefixed) or (data.startswith((b"\0\0\1", b"\0\0\0\1")) and holds(nal_units(data, None) or []))
