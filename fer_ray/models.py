"""Architectures for 48x48 grayscale faces, and a registry: build(name, **args)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .emotions import NUM_CLASSES

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    def wrap(factory):
        _REGISTRY[name] = factory
        return factory

    return wrap


def names() -> list[str]:
    return sorted(_REGISTRY)


def build(name: str, **args) -> nn.Module:
    if name not in _REGISTRY:
        raise ValueError(f"unknown architecture {name!r} (choose from {', '.join(names())})")
    return _REGISTRY[name](**args)


def _conv_bn(cin: int, cout: int, stride: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


@register("classic")
def classic(widths=(32, 64, 128, 256), hidden: int = 256, dropout: float = 0.3, num_classes: int = NUM_CLASSES):
    """The FER-tutorial CNN: [conv-BN-ReLU x2, maxpool, dropout] blocks, then a dense head."""
    layers: list[nn.Module] = []
    cin = 1
    for w in widths:
        layers += [_conv_bn(cin, w), _conv_bn(w, w), nn.MaxPool2d(2), nn.Dropout(dropout / 2)]
        cin = w
    return nn.Sequential(
        *layers,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(cin, hidden),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(_conv_bn(cin, cout, stride), _conv_bn(cout, cout, act=False))
        self.skip = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.body(x) + self.skip(x))


@register("resnet")
def resnet(widths=(64, 128, 256, 512), depths=(2, 2, 2, 2), dropout: float = 0.2, num_classes: int = NUM_CLASSES):
    """ResNet-18 layout for 48 px: 3x3 stem and no early downsampling (48 -> 48, 24, 12, 6)."""
    layers: list[nn.Module] = [_conv_bn(1, widths[0])]
    cin = widths[0]
    for i, (w, d) in enumerate(zip(widths, depths)):
        for j in range(d):
            layers.append(BasicBlock(cin, w, 2 if (j == 0 and i > 0) else 1))
            cin = w
    return nn.Sequential(
        *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin, num_classes)
    )


@register("fastnet")
def fastnet(widths=(24, 48, 96), depth: int = 2, dropout: float = 0.2, stem_stride: int = 2,
            num_classes: int = NUM_CLASSES):
    """Small and quick on CPU: a stride-2 stem (48 -> 24 px), then stages of `depth` dense 3x3
    convs with max-pooling between them, global pooling. Dense convs on purpose: depthwise-separable
    blocks have fewer FLOPs but trained slower and ran no faster on CPU (oneDNN on 2 cores).
    `stem_stride=1` keeps the full 48 px in the first stage: ~4x the compute, the same weights'
    shapes (so a stride-2 model can start its training)."""
    layers: list[nn.Module] = [_conv_bn(1, widths[0], stride=stem_stride)]
    cin = widths[0]
    for i, w in enumerate(widths):
        if i > 0:
            layers.append(nn.MaxPool2d(2))
        for _ in range(depth):
            layers.append(_conv_bn(cin, w))
            cin = w
    return nn.Sequential(
        *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin, num_classes)
    )


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
        conv.dilation, conv.groups, bias=True,
    )
    fused.weight.data = conv.weight.data * scale.reshape(-1, 1, 1, 1)
    bias = conv.bias.data if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.data = (bias - bn.running_mean) * scale + bn.bias.data
    return fused


@torch.no_grad()
def optimize_for_inference(model: nn.Module) -> nn.Module:
    """Eval-only speed-ups that leave outputs unchanged (to float tolerance): BatchNorm folded
    into the preceding conv, and channels-last memory (oneDNN's fast path for convs on CPU)."""
    model.eval()
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        children = list(seq)
        for i in range(len(children) - 1):
            if isinstance(children[i], nn.Conv2d) and isinstance(children[i + 1], nn.BatchNorm2d):
                seq[i] = _fold_bn(children[i], children[i + 1])
                seq[i + 1] = nn.Identity()
    return model.to(memory_format=torch.channels_last)
