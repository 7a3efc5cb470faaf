"""Same colours from both decoders: DALI converts every video with the BT.601 matrix, PyAV with the
matrix the stream is tagged with.

Nearly all HD and 4K footage (drone cameras included) is tagged BT.709, and phones' HDR clips BT.2020.
DALI's video decoders (NVDEC's colour kernel and its CPU decoder alike) ignore the tag and convert
with BT.601; PyAV's conversion follows it. Saturated reds and greens then differ by 20+ levels
(6 on average on a warm drone scene), which is exactly what a highlight model learns, and a model
trained on one backend's frames would score the other's differently.

Both conversions are linear in (Y, Cb - 128, Cr - 128) with the same range scaling, so the DALI
output is brought to the tagged matrix by one 3×3 product in RGB (applied after the resize, which
is linear too): RGB_tag = K_tag · K_601⁻¹ · RGB_601. Only colours DALI clipped at 0 or 255 stay a
little off.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

#: FFmpeg colour-matrix name -> (Kr, Kb). Untagged video is converted as BT.601 by FFmpeg too.
MATRIX_WEIGHTS: dict[str, tuple[float, float]] = {
    "bt709": (0.2126, 0.0722),
    "bt470bg": (0.299, 0.114),
    "smpte170m": (0.299, 0.114),
    "unknown": (0.299, 0.114),
    "fcc": (0.30, 0.11),
    "smpte240m": (0.212, 0.087),
    "bt2020nc": (0.2627, 0.0593),
    "bt2020c": (0.2627, 0.0593),
}
_BT601 = MATRIX_WEIGHTS["bt470bg"]


def ycbcr_to_rgb(kr: float, kb: float) -> np.ndarray:
    """The 3×3 matrix from (Y, Cb, Cr), chroma centred on 0, to RGB for luma weights ``kr``, ``kb``."""
    kg = 1.0 - kr - kb
    return np.array([
        [1.0, 0.0, 2.0 * (1.0 - kr)],
        [1.0, -2.0 * kb * (1.0 - kb) / kg, -2.0 * kr * (1.0 - kr) / kg],
        [1.0, 2.0 * (1.0 - kb), 0.0],
    ])


def correction_from_bt601(matrix: str) -> np.ndarray | None:
    """The RGB→RGB matrix that turns a BT.601 conversion into one with ``matrix``; ``None`` when the
    tag is BT.601-like, untagged or unknown (FFmpeg then converts as BT.601 too)."""
    weights = MATRIX_WEIGHTS.get(matrix)
    if weights is None or weights == _BT601:
        return None
    return ycbcr_to_rgb(*weights) @ np.linalg.inv(ycbcr_to_rgb(*_BT601))


@functools.lru_cache(maxsize=None)
def _correction_weights(matrix: str, device: torch.device) -> torch.Tensor | None:
    """``correction_from_bt601`` as a float tensor on ``device``: built once, not per decoded clip."""
    correction = correction_from_bt601(matrix)
    return None if correction is None else torch.as_tensor(correction, dtype=torch.float32, device=device)


def convert_from_bt601(frames: torch.Tensor, matrix: str) -> torch.Tensor:
    """``(F, 3, H, W)`` uint8 RGB converted with BT.601 -> as converted with ``matrix``, on their device."""
    weights = _correction_weights(matrix, frames.device)
    if weights is None or frames.numel() == 0:
        return frames
    mixed = torch.einsum("ij,fjhw->fihw", weights, frames.float())
    return mixed.round_().clamp_(0, 255).to(torch.uint8)
