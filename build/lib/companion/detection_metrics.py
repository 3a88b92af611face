"""Evaluating detection and segmentation: COCO's mean average precision and the mean IoU, from scratch.

Reading order: matching one image's detections to its objects at one IoU threshold, the
precision–recall curve of one class, average precision with COCO's 101-point interpolation,
then mAP over classes and thresholds; and the per-class IoU of a segmentation. Tested equal to
``torchmetrics.detection.MeanAveragePrecision`` (backend ``faster_coco_eval``) and to
``torchmetrics`` ``JaccardIndex``. Chapter "Detection and segmentation" explains them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .boxes import box_iou
from .evaluation import confusion_matrix

__all__ = ["COCO_IOU_THRESHOLDS", "DetectionMetrics", "average_precision", "mean_average_precision", "mean_iou"]

#: COCO's IoU thresholds 0.50, 0.55, ..., 0.95 — as torchmetrics builds them (a float32
#: ``torch.linspace``), so that an IoU equal to a threshold is judged the same way.
COCO_IOU_THRESHOLDS: tuple[float, ...] = tuple(torch.linspace(0.5, 0.95, 10).tolist())
#: COCO's 101 recall points 0, 0.01, ..., 1 — again torchmetrics' float32 ``linspace``. The
#: exact decimal points (pycocotools' float64 ones) differ from these in the last bits, which
#: changes an AP wherever a recall equals a point exactly (3 of 5 objects found: 0.6): the float32
#: 0.6 is slightly above 0.6, so that recall does *not* reach it.
RECALL_POINTS = torch.linspace(0.0, 1.0, 101).double()


def _iou_rows(pred_boxes: torch.Tensor, true_boxes: torch.Tensor) -> list[list[float]]:
    """The (D, G) IoU matrix in float64 as nested lists; 0/0 counts as 0, as in COCO."""
    if len(pred_boxes) == 0:
        return []
    if len(true_boxes) == 0:
        return [[] for _ in range(len(pred_boxes))]
    return box_iou(pred_boxes.double(), true_boxes.double()).nan_to_num(0.0).tolist()


def _greedy_hits(iou_rows: list[list[float]], iou_threshold: float) -> list[bool]:
    """For detections sorted by decreasing score (the rows): True where one matches a not-yet-matched object.

    COCO's rule: each detection, best first, takes the unmatched object it overlaps most, if
    that IoU is at least the threshold.
    """
    threshold = min(iou_threshold, 1 - 1e-10)
    matched = [False] * (len(iou_rows[0]) if iou_rows else 0)
    hits = []
    for row in iou_rows:
        best, best_iou = -1, -1.0
        for g, value in enumerate(row):
            if not matched[g] and value >= best_iou:  # ties: the last object, as COCO
                best, best_iou = g, value
        hit = best >= 0 and best_iou >= threshold
        if hit:
            matched[best] = True
        hits.append(hit)
    return hits


def average_precision(scores: torch.Tensor, hits: torch.Tensor, num_objects: int) -> tuple[float, torch.Tensor, torch.Tensor]:
    r"""Average precision of one class at one IoU threshold, with COCO's 101-point interpolation.

    Detections (of all images) are sorted by decreasing score (stable); precision and recall
    after each are :math:`P_k = TP_k / k` and :math:`R_k = TP_k / G`. The precision is made
    monotone from the right (:math:`\tilde P_k = \max_{j \ge k} P_j`) and read at the 101
    recalls :math:`r = 0, 0.01, \dots, 1`: the first detection reaching recall r gives
    :math:`\tilde P`, or 0 if no detection reaches it. AP is the mean of the 101 values.

    Args:
        scores: (D,) detection scores; hits: (D,) bool, True for a true positive.
        num_objects: G >= 1, objects of the class in all images.

    Returns:
        ``(ap, recall, precision)``: AP in [0, 1] and the curve (D,) before interpolation.

    Raises:
        ValueError: ``num_objects < 1`` (AP is undefined for a class without objects).
    """
    if num_objects < 1:
        raise ValueError(f"average precision needs at least one object of the class, got {num_objects}")
    order = torch.sort(scores.double(), descending=True, stable=True).indices
    tp = hits[order].double().cumsum(0)
    fp = (~hits[order]).double().cumsum(0)
    recall = tp / num_objects
    precision = tp / (tp + fp).clamp(min=1e-300)
    envelope = precision.flip(0).cummax(0).values.flip(0)  # max precision at any recall >= r
    index = torch.searchsorted(recall, RECALL_POINTS, right=False)  # first k with R_k >= r
    sampled = torch.where(index < len(recall), envelope[index.clamp(max=max(len(recall) - 1, 0))], 0.0) \
        if len(recall) else torch.zeros_like(RECALL_POINTS)  # fmt: skip
    return sampled.mean().item(), recall, precision


@dataclass(frozen=True)
class DetectionMetrics:
    """The result of :func:`mean_average_precision`.

    Attributes:
        map: mean AP over classes and the 10 IoU thresholds 0.50:0.95 (COCO's primary metric).
        map_50, map_75: mean AP over classes at IoU 0.5 and 0.75.
        per_class: ``{class: AP averaged over the thresholds}`` for every class with objects.
        per_class_50: ``{class: AP at IoU 0.5}``.
        curves: ``{class: (recall, precision)}`` at IoU 0.5, before interpolation (for plots).
    """

    map: float
    map_50: float
    map_75: float
    per_class: dict[int, float]
    per_class_50: dict[int, float]
    curves: dict[int, tuple[torch.Tensor, torch.Tensor]]


def _check(items: Sequence[dict], keys: tuple[str, ...], what: str) -> None:
    for i, item in enumerate(items):
        missing = [k for k in keys if k not in item]
        if missing:
            raise ValueError(f"{what}[{i}] lacks {missing}; expected keys {list(keys)}")
        n = len(item["boxes"])
        if item["boxes"].shape != (n, 4) or any(item[k].shape != (n,) for k in keys if k != "boxes"):
            raise ValueError(f"{what}[{i}]: boxes must be (N, 4) and {[k for k in keys if k != 'boxes']} (N,), got "
                             f"{ {k: tuple(item[k].shape) for k in keys} }")  # fmt: skip


def mean_average_precision(
    predictions: Sequence[dict[str, torch.Tensor]],
    targets: Sequence[dict[str, torch.Tensor]],
    iou_thresholds: Sequence[float] = COCO_IOU_THRESHOLDS,
    max_detections: int = 100,
) -> DetectionMetrics:
    """COCO's mean average precision (area range "all"), as ``torchmetrics``' ``MeanAveragePrecision``.

    Per image and class, detections are sorted by decreasing score and the best
    ``max_detections`` kept (COCO's ``maxDets``, applied per image and category); per threshold
    they are matched to objects (COCO's greedy rule, best detection first) and pooled over images
    for :func:`average_precision`. A class counts if it has objects in ``targets``: a class with
    objects but no detections has AP 0; a class with detections but no objects is left out, as
    in COCO. Images without objects contribute only false positives.

    Args:
        predictions: one dict per image with ``boxes`` (N, 4) float xyxy pixels, ``scores`` (N,)
            and ``labels`` (N,) int64 — torchmetrics' format.
        targets: one dict per image with ``boxes`` (M, 4) and ``labels`` (M,).
        iou_thresholds: the thresholds averaged over (must contain 0.5 and 0.75 for ``map_50``
            and ``map_75``).
        max_detections: per image, COCO's 100.

    Returns:
        :class:`DetectionMetrics`; ``map`` is NaN if no image has an object.

    Raises:
        ValueError: lists of different lengths, missing keys or inconsistent shapes, or
            ``iou_thresholds`` without 0.5 and 0.75.
    """
    if len(predictions) != len(targets):
        raise ValueError(f"got {len(predictions)} predictions for {len(targets)} images")
    _check(predictions, ("boxes", "scores", "labels"), "predictions")
    _check(targets, ("boxes", "labels"), "targets")
    thresholds = [float(t) for t in iou_thresholds]
    if not any(abs(t - 0.5) < 1e-9 for t in thresholds) or not any(abs(t - 0.75) < 1e-9 for t in thresholds):
        raise ValueError(f"iou_thresholds must contain 0.5 and 0.75, got {thresholds}")
    top = []
    for p in predictions:  # per image: sorted by score, stable
        order = torch.sort(p["scores"].double().cpu(), descending=True, stable=True).indices
        top.append({k: p[k].cpu()[order] for k in ("boxes", "scores", "labels")})
    targets = [{k: t[k].cpu() for k in ("boxes", "labels")} for t in targets]
    classes = sorted(set(torch.cat([t["labels"] for t in targets]).tolist())) if targets else []
    ap = torch.zeros(len(classes), len(thresholds), dtype=torch.float64)
    curves = {}
    for ci, c in enumerate(classes):
        num_objects = sum(int((t["labels"] == c).sum()) for t in targets)
        scores, ious = [], []  # per image: this class's detections (best first) and their IoU rows
        for p, t in zip(top, targets):
            mine = torch.nonzero(p["labels"] == c).flatten()[:max_detections]
            scores.append(p["scores"][mine])
            ious.append(_iou_rows(p["boxes"][mine], t["boxes"][t["labels"] == c]))
        scores = torch.cat(scores)
        for ti, threshold in enumerate(thresholds):
            hits = torch.tensor([hit for rows in ious for hit in _greedy_hits(rows, threshold)], dtype=torch.bool)
            ap[ci, ti], recall, precision = average_precision(scores, hits, num_objects)
            if abs(threshold - 0.5) < 1e-9:
                curves[c] = (recall, precision)
    at = {t: ti for ti, t in enumerate(thresholds)}
    i50 = next(i for t, i in at.items() if abs(t - 0.5) < 1e-9)
    i75 = next(i for t, i in at.items() if abs(t - 0.75) < 1e-9)
    nan = float("nan")
    return DetectionMetrics(
        map=ap.mean().item() if classes else nan,
        map_50=ap[:, i50].mean().item() if classes else nan,
        map_75=ap[:, i75].mean().item() if classes else nan,
        per_class={c: ap[ci].mean().item() for ci, c in enumerate(classes)},
        per_class_50={c: ap[ci, i50].item() for ci, c in enumerate(classes)},
        curves=curves,
    )


def mean_iou(predictions: torch.Tensor, targets: torch.Tensor, num_classes: int) -> tuple[float, torch.Tensor]:
    r"""Mean intersection over union of a segmentation, as ``torchmetrics`` ``JaccardIndex(average="macro")``.

    Per class c over all pixels: :math:`\mathrm{IoU}_c = TP_c / (TP_c + FP_c + FN_c)`; the mean is
    over the classes that occur in the predictions or the targets, background included. A class
    absent from both has no IoU: it is reported as 0 in the per-class tensor and left out of the
    mean, as torchmetrics' macro average does.

    Args:
        predictions, targets: int64 class maps of the same shape (B, H, W), values in [0, K).
        num_classes: K.

    Returns:
        ``(mean IoU, per-class IoU (K,))``, in [0, 1] (the mean is NaN for empty inputs).

    Raises:
        ValueError: shapes differ, or a value outside [0, K).
    """
    if predictions.shape != targets.shape:
        raise ValueError(f"predictions {tuple(predictions.shape)} and targets {tuple(targets.shape)} differ in shape")
    confusion = confusion_matrix(predictions.flatten(), targets.flatten(), num_classes).double()  # (true, pred)
    tp = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - tp  # TP + FP + FN
    iou = torch.where(union > 0, tp / union.clamp(min=1), 0.0)
    present = union > 0
    return (iou[present].mean().item() if present.any() else float("nan")), iou
