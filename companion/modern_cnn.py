"""The networks of the chapter "Modern convolutional networks": a plain or residual deep CNN, and efficient CNNs.

:class:`DeepCNN` reproduces He et al.'s (2016) degradation experiment in miniature (plain against
residual at equal depth); :class:`ResNet` builds ResNet-50 (and its siblings) from
:class:`~companion.blocks.Bottleneck` blocks, state-dict compatible with torchvision's;
:class:`EfficientCNN` compares block families (plain convolutions, depthwise-separable, inverted
residual) at equal width. Their layers come from
:mod:`companion.blocks`; the normalisations the chapter derives are in :mod:`companion.norm`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from .blocks import Bottleneck, DepthwiseSeparableConv, InvertedResidual, ResidualBlock

__all__ = [
    "DeepCNN",
    "EfficientCNN",
    "ResNet",
    "resnet50",
]


def _no_norm(num_features: int) -> nn.Module:
    return nn.Identity()


def _he_init(model: nn.Module) -> None:
    """He et al. (2015) initialisation in its forward form, ``kaiming_normal_(mode="fan_in")``.

    It keeps the activations' variance through ReLU layers, which a network without
    normalisation needs; torchvision's ResNet uses the backward form (``fan_out``), which batch
    normalisation makes harmless.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class DeepCNN(nn.Module):
    """He et al.'s (2016, section 4.2) CIFAR network for 28 × 28 images: plain or residual, 6n + 2 layers.

    ``stem conv 3×3 (stride 2) → 3 stages of n blocks (width, 2·width, 4·width channels; the
    first block of stages 2 and 3 has stride 2) → global average pool → linear``. Each block is a
    :class:`~companion.blocks.ResidualBlock` with two 3 × 3 convolutions, so ``depth = 6n + 2`` counts the layers
    with weights. ``residual=False`` gives the *plain* network of the paper's degradation
    experiment: the same layers without the shortcuts. One deviation: where a block changes
    shape, the shortcut is the projection (the paper's option B, a 1 × 1 convolution, which
    the plain network does not have), while the paper's CIFAR networks use option A (identity
    with zero-padded channels, no parameters), so that plain and residual networks have exactly
    the same parameters; here the residual one has two 1 × 1 projections more. The stem's stride 2 (the paper's is 1, on 32 × 32) keeps it cheap
    on a CPU: the stages run at 14 × 14, 7 × 7 and 4 × 4. Weights start from He initialisation.

    Args:
        depth: 6n + 2 with n >= 1 (8, 14, 20, 26, 32, ...).
        residual: shortcuts (ResNet) or not (plain).
        width: channels of the first stage.
        batch_norm: batch normalisation after every convolution; without it the
            convolutions get biases.
        in_channels, num_classes: input channels, output logits.

    Shape:
        - Input: (B, in_channels, H, W), for example (B, 1, 28, 28).
        - Output: (B, num_classes) logits.

    Raises:
        ValueError: ``depth`` is not 6n + 2 with n >= 1, or ``width`` < 1.
    """

    def __init__(self, depth: int = 20, residual: bool = True, width: int = 16, batch_norm: bool = True,
                 in_channels: int = 1, num_classes: int = 10) -> None:  # fmt: skip
        super().__init__()
        if depth < 8 or (depth - 2) % 6 or width < 1:
            raise ValueError(f"depth must be 6n + 2 with n >= 1 (8, 14, 20, ...) and width >= 1, "
                             f"got depth={depth}, width={width}")  # fmt: skip
        n = (depth - 2) // 6
        norm_layer = nn.BatchNorm2d if batch_norm else _no_norm
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, stride=2, padding=1, bias=not batch_norm),
                                  norm_layer(width), nn.ReLU())  # fmt: skip
        blocks, channels = [], width
        for stage, out_channels in enumerate((width, 2 * width, 4 * width)):
            for index in range(n):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(ResidualBlock(channels, out_channels, stride, norm_layer, shortcut=residual,
                                            bias=not batch_norm))  # fmt: skip
                channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        _he_init(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) → pooled features (B, 4·width)."""
        x = self.blocks(self.stem(x))  # (B, 4·width, H / 8, W / 8)
        return torch.flatten(self.pool(x), 1)  # (B, 4·width)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)  # (B, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class EfficientCNN(nn.Module):
    """One small network, three kinds of block: for comparing accuracy with parameters and MACs.

    ``stem conv 3×3 (stride 2) → 3 stages of blocks_per_stage blocks (widths; the first block of
    stages 2 and 3 has stride 2) → global average pool → linear``, where a block is

    - ``"conv"``: a plain 3 × 3 convolution → batch norm → ReLU;
    - ``"separable"``: a :class:`~companion.blocks.DepthwiseSeparableConv` (3 × 3);
    - ``"mbconv"``: an :class:`~companion.blocks.InvertedResidual` (3 × 3, ``expand_ratio``).

    Args:
        block: ``"conv"``, ``"separable"`` or ``"mbconv"``.
        widths: channels of the three stages (the stem has ``widths[0]``).
        blocks_per_stage: blocks in each stage, >= 1.
        expand_ratio: the MBConv blocks' t.
        in_channels, num_classes: input channels, output logits.

    Shape:
        - Input: (B, in_channels, H, W); output (B, num_classes) logits.

    Raises:
        ValueError: an unknown ``block``, not three positive widths, or blocks_per_stage < 1.
    """

    def __init__(self, block: Literal["conv", "separable", "mbconv"] = "conv", widths: Sequence[int] = (16, 32, 64),
                 blocks_per_stage: int = 2, expand_ratio: float = 4, in_channels: int = 1,
                 num_classes: int = 10) -> None:  # fmt: skip
        super().__init__()
        if block not in ("conv", "separable", "mbconv") or len(widths) != 3 or min(widths) < 1 or blocks_per_stage < 1:
            raise ValueError(f"expected block 'conv', 'separable' or 'mbconv', three positive widths and "
                             f"blocks_per_stage >= 1; got block={block!r}, widths={tuple(widths)}, "
                             f"blocks_per_stage={blocks_per_stage}")  # fmt: skip
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())  # fmt: skip
        layers, channels = [], widths[0]
        for stage, out_channels in enumerate(widths):
            for index in range(blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                if block == "conv":
                    layers.append(nn.Sequential(nn.Conv2d(channels, out_channels, 3, stride, 1, bias=False),
                                                nn.BatchNorm2d(out_channels), nn.ReLU()))  # fmt: skip
                elif block == "separable":
                    layers.append(DepthwiseSeparableConv(channels, out_channels, 3, stride))
                else:
                    layers.append(InvertedResidual(channels, out_channels, stride, expand_ratio))
                channels = out_channels
        self.blocks = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) → pooled features (B, widths[2])."""
        x = self.blocks(self.stem(x))  # (B, widths[2], H / 8, W / 8)
        return torch.flatten(self.pool(x), 1)  # (B, widths[2])

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)  # (B, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class ResNet(nn.Module):
    """ResNet with bottleneck blocks (He et al., 2016), laid out and named as torchvision's ``ResNet``.

    ``conv1`` 7×7 (stride 2, 64 channels) → ``bn1`` → ReLU → ``maxpool`` 3×3 (stride 2) →
    ``layer1`` … ``layer4`` (``layers[i]`` :class:`~companion.blocks.Bottleneck` blocks of width
    64, 128, 256, 512; the first block of layers 2–4 has stride 2) → global average pool → ``fc``.
    ``layers=(3, 4, 6, 3)`` is ResNet-50, ``(3, 4, 23, 3)`` ResNet-101, ``(3, 8, 36, 3)``
    ResNet-152; torchvision's state dicts load into it as they are (``load_state_dict``, strict).

    Args:
        layers: blocks per stage, four integers >= 1.
        num_classes: outputs of ``fc``.

    Shape:
        - Input: (B, 3, H, W); 224 × 224 as trained on ImageNet.
        - Output: (B, num_classes) logits.

    Raises:
        ValueError: ``layers`` is not four integers >= 1, or ``num_classes < 1``.
    """

    def __init__(self, layers: Sequence[int] = (3, 4, 6, 3), num_classes: int = 1000) -> None:
        super().__init__()
        if len(layers) != 4 or min(layers) < 1 or num_classes < 1:
            raise ValueError(f"expected four block counts >= 1 and num_classes >= 1, got {tuple(layers)}, {num_classes}")
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = 64
        for index, (width, count) in enumerate(zip((64, 128, 256, 512), layers)):
            blocks = []
            for i in range(count):
                blocks.append(Bottleneck(channels, width, stride=2 if i == 0 and index > 0 else 1))
                channels = width * Bottleneck.expansion
            setattr(self, f"layer{index + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → pooled features (B, 2048)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 2048, H/32, W/32)
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


def resnet50(num_classes: int = 1000) -> ResNet:
    """ResNet-50: :class:`ResNet` with ``layers=(3, 4, 6, 3)``, randomly initialised (25.6 M
    parameters at 1000 classes; build it under ``torch.device("meta")`` to count them without
    memory)."""
    return ResNet((3, 4, 6, 3), num_classes)
