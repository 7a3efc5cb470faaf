"""The colour half of ``gpu_diagnose.py``: where a GPU-vs-CPU per-channel bias comes from.

For one clip, the same keyframes are converted to RGB several ways and compared pairwise:

* ``exact-601`` / ``exact-tag``: a float conversion of the decoded 4:2:0 planes (limited range, chroma
  repeated 2x2, rounded once): the ground truth, with no swscale or NVDEC rounding in it;
* ``pyav-601`` (swscale forced to BT.601, as DALI converts), ``pyav-tag`` (swscale with the stream's tag, as
  the cpu backend converts), and the same with swscale's accurate rounding and full chroma interpolation;
* ``dali-raw``: DALI's decoder alone (no resize; its output shape shows whether the coded rows leak in),
  ``dali-graph``: the project's pipeline at the native short side (resize = identity), ``dali-corrected``:
  that through ``convert_from_bt601`` (what the gpu backend hands out);
* the two samplers end to end at the native size and at 64 px square (the gpu test's setting), and the
  cpu backend's scale-and-convert redone with swscale's fast path (``AREA`` alone: truncates, 1-2 levels
  dark) and with its exact one (``ACCURATE_RND | FULL_CHR_H_INT``).

``compare`` gives the bias overall, in the top / middle / bottom 10 % of rows, in the outer 10 % of columns,
in ten horizontal bands, and in (Y, Cb, Cr): a chroma plane read at the wrong offset (coded 368 or 1088
rows against 360 or 1080 displayed) shows at the top or bottom; a rounding or range difference is uniform.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import av
import numpy as np
import torch
from av.video.reformatter import Interpolation

from quadvault_dali.pipelines import ENCODED_INPUT, FRAMES_INPUT, video_sampling_pipeline
from quadvault_dali.probe import VideoInfo
from quadvault_dali.sampling import create_sampler
from quadvault_dali.sampling._clip_decoder import feed_clips
from quadvault_dali.sampling._colour import MATRIX_WEIGHTS, convert_from_bt601, ycbcr_to_rgb
from quadvault_dali.sampling._remux import Clip, decode_clip

#: swscale's exact path: rounding to nearest, chroma interpolated at full horizontal resolution
ACCURATE = Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT


def exact_rgb(frame: av.VideoFrame, matrix: str) -> np.ndarray:
    """(H, W, 3) uint8 from the frame's 4:2:0 planes in float with the ``matrix`` weights, rounded once."""
    yuv = frame.reformat(format="yuv420p")
    h, w = yuv.height, yuv.width
    planes = [np.frombuffer(bytes(p), np.uint8).reshape(-1, p.line_size) for p in yuv.planes]
    luma = planes[0][:h, :w].astype(np.float32)
    cb, cr = (np.repeat(np.repeat(p[:(h + 1) // 2, :(w + 1) // 2], 2, 0), 2, 1)[:h, :w].astype(np.float32)
              for p in planes[1:])
    ycc = np.stack([(luma - 16) * 255 / 219, (cb - 128) * 255 / 224, (cr - 128) * 255 / 224], axis=-1)
    rgb = ycc @ ycbcr_to_rgb(*MATRIX_WEIGHTS.get(matrix, MATRIX_WEIGHTS["unknown"])).T.astype(np.float32)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def cpu_recipe(frame: av.VideoFrame, size: int, square: bool, interpolation: Any) -> np.ndarray:
    """The cpu backend's ``to_display`` (no rotation) with a chosen swscale interpolation and rounding."""
    scale = size / min(frame.width, frame.height)
    width, height = max(size, round(frame.width * scale)), max(size, round(frame.height * scale))
    image = frame.to_ndarray(width=width, height=height, format="rgb24", interpolation=interpolation)
    if square:
        top, left = (height - size) // 2, (width - size) // 2
        image = image[top: top + size, left: left + size]
    return np.ascontiguousarray(image)


def _mean(d: np.ndarray) -> list[float]:
    return [round(float(v), 2) for v in d.reshape(-1, 3).mean(axis=0)]


def compare(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Bias of ``a`` against ``b`` ((F, H, W, 3) uint8) per channel: overall, by row bands, at the side edges."""
    h, w = min(a.shape[1], b.shape[1]), min(a.shape[2], b.shape[2])
    diff = a[:, :h, :w].astype(np.float32) - b[:, :h, :w].astype(np.float32)
    edge, side = max(1, h // 10), max(1, w // 10)
    to_ycc = np.linalg.inv(ycbcr_to_rgb(*MATRIX_WEIGHTS["unknown"]))  # RGB difference -> (Y, Cb, Cr), full scale
    bias = _mean(diff)
    out = {"bias": bias, "top10": _mean(diff[:, :edge]), "middle": _mean(diff[:, edge:h - edge]),
           "bottom10": _mean(diff[:, h - edge:]),
           "left10": _mean(diff[:, :, :side]), "right10": _mean(diff[:, :, -side:]),
           "bands10": [_mean(band) for band in np.array_split(diff, 10, axis=1)],
           "bias_ycbcr": [round(float(v), 2) for v in to_ycc @ np.array(bias)],
           "mean_abs": round(float(np.abs(diff).mean()), 2),
           "ref_clipped_fraction": round(float(((b == 0) | (b == 255)).any(axis=-1).mean()), 4)}
    if a.shape != b.shape:
        out["shapes"] = [list(a.shape), list(b.shape)]
    return out


def _run_one(pipe: Any, clip: Clip, graph: bool = True) -> Any:
    pipe.build()
    if graph:  # the project's pipeline
        feed_clips(pipe, [clip])
    else:  # the bare decoder
        pipe.feed_input(ENCODED_INPUT, [np.frombuffer(clip.data, np.uint8)])
        pipe.feed_input(FRAMES_INPUT, [np.ascontiguousarray(clip.frames, np.int32)])
    (out,) = pipe.run()
    return torch.from_dlpack(out[0]).cpu().numpy().copy()


def raw_decode(device: str, clip: Clip, device_id: int) -> np.ndarray:
    """DALI's video decoder alone (no resize): (F, H, W, 3) as NVDEC / the CPU decoder put it out."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(prefetch_queue_depth=1)
    def graph():  # type: ignore[no-untyped-def]
        encoded = fn.external_source(name=ENCODED_INPUT, dtype=types.UINT8, ndim=1)
        frames = fn.external_source(name=FRAMES_INPUT, dtype=types.INT32, ndim=1)
        return fn.decoders.video(encoded, frames=frames, device="mixed" if device == "gpu" else "cpu", pad_mode="none")

    return _run_one(graph(batch_size=1, num_threads=1, device_id=device_id if device == "gpu" else None), clip,
                    graph=False)


def graph_decode(device: str, clip: Clip, size: int, device_id: int) -> np.ndarray:
    """The project's pipeline with the short side resized to ``size`` (the native one: identity): (F, H, W, 3)."""
    pipe = video_sampling_pipeline(decoder_device="mixed" if device == "gpu" else "cpu", size=size, square=False,
                                   batch_size=1, num_threads=1, device_id=device_id if device == "gpu" else None)
    return _run_one(pipe, clip).transpose(0, 2, 3, 1).copy()


def sampler_frames(device: str, path: Path, size: int, square: bool) -> tuple[np.ndarray, np.ndarray]:
    """(gpu backend, or DALI's CPU engine with ``device="cpu"``; cpu backend) keyframe frames as (F, H, W, 3)."""
    if device == "gpu":
        dali = create_sampler("gpu", mode="keyframe", size=size, square=square)
    else:
        from quadvault_dali.sampling._gpu import DaliSampler

        dali = DaliSampler(mode="keyframe", size=size, square=square)
    a, times_a, _ = dali.sample_video(path)
    b, times_b, _ = create_sampler("cpu", mode="keyframe", size=size, square=square).sample_video(path)
    if times_a != times_b:
        raise RuntimeError(f"the backends sampled different times: {times_a} vs {times_b}")
    return a.cpu().numpy().transpose(0, 2, 3, 1), b.numpy().transpose(0, 2, 3, 1)


def colour_rows(name: str, path: Path, info: VideoInfo, clip: Clip, device: str,
                device_id: int) -> list[dict[str, Any]]:
    """Every comparison for one clip (its keyframes, all in ``clip``), one row each."""
    tag = info.color_matrix
    short = min(info.width, info.height)
    frames = [f for f, _ in decode_clip(clip)]
    ref: Callable[[Callable[[av.VideoFrame], np.ndarray]], np.ndarray] = lambda fn: np.stack([fn(f) for f in frames])
    pyav601 = ref(lambda f: f.reformat(format="rgb24", src_colorspace="ITU601").to_ndarray())
    pyav601_acc = ref(lambda f: f.reformat(format="rgb24", src_colorspace="ITU601",
                                           interpolation=Interpolation.BILINEAR | ACCURATE).to_ndarray())
    pyav_tag = ref(lambda f: f.to_ndarray(format="rgb24"))  # follows the frame's tag (untagged: BT.601)
    exact601, exact_tag = ref(lambda f: exact_rgb(f, "unknown")), ref(lambda f: exact_rgb(f, tag))
    raw = raw_decode(device, clip, device_id)
    graph = graph_decode(device, clip, short, device_id)
    corrected = convert_from_bt601(torch.from_numpy(graph.transpose(0, 3, 1, 2)).contiguous(), tag)
    corrected_np = corrected.numpy().transpose(0, 2, 3, 1)
    base = {"clip": name, "tag": tag, "display": f"{info.width}x{info.height}", "frames": len(frames),
            "mb_aligned_height": -(-info.height // 16) * 16, "raw_decoder_shape": list(raw.shape)}
    pairs = [("pyav-601 vs exact-601", pyav601, exact601), ("pyav-601-accurate vs exact-601", pyav601_acc, exact601),
             ("dali-raw vs exact-601", raw, exact601), ("dali-raw vs pyav-601", raw, pyav601),
             ("dali-graph vs dali-raw", graph, raw), ("dali-corrected vs exact-tag", corrected_np, exact_tag),
             ("dali-corrected vs pyav-tag", corrected_np, pyav_tag)]
    rows = [{**base, "compare": what, **compare(a, b)} for what, a, b in pairs]
    for size, square in ((short, False), (64, True)):
        a, b = sampler_frames(device, path, size, square)
        what = f"sampler {size}{'sq' if square else ''}"
        rows.append({**base, "compare": f"{what}: dali vs cpu", **compare(a, b)})
        if square:  # the cpu backend's scale+convert redone with swscale's fast path (AREA alone) and exact one
            fast = ref(lambda f: cpu_recipe(f, size, square, Interpolation.AREA))
            exact = ref(lambda f: cpu_recipe(f, size, square, Interpolation.AREA | ACCURATE))
            rows.append({**base, "compare": f"{what}: swscale-fast vs cpu", **compare(fast, b)})
            rows.append({**base, "compare": f"{what}: dali vs swscale-exact", **compare(a, exact)})
    return rows
