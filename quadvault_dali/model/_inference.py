"""A copy of a trained network made faster for scoring on the CPU, with the same scores.

A CPU scan spends about 40 % of its time in the network (stop 27's profile, 2-core Xeon). In eval mode every
BatchNorm after a convolution is an affine map that can be folded into the convolution's weights
(``torch.nn.utils.fusion.fuse_conv_bn_eval``), EfficientNet-Lite's TensorFlow "same" padding, where it is
symmetric, can be done by the convolution itself instead of a separate ``ZeroPad2d`` copy of every activation,
and its ReLU6s can work in place. The copy is checked against the original on a fixed input before it is used:
one whose logits differ from the original's by more than ``LOGIT_TOLERANCE`` is never used (scores move by
< 1e-6 when it is).
"""

from __future__ import annotations

import copy
import logging
from collections import Counter

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

log = logging.getLogger(__name__)

#: How far the copy's logits may be from the original's (float32 rounding of folded weights is ~1e-6)
LOGIT_TOLERANCE = 1e-3


def _conv_bn_pairs(network: nn.Module, example: torch.Tensor) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """(convolution, BatchNorm) pairs where the BatchNorm's input is that convolution's output, found by running
    ``example`` once: the pairing follows the network's real data flow, whatever its modules are called."""
    produced: dict[int, tuple[nn.Conv2d, torch.Tensor]] = {}
    pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d]] = []
    calls: Counter[nn.Module] = Counter()

    def after_conv(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        calls[module] += 1
        produced[id(output)] = (module, output)  # the tensor is kept, so its id is not reused meanwhile

    def before_bn(module: nn.Module, args: tuple) -> None:
        calls[module] += 1
        hit = produced.get(id(args[0])) if args else None
        if hit is not None and hit[1] is args[0]:
            pairs.append((hit[0], module))

    hooks = [m.register_forward_hook(after_conv) for m in network.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_pre_hook(before_bn) for m in network.modules() if isinstance(m, nn.BatchNorm2d)]
    try:
        with torch.inference_mode():
            network(example)
    finally:
        for hook in hooks:
            hook.remove()
    # a module called twice (shared weights) is folded nowhere: one fold would serve two different inputs
    return [(conv, bn) for conv, bn in pairs if calls[conv] == 1 and calls[bn] == 1]


def _places(network: nn.Module) -> dict[nn.Module, list[tuple[nn.Module, str]]]:
    """Every module's (parent, attribute name) places in the network."""
    places: dict[nn.Module, list[tuple[nn.Module, str]]] = {}
    for parent in network.modules():
        for name, child in parent.named_children():
            places.setdefault(child, []).append((parent, name))
    return places


def _fold_batchnorms(network: nn.Module, example: torch.Tensor) -> int:
    places = _places(network)
    folded = 0
    for conv, bn in _conv_bn_pairs(network, example):
        if len(places.get(conv, ())) != 1 or len(places.get(bn, ())) != 1:
            continue
        (conv_parent, conv_name), (bn_parent, bn_name) = places[conv][0], places[bn][0]
        setattr(conv_parent, conv_name, fuse_conv_bn_eval(conv, bn))
        setattr(bn_parent, bn_name, nn.Identity())
        folded += 1
    return folded


def _pad_inside_convolutions(network: nn.Module) -> int:
    """EfficientNet-Lite's ``Conv2dStaticSamePadding`` pads with its own ``ZeroPad2d`` before an unpadded
    convolution; a symmetric pad is the convolution's own ``padding``, without the extra copy."""
    moved = 0
    for module in network.modules():
        pad = getattr(module, "static_padding", None)
        if not (isinstance(module, nn.Conv2d) and isinstance(pad, nn.ZeroPad2d)):
            continue
        left, right, top, bottom = pad.padding
        if left == right and top == bottom and tuple(module.padding) == (0, 0) and module.padding_mode == "zeros":
            module.padding = (top, left)
            module.static_padding = nn.Identity()
            moved += 1
    return moved


def _activations_in_place(network: nn.Module) -> None:
    for module in network.modules():
        if isinstance(module, (nn.ReLU, nn.ReLU6)):
            module.inplace = True


def cpu_inference_network(network: nn.Module, image_size: int) -> nn.Module:
    """A faster copy of ``network`` (eval mode, channels-last) for CPU scoring, or ``network`` itself when the
    copy's logits on a fixed input differ from the original's by more than ``LOGIT_TOLERANCE``."""
    network = network.eval()
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2, 3, image_size, image_size, generator=generator).contiguous(
        memory_format=torch.channels_last)
    fast = copy.deepcopy(network)
    folded = _fold_batchnorms(fast, example)
    moved = _pad_inside_convolutions(fast)
    _activations_in_place(fast)
    fast = fast.to(memory_format=torch.channels_last).eval()
    with torch.inference_mode():
        # the original's output is cloned: an in-place activation of the copy must not be what makes them agree
        want = network(example.clone()).float()
        got = fast(example.clone()).float()
    gap = float((want - got).abs().max())
    if not gap <= LOGIT_TOLERANCE:
        log.warning("the CPU scoring copy of the network differs from it (largest logit gap %.3g); scoring with the "
                    "network as trained, which is slower", gap)
        return network
    log.debug("CPU scoring copy: %d BatchNorms folded, %d paddings moved into convolutions, logit gap %.2g",
              folded, moved, gap)
    return fast
