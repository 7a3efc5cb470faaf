"""Probing: what a video is, read from its container without decoding a frame.

The scan probes 18,000 files before it decodes them; reading only headers and the sample index
keeps that to milliseconds per file, and validating here keeps bad files out of the GPU batches
(a file DALI cannot open fails its whole batch). Two exceptions read the rotation from the first decoded picture
(``_rotation_of_first_picture``): a Matroska file that may carry a Projection, and an H.264/HEVC stream whose
first packet holds a display-orientation SEI. The packet index the samplers plan from is built in
``_packet_index``; what a packet's leading NAL units say is read in ``_packet_heads``.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path
from stat import S_ISBLK, S_ISCHR, S_ISDIR, S_ISFIFO, S_ISREG, S_ISSOCK
from typing import Any, BinaryIO, Iterator

import av
import numpy as np

from ._mp4 import TrackFacts, cut_short, is_plain_mp4, read_track_facts
from ._nal import SEI_UNITS, length_size_of, sei_types
from ._packet_heads import is_slice, leading_units, orientation_sei_first, packet_head
from ._packet_index import MP4_FORMATS, PacketIndex, random_access_keyframes, read_packet_index
from .errors import (DecodeError, FileAccessError, QuadvaultError, UnsupportedCodecError, VideoOpenError,
                     unexpected_failure)
from .sampling._uncrop import Crop, SpsSignal, avcc_signal

log = logging.getLogger(__name__)
#: Pictures larger than this are refused at the probe: NVDEC's own limit, above every drone's and 8K camera's.
#: A 30-KB file whose header claimed 16384x8192 took ~2 GB per decode stream; four streams were killed by a
#: 4-GB memory limit, with every other video of the batch.
MAX_PICTURE_PIXELS = 8192 * 8192
#: A video stream with fewer frames than this is a still (FFmpeg's best-stream choice uses the same cut).
_STILL_FRAMES = 5


@dataclass(frozen=True)
class VideoInfo:
    """What the prober found; widths and heights are as displayed, after rotation."""

    path: Path
    size_bytes: int
    mtime_ns: int
    container: str
    codec: str
    pix_fmt: str | None
    coded_width: int
    coded_height: int
    width: int
    height: int
    rotation: int
    avg_fps: float
    real_fps: float
    duration_s: float
    frame_count: int
    bit_rate: int | None
    start_time_s: float
    keyframe_times: tuple[float, ...]
    has_audio: bool
    is_vfr: bool
    stream_index: int
    #: FFmpeg's name of the tagged YCbCr matrix ("bt709", "bt2020nc", ...; "unknown" when untagged)
    color_matrix: str = "unknown"
    #: FFmpeg's name of the tagged transfer function: "smpte2084" (PQ) and "arib-std-b67" (HLG) are HDR, which
    #: every decoder path tone-maps to SDR (``sampling._colour``); "bt709", ..., "unknown" when untagged
    color_transfer: str = "unknown"
    #: what FFmpeg copies from an MP4 track into a remuxed clip (``_mp4.TrackFacts.setup``); "" elsewhere.
    #: Internal: clips of videos with equal ones share a skeleton (``sampling._remux``)
    setup: str = ""
    #: the stored pixels' width over their height (sample aspect ratio; 4/3 for a 1440x1080 HDV picture shown
    #: 1920 wide). ``width``/``height`` are the stored picture's, turned: what a player shows is
    #: ``display_size``
    pixel_aspect: float = 1.0
    #: when the camera says it recorded the video (the container's ``creation_time``: MP4/MOV's movie header,
    #: Matroska's date), as UTC; ``None`` when the file has none. Unlike the file's mtime it survives a copy that
    #: does not keep times; many cameras write their local clock here as if it were UTC
    recorded_at: datetime | None = None

    @property
    def display_size(self) -> tuple[float, float]:
        """(width, height) as a player shows the picture: the stored size turned, its pixels' aspect applied
        along the stored width (the height after a quarter turn)."""
        if self.rotation % 180 == 90:
            return float(self.width), self.height * self.pixel_aspect
        return self.width * self.pixel_aspect, float(self.height)

    @property
    def max_keyframe_interval_s(self) -> float:
        """Longest gap between keyframes, counting the runs from the first frame to the first keyframe (a
        clip cut from a longer recording may start mid-GOP) and from the last keyframe to the end. A clip trimmed
        inside its only GOP shows no keyframe: the whole video is one gap."""
        if not self.keyframe_times:
            return self.duration_s
        edges = [min(0.0, self.keyframe_times[0]), *self.keyframe_times, max(self.duration_s, self.keyframe_times[-1])]
        return float(max(b - a for a, b in zip(edges, edges[1:])))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        data["keyframe_count"] = len(self.keyframe_times)
        data["max_keyframe_interval_s"] = round(self.max_keyframe_interval_s, 3)
        data["keyframe_times"] = [round(t, 3) for t in self.keyframe_times]
        data["recorded_at"] = self.recorded_at.isoformat() if self.recorded_at else None
        del data["setup"]
        return data


#: AVColorSpace values -> FFmpeg's names (libavutil/pixfmt.h)
_COLOR_MATRICES = {0: "rgb", 1: "bt709", 2: "unknown", 4: "fcc", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m",
                   8: "ycgco", 9: "bt2020nc", 10: "bt2020c", 11: "smpte2085", 14: "ictcp"}


#: PyAV up to 18 takes ``metadata_errors`` (badly encoded tags must not fail the open); PyAV 19 dropped the
#: argument and always tolerates them. Known after the first open.
_METADATA_ERRORS_KW: dict[str, str] = {"metadata_errors": "ignore"}


def _av_open(source: Any, **extra: Any) -> Any:
    global _METADATA_ERRORS_KW
    if isinstance(source, (str, os.PathLike)):
        # FFmpeg reads "Alps: best.mp4" as a URL of protocol "Alps" ("Protocol not found"); "/..." never is one
        source = os.path.abspath(source)
    # What this call passed, not the global: prepare threads open files at once, and one that failed on
    # PyAV 19 must still retry after another thread has already emptied the global (else its TypeError
    # escaped and failed the video).
    kw = _METADATA_ERRORS_KW
    try:
        return av.open(source, **kw, **extra)
    except TypeError as exc:
        if not kw or "metadata_errors" not in str(exc):
            raise
        _METADATA_ERRORS_KW = {}
        return av.open(source, **extra)


_COLOR_TRANSFERS = {1: "bt709", 2: "unknown", 4: "gamma22", 5: "gamma28", 6: "smpte170m", 7: "smpte240m",
                     8: "linear", 11: "iec61966-2-4", 13: "iec61966-2-1", 14: "bt2020-10", 15: "bt2020-12",
                     16: "smpte2084", 18: "arib-std-b67"}
#: the HDR transfer functions among them, as people call them (the samplers tone-map these, ``sampling._colour``)
HDR_NAMES = {"smpte2084": "PQ", "arib-std-b67": "HLG"}


def _colour_name(names: dict[int, str], sps_value: int | None, ctx: Any, attribute: str) -> str:
    """FFmpeg's name of an H.273 colour code point: the H.264 SPS's where it has one (FFmpeg's decoder lets it
    override the container's ``colr``), else what FFmpeg reports (``ctx.<attribute>``); "unknown" otherwise."""
    value = sps_value if sps_value is not None else getattr(ctx, attribute, None)
    try:
        return names.get(int(value), "unknown") if value is not None else "unknown"
    except (TypeError, ValueError):
        return "unknown"


def _color_transfer(ctx: Any, signal: SpsSignal | None = None) -> str:
    """The stream's transfer function."""
    return _colour_name(_COLOR_TRANSFERS, signal.transfer if signal is not None else None, ctx, "color_trc")


def _color_matrix(ctx: Any, signal: SpsSignal | None = None) -> str:
    """The stream's YCbCr matrix."""
    return _colour_name(_COLOR_MATRICES, signal.matrix if signal is not None else None, ctx, "colorspace")


#: Whether plain MP4/MOV files open with FFmpeg's stream probing cut short (``QUICK_PROBE_OPTIONS``) where the
#: caller asks (``open_container(quick=True)``: every prober and clip cutter); benchmarks and tests compare both
#: ways. FFmpeg's H.264 codec parameters then lack what only the SPS says; ``codec_setup`` reads it from there,
#: so the prober's facts and the clips muxed for DALI are those of a full open.
QUICK_MP4_PROBE = True
#: ``avformat_find_stream_info`` decodes H.264 pictures to learn their pixel format: one for an x264 file,
#: seven to twenty for camera files (a GoPro clip's open read half a second of video; a phone's 4K60 clip took
#: 168 ms of CPU), on every open, in every prepare thread. A plain MP4 has everything else in its ``moov``,
#: so its probing stops at the first packets and decodes nothing; the format and the rest come from the SPS
#: instead (``codec_setup``), and a file whose SPS does not tell them all is opened again without these.
QUICK_PROBE_OPTIONS = {"probesize": "32", "analyzeduration": "1", "skip_frame": "all"}


def _h264_signal(ctx: Any) -> SpsSignal | None:
    """What an H.264 stream's SPS says about its pictures' format (``None`` for other codecs)."""
    return avcc_signal(bytes(ctx.extradata or b"")) if ctx.name == "h264" else None


def _pix_fmt(ctx: Any, signal: SpsSignal | None) -> str | None:
    """FFmpeg's pixel format for the stream: as probed, or, where the probing decoded nothing, the one its
    H.264 decoder will give (the container's range decides yuvj420p where the SPS does not)."""
    if ctx.pix_fmt is not None or signal is None:
        return ctx.pix_fmt
    matrix = getattr(ctx, "colorspace", None)
    return signal.pix_fmt(container_full_range=int(getattr(ctx, "color_range", 0) or 0) == 2,
                          container_matrix=int(matrix) if matrix is not None else None)


def _plain_mp4(path: Path, file: BinaryIO | None) -> bool:
    """Whether ``path`` is a plain MP4/MOV (one ``moov``, no fragments); reads top-level box headers only."""
    try:
        size = path.stat().st_size
        if file is not None:
            try:
                return is_plain_mp4(file, size)
            finally:
                file.seek(0)
        with open(path, "rb", buffering=0) as fh:  # unbuffered: a box header costs its bytes, not 8 KiB
            return is_plain_mp4(fh, size)
    except (OSError, ValueError):
        return False  # the full open reports what is wrong


@dataclass(frozen=True)
class CodecSetup:
    """A video stream's codec parameters as FFmpeg's full probing leaves them: what the prober reports, and what a
    clip muxed from the stream carries in its sample description (``stsd``: the picture size, ``colr``, ``pasp``).

    A quick open (``QUICK_PROBE_OPTIONS``) decodes no picture, so FFmpeg's H.264 parameters then hold only what the
    container says; the rest is read from the SPS here as FFmpeg's decoder fills it in during a full open: the
    cropped picture size, the pixel format, and the range, colour description and sample aspect ratio where the
    container gives none (a value the container gives stays, as it does through a full probe). Clips cut after
    either open are then the same bytes (``test_clips_cut_after_a_quick_open_are_those_of_a_full_one``).
    """

    width: int
    height: int
    pix_fmt: str | None
    color_range: int
    color_primaries: int
    color_trc: int
    colorspace: int
    sample_aspect_ratio: Fraction | None


_UNSPECIFIED_COLOUR = 2  # AVCOL_PRI/TRC/SPC_UNSPECIFIED
_RANGE_LIMITED, _RANGE_FULL = 1, 2  # AVCOL_RANGE_MPEG, AVCOL_RANGE_JPEG
#: the VUI code points FFmpeg 8 has names for (primaries, transfer, matrix); its decoder makes any other
#: value "unspecified" (a review helper swept 0-255 of each)
_NAMED_COLOURS = (frozenset({1, 2, *range(4, 13), 22}), frozenset({1, 2, *range(4, 19)}),
                  frozenset({0, 1, 2, *range(4, 18)}))


def _sps_or(container_value: int, sps_value: int | None, named: frozenset[int]) -> int:
    """The container's colour code point, or where it says none, the SPS's as FFmpeg's decoder keeps it."""
    if container_value != _UNSPECIFIED_COLOUR or sps_value is None:
        return container_value
    return sps_value if sps_value in named else _UNSPECIFIED_COLOUR


def _sps_aspect(aspect: tuple[int, int] | None, width: int, height: int) -> Fraction | None:
    """The SPS's sample aspect ratio as FFmpeg's decoder sets it: a zero height read as 1, and none where it
    would squeeze either side of a ``width`` x ``height`` picture to nothing (``av_image_check_sar``)."""
    if aspect is None or not aspect[0]:
        return None
    num, den = aspect[0], aspect[1] or 1
    if num != den and (width * num // den if num < den else height * den // num) <= 0:
        return None
    return Fraction(num, den)


def probed_setup(stream: av.video.stream.VideoStream) -> CodecSetup:
    """``stream``'s codec parameters as FFmpeg's probing left them (see ``codec_setup`` for a quick open's)."""
    ctx = stream.codec_context
    return CodecSetup(int(ctx.width or 0), int(ctx.height or 0), ctx.pix_fmt, int(ctx.color_range or 0),
                      int(ctx.color_primaries), int(ctx.color_trc), int(ctx.colorspace),
                      ctx.sample_aspect_ratio or None)


def codec_setup(stream: av.video.stream.VideoStream) -> CodecSetup | None:
    """``stream``'s ``CodecSetup``; ``None`` where FFmpeg decoded no picture and its SPS does not settle it (no
    single SPS in the configuration record, one that does not parse, names no format FFmpeg's decoder would,
    crops the picture away, or codes fields: whether FFmpeg then calls it interlaced depends on its pictures).
    Where the first packet carries what a full probe would also read (its own SPS, an alternative transfer SEI),
    ``open_container`` does not keep the quick open (``_first_units_settled``)."""
    probed = probed_setup(stream)
    if probed.pix_fmt is not None:  # FFmpeg decoded a picture, or its parameters name the format
        return probed
    ctx = stream.codec_context
    signal = _h264_signal(ctx)
    if signal is None:
        return None
    pix_fmt, size = _pix_fmt(ctx, signal), signal.display_size
    if pix_fmt is None or size is None or not signal.frames_only:
        return None
    crop = signal.crop
    assert crop is not None  # ``display_size`` is ``None`` without it
    width, height = _container_cropped(probed.width, probed.height, crop, *size)
    sps_range = None if signal.full_range is None else _RANGE_FULL if signal.full_range else _RANGE_LIMITED
    named_primaries, named_transfers, named_matrices = _NAMED_COLOURS
    return CodecSetup(
        width, height, pix_fmt, probed.color_range or (sps_range or 0),
        _sps_or(probed.color_primaries, signal.primaries, named_primaries),
        _sps_or(probed.color_trc, signal.transfer, named_transfers),
        _sps_or(probed.colorspace, signal.matrix, named_matrices),
        probed.sample_aspect_ratio or _sps_aspect(signal.sample_aspect, width, height))


def _container_cropped(width: int, height: int, crop: Crop, sps_width: int, sps_height: int) -> tuple[int, int]:
    """The picture size FFmpeg's H.264 decoder gives: the container's (``width``, ``height``) where it only crops
    the SPS's picture further within its last macroblocks from the bottom/right (an 854x480 track of an SPS
    that codes 864x480), else the SPS's (``init_dimensions``' "container cropping")."""
    def _mb(n: int) -> int:
        return (n + 15) // 16

    if width > 0 and height > 0 and crop.top == 0 and crop.left == 0 and width <= sps_width \
            and height <= sps_height and _mb(width) == _mb(sps_width) and _mb(height) == _mb(sps_height):
        return width, height
    return sps_width, sps_height


#: an SEI message that sets the transfer characteristics FFmpeg's decoder reports (HLG in Sony's H.264)
_ALTERNATIVE_TRANSFER_SEI = 147


def _first_units_settled(path: Path, stream: av.video.stream.VideoStream, sps: bytes) -> bool:
    """Whether the H.264 stream's first packet leaves its set-up to the configuration record's ``sps``: no SPS of
    its own that differs (FFmpeg's probe decodes with the in-band one) and no alternative transfer SEI before
    its first slice. Reads at most its first 64 KiB, at its index position."""
    entries = stream.index_entries
    if not len(entries):
        return False
    first = entries[0]
    length_size = length_size_of("h264", bytes(stream.codec_context.extradata or b""))
    try:
        data = packet_head(path, int(first.pos), int(first.size), "h264", length_size)
    except (OSError, ValueError):
        return False
    for kind, start, end in leading_units(data, "h264", length_size):
        if is_slice(kind, "h264"):  # what follows the first slice is not the probe's
            return True
        if end > len(data):  # a parameter set or SEI longer than the head read
            return False
        if kind == 7 and data[start:end] != sps:
            return False
        if kind in SEI_UNITS["h264"] and _ALTERNATIVE_TRANSFER_SEI in sei_types(data[start + 1:end]):
            return False
    return False  # no slice in the head, or units not length-prefixed as the record says: the full probe's


def _quick_open_complete(container: av.container.InputContainer, path: Path) -> bool:
    """Whether a quickly probed container tells all a full probe would (``codec_setup``), or has no video."""
    if not container.streams.video:
        return True
    if not any(_described(s) for s in container.streams.video):
        return False  # the full open says what is wrong
    stream = main_video_stream(container)
    if codec_setup(stream) is None:
        return False
    signal = _h264_signal(stream.codec_context)
    return signal is None or stream.codec_context.pix_fmt is not None or _first_units_settled(path, stream, signal.nal)


#: creation times before this are a camera whose clock was never set (MP4's zero is 1904, others write 1970)
_EARLIEST_RECORDING = datetime(1980, 1, 2, tzinfo=timezone.utc)


def recorded_at(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> datetime | None:
    """The container's creation time (FFmpeg's ``creation_time`` tag, from the file or its video track) as UTC;
    ``None`` when absent, unparsable or before any digital camera's clock."""
    for tags in (container.metadata, stream.metadata):
        text = (tags or {}).get("creation_time")
        if not text:
            continue
        try:
            when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            continue
        when = when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)
        if when >= _EARLIEST_RECORDING:
            return when
    return None


def read_recorded_at(path: str | os.PathLike[str]) -> datetime | None:
    """Only the recording time of a video file (``recorded_at``), for rows probed before it was recorded;
    ``None`` when the file does not open or has none."""
    try:
        with _av_open(path, options=QUICK_PROBE_OPTIONS) as container:
            return recorded_at(container, container.streams.video[0]) if container.streams.video else None
    except (OSError, av.FFmpegError, UnicodeDecodeError, ValueError):
        return None


def read_color_transfer(path: str | os.PathLike[str]) -> str | None:
    """Only the transfer function of a video file (``VideoInfo.color_transfer``), for rows probed before it was
    recorded; ``None`` when the file is not a readable video. Remembered per file as it is now (a resume asks,
    then the shards' upgrade asks again)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _color_transfer_of(os.fspath(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=1 << 17)
def _color_transfer_of(path: str, size: int, mtime_ns: int) -> str | None:
    try:
        return probe_video(path).color_transfer
    except (QuadvaultError, OSError):
        return None


def _seconds(value: int | None, time_base: Fraction | None) -> float | None:
    if value is None or time_base is None:
        return None
    return float(value * time_base)


_NOT_FOUND_ERRNOS = (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP)


def special_file_kind(mode: int) -> str | None:
    """What a path that is not a regular file is (``None``: a regular file)."""
    if S_ISREG(mode):
        return None
    for test, kind in ((S_ISFIFO, "a named pipe"), (S_ISSOCK, "a socket"), (S_ISCHR, "a character device"),
                       (S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return "a special file"


def open_container(path: Path, file: BinaryIO | None = None, *,
                   hwaccel: "av.codec.hwaccel.HWAccel | None" = None,
                   plain_mp4: bool | None = None, quick: bool = False) -> av.container.InputContainer:
    """Opens ``path`` with PyAV, turning every failure into a ``VideoOpenError`` that says why.

    ``file`` (an open binary file of ``path``) lets callers count or control the bytes read; ``hwaccel``
    makes FFmpeg decode on that device (frames still arrive in system memory). ``quick``: a plain MP4/MOV opens
    with FFmpeg's stream probing cut short (``QUICK_PROBE_OPTIONS``); its H.264 codec parameters then lack what
    only the SPS says, so callers read them through ``codec_setup``; ``plain_mp4``: whether the file is one,
    where the caller knows (else its box headers are read to tell).
    """
    try:  # one stat for what exists(), is_dir() and two more stat() calls each asked for
        st = path.stat()
    except OSError as exc:
        if exc.errno in _NOT_FOUND_ERRNOS:  # what Path.exists() reads as "not there"
            raise FileAccessError("file not found", path=path) from None
        if isinstance(exc, PermissionError):  # its folder cannot be searched (chmod 000 on the folder)
            raise FileAccessError("permission denied", path=path,
                                  hint="check the read permission of the file and its folders") from None
        # EIO and the like: one file's error, not the caller's whole run's (a reel stopped for it)
        raise FileAccessError(f"cannot read the file: {exc.strerror or exc}", path=path) from None
    if S_ISDIR(st.st_mode):
        raise VideoOpenError("is a folder, not a video file", path=path)
    kind = special_file_kind(st.st_mode)
    if kind is not None:  # never opened: reading a named pipe waits for a writer, a device never ends
        raise VideoOpenError(f"is {kind}, not a video file", path=path)
    if not os.access(path, os.R_OK):
        raise FileAccessError("permission denied", path=path, hint="check the file's read permission")
    if st.st_size == 0:
        raise VideoOpenError("empty file (0 bytes)", path=path)
    source = file if file is not None else str(path)
    if quick and QUICK_MP4_PROBE and hwaccel is None \
            and (plain_mp4 if plain_mp4 is not None else _plain_mp4(path, file)):
        try:
            container = _av_open(source, options=QUICK_PROBE_OPTIONS)
        except Exception:  # noqa: BLE001 - the full open below says what is wrong
            container = None
        if container is not None:
            if _quick_open_complete(container, path):
                return container
            container.close()
        if file is not None:
            file.seek(0)
    try:
        extra = {"hwaccel": hwaccel} if hwaccel is not None else {}
        container = _av_open(source, **extra)
    except av.error.InvalidDataError as exc:
        raise VideoOpenError(
            f"not a readable video container ({exc.strerror or exc})", path=path,
            hint="the file is not a video, or its header/index (e.g. the MP4 'moov' box) is missing or damaged",
        ) from exc
    except av.error.EOFError as exc:  # "[Errno 541478725] End of file" said nothing
        if _cut_short(path):
            raise VideoOpenError("truncated: the file ends inside its header/index", path=path,
                                 hint="the copy or recording was cut off; re-copy it from the source") from exc
        raise VideoOpenError("the file ends before FFmpeg could read its stream headers", path=path,
                             hint="it is cut off, still being written, or too short to be opened") from exc
    except (av.error.FFmpegError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno == errno.EIO:  # a failing disk, read by FFmpeg or by Python
            raise unexpected_failure(exc, "opening it", path) from exc
        raise VideoOpenError(f"cannot open: {exc}", path=path) from exc
    except RuntimeError as exc:  # PyAV: no stream could take the hardware decoder it was asked for
        if hwaccel is None:
            raise
        raise DecodeError(f"hardware decoding cannot be set up: {exc}", path=path) from exc
    if container.streams.video and not any(_described(s) for s in container.streams.video):
        # FFmpeg opens a video track it has no decoder for (an MP4 cut inside its 'moov' before the codec's
        # description, or a codec this build does not know) with no codec, and every reader of it failed on
        # an AttributeError
        container.close()
        if _cut_short(path):
            raise VideoOpenError("truncated: its header/index is cut off inside the video track's description",
                                 path=path, hint="the copy or recording was cut off; re-copy it from the source")
        raise UnsupportedCodecError("no decoder for its video track's codec in this FFmpeg build", path=path,
                                    hint="convert it to H.264 or HEVC to scan it")
    return container


def _described(stream: av.video.stream.VideoStream) -> bool:
    """Whether FFmpeg can decode ``stream``'s codec (a track cut before its description, or in a codec this
    build does not know, has none)."""
    return stream.codec_context is not None


def _cut_short(path: Path) -> bool:
    """Whether ``path`` is an MP4/MOV cut off inside a box (``_mp4.cut_short``); False where it cannot be read."""
    try:
        with open(path, "rb") as fh:
            return cut_short(fh, os.fstat(fh.fileno()).st_size)
    except OSError:
        return False


def rewound(container: av.container.InputContainer, path: Path, file: BinaryIO | None,
            index: PacketIndex) -> av.container.InputContainer:
    """The container to read packets from after probing: the same one, or, when the prober had to demux
    to the end to build ``index`` (no container index), a fresh one from the top of the file."""
    if index.from_container_index:
        return container
    container.close()
    if file is not None:
        file.seek(0)
    return open_container(path, file)


def probe_video(path: str | os.PathLike[str], *, with_index: bool = False) -> VideoInfo | tuple[VideoInfo, PacketIndex]:
    """Probes one file. Raises ``VideoOpenError``/``UnsupportedCodecError`` naming the file and the fault.

    With ``with_index=True`` also returns the packet index the samplers plan from.
    """
    path = Path(path)
    container = open_container(path, quick=True)
    try:
        info, index = probe_open(container, path)
    finally:
        container.close()
    return (info, index) if with_index else info


#: Containers whose display rotation FFmpeg reads into the stream's side data, which PyAV does not show: the
#: first decoded picture carries it (Matroska's ``Projection`` element; MP4/MOV's matrices are read in ``_mp4``).
_ROTATION_BY_DECODING = frozenset({"matroska"})


_MKV_SEGMENT, _MKV_TRACKS = b"\x18\x53\x80\x67", b"\x16\x54\xae\x6b"
_MKV_TRACK_ENTRY, _MKV_VIDEO, _MKV_PROJECTION = b"\xae", b"\xe0", b"\x76\x70"


def _ebml_vint(data: bytes, at: int) -> tuple[int, int] | None:
    """(width, value less its length marker) of the EBML variable-size integer at ``at``; ``None`` if cut off."""
    if at >= len(data) or data[at] == 0:
        return None
    width = 9 - data[at].bit_length()
    if at + width > len(data):
        return None
    return width, int.from_bytes(data[at:at + width], "big") & ((1 << (7 * width)) - 1)


def _ebml_children(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(element ID as stored, payload start, payload end) of the elements in ``data[start:end]``."""
    at = start
    while at < end:
        ident = _ebml_vint(data, at)
        if ident is None:
            return
        size = _ebml_vint(data, at + ident[0])
        if size is None:
            return
        body = at + ident[0] + size[0]
        yield data[at:at + ident[0]], body, min(body + size[1], end)
        at = body + size[1]


def _may_be_turned(path: Path, head_bytes: int = 1 << 20) -> bool:
    """Whether a Matroska file's video track may have a ``Projection`` (where its rotation lives). If its
    ``Tracks`` element lies whole in the first MiB without one, no picture need be decoded (14-36 ms a probe)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(head_bytes)
    except OSError:
        return True
    tracks = None
    for top, a, b in _ebml_children(head, 0, len(head)):  # the EBML header, then the Segment
        if top == _MKV_SEGMENT:
            tracks = next(((c, d) for k, c, d in _ebml_children(head, a, len(head)) if k == _MKV_TRACKS), None)
            break
    if tracks is None or tracks[1] >= len(head):  # not within the head (or cut off at its end): decode
        return True
    for entry, a, b in _ebml_children(head, *tracks):
        for video, c, d in (x for x in _ebml_children(head, a, b) if entry == _MKV_TRACK_ENTRY):
            if video == _MKV_VIDEO and any(k == _MKV_PROJECTION for k, _, _ in _ebml_children(head, c, d)):
                return True
    return False


def _turned_in_stream(path: Path, stream_index: int, codec: str) -> bool:
    """Whether the first packet of an H.264/HEVC stream carries a display-orientation SEI message, which
    FFmpeg applies to the decoded pictures like a container's rotation (one packet read, nothing decoded)."""
    if codec not in SEI_UNITS:
        return False
    try:
        with _av_open(str(path)) as container:
            stream = container.streams[stream_index]
            length_size = length_size_of(codec, bytes(stream.codec_context.extradata or b""))
            data = next((bytes(packet) for packet in container.demux(stream) if packet.size), b"")
    except (av.error.FFmpegError, OSError) as exc:
        log.info("%s: cannot read its first packet for a display orientation (%s)", path, exc)
        return False
    return orientation_sei_first(data, codec, length_size)


def _mp4_turned_in_stream(path: Path, index: PacketIndex, codec: str, extradata: bytes) -> bool:
    """``_turned_in_stream`` for an MP4/MOV: the first packet's leading units read at its index position (no
    demuxer opened). Phones' encoders can put the rotation there instead of in the track's matrix, and FFmpeg
    turns the decoded pictures by it."""
    length_size = length_size_of(codec, extradata)
    if codec not in SEI_UNITS or length_size is None or not len(index) or index.pos[0] < 0:
        return False
    try:
        data = packet_head(path, int(index.pos[0]), int(index.size[0]), codec, length_size)
    except OSError as exc:
        log.info("%s: cannot read its first packet for a display orientation (%s)", path, exc)
        return False
    return orientation_sei_first(data, codec, length_size, cut=int(index.size[0]) > len(data))


def _rotation_of_first_picture(path: Path, stream_index: int) -> int:
    """Clockwise degrees (0/90/180/270) the first picture of the stream is to be turned, as FFmpeg attaches it
    to the decoded frame; 0 where nothing decodes (the sampler reports that file's fault itself)."""
    try:
        with _av_open(str(path)) as container:
            for frame in container.decode(container.streams[stream_index]):
                degrees = -float(getattr(frame, "rotation", 0) or 0)  # FFmpeg's angle is counter-clockwise
                return int(round(degrees / 90.0)) % 4 * 90
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        log.info("%s: no picture decoded to read its rotation from (%s)", path, exc)
    return 0


def main_video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    """The stream that carries the footage when a file has several video streams.

    Real video before stills (phones put one- or two-frame "top shot" tracks of higher resolution
    beside the video of a motion photo), then the default stream, then bit rate, then picture size:
    FFmpeg's ``av_find_best_stream`` order, with the still test first. A stream whose frame count the
    header does not give counts as video. Sizes as a full probe has them (``codec_setup``), so that a quick open
    picks the same stream.
    """
    streams = [s for s in container.streams.video if _described(s)] or list(container.streams.video)
    if len(streams) == 1:
        return streams[0]

    def rank(s: av.video.stream.VideoStream) -> tuple[int, bool, int, int]:
        setup = codec_setup(s) or probed_setup(s)
        return (min(s.frames or _STILL_FRAMES, _STILL_FRAMES), s.disposition & av.stream.Disposition.default != 0,
                s.bit_rate or 0, setup.width * setup.height)

    return max(streams, key=rank)


def _pixel_aspect(stream: av.video.stream.VideoStream, setup: CodecSetup | None) -> float:
    """The stored pixels' aspect: the container's (an MP4 ``pasp``) where it gives one, else the codec's (the
    SPS), as FFmpeg guesses it; 1 for none or a nonsense value."""
    sar = stream.sample_aspect_ratio or (setup.sample_aspect_ratio if setup is not None else None) \
        or stream.codec_context.sample_aspect_ratio
    value = float(sar) if sar else 1.0
    return round(value, 6) if 0.1 <= value <= 10.0 else 1.0


def probe_open(container: av.container.InputContainer, path: Path) -> tuple[VideoInfo, PacketIndex]:
    """Probes an already opened container (see ``open_container``)."""
    if not container.streams.video:
        raise VideoOpenError("no video stream (audio-only or data file)", path=path)
    stream = main_video_stream(container)
    ctx = stream.codec_context
    signal = _h264_signal(ctx)
    try:
        codec = av.codec.Codec(ctx.name, "r").canonical_name
    except Exception as exc:  # noqa: BLE001 - PyAV raises several types for unknown codecs
        raise UnsupportedCodecError(f"unsupported video codec {ctx.name!r}", path=path,
                                    hint="no decoder for it in this PyAV/FFmpeg build") from exc
    if not stream.width or not stream.height:
        raise VideoOpenError("video stream has no frame size (damaged header)", path=path)
    if stream.width * stream.height > MAX_PICTURE_PIXELS:
        raise VideoOpenError(f"picture size {stream.width}x{stream.height} is larger than any camera's (at most the "
                             f"pixels of 8192x8192 are decoded)", path=path,
                             hint="a damaged header, most likely; decoding it would take gigabytes per stream")

    stat = path.stat()
    facts = TrackFacts(0, None)
    container_format = container.format.name.split(",")[0]
    if container_format in MP4_FORMATS:
        with open(path, "rb") as fh:
            facts = read_track_facts(fh, stat.st_size, stream.id)
    index = read_packet_index(container, stream, path, facts.composition_offsets, facts.samples, facts.sample_pos,
                              facts.fragmented_samples)
    if index.from_container_index:
        end = int((index.pos + index.size).max())
        if end > stat.st_size:
            present = 100.0 * stat.st_size / end
            raise VideoOpenError(
                f"truncated: the index points {end - stat.st_size:,} bytes past the end of the file "
                f"({present:.0f}% of the video data present)", path=path,
                hint="the copy or recording was cut off; re-copy it from the source")
    index = random_access_keyframes(index, path, stream)
    if not index.is_key.any():
        raise VideoOpenError("no keyframes in the video stream", path=path)

    tb = stream.time_base
    deltas = np.diff(np.sort(index.pts))  # the gaps between pictures, for the duration and the VFR test
    duration = _seconds(stream.duration, tb)
    if duration is None or duration <= 0:
        duration = container.duration / 1e6 if container.duration else None
        if not index.from_container_index and len(index) > 1:
            # every packet was read: the video ends about a frame after its last. The container's duration
            # is its end time in Matroska (8.5 s for 6 s of video starting at 2.5 s) and counts longer sound.
            end = float(index.pts.max()) + float(np.median(deltas))
            duration = end if duration is None or duration <= 0 else min(duration, end)
    elif facts.fragmented_samples and len(index) > 1:  # a sidx-indexed file's stream duration is its end time
        # the last picture lasts as long as the one before it, or a typical one
        duration = min(duration, float(index.pts.max()) + max(float(np.median(deltas)), float(deltas[-1])))
    elif not index.from_container_index and len(index) > 1:
        # every packet was read: the last picture is on screen for a frame. MPEG-PS's duration is FFmpeg's
        # estimate, which ended at the last picture's start or before it (a second went missing).
        duration = max(duration, float(index.pts.max()) + float(np.median(deltas)))
    avg = float(stream.average_rate) if stream.average_rate else 0.0
    real = float(stream.base_rate or stream.guessed_rate or 0) if (stream.base_rate or stream.guessed_rate) else avg
    if duration is None or duration <= 0:
        if len(index) and avg:
            duration = float(index.pts.max()) + 1.0 / avg
        else:
            raise VideoOpenError("duration unknown and no frame timing in the index", path=path)
    if not avg:
        avg = len(index) / duration if duration else 0.0
    # an MP4's index is what FFmpeg shows (the sample count in its header also counts what an edit list hides)
    frame_count = int(np.count_nonzero(index.shown)) if index.from_container_index else (stream.frames or len(index))

    rotation = facts.rotation
    if container_format in _ROTATION_BY_DECODING \
            and (_may_be_turned(path) or _turned_in_stream(path, stream.index, codec)):
        rotation = _rotation_of_first_picture(path, stream.index)
    elif container_format in MP4_FORMATS and index.from_container_index \
            and _mp4_turned_in_stream(path, index, codec, bytes(ctx.extradata or b"")):
        rotation = _rotation_of_first_picture(path, stream.index)
    setup = codec_setup(stream)
    coded_w, coded_h = (setup.width, setup.height) if setup is not None else (stream.width, stream.height)
    width, height = (coded_h, coded_w) if rotation in (90, 270) else (coded_w, coded_h)

    # the pictures shown: an edit list's hidden lead-in, timed before zero, made a constant-rate clip look variable
    shown_deltas = np.diff(np.sort(index.pts[index.shown])) if index.shown.any() else deltas
    is_vfr = bool(len(shown_deltas) > 2 and np.median(shown_deltas) > 0
                  and (shown_deltas.max() - shown_deltas.min()) > 0.5 * np.median(shown_deltas))
    # the index's zero (a Matroska stream without decode times was given the start of its first packet that had
    # one: 6 s into a 1-fps time-lapse, and a reel's sound was cut 6 s off its pictures)
    start = _seconds(index.origin_ticks if index.origin_ticks is not None else stream.start_time, tb) or 0.0
    info = VideoInfo(
        path=path, size_bytes=stat.st_size, mtime_ns=stat.st_mtime_ns,
        container=container.format.name, codec=codec,
        pix_fmt=setup.pix_fmt if setup is not None else _pix_fmt(ctx, signal),
        coded_width=coded_w, coded_height=coded_h, width=width, height=height, rotation=rotation,
        avg_fps=round(avg, 4), real_fps=round(real, 4), duration_s=round(float(duration), 4),
        frame_count=int(frame_count), bit_rate=container.bit_rate or None, start_time_s=start,
        keyframe_times=tuple(float(t) for t in index.shown_keyframe_times),
        has_audio=bool(container.streams.audio), is_vfr=is_vfr, stream_index=stream.index,
        color_matrix=_color_matrix(ctx, signal), color_transfer=_color_transfer(ctx, signal), setup=facts.setup,
        pixel_aspect=_pixel_aspect(stream, setup), recorded_at=recorded_at(container, stream),
    )
    return info, index
