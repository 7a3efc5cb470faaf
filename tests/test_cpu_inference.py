"""The CPU scoring copy of a network: faster, and the same scores as the network as trained."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from quadvault_dali.model import build_network, load_model, save_model
from quadvault_dali.model._inference import cpu_inference_network
from quadvault_dali.model._scorer import CPU_CHUNK_FRAMES, preprocess_frames

SIZE = 64


def _with_trained_looking_batchnorms(net: nn.Module, seed: int) -> nn.Module:
    """Random running statistics and affine parameters, so that a fold that got one wrong shows in the scores."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.2)
            m.weight.data.copy_(torch.randn(n, generator=g) * 0.5 + 1)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
    return net.eval()


def _network(architecture: str, seed: int) -> nn.Module:
    """ResNet18 with random weights and BatchNorm statistics; EfficientNet-Lite0 with its ImageNet weights (they
    ship with the package), as a random one's features are the same for every frame."""
    torch.manual_seed(seed)
    if architecture == "efficientnet-lite0":
        net = build_network(architecture, image_size=SIZE, pretrained="auto")
    else:
        net = _with_trained_looking_batchnorms(build_network(architecture, image_size=SIZE, pretrained="none"), seed)
    with torch.no_grad():
        net.head.weight.mul_(5)  # logits that differ between frames by more than rounding
    return net.eval()


def _frames(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 72, 96), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("architecture", ["efficientnet-lite0", "resnet18"])
def test_every_batchnorm_is_folded_and_the_logits_stay(architecture: str) -> None:
    net = _network(architecture, 3)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fast = cpu_inference_network(net, SIZE)
    assert fast is not net
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    if architecture == "efficientnet-lite0":  # its symmetric "same" paddings are done by the convolutions now
        pads = [m.padding for m in fast.modules() if isinstance(m, nn.ZeroPad2d)]
        assert all(left != right or top != bottom for left, right, top, bottom in pads)
        assert len(pads) < sum(isinstance(m, nn.ZeroPad2d) for m in net.modules())
    x = preprocess_frames(_frames(6), SIZE, (0.5,) * 3, (0.25,) * 3).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        want, got = net(x.clone()), fast(x.clone())
    assert want.abs().max() > 0.1  # a test of something: the logits are not all zero
    assert torch.allclose(want, got, atol=1e-4, rtol=1e-4), (want - got).abs().max()
    # the network as trained (saved, fingerprinted, read by tests of training) is left as it was
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())


class _SkipAroundBatchNorm(nn.Module):
    """The convolution's output feeds its BatchNorm and also a skip connection: folding the BatchNorm into the
    convolution would change the skip's input too."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv(x)
        return (self.bn(c) + c).mean((1, 2, 3))


def test_a_copy_that_would_score_differently_is_not_used(caplog: pytest.LogCaptureFixture) -> None:
    net = _with_trained_looking_batchnorms(_SkipAroundBatchNorm(), 4)
    with caplog.at_level(logging.WARNING):
        assert cpu_inference_network(net, 16) is net
    assert "differs from it" in caplog.text and "network as trained" in caplog.text


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(tmp_path_factory.mktemp("models") / "r18", _network("resnet18", 5),
                      {"architecture": "resnet18", "image_size": SIZE, "threshold": 0.5})


def test_cpu_scores_equal_the_trained_networks_in_any_batch(saved: Path) -> None:
    """score_frames on the CPU runs the copy in chunks of CPU_CHUNK_FRAMES: the probabilities are those of the
    network as trained, frame for frame, whatever batch size the caller asks for."""
    model = load_model(saved)
    frames = _frames(CPU_CHUNK_FRAMES * 2 + 5)
    x = preprocess_frames(frames, SIZE, model.card["mean"], model.card["std"]).contiguous(
        memory_format=torch.channels_last)
    with torch.inference_mode():
        reference = torch.sigmoid(model.network(x))
    assert float(reference.max() - reference.min()) > 0.01  # frames that score differently
    for batch in (1, 7, CPU_CHUNK_FRAMES, 128):
        scores = model.score_frames(frames, batch_size=batch)
        assert scores.shape == (len(frames),)
        assert torch.allclose(scores, reference, atol=1e-5), (batch, (scores - reference).abs().max())
    assert torch.equal(torch.argsort(model.score_frames(frames)), torch.argsort(reference))


def test_a_replaced_network_is_what_scores(saved: Path) -> None:
    """The copy is made from the network on first use; giving the model another network makes a new copy."""
    model = load_model(saved)
    frames = _frames(4, seed=2)
    first = model.score_frames(frames)
    other = _network("resnet18", 9)
    model.network = other.to(memory_format=torch.channels_last)
    x = preprocess_frames(frames, SIZE, model.card["mean"], model.card["std"]).contiguous(
        memory_format=torch.channels_last)
    with torch.inference_mode():
        want = torch.sigmoid(other(x))
    got = model.score_frames(frames)
    assert not torch.allclose(got, first, atol=1e-3)
    assert torch.allclose(got, want, atol=1e-5)


def test_a_model_still_pickles_and_copies(saved: Path) -> None:
    """The lock that guards the copy's making is not state: a pickled or deep-copied model scores the same."""
    import copy
    import pickle

    model = load_model(saved)
    frames = _frames(3, seed=4)
    scores = model.score_frames(frames)
    for again in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert torch.allclose(again.score_frames(frames), scores, atol=1e-6)
