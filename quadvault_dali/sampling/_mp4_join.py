"""An in-order clip's MP4 as one ``join`` of its packets, under an index rebuilt from FFmpeg's own mux of its
first packet.

PyAV's muxer copies every packet four times while holding the GIL (into an ``av.Packet``, FFmpeg's write
buffer, the Python write callback's ``bytes``, the ``BytesIO``): on the GPU machine ``mux_clip`` was 40 % of
the samples that held the GIL while sampling, the host side being what kept NVDEC under a third busy. A clip
whose packets are already in presentation order (every keyframe-mode clip, and runs without B-frames)
needs nothing FFmpeg computes per packet: one chunk, one sample duration, sizes, sync samples. So FFmpeg
muxes one packet once per stream set-up, which gives the codec's sample description (``stsd``), ``ftyp``
and the rest of ``moov`` exactly as it writes them (a ``Skeleton``), and this module writes the sample
tables for all packets and the durations that depend on their number. Anything in that one-packet file it
does not know how to rebuild (another box in the sample table, an edit list that shifts, a packet FFmpeg
rewrote, e.g. from Annex B) gives no skeleton, and the caller muxes with PyAV as before. Only for codecs
whose packets FFmpeg's MP4 muxer writes as given once the set-up passed that check (the caller's list:
H.264 and HEVC with avcC/hvcC records, VP9; not AV1, whose OBUs it filters in every packet).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from .._mp4 import _boxes, leaf_boxes, timescale

#: boxes whose children are rebuilt (the rest of ``moov`` is copied)
_CONTAINERS = (b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts")
#: what FFmpeg writes in the sample table of one keyframe: the description, kept, and four tables, rebuilt
_ONE_PACKET_TABLE = sorted((b"stsd", b"stts", b"stsc", b"stsz", b"stco"))
_MAX_32 = 0xFFFFFFFF
_FULL_V0 = b"\x00\x00\x00\x00"  # a full box's version 0, no flags


class _Unsupported(Exception):
    """The template holds something this writer does not rebuild."""


@dataclass(frozen=True)
class Skeleton:
    """FFmpeg's MP4 of one packet, without the packet: what every in-order clip of one stream set-up shares."""

    prefix: bytes  # ftyp (and free), as FFmpeg wrote them
    moov: bytes  # the whole moov box of the one-packet file
    delta: int  # each sample's duration, in the media time scale
    movie_scale: int  # mvhd's time scale (durations of mvhd, tkhd, elst)
    media_scale: int  # mdhd's


@dataclass(frozen=True)
class _Layout:
    """What the rebuilt boxes say about all the packets."""

    sizes: np.ndarray  # bytes of each packet
    keyframes: np.ndarray  # bool per packet
    first_offset: int  # file offset of the first packet (one chunk holds them all)
    delta: int
    media_duration: int
    movie_duration: int  # in the movie time scale (mvhd, tkhd, elst)


def skeleton(template: bytes, packet: bytes) -> Skeleton | None:
    """The skeleton of ``template``, an MP4 FFmpeg muxed from ``packet`` alone; ``None`` where ``join_mp4``
    could not rebuild it for more packets, or where FFmpeg did not write ``packet`` as given."""
    top = list(_boxes(template, 0, len(template)))
    if [kind for kind, _, _ in top] not in ([b"ftyp", b"mdat", b"moov"], [b"ftyp", b"free", b"mdat", b"moov"]):
        return None
    _, mdat_start, mdat_end = top[-2]
    if struct.unpack_from(">I4s", template, mdat_start - 8) != (mdat_end - mdat_start + 8, b"mdat") \
            or template[mdat_start:mdat_end] != packet:
        return None  # not a plain 8-byte mdat header (a 64-bit size), or FFmpeg changed the packet's bytes
    _, moov_start, moov_end = top[-1]
    if template[moov_start - 4:moov_start] != b"moov":  # a 64-bit size header
        return None
    moov = template[moov_start - 8:moov_end]
    try:
        if sum(1 for kind, _, _ in _boxes(moov, 8, len(moov)) if kind == b"trak") != 1:
            return None
        leaves = leaf_boxes(moov, 8, len(moov), _CONTAINERS)
        movie_scale, media_scale = _timescale(moov, *leaves[b"mvhd"]), _timescale(moov, *leaves[b"mdhd"])
        s, _ = leaves[b"stts"]
        entries, samples, delta = struct.unpack_from(">III", moov, s + 4)
        if entries != 1 or samples != 1 or delta <= 0:
            return None
        skel = Skeleton(template[:mdat_start - 8], moov, int(delta), movie_scale, media_scale)
        _rebuild(moov, b"moov", 8, len(moov), _layout(skel, [packet], [True]))  # everything in it is rebuildable
    except (_Unsupported, struct.error, KeyError):
        return None
    return skel


def join_mp4(skel: Skeleton, packets: Sequence[bytes], keyframes: Sequence[bool]) -> bytes | None:
    """The MP4 of ``packets`` (decode order = presentation order, equal durations) on ``skel``; ``None``
    where it cannot be (no packets, no keyframe first, an empty packet, past 4 GB). Demuxers see the same
    samples, times and sample description as in FFmpeg's mux of all the packets; only the ``btrt`` box in
    the sample description keeps the one packet's bit rates (decoders do not read it), and the sizes are
    one table in one chunk where FFmpeg may write a constant size or several chunks."""
    frame = mp4_frame(skel, packets, keyframes)
    return None if frame is None else framed(frame, packets)


def framed(frame: tuple[bytes, bytes], packets: Iterable[bytes]) -> bytes:
    """The MP4 of ``packets`` in the ``frame`` ``mp4_frame`` made for them: one copy of every byte."""
    return b"".join([frame[0], *packets, frame[1]])


def mp4_frame(skel: Skeleton, packets: Sequence[bytes], keyframes: Sequence[bool]) -> tuple[bytes, bytes] | None:
    """What ``join_mp4`` puts before and after ``packets`` (``ftyp`` and the ``mdat`` header; ``moov``), so
    a caller can join them with the packets when the MP4 is needed, and not copy the packets before."""
    if not packets or len(packets) != len(keyframes) or not keyframes[0] or not all(packets):
        return None  # FFmpeg drops empty packets: a clip holding one is muxed by it
    payload = sum(len(p) for p in packets)
    if len(skel.prefix) + 8 + payload > _MAX_32:
        return None
    try:
        moov = _rebuild(skel.moov, b"moov", 8, len(skel.moov), _layout(skel, packets, keyframes))
    except (_Unsupported, struct.error):
        return None
    return skel.prefix + struct.pack(">I4s", payload + 8, b"mdat"), moov


def _layout(skel: Skeleton, packets: Sequence[bytes], keyframes: Sequence[bool]) -> _Layout:
    media = len(packets) * skel.delta
    movie = -(-media * skel.movie_scale // skel.media_scale)  # rounded up, as FFmpeg's movenc rescales
    sizes = np.fromiter((len(p) for p in packets), dtype=np.int64, count=len(packets))
    return _Layout(sizes, np.asarray(keyframes, dtype=bool), len(skel.prefix) + 8, skel.delta, media, movie)


def _box(kind: bytes, payload: bytes) -> bytes:
    if len(payload) + 8 > _MAX_32:
        raise _Unsupported("box too large")
    return struct.pack(">I4s", len(payload) + 8, kind) + payload


def _rebuild(data: bytes, kind: bytes, start: int, end: int, layout: _Layout) -> bytes:
    """The box ``kind`` (payload ``data[start:end]``) as it is for all the packets."""
    if kind == b"stbl":
        return _box(kind, _sample_table(data, start, end, layout))
    if kind in (b"mvhd", b"tkhd", b"mdhd", b"elst"):
        return _box(kind, _with_duration(data, kind, start, end, layout))
    if kind not in _CONTAINERS:
        return _box(kind, data[start:end])
    return _box(kind, b"".join(_rebuild(data, *child, layout) for child in _boxes(data, start, end)))


def _sample_table(data: bytes, start: int, end: int, layout: _Layout) -> bytes:
    children = list(_boxes(data, start, end))
    if sorted(kind for kind, _, _ in children) != _ONE_PACKET_TABLE:
        raise _Unsupported("a sample table box this writer does not rebuild")
    stsd = next(data[s - 8:e] for kind, s, e in children if kind == b"stsd")
    n = int(layout.sizes.size)
    out = [stsd, _box(b"stts", _FULL_V0 + struct.pack(">III", 1, n, layout.delta))]
    if not layout.keyframes.all():  # absent: every sample is a sync sample
        sync = (np.flatnonzero(layout.keyframes) + 1).astype(">u4")
        out.append(_box(b"stss", _FULL_V0 + struct.pack(">I", sync.size) + sync.tobytes()))
    out.append(_box(b"stsc", _FULL_V0 + struct.pack(">IIII", 1, 1, n, 1)))  # chunk 1 holds all n samples
    out.append(_box(b"stsz", _FULL_V0 + struct.pack(">II", 0, n) + layout.sizes.astype(">u4").tobytes()))
    out.append(_box(b"stco", _FULL_V0 + struct.pack(">II", 1, layout.first_offset)))
    return b"".join(out)


def _timescale(data: bytes, start: int, end: int) -> int:
    """``mvhd``/``mdhd``'s time scale (``_mp4.timescale``), for a box at ``data[start:end]``."""
    try:
        return timescale(data[start:end])
    except (ValueError, struct.error) as exc:
        raise _Unsupported("time scale") from exc


def _with_duration(data: bytes, kind: bytes, start: int, end: int, layout: _Layout) -> bytes:
    """The payload of ``mvhd``/``tkhd``/``mdhd``/``elst`` with the duration of all the packets."""
    payload = bytearray(data[start:end])
    wide = payload[0] == 1  # version 1: 64-bit times
    if kind == b"elst":  # entries: (segment duration, media time, rate)
        count = struct.unpack_from(">I", payload, 4)[0]
        media_time = struct.unpack_from(">q" if wide else ">i", payload, 16 if wide else 12)[0]
        if count != 1 or media_time != 0:
            raise _Unsupported("an edit list that shifts or cuts")
        duration, offset = layout.movie_duration, 8
    elif kind == b"mdhd":
        duration, offset = layout.media_duration, (24 if wide else 16)
    elif kind == b"mvhd":
        duration, offset = layout.movie_duration, (24 if wide else 16)
    else:  # tkhd: version/flags, creation, modification, track id, reserved, then the duration
        duration, offset = layout.movie_duration, (28 if wide else 20)
    if not wide and duration > _MAX_32:
        raise _Unsupported("a duration past 32 bits")
    struct.pack_into(">Q" if wide else ">I", payload, offset, duration)
    return bytes(payload)
