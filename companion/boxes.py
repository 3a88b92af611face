"""Bounding boxes from their definitions: area, IoU, GIoU, the GIoU loss and non-maximum suppression.

Boxes are ``(x1, y1, x2, y2)`` in pixels with ``x1 <= x2`` and ``y1 <= y2`` (torchvision's
``"xyxy"`` format), float tensors of shape (N, 4). Each function is tested equal to its
``torchvision.ops`` twin on random and degenerate boxes (zero area, identical, touching, nested).
Chapter "Detection and segmentation" derives them.
"""

from __future__ import annotations

import torch

__all__ = ["batched_nms", "box_area", "box_iou", "generalized_box_iou", "generalized_box_iou_loss", "nms"]


def _check_boxes(boxes: torch.Tensor, name: str = "boxes") -> None:
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape (N, 4) as (x1, y1, x2, y2), got {tuple(boxes.shape)}")
    if not boxes.is_floating_point():
        raise TypeError(f"{name} must be a float tensor, got {boxes.dtype}")


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    r"""Area :math:`(x_2 - x_1)(y_2 - y_1)` of each box, as ``torchvision.ops.box_area``.

    Args:
        boxes: (N, 4) float, ``x1 <= x2``, ``y1 <= y2``, pixels.

    Returns:
        (N,) areas in square pixels (0 for a degenerate box).

    Raises:
        ValueError: not (N, 4). TypeError: not float.
    """
    _check_boxes(boxes)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _intersection_union(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    top_left = torch.max(a[:, None, :2], b[None, :, :2])  # (N, M, 2)
    bottom_right = torch.min(a[:, None, 2:], b[None, :, 2:])  # (N, M, 2)
    wh = (bottom_right - top_left).clamp(min=0)  # no overlap -> 0
    intersection = wh[..., 0] * wh[..., 1]  # (N, M)
    union = box_area(a)[:, None] + box_area(b)[None, :] - intersection
    return intersection, union


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    r"""Pairwise intersection over union :math:`|A \cap B| / |A \cup B|`, as ``torchvision.ops.box_iou``.

    Two degenerate boxes (union 0) give NaN, as torchvision's does (0 / 0).

    Args:
        boxes1: (N, 4), boxes2: (M, 4), float, pixels.

    Returns:
        (N, M) IoU in [0, 1].

    Raises:
        ValueError: not (·, 4). TypeError: not float.
    """
    _check_boxes(boxes1, "boxes1"), _check_boxes(boxes2, "boxes2")
    intersection, union = _intersection_union(boxes1, boxes2)
    return intersection / union


def generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    r"""Pairwise generalised IoU (Rezatofighi et al., 2019), as ``torchvision.ops.generalized_box_iou``.

    .. math:: \mathrm{GIoU} = \mathrm{IoU} - \frac{|C \setminus (A \cup B)|}{|C|}

    where C is the smallest box enclosing A and B. It lies in (−1, 1] and, unlike IoU, still
    says how far apart two boxes are when they do not overlap, which makes it usable as a loss.

    Args:
        boxes1: (N, 4), boxes2: (M, 4), float, pixels.

    Returns:
        (N, M) GIoU in (−1, 1].

    Raises:
        ValueError: not (·, 4). TypeError: not float.
    """
    _check_boxes(boxes1, "boxes1"), _check_boxes(boxes2, "boxes2")
    intersection, union = _intersection_union(boxes1, boxes2)
    iou = intersection / union
    top_left = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    enclosing = wh[..., 0] * wh[..., 1]  # |C|
    return iou - (enclosing - union) / enclosing


def generalized_box_iou_loss(boxes1: torch.Tensor, boxes2: torch.Tensor, reduction: str = "none",
                             eps: float = 1e-7) -> torch.Tensor:
    r"""The GIoU loss :math:`1 - \mathrm{GIoU}` of paired boxes, as ``torchvision.ops.generalized_box_iou_loss``.

    Box ``i`` of ``boxes1`` (a prediction) is compared with box ``i`` of ``boxes2`` (its target),
    not every pair (that is :func:`generalized_box_iou`):

    .. math:: \mathcal{L} = 1 - \frac{|A \cap B|}{|A \cup B| + \epsilon}
              + \frac{|C| - |A \cup B|}{|C| + \epsilon}

    with C the smallest box enclosing A and B, and ``eps`` where torchvision (after fvcore) puts it.
    It lies in [0, 2): about ``eps / area`` for identical boxes (0 with ``eps=0``), above 1 for
    disjoint ones, and, unlike :math:`1 - \mathrm{IoU}`, its gradient still moves a disjoint
    prediction toward its target (Rezatofighi et al., 2019; DETR trains its boxes with it and
    L1). Two boxes of zero area give NaN with ``eps=0`` (0 / 0), as torchvision's does.

    Args:
        boxes1, boxes2: float tensors of one shape (..., 4), ``(x1, y1, x2, y2)`` in pixels.
        reduction: ``"none"`` (one loss per pair, shape (...)), ``"mean"`` or ``"sum"``.
        eps: added to the union and the enclosing area, >= 0.

    Returns:
        The loss, (...) for ``"none"``, a scalar otherwise (the mean of no pairs is 0, as torchvision's).

    Raises:
        ValueError: shapes that differ or do not end in 4, an unknown ``reduction``, or ``eps < 0``.
        TypeError: boxes that are not float (torchvision converts integer boxes; this function
            does not).
    """
    if boxes1.shape != boxes2.shape or boxes1.shape[-1:] != (4,):
        raise ValueError(f"boxes1 and boxes2 must have one shape (..., 4), got {tuple(boxes1.shape)} and "
                         f"{tuple(boxes2.shape)}")  # fmt: skip
    if not (boxes1.is_floating_point() and boxes2.is_floating_point()):
        raise TypeError(f"boxes must be float tensors, got {boxes1.dtype} and {boxes2.dtype}")
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    x1, y1, x2, y2 = boxes1.unbind(-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(-1)
    overlap_w = torch.min(x2, x2g) - torch.max(x1, x1g)
    overlap_h = torch.min(y2, y2g) - torch.max(y1, y1g)
    overlaps = (overlap_w > 0) & (overlap_h > 0)  # boxes that only touch have no intersection (and no gradient)
    intersection = torch.where(overlaps, overlap_w * overlap_h, torch.zeros_like(overlap_w))
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - intersection
    enclosing = (torch.max(x2, x2g) - torch.min(x1, x1g)) * (torch.max(y2, y2g) - torch.min(y1, y1g))  # |C|
    loss = 1 - intersection / (union + eps) + (enclosing - union) / (enclosing + eps)
    if reduction == "mean":
        return loss.mean() if loss.numel() > 0 else 0.0 * loss.sum()
    return loss.sum() if reduction == "sum" else loss


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression, as ``torchvision.ops.nms``.

    Take the highest-scoring box, drop every remaining box whose IoU with it is **greater than**
    ``iou_threshold``, repeat. Ties in score are taken in index order (a stable sort);
    torchvision does not document its order for ties, so equal scores may keep a different box
    of a tied pair there.

    Args:
        boxes: (N, 4) float, pixels.
        scores: (N,) float.
        iou_threshold: in [0, 1].

    Returns:
        int64 indices of the kept boxes, by decreasing score.

    Raises:
        ValueError: shapes that do not match, or a threshold outside [0, 1].
    """
    _check_boxes(boxes)
    if scores.shape != (len(boxes),):
        raise ValueError(f"scores must have shape ({len(boxes)},), got {tuple(scores.shape)}")
    if not 0 <= iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    order = torch.sort(scores, descending=True, stable=True).indices
    iou = box_iou(boxes, boxes)
    suppressed = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    keep = []
    for i in order.tolist():  # greedy: one box at a time, best first
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold  # NaN (two empty boxes) compares False: kept
    return torch.tensor(keep, dtype=torch.int64, device=boxes.device)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Non-maximum suppression within each category, as ``torchvision.ops.batched_nms``.

    Boxes of different ``idxs`` (classes, or images) never suppress each other: the boxes are
    shifted by ``idxs · (max − min coordinate + 1)`` so that groups cannot overlap, then
    :func:`nms` runs once — torchvision's trick, whose offset ``max + 1`` separates groups only
    when no coordinate is below −1 (there the two can differ; for boxes in an image they agree).

    Args:
        boxes: (N, 4) float; scores: (N,) float; idxs: (N,) int64 category of each box.
        iou_threshold: in [0, 1].

    Returns:
        int64 indices of the kept boxes, by decreasing score.

    Raises:
        ValueError: as :func:`nms`, or ``idxs`` of the wrong shape.
    """
    _check_boxes(boxes)
    if idxs.shape != (len(boxes),):
        raise ValueError(f"idxs must have shape ({len(boxes)},), got {tuple(idxs.shape)}")
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    offsets = idxs.to(boxes) * (boxes.max() - boxes.min() + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)
