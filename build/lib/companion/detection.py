"""A small anchor-free detector: CenterNet (Zhou et al., 2019), objects as points.

Reading order: the detector's network (a stride-4 backbone of residual blocks, one head per
output), its training targets (a Gaussian peak per object centre, the box size and the
sub-pixel offset at the centre), its loss (penalty-reduced focal loss + L1), its decoding
(peaks of the heat map, then per-class NMS). Chapter "Detection and segmentation" trains it on
:mod:`companion.scenes`; the U-Net it trains for segmentation is in :mod:`companion.segmentation`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .boxes import batched_nms
from .blocks import ResidualBlock, conv_bn_relu

__all__ = ["CenterNet", "centernet_loss", "centernet_targets", "decode_centernet", "gaussian_radius"]


class CenterNet(nn.Module):
    """Objects as points: a heat map of object centres per class, plus box size and offset.

    ``stem conv 3×3 s2 → conv 3×3 s2 → blocks residual blocks → three heads`` at stride 4:

    - ``heatmap``: (B, K, H/4, W/4) logits; the sigmoid is the probability that an object of
      class k is centred in that cell;
    - ``size``: (B, 2, H/4, W/4) box width and height, in input pixels, read at the centre;
    - ``offset``: (B, 2, H/4, W/4) the centre's sub-cell position in [0, 1), which the stride
      would otherwise round away.

    The heat map's bias starts at −2.19 (a prior probability of 0.1, as CenterNet's published
    code does, after RetinaNet), so the focal loss is not swamped by the background at the start.

    Args:
        num_classes: K.
        width: channels of the backbone.
        blocks: residual blocks at stride 4.
        in_channels: input channels.

    Shape:
        - Input: (B, in_channels, H, W) with H, W divisible by 4.
        - Output: dict of ``heatmap`` (B, K, H/4, W/4), ``size`` and ``offset`` (B, 2, H/4, W/4).

    Raises:
        ValueError: H or W not divisible by 4.
    """

    stride = 4

    def __init__(self, num_classes: int = 10, width: int = 32, blocks: int = 2, in_channels: int = 1) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.backbone = nn.Sequential(
            conv_bn_relu(in_channels, width // 2, stride=2),  # (B, w/2, H/2, W/2)
            conv_bn_relu(width // 2, width, stride=2),  # (B, w, H/4, W/4)
            *[ResidualBlock(width, width) for _ in range(blocks)],
        )
        self.heads = nn.ModuleDict({
            name: nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.Conv2d(2 * width, out, 1))
            for name, out in (("heatmap", num_classes), ("size", 2), ("offset", 2))
        })  # fmt: skip
        nn.init.constant_(self.heads["heatmap"][-1].bias, -math.log((1 - 0.1) / 0.1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.ndim != 4 or x.shape[-1] % self.stride or x.shape[-2] % self.stride:
            raise ValueError(f"CenterNet expects (B, C, H, W) with H and W divisible by 4, got {tuple(x.shape)}")
        features = self.backbone(x)  # (B, w, H/4, W/4)
        return {name: head(features) for name, head in self.heads.items()}


def gaussian_radius(height: torch.Tensor, width: torch.Tensor, min_overlap: float = 0.7) -> torch.Tensor:
    """The radius of CenterNet's Gaussian peaks, as its published code computes it (from CornerNet, Law & Deng, 2018).

    The smallest of three radii, one for each way of moving a box's two corners (both inward,
    both outward, one each) while keeping an overlap of about ``min_overlap`` with the true box.
    The published code divides two of the quadratic roots by 2 instead of 2a, so its radius is
    *larger* than the exact bound (0.273 s instead of 0.098 s for a square of side s); kept as
    it is because the published models were trained with it. Linear in the box size.

    Args:
        height, width: box sizes (any shape), in heat-map cells.
        min_overlap: in (0, 1).

    Returns:
        Radii, the shape of ``height``, >= 0.
    """
    h, w = height, width
    b1, c1 = h + w, w * h * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + torch.sqrt(b1**2 - 4 * c1)) / 2
    b2, c2 = 2 * (h + w), (1 - min_overlap) * w * h
    r2 = (b2 + torch.sqrt(b2**2 - 16 * c2)) / 2
    a3, b3, c3 = 4 * min_overlap, -2 * min_overlap * (h + w), (min_overlap - 1) * w * h
    r3 = (b3 + torch.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return torch.min(torch.min(r1, r2), r3).clamp(min=0)


def centernet_targets(targets: list[dict[str, torch.Tensor]], num_classes: int, output_size: tuple[int, int],
                      stride: int = 4) -> dict[str, torch.Tensor]:  # fmt: skip
    """Training targets for :class:`CenterNet` from boxes and labels.

    For each object with centre c (input pixels) the cell ``p = ⌊c / stride⌋`` gets the box's
    width and height and the offset ``c / stride − p``; its class's heat map gets a Gaussian
    ``exp(−‖q − p‖² / (2σ²))`` with ``σ = (2r + 1) / 6`` for the :func:`gaussian_radius` r,
    the element-wise maximum where peaks of one class overlap.

    Args:
        targets: per image ``{"boxes": (k, 4) xyxy pixels, "labels": (k,) int64}``.
        num_classes: K.
        output_size: (H/4, W/4).
        stride: the network's.

    Returns:
        ``heatmap`` (B, K, h, w) in [0, 1]; ``size``, ``offset`` (B, 2, h, w); ``mask`` (B, h, w)
        bool, True at object centres.
    """
    B, (h, w) = len(targets), output_size
    heatmap = torch.zeros(B, num_classes, h, w)
    size, offset = torch.zeros(B, 2, h, w), torch.zeros(B, 2, h, w)
    mask = torch.zeros(B, h, w, dtype=torch.bool)
    ys, xs = torch.arange(h).float()[:, None], torch.arange(w).float()[None, :]
    for b, target in enumerate(targets):
        boxes, labels = target["boxes"].float().cpu(), target["labels"].cpu()
        if len(boxes) == 0:
            continue
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2 / stride  # (k, 2) in cells
        cells = centres.floor().long().clamp(min=0)
        cells[:, 0].clamp_(max=w - 1), cells[:, 1].clamp_(max=h - 1)
        wh = boxes[:, 2:] - boxes[:, :2]  # (k, 2) pixels
        radius = gaussian_radius(wh[:, 1] / stride, wh[:, 0] / stride).floor()
        sigma = (2 * radius + 1) / 6
        for (cx, cy), (px, py), s, k, box_wh, centre in zip(cells.tolist(), cells.float().tolist(), sigma.tolist(),
                                                            labels.tolist(), wh, centres):  # fmt: skip
            peak = torch.exp(-((xs - px) ** 2 + (ys - py) ** 2) / (2 * s**2))  # (h, w), 1 at the centre cell
            heatmap[b, k] = torch.max(heatmap[b, k], peak)
            size[b, :, cy, cx] = box_wh
            offset[b, :, cy, cx] = centre - torch.tensor([cx, cy], dtype=torch.float32)
            mask[b, cy, cx] = True
    return {"heatmap": heatmap, "size": size, "offset": offset, "mask": mask}


def centernet_loss(outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], size_weight: float = 0.1,
                   offset_weight: float = 1.0) -> torch.Tensor:  # fmt: skip
    r"""CenterNet's loss: penalty-reduced focal loss on the heat map, L1 on size and offset at centres.

    .. math::
        L_k = -\frac{1}{N} \sum \begin{cases} (1 - \hat Y)^\alpha \log \hat Y & Y = 1 \\
        (1 - Y)^\beta \hat Y^\alpha \log(1 - \hat Y) & \text{otherwise} \end{cases}

    with α = 2, β = 4 (the focal loss of Lin et al., 2017, with CenterNet's penalty reduction) and
    N objects; the Gaussian ``(1 − Y)^β`` lowers the penalty near a centre. Total:
    ``L_k + size_weight · L_size + offset_weight · L_off``. The weights are the paper's 0.1 and 1,
    but sizes here are in input pixels, four times the paper's output-cell units, so the size
    term weighs four times as much as in the paper.

    Args:
        outputs: :class:`CenterNet`'s dict; targets: :func:`centernet_targets`' dict (same device).
        size_weight, offset_weight: the weights of the two L1 terms.

    Returns:
        A scalar tensor.
    """
    logits, Y = outputs["heatmap"], targets["heatmap"]
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    positive = Y.eq(1).float()
    n = positive.sum().clamp(min=1)
    focal = -(positive * (1 - p) ** 2 * torch.log(p) + (1 - positive) * (1 - Y) ** 4 * p**2 * torch.log(1 - p)).sum() / n
    mask = targets["mask"][:, None].float()  # (B, 1, h, w)
    size = (torch.abs(outputs["size"] - targets["size"]) * mask).sum() / n
    offset = (torch.abs(outputs["offset"] - targets["offset"]) * mask).sum() / n
    return focal + size_weight * size + offset_weight * offset


def decode_centernet(outputs: dict[str, torch.Tensor], max_detections: int = 100, stride: int = 4,
                     nms_threshold: float | None = 0.5) -> list[dict[str, torch.Tensor]]:  # fmt: skip
    """Detections from :class:`CenterNet`'s outputs: heat-map peaks, boxes, then per-class NMS.

    A cell is a peak if it equals the maximum of its 3 × 3 neighbourhood (max pooling plays
    NMS's part on the heat map); the ``max_detections`` highest peaks over all classes become
    boxes centred at ``(cell + offset) · stride`` with the predicted size, clipped to the input. Overlapping boxes of
    one class are then removed by :func:`~companion.boxes.batched_nms` (``None``: skip it).

    Args:
        outputs: :class:`CenterNet`'s dict.
        max_detections: per image.
        stride: the network's.
        nms_threshold: IoU threshold of the final NMS, or ``None``.

    Returns:
        Per image ``{"boxes": (n, 4) xyxy pixels, "scores": (n,), "labels": (n,)}``, on the CPU.
    """
    heat = torch.sigmoid(outputs["heatmap"].float())  # (B, K, h, w)
    B, K, h, w = heat.shape
    peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
    scores, index = peaks.flatten(1).topk(min(max_detections, K * h * w))  # (B, n)
    labels, cell = index // (h * w), index % (h * w)
    cy, cx = (cell // w).float(), (cell % w).float()
    size = outputs["size"].float().flatten(2).gather(2, cell[:, None].expand(-1, 2, -1))  # (B, 2, n)
    offset = outputs["offset"].float().flatten(2).gather(2, cell[:, None].expand(-1, 2, -1))
    x, y = (cx + offset[:, 0]) * stride, (cy + offset[:, 1]) * stride
    half_w, half_h = size[:, 0].clamp(min=0) / 2, size[:, 1].clamp(min=0) / 2
    boxes = torch.stack([x - half_w, y - half_h, x + half_w, y + half_h], 2)  # (B, n, 4)
    boxes[..., 0::2] = boxes[..., 0::2].clamp(0, w * stride)  # inside the input
    boxes[..., 1::2] = boxes[..., 1::2].clamp(0, h * stride)
    results = []
    for b in range(B):
        keep = torch.nonzero(scores[b] > 0).flatten()  # top-k fills up with non-peaks (score 0)
        if nms_threshold is not None:
            keep = keep[batched_nms(boxes[b, keep], scores[b, keep], labels[b, keep], nms_threshold)]
        results.append({"boxes": boxes[b, keep].cpu(), "scores": scores[b, keep].cpu(), "labels": labels[b, keep].cpu()})
    return results
