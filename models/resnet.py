"""ResNet feature extractor: RGB ``uint8`` frames -> one feature vector per frame.

A ResNet-18 trunk (BasicBlock layers [2, 2, 2, 2], stage widths 64/128/256/512 x ``width``)
without its classifier: ImageNet normalisation -> CNN -> global average pool. With width 1 it
has D = 512 features and 11,176,512 parameters; width 0.25 gives D = 128 (CPU demos and tests).
``state_dict`` keys follow torchvision's ``resnet18`` (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer1.0.downsample.0`` …), so torchvision's weights without ``fc.*``, saved as safetensors,
load as they are (``costream.models.weights.load_weights`` checks them key by key).

:class:`IdentityBackbone` is the pass-through for precomputed feature vectors.

Example:
    >>> import torch
    >>> resnet18(0.25)(torch.zeros(2, 64, 64, 3, dtype=torch.uint8)).shape
    torch.Size([2, 128])
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BasicBlock",
    "IdentityBackbone",
    "ResNet",
    "fold_batch_norm",
    "normalize_imagenet",
    "resnet18",
    "resnet_width",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_imagenet(images: Tensor) -> Tensor:
    """RGB ``uint8`` (B, H, W, 3) -> ``float32`` (B, 3, H, W), ``(x / 255 - mean) / std``.

    One conversion and one fused multiply-add per value, in place on the converted copy (three
    passes with temporaries cost a quarter of a small ResNet's time). The result keeps the
    input's (B, H, W, 3) memory order: a channels-last tensor, which the convolutions run
    fastest on.
    """
    if images.dim() != 4 or images.shape[-1] != 3:
        raise ValueError(f"Expected RGB images (B, H, W, 3), got shape {tuple(images.shape)}.")
    x = images.permute(0, 3, 1, 2).to(torch.float32, copy=True)  # (B, 3, H, W), channels last
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype)
    scale = (1.0 / (255.0 * std)).view(1, 3, 1, 1)
    shift = (-torch.tensor(IMAGENET_MEAN, dtype=x.dtype) / std).view(1, 3, 1, 1)
    return x.mul_(scale).add_(shift)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs with BN, identity (or 1x1 conv + BN) shortcut."""

    bn1: nn.Module  # BatchNorm2d, or Identity once folded (fold_batch_norm)
    bn2: nn.Module

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        skip = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + skip)


class ResNet(nn.Module):
    """ResNet feature extractor: RGB ``uint8`` (B, H, W, 3) -> ``float32`` (B, widths[-1]).

    Normalisation (ImageNet mean/std) is part of the module; the classifier head is not.
    """

    # made by setattr in __init__; declared so that type checkers see modules, not Tensor | Module
    bn1: nn.Module  # BatchNorm2d, or Identity once folded (fold_batch_norm)
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(self, layers: Sequence[int] = (2, 2, 2, 2), width: float = 1.0) -> None:
        super().__init__()
        if width <= 0 or len(layers) != 4 or min(layers) < 1:
            raise ValueError(
                f"Need width > 0 and four positive layer counts, got {width}, {layers}."
            )
        widths = [resnet_width(c, width) for c in (64, 128, 256, 512)]
        self.dim = widths[-1]
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c_in = widths[0]
        for i, (c, n) in enumerate(zip(widths, layers)):
            stride = 1 if i == 0 else 2
            blocks = [
                BasicBlock(c_in if j == 0 else c, c, stride if j == 0 else 1) for j in range(n)
            ]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            c_in = c
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, images: Tensor) -> Tensor:
        x = normalize_imagenet(images)  # (B, 3, H, W)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, c0, H/4, W/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, D, H/32, W/32)
        return x.mean(dim=(2, 3))  # (B, D): global average pool


def fold_batch_norm(net: ResNet) -> ResNet:
    """An inference copy of ``net``: every BatchNorm folded into the convolution before it.

    In eval mode BatchNorm is a per-channel affine map, so ``bn(conv(x))`` is one convolution
    with scaled weights and a bias (``torch.nn.utils.fusion.fuse_conv_bn_eval``): the same
    function up to float32 rounding, one pass over each activation fewer. The copy's
    ``state_dict`` has other keys (conv biases, no ``bn*``): save weights from ``net``.
    """
    folded = copy.deepcopy(net).eval()

    def fold(conv: nn.Module, bn: nn.Module) -> nn.Conv2d:
        assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
        return fuse_conv_bn_eval(conv, bn)

    folded.conv1, folded.bn1 = fold(folded.conv1, folded.bn1), nn.Identity()
    for stage in (folded.layer1, folded.layer2, folded.layer3, folded.layer4):
        for block in stage:
            assert isinstance(block, BasicBlock)
            block.conv1, block.bn1 = fold(block.conv1, block.bn1), nn.Identity()
            block.conv2, block.bn2 = fold(block.conv2, block.bn2), nn.Identity()
            if block.downsample is not None:
                block.downsample = nn.Sequential(fold(*block.downsample))
    return folded


def resnet_width(channels: int, width: float) -> int:
    """Channels of a stage of ``channels`` at width multiplier ``width`` (at least 1)."""
    return max(1, round(channels * width))


def resnet18(width: float = 1.0) -> ResNet:
    """ResNet-18 trunk ([2, 2, 2, 2] basic blocks), feature dim ``512 * width``, random weights."""
    return ResNet((2, 2, 2, 2), width)


class IdentityBackbone(nn.Module):
    """Precomputed features pass through: (B, D) -> (B, D) as ``float32``."""

    def forward(self, x: Tensor) -> Tensor:
        return x.float()
