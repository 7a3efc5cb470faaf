"""1-frame-per-second sampling behind one interface: ``create_sampler(device)`` -> ``Sampler``.

Backends: ``cpu`` (PyAV decode, frames on the CPU) and ``gpu`` (DALI + NVDEC, frames in CUDA memory).

The names below load on first use (PEP 562): the processes that cut clips for the gpu backend import
``sampling._plan``/``_remux`` and must not pay for PyTorch and DALI, which the backends need (on a cold page
cache each worker took seconds to start, in turn).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._base import Sampler, SamplerConfig, VideoSource, available_backends, create_sampler, register_backend
    from ._nvdec import nvdec_limitation
    from ._plan import SamplePlan, plan_samples
    from ._types import FrameBatch, ResolvedMode, SamplingMode, VideoOutcome

_WHERE = {
    "Sampler": "_base", "SamplerConfig": "_base", "VideoSource": "_base", "available_backends": "_base",
    "create_sampler": "_base", "register_backend": "_base", "nvdec_limitation": "_nvdec",
    "SamplePlan": "_plan", "plan_samples": "_plan",
    "FrameBatch": "_types", "ResolvedMode": "_types", "SamplingMode": "_types", "VideoOutcome": "_types",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # found directly from now on
    return value
