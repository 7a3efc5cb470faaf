"""DALI graphs that feed the classifier: JPEG frames -> augmented, normalised NCHW float batches.

One definition serves the GPU (nvJPEG via ``device="mixed"``, augmentation on the GPU, CUDA tensors out)
and the CPU (``device_id=None``, CPU decoder), so CI runs the very graph the GPU trains with.
The reader's "label" is the dataset row id, not the class: each batch says which rows it held, so
the training loop looks up labels and video ids and can compute video-level metrics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import nvidia.dali.fn as fn
import nvidia.dali.types as types
from nvidia.dali import pipeline_def

if TYPE_CHECKING:
    from nvidia.dali.data_node import DataNode

READER_NAME = "frames"

#: Augmentation ranges; small on purpose: the model learns the user's taste in colour and motion,
#: so the jitter must not turn a grey scene into a warm one.
ROTATE_DEGREES = 10.0
CROP_AREA = (0.35, 1.0)
CROP_ASPECT = (3 / 4, 4 / 3)
BRIGHTNESS = (0.8, 1.2)
CONTRAST = (0.8, 1.2)
SATURATION = (0.8, 1.2)
HUE_DEGREES = 8.0
#: With ``jpeg_decode="full"``: the share of each batch sent to the hardware JPEG engine (DALI's default is
#: 0.65; its nvImageCodec decoder defaults to 0.9). The rest goes to nvJPEG on the CUDA cores, which the
#: training step needs, so more to the engine leaves more of the GPU to the model.
HW_DECODER_LOAD = 0.9


def training_augmentation() -> dict[str, object]:
    """The augmentation ranges above, as a model card records them."""
    return {"crop_area": list(CROP_AREA), "crop_aspect": [round(a, 4) for a in CROP_ASPECT],
            "rotate_degrees": ROTATE_DEGREES, "brightness": list(BRIGHTNESS), "contrast": list(CONTRAST),
            "saturation": list(SATURATION), "hue_degrees": HUE_DEGREES, "mirror": 0.5}


@pipeline_def(enable_conditionals=False)
def frame_pipeline(files: Sequence[str], rows: Sequence[int], *, image_size: int, mean: Sequence[float],
                   std: Sequence[float], train: bool, decode_device: str = "mixed", shard_id: int = 0,
                   num_shards: int = 1, shuffle_seed: int = 0, jpeg_decode: str = "roi") -> tuple[DataNode, DataNode]:
    """Outputs ``(images float32 (3,S,S) normalised, row id int32)`` per sample.

    ``decode_device``: ``"mixed"`` (nvJPEG, needs ``device_id``) or ``"cpu"`` (with ``device_id=None``).
    ``jpeg_decode`` (training only): ``"roi"`` decodes just the random crop's region (nvJPEG on the CUDA
    cores, which the training step also needs); ``"full"`` decodes whole frames, which lets the A100/H100
    hardware JPEG engine take most of each batch, then crops on the GPU. ``train_bench.py`` times both.
    ``mean``/``std`` are on the 0-1 scale like torchvision's. The reader pads every shard to the same
    length in evaluation, where the iterator drops the padding so every image is seen exactly once. Training
    does not pad (a padded batch of one image repeated was left queued by the iterator's reset and came out as
    the next epoch's first batch); the caller gives it a file list that is a whole number of batches per shard.
    Training permutes that whole list after each epoch with the same seed on every rank, so each epoch visits
    every entry once across the shards. ``random_shuffle`` did not: its 1024-sample buffer mixes samples across
    epoch boundaries, so on a small dataset an epoch was close to sampling with replacement.
    """
    if jpeg_decode not in ("roi", "full"):
        raise ValueError(f"jpeg_decode must be 'roi' or 'full', got {jpeg_decode!r}")
    jpegs, row_ids = fn.readers.file(
        files=list(files), labels=list(rows), name=READER_NAME, shard_id=shard_id, num_shards=num_shards,
        pad_last_batch=not train, stick_to_shard=not train,
        # the seed only where it is used: DALI warns about a shuffle seed without the shuffle
        **({"shuffle_after_epoch": True, "shuffle_after_epoch_seed": shuffle_seed} if train else {}))
    scale_mean = [m * 255.0 for m in mean]
    scale_std = [s * 255.0 for s in std]
    if train:
        if jpeg_decode == "full":
            engine = {"hw_decoder_load": HW_DECODER_LOAD} if decode_device == "mixed" else {}
            images = fn.decoders.image(jpegs, device=decode_device, output_type=types.RGB, **engine)
            images = fn.random_resized_crop(images, size=(image_size, image_size), random_area=list(CROP_AREA),
                                            random_aspect_ratio=list(CROP_ASPECT), num_attempts=10, antialias=True)
        else:
            images = fn.decoders.image_random_crop(
                jpegs, device=decode_device, output_type=types.RGB, random_area=list(CROP_AREA),
                random_aspect_ratio=list(CROP_ASPECT), num_attempts=10)
            images = fn.resize(images, resize_x=image_size, resize_y=image_size, antialias=True)
        images = fn.rotate(images, angle=fn.random.uniform(range=(-ROTATE_DEGREES, ROTATE_DEGREES)),
                           keep_size=True, fill_value=0)
        images = fn.color_twist(images, brightness=fn.random.uniform(range=BRIGHTNESS),
                                contrast=fn.random.uniform(range=CONTRAST),
                                saturation=fn.random.uniform(range=SATURATION),
                                hue=fn.random.uniform(range=(-HUE_DEGREES, HUE_DEGREES)))
        images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW", mean=scale_mean,
                                          std=scale_std, mirror=fn.random.coin_flip(probability=0.5))
    else:
        images = fn.decoders.image(jpegs, device=decode_device, output_type=types.RGB)
        images = fn.resize(images, resize_shorter=image_size, antialias=True)
        images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW",
                                          crop=(image_size, image_size), crop_pos_x=0.5, crop_pos_y=0.5,
                                          mean=scale_mean, std=scale_std)
    return images, row_ids
