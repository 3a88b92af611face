"""Box utilities, NMS, mAP and mean IoU from scratch against torchvision.ops and torchmetrics."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision.ops as ops

from companion.boxes import batched_nms, box_area, box_iou, generalized_box_iou, generalized_box_iou_loss, nms
from companion.detection_metrics import average_precision, mean_average_precision, mean_iou

D = torch.float64


def random_boxes(n, seed=0, scale=50.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=D) * scale
    wh = torch.rand(n, 2, generator=g, dtype=D) * scale / 2
    return torch.cat([xy, xy + wh], 1)


DEGENERATE = torch.tensor(
    [
        [0, 0, 10, 10],  # a square
        [0, 0, 10, 10],  # identical
        [10, 0, 20, 10],  # touching the first along an edge
        [2, 2, 5, 5],  # inside the first
        [3, 3, 3, 8],  # zero width
        [4, 4, 4, 4],  # a point
        [-5, -5, 30, 30],  # containing all
    ],
    dtype=D,
)


@pytest.mark.parametrize("boxes", [random_boxes(30), DEGENERATE], ids=["random", "degenerate"])
def test_area_iou_giou_equal_torchvision(boxes):
    other = torch.cat([random_boxes(9, seed=1), DEGENERATE])
    torch.testing.assert_close(box_area(boxes), ops.box_area(boxes))
    torch.testing.assert_close(box_iou(boxes, other), ops.box_iou(boxes, other), equal_nan=True)
    torch.testing.assert_close(generalized_box_iou(boxes, other), ops.generalized_box_iou(boxes, other), equal_nan=True)


def test_iou_and_giou_by_hand():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [4.0, 0.0, 6.0, 2.0]])
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[1 / 7, 0.0]]))
    # disjoint: IoU 0, GIoU = 0 - (|C| - |A ∪ B|) / |C| = -(12 - 8) / 12
    torch.testing.assert_close(generalized_box_iou(a, b)[0, 1], torch.tensor(-4 / 12))
    grad_check = a.clone().double().requires_grad_()
    generalized_box_iou(grad_check, b.double())[0, 1].backward()  # GIoU has a gradient where IoU has none
    assert grad_check.grad.abs().sum() > 0


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_giou_loss_equals_torchvision_in_values_and_gradients(reduction):
    preds = torch.cat([random_boxes(30), DEGENERATE])
    targets = torch.cat([random_boxes(30, seed=1), DEGENERATE.flip(0)])
    a, b = preds.clone().requires_grad_(), preds.clone().requires_grad_()
    ta, tb = targets.clone().requires_grad_(), targets.clone().requires_grad_()
    ours = generalized_box_iou_loss(a, ta, reduction)
    theirs = ops.generalized_box_iou_loss(b, tb, reduction)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    ours.sum().backward(), theirs.sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(ta.grad, tb.grad, rtol=0, atol=1e-12)
    # batched (B, N, 4) and an empty batch, as torchvision
    batched = preds[:36].reshape(3, 12, 4), targets[:36].reshape(3, 12, 4)
    torch.testing.assert_close(generalized_box_iou_loss(*batched, reduction),
                               ops.generalized_box_iou_loss(*batched, reduction))
    empty = torch.zeros(0, 4, dtype=D)
    torch.testing.assert_close(generalized_box_iou_loss(empty, empty, reduction),
                               ops.generalized_box_iou_loss(empty, empty, reduction))


def test_giou_loss_by_hand_and_refusals():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0]], dtype=D)
    b = torch.tensor([[0.0, 0.0, 2.0, 2.0], [4.0, 0.0, 6.0, 2.0]], dtype=D)
    # identical: 0; disjoint: 1 - 0 + (12 - 8) / 12, above 1
    expected = torch.tensor([0.0, 1 + 4 / 12], dtype=D)
    torch.testing.assert_close(generalized_box_iou_loss(a, b, eps=0.0), expected)
    with pytest.raises(ValueError, match="one shape"):
        generalized_box_iou_loss(a, b[:1])
    with pytest.raises(ValueError, match="one shape"):
        generalized_box_iou_loss(a[:, :3], b[:, :3])
    with pytest.raises(ValueError, match="reduction must be"):
        generalized_box_iou_loss(a, b, reduction="max")
    with pytest.raises(ValueError, match="eps must be"):
        generalized_box_iou_loss(a, b, eps=-1.0)
    with pytest.raises(TypeError, match="float"):
        generalized_box_iou_loss(a.long(), b.long())


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7, 1.0])
def test_nms_equals_torchvision(threshold):
    for seed in range(5):
        boxes = random_boxes(60, seed=seed)
        scores = torch.rand(60, generator=torch.Generator().manual_seed(100 + seed), dtype=D)
        assert torch.equal(nms(boxes, scores, threshold), ops.nms(boxes, scores, threshold))
        idxs = torch.randint(0, 4, (60,), generator=torch.Generator().manual_seed(seed))
        assert torch.equal(batched_nms(boxes, scores, idxs, threshold), ops.batched_nms(boxes, scores, idxs, threshold))


def test_nms_degenerate_boxes_and_ties_by_index():
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3], dtype=D)
    assert torch.equal(nms(DEGENERATE, scores, 0.5), ops.nms(DEGENERATE, scores, 0.5))
    tied = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10]], dtype=D)
    assert nms(tied, torch.tensor([0.5, 0.5], dtype=D), 0.5).tolist() == [0]  # the first of a tie
    assert nms(torch.zeros(0, 4, dtype=D), torch.zeros(0, dtype=D), 0.5).numel() == 0
    # different classes never suppress each other, identical boxes of one class do
    kept = batched_nms(tied, torch.tensor([0.9, 0.8], dtype=D), torch.tensor([0, 1]), 0.5)
    assert kept.tolist() == [0, 1]
    negative = torch.tensor([[-20, -20, 1, 1], [-20, -20, 1, 1]], dtype=D)  # torchvision keeps one here
    assert batched_nms(negative, torch.tensor([0.9, 0.8], dtype=D), torch.tensor([0, 1]), 0.5).tolist() == [0, 1]


def test_box_errors():
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        box_area(torch.zeros(3, 5))
    with pytest.raises(TypeError, match="float"):
        box_iou(torch.zeros(3, 4, dtype=torch.long), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="iou_threshold"):
        nms(torch.zeros(2, 4), torch.zeros(2), 1.5)
    with pytest.raises(ValueError, match=r"scores must have shape \(2,\)"):
        nms(torch.zeros(2, 4), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match=r"idxs must have shape \(2,\)"):
        batched_nms(torch.zeros(2, 4), torch.zeros(2), torch.zeros(3, dtype=torch.long), 0.5)


# --- mean average precision ----------------------------------------------------------------------


def random_detections(seed, images=8, classes=4, empty_every=3):
    g = torch.Generator().manual_seed(seed)

    def boxes(n):
        xy = torch.rand(n, 2, generator=g) * 50
        return torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 20 + 2], 1)

    predictions, targets = [], []
    for i in range(images):
        m = 0 if i % empty_every == 0 else int(torch.randint(1, 5, (1,), generator=g))  # some images empty
        true_boxes, true_labels = boxes(m), torch.randint(0, classes - 1, (m,), generator=g)  # last class: none
        n = int(torch.randint(0, 8, (1,), generator=g))
        jittered = true_boxes + torch.randn(m, 4, generator=g) * 2
        pred = torch.cat([jittered, boxes(n)])
        pred = torch.cat([pred[:, :2], torch.max(pred[:, 2:], pred[:, :2] + 0.5)], 1)
        labels = torch.cat([true_labels, torch.randint(0, classes, (n,), generator=g)])
        scores = torch.rand(len(pred), generator=g)
        if seed % 2 == 0:  # class 0 has objects but no detections at all
            keep = labels != 0
            pred, scores, labels = pred[keep], scores[keep], labels[keep]
        predictions.append(dict(boxes=pred, scores=scores, labels=labels))
        targets.append(dict(boxes=true_boxes, labels=true_labels))
    return predictions, targets


@pytest.mark.parametrize("seed", range(12))
def test_map_equals_torchmetrics_with_faster_coco_eval(seed):
    metrics = pytest.importorskip("torchmetrics.detection")
    pytest.importorskip("faster_coco_eval")
    predictions, targets = random_detections(seed)
    reference = metrics.MeanAveragePrecision(backend="faster_coco_eval", class_metrics=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference.update(predictions, targets)
        expected = reference.compute()
    ours = mean_average_precision(predictions, targets)
    for key in ("map", "map_50", "map_75"):
        assert getattr(ours, key) == pytest.approx(expected[key].item(), abs=1e-4), key
    classes = expected["classes"].tolist()
    per_class = dict(zip(classes, expected["map_per_class"].tolist()))
    for c, ap in ours.per_class.items():
        assert ap == pytest.approx(per_class[c], abs=1e-4)
    assert all(per_class[c] == -1 for c in classes if c not in ours.per_class)  # no objects: left out


def _torchmetrics_map(predictions, targets):
    metrics = pytest.importorskip("torchmetrics.detection")
    pytest.importorskip("faster_coco_eval")
    reference = metrics.MeanAveragePrecision(backend="faster_coco_eval")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference.update(predictions, targets)
        return reference.compute()


def test_map_limits_detections_per_image_and_class_like_coco():
    # 150 detections of one class in one image: only the best 100 count (COCO's maxDets)
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(30, 2, generator=g) * 50
    truth = torch.cat([xy, xy + 8], 1)
    noise = torch.cat([torch.rand(120, 2, generator=g) * 50, torch.zeros(120, 2)], 1)
    noise[:, 2:] = noise[:, :2] + 5
    boxes = torch.cat([truth + 0.5, noise])
    scores = torch.cat([torch.rand(30, generator=g) * 0.5, torch.rand(120, generator=g)])  # truths ranked low
    predictions = [dict(boxes=boxes, scores=scores, labels=torch.zeros(150, dtype=torch.long))]
    targets = [dict(boxes=truth, labels=torch.zeros(30, dtype=torch.long))]
    expected = _torchmetrics_map(predictions, targets)
    ours = mean_average_precision(predictions, targets)
    assert ours.map_50 == pytest.approx(expected["map_50"].item(), abs=1e-6)
    assert ours.map_50 < mean_average_precision(predictions, targets, max_detections=150).map_50


def test_map_recall_equal_to_a_recall_point_matches_torchmetrics():
    # 5 objects, 3 found: recall 0.6 exactly, which torchmetrics' float32 point 0.6 lies just above
    truth = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20, 0, 30, 10], [40, 0, 50, 10], [0, 20, 10, 30], [20, 20, 30, 30]])
    found = truth[:3] + 0.2
    wrong = torch.tensor([[60.0, 60.0, 70.0, 70.0]])
    predictions = [dict(boxes=torch.cat([found[:2], wrong, found[2:]]), scores=torch.tensor([0.9, 0.8, 0.7, 0.6]),
                        labels=torch.zeros(4, dtype=torch.long))]  # fmt: skip
    targets = [dict(boxes=truth, labels=torch.zeros(5, dtype=torch.long))]
    expected = _torchmetrics_map(predictions, targets)
    assert mean_average_precision(predictions, targets).map_50 == pytest.approx(expected["map_50"].item(), abs=1e-7)


def test_map_known_cases_by_hand():
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    one = [dict(boxes=box, labels=torch.tensor([0]))]
    perfect = mean_average_precision([dict(boxes=box, scores=torch.tensor([0.9]), labels=torch.tensor([0]))], one)
    assert perfect.map == 1.0 and perfect.map_50 == 1.0
    missed = mean_average_precision([dict(boxes=torch.zeros(0, 4), scores=torch.zeros(0), labels=torch.zeros(0, dtype=torch.long))], one)
    assert missed.map == 0.0  # a class with objects and no detections has AP 0
    # a half-overlapping box: IoU 1/3 -> no match at any COCO threshold
    shifted = torch.tensor([[5.0, 0.0, 15.0, 10.0]])
    assert mean_average_precision([dict(boxes=shifted, scores=torch.tensor([0.9]), labels=torch.tensor([0]))], one).map == 0
    # a false positive ranked above the true positive halves the precision at full recall
    ap, recall, precision = average_precision(torch.tensor([0.9, 0.8]), torch.tensor([False, True]), 1)
    assert ap == pytest.approx(0.5) and recall.tolist() == [0.0, 1.0] and precision.tolist() == [0.0, 0.5]


def test_map_errors():
    with pytest.raises(ValueError, match="2 predictions for 1 images"):
        mean_average_precision([{}, {}], [{}])
    with pytest.raises(ValueError, match=r"lacks \['scores'\]"):
        mean_average_precision([dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0))], [dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0))])
    with pytest.raises(ValueError, match="must contain 0.5 and 0.75"):
        mean_average_precision([], [], iou_thresholds=[0.6])
    with pytest.raises(ValueError, match="at least one object"):
        average_precision(torch.zeros(1), torch.zeros(1, dtype=torch.bool), 0)
    with pytest.raises(ValueError, match=r"boxes must be \(N, 4\)"):
        mean_average_precision([dict(boxes=torch.zeros(2, 4), scores=torch.zeros(3), labels=torch.zeros(2))],
                               [dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0))])  # fmt: skip


def test_mean_iou_equals_torchmetrics_jaccard_index():
    classification = pytest.importorskip("torchmetrics.classification")
    g = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 5, (4, 16, 16), generator=g)
    predictions = torch.randint(0, 5, (4, 16, 16), generator=g)
    predictions[targets == 2] = 2
    # 6 classes, class 5 absent from both: torchmetrics leaves it out of the macro mean
    expected = classification.MulticlassJaccardIndex(num_classes=6, average="macro")(predictions, targets)
    per_class = classification.MulticlassJaccardIndex(num_classes=6, average="none")(predictions, targets)
    mean, ours = mean_iou(predictions, targets, 6)
    assert mean == pytest.approx(expected.item(), abs=1e-6)
    torch.testing.assert_close(ours.float(), per_class)
    assert mean_iou(targets, targets, 5)[0] == 1.0
    with pytest.raises(ValueError, match="differ in shape"):
        mean_iou(targets, targets[0], 5)
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        mean_iou(targets, targets, 3)
