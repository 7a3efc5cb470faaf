"""A copy of a trained network made faster for scoring on the CPU, with the same scores.

A CPU scan spends about 40 % of its time in the network (stop 27's profile, 2-core Xeon). In eval mode every
BatchNorm after a convolution is an affine map that can be folded into the convolution's weights
(``torch.nn.utils.fusion.fuse_conv_bn_eval``), EfficientNet-Lite's TensorFlow "same" padding, where it is
symmetric, can be done by the convolution itself instead of a separate ``ZeroPad2d`` copy of every activation,
and its ReLU6s can work in place. The copy is checked against the original on a fixed input before it is used:
one whose logits differ from the original's by more than ``LOGIT_TOLERANCE`` is never used (scores moved by
< 2e-6 on trained models and real footage).
"""

from __future__ import annotations

import copy
import logging
from collections import Counter

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

log = logging.getLogger(__name__)

#: How far the copy's logits may be from the original's, relative to the largest logit (at least 1): float32
#: rounding of folded weights gave 2e-7 to 1.5e-5 on trained nets at 64-224 px
LOGIT_TOLERANCE = 1e-4


def _conv_bn_pairs(network: nn.Module, example: torch.Tensor) -> tuple[list[tuple[str, str]], torch.Tensor]:
    """Names of the (convolution, BatchNorm) pairs where the BatchNorm's input is that convolution's output, found
    by running ``example`` once, and that run's output: the pairing follows the network's real data flow, whatever
    its modules are called. The hooks are removed again; the network is left as it was."""
    names = {module: name for name, module in network.named_modules()}
    produced: dict[int, tuple[nn.Module, torch.Tensor]] = {}
    pairs: list[tuple[nn.Module, nn.Module]] = []
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
            output = network(example)
    finally:
        for hook in hooks:
            hook.remove()
    # a module called twice (shared weights) is folded nowhere: one fold would serve two different inputs
    return [(names[conv], names[bn]) for conv, bn in pairs if calls[conv] == 1 and calls[bn] == 1], output


def _fold_batchnorms(network: nn.Module, pairs: list[tuple[str, str]]) -> int:
    """Folds each named BatchNorm into its named convolution (``fuse_conv_bn_eval``) and puts an identity in its
    place; a module reachable under two names is left alone."""
    modules = dict(network.named_modules(remove_duplicate=False))
    seen = Counter(id(m) for m in modules.values())
    folded = 0
    for conv_name, bn_name in pairs:
        conv, bn = modules[conv_name], modules[bn_name]
        if seen[id(conv)] != 1 or seen[id(bn)] != 1:
            continue
        fused = fuse_conv_bn_eval(conv, bn)  # type: ignore[arg-type]
        for name, replacement in ((conv_name, fused), (bn_name, nn.Identity())):
            parent_name, _, attribute = name.rpartition(".")
            setattr(network.get_submodule(parent_name), attribute, replacement)
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


def _fast_copy(network: nn.Module, example: torch.Tensor) -> tuple[nn.Module, torch.Tensor, int, int]:
    pairs, want = _conv_bn_pairs(network, example.clone())
    fast = copy.deepcopy(network)
    folded = _fold_batchnorms(fast, pairs)
    moved = _pad_inside_convolutions(fast)
    _activations_in_place(fast)
    fast = fast.to(memory_format=torch.channels_last).eval()
    with torch.inference_mode():
        got = fast(example.clone())  # its own input: an in-place activation must not touch the original's
    return fast, (want.float() - got.float()).abs().max() / max(1.0, float(want.abs().max())), folded, moved


def cpu_inference_network(network: nn.Module, image_size: int) -> nn.Module:
    """A faster copy of ``network`` (eval mode, channels-last) for CPU scoring, or ``network`` itself when the copy
    cannot be made or its logits on a fixed input differ from the original's by more than ``LOGIT_TOLERANCE``
    (relative to the largest logit, at least 1). Costs one forward pass of each on one frame."""
    network = network.eval()
    example = torch.randn(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)).contiguous(
        memory_format=torch.channels_last)
    try:
        fast, gap, folded, moved = _fast_copy(network, example)
    except Exception as exc:  # noqa: BLE001 - any layer torch cannot fold: score with the network as it is
        log.warning("no faster CPU scoring copy of the network (%s: %s); scoring with the network as trained",
                    type(exc).__name__, exc)
        return network
    if not float(gap) <= LOGIT_TOLERANCE:
        log.warning("the CPU scoring copy of the network differs from it (largest logit gap %.3g of the largest "
                    "logit); scoring with the network as trained, which is slower", float(gap))
        return network
    log.debug("CPU scoring copy: %d BatchNorms folded, %d paddings moved into convolutions, relative logit gap "
              "%.2g", folded, moved, float(gap))
    return fast
