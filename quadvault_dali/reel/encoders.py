"""H.264 encoder choice: NVENC where the GPU has an encoder, libx264 otherwise.

Whether NVENC works is only known by opening it: FFmpeg builds list ``h264_nvenc`` everywhere, but it
opens only with an NVIDIA driver and a GPU that has the encoder block (consumer RTX cards do; the H100
does not). So ``auto`` opens a throw-away encoder of the reel's size first and falls back to libx264.
"""

from __future__ import annotations

import functools
import logging
from fractions import Fraction
from typing import Literal

import av
import numpy as np
from av.codec.context import CodecContext

from ..errors import BackendUnavailableError

EncoderChoice = Literal["auto", "nvenc", "x264"]
log = logging.getLogger(__name__)

BT709, LIMITED_RANGE = 1, 1  # FFmpeg's AVCOL_SPC/PRI/TRC_BT709 and AVCOL_RANGE_MPEG (16-235), the HD norm
#: encoder name -> (codec options, pixel format)
ENCODERS: dict[str, tuple[dict[str, str], str]] = {
    # p4 = NVENC's balanced preset; constant-quality VBR like x264's CRF.
    "h264_nvenc": ({"preset": "p4", "rc": "vbr", "cq": "21", "b": "0"}, "yuv420p"),
    "libx264": ({"preset": "veryfast", "crf": "20"}, "yuv420p"),
}


def rate_fraction(fps: float) -> Fraction:
    """29.97 -> 30000/1001 (and 23.976, 59.94, 119.88 alike): NTSC-style rates kept exact. (The nearest
    fraction with a denominator up to 1001 is 2997/100, which no player or editor expects.)"""
    ntsc = round(fps * 1.001)
    if abs(fps - round(fps)) > 1e-6 and abs(fps * 1.001 - ntsc) < 1e-3:
        return Fraction(ntsc * 1000, 1001)
    return Fraction(fps).limit_denominator(1001)


@functools.lru_cache(maxsize=None)
def encoder_opens(name: str, width: int, height: int, fps: float) -> tuple[bool, str]:
    """(ok, reason): opens ``name`` at this size once, the only reliable test of NVENC."""
    try:
        ctx = CodecContext.create(name, "w")
    except (av.error.FFmpegError, ValueError) as exc:  # UnknownCodecError subclasses ValueError
        return False, f"{name} is not in this FFmpeg build ({exc})"
    options, pix_fmt = ENCODERS[name]
    ctx.width, ctx.height, ctx.pix_fmt = width, height, pix_fmt
    ctx.time_base = 1 / rate_fraction(fps)
    ctx.framerate = rate_fraction(fps)
    ctx.options = dict(options)
    try:
        ctx.open()
    except (av.error.FFmpegError, OSError) as exc:
        return False, f"{name} does not open here ({exc})"
    finally:
        try:
            del ctx
        except Exception:  # noqa: BLE001 - releasing a failed context must not mask the answer
            pass
    return True, "ok"


def choose_encoder(choice: EncoderChoice, width: int, height: int, fps: float, *,
                   gpu_allowed: bool = True) -> str:
    """The encoder name for ``choice``; ``nvenc`` that cannot open raises, ``auto`` falls back (logged)."""
    if choice not in ("auto", "nvenc", "x264"):
        raise BackendUnavailableError(f"unknown encoder {choice!r}; choose one of auto, nvenc, x264")
    if choice == "x264":
        return _need_x264(width, height, fps)
    if choice == "nvenc":
        if not gpu_allowed:
            raise BackendUnavailableError("--encoder nvenc needs the GPU, but --device cpu was given",
                                          hint="use --device auto or gpu, or --encoder x264")
        ok, reason = encoder_opens("h264_nvenc", width, height, fps)
        if not ok:
            import torch

            hint = ("this GPU may have no video encoder (e.g. H100), or not at this size; use --encoder x264"
                    if torch.cuda.is_available() else "no NVIDIA GPU is visible here; use --encoder x264")
            raise BackendUnavailableError(f"--encoder nvenc asked for, but {reason}", hint=hint)
        log.info("encoder: h264_nvenc (NVIDIA hardware encoder)")
        return "h264_nvenc"
    if gpu_allowed:
        ok, reason = encoder_opens("h264_nvenc", width, height, fps)
        if ok:
            log.info("encoder: h264_nvenc (NVIDIA hardware encoder)")
            return "h264_nvenc"
        log.info("encoder: libx264 on the CPU (no NVIDIA hardware encoder opens here)")
        log.debug("NVENC: %s", reason)
    else:
        log.info("encoder: libx264 on the CPU (--device cpu)")
    return _need_x264(width, height, fps)


def _need_x264(width: int, height: int, fps: float) -> str:
    ok, reason = encoder_opens("libx264", width, height, fps)
    if not ok:
        if "not in this FFmpeg build" in reason:
            raise BackendUnavailableError(f"no H.264 encoder: {reason}",
                                          hint="install a PyAV/FFmpeg build with libx264")
        raise BackendUnavailableError(f"libx264 refuses a {width}x{height} reel at {fps:g} frames/s: {reason}",
                                      hint="try a smaller --resolution or another --fps")
    return "libx264"


def add_video_stream(container: av.container.OutputContainer, name: str, width: int, height: int,
                     fps: float) -> av.video.stream.VideoStream:
    """Adds the H.264 stream with the encoder's options; time base is one tick per output frame."""
    options, pix_fmt = ENCODERS[name]
    rate = rate_fraction(fps)
    stream = container.add_stream(name, rate=rate)
    stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
    stream.time_base = 1 / rate
    stream.codec_context.time_base = 1 / rate
    stream.options = dict(options)
    ctx = stream.codec_context  # BT.709, said in the stream (``reel_frame`` converts with it)
    ctx.colorspace = ctx.color_primaries = ctx.color_trc = BT709
    ctx.color_range = LIMITED_RANGE
    return stream


def reel_frame(picture: np.ndarray) -> av.VideoFrame:
    """An RGB reel picture as the encoder's 4:2:0 frame, by the BT.709 matrix the stream is tagged with.
    Left to the encoder, RGB became YUV by BT.601 and the stream said nothing: players that take untagged HD
    for BT.709 (browsers, mpv, QuickTime) showed a source's green (0, 200, 0) as (0, 166, 0)."""
    frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(
        format="yuv420p", dst_colorspace="ITU709", dst_color_range="MPEG")
    frame.color_primaries = frame.color_trc = BT709
    return frame
