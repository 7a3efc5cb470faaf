"""Where a centre crop starts, the one rounding every path shares.

Training's validation and the GPU sampler crop with DALI (``crop_pos=0.5``), which rounds the start half up;
the CPU sampler, the FFmpeg client and the scorer's own preprocessing crop in NumPy or PyTorch. With floor
division there, a 16:9 frame scaled to 256 (455 wide) was cropped from column 99 on the CPU and 100 on the
GPU: the same model scored slightly different pixels depending on the path.
"""

from __future__ import annotations


def centre_offset(length: int, crop: int) -> int:
    """First index of a ``crop``-long centred window in ``length``, rounded half up as DALI's crop does."""
    return (length - crop + 1) // 2
