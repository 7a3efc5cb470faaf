"""1-frame-per-second sampling behind one interface: ``create_sampler(device)`` -> ``Sampler``.

Backends: ``cpu`` (PyAV decode, frames on the CPU) and ``gpu`` (DALI + NVDEC, frames in CUDA memory).

The names below load on first use (PEP 562): the processes that cut clips for the gpu backend import
``sampling._plan``/``_remux`` and must not pay for PyTorch and DALI, which the backends need (on a cold page
cache each worker took seconds to start, in turn).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers see; at run time ``__getattr__`` loads them
    from ._base import Sampler as Sampler, SamplerConfig as SamplerConfig, VideoSource as VideoSource
    from ._base import available_backends as available_backends, create_sampler as create_sampler
    from ._base import register_backend as register_backend
    from ._nvdec import nvdec_limitation as nvdec_limitation
    from ._plan import SamplePlan as SamplePlan, plan_samples as plan_samples
    from ._types import FrameBatch as FrameBatch, ResolvedMode as ResolvedMode, SamplingMode as SamplingMode
    from ._types import VideoOutcome as VideoOutcome

__all__ = [
    "FrameBatch", "ResolvedMode", "SamplePlan", "Sampler", "SamplerConfig", "SamplingMode", "VideoOutcome",
    "VideoSource", "available_backends", "create_sampler", "nvdec_limitation", "plan_samples", "register_backend",
]

_WHERE = {
    "Sampler": "_base", "SamplerConfig": "_base", "VideoSource": "_base", "available_backends": "_base",
    "create_sampler": "_base", "register_backend": "_base", "nvdec_limitation": "_nvdec",
    "SamplePlan": "_plan", "plan_samples": "_plan",
    "FrameBatch": "_types", "ResolvedMode": "_types", "SamplingMode": "_types", "VideoOutcome": "_types",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
