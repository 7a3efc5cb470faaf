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

from ..probe import HDR_NAMES

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
HDR_TRANSFERS = tuple(HDR_NAMES)
#: the HDR signal level of SDR's nominal white, 1.0 in linear light (ITU-R BT.2408 reference white, 203 cd/m²);
#: past ``KNEE`` it is rolled off like all light above it, and lands at code 227
SDR_WHITE_NITS = 203.0
#: the display HLG is rendered for (BT.2100's reference: system gamma 1.2 at 1000 cd/m²)
HLG_PEAK_NITS = 1000.0
#: the brightest light kept apart from white: what HDR10 is mastered to most often, and HLG's reference display.
#: Brighter light (the sun, specular glints) is white
HDR_PEAK_NITS = 1000.0
#: below this share of SDR white (linear light) colours pass unchanged; from it up to ``HDR_PEAK_NITS`` the
#: brightest channel rolls off smoothly into the range left, the colour's ratios kept, so clouds and sky keep
#: their detail and hue (a shoulder reaching white only at infinity put everything above 300 cd/m² into
#: codes 250-255 and washed bright colours out: a real-footage check)
KNEE = 0.5
#: linear-light BT.2020 RGB -> BT.709 RGB (ITU-R BT.2087)
_BT2020_TO_BT709 = ((1.6605, -0.5876, -0.0728), (-0.1246, 1.1329, -0.0083), (-0.0182, -0.1006, 1.1187))
_HLG = (0.17883277, 0.28466892, 0.55991073)


def is_hdr(transfer: str) -> bool:
    """Whether a stream with this transfer (``VideoInfo.color_transfer``) is PQ or HLG HDR."""
    return transfer in HDR_TRANSFERS


def _linear(signal: torch.Tensor, transfer: str) -> torch.Tensor:
    """Per channel, signal (0..1) -> light: PQ's in cd/m² (its EOTF), HLG's scene light 0..1 (its inverse OETF)."""
    e = signal.clamp(0, 1)
    if transfer == "smpte2084":
        m1, m2 = 2610 / 16384, 2523 / 4096 * 128
        c1, c2, c3 = 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
        p = e ** (1 / m2)
        return 10000.0 * ((p - c1).clamp(min=0) / (c2 - c3 * p)) ** (1 / m1)
    a, b, c = _HLG
    return torch.where(e <= 0.5, e * e / 3, (torch.exp((e - c) / a) + b) / 12)


@functools.lru_cache(maxsize=None)
def _primaries(device: torch.device) -> torch.Tensor:
    """``_BT2020_TO_BT709`` on ``device``, made once (a copy to the GPU per frame waits for it)."""
    return torch.tensor(_BT2020_TO_BT709, dtype=torch.float32, device=device)


def _to_sdr_code(light: torch.Tensor, transfer: str) -> torch.Tensor:
    """``_linear``'s light of ``(F, 3, H, W)`` frames -> uint8 SDR BT.709 (display gamma 2.4)."""
    if transfer != "smpte2084":  # HLG: the 1000-cd/m² display's OOTF, system gamma 1.2
        luma = (0.2627 * light[:, 0:1] + 0.6780 * light[:, 1:2] + 0.0593 * light[:, 2:3]).clamp(min=1e-9)
        light = HLG_PEAK_NITS * luma ** 0.2 * light
    linear = torch.einsum("ij,fjhw->fihw", _primaries(light.device), light / SDR_WHITE_NITS).clamp(min=0)
    top = linear.amax(dim=1, keepdim=True)
    room = HDR_PEAK_NITS / SDR_WHITE_NITS
    t = (top - KNEE).clamp(min=0) / (1 - KNEE)
    w = (room - KNEE) / (1 - KNEE)  # extended Reinhard on what is above the knee: slope 1 there, white at the peak
    rolled = KNEE + (1 - KNEE) * t * (1 + t / (w * w)) / (1 + t)
    linear = linear * torch.where(top > KNEE, rolled / top.clamp(min=1e-9), torch.ones_like(top))
    return (linear.clamp(0, 1) ** (1 / 2.4) * 255).round_().to(torch.uint8)


def hdr_to_sdr(signal: torch.Tensor, transfer: str) -> torch.Tensor:
    """``(F, 3, H, W)`` float R'G'B' in 0..1 of a PQ or HLG stream (BT.2020 primaries) -> uint8 SDR BT.709
    (display gamma 2.4), on its device: BT.2408 reference white as SDR's 1.0, below ``KNEE`` unchanged, light
    above it rolled off up to ``HDR_PEAK_NITS``."""
    return _to_sdr_code(_linear(signal, transfer), transfer)


@functools.lru_cache(maxsize=4)
def _light_table(transfer: str, device: torch.device) -> torch.Tensor:
    """``_linear`` of every 16-bit code: the per-channel, costly part of a 16-bit frame's conversion."""
    return _linear(torch.arange(65536, dtype=torch.float32, device=device) / 65535.0, transfer)


def hdr16_to_sdr(codes: torch.Tensor, transfer: str) -> torch.Tensor:
    """``hdr_to_sdr`` of ``(F, 3, H, W)`` 16-bit codes (the reel's frames), the transfer function looked up."""
    return _to_sdr_code(_light_table(transfer, codes.device)[codes.long()], transfer)


@functools.lru_cache(maxsize=4)
def _sdr_table(transfer: str, device: torch.device) -> torch.Tensor:
    """``hdr_to_sdr`` of every 8-bit RGB triple, ``(256³, 3)`` uint8 (48 MB, about a second to build once): the
    samplers' frames are 8-bit, so a lookup is exact and costs a gather, not a tone curve per pixel."""
    table = torch.empty((1 << 24, 3), dtype=torch.uint8, device=device)
    levels = torch.arange(256, device=device)
    step = 1 << 20
    for start in range(0, 1 << 24, step):
        index = torch.arange(start, start + step, device=device)
        rgb = torch.stack([levels[index >> 16], levels[(index >> 8) & 255], levels[index & 255]])
        table[start: start + step] = hdr_to_sdr(rgb.float().div_(255.0).T.reshape(1, step, 3, 1)
                                                .permute(0, 2, 1, 3), transfer)[0, :, :, 0].T
    return table


def to_sdr(frames: torch.Tensor, transfer: str) -> torch.Tensor:
    """``(F, 3, H, W)`` uint8 RGB as decoded -> SDR: tone-mapped where ``transfer`` is HDR, else unchanged.
    The samplers pass 8-bit RGB on every backend, so their frames agree (a PQ step of 1/255 is about a
    level of the result near white)."""
    if not is_hdr(transfer) or frames.numel() == 0:
        return frames
    rgb = frames.long()
    index = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
    return _sdr_table(transfer, frames.device)[index].permute(0, 3, 1, 2).contiguous()
