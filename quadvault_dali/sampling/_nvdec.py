"""What the hardware decoders can take, decided from the probe before any byte is sent to them.

A file NVDEC cannot decode makes DALI fail the whole batch it is in, and a scan of 18,000 videos holds
a few such files (a phone's AV1 or 4:2:2 clip, a tiny thumbnail video, ProRes from an editor). Knowing
in advance lets the ``gpu`` backend hand just those files to the CPU decoder and say so per video,
instead of failing them or wasting a DALI batch on them.

The limits are NVIDIA's published NVDEC capabilities for data-centre GPUs up to Hopper (H100): 4:2:0
(and monochrome) chroma only, H.264 at 8 bits, HEVC/VP9 up to 12 bits, no AV1 decoding on the H100,
and minimum/maximum coded sizes per codec.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..probe import VideoInfo


@dataclass(frozen=True)
class CodecLimits:
    min_width: int
    min_height: int
    max_width: int
    max_height: int
    max_bit_depth: int


#: codec -> coded-size and bit-depth limits of one NVDEC engine (H100 class).
NVDEC_LIMITS: dict[str, CodecLimits] = {
    "h264": CodecLimits(48, 16, 4096, 4096, 8),
    "hevc": CodecLimits(144, 144, 8192, 8192, 12),
    "vp8": CodecLimits(48, 16, 4096, 4096, 8),
    "vp9": CodecLimits(128, 128, 8192, 8192, 12),
    "mpeg4": CodecLimits(48, 16, 2032, 2032, 8),
}

#: Codecs NVDEC handles but DALI's GPU video decoder refuses (seen on an H100 with DALI 2.4.0:
#: "Codec 7 (mjpeg) is not supported by the GPU variant of this operator").
DALI_GPU_REFUSES: dict[str, str] = {"mjpeg": "DALI's GPU video decoder does not take MJPEG"}

#: What DALI's CPU video decoder takes (it is the test stand-in for NVDEC).
DALI_CPU_CODECS = frozenset({"vp8", "vp9", "mjpeg"})


def _chroma_and_depth(pix_fmt: str | None) -> tuple[str, int]:
    """('420' | '422' | '444' | '400' | '?', bits) from an FFmpeg pixel format name."""
    if not pix_fmt:
        return "?", 8
    name = pix_fmt.lower()
    depth = 8
    for bits in (16, 14, 12, 10, 9):
        if f"p{bits}" in name:
            depth = bits
            break
    if name.startswith(("gray", "y400")):
        return "400", depth
    for chroma in ("420", "422", "444", "440", "411", "410"):
        if chroma in name:
            return chroma, depth
    if name.startswith(("nv12", "nv21", "p010", "p016")):
        return "420", 10 if name.startswith("p010") else (16 if name.startswith("p016") else 8)
    return "?", depth


def nvdec_limitation(info: VideoInfo) -> str | None:
    """Why NVDEC cannot decode this video (``None`` when it can), worded for a log line or an error row."""
    if info.codec in DALI_GPU_REFUSES:
        return DALI_GPU_REFUSES[info.codec]
    limits = NVDEC_LIMITS.get(info.codec)
    if limits is None:
        return f"NVDEC on this GPU class does not decode {info.codec}"
    w, h = info.coded_width, info.coded_height
    if w < limits.min_width or h < limits.min_height:
        return f"{w}x{h} is below NVDEC's minimum for {info.codec} ({limits.min_width}x{limits.min_height})"
    if w > limits.max_width or h > limits.max_height:
        return f"{w}x{h} is above NVDEC's maximum for {info.codec} ({limits.max_width}x{limits.max_height})"
    chroma, depth = _chroma_and_depth(info.pix_fmt)
    if chroma not in ("420", "400", "?"):
        # DALI's colour kernel reads NVDEC's output as 4:2:0 (NV12)
        return f"NVDEC decodes 4:2:0 only, this {info.codec} is {info.pix_fmt}"
    if depth > limits.max_bit_depth:
        return f"NVDEC decodes {info.codec} up to {limits.max_bit_depth} bits, this one is {depth}-bit ({info.pix_fmt})"
    return None


def dali_cpu_limitation(info: VideoInfo) -> str | None:
    """Why DALI's CPU video decoder cannot decode this video (``None`` when it can)."""
    if info.codec not in DALI_CPU_CODECS:
        return f"DALI's CPU decoder does not decode {info.codec} (only {', '.join(sorted(DALI_CPU_CODECS))})"
    return None
