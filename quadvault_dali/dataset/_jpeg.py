"""JPEG encode/decode for dataset frames: nvJPEG for frames already on the GPU, Pillow on the CPU.

Frames sampled on the GPU are encoded there (one batched nvJPEG call, only the small JPEG bytes
cross to the host); CPU frames go through Pillow, which needs no deprecated torchvision codec.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .._files import DISK_FULL_ERRNOS, atomic_path
from ..errors import DatasetError, OutputError

JPEG_QUALITY = 90


def encode_jpegs(frames: torch.Tensor, quality: int = JPEG_QUALITY) -> list[bytes]:
    """``(N, 3, H, W)`` uint8 RGB frames -> JPEG bytes, on the frames' device."""
    if frames.ndim != 4 or frames.shape[1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"expected (N, 3, H, W) uint8 frames, got {tuple(frames.shape)} {frames.dtype}")
    if frames.is_cuda:
        from torchvision.io import encode_jpeg

        with warnings.catch_warnings():  # torchvision >= 0.29 flags its codecs as deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            encoded = encode_jpeg(list(frames.contiguous()), quality=quality)
        return [bytes(t.cpu().numpy().tobytes()) for t in encoded]
    out: list[bytes] = []
    for frame in frames.permute(0, 2, 3, 1).contiguous().numpy():
        buf = io.BytesIO()
        Image.fromarray(frame, "RGB").save(buf, format="JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


def write_atomic(path: Path, data: bytes) -> None:
    """Writes ``data`` under a temporary name, then renames: a crash never leaves half a JPEG. A write that fails
    (a full disk, a file size limit) is an ``OutputError`` naming the file: Python's own names none."""
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    except OSError as exc:
        full = exc.errno in DISK_FULL_ERRNOS
        raise OutputError(f"cannot write {path.name}: {exc.strerror or exc}", path=path,
                          hint="free space on that disk (or give another output folder); the videos whose frames "
                               "were all written are kept, and the same command goes on" if full else None) from None


def read_jpeg(path: Path) -> np.ndarray:
    """A stored frame as ``(H, W, 3)`` uint8 RGB; ``DatasetError`` naming the file when it is damaged."""
    try:
        with Image.open(path) as img:
            img.load()
            return np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise DatasetError("frame file is missing", path=path,
                           hint="re-run prepare-dataset with --merge to re-extract it") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"frame is not a readable JPEG: {exc}", path=path,
                           hint="re-run prepare-dataset with --merge to re-extract it") from None
