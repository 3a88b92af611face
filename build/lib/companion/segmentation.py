"""Semantic segmentation: a small U-Net (Ronneberger et al., 2015), one class per pixel.

Chapter "Detection and segmentation" trains it on the masks of :mod:`companion.scenes`; its mean
IoU is :func:`companion.detection_metrics.mean_iou`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import conv_bn_relu

__all__ = ["UNet"]


class UNet(nn.Module):
    """A small U-Net (Ronneberger et al., 2015): an encoder, a decoder, and skip connections between them.

    ``[conv 3×3 → BN → ReLU] × 2`` at each of ``depth + 1`` resolutions going down (max pooling 2,
    channels doubling) and ``depth`` coming back up (transposed convolution 2, then the
    encoder's feature map of the same resolution concatenated), then a 1 × 1 convolution to one
    logit per class and pixel. The pooled path sees the whole digit (which class), the skip
    connections bring back the detail that pooling lost (which pixels).

    Args:
        num_classes: classes per pixel (background included).
        width: channels at full resolution.
        depth: number of poolings, >= 1.
        in_channels: input channels.

    Shape:
        - Input: (B, in_channels, H, W), H and W divisible by ``2**depth``.
        - Output: (B, num_classes, H, W) logits.

    Raises:
        ValueError: H or W not divisible by ``2**depth``, or depth < 1.
    """

    def __init__(self, num_classes: int = 11, width: int = 8, depth: int = 3, in_channels: int = 1) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")

        def double(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(conv_bn_relu(c_in, c_out), conv_bn_relu(c_out, c_out))

        channels = [width * 2**level for level in range(depth + 1)]  # w, 2w, 4w, ...
        self.down = nn.ModuleList([double(in_channels, channels[0])] +
                                  [double(channels[i], channels[i + 1]) for i in range(depth)])  # fmt: skip
        self.up = nn.ModuleList([nn.ConvTranspose2d(channels[i + 1], channels[i], 2, stride=2) for i in range(depth)])
        self.merge = nn.ModuleList([double(2 * channels[i], channels[i]) for i in range(depth)])
        self.classifier = nn.Conv2d(width, num_classes, 1)
        self.depth = depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        step = 2**self.depth
        if x.ndim != 4 or x.shape[-1] % step or x.shape[-2] % step:
            raise ValueError(f"UNet(depth={self.depth}) expects (B, C, H, W) with H and W divisible by {step}, "
                             f"got {tuple(x.shape)}")  # fmt: skip
        skips = []
        for level, block in enumerate(self.down):
            x = block(x if level == 0 else F.max_pool2d(x, 2))  # (B, w·2^level, H/2^level, W/2^level)
            skips.append(x)
        x = skips.pop()  # the bottom
        for level in reversed(range(self.depth)):
            x = self.merge[level](torch.cat([self.up[level](x), skips.pop()], 1))  # skip connection
        return self.classifier(x)  # (B, K, H, W)
