"""One centre crop everywhere: the CPU paths start it where DALI's ``crop_pos=0.5`` does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quadvault_dali._geometry import centre_offset
from quadvault_dali.model import preprocess_frames


def test_centre_offset_is_dalis() -> None:
    """DALI's crop (training's validation pipeline, the GPU sampler) rounds the start half up: odd margins, as a
    16:9 frame scaled to 256 (455 x 256) has, start one column later than floor division put them."""
    dali = pytest.importorskip("nvidia.dali")
    fn = pytest.importorskip("nvidia.dali.fn")

    lengths = list(range(224, 240)) + [455, 457, 683, 3840]

    @dali.pipeline_def(batch_size=len(lengths), num_threads=1, device_id=None)
    def crop_pipeline():  # type: ignore[no-untyped-def]
        rows = fn.external_source(name="rows", batch=True)
        return fn.crop(rows, crop=(1, 224), crop_pos_x=0.5, crop_pos_y=0.5)

    pipe = crop_pipeline()
    pipe.build()
    pipe.feed_input("rows", [np.arange(n, dtype=np.int32).reshape(1, n, 1) for n in lengths])
    (out,) = pipe.run()
    starts = [int(np.array(out[i])[0, 0, 0]) for i in range(len(lengths))]
    assert starts == [centre_offset(n, 224) for n in lengths]
    assert centre_offset(455, 256) == 100 and centre_offset(454, 256) == 99 and centre_offset(256, 256) == 0


def test_the_scorers_crop_starts_where_dalis_does() -> None:
    """A 455 x 256 frame whose pixels hold their column (mod 256), scored at 256 px: no resize, only the crop."""
    columns = (torch.arange(455) % 256).to(torch.uint8).expand(1, 3, 256, 455).contiguous()
    x = preprocess_frames(columns, 256, mean=(0.0, 0.0, 0.0), std=(1 / 255, 1 / 255, 1 / 255))
    assert x.shape == (1, 3, 256, 256)
    assert x[0, 0, 0, 0].item() == 100 and x[0, 0, 0, 155].item() == 255 and x[0, 0, 0, 156].item() == 0
