"""Reading one source window as reel-sized frames: seek, decode, rotate, scale and letterbox.

Frames are resampled *by time*: the reel frame shown at source time ``t`` is the source frame that
is on screen at ``t`` (the last one presented at or before it), so 24, 30 and 60 fps sources and
variable-frame-rate phones all play at their real speed in a reel of any frame rate.
Decoding goes through PyAV. Given a GPU, FFmpeg decodes on NVDEC (its CUDA hwaccel; frames are copied
back for scaling and encoding); a source NVDEC cannot take, or a GPU that cannot open it, is decoded on
the CPU and the reader says so (``decoder``, ``fallback_reason``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np
import torch

from ..errors import DecodeError, QuadvaultError
from .._frame_times import FrameClock, stores_decode_times
from ..probe import VideoInfo, open_container
from ..sampling import nvdec_limitation
from ..sampling._colour import hdr16_to_sdr, is_hdr
from ..sampling._cpu import SWS_FLAGS, SWS_FLAGS_48
from ..sampling._remux import seek_top

log = logging.getLogger(__name__)
#: Tolerance when comparing frame times: time stamp rounding must not pick the previous frame. Matroska, WebM
#: and FLV store whole milliseconds (a 30 fps frame 2 at 67 ms): with 0.1 ms, a 30 fps reel frame at 66.67 ms
#: showed frame 1 again and frame 2 never (a third of the frames repeated, a third dropped). Frames are at
#: least 8 ms apart (120 fps), so a frame is never taken more than 1.1 ms early.
_EPS = 1.1e-3


@dataclass(frozen=True)
class Letterbox:
    """Where a source lands on the reel canvas: scaled to ``fit_w`` x ``fit_h`` at ``(x, y)``."""

    out_w: int
    out_h: int
    fit_w: int
    fit_h: int
    x: int
    y: int


def letterbox(src_w: float, src_h: float, out_w: int, out_h: int) -> Letterbox:
    """Largest aspect-preserving fit of a ``src_w`` x ``src_h`` picture, centred, black bars elsewhere."""
    scale = min(out_w / src_w, out_h / src_h)
    fit_w = min(out_w, max(2, int(round(src_w * scale))))
    fit_h = min(out_h, max(2, int(round(src_h * scale))))
    return Letterbox(out_w, out_h, fit_w, fit_h, (out_w - fit_w) // 2, (out_h - fit_h) // 2)


class WindowReader:
    """Serves reel frames for increasing source times in ``[in_s, out_s)`` of one video.

    ``gpu``: the CUDA device to decode on (NVDEC through FFmpeg), or ``None`` for the CPU.
    """

    def __init__(self, info: VideoInfo, in_s: float, out_w: int, out_h: int, *, gpu: int | None = None) -> None:
        self.info = info
        self.path: Path = info.path
        self.box = letterbox(*info.display_size, out_w, out_h)  # anamorphic pixels shown wide, not squeezed
        self.decoder = "pyav"
        self.fallback_reason: str | None = None
        self._cached_for: float | None = None  # source time of the cached picture's frame
        self._cached: np.ndarray | None = None
        if gpu is not None:
            self.fallback_reason = nvdec_limitation(info)
            if self.fallback_reason is None:
                try:
                    self._start(in_s, _cuda(gpu))
                    self.decoder = "nvdec"
                    return
                except (QuadvaultError, av.error.FFmpegError, OSError, RuntimeError) as exc:
                    self.close()
                    self.fallback_reason = f"NVDEC could not decode it ({exc})"
            log.info("%s: %s; decoding its reel window on the CPU", self.path, self.fallback_reason)
        self._start(in_s, None)

    def _start(self, in_s: float, hwaccel: "av.codec.hwaccel.HWAccel | None") -> None:
        """Opens, seeks to the keyframe before ``in_s`` and decodes the first frame (so failures show here)."""
        self._container = open_container(self.info.path, hwaccel=hwaccel)
        try:
            self._stream = self._container.streams[self.info.stream_index]  # the probed footage stream
            if hwaccel is None:  # frame threads feed a CPU decoder; NVDEC has its own engines
                self._stream.thread_type = "AUTO"
            elif getattr(self._stream.codec_context, "is_hwaccel", None) is False:
                # PyAV needs only one stream of the file on the device; this one may have stayed in software
                raise DecodeError("the hardware decoder was not attached to this video stream", path=self.info.path)
            self._tb: Fraction = self._stream.time_base or Fraction(1, 90000)
            self._start_pts = self._stream.start_time or 0
        except av.error.FFmpegError as exc:
            self.close()
            raise DecodeError(f"cannot open the video stream ({exc})", path=self.info.path) from exc
        self._current: tuple[float, av.VideoFrame] | None = None
        # The demuxer seeks by decode time: with B-frames a keyframe shown just after in_s is stored before
        # it, and seeking lands there, one frame late; an MPEG-TS seek finds a packet by time, not a keyframe,
        # so decoding starts at the next keyframe, a GOP late (past the end for a window in the last second, and
        # even from 0, in MPEG-PS too, whose first second showed its second keyframe: ``seek_top`` seeks to the
        # top by byte there). Seek earlier until the first frame is not after in_s.
        for margin_s in SEEK_MARGINS_S:
            start_s = max(0.0, in_s - margin_s)
            try:
                if start_s == 0.0:
                    seek_top(self._container, self._stream)  # as the sampler does: MPEG-PS and TS by byte
                else:
                    self._container.seek(self._start_pts + int(start_s / self._tb), stream=self._stream,
                                         backward=True, any_frame=False)
            except av.error.FFmpegError as exc:
                self.close()
                raise DecodeError(f"cannot seek to {in_s:.2f} s ({exc})", path=self.info.path) from exc
            if getattr(self, "_frames", None) is not None:
                self._frames.close()  # the last try's, seeking earlier now
            self._frames = self._decode()
            self._next: tuple[float, av.VideoFrame] | None = next(self._frames, None)
            if (self._next is not None and self._next[0] <= in_s + _EPS) or start_s == 0.0:
                break
        if hwaccel is not None and self._next is None:
            raise DecodeError("the hardware decoder returned no frame", path=self.info.path)

    def _decode(self) -> Iterator[tuple[float, av.VideoFrame]]:
        """The window's frames with their times. A packet that does not decode is left out, as the sampler
        leaves it out: the pictures after it that decode are shown (the first error used to end the window,
        which then held one picture for the rest of it: 2.6 s frozen for one damaged keyframe)."""
        clock = FrameClock(stores_decode_times(self._container, self._stream))  # AVI with B-frames
        damaged = 0
        try:
            for packet in self._container.demux(self._stream):
                clock.fed(packet)
                try:
                    decoded = packet.decode()
                except av.error.FFmpegError as exc:
                    damaged += 1
                    clock.dropped(packet)
                    if damaged == 1:
                        at = f" at {float((packet.pts - self._start_pts) * self._tb):.2f} s" \
                            if packet.pts is not None else ""
                        log.warning("%s: a damaged packet%s does not decode (%s); the reel shows the pictures "
                                    "after it that do", self.path, at, exc)
                    continue
                for frame in decoded:
                    pts = clock.time_of(frame)
                    if pts is None:
                        continue
                    yield float((pts - self._start_pts) * self._tb), frame
        except av.error.FFmpegError as exc:
            raise DecodeError(f"decoding failed ({exc})", path=self.path) from exc

    def frame_at(self, t: float) -> np.ndarray:
        """The reel-sized RGB picture of the source frame on screen at source time ``t``."""
        while self._next is not None and (self._current is None or self._next[0] <= t + _EPS):
            self._current = self._next
            self._next = next(self._frames, None)
        if self._current is None:
            raise DecodeError(f"no frame decoded at or after {t:.2f} s", path=self.path)
        key = self._current[0]  # not id(frame): a freed frame's id is reused by the next one
        if self._cached_for != key:
            self._cached = self._to_canvas(self._current[1])
            self._cached_for = key
        assert self._cached is not None
        return self._cached

    @property
    def current_time(self) -> float | None:
        """Source time of the frame last served (for tests and logs)."""
        return self._current[0] if self._current else None

    def _to_canvas(self, frame: av.VideoFrame) -> np.ndarray:
        box, rotation = self.box, self.info.rotation % 360
        sideways = rotation in (90, 270)
        w, h = (box.fit_h, box.fit_w) if sideways else (box.fit_w, box.fit_h)
        if is_hdr(self.info.color_transfer):  # PQ / HLG: tone-mapped into the SDR BT.709 reel from 16 bits
            codes = frame.reformat(width=w, height=h, format="rgb48le", interpolation=SWS_FLAGS_48).to_ndarray()
            codes = torch.from_numpy(codes.astype(np.int32)).permute(2, 0, 1)[None]
            img = hdr16_to_sdr(codes, self.info.color_transfer)[0].permute(1, 2, 0).numpy()
        else:  # the sampler's exact rounding: AREA alone made the reel 2-4 levels darker than its sources
            img = frame.reformat(width=w, height=h, format="rgb24", interpolation=SWS_FLAGS).to_ndarray()
        if rotation:
            img = np.rot90(img, k=-(rotation // 90))  # rotation is clockwise; rot90 turns counter-clockwise
        canvas = np.zeros((box.out_h, box.out_w, 3), np.uint8)
        canvas[box.y: box.y + box.fit_h, box.x: box.x + box.fit_w] = img
        return canvas

    @property
    def ended(self) -> bool:
        """Whether no frame follows the one last served (the file ends there)."""
        return getattr(self, "_next", None) is None

    def close(self) -> None:
        """Closes the file and lets go of every decoded frame now. The decode generator refers back to this
        reader (a cycle), so without this its 4K frames and the decoder's buffer pools waited for the cycle
        collector: a 20-clip 4K reel's check peaked at 2.3 GB, against 0.35 GB with it (a reel tester's find)."""
        frames = getattr(self, "_frames", None)
        if frames is not None:
            frames.close()
        self._frames = self._next = self._current = self._cached = None  # type: ignore[assignment]
        self._stream = None  # type: ignore[assignment]
        container = getattr(self, "_container", None)
        self._container = None  # type: ignore[assignment]
        if container is not None:
            container.close()

    def __enter__(self) -> "WindowReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: How far before a window's start the reader seeks, in turn, until the first frame is not after it.
SEEK_MARGINS_S = (0.0, 1.0, 2.0, 5.0, 15.0, float("inf"))


def _cuda(device: int) -> "av.codec.hwaccel.HWAccel":
    from av.codec.hwaccel import HWAccel

    return HWAccel("cuda", device=str(device), allow_software_fallback=False)


def check_window(info: VideoInfo, in_s: float) -> None:
    """Decodes the window's first frame, so a file that cannot be decoded, or that ends before the window
    (cut shorter since it was scanned), is dropped before encoding instead of showing a frozen frame."""
    with WindowReader(info, in_s, 16, 16) as reader:
        reader.frame_at(in_s)
        shown = reader.current_time
        slack = 2.0 / info.avg_fps if info.avg_fps else 0.1
        # a frame long before in_s with more after it is a gap in a variable-rate file (dropped frames), not an end
        if shown is not None and shown < in_s - slack and reader.ended:
            raise DecodeError(f"the video ends at {shown:.2f} s, before the window at {in_s:.2f} s",
                              path=info.path, hint="was it cut since the scan? scan it again")


def blend(outgoing: np.ndarray, incoming: np.ndarray, weight: float) -> np.ndarray:
    """Crossfade: ``weight`` of ``incoming`` over ``outgoing`` (integer maths, no float frame copies)."""
    w = int(round(weight * 256))
    mixed = outgoing.astype(np.uint16) * (256 - w) + incoming.astype(np.uint16) * w
    return (mixed >> 8).astype(np.uint8)
