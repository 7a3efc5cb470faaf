"""The training step keeps its loss and accuracy on the device: what it reports must still be exact."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quadvault_dali.training._data import FILLER
from quadvault_dali.training._step import TrainStep


class _Linear(nn.Module):
    """A model whose logits are computable by hand: the mean of each image times a fixed weight."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.scale * images.float().mean(dim=(1, 2, 3))


def _expected(images: torch.Tensor, rows: torch.Tensor, labels: torch.Tensor, pos_weight: float
              ) -> tuple[float, int, int]:
    real = rows != FILLER
    logits = images.float().mean(dim=(1, 2, 3))[real]
    y = labels[rows[real]].float()
    loss = F.binary_cross_entropy_with_logits(logits, y, pos_weight=torch.tensor(pos_weight), reduction="sum")
    correct = int(((logits > 0) == (y > 0.5)).sum())
    return float(loss), correct, int(real.sum())


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    # logits 0.5, -0.25, (filler 0.75) | -1.0, 2.0, (filler -0.5): both signs, one filler per batch
    values = [0.5, -0.25, 0.75, -1.0, 2.0, -0.5]
    images = torch.tensor(values).view(-1, 1, 1, 1).expand(-1, 3, 4, 4).contiguous()
    rows = torch.tensor([0, 1, FILLER, 2, 3, FILLER])
    return [(images[:3], rows[:3]), (images[3:], rows[3:])]


def _run(device: torch.device, priority: bool) -> tuple[float, int, int]:
    net = _Linear().to(device)
    labels = torch.tensor([1, 0, 1, 0])  # rows 0, 1 right; row 2 (logit -1.0) and row 3 (2.0) wrong
    step = TrainStep(net, torch.optim.SGD(net.parameters(), lr=0.0), None, labels, torch.tensor(2.0, device=device),
                     device, priority=priority)
    with step.running():
        for images, rows in _batches():
            step(images, rows)
    return step.totals()


def test_step_totals_count_real_frames_only_and_match_a_hand_computation() -> None:
    loss, correct, seen = _run(torch.device("cpu"), priority=True)
    labels = torch.tensor([1, 0, 1, 0])
    expected = [_expected(images, rows, labels, 2.0) for images, rows in _batches()]
    assert seen == 4 == sum(e[2] for e in expected)  # fillers never counted
    assert correct == 2 == sum(e[1] for e in expected)
    assert loss == pytest.approx(sum(e[0] for e in expected), rel=1e-6)


def test_step_trains() -> None:
    net = _Linear()
    step = TrainStep(net, torch.optim.SGD(net.parameters(), lr=0.5), None, torch.tensor([1, 0]),
                     torch.tensor(1.0), torch.device("cpu"))
    images = torch.tensor([1.0, -1.0]).view(-1, 1, 1, 1).expand(-1, 3, 2, 2).contiguous()
    losses = []
    for _ in range(5):
        before = step.totals()[0]
        step(images, torch.tensor([0, 1]))
        losses.append(step.totals()[0] - before)
    assert losses == sorted(losses, reverse=True) and losses[-1] < losses[0]  # the loss falls step by step


@pytest.mark.gpu
def test_step_on_the_priority_stream_reports_what_the_ordinary_stream_does() -> None:
    device = torch.device("cuda:0")
    prio = _run(device, priority=True)
    plain = _run(device, priority=False)
    cpu = _run(torch.device("cpu"), priority=True)
    assert prio[1:] == plain[1:] == cpu[1:]
    assert prio[0] == pytest.approx(plain[0], rel=1e-6) and prio[0] == pytest.approx(cpu[0], rel=2e-2)  # bf16


def test_reset_starts_the_next_epochs_totals_from_zero() -> None:
    net = _Linear()
    step = TrainStep(net, torch.optim.SGD(net.parameters(), lr=0.0), None, torch.tensor([1, 0, 1, 0]),
                     torch.tensor(2.0), torch.device("cpu"))
    images, rows = _batches()[0]
    step(images, rows)
    first = step.totals()
    assert first[1:] == (2, 2) and first[0] > 0
    step.reset()
    assert step.totals() == (0.0, 0, 0)
    step(images, rows)  # lr 0: the same batch gives the same totals again
    assert step.totals() == first


@pytest.mark.gpu
def test_dali_batches_stay_intact_while_the_step_stream_lags(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """DALI 2.4 hands over its own buffers and reuses them once PyTorch lets go; the host runs ahead of the step
    stream. Each frame is one flat grey, so a step that read a reused buffer sees another frame's grey."""
    import numpy as np
    from PIL import Image

    from quadvault_dali.training._data import DaliFrameLoader, FrameTable

    n, batch = 192, 32
    files = []
    for i in range(n):  # neighbours far apart in grey: a swapped buffer cannot pass for the right one
        files.append(str(tmp_path / f"{i:04d}.jpg"))
        Image.fromarray(np.full((96, 160, 3), (i * 37) % 256, np.uint8)).save(files[-1], quality=95)
    table = FrameTable(files, np.zeros(n, np.int64), [str(i) for i in range(n)])
    loader = DaliFrameLoader(table, image_size=64, mean=[0.5] * 3, std=[0.5] * 3, train=False, batch_size=batch,
                             backend="gpu", num_threads=2)
    expected = {}
    for images, rows in loader:  # each batch read before the next is fetched
        expected.update(zip(rows.tolist(), images.float().mean(dim=(1, 2, 3)).cpu().tolist()))

    class Lagging(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.tensor(0.0))
            self.seen: list[torch.Tensor] = []

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            torch.cuda._sleep(30_000_000)  # ~15 ms: the stream falls further behind the host every batch
            means = images.float().mean(dim=(1, 2, 3))
            self.seen.append(means.detach())
            return self.scale * means

    device = torch.device("cuda:0")
    net = Lagging().to(device)
    step = TrainStep(net, torch.optim.SGD(net.parameters(), lr=0.0), None, torch.zeros(n),
                     torch.tensor(1.0, device=device), device)
    order: list[int] = []
    with step.running():
        for images, rows in loader:
            order.extend(rows.tolist())
            step(images, rows)
    torch.cuda.synchronize()
    seen = torch.cat(net.seen).cpu().tolist()
    assert len(seen) == len(order) == n
    wrong = [r for r, v in zip(order, seen) if abs(expected[r] - v) > 0.02]
    assert not wrong, f"{len(wrong)} of {n} frames were read from a buffer DALI had reused"


def test_frame_weights_scale_each_frames_loss() -> None:
    """A frame's loss counts by its weight (its video's length: ``video_balance_weights``); fillers still by 0."""
    net = _Linear()
    labels = torch.tensor([1, 0, 1, 0])
    weights = torch.tensor([0.5, 2.0, 1.0, 0.25])
    step = TrainStep(net, torch.optim.SGD(net.parameters(), lr=0.0), None, labels, torch.tensor(2.0),
                     torch.device("cpu"), frame_weights=weights)
    for images, rows in _batches():
        step(images, rows)
    loss, _, seen = step.totals()
    logits = torch.tensor([0.5, -0.25, -1.0, 2.0])
    each = F.binary_cross_entropy_with_logits(logits, labels.float(), pos_weight=torch.tensor(2.0), reduction="none")
    assert seen == 4 and loss == pytest.approx(float((each * weights).sum()), rel=1e-6)


def test_a_long_video_counts_by_the_square_root_of_its_length() -> None:
    """One 100-frame clip against five 4-frame clips: 100 to 20 frames, but 10 to 10 in weight (sqrt 100 against
    5 x sqrt 4), where per frame the long clip had outweighed all five together five to one."""
    from quadvault_dali.training._data import video_balance_weights

    ids = ["long"] * 100 + [f"short{i}" for i in range(5) for _ in range(4)]
    w = video_balance_weights(ids)
    assert w.mean() == pytest.approx(1.0)
    assert w[:100].sum() == pytest.approx(w[100:].sum())
    assert (video_balance_weights(["a", "a", "b", "b"]) == 1.0).all()  # one length: nothing changes
