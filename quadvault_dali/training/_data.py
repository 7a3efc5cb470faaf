"""Training data: the dataset table, up-front JPEG validation, and DALI loaders that say which rows they held.

A single corrupt JPEG would stop a DALI pipeline mid-epoch (the decoder fails the whole batch), so every
frame is decoded once with PIL before training; bad ones are reported by name and left out.
"""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ..errors import DatasetError

log = logging.getLogger(__name__)


@dataclass
class FrameTable:
    """The usable frames of one split: absolute JPEG paths with labels and video ids, row-aligned."""

    files: list[str]
    labels: np.ndarray
    video_ids: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def n_videos(self) -> int:
        return len(set(self.video_ids))


@dataclass
class TrainingData:
    root: Path
    train: FrameTable
    val: FrameTable
    fingerprint: str
    settings: dict = field(default_factory=dict)  # prepare-dataset's (frame size, fps, sampling, JPEG quality)
    #: the held-out videos (``dataset._split``): never trained on or tuned with; empty when the dataset has none
    test: FrameTable = field(default_factory=lambda: FrameTable([], np.zeros(0, np.int64), []))


def check_jpeg(path: str) -> str | None:
    """``None`` when the file decodes completely as an image, else why not."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.format != "JPEG":
                return f"not a JPEG ({im.format})"
            im.load()  # full decode: verify() alone misses truncated data
            if im.mode not in ("RGB", "L", "CMYK", "YCbCr"):
                return f"unsupported colour mode {im.mode}"
    except FileNotFoundError:
        return "file is missing"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"cannot decode ({exc})"
    return None


def validate_jpegs(files: Sequence[str], workers: int = 8) -> list[str | None]:
    """One ``check_jpeg`` verdict per file, checked in parallel threads (PIL releases the GIL)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(check_jpeg, files, chunksize=64))


def dataset_fingerprint(table: "pa.Table") -> str:  # noqa: F821
    """What a model card records of the dataset it was trained on: its frames, videos, labels and splits."""
    digest = hashlib.sha256()
    for column in ("frame_path", "video_id", "label", "split"):
        digest.update("\x1f".join(map(str, table.column(column).to_pylist())).encode())
    return digest.hexdigest()[:16]


def load_training_data(dataset: str | Path) -> TrainingData:
    """Reads ``dataset.parquet`` (or its folder), validates every frame, splits train/val/test."""
    from ..dataset import read_dataset

    ds = read_dataset(dataset)
    table = ds.table
    paths = [str(ds.root / p) for p in table.column("frame_path").to_pylist()]
    labels = np.asarray(table.column("label").to_pylist(), dtype=np.int64)
    video_ids = [str(v) for v in table.column("video_id").to_pylist()]
    splits = table.column("split").to_pylist()
    bad_split = sorted({s for s in splits if s not in ("train", "val", "test")})
    if bad_split:
        raise DatasetError(f"unknown split value(s) {bad_split}; expected 'train', 'val' or 'test'", path=ds.path)
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise DatasetError("labels must be 0 (normal) or 1 (highlight)", path=ds.path)
    verdicts = validate_jpegs(paths)
    tables = {}
    for split in ("train", "val", "test"):
        keep = [i for i, s in enumerate(splits) if s == split and verdicts[i] is None]
        skipped = [(paths[i], str(verdicts[i])) for i, s in enumerate(splits) if s == split and verdicts[i]]
        if skipped:  # one line per split, not one per frame (a deleted frame folder is hundreds)
            log.warning("skipping %d unreadable %s frame(s), e.g. %s: %s; prepare-dataset --merge extracts them "
                        "again", len(skipped), split, skipped[0][0], skipped[0][1])
            for file, why in skipped:
                log.debug("skipping frame %s: %s", file, why)
        tables[split] = FrameTable([paths[i] for i in keep], labels[keep], [video_ids[i] for i in keep], skipped)
    for split in ("train", "val"):
        if len(tables[split]) == 0:
            raise DatasetError(f"the {split} split has no usable frames", path=ds.path,
                               hint="label more videos and run prepare-dataset --merge")
    if len(set(tables["train"].labels.tolist())) < 2:
        raise DatasetError("the train split holds only one class; both highlights and normal clips are needed",
                           path=ds.path)
    if len(set(tables["val"].labels.tolist())) < 2:  # e.g. --merge moved a class's only validation video
        log.warning("%s: the validation split holds only one class: the threshold and the best epoch are "
                    "chosen without the other (ROC-AUC undefined); label a few more clips of it", ds.path)
    return TrainingData(ds.root, tables["train"], tables["val"], dataset_fingerprint(table), dict(ds.settings),
                        test=tables["test"])


def video_balance_weights(video_ids: Sequence[str]) -> np.ndarray:
    """Each frame's weight in the training loss: 1/sqrt(its video's frame count), scaled to a mean of 1.

    The loss is per frame, so a 20-minute clip (1,200 frames) outweighed a 5-second one 240 to 1, and one long
    normal clip carried a third of an epoch's loss (an ML review's find). With these weights a video counts by
    the square root of its length (15 to 1 there): long clips still teach more, not everything. Videos of one
    length get weight 1 exactly."""
    if not len(video_ids):
        return np.zeros(0, np.float64)
    _, inverse, counts = np.unique(np.asarray(video_ids), return_inverse=True, return_counts=True)
    weights = 1.0 / np.sqrt(counts[inverse].astype(np.float64))
    return weights / weights.mean()


#: Row id of a training image that only completes an epoch's last batches: it is a real frame (BatchNorm
#: sees a normal batch) but counts in no loss or metric, so every frame weighs the same in every epoch.
FILLER = -1


def _training_rows(n: int, *, multiple: int, seed: int) -> tuple[list[int], list[int]]:
    """(frame of each reader entry, row id it reports): the ``n`` rows in a seeded order, then fillers.

    The reader only visits every entry once per epoch when no shard's epoch ends mid-batch (a ragged end is
    filled from the next epoch, which the per-epoch shuffle then repeats or skips), so the list is topped up
    to a multiple of ``num_shards * batch_size`` with frames reported as ``FILLER``.
    """
    rng = np.random.default_rng(seed)
    rows = rng.permutation(n).tolist()
    extra = (-n) % multiple
    fillers = rng.choice(n, size=extra, replace=extra > n).tolist()
    return rows + fillers, rows + [FILLER] * extra


class LoaderCheckpointError(ValueError):
    """A saved data-loader checkpoint does not restore (another DALI version's, or damaged)."""


class DaliFrameLoader:
    """Iterates ``(images (B,3,S,S) float on the device, row ids (B,) int64 CPU)`` over one split.

    Wraps ``pipelines.training.frame_pipeline`` in ``DALIGenericIterator``. Evaluation uses LastBatchPolicy.PARTIAL
    with the reader's padding, so each image of the shard is returned exactly once per epoch. Training
    gives every rank the same number of full batches; across the ranks each frame is returned exactly
    once per epoch, and fewer than ``num_shards * batch_size`` extra images carry the row id ``FILLER``.
    """

    def __init__(self, frames: FrameTable, *, image_size: int, mean: Sequence[float], std: Sequence[float],
                 train: bool, batch_size: int, backend: str, device_id: int = 0, shard_id: int = 0,
                 num_shards: int = 1, seed: int = 0, num_threads: int = 2, jpeg_decode: str = "roi",
                 checkpoint: bytes | None = None) -> None:
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        from ..pipelines.training import READER_NAME, frame_pipeline

        gpu = backend == "gpu"
        self.frames = frames
        self.batch_size = batch_size
        files, rows = list(range(len(frames))), list(range(len(frames)))
        if train:  # the same list on every rank: the reader shards it and shuffles it after each epoch
            files, rows = _training_rows(len(frames), multiple=num_shards * batch_size, seed=seed)
        def build(checkpointing: bool, restored: bytes | None) -> Any:
            pipe = frame_pipeline(
                [frames.files[r] for r in files], rows, image_size=image_size, mean=list(mean), std=list(std),
                train=train, decode_device="mixed" if gpu else "cpu", shard_id=shard_id, num_shards=num_shards,
                shuffle_seed=seed, batch_size=batch_size, num_threads=num_threads,
                device_id=device_id if gpu else None, seed=seed + 7919 * shard_id, prefetch_queue_depth=2,
                jpeg_decode=jpeg_decode, enable_checkpointing=checkpointing,
                **({"checkpoint": restored} if restored else {}))
            pipe.build()
            return pipe

        # training's reader order and augmentation draws can be saved after each epoch, so --resume goes on
        # with exactly the batches the run would have had (DALI restores them from ``checkpoint``)
        self.checkpointing = train
        try:
            self.pipe = build(self.checkpointing, checkpoint)
        except RuntimeError as exc:
            if checkpoint:  # another DALI version's, or damaged: the caller decides what the epochs get instead
                raise LoaderCheckpointError(f"the data loader's saved position cannot be restored ({exc})") from exc
            if not train or "heckpoint" not in str(exc):
                raise
            log.warning("this DALI cannot checkpoint the training loader (%s); a resumed run will see its frames "
                        "in an order of its own", exc)
            self.checkpointing = False
            self.pipe = build(False, None)
        # training shards hold whole batches (nothing to drop); evaluation returns the padded shard's tail
        policy = LastBatchPolicy.DROP if train else LastBatchPolicy.PARTIAL
        self.iterator = DALIGenericIterator([self.pipe], ["images", "rows"], reader_name=READER_NAME,
                                            last_batch_policy=policy, auto_reset=True)

    def __len__(self) -> int:
        return len(self.iterator)

    def checkpoint(self) -> bytes | None:
        """The training loader's state (reader position and order, augmentation generators; DALI's serialized
        protobuf) between epochs, for ``checkpoint=`` of a loader that is to go on exactly from here; ``None``
        where DALI could not take it (the run then resumes with an order of its own)."""
        if not self.checkpointing:
            return None
        try:
            return bytes(self.iterator.checkpoints()[0])
        except (RuntimeError, ValueError) as exc:
            log.warning("could not save the data loader's position (%s); a resumed run will see its frames in "
                        "an order of its own", exc)
            self.checkpointing = False
            return None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self.iterator:
            out = batch[0]
            yield out["images"], out["rows"].reshape(-1).long()
