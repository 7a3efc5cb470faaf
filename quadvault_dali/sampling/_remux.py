"""Small in-memory MP4s holding only the packets a sample plan needs, for DALI's video decoder.

DALI's ``fn.decoders.video`` decodes encoded bytes and numbers frames by presentation order. Handing it
whole files would make it read (and index) every byte; instead each *clip* built here holds:

* keyframe mode: the chosen keyframe packets only, read at their index position (nothing else of the
  file is read), one after another, frames ``0..n-1``;
* exact mode: for each group of sampling times that share a keyframe, the packets from that keyframe
  up to the last one the wanted frames need (a decode-order prefix of the GOP, so it decodes), several
  such *runs* per clip, bounded in frames and bytes however long the video.

Timestamps are rewritten to a regular grid (pts = rank in presentation order, dts = decode position
minus the reorder delay) so the clip is a well-formed constant-rate stream whatever the source was
(VFR, edit lists, gaps). Runs are simply concatenated: each starts at a keyframe and leading
pictures of open GOPs are dropped, so the stream stays decodable. (Ending runs with an H.264/HEVC
end-of-sequence NAL unit was tried: FFmpeg's HEVC decoder then drops the pictures still waiting for
output, so it is not done.)
"""

from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, Iterable, Iterator, Sequence

import av
import numpy as np
from av.codec.codec import UnknownCodecError

from .._nal import length_size_of
from ..errors import DecodeError
from ..probe import CodecSetup, PacketIndex, codec_setup, open_container, probed_setup, rewound
from ._mp4_join import Skeleton, framed, mp4_frame, skeleton
from ._pictures import clean_start, nal_length_size, one_temporal_layer, opens_cleanly, unreferenced
from ._uncrop import Uncropped, avcc_signal, uncrop_config, uncrop_packet
from ._plan import SamplePlan
from ._reader import CountingFile

log = logging.getLogger(__name__)

_TICK = 3600  # clip time base 1/90000, 25 "frames" per second: only the order matters to DALI
_CLIP_TB = Fraction(1, 90000)
#: A single run (keyframe to last needed packet) larger than this is refused rather than buffered.
MAX_RUN_BYTES = 512 << 20
#: Clips up to this size keep their packets so several can be merged into one DALI sample (a second copy
#: in memory); bigger ones (exact-mode runs of long GOPs) gain nothing from merging and keep one copy.
MERGEABLE_BYTES = 32 << 20
#: In-order clips are joined under a rebuilt index (``_mp4_join``), not muxed by PyAV; benchmarks turn it off
#: for their A/B rows (``sampling_bench`` layouts ending in ``m``, ``prep_bench --mux``).
JOIN_IN_ORDER = True
#: Containers whose packets are found by seeking to the byte position the prober's demux pass saw them at
#: (``byte_position``): MPEG-TS, whose seeks by time land by byte estimates and overshoot the wanted keyframe,
#: even from 0 (every exact run of a file with B-frames failed; keyframe mode took the next keyframe).
BYTE_SEEK_FORMATS = frozenset({"mpegts"})
#: Containers whose top is found by a byte seek to 0 (``seek_top``): even a seek by time to a tick before an
#: MPEG-PS stream's start lands past an H.264 keyframe whose decode time precedes its time (MPEG-2's it found)
TOP_BY_BYTE_FORMATS = frozenset({"mpegts", "mpeg"})
#: Exact runs leave out the pictures nothing references (``unreferenced``); benchmarks turn it off for their A/B
#: rows (``scan_bench`` layouts ending in ``f``).
SKIP_UNREFERENCED = True
#: Codecs whose packets FFmpeg's MP4 muxer writes as given, once a set-up's first packet came out unchanged
#: (``_mp4_join.skeleton``): AV1 is not among them, its OBUs are filtered in every packet.
_JOINABLE_CODECS = frozenset({"h264", "hevc", "vp9"})
#: codec parameters FFmpeg may write into the sample description (``fiel``) or that may not be where
#: ``CodecSetup`` looks: part of a skeleton's key wherever it is kept, with the stream's ``CodecSetup``
_SETUP_FACTS = ("field_order", "profile")


class Skeletons:
    """Skeletons of joined clips (``None``: that set-up is not joinable) by stream set-up, least recently used
    out. One is shared by all MP4 videos whose tracks FFmpeg copies alike (``VideoInfo.setup``); a video
    without that digest keeps its own, and each merge template its own."""

    def __init__(self, kept: int) -> None:
        self._kept = kept
        self._items: "OrderedDict[tuple, Skeleton | None]" = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple, make: Callable[[], Skeleton | None]) -> Skeleton | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        made = make()  # two threads making the same one at once: both are FFmpeg's, either will do
        with self._lock:
            self._items[key] = made
            self._items.move_to_end(key)
            while len(self._items) > self._kept:
                self._items.popitem(last=False)
        return made


#: Made per video, PyAV's mux of one packet (with the GIL held) was a seventh of the prepare threads' GIL
#: time on 8-s clips (2-core EPYC, py-spy ``--gil``): videos of one camera share their skeletons here.
SHARED_SKELETONS = Skeletons(64)
#: Decoded full-size pixels one clip may hold (``frame_budget``): 48 frames of 1080p, ~300 MB of RGB.
CLIP_PIXELS = 48 * 1920 * 1080


@dataclass
class SourcePacket:
    """One packet of the source video stream: its bytes and its true presentation time."""

    data: bytes
    pts_s: float
    dts_s: float
    is_key: bool
    #: the bytes as the file has them, where ``data`` holds an uncropped in-band SPS (``Clip.cropped``)
    original: bytes | None = None


@dataclass
class _Run:
    packets: list[SourcePacket]
    wanted: list[float] = field(default_factory=list)  # pts of the frames to output, ascending


#: What a decoder must be set up with to decode a clip: codec, its configuration record (avcC/hvcC/...),
#: coded size and pixel format. Clips with equal signatures can be decoded by one decoder set-up.
Signature = tuple[str, bytes, int, int, str]


@dataclass
class Clip:
    """An MP4 in memory plus which of its frames to decode and what they stand for.

    A clip joined under a skeleton (``_mp4_join``) keeps its packets and the bytes around them, and joins them
    into its MP4 (``data``) only when that is read: a clip merged with others into one DALI sample never
    needs its own, and the join was the cutter's largest copy (with the GIL held below 1 MiB)."""

    _data: bytes | None  # the MP4, once made (``data``)
    frames: np.ndarray  # int32 indices in the clip's presentation order, for DALI's ``frames``
    times: list[float]  # source presentation time (s) of each wanted frame
    packets: int = 0
    runs: list[_Run] = field(default_factory=list, repr=False)  # its packets, kept so clips can be merged
    signature: Signature | None = None
    #: (height, width) of the picture to keep, as fractions of the decoded one from its top-left corner:
    #: below 1 where the clip's H.264/HEVC SPS was uncropped (``_uncrop``) and decodes to the coded size
    roi: tuple[float, float] = (1.0, 1.0)
    #: an uncropped clip's original set-up (its stream's SPS with the cropping), for ``cropped``
    cropped_signature: Signature | None = None
    #: wanted frames it (and a sample merged from it) may hold for the streaming decoder; ``None``: it is
    #: decoded per DALI sample, within the pixel budget (the gpu backend sets it when cutting)
    stream_cap: int | None = None
    #: what goes before and after its packets in its MP4 (``_mp4_join.mp4_frame``), until ``data`` is made
    _frame: tuple[bytes, bytes] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    @property
    def data(self) -> bytes:
        """The clip's MP4, joined from its packets on first use where it was not made when cut."""
        data = self._data
        if data is None:
            frame = self._frame  # once: another thread may finish the join and drop it meanwhile
            packets = [p.data for run in self.runs for p in run.packets]
            if frame is None or not packets:
                raise ValueError("a clip without its MP4, or without the packets to join it from")
            data = self._data = framed(frame, packets)
            self._frame = None
        return data

    @property
    def data_bytes_held(self) -> int:
        """Bytes of its MP4 made so far (0 until ``data`` joins it)."""
        return len(self._data) if self._data is not None else 0

    @property
    def can_crop_back(self) -> bool:
        return self.roi != (1.0, 1.0) and self.cropped_signature is not None and bool(self.runs)

    def cropped(self) -> "Clip":
        """This uncropped clip as the file has it: the original parameter sets, the picture as displayed.
        For a decoder that refuses the rewrite (``DaliSampler`` tries it on a failure)."""
        if not self.can_crop_back:
            raise ValueError("only an uncropped clip that kept its packets can be cropped back")
        runs = [_Run([SourcePacket(p.original if p.original is not None else p.data, p.pts_s, p.dts_s, p.is_key)
                      for p in run.packets], run.wanted) for run in self.runs]
        template, skeletons = _template(self)
        clip = mux_clip(template, runs, self.cropped_signature, skeletons=skeletons)
        clip.times, clip.stream_cap = list(self.times), self.stream_cap
        return clip

    @property
    def opens_cleanly(self) -> bool:
        """Whether it may follow another clip in one stream (its first keyframe resets the picture order)."""
        return bool(self.runs) and self.signature is not None and \
            opens_cleanly(self.runs[0].packets[0].data, self.signature[0],
                          length_size_of(self.signature[0], self.signature[1]))


def stream_setup(stream: av.video.stream.VideoStream) -> CodecSetup:
    """``stream``'s codec parameters as after a full probe (``probe.codec_setup``): the same after a quick open
    (``open_container`` keeps none it cannot settle), as they are where even a full probe decoded nothing."""
    return codec_setup(stream) or probed_setup(stream)


def clip_signature(stream: av.video.stream.VideoStream) -> Signature:
    ctx, setup = stream.codec_context, stream_setup(stream)
    return ctx.name, bytes(ctx.extradata or b""), setup.width, setup.height, setup.pix_fmt or ""


#: what the MP4 box headers and index add to a clip's packets, and the most one write buffer holds
_MUX_HEADROOM = 256 << 10
_MUX_BUFFER_MAX = 128 << 20


def mux_clip(template: av.video.stream.VideoStream, runs: Sequence[_Run], signature: Signature | None = None,
             roi: tuple[float, float] = (1.0, 1.0), cropped_signature: Signature | None = None,
             skeletons: Skeletons | None = None, setup: str = "") -> Clip:
    """Writes ``runs`` (each starting at a keyframe) into one MP4 with regular, rank-based timestamps.

    Where the ``signature`` differs from the template's set-up (an uncropped H.264/HEVC stream, or such a
    clip cropped back) the MP4 carries the signature's configuration record and picture size: for an
    uncropped stream the coded size, so FFmpeg-based demuxers and decoders agree with the SPS.

    In-order clips are joined (``_mp4_join``) on the skeleton of the stream set-up, kept in ``skeletons``
    (whose scope the caller chooses: see ``Skeletons``; ``setup`` is the source track's digest there) or
    made for this clip alone.
    """
    packets: list[SourcePacket] = []
    for run in runs:
        if not run.packets or not run.packets[0].is_key:
            raise ValueError("every run must start with a keyframe packet")
        packets.extend(run.packets)
    order = np.argsort(np.array([p.pts_s for p in packets]), kind="stable")
    rank = np.empty(len(packets), np.int64)
    rank[order] = np.arange(len(packets))
    delay = int(max(0, np.max(np.arange(len(packets)) - rank))) if packets else 0
    sorted_pts = np.array([packets[i].pts_s for i in order])
    wanted = [t for run in runs for t in run.wanted]
    frames = np.searchsorted(sorted_pts, np.array(wanted)).astype(np.int32)

    frame = None
    if JOIN_IN_ORDER and packets and template.codec_context.name in _JOINABLE_CODECS \
            and bool(np.all(rank == np.arange(len(packets)))):
        first = packets[0]
        skel = (skeletons or Skeletons(1)).get(
            _setup_key(template, signature, setup),
            lambda: skeleton(_pyav_mux(template, [first], np.zeros(1, np.int64), 0, signature), first.data))
        if skel is not None:
            frame = mp4_frame(skel, [p.data for p in packets], [p.is_key for p in packets])
    if frame is not None and len(frame[0]) + sum(len(p.data) for p in packets) + len(frame[1]) <= MERGEABLE_BYTES:
        return Clip(None, frames, wanted, len(packets), list(runs), signature, roi, cropped_signature, _frame=frame)
    data = _pyav_mux(template, packets, rank, delay, signature) if frame is None \
        else framed(frame, (p.data for p in packets))
    if len(data) > MERGEABLE_BYTES:  # not worth a second copy of its packets: it decodes alone
        return Clip(data, frames, wanted, len(packets), [], None, roi, cropped_signature)
    return Clip(data, frames, wanted, len(packets), list(runs), signature, roi, cropped_signature)


def packets_clip(runs: Sequence[_Run], signature: Signature | None, roi: tuple[float, float] = (1.0, 1.0),
                 cropped_signature: Signature | None = None) -> Clip:
    """``runs`` as a clip without an MP4 (``Clip.data`` empty): for a decoder fed the packets themselves
    (``_ffmpeg_decoder``), which would only demux a muxed one again. ``frames`` count the wanted frames in
    time order; only DALI reads them as indices, and it is never given such a clip."""
    wanted = [t for run in runs for t in run.wanted]
    return Clip(b"", np.arange(len(wanted), dtype=np.int32), wanted, sum(len(run.packets) for run in runs),
                list(runs), signature, roi, cropped_signature)


def _setup_key(template: av.video.stream.VideoStream, signature: Signature | None, setup: str) -> tuple:
    """What FFmpeg's one-packet mux of ``template`` set up as ``signature`` depends on: with the source track's
    ``setup`` digest, what two videos' templates must share for one skeleton to serve both."""
    ctx = template.codec_context
    return (signature or clip_signature(template), stream_setup(template),
            tuple(str(getattr(ctx, name, None)) for name in _SETUP_FACTS), setup)


def _copied_stream(out: av.container.OutputContainer,
                   template: av.video.stream.VideoStream) -> av.video.stream.VideoStream:
    """A stream of ``out`` for ``template``'s packets. PyAV looks a video template's codec up as an encoder named as
    its decoder: AV1's decoder is "libdav1d", which names no encoder, so every AV1 clip failed to cut and exact
    mode decoded the whole stream (a corpus review's find). Such a template's own codec is taken as it is."""
    try:
        return out.add_stream_from_template(template)
    except UnknownCodecError:
        return out.add_stream_from_template(template, opaque=True)


def _pyav_mux(template: av.video.stream.VideoStream, packets: Sequence[SourcePacket], rank: np.ndarray, delay: int,
              signature: Signature | None) -> bytes:
    """``packets`` (decode order) as FFmpeg muxes them into an MP4, presentation order ``rank``."""
    buf = io.BytesIO()
    # FFmpeg's write buffer holds the whole clip: with the default 32 KiB, the MP4 muxer's flushes and its
    # seek back to the 'mdat' size went through Python file calls, 2.2 ms for eight 2160p keyframes (0.4 ms).
    room = min(sum(len(p.data) for p in packets) + _MUX_HEADROOM, _MUX_BUFFER_MAX)
    with av.open(buf, "w", format="mp4", buffer_size=room) as out:
        stream = _copied_stream(out, template)
        stream.time_base = _CLIP_TB
        _set_up(stream.codec_context, stream_setup(template))
        if signature is not None and signature != clip_signature(template):
            _, extradata, width, height, _ = signature
            stream.codec_context.extradata = extradata
            stream.codec_context.width, stream.codec_context.height = width, height
        for j, src in enumerate(packets):
            packet = av.Packet(src.data)
            packet.stream = stream
            packet.time_base = _CLIP_TB
            packet.pts = int(rank[j]) * _TICK
            packet.dts = (j - delay) * _TICK
            packet.duration = _TICK
            packet.is_keyframe = src.is_key
            out.mux(packet)
    return buf.getvalue()


def _set_up(ctx: av.video.codeccontext.VideoCodecContext, setup: CodecSetup) -> None:
    """Gives a clip's stream what a full probe of its source would have (after a quick one, the SPS's facts)."""
    ctx.width, ctx.height = setup.width, setup.height
    ctx.color_range, ctx.color_primaries, ctx.color_trc = setup.color_range, setup.color_primaries, setup.color_trc
    ctx.colorspace = setup.colorspace
    if setup.sample_aspect_ratio is not None:
        ctx.sample_aspect_ratio = setup.sample_aspect_ratio


def uncropped_signature(signature: Signature, done: Uncropped) -> Signature:
    """``signature`` with the uncropped configuration record and the coded picture size."""
    name, _, _, _, pix_fmt = signature
    return name, done.extradata, done.crop.coded_width, done.crop.coded_height, pix_fmt


def can_follow(clip: Clip, previous: Clip) -> bool:
    """Whether ``clip`` may be appended to ``previous`` in one stream (``merge_clips``)."""
    return (previous.signature is not None and clip.signature == previous.signature and clip.roi == previous.roi
            and clip.cropped_signature == previous.cropped_signature and clip.stream_cap == previous.stream_cap
            and clip.opens_cleanly and not (previous.runs and clip.runs
                                            and repeats_a_picture(previous.runs[-1], clip.runs[0])))


def repeats_a_picture(previous: _Run, run: _Run) -> bool:
    """Whether ``run``'s keyframe is in ``previous`` already.

    A run reaches past the next keyframe when a wanted picture is a leading picture of that keyframe (decoded
    after it, shown before it), as with keyframes one frame apart at x265 scene cuts; and a GOP holding more
    sampling times than a clip's frame budget gives runs from the same keyframe. Back to back, the keyframe's
    second copy (relabelled BLA) has the first one's picture order count in the same sequence: FFmpeg drops it
    as a duplicate, so the two runs go in separate streams.
    """
    first = run.packets[0]
    return any(p.is_key and p.pts_s == first.pts_s and len(p.data) == len(first.data) for p in previous.packets)


def merge_clips(clips: Sequence[Clip]) -> Clip:
    """One clip holding ``clips`` back to back (see ``can_follow``): the wanted frames of all, in order.

    Each clip handed to DALI's video decoder pays a fixed set-up (demuxer, NVDEC parser, frame buffers,
    often a new hardware decoder) that dwarfs decoding a dozen keyframes; a library of short videos
    decodes several videos per set-up this way. Times are shifted so the clips follow one another;
    ``times`` keeps the source times.
    """
    if len(clips) == 1:
        return clips[0]
    template, skeletons = _template(clips[0])
    runs: list[_Run] = []
    offset = 0.0
    for clip in clips:
        stamps = [p.pts_s for run in clip.runs for p in run.packets]
        shift = offset - min(stamps)
        runs.extend(_Run([SourcePacket(p.data, p.pts_s + shift, p.dts_s + shift, p.is_key, p.original)
                          for p in run.packets], [t + shift for t in run.wanted]) for run in clip.runs)
        offset += max(stamps) - min(stamps) + 1.0
    merged = mux_clip(template, runs, clips[0].signature, clips[0].roi, clips[0].cropped_signature, skeletons)
    merged.times = [t for clip in clips for t in clip.times]
    merged.stream_cap = clips[0].stream_cap
    return merged


#: Template streams kept for ``merge_clips``, one per codec set-up (``Signature``), least recently used out,
#: each with the skeletons of the clips muxed from it.
TEMPLATES_KEPT = 16
_templates: "OrderedDict[Signature, tuple[av.container.InputContainer, Skeletons]]" = OrderedDict()
_templates_lock = threading.Lock()


def _template(clip: Clip) -> tuple[av.video.stream.VideoStream, Skeletons]:
    """A stream with ``clip``'s codec set-up to mux merged clips from, opened once per set-up, and its skeletons.

    Opening an MP4 probes it, and for H.264 FFmpeg's probe decodes frames on the CPU (~4 ms at 1080p):
    once per set-up, not once per merged sample. The template holds one keyframe, not the clip. An evicted
    template is not closed here: a thread may still be muxing from it; it closes when unreferenced.
    """
    key = clip.signature
    if key is None:
        raise ValueError("a clip without its packets cannot be merged")
    with _templates_lock:
        kept = _templates.get(key)
        if kept is not None:
            _templates.move_to_end(key)
            return kept[0].streams.video[0], kept[1]
    with av.open(io.BytesIO(clip.data)) as source:
        first = _Run(clip.runs[0].packets[:1], [])
        header = mux_clip(source.streams.video[0], [first], key, clip.roi).data
    kept = (av.open(io.BytesIO(header)), Skeletons(4))
    with _templates_lock:
        _templates[key] = kept
        _templates.move_to_end(key)
        while len(_templates) > TEMPLATES_KEPT:
            _templates.popitem(last=False)
    return kept[0].streams.video[0], kept[1]


class _ClipPacker:
    """Gathers runs into clips within a frame and a byte budget.

    A run whose keyframe does not reset the picture order (``opens_cleanly``) starts a clip of its own:
    after another run, its picture order counts can wrap and the decoder puts frames out of order (HEVC
    CRA keyframes 240 frames apart came out as 7.7 s, 0 s, ...). Hardware encoders write IDR keyframes,
    so drone footage keeps several runs per clip.
    """

    def __init__(self, template: av.video.stream.VideoStream, codec: str, max_frames: int,
                 max_bytes: int = 1 << 62, uncrop: bool = False, setup: str = "", mux: bool = True) -> None:
        self.template, self.codec, self.setup, self.mux = template, codec, setup, mux
        self.skeletons = SHARED_SKELETONS if setup else Skeletons(4)  # see ``Skeletons``
        self.signature = clip_signature(template)
        self.roi = (1.0, 1.0)
        self.uncropped: Uncropped | None = None  # this stream's SPS without its cropping (``_uncrop``)
        self.cropped_signature: Signature | None = None  # the original set-up, while the clips are uncropped
        if uncrop:
            self._uncrop()
        self.max_frames, self.max_bytes = max_frames, max_bytes
        self.runs: list[_Run] = []
        self.frames = self.size = 0
        self._times: set[float] = set()  # the clip's packets' times: a frame is found by its time

    def _uncrop(self) -> None:
        """Clips of this stream carry its SPS without the bottom/right cropping (see ``_uncrop``), and decode to
        the coded size; the region of interest keeps the picture as FFmpeg shows it. For H.264 that can be the
        track header's size, smaller than the SPS's within its last macroblocks (FFmpeg's "container cropping":
        the GoPro Karma drone's 854x480 over an 864x480 SPS): such a stream's clips say the SPS's size too, so
        the decoder puts out the picture the SPS codes and the region cuts the track's from it, as for padding."""
        name, extradata, shown_width, shown_height, pix_fmt = self.signature
        done = uncrop_config(self.codec, extradata)
        if done is not None:
            decoded = done.crop.coded_width, done.crop.coded_height
            signature = uncropped_signature(self.signature, done)
            if self.codec != "h264":  # FFmpeg's HEVC decoder shows the SPS's picture whatever the track says
                self.roi = done.crop.region
                self.cropped_signature, self.signature, self.uncropped = self.signature, signature, done
                return
        else:
            signal = avcc_signal(extradata) if self.codec == "h264" else None
            size = signal.display_size if signal is not None else None
            if size is None or size == (shown_width, shown_height):
                return
            decoded, signature = size, (name, extradata, size[0], size[1], pix_fmt)
        if shown_width > decoded[0] or shown_height > decoded[1]:
            return
        self.roi = shown_height / decoded[1], shown_width / decoded[0]
        self.cropped_signature, self.signature, self.uncropped = self.signature, signature, done

    def _uncropped_packets(self, run: _Run) -> list[SourcePacket] | None:
        """``run``'s packets with any in-band SPS uncropped, or ``None`` where that cannot be done."""
        done = self.uncropped
        assert done is not None
        out = []
        for p in run.packets:
            try:
                data = uncrop_packet(p.data, self.codec, done.crop, done.length_size)
            except ValueError as exc:
                log.info("keeping the stream's cropping from %.2fs on: %s", p.pts_s, exc)
                return None
            out.append(SourcePacket(data, p.pts_s, p.dts_s, p.is_key, p.data if data is not p.data else None))
        return out

    def add(self, run: _Run) -> Clip | None:
        """Adds ``run``; returns the clip it closed, if any."""
        done = None
        if self.uncropped is not None:  # an SPS repeated in the stream must say what the configuration record says
            packets = self._uncropped_packets(run)
            if packets is None:  # this stream keeps its cropping from here on (the clips so far stay as cut)
                done = self.finish()
                self.signature, self.roi, self.uncropped = self.cropped_signature, (1.0, 1.0), None  # type: ignore[assignment]
                self.cropped_signature = None
            else:
                run.packets = packets
        first = run.packets[0]
        framing = length_size_of(self.codec, self.signature[1])
        run.packets[0] = SourcePacket(clean_start(first.data, self.codec, framing), first.pts_s, first.dts_s,
                                      first.is_key, None if first.original is None
                                      else clean_start(first.original, self.codec, framing))
        run_bytes = sum(len(p.data) for p in run.packets)
        if self.runs and (self.frames + len(run.wanted) > self.max_frames or self.size + run_bytes > self.max_bytes
                          or not opens_cleanly(run.packets[0].data, self.codec, framing)
                          or repeats_a_picture(self.runs[-1], run)
                          # two recordings joined with ``cat`` repeat their times: in one clip, the second's
                          # frames took the first's pictures (frames are found by time)
                          or not self._times.isdisjoint(p.pts_s for p in run.packets)):
            done = self.finish()
        self.runs.append(run)
        self._times.update(p.pts_s for p in run.packets)
        self.frames += len(run.wanted)
        self.size += run_bytes
        return done

    def finish(self) -> Clip | None:
        if not self.runs:
            clip = None
        elif self.mux:
            clip = mux_clip(self.template, self.runs, self.signature, self.roi, self.cropped_signature,
                            self.skeletons, self.setup)
        else:
            clip = packets_clip(self.runs, self.signature, self.roi, self.cropped_signature)
        self.runs, self.frames, self.size = [], 0, 0
        self._times = set()
        return clip


def decode_clip(clip: Clip) -> Iterator[tuple[av.VideoFrame, float]]:
    """Decodes a clip with PyAV (the cpu backend's exact mode): its wanted frames with their source times.

    Frames are recognised by their rank-based timestamp, not counted, so a packet that fails to decode
    never shifts another frame onto the wrong second; they come out in time order, and only once all of
    the clip's wanted frames decoded: otherwise ``DecodeError``, and the caller decodes in order instead.
    """
    wanted = dict(zip(clip.frames.tolist(), clip.times))
    found: dict[int, av.VideoFrame] = {}
    with av.open(io.BytesIO(clip.data)) as src:
        stream = src.streams.video[0]
        stream.codec_context.thread_count = 2
        for packet in src.demux(stream):
            try:
                frames = packet.decode()
            except av.error.FFmpegError:
                continue
            for frame in frames:
                rank = round(frame.pts * frame.time_base / (_TICK * _CLIP_TB)) if frame.pts is not None else -1
                if rank in wanted:
                    found[rank] = frame
    if len(found) < len(wanted):
        raise DecodeError(f"{len(wanted) - len(found)} of the frames wanted from the run at "
                          f"{min(clip.times):.2f}s did not decode")
    for rank in sorted(wanted, key=wanted.__getitem__):
        yield found[rank], wanted[rank]


def largest_gop_bytes(index: PacketIndex) -> int:
    """Bytes of the largest keyframe-to-keyframe run in the index (what one exact-mode run may hold)."""
    keys = np.flatnonzero(index.is_key)
    if len(keys) == 0:
        return int(index.size.sum())
    return int(np.add.reduceat(index.size, keys).max())


def frame_budget(width: int, height: int, pixels: int = CLIP_PIXELS) -> int:
    """Decoded frames per clip so one clip's full-size RGB output stays near ``pixels`` (~300 MB)."""
    return max(1, pixels // max(1, width * height))


# --- keyframe mode -----------------------------------------------------------------------------

def keyframe_clips(plan: SamplePlan, template: av.video.stream.VideoStream, fh: CountingFile,
                   max_frames: int, uncrop: bool = False, max_bytes: int = MERGEABLE_BYTES,
                   mux: bool = True) -> Iterator[Clip]:
    """Clips of the plan's keyframes, read straight from their index positions (MP4/MOV); each within
    ``max_bytes`` too (queued clips are held in memory; up to ``MERGEABLE_BYTES`` they stay mergeable)."""
    index = plan.index
    packer = _ClipPacker(template, plan.info.codec, max_frames, max_bytes, uncrop=uncrop,
                         setup=plan.info.setup, mux=mux)
    for row in (int(r) for r in plan.key_packets):
        data = fh.read_at(int(index.pos[row]), int(index.size[row]))
        if len(data) < int(index.size[row]):
            raise DecodeError(f"keyframe at {index.pts[row]:.2f}s is cut off by the end of the file",
                              path=plan.info.path, hint="the file is truncated; re-copy it")
        t = round(float(index.pts[row]), 6)
        clip = packer.add(_Run([SourcePacket(data, t, t, True)], [t]))
        if clip is not None:
            yield clip
    clip = packer.finish()
    if clip is not None:
        yield clip


#: How far before a keyframe's time ``seek_keyframes`` seeks, in turn, until it reads the keyframe: MPEG-PS
#: seeks land on the first packet whose decode time reaches the target, past a reordered keyframe (whose decode
#: time precedes its time); ``inf``: from the top.
KEYFRAME_SEEK_MARGINS_S = (0.0, 0.25, 1.0, 5.0, float("inf"))


def seek_keyframes(plan: SamplePlan, container: av.container.InputContainer,
                   stream: av.video.stream.VideoStream) -> Iterator[tuple[av.Packet, float]]:
    """The plan's keyframe packets, each with its time, for containers without raw packet positions (MKV,
    WebM, TS, PS, ASF): seek to each (by byte where ``byte_position`` says) and read on to it. A TS keyframe that
    is not where the prober's pass saw it is a ``DecodeError``, never another keyframe standing in for it.

    A seek by time may land before the keyframe (ASF: on the one before) or past it (MPEG-PS): before, the
    packets up to it are read and dropped; past it, the seek goes earlier (``KEYFRAME_SEEK_MARGINS_S``; the
    margin that worked is where the next keyframe starts). Taking the first keyframe after the seek gave ASF
    each second's previous keyframe and MPEG-PS the next one.
    """
    index = plan.index
    start = index.origin_ticks if index.origin_ticks is not None else (stream.start_time or 0)  # the index's zero
    tb = stream.time_base
    first_margin = 0
    for row in plan.key_packets:
        t = round(float(plan.index.pts[row]), 6)
        position = byte_position(container, plan.index, int(row))
        if position is not None:
            _seek(container, stream, t, position, exact=True)
            for packet in container.demux(stream):
                if packet.pts is None or not packet.is_keyframe or packet.size == 0:
                    continue
                pts = round(float((packet.pts - start) * tb), 6)
                if abs(pts - t) > 1e-3:
                    raise DecodeError(f"the keyframe at {t:.2f}s is not at the byte position the index gives "
                                      f"(found {pts:.2f}s there)", path=plan.info.path)
                yield packet, pts
                break
            continue
        for i in range(first_margin, len(KEYFRAME_SEEK_MARGINS_S)):
            margin = KEYFRAME_SEEK_MARGINS_S[i]
            if t - margin < 0:
                seek_top(container, stream)
            else:
                _seek(container, stream, t - margin, None, exact=margin == 0)
            packet = _read_to_keyframe(container, stream, t, start, tb)
            if packet is not None:
                first_margin = min(i, len(KEYFRAME_SEEK_MARGINS_S) - 2)  # never from the top for every keyframe
                yield packet, t
                break
        else:
            raise DecodeError(f"seeking cannot reach the keyframe at {t:.2f}s", path=plan.info.path)


def _read_to_keyframe(container: av.container.InputContainer, stream: av.video.stream.VideoStream, t: float,
                      start: int, tb: Fraction) -> av.Packet | None:
    """The keyframe at ``t``, reading on from where a seek landed; ``None`` once a packet shown after ``t`` shows
    the seek landed past it (every picture before a keyframe in decode order is shown before it)."""
    for packet in container.demux(stream):
        if packet.pts is None or packet.size == 0:
            continue
        pts = round(float((packet.pts - start) * tb), 6)
        if packet.is_keyframe and abs(pts - t) <= 1e-3:
            return packet
        if pts > t + 1e-3:
            return None
    return None


def demuxed_keyframe_clips(plan: SamplePlan, container: av.container.InputContainer,
                           stream: av.video.stream.VideoStream, max_frames: int, uncrop: bool = False,
                           max_bytes: int = MERGEABLE_BYTES, mux: bool = True) -> Iterator[Clip]:
    """Keyframe clips for containers whose index gives no raw positions (MKV, WebM, TS): ``seek_keyframes``."""
    packer = _ClipPacker(stream, plan.info.codec, max_frames, max_bytes, uncrop=uncrop,
                         setup=plan.info.setup, mux=mux)
    for packet, pts in seek_keyframes(plan, container, stream):
        clip = packer.add(_Run([SourcePacket(bytes(packet), pts, pts, True)], [pts]))
        if clip is not None:
            yield clip
    clip = packer.finish()
    if clip is not None:
        yield clip


# --- exact mode --------------------------------------------------------------------------------

def _groups(plan: SamplePlan) -> list[tuple[int, float, float, list[float]]]:
    """Grid times grouped by the last keyframe at or before them: (keyframe row, its time, seek time, times).

    The seek time lies halfway to the next keyframe: MP4 seeks by decode time, which precedes the
    keyframe's presentation time by the reorder delay, so seeking to the keyframe's own time could
    land one GOP early.
    """
    index = plan.index
    rows = np.flatnonzero(index.is_key)
    rows = rows[np.argsort(index.pts[rows], kind="stable")]
    keys = index.pts[rows]
    groups: dict[int, list[float]] = {}
    for t in plan.grid:
        i = max(0, int(np.searchsorted(keys, t + 1e-9, side="right")) - 1)
        i = int(np.searchsorted(keys, keys[i], side="left"))  # of keyframes at one time (two recordings
        groups.setdefault(i, []).append(float(t))          # joined with ``cat``), the first, as decoding meets it
    out = []
    for i, times in sorted(groups.items()):
        later = np.flatnonzero(keys > keys[i])
        nxt = float(keys[later[0]]) if len(later) else float(keys[i]) + 1.0
        out.append((int(rows[i]), float(keys[i]), (float(keys[i]) + nxt) / 2, times))
    return out


def nearest_index(pts_sorted: np.ndarray, t: float) -> int:
    """Where in ``pts_sorted`` the frame nearest ``t`` is (ties to the earlier frame), as the cpu backend picks it."""
    right = min(int(np.searchsorted(pts_sorted, t, side="left")), len(pts_sorted) - 1)
    left = max(right - 1, 0)
    return left if abs(t - pts_sorted[left]) <= abs(pts_sorted[right] - t) else right


def nearest_time(pts_sorted: np.ndarray, t: float) -> float:
    """The time of the frame nearest ``t`` (``nearest_index``)."""
    return float(pts_sorted[nearest_index(pts_sorted, t)])


class _RunBuilder:
    """One run's packets as the stream yields them: from the keyframe at ``key_time`` until no later packet
    can be nearer to ``times`` than one already taken."""

    def __init__(self, key_time: float, times: list[float], path: object) -> None:
        self.key_time, self.last_time, self.path = key_time, times[-1], path
        self.packets: list[SourcePacket] = []
        self.done = False
        self._size = 0
        self._best_after = float("inf")

    def offer(self, packet: av.Packet, pts: float, dts: float) -> bool | None:
        """Takes ``packet`` if the run needs it. ``None``: not started and ``packet`` is a keyframe past
        ``key_time`` (the run's keyframe was not in the stream where it was looked for)."""
        if not self.packets:
            if not packet.is_keyframe or pts < self.key_time - 1e-3:
                return False  # before the wanted keyframe: read on to it
            if pts > self.key_time + 1e-3:
                return None
        elif pts < self.packets[0].pts_s:
            return False  # leading picture of an open GOP: needs the previous GOP, never wanted
        self.packets.append(SourcePacket(bytes(packet), pts, dts, bool(packet.is_keyframe)))
        self._size += packet.size
        if self._size > MAX_RUN_BYTES:
            raise DecodeError(f"the keyframe gap at {self.packets[0].pts_s:.1f}s holds more than "
                              f"{MAX_RUN_BYTES >> 20} MiB", path=self.path,
                              hint="too long to sample exactly on the GPU; use --device cpu")
        if pts >= self.last_time:
            self._best_after = min(self._best_after, pts)
        # Every later packet is presented after the nearest frame already seen. (Matroska gives no dts
        # for the first packets after a seek; a pts standing in for it must not end the run.)
        if packet.dts is not None and dts >= self._best_after:
            self.done = True
        return True


def _packet_times(packet: av.Packet, start: int, tb: Fraction) -> tuple[float, float] | None:
    """A packet's presentation and decode times in seconds from the stream's start; ``None``: nothing to take."""
    if packet.size == 0 or (packet.pts is None and packet.dts is None):
        return None
    pts = round(float(((packet.pts if packet.pts is not None else packet.dts) - start) * tb), 6)
    dts = float(((packet.dts if packet.dts is not None else packet.pts) - start) * tb)
    return pts, dts


def byte_position(container: av.container.InputContainer, index: PacketIndex, row: int) -> int | None:
    """Where to seek for packet ``row`` by byte: its position from the prober's pass, where seeks go by byte
    (``BYTE_SEEK_FORMATS``) and the pass saw one; else ``None`` (seek by time). By row, not by time: two
    recordings joined with ``cat`` repeat their times."""
    if container.format.name.split(",")[0] not in BYTE_SEEK_FORMATS or index.pos[row] < 0:
        return None
    return int(index.pos[row])


def _seek(container: av.container.InputContainer, stream: av.video.stream.VideoStream, seconds: float,
          position: int | None, exact: bool = False) -> None:
    """To the keyframe at or before ``seconds``: at its byte ``position`` where one is given. ``exact``:
    ``seconds`` is a packet's own time, rounded to the nearest tick (a millisecond time base makes 2.667 s
    2666.9999 ticks, and the floor of it landed on the keyframe before)."""
    if position is not None:
        container.seek(position, unsupported_byte_offset=True)
    else:
        ticks = seconds / stream.time_base
        container.seek((stream.start_time or 0) + int(round(ticks) if exact else np.floor(ticks)), stream=stream,
                       backward=True, any_frame=False)


def seek_top(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> None:
    """To the stream's first packet: by a byte seek to 0 in MPEG-PS and TS (a seek by time lands by decode
    time, past a first keyframe decoded before its time), elsewhere a tick before its start, or its start where
    a demuxer refuses a time before its first keyframe."""
    if container.format.name.split(",")[0] in TOP_BY_BYTE_FORMATS:
        container.seek(0, unsupported_byte_offset=True)  # the top, exactly
        return
    start = stream.start_time or 0
    try:
        container.seek(start - 1, stream=stream, backward=True, any_frame=False)
    except av.error.FFmpegError:
        container.seek(start, stream=stream, backward=True, any_frame=False)


def _demux_run(container: av.container.InputContainer, stream: av.video.stream.VideoStream, seek_s: float | None,
               key_time: float, times: list[float], path: object, strict: bool,
               position: int | None = None) -> list[SourcePacket] | None:
    """Packets from the keyframe at ``key_time`` on, found by seeking to ``seek_s`` (``None``: the top; or byte
    ``position``) and reading forward. ``None`` if ``strict`` and the seek landed past that keyframe; not
    strict, that is a ``DecodeError``.
    """
    start = stream.start_time or 0
    if seek_s is None:
        seek_top(container, stream)
    else:
        _seek(container, stream, seek_s, position)
    run = _RunBuilder(key_time, times, path)
    for packet in container.demux(stream):
        times_s = _packet_times(packet, start, stream.time_base)
        if times_s is None:
            continue
        if run.offer(packet, *times_s) is None:
            if strict:
                return None  # the seek overshot the keyframe
            raise DecodeError(f"seeking cannot reach the keyframe at {key_time:.2f}s", path=path)
        if run.done:
            break
    return run.packets


def _read_run(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
              key_time: float, seek_s: float, times: list[float], path: object,
              position: int | None = None) -> list[SourcePacket]:
    """Demuxes from the keyframe at ``key_time`` until no later packet can be nearer to ``times``: from its byte
    ``position`` where there is one (``byte_position``), else by seeking to ``seek_s`` (and from the top if
    that overshoots)."""
    if position is not None:
        packets = _demux_run(container, stream, seek_s, key_time, times, path, strict=False, position=position)
    else:
        packets = _demux_run(container, stream, seek_s, key_time, times, path, strict=True)
        if not packets:  # overshot or nothing found: read from the top of the file instead
            packets = _demux_run(container, stream, None, key_time, times, path, strict=False)
    if not packets:
        raise DecodeError(f"no keyframe found at or before {times[0]:.2f}s", path=path)
    return packets


def picture_skipper(stream: av.video.stream.VideoStream, codec: str) -> Callable[[bytes], bool]:
    """Whether a packet of ``stream`` holds a picture nothing references (``unreferenced``, read with the
    stream's framing and layers): the one rule for the exact runs here and the cpu backend's in-order decode.
    Never while ``SKIP_UNREFERENCED`` is off (benchmarks' A/B rows)."""
    framing, single_layer = nal_length_size(stream), one_temporal_layer(stream)
    return lambda data: SKIP_UNREFERENCED and unreferenced(data, codec, framing, single_layer)


def exact_clips(plan: SamplePlan, container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                max_frames: int, max_bytes: int = 64 << 20, uncrop: bool = False,
                fh: CountingFile | None = None, mux: bool = True) -> Iterator[Clip]:
    """Clips of runs (keyframe .. last needed packet) holding the frame nearest every grid time, once.

    With ``fh`` and an index of raw packet positions (MP4), runs are read straight from the positions, as
    keyframes are (``_run_rows``, ``read_rows``): demuxing them through FFmpeg and the Python file was a third
    of exact mode's host time per frame. Otherwise they are demuxed after a seek (``_read_run``).
    """
    index = plan.index
    if index.hides_inside:
        raise DecodeError("its edit list hides pictures between the ones it shows: exact runs cannot be cut",
                          path=plan.info.path, hint="the CPU decoder samples it")
    if index.decode_order_times:
        raise DecodeError("its container stores decode times and its pictures are reordered (B-frames in AVI): "
                          "exact runs cannot be cut", path=plan.info.path, hint="the CPU decoder samples it")
    packer = _ClipPacker(stream, plan.info.codec, max_frames, max_bytes, uncrop=uncrop,
                         setup=plan.info.setup, mux=mux)
    skippable = picture_skipper(stream, plan.info.codec)
    direct = reads_at_positions(plan, fh)
    later_min = np.minimum.accumulate(np.round(index.pts, 6)[::-1])[::-1] if direct else index.pts
    key_rows = np.flatnonzero(index.is_key)
    last_emitted: float | None = None
    for key_row, key_time, seek_s, times in _groups(plan):
        position = None if direct else byte_position(container, index, key_row)
        for lo in range(0, len(times), max_frames):
            chunk = times[lo:lo + max_frames]
            if direct:
                rows = _run_rows(index, later_min, key_rows, key_row, chunk[-1])
                if int(index.size[rows].sum()) > MAX_RUN_BYTES:
                    raise DecodeError(f"the keyframe gap at {index.pts[key_row]:.1f}s holds more than "
                                      f"{MAX_RUN_BYTES >> 20} MiB", path=plan.info.path,
                                      hint="too long to sample exactly on the GPU; use --device cpu")
                times_of = [round(float(t), 6) for t in index.pts[rows]]
            else:
                packets = _read_run(container, stream, key_time, seek_s, chunk, plan.info.path, position)
                times_of = [p.pts_s for p in packets]
            pts_sorted = np.sort(np.array(times_of))
            wanted: list[float] = []
            for t in chunk:
                near = nearest_time(pts_sorted, t)
                if near != last_emitted and (not wanted or near != wanted[-1]):
                    wanted.append(near)
                    last_emitted = near
            if not wanted:
                continue
            # Keep the decode-order prefix through the last packet any wanted frame needs, less the pictures
            # nothing references that are not wanted themselves (the decoder never needs them).
            keep = set(wanted)
            need = max(i for i, t in enumerate(times_of) if t in keep)
            if direct:
                assert fh is not None
                packets = read_rows(fh, index, rows[:need + 1], plan.info.path)
            run = [p for i, p in enumerate(packets[: need + 1]) if i == 0 or p.pts_s in keep or not skippable(p.data)]
            clip = packer.add(_Run(run, wanted))
            if clip is not None:
                yield clip
    clip = packer.finish()
    if clip is not None:
        yield clip


def _run_rows(index: PacketIndex, later_min: np.ndarray, key_rows: np.ndarray, key_row: int,
              last_time: float) -> np.ndarray:
    """The index rows a demux from the keyframe at ``key_row`` takes into a run ending at ``last_time``
    (``_RunBuilder``'s rule, from the index alone): decode order from the keyframe, less the pictures presented
    before it (an open GOP's leading pictures), through the first row after which nothing is presented before
    the earliest frame at or after ``last_time`` seen so far. ``later_min[r]``: the earliest time from row r
    on; ``key_rows``: the keyframes' rows. Looked at no further than the second keyframe past ``last_time``."""
    ahead = key_rows[key_rows > key_row]
    ahead = ahead[index.pts[ahead] > last_time]
    stop = int(ahead[1]) if len(ahead) > 1 else len(index)
    pts = np.round(index.pts[key_row:stop], 6)
    best_after = np.minimum.accumulate(np.where(pts >= last_time, pts, np.inf))
    earliest_next = np.r_[later_min[key_row + 1:stop], np.inf if stop == len(index) else later_min[stop]]
    settled = np.flatnonzero(earliest_next >= best_after - 1e-9)
    end = int(settled[0]) + 1 if len(settled) else len(pts)
    rows = np.arange(key_row, key_row + end)
    # as the demuxer does, no empty samples (they are no pictures)
    return rows[((pts[:end] >= pts[0]) & (index.size[key_row:key_row + end] > 0)) | (rows == key_row)]


def read_rows(fh: CountingFile, index: PacketIndex, rows: np.ndarray, path: object) -> list[SourcePacket]:
    """The packets of ``rows`` (decode order), read at their index positions; rows stored back to back in
    the file are read in one call (a GOP's samples usually are, between chunks of sound)."""
    pos, size = index.pos[rows], index.size[rows]
    starts = np.flatnonzero(np.r_[True, pos[1:] != pos[:-1] + size[:-1]])
    ends = np.r_[starts[1:], len(rows)]
    # Python numbers from here: a GOP run holds ~30 packets, and numpy scalars cost per packet and field
    positions, sizes, keys = pos.tolist(), size.tolist(), index.is_key[rows].tolist()
    times = [round(t, 6) for t in index.pts[rows].tolist()]
    packets: list[SourcePacket] = []
    for a, b in zip(starts.tolist(), ends.tolist()):
        first = positions[a]
        span = positions[b - 1] + sizes[b - 1] - first
        data = fh.read_at(first, span)
        if len(data) < span:
            raise DecodeError(f"the packet at {times[b - 1]:.2f}s is cut off by the end of the file",
                              path=path, hint="the file is truncated; re-copy it")
        view = memoryview(data)
        for i in range(a, b):
            at = positions[i] - first
            packets.append(SourcePacket(bytes(view[at:at + sizes[i]]), times[i], times[i], keys[i]))
    return packets


def reads_at_positions(plan: SamplePlan, fh: CountingFile | None) -> bool:
    """Whether the plan's packets are read through ``fh`` at their index positions (else FFmpeg demuxes them):
    MP4 indexes give raw positions, but an edit list hiding the last pictures leaves out of the index a P-frame
    shown B-frames refer to, so exact runs of such a file are demuxed (``PacketIndex.hides_end``)."""
    index = plan.index
    return fh is not None and index.raw_positions and not (plan.mode == "exact" and index.hides_end)


def start_clips(plan: SamplePlan, container: av.container.InputContainer, fh: CountingFile | None, *,
                stream_cap: int | None, clip_pixels: int, uncrop: bool, by_path: bool = False, mux: bool = True
                ) -> tuple[av.container.InputContainer, Iterator[Clip]]:
    """How a video's cutting starts, in a prepare thread or a prepare worker alike: the container to cut from
    (``rewound`` where the probe demuxed to the end) and the plan's clips, each within ``stream_cap`` frames
    or, without one, the pixel budget ``clip_pixels``. The caller closes the container it gets. ``by_path``:
    FFmpeg reads the file by its path (``ThreadReads`` counts it), as the probed container did; ``fh`` is
    then only for the reads made here."""
    probed = container
    if by_path and fh is not None and not reads_at_positions(plan, fh):
        # this plan demuxes packets through FFmpeg: not by path, where a disk error (EIO) inside a packet comes
        # back as the packet cut short, only the next read failing (a run ending on it would be "ok")
        container.close()
        fh.seek(0)
        container = open_container(plan.info.path, fh, quick=True)
    else:
        container = rewound(container, plan.info.path, None if by_path else fh, plan.index)
    budget = stream_cap or frame_budget(plan.info.coded_width, plan.info.coded_height, clip_pixels)
    try:
        return container, iter(plan_clips(plan, container, fh, max_frames=budget, uncrop=uncrop, mux=mux))  # type: ignore[arg-type]
    except BaseException:
        if container is not probed:  # reopened here: the caller only knows the one it probed with
            container.close()
        raise


def plan_clips(plan: SamplePlan, container: av.container.InputContainer, fh: CountingFile,
               max_frames: int | None = None, uncrop: bool = False, mux: bool = True) -> Iterable[Clip]:
    """The clips that carry ``plan``: keyframes read directly where the index allows, else demuxed.

    ``uncrop``: H.264/HEVC clips decode to their coded size and say what to keep in ``Clip.roi`` (for DALI's
    NVDEC decoder cache, see ``_uncrop``); a decoder that crops by itself must not be given them.
    ``mux=False``: clips of packets only, no MP4 (``packets_clip``), for a decoder fed packets.
    """
    stream = container.streams[plan.info.stream_index]  # the file's stream index, not the n-th video
    budget = max_frames or frame_budget(plan.info.coded_width, plan.info.coded_height)
    if plan.mode == "exact":
        return exact_clips(plan, container, stream, budget, uncrop=uncrop, fh=fh, mux=mux)
    if reads_at_positions(plan, fh):
        return keyframe_clips(plan, stream, fh, budget, uncrop=uncrop, mux=mux)
    return demuxed_keyframe_clips(plan, container, stream, budget, uncrop=uncrop, mux=mux)
