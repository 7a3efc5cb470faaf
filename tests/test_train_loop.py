"""The training loop's policies on the CPU: learning-rate schedule, BatchNorm from scratch, early stopping
with a frozen backbone, the output folder and the per-epoch history."""

from __future__ import annotations

import math

import pytest

import quadvault_dali.training._loop as loop


def test_backbone_warm_up_starts_when_it_is_unfrozen() -> None:
    """20 epochs of 10 steps, a 1-epoch warm-up, backbone frozen for 2: its warm-up used to be spent while
    frozen, so the factor jumped from 0 to 0.99 at the unfreeze step."""
    total, warmup, start = 200, 10, 20
    backbone, head = loop._lr_lambda(total, warmup, start), loop._lr_lambda(total, warmup)
    assert [backbone(s) for s in (0, 19)] == [0.0, 0.0]
    assert [backbone(s) for s in (20, 24, 29)] == pytest.approx([0.1, 0.5, 1.0])
    assert backbone(20 + 10 + 85) == pytest.approx(0.5)  # cosine half-way through its own 170 decay steps
    assert backbone(199) == pytest.approx(0.5 * (1 + math.cos(math.pi * 169 / 170)))  # ends near zero
    # the head, never frozen, keeps the schedule it had
    assert [head(s) for s in (0, 9, 105)] == pytest.approx([0.1, 1.0, 0.5])
    assert loop._lr_lambda(1, 0)(0) == 1.0  # a one-step run trains at full rate
