"""Choosing where work runs: ``auto`` means the GPU when CUDA and DALI can both use it."""

from __future__ import annotations

import functools
import logging
from typing import Literal

from .errors import BackendUnavailableError

DeviceChoice = Literal["auto", "gpu", "cpu"]
log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def gpu_status() -> tuple[bool, str]:
    """(usable, reason): whether CUDA and DALI's GPU video decoder can be used here, and why not."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return False, "PyTorch is not installed"
    if not torch.cuda.is_available():
        return False, "no CUDA device visible to PyTorch"
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False, "NVIDIA DALI is not installed (pip install nvidia-dali-cuda120)"
    return True, f"CUDA device {torch.cuda.get_device_name(0)}"


#: The NVIDIA driver's video-decode library DALI loads at run time, by platform.
NVDEC_LIBRARIES = {"linux": "libnvcuvid.so.1", "win32": "nvcuvid.dll"}


@functools.lru_cache(maxsize=None)
def nvdec_status() -> tuple[bool, str]:
    """(usable, reason): whether the driver's NVDEC library loads. CUDA can work without it (a container
    started without the ``video`` driver capability), and then every clip would fail in DALI."""
    import ctypes
    import sys

    name = NVDEC_LIBRARIES.get(sys.platform, NVDEC_LIBRARIES["linux"])
    try:
        ctypes.CDLL(name)
    except OSError as exc:
        return False, (f"the NVIDIA video decode library {name} cannot be loaded ({exc}); in a container, "
                       "add 'video' to NVIDIA_DRIVER_CAPABILITIES")
    return True, name


def resolve_device(choice: str = "auto") -> Literal["gpu", "cpu"]:
    """Turns ``auto|gpu|cpu`` into a concrete backend; ``gpu`` on a machine without one is an error."""
    if choice not in ("auto", "gpu", "cpu"):
        raise BackendUnavailableError(f"unknown device {choice!r}; choose one of auto, gpu, cpu")
    if choice == "cpu":
        return "cpu"
    usable, reason = gpu_status()
    if usable:
        return "gpu"
    if choice == "gpu":
        raise BackendUnavailableError(f"--device gpu asked for, but {reason}",
                                      hint="use --device cpu or --device auto")
    log.debug("using the CPU backend: %s", reason)
    return "cpu"


def torch_device(backend: Literal["gpu", "cpu"], device_id: int = 0) -> "torch.device":  # noqa: F821
    import torch

    return torch.device(f"cuda:{device_id}") if backend == "gpu" else torch.device("cpu")
