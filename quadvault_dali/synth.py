"""Synthetic videos whose every frame says, in its pixels, when it was shown and which clip it is.

Tests, the demo and the benchmarks generate their media with this (nothing binary is committed).
The stamp is a grid of black/white blocks in the centre of the picture, large enough to survive
compression, resizing to 64 px and a centre square crop, so a test can read back from any sampled
frame the presentation time it was encoded at and the clip it came from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import numpy as np

Style = Literal["plain", "highlight", "normal"]

_ROWS, _COLS = 4, 8  # 32 bits: 20 time (centiseconds), 8 source id, 4 check
_TIME_BITS, _ID_BITS, _CHECK_BITS = 20, 8, 4
_ENCODERS = {"h264": "libx264", "hevc": "libx265", "vp9": "libvpx-vp9", "mjpeg": "mjpeg", "av1": "libsvtav1",
             "mpeg2video": "mpeg2video", "wmv2": "wmv2"}
_PIX_FMT = {"mjpeg": "yuvj420p"}


@dataclass(frozen=True)
class Stamp:
    time_s: float
    source_id: int


@dataclass(frozen=True)
class SynthSpec:
    """What to generate. ``segments`` lists (style, seconds) runs; empty means one ``style`` run."""

    #: mpeg2video (with two B-frames, as DVD camcorders write; in .mpg/.vob) and wmv2 (.wmv) for the older
    #: containers a library holds
    codec: Literal["h264", "hevc", "vp9", "mjpeg", "av1", "mpeg2video", "wmv2"] = "h264"
    width: int = 320
    height: int = 240
    fps: float = 30.0
    duration_s: float = 4.0
    keyframe_interval_s: float | None = 1.0
    rotation: int = 0
    audio: bool = False
    vfr: bool = False
    style: Style = "plain"
    segments: tuple[tuple[Style, float], ...] = field(default_factory=tuple)
    source_id: int = 0
    stamp: bool = True
    bit_rate: int | None = None
    #: with ``source_id``, which scene of the style the clip shows (``_scene``): clips that differ in either are
    #: different footage; both 0 is the original scene
    seed: int = 0
    #: the YCbCr matrix to convert with and tag the stream with; "unknown" leaves it untagged (BT.601)
    color_matrix: Literal["unknown", "bt709", "bt2020nc"] = "unknown"
    #: x264's preset; ``None``: ultrafast above 2 MP (Constrained Baseline, no B-frames: fast to make), else
    #: veryfast (High profile with B-frames, as drones write)
    x264_preset: str | None = None
    #: the container's creation_time tag (ISO 8601, e.g. "2023-06-15T10:22:33Z"), as cameras write it; None: none
    recorded_at: str | None = None

    def style_at(self, t: float) -> Style:
        start = 0.0
        for style, seconds in self.segments:
            if t < start + seconds:
                return style
            start += seconds
        return self.segments[-1][0] if self.segments else self.style


def _bits(value: int, count: int) -> list[int]:
    return [(value >> i) & 1 for i in range(count)]


def _stamp_bits(time_s: float, source_id: int) -> list[int]:
    centis = int(round(time_s * 100)) & ((1 << _TIME_BITS) - 1)
    bits = _bits(centis, _TIME_BITS) + _bits(source_id & 0xFF, _ID_BITS)
    return bits + _bits(sum(bits) % 16, _CHECK_BITS)


def _grid_box(height: int, width: int) -> tuple[int, int, int, int]:
    """(top, left, cell_h, cell_w) of the stamp grid: the middle of the centre square."""
    side = min(height, width)
    cell = max(2, int(side * 0.5) // _COLS)
    top = (height - cell * _ROWS) // 2
    left = (width - cell * _COLS) // 2
    return top, left, cell, cell


def draw_stamp(image: np.ndarray, time_s: float, source_id: int = 0) -> None:
    """Paints the stamp into an RGB ``(H, W, 3)`` uint8 image in place."""
    top, left, ch, cw = _grid_box(*image.shape[:2])
    bits = _stamp_bits(time_s, source_id)
    image[top - ch // 2: top + ch * _ROWS + ch // 2, left - cw // 2: left + cw * _COLS + cw // 2] = 128
    for i, bit in enumerate(bits):
        r, c = divmod(i, _COLS)
        image[top + r * ch: top + (r + 1) * ch, left + c * cw: left + (c + 1) * cw] = 255 if bit else 0


def read_stamp(image: np.ndarray) -> Stamp | None:
    """Reads the stamp back from an RGB ``(H, W, 3)`` or ``(3, H, W)`` image; ``None`` if absent/corrupt."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[0] == 3 and img.shape[-1] != 3:
        img = img.transpose(1, 2, 0)
    gray = img.astype(np.float32).mean(axis=2)
    top, left, ch, cw = _grid_box(*gray.shape)
    bits = []
    for i in range(_ROWS * _COLS):
        r, c = divmod(i, _COLS)
        y0, x0 = top + r * ch, left + c * cw
        cell = gray[y0 + ch // 4: y0 + ch - ch // 4, x0 + cw // 4: x0 + cw - cw // 4]
        if cell.size == 0:
            return None
        bits.append(1 if cell.mean() > 128 else 0)
    value = lambda bs: sum(b << i for i, b in enumerate(bs))  # noqa: E731
    payload = bits[: _TIME_BITS + _ID_BITS]
    if value(bits[_TIME_BITS + _ID_BITS:]) != sum(payload) % 16:
        return None
    return Stamp(value(bits[:_TIME_BITS]) / 100.0, value(bits[_TIME_BITS: _TIME_BITS + _ID_BITS]))


def _scene(style: Style, t: float, h: int, w: int, rng_seed: int) -> np.ndarray:
    """One frame of ``style`` at ``t``. Each seed has its own scene (its gradient's direction and scale, its
    texture's grain): two clips of one style are different footage, as the near-copy detection of
    prepare-dataset must tell them apart. Seed 0 is the original scene."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = 2.39996 * rng_seed  # the golden angle: the directions of consecutive seeds spread evenly
    along = xx * math.cos(angle) + yy * math.sin(angle)
    across = yy * math.cos(angle) - xx * math.sin(angle)
    if style == "highlight":
        # Saturated warm colours with motion: an orange/magenta gradient and a moving bright disc. The gradient
        # spans one cycle across the picture whatever its direction, so every seed's colours average alike.
        img = np.empty((h, w, 3), np.float32)
        along = (along - along.min()) / max(float(np.ptp(along)), 1e-6) * (w - 1)
        phase = 2 * math.pi * (along / w + 0.35 * t)
        img[..., 0] = 215 + 40 * np.sin(phase)
        img[..., 1] = 90 + 70 * np.sin(phase + 1.3 + yy / h)
        img[..., 2] = 40 + 50 * np.cos(phase * 0.5)
        cx = w * (0.5 + 0.35 * math.sin(1.7 * t + rng_seed))
        cy = h * (0.5 + 0.3 * math.cos(1.1 * t + rng_seed))
        disc = ((xx - cx) ** 2 + (yy - cy) ** 2) < (0.12 * min(h, w)) ** 2
        img[disc] = (255, 240, 60)
        return np.clip(img, 0, 255).astype(np.uint8)
    if style == "normal":
        # Grey, low contrast, static: a faint fixed texture.
        base = 118 + 12 * np.sin(along / (9 + rng_seed % 5)) * np.cos(across / (13 + rng_seed % 7))
        return np.repeat(np.clip(base, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    img = np.empty((h, w, 3), np.uint8)
    img[..., 0] = (xx * 255 / max(w - 1, 1)).astype(np.uint8)
    img[..., 1] = (yy * 255 / max(h - 1, 1)).astype(np.uint8)
    img[..., 2] = int(40 * t) % 256
    return img


def frame_times(spec: SynthSpec) -> list[float]:
    """Presentation times of the generated frames (irregular when ``vfr``)."""
    step = 1.0 / spec.fps
    if not spec.vfr:
        return [i * step for i in range(int(round(spec.duration_s * spec.fps)))]
    times, t, i = [], 0.0, 0
    while t < spec.duration_s - 1e-9:
        times.append(round(t, 3))
        t += step * (0.5 if (i // 7) % 2 else 1.5)  # runs of short and long frame durations
        i += 1
    return times


def _rotate_for_storage(image: np.ndarray, rotation: int) -> np.ndarray:
    """Stores an upright picture so that a player applying ``rotation`` clockwise shows it upright."""
    return np.ascontiguousarray(np.rot90(image, k=rotation // 90)) if rotation else image


#: SynthSpec.color_matrix -> (AVColorSpace value, PyAV reformatter colorspace)
_MATRICES = {"bt709": (1, "ITU709"), "bt2020nc": (9, "BT2020")}


def make_video(path: str | Path, spec: SynthSpec = SynthSpec()) -> Path:
    """Encodes ``spec`` into ``path`` (container from the suffix) and returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if spec.rotation % 90:
        raise ValueError(f"rotation must be a multiple of 90, got {spec.rotation}")
    encoder = _ENCODERS[spec.codec]
    stored_w, stored_h = (spec.height, spec.width) if spec.rotation in (90, 270) else (spec.width, spec.height)
    rate = Fraction(spec.fps).limit_denominator(1001)
    with av.open(str(path), "w") as out:
        if spec.recorded_at:
            out.metadata["creation_time"] = spec.recorded_at
        stream = out.add_stream(encoder, rate=rate)
        stream.width, stream.height = stored_w, stored_h
        stream.pix_fmt = _PIX_FMT.get(spec.codec, "yuv420p")
        # Millisecond ticks for VFR (WebM's own unit); a multiple of the frame rate otherwise, but one frame
        # per tick in AVI, whose chunks are one tick each (finer ticks made 24 empty chunks per frame), and
        # for MPEG-2 and WMV, whose encoders take only their frame rate's time base.
        if path.suffix.lower() == ".avi" or spec.codec in ("mpeg2video", "wmv2"):
            stream.time_base = 1 / rate
        else:
            stream.time_base = Fraction(1, 1000) if spec.vfr else Fraction(1, int(round(spec.fps * 1000)))
        stream.codec_context.time_base = stream.time_base
        if spec.bit_rate:
            stream.bit_rate = spec.bit_rate
        gop = max(1, int(round((spec.keyframe_interval_s or 1000.0) * spec.fps)))
        options: dict[str, str] = {"g": str(gop)}
        if spec.codec == "h264":
            preset = spec.x264_preset or ("ultrafast" if spec.width * spec.height > 2_000_000 else "veryfast")
            options.update({"preset": preset,
                            "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"})
        elif spec.codec == "hevc":
            options.update({"preset": "ultrafast",
                            "x265-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:log-level=error"})
        elif spec.codec == "vp9":
            options.update({"deadline": "realtime", "cpu-used": "8", "keyint_min": str(gop)})
        elif spec.codec == "mpeg2video":
            options.update({"bf": "2"})
        elif spec.codec == "av1":
            # Preset 10, not 12 (SVT-AV1 maps 12 to 11): at 11 the encoder skips/copies blocks so that about 5 % of
            # frames come back with one stamp cell from another frame (unreadable stamp). The SVT-AV1 4.2 bundled
            # with PyAV 19 landed such a frame where tests/test_reel.py reads one; preset 10 has none, same speed.
            options.update({"preset": "10"})
        matrix = _MATRICES.get(spec.color_matrix)
        if matrix is not None:
            ctx = stream.codec_context
            ctx.colorspace = ctx.color_primaries = ctx.color_trc = matrix[0]
        if spec.rotation:
            stream.set_display_rotation(-spec.rotation)  # FFmpeg's matrix angle is counter-clockwise
        stream.options = options
        audio = None
        if spec.audio:
            audio = out.add_stream("aac", rate=48000)
        times = frame_times(spec)
        for t in times:
            image = _scene(spec.style_at(t), t, spec.height, spec.width, spec.seed + 7919 * spec.source_id)
            if spec.stamp:
                draw_stamp(image, t, spec.source_id)
            frame = av.VideoFrame.from_ndarray(_rotate_for_storage(image, spec.rotation), format="rgb24")
            if matrix is not None:
                frame = frame.reformat(format=stream.pix_fmt, dst_colorspace=matrix[1])
                frame.colorspace = matrix[0]
            frame.pts = int(round(t / stream.time_base))
            frame.time_base = stream.time_base
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
        if audio is not None:
            _write_tone(out, audio, spec.duration_s)
    return path


def _write_tone(out: av.container.OutputContainer, audio: av.audio.stream.AudioStream, seconds: float) -> None:
    rate, chunk = 48000, 1024
    total = int(seconds * rate)
    for start in range(0, total, chunk):
        n = min(chunk, total - start)
        t = (np.arange(start, start + n) / rate).astype(np.float32)
        samples = (0.2 * np.sin(2 * math.pi * 440 * t)).astype(np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = rate
        frame.pts = start
        out.mux(audio.encode(frame))
    out.mux(audio.encode(None))


# --- broken files, as real libraries have them -----------------------------------------------

def make_broken(path: str | Path, kind: Literal["empty", "text", "truncated", "no_index"],
                source: str | Path | None = None) -> Path:
    """Writes a damaged file: zero bytes, text named like a video, a cut-off copy, or no ``moov``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("This is not a video. It is a note someone saved with the wrong name.\n" * 20)
    else:
        if source is None:
            raise ValueError(f"{kind!r} needs a source video to damage")
        data = Path(source).read_bytes()
        if kind == "truncated":
            path.write_bytes(data[: len(data) * 55 // 100])
        else:  # no_index: rename the moov box so no demuxer can find the sample table
            at = data.find(b"moov")
            if at < 0:
                raise ValueError(f"{source}: no moov box to remove")
            path.write_bytes(data[:at] + b"junk" + data[at + 4:])
    return path
