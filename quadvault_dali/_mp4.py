"""Reads what PyAV does not expose from an MP4/MOV video track: display rotation, composition offsets, and
the sample table as arrays.

PyAV reports rotation only on decoded frames, and its index entries carry decode times only; decoding a
4K frame per file would cost the prober tens of milliseconds, and demuxing reads the whole file, so the
``tkhd`` matrix and the ``ctts`` table are read from the (small) ``moov`` box instead. PyAV's index entries
are also one Python object per packet, read with the GIL held (a tenth of the gpu backend's prepare threads'
GIL time on 8-s clips, ~18 ms for a 10-minute video), so for plain tracks the packet index is computed
from the sample table boxes with numpy (``SampleTable``); the prober checks it against FFmpeg's on every
test file and the shared corpus.
"""

from __future__ import annotations

import hashlib
import logging
import math
import struct
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator

import numpy as np

log = logging.getLogger(__name__)

_CONTAINER_BOXES = (b"mdia", b"minf", b"stbl", b"edts")
#: leaf boxes of a track read here
_READ = (b"tkhd", b"hdlr", b"ctts", b"mdhd", b"elst", b"stsd", b"stts", b"stss", b"stsc", b"stsz", b"stco", b"co64")
#: sample table boxes whose meaning ``SampleTable`` covers; a table with any other (``stz2`` sizes, ``stps``
#: or sample groups that FFmpeg turns into keyframes, ...) is indexed by FFmpeg
_PLAIN_TABLE = frozenset({b"stsd", b"stts", b"ctts", b"cslg", b"stss", b"sdtp", b"stsc", b"stsz", b"stco", b"co64"})
#: an edit list entry's rate of 1.0 (16.16 fixed point)
_RATE_ONE = 0x00010000


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


def _top_level_boxes(fh: BinaryIO, file_size: int) -> Iterator[tuple[bytes, int, int, int]]:
    """(type, position, header bytes, size) of the file's top-level boxes, reading only their headers."""
    pos = 0
    while pos + 8 <= file_size:
        fh.seek(pos)
        head = fh.read(16)
        if len(head) < 8:
            return
        size, kind = struct.unpack_from(">I4s", head)
        header = 8
        if size == 1 and len(head) >= 16:
            size = struct.unpack_from(">Q", head, 8)[0]
            header = 16
        elif size == 0:
            size = file_size - pos
        if size < header:
            return
        yield kind, pos, header, size
        pos += size


#: top-level boxes an ISO-BMFF file may open with
_FIRST_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot")


def is_plain_mp4(fh: BinaryIO, file_size: int) -> bool:
    """Whether the file is an MP4/MOV whose packets are all indexed in one ``moov``: no movie fragments
    (``moof``), which FFmpeg demuxes as it goes. Reads only top-level box headers."""
    seen_moov = False
    for i, (kind, _, _, _) in enumerate(_top_level_boxes(fh, file_size)):
        if i == 0 and kind not in _FIRST_BOXES:
            return False
        if kind == b"moof":
            return False
        seen_moov = seen_moov or kind == b"moov"
    return seen_moov


def cut_short(fh: BinaryIO, file_size: int) -> bool:
    """Whether an MP4/MOV's top-level box runs past the end of the file: a copy or recording cut off (a
    ``moov`` at the end cut inside its track description, say). Reads only top-level box headers."""
    for i, (kind, pos, _, size) in enumerate(_top_level_boxes(fh, file_size)):
        if i == 0 and kind not in _FIRST_BOXES:  # not an ISO-BMFF file: its bytes are no box sizes
            return False
        if pos + size > file_size:
            return True
    return False


def _find_moov(fh: BinaryIO, file_size: int, limit: int = 256 << 20) -> bytes | None:
    for kind, pos, _, size in _top_level_boxes(fh, file_size):
        if kind == b"moov":
            if size > limit:
                return None
            fh.seek(pos)
            return fh.read(size)
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
    """Records the payloads of the leaf boxes we read, descending into mdia/minf/stbl/edts, and under
    ``b"stbl:"`` the kinds of the sample table's boxes."""
    for kind, (b_start, b_end) in leaf_boxes(moov, start, end, _CONTAINER_BOXES).items():
        if kind in _READ:
            found.setdefault(kind, moov[b_start:b_end])
    stbl = _descend(moov, start, end, (b"mdia", b"minf", b"stbl"))
    if stbl is not None:
        found.setdefault(b"stbl:", b",".join(kind for kind, _, _ in _boxes(moov, *stbl)))


def _descend(data: bytes, start: int, end: int, path: tuple[bytes, ...]) -> tuple[int, int] | None:
    """(payload start, payload end) of the first box at ``path`` under ``data[start:end]``."""
    for kind in path:
        found = next(((s, e) for k, s, e in _boxes(data, start, end) if k == kind), None)
        if found is None:
            return None
        start, end = found
    return start, end


def _movie_boxes(moov: bytes) -> dict[bytes, bytes]:
    """The payloads of ``moov``'s own boxes (``mvhd``, ``mvex``, ...), the first of each kind."""
    found: dict[bytes, bytes] = {}
    for kind, start, end in _boxes(moov, 8, len(moov)):
        found.setdefault(kind, moov[start:end])
    return found


def _matrix_at(box: bytes, kind: bytes) -> int:
    """Where the display matrix starts in a ``tkhd`` or ``mvhd`` payload (both versions)."""
    wide = box[0] == 1
    if kind == b"tkhd":  # version/flags, creation, modification, track id, reserved, duration, reserved,
        return 4 + (16 if wide else 8) + 4 + 4 + (8 if wide else 4) + 8 + 2 + 2 + 2 + 2  # layer .. reserved
    return 48 if wide else 36  # mvhd: version/flags, times, scale, duration, rate, volume, reserved


def _video_track(moov: bytes, track_id: int | None) -> tuple[dict[bytes, bytes], bool] | None:
    """The video track's boxes (``_collect``), and whether it is the track ``track_id`` (else the first video
    track stands in, or the id is not unique)."""
    fallback = chosen = None
    for kind, start, end in _boxes(moov, 8, len(moov)):
        if kind != b"trak":
            continue
        found: dict[bytes, bytes] = {}
        _collect(moov, start, end, found)
        tkhd, hdlr = found.get(b"tkhd"), found.get(b"hdlr")
        if tkhd is None or hdlr is None or hdlr[8:12] != b"vide":
            continue
        tid = struct.unpack_from(">I", tkhd, 4 + (16 if tkhd[0] == 1 else 8))[0]
        if track_id is None:
            return found, True
        if tid == track_id:
            if chosen is not None:  # two tracks with that id: which one FFmpeg shows is not known here
                return chosen[0], False
            chosen = (found, True)
        elif fallback is None:
            fallback = (found, False)
    return chosen or fallback


def _rotation(tkhd: bytes, mvhd: bytes = b"") -> int:
    """The clockwise rotation a player applies: the track's matrix times the movie's, as FFmpeg combines them
    (a matrix of zeros in either leaves the picture as stored, as FFmpeg's autorotation does)."""
    a, b, _u, c, d, _v = struct.unpack_from(">iiiiii", tkhd, _matrix_at(tkhd, b"tkhd"))
    if len(mvhd) >= 84:
        ma, mb, _, mc, md, _ = struct.unpack_from(">iiiiii", mvhd, _matrix_at(mvhd, b"mvhd"))
        a, b, c, d = a * ma + b * mc, a * mb + b * md, c * ma + d * mc, c * mb + d * md
    if a == b == c == d == 0:
        return 0
    # The matrix maps coded to displayed pixels; atan2 of its first column is the clockwise
    # rotation a viewer applies (the 'rotate' tag players used to write).
    degrees = math.degrees(math.atan2(b, a))
    return int(round(degrees / 90.0)) * 90 % 360


#: more samples than any real track holds (six days at 60 fps): a table claiming more is damaged
_MAX_SAMPLES = 1 << 25


def _composition_offsets(ctts: bytes) -> np.ndarray:
    """Per-sample presentation-minus-decode offsets, expanded from ctts's run-length table."""
    version = ctts[0]
    count = struct.unpack_from(">I", ctts, 4)[0]
    runs = np.frombuffer(ctts, dtype=">u4" if version == 0 else ">i4", count=2 * count, offset=8)
    runs = runs.reshape(count, 2).astype(np.int64)
    if np.any(runs[:, 0] < 0) or int(runs[:, 0].sum()) > _MAX_SAMPLES:
        raise ValueError("composition offset table counts more samples than a track holds")
    if version == 0:  # unsigned, but writers store negatives as two's complement anyway
        runs[:, 1] = np.where(runs[:, 1] >= 1 << 31, runs[:, 1] - (1 << 32), runs[:, 1])
    return np.repeat(runs[:, 1], runs[:, 0])


@dataclass(frozen=True)
class SampleTable:
    """Every sample of a track, from its sample table: what FFmpeg's index holds for a plain track."""

    dts: np.ndarray  # decode times, ticks of the media time scale from 0
    pos: np.ndarray  # file offset of each sample
    size: np.ndarray  # bytes
    key: np.ndarray  # sync samples (``stss``; all of them without one)


@dataclass(frozen=True)
class TrackFacts:
    rotation: int
    composition_offsets: np.ndarray | None  # ticks of the track's timescale, one per sample
    samples: SampleTable | None = None  # where ``all_samples`` could read the track and the edit list shows all
    #: every sample's file offset (``sample_positions``), even where ``samples`` is ``None`` (an edit list
    #: hiding some, sample groups, negative composition offsets): matches FFmpeg's index rows to
    #: ``composition_offsets`` where it left samples out
    sample_pos: np.ndarray | None = None
    #: a fragmented track's samples, ``moov``'s and every fragment's (0 for a plain track): FFmpeg reads the
    #: fragments of a ``sidx``-indexed file as it plays them, so its index at open may hold fewer
    fragmented_samples: int = 0
    #: digest of what FFmpeg copies from this track into a remuxed clip's ``moov``: the sample description
    #: (less ``btrt``, whose bit rates differ per file) and the display matrices (``tkhd``'s, ``mvhd``'s);
    #: ``""`` if unread
    setup: str = ""


def read_track_facts(fh: BinaryIO, file_size: int, track_id: int | None = None) -> TrackFacts:
    """Rotation (clockwise 0/90/180/270), composition offsets and, for a plain track, the sample table of
    the video track (``track_id``: FFmpeg's stream id, the MP4 track id). A part of ``moov`` that cannot be
    read is left out (FFmpeg opened the file; its own index stands in)."""
    moov = _find_moov(fh, file_size)
    try:
        found = _video_track(moov, track_id) if moov is not None else None
    except (struct.error, ValueError, IndexError) as exc:
        log.info("cannot read the video track's boxes: %s", exc)
        found = None
    if found is None or moov is None:
        return TrackFacts(0, None)
    track, exact = found
    movie = _movie_boxes(moov)
    try:
        mvhd = movie.get(b"mvhd", b"")
        rotation, setup = _rotation(track[b"tkhd"], mvhd), _setup_digest(track, mvhd)
    except (struct.error, ValueError, IndexError, KeyError) as exc:
        log.info("cannot read the track header: %s", exc)
        rotation, setup = 0, ""
    offsets = samples = positions = None
    fragmented_samples = 0
    try:
        offsets = _composition_offsets(track[b"ctts"]) if track.get(b"ctts") else None
        if b"mvex" in movie and exact:
            offsets, fragmented_samples = _with_fragments(fh, file_size, track, offsets)
        if exact:
            placed = sample_positions(track, file_size)
            positions = placed[0] if placed is not None else None
            table = all_samples(movie, track, offsets, file_size, placed=placed)
            # FFmpeg shifts the decode times of a track with negative composition offsets: its index, not this
            samples = table if table is not None and (offsets is None or offsets.min() >= 0) \
                and _edit_keeps_all_of(movie, track, table, offsets) else None
    except (struct.error, ValueError, IndexError, MemoryError) as exc:
        log.info("cannot read the sample table: %s", exc)
        samples = positions = None
    return TrackFacts(rotation, offsets, samples, setup=setup, sample_pos=positions,
                      fragmented_samples=fragmented_samples)


def _with_fragments(fh: BinaryIO, file_size: int, track: dict[bytes, bytes],
                    offsets: np.ndarray | None) -> tuple[np.ndarray | None, int]:
    """A fragmented track's composition offsets: the ``moov`` samples' (``offsets``), then each movie
    fragment's (``trun``), in file order, as FFmpeg's index lists the samples (``None`` where no fragment
    gives any: nothing is reordered); and how many samples the track holds in all."""
    tkhd = track[b"tkhd"]
    track_id = struct.unpack_from(">I", tkhd, 4 + (16 if tkhd[0] == 1 else 8))[0]
    stsz = track.get(b"stsz")
    in_moov = struct.unpack_from(">I", stsz, 8)[0] if stsz is not None and len(stsz) >= 12 else 0
    parts = [offsets if offsets is not None else np.zeros(in_moov, np.int64)]
    total = len(parts[0])
    found = False
    for moof in _top_level(fh, file_size, b"moof"):
        for kind, start, end in _boxes(moof, 0, len(moof)):
            if kind != b"traf":
                continue
            runs = list(_boxes(moof, start, end))
            tfhd = next((moof[a:b] for k, a, b in runs if k == b"tfhd"), None)
            if tfhd is None or len(tfhd) < 8 or struct.unpack_from(">I", tfhd, 4)[0] != track_id:
                continue
            for k, a, b in runs:
                if k == b"trun":
                    part, given = _trun_offsets(moof[a:b])
                    parts.append(part)
                    total += len(part)
                    found = found or given
        if total > _MAX_SAMPLES:
            raise ValueError("the fragments count more samples than a track holds")
    return (np.concatenate(parts) if found or offsets is not None else None), total


def _trun_offsets(trun: bytes) -> tuple[np.ndarray, bool]:
    """A track run's per-sample composition offsets (zeros where it gives none), and whether it gives them."""
    flags = struct.unpack_from(">I", trun, 0)[0] & 0xFFFFFF
    count = struct.unpack_from(">I", trun, 4)[0]
    at = 8 + (4 if flags & 0x1 else 0) + (4 if flags & 0x4 else 0)  # data offset, first sample's flags
    fields = [bit for bit in (0x100, 0x200, 0x400, 0x800) if flags & bit]
    if 0x800 not in fields:
        return np.zeros(count, np.int64), False
    if at + count * 4 * len(fields) > len(trun):
        raise ValueError("track run runs past its box")
    table = np.frombuffer(trun, dtype=">u4", count=count * len(fields), offset=at).reshape(count, len(fields))
    cts = table[:, fields.index(0x800)].astype(np.int64)
    return np.where(cts >= 1 << 31, cts - (1 << 32), cts), True  # signed in version 1; FFmpeg reads both so


def _top_level(fh: BinaryIO, file_size: int, wanted: bytes, limit: int = 16 << 20) -> Iterator[bytes]:
    """The payloads of the file's top-level ``wanted`` boxes (each up to ``limit`` bytes), reading only them."""
    for kind, pos, header, size in _top_level_boxes(fh, file_size):
        if kind == wanted and size - header <= limit:
            fh.seek(pos + header)
            yield fh.read(size - header)


def _setup_digest(track: dict[bytes, bytes], mvhd: bytes) -> str:
    """See ``TrackFacts.setup`` (FFmpeg writes the product of the movie's and the track's matrices)."""
    stsd, tkhd = track.get(b"stsd"), track[b"tkhd"]
    if stsd is None or struct.unpack_from(">I", stsd, 4)[0] != 1:
        return ""
    size, kind = struct.unpack_from(">I4s", stsd, 8)
    entry_end = min(8 + size, len(stsd))
    fields_end = 8 + 8 + 78  # the visual sample entry's fixed fields, then its boxes
    digest = hashlib.sha1(kind + stsd[16:fields_end])
    for child, start, end in _boxes(stsd, fields_end, entry_end):
        if child != b"btrt":
            digest.update(stsd[start - 8:end])
    digest.update(tkhd[_matrix_at(tkhd, b"tkhd"):][:36])
    if mvhd:
        digest.update(mvhd[_matrix_at(mvhd, b"mvhd"):][:36])
    return digest.hexdigest()


def _full_box_table(payload: bytes, columns: int, dtype: str = ">u4", header: int = 8) -> np.ndarray:
    """The entries of a full box holding a count then ``columns`` numbers per entry, as an int64 array."""
    (count,) = struct.unpack_from(">I", payload, header - 4)
    width = np.dtype(dtype).itemsize
    if header + count * columns * width > len(payload):
        raise ValueError("table runs past its box")
    return np.frombuffer(payload, dtype=dtype, count=count * columns, offset=header).astype(np.int64) \
        .reshape(count, columns)


def timescale(box: bytes) -> int:
    """``mvhd``/``mdhd``'s time scale; ``ValueError`` for one FFmpeg would not take as it is (0, or past a
    signed 32-bit number, which it replaces)."""
    scale = struct.unpack_from(">I", box, 20 if box[0] == 1 else 12)[0]
    if not 0 < scale < 1 << 31:
        raise ValueError(f"time scale {scale}")
    return int(scale)


def _edit_keeps_all_of(movie: dict[bytes, bytes], track: dict[bytes, bytes], table: SampleTable,
                       offsets: np.ndarray | None) -> bool:
    cts = table.dts if offsets is None else table.dts + offsets
    return b"elst" not in track or _edit_keeps_all(movie.get(b"mvhd"), track, cts)


#: ``all_samples``'s ``placed`` when the caller has not computed it
_NOT_GIVEN: Any = object()


def all_samples(movie: dict[bytes, bytes], track: dict[bytes, bytes], offsets: np.ndarray | None,
                file_size: int, *, placed: tuple[np.ndarray, np.ndarray] | None = _NOT_GIVEN) -> SampleTable | None:
    """Every sample of the track, computed from ``stts``/``stsz``/``stsc``/``stco``/``stss`` whatever its edit
    list shows, or ``None`` where FFmpeg may read the tables otherwise: fragments, tables this does not cover,
    several sample descriptions, values FFmpeg clamps or stops at (a decode time step or sample past 31 or 29
    bits, sync samples out of order). ``placed``: ``sample_positions(track, file_size)`` where the caller has
    it already (it was computed twice per probe)."""
    if b"mvex" in movie:  # fragments
        return None
    kinds = track.get(b"stbl:", b"").split(b",")
    if not set(kinds) <= _PLAIN_TABLE or len(kinds) != len(set(kinds)):
        return None
    stsd, stts, stsc, mdhd = (track.get(k) for k in (b"stsd", b"stts", b"stsc", b"mdhd"))
    if stsd is None or stts is None or stsc is None or mdhd is None:
        return None
    if struct.unpack_from(">I", stsd, 4)[0] != 1 or np.any(_full_box_table(stsc, 3)[:, 2] != 1):
        return None
    timescale(mdhd)
    if placed is _NOT_GIVEN:
        placed = sample_positions(track, file_size)
    if placed is None:
        return None
    pos, size = placed
    n = len(pos)
    times = _full_box_table(stts, 2)  # (count, delta): bounded by the box, unlike the counts in it
    if int(times[:, 0].sum()) != n or np.any(times[:, 1] >= 1 << 31):
        return None  # FFmpeg takes a step past 31 bits as a correction (or clamps it)
    deltas = np.repeat(times[:, 1], times[:, 0])
    dts = np.concatenate(([0], np.cumsum(deltas)[:-1])).astype(np.int64)
    key = np.ones(n, dtype=bool)
    stss = track.get(b"stss")
    if stss is not None:
        sync = _full_box_table(stss, 1)[:, 0]
        # FFmpeg walks the list with one cursor: an entry out of order or repeated stalls it
        if not len(sync) or sync[0] < 1 or sync[-1] > n or np.any(np.diff(sync) <= 0):
            return None
        key[:] = False
        key[sync - 1] = True
    if offsets is not None and len(offsets) != n:
        return None
    return SampleTable(dts, pos, size, key)


def sample_positions(track: dict[bytes, bytes], file_size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Every sample's file offset and size from ``stsz``/``stsc``/``stco`` (``co64``), or ``None`` where the
    tables do not add up or hold what FFmpeg would not index (a sample past 29 bits). Sample groups, sample
    descriptions and the other boxes FFmpeg reads do not move samples."""
    stsc, stsz = track.get(b"stsc"), track.get(b"stsz")
    chunks_box = track.get(b"stco") if b"co64" not in track else track[b"co64"]
    if stsc is None or stsz is None or chunks_box is None or (b"stco" in track and b"co64" in track):
        return None
    sample_size, n = struct.unpack_from(">II", stsz, 4)
    if n == 0 or n > _MAX_SAMPLES:
        return None
    if sample_size:
        if n * sample_size > file_size:
            return None
        size = np.full(n, sample_size, dtype=np.int64)
    else:
        size = np.frombuffer(stsz, dtype=">u4", count=n, offset=12).astype(np.int64)
    if int(size.max()) >= 1 << 29:  # FFmpeg's index stores 30 bits and stops at a sample past 0x3FFFFFFF
        return None
    chunk_pos = _full_box_table(chunks_box, 1, ">u8" if b"co64" in track else ">u4")[:, 0]
    if len(chunk_pos) and int(chunk_pos.min()) < 0:  # a 64-bit offset past 2^63
        return None
    runs = _full_box_table(stsc, 3)  # (first chunk, samples per chunk, description index)
    first, per_chunk = runs[:, 0], runs[:, 1]
    if not len(runs) or first[0] != 1 or np.any(np.diff(first) <= 0) or first[-1] > len(chunk_pos) \
            or np.any(per_chunk <= 0):
        return None
    chunk_runs = np.diff(np.append(first, len(chunk_pos) + 1))
    if int((per_chunk * chunk_runs).sum()) != n:
        return None
    in_chunk = np.repeat(per_chunk, chunk_runs)  # samples in each chunk
    chunk_of = np.repeat(np.arange(len(chunk_pos)), in_chunk)
    before = np.cumsum(size) - size  # bytes of the samples before each, over the whole track
    pos = chunk_pos[chunk_of] + before - before[(np.cumsum(in_chunk) - in_chunk)[chunk_of]]
    return pos, size


def _edit_keeps_all(mvhd: bytes | None, track: dict[bytes, bytes], cts: np.ndarray) -> bool:
    """Whether the edit list is one edit (after an optional empty one) showing every sample at normal rate:
    it starts at or before the first picture and ends after the last one starts (FFmpeg drops a sample whose
    composition time reaches the edit's end, the duration rescaled to the media time scale)."""
    elst = track[b"elst"]
    (count,) = struct.unpack_from(">I", elst, 4)
    entry, step = (">Qqi", 20) if elst[0] == 1 else (">Iii", 12)  # (segment duration, media time, rate 16.16)
    if 8 + count * step > len(elst):
        return False
    edits = [struct.unpack_from(entry, elst, 8 + step * i) for i in range(count)]
    if edits and edits[0][1] == -1:
        edits = edits[1:]  # an empty edit delays the track: a shift of every time, which the index drops
    if len(edits) != 1 or edits[0][2] != _RATE_ONE or edits[0][1] < 0:
        return False
    duration, media_time = int(edits[0][0]), int(edits[0][1])
    if mvhd is None or duration == 0 or media_time > int(cts.min()):
        return False
    shown = duration * timescale(track[b"mdhd"]) // timescale(mvhd)  # rounded down: FFmpeg's may be one more
    return int(cts.max()) < media_time + shown
