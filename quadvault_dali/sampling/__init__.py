"""1-frame-per-second sampling behind one interface: ``create_sampler(device)`` -> ``Sampler``.

Backends: ``cpu`` (PyAV decode, frames on the CPU) and ``gpu`` (DALI + NVDEC, frames in CUDA memory).
"""

from ._base import Sampler, SamplerConfig, VideoSource, available_backends, create_sampler, register_backend
from ._nvdec import nvdec_limitation
from ._plan import SamplePlan, plan_samples
from ._types import FrameBatch, ResolvedMode, SamplingMode, VideoOutcome
from . import _cpu  # noqa: F401  (registers "cpu")

try:  # the GPU backend needs DALI; without it only "cpu" is registered
    from . import _gpu  # noqa: F401  (registers "gpu")
except ImportError:  # pragma: no cover - depends on the machine
    pass

__all__ = [
    "FrameBatch", "ResolvedMode", "SamplePlan", "Sampler", "SamplerConfig", "SamplingMode", "VideoOutcome",
    "VideoSource", "available_backends", "create_sampler", "nvdec_limitation", "plan_samples", "register_backend",
]
