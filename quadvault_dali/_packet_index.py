"""The video stream's packets in decode order (time, file position, size, keyframe flag): from the container
index where there is one (an MP4's sample table), else from one demux pass that decodes nothing. The samplers
plan from it; keyframes that cannot start decoding (intra-refresh recovery points) are not keyframes in it."""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from ._frame_times import stores_decode_times
from ._mp4 import SampleTable
from ._nal import length_size_of
from ._packet_heads import SEI_HEAD_BYTES, packet_head, starts_decoding
from .errors import VideoOpenError, unexpected_failure

#: FFmpeg's names of the MP4 family, whose index holds every sample
MP4_FORMATS = ("mov", "mp4")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PacketIndex:
    """The video stream's packets in decode order, from the container index (no file data read).

    ``pts`` are presentation times in seconds from the stream's first frame. Containers whose index
    holds only decode times (MP4) get ``pts = dts + the first frame's composition offset``, exact for
    the keyframes of the usual fixed-reorder-delay encoders.
    """

    pts: np.ndarray  # float64 seconds
    pos: np.ndarray  # int64 byte offset in the file
    size: np.ndarray  # int64 bytes
    is_key: np.ndarray  # bool
    from_container_index: bool  # True: MP4 sample table; positions/sizes are the raw packet bytes
    #: whether the edit list hides pictures between shown ones (several edits): FFmpeg gives hidden and shown
    #: pictures the same times there, so a run cut from the stream could take one for the other
    hides_inside: bool = False
    #: whether the edit list hides pictures after the shown ones: they are not in the index, though shown
    #: B-frames may refer to them, so exact runs are demuxed (the stream has them), not read from the index
    hides_end: bool = False
    #: whether the times are in decode order although pictures are reordered (AVI with B-frames,
    #: ``_frame_times``): right as a set of times, not per packet, so runs cannot be cut by them
    decode_order_times: bool = False
    #: the stream tick ``pts`` count from where the demux pass chose it (the stream gave no start time: its first
    #: packet's); ``None``: the stream's start time
    origin_ticks: int | None = None

    @property
    def raw_positions(self) -> bool:
        """Whether ``pos``/``size`` locate each packet's bytes exactly (so they can be read directly)."""
        return self.from_container_index

    def __len__(self) -> int:
        return int(self.pts.shape[0])

    @property
    def keyframe_times(self) -> np.ndarray:
        """Every keyframe's time, hidden lead-in ones (negative, see ``_lead_in``) included: where decoding starts."""
        return np.sort(self.pts[self.is_key])

    @property
    def shown(self) -> np.ndarray:
        """Which packets are pictures the video shows (all but an edit list's hidden lead-in)."""
        return self.pts >= 0

    @property
    def shown_keyframe_times(self) -> np.ndarray:
        """The keyframes a viewer sees: what keyframe mode may sample."""
        return np.sort(self.pts[self.is_key & self.shown])


def read_packet_index(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                      path: Path, composition_offsets: np.ndarray | None = None,
                      samples: SampleTable | None = None, sample_pos: np.ndarray | None = None,
                      fragmented_samples: int = 0) -> PacketIndex:
    """Packet positions, sizes and times from the container index, demuxing only if there is none.

    MP4 index entries hold decode times; ``composition_offsets`` (from the ``ctts`` box, one per
    sample) turn them into presentation times. Without them, every packet is assumed to have the
    first packet's offset (true for streams without B-frames). ``samples``, the track's sample table
    where ``_mp4`` could read it, stands in for FFmpeg's entries (the same rows, without a Python object
    per packet). ``sample_pos``, every sample's file offset, matches FFmpeg's rows to their offsets where
    an edit list made FFmpeg leave samples out of its index.
    """
    tb = stream.time_base or Fraction(1, 90000)
    if samples is not None and container.format.name.split(",")[0] in MP4_FORMATS:
        pts_ticks = samples.dts if composition_offsets is None else samples.dts + composition_offsets
        pts = (pts_ticks - int(pts_ticks.min())).astype(np.float64) * float(tb)
        return PacketIndex(pts, samples.pos, samples.size, samples.key, True)
    entries = stream.index_entries
    # A sidx-indexed fragmented file (DASH) whose fragments FFmpeg has not all read yet: demux it whole instead
    # (its index at open held 40 of 180 samples: keyframes and seconds went missing).
    complete = len(entries) >= fragmented_samples
    if len(entries) > 1 and complete and container.format.name.split(",")[0] in MP4_FORMATS:
        n = len(entries)
        # one pass over PyAV's entries (each read builds a Python object): five passes took 2.6x as long, with
        # the GIL held (~45 ms against ~18 ms for a 10-minute 30 fps video)
        table = np.fromiter((v for e in entries for v in (e.timestamp, e.pos, e.size, e.is_keyframe, e.is_discard)),
                            np.int64, 5 * n).reshape(n, 5)
        shown = table[:, 4] == 0
        if not shown.any():
            raise VideoOpenError("the edit list shows none of the video's frames", path=path,
                                 hint="the file's edit list (elst) is damaged; re-export or remux it")
        offsets = _offsets_of_rows(table[:, 1], composition_offsets, sample_pos)
        if offsets is not None:
            pts_ticks = table[:, 0] + offsets
        else:
            first_shown = int(table[int(np.argmax(shown)), 0])
            pts_ticks = table[:, 0] + ((stream.start_time if stream.start_time is not None else first_shown)
                                       - first_shown)
        start, end = int(pts_ticks[shown].min()), int(pts_ticks[shown].max())
        keep = shown | _lead_in(table[:, 3] != 0, shown, pts_ticks, start)
        pts = (pts_ticks[keep] - start).astype(np.float64) * float(tb)
        return PacketIndex(pts, table[keep, 1], table[keep, 2], table[keep, 3] != 0, True,
                           hides_inside=bool((~shown & (pts_ticks >= start) & (pts_ticks <= end)).any()),
                           hides_end=bool((~shown & (pts_ticks > end)).any()))
    # No usable index (MPEG-TS, some MKV/WebM): demux every packet once, without decoding.
    rows: list[tuple[float, int, int, bool]] = []
    first: int | None = None
    stream_start = stream.start_time  # before the pass: FFmpeg sets it from the first packet with a decode time
    keys = _KeyCheck(stream)
    try:
        for packet in container.demux(stream):
            if packet.size == 0 or packet.pts is None:
                continue
            if first is None:
                first = packet.pts if stream_start is None else stream_start
            rows.append((float((packet.pts - first) * tb), packet.pos if packet.pos is not None else -1, packet.size,
                         packet.is_keyframe and keys.starts_decoding(packet)))
    except av.error.FFmpegError as exc:
        if isinstance(exc, OSError) and exc.errno == errno.EIO:  # a failing disk, not a file's damaged end
            raise unexpected_failure(exc, "reading its packets", path) from exc
        if not rows:
            raise VideoOpenError(f"cannot read packets: {exc}", path=path) from exc
    if not rows:
        raise VideoOpenError("video stream has no packets", path=path)
    arr = np.array(rows, dtype=object)
    return PacketIndex(arr[:, 0].astype(np.float64), arr[:, 1].astype(np.int64), arr[:, 2].astype(np.int64),
                       arr[:, 3].astype(bool), False, decode_order_times=stores_decode_times(container, stream),
                       origin_ticks=first if stream_start is None else None)


class _KeyCheck:
    """Which H.264/HEVC packets flagged as keyframes can start decoding (``starts_decoding``), asked in stream
    order: the second keyframe's head is read, and only where it cannot start decoding (periodic intra
    refresh) every later one's too; the first always can."""

    def __init__(self, stream: av.video.stream.VideoStream) -> None:
        self.codec = stream.codec_context.name
        self.length_size = length_size_of(self.codec, bytes(stream.codec_context.extradata or b""))
        self.seen = 0
        self.checking = self.codec in ("h264", "hevc")

    def starts_decoding(self, packet: Any) -> bool:
        """``packet``: a keyframe's ``av.Packet`` or its head's bytes."""
        self.seen += 1
        if not self.checking or self.seen == 1:
            return True
        head = packet if isinstance(packet, bytes) else bytes(memoryview(packet)[:SEI_HEAD_BYTES])
        ok = starts_decoding(head, self.codec, self.length_size) is not False
        if self.seen == 2 and ok:
            self.checking = False  # keyframes as usual: the rest are not read
        return ok


def random_access_keyframes(index: PacketIndex, path: Path, stream: av.video.stream.VideoStream) -> PacketIndex:
    """An MP4 index's keyframes less those that cannot start decoding (``_KeyCheck``: intra refresh's recovery
    points, which MP4 muxers list as sync samples). Exact runs and keyframe sampling both start at keyframes:
    from a recovery point FFmpeg decodes nothing (keyframe mode failed the whole video, "decoded only 1 of 4")
    and a GPU clip from one holds no picture it can show."""
    keys = _KeyCheck(stream)
    if not keys.checking or not index.from_container_index:
        return index
    is_key = index.is_key.copy()
    for row in np.flatnonzero(index.is_key):
        if not keys.checking:
            break
        try:
            head = packet_head(path, int(index.pos[row]), int(index.size[row]), keys.codec, keys.length_size)
        except OSError:
            break
        is_key[row] = keys.starts_decoding(head)
    if np.array_equal(is_key, index.is_key):
        return index
    log.info("%s: %d of its %d keyframes are intra-refresh recovery points, not pictures decoding can start "
             "at; sampling starts at the others", path, int(np.count_nonzero(index.is_key & ~is_key)),
             int(np.count_nonzero(index.is_key)))
    return replace(index, is_key=is_key)


def _offsets_of_rows(row_pos: np.ndarray, offsets: np.ndarray | None,
                     sample_pos: np.ndarray | None) -> np.ndarray | None:
    """The composition offset of each of FFmpeg's index rows: matched by file position where the sample
    positions are known (an edit list starting in a later GOP makes FFmpeg leave the GOPs before out of its
    index, so row i is no longer sample i), else by row where the counts agree; ``None`` if neither holds."""
    if offsets is None:
        return None
    if sample_pos is not None and len(sample_pos) == len(offsets):
        order = np.argsort(sample_pos, kind="stable")
        at = np.clip(np.searchsorted(sample_pos[order], row_pos), 0, len(order) - 1)
        if bool(np.all(sample_pos[order][at] == row_pos)):
            return offsets[order[at]]
    return offsets if len(offsets) == len(row_pos) else None


def _lead_in(is_key: np.ndarray, shown: np.ndarray, pts: np.ndarray, start: int) -> np.ndarray:
    """The hidden samples the first shown pictures decode from: a clip trimmed without re-encoding keeps
    its first GOP from the keyframe on, and its edit list hides the pictures before the cut. They stay in
    the index with negative times (decoded, never sampled); hidden samples after the shown ones do not.

    Where a shown picture leads that keyframe (an open GOP's RASL picture, shown before its CRA and decoded
    after it), the lead-in starts a keyframe earlier: the picture decodes from the GOP before.
    """
    first_shown = int(np.argmax(shown))
    keys = np.flatnonzero(is_key[:first_shown + 1])
    lead = np.zeros_like(shown)
    if len(keys) == 0:
        return lead
    k = len(keys) - 1
    while k > 0 and pts[keys[k]] > start:
        k -= 1
    lead[int(keys[k]):] = True
    return lead & (pts < start)
