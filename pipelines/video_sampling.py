"""The DALI graph that turns in-memory video clips into resized frame sequences.

Inputs are fed per batch through ``external_source``: each sample is one encoded clip (an MP4 in a
1-D uint8 array) and the list of frame indices to decode from it. Output: one ``(F, 3, H, W)`` uint8
RGB sequence per sample, the short side resized to ``size`` (and centre-cropped square if asked) on
the device the decoder put the frames on: NVDEC + GPU kernels with ``decoder_device="mixed"``, all
CPU with ``"cpu"`` (DALI's CPU video decoder knows only VP8/VP9/MJPEG; the tests use it to run this
same graph without a GPU).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from nvidia.dali import fn, pipeline_def, types

if TYPE_CHECKING:
    from nvidia.dali.data_node import DataNode

ENCODED_INPUT = "encoded"
FRAMES_INPUT = "frames"
#: per clip, (height, width) of the region to keep as fractions of the decoded picture, from its top-left
#: corner: (1, 1) but for H.264/HEVC clips decoded to their coded size (``sampling._uncrop``)
ROI_INPUT = "roi"
DecoderDevice = Literal["mixed", "cpu"]


@pipeline_def(prefetch_queue_depth=1)
def video_sampling_pipeline(decoder_device: DecoderDevice = "mixed", size: int = 224, square: bool = True,
                            feed_without_copy: bool = False) -> DataNode:
    """Decode the wanted frames of each clip, resize the short side to ``size``, optionally crop square.

    Build with ``video_sampling_pipeline(decoder_device=..., size=..., square=..., batch_size=...,
    num_threads=..., device_id=...)``; feed ``ENCODED_INPUT``, ``FRAMES_INPUT`` and ``ROI_INPUT`` with
    ``pipe.feed_input`` before each ``pipe.run()``. ``prefetch_queue_depth=1`` because every batch is
    fed by the caller just before it runs. ``feed_without_copy``: DALI reads the fed clips' own memory
    (``external_source(no_copy=True)``), which the caller keeps alive and unchanged until the run returns.
    """
    if decoder_device not in ("mixed", "cpu"):
        raise ValueError(f"decoder_device must be 'mixed' or 'cpu', got {decoder_device!r}")
    encoded = fn.external_source(name=ENCODED_INPUT, dtype=types.UINT8, ndim=1, no_copy=feed_without_copy)
    frames = fn.external_source(name=FRAMES_INPUT, dtype=types.INT32, ndim=1)
    roi_end = fn.external_source(name=ROI_INPUT, dtype=types.FLOAT, ndim=1)
    # pad_mode="none": an index past the clip's end must fail (and the video go to the CPU decoder), not
    # come back as a black frame that would be scored as footage (the default pads with zeros)
    video = fn.decoders.video(encoded, frames=frames, device=decoder_device, pad_mode="none")  # (F, H, W, 3)
    return to_model_input(video, roi_end, size=size, square=square)


#: the streaming graph's one input: a whole encoded clip per ``feed_input`` (``video_stream_pipeline``)
STREAM_INPUT = "stream"


@pipeline_def(prefetch_queue_depth=1)
def video_stream_pipeline(decoder_device: DecoderDevice = "mixed", size: int = 224, square: bool = True,
                          sequence_length: int = 16, roi: tuple[float, float] = (1.0, 1.0)) -> DataNode:
    """Every frame of each fed clip, in order, ``sequence_length`` frames per sample and ``batch_size``
    samples per run, resized as ``to_model_input`` does (the picture region ``roi`` is fixed when built).

    ``fn.experimental.inputs.video`` keeps one decoder for a whole fed clip, where ``fn.decoders.video``
    sets one up for every sample; a run ends where a clip ends (a shorter last batch), so the caller runs
    it until it has all the clip's frames. Feed ``STREAM_INPUT`` with ``pipe.feed_input`` (one clip each).
    """
    if decoder_device not in ("mixed", "cpu"):
        raise ValueError(f"decoder_device must be 'mixed' or 'cpu', got {decoder_device!r}")
    video = fn.experimental.inputs.video(name=STREAM_INPUT, sequence_length=sequence_length, device=decoder_device,
                                         last_sequence_policy="partial")
    if tuple(roi) != (1.0, 1.0):  # a build-time region: a per-run input would clash with the shorter last batch
        video = fn.slice(video, rel_start=[0.0, 0.0], rel_shape=list(roi), axis_names="HW")
    return to_model_input(video, None, size=size, square=square)


def to_model_input(video: DataNode, roi_end: DataNode | None, *, size: int, square: bool) -> DataNode:
    """``(F, H, W, 3)`` decoded frames -> ``(F, 3, h, w)``: the picture region kept, its short side resized
    to ``size``, centre-cropped square if asked.

    The region is cut out before the resize, not given to it as a region of interest: the resize filter
    reads past a region's edge, and some encoders pad with black (a Dolby Vision H.264 file in the corpus
    does), which darkened the last row by 26-59 levels. The cut costs a copy of the full-size frames
    (``sample_pixels_for`` budgets for it); a region of (1, 1) keeps the whole frame.
    """
    if roi_end is not None:  # None: keep the whole picture (a graph without the region input)
        video = fn.slice(video, rel_start=[0.0, 0.0], rel_shape=roi_end, axis_names="HW")
    video = fn.resize(video, resize_shorter=size, interp_type=types.INTERP_LINEAR, antialias=True)
    if square:
        video = fn.crop(video, crop=(size, size), crop_pos_x=0.5, crop_pos_y=0.5)
    return fn.transpose(video, perm=[0, 3, 1, 2])  # (F, 3, H, W), as PyTorch wants
