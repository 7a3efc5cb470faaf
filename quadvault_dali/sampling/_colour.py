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


# --- HDR ---------------------------------------------------------------------------------------------------
# Drones (DJI HLG), phones (HLG, Dolby Vision) and action cameras (HDR10) record HDR: a PQ or HLG signal in
# BT.2020 primaries. Read as SDR it is grey and dim (a test pattern's white 235 came out 144 from PQ, and the
# demo model scored identical bars 0.90 in SDR, 0.51 in HLG, 0.16 in PQ). Every decoder path (the CPU
# sampler, DALI, the FFmpeg client, the reel) tone-maps such frames here into SDR BT.709, so the model sees,
# and the reel shows, what an SDR grade of the shot looks like.

#: FFmpeg's names of the HDR transfer functions: PQ (SMPTE ST 2084: HDR10, Dolby Vision 8.1) and HLG
HDR_TRANSFERS = ("smpte2084", "arib-std-b67")
#: the HDR signal level that becomes SDR white (ITU-R BT.2408 reference white, 203 cd/m²)
SDR_WHITE_NITS = 203.0
#: the display HLG is rendered for (BT.2100's reference: system gamma 1.2 at 1000 cd/m²)
HLG_PEAK_NITS = 1000.0
#: above this fraction of SDR white, highlights are compressed smoothly into the range left
SHOULDER = 0.8
#: linear-light BT.2020 RGB -> BT.709 RGB (ITU-R BT.2087)
_BT2020_TO_BT709 = ((1.6605, -0.5876, -0.0728), (-0.1246, 1.1329, -0.0083), (-0.0182, -0.1006, 1.1187))


def is_hdr(transfer: str) -> bool:
    """Whether a stream with this transfer (``VideoInfo.color_transfer``) is PQ or HLG HDR."""
    return transfer in HDR_TRANSFERS


def _pq_nits(signal: torch.Tensor) -> torch.Tensor:
    m1, m2 = 2610 / 16384, 2523 / 4096 * 128
    c1, c2, c3 = 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
    p = signal.clamp(0, 1) ** (1 / m2)
    return 10000.0 * ((p - c1).clamp(min=0) / (c2 - c3 * p)) ** (1 / m1)


def _hlg_nits(signal: torch.Tensor) -> torch.Tensor:
    a, b, c = 0.17883277, 0.28466892, 0.55991073
    e = signal.clamp(0, 1)
    scene = torch.where(e <= 0.5, e * e / 3, (torch.exp((e - c) / a) + b) / 12)
    luma = (0.2627 * scene[:, 0:1] + 0.6780 * scene[:, 1:2] + 0.0593 * scene[:, 2:3]).clamp(min=1e-9)
    return HLG_PEAK_NITS * luma ** 0.2 * scene  # the OOTF: system gamma 1.2


def hdr_to_sdr(signal: torch.Tensor, transfer: str) -> torch.Tensor:
    """``(F, 3, H, W)`` float R'G'B' in 0..1 of a PQ or HLG stream (BT.2020 primaries) -> uint8 SDR BT.709
    (display gamma 2.4), on its device: reference white to 255, a soft shoulder above ``SHOULDER``."""
    nits = _pq_nits(signal) if transfer == "smpte2084" else _hlg_nits(signal)
    mix = torch.tensor(_BT2020_TO_BT709, dtype=signal.dtype, device=signal.device)
    linear = torch.einsum("ij,fjhw->fihw", mix, nits / SDR_WHITE_NITS).clamp(min=0)
    over = (linear - SHOULDER).clamp(min=0)
    linear = torch.where(linear <= SHOULDER, linear, SHOULDER + (1 - SHOULDER) * over / (over + (1 - SHOULDER)))
    return (linear.clamp(0, 1) ** (1 / 2.4) * 255).round_().to(torch.uint8)


def to_sdr(frames: torch.Tensor, transfer: str) -> torch.Tensor:
    """``(F, 3, H, W)`` uint8 RGB as decoded -> SDR: tone-mapped where ``transfer`` is HDR, else unchanged.
    The samplers pass 8-bit RGB on every backend, so their frames agree (a PQ step of 1/255 is about a
    level of the result near white)."""
    if not is_hdr(transfer) or frames.numel() == 0:
        return frames
    return hdr_to_sdr(frames.float() / 255.0, transfer)
