"""Scene generator, CenterNet targets / loss / decoding and the U-Net: facts, hand calculations, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from companion.data import ImageSplit
from companion.detection import CenterNet, centernet_loss, centernet_targets, decode_centernet, gaussian_radius
from companion.scenes import make_scenes
from companion.segmentation import UNet


def toy_split(train=True, n=20):
    """Squares of ink of known size: image i has a bright 10 x 10 square at rows/cols 9..18."""
    images = torch.zeros(n, 1, 28, 28, dtype=torch.uint8)
    images[:, :, 9:19, 9:19] = 255
    labels = torch.arange(n) % 10
    return ImageSplit("mnist", train, images, labels, tuple(str(k) for k in range(10)), 0.1, 0.3)


def test_scenes_are_deterministic_and_record_their_split(mnist_train, mnist_test):
    a = make_scenes(mnist_train, 50, torch.Generator().manual_seed(3))
    b = make_scenes(mnist_train, 50, torch.Generator().manual_seed(3))
    assert torch.equal(a.images, b.images) and all(torch.equal(x, y) for x, y in zip(a.boxes, b.boxes))
    assert a.train and not make_scenes(mnist_test, 5, torch.Generator().manual_seed(0)).train
    for sources, labels in zip(a.sources, a.labels):  # every object is an image of the split, with its label
        assert (sources < len(mnist_train)).all()
        assert torch.equal(mnist_train.labels[sources], labels)
    counts = [len(b) for b in a.boxes]
    assert min(counts) >= 1 and max(counts) <= 5
    assert a.images.dtype == torch.uint8 and a.images.shape == (50, 1, 64, 64) and a.masks.shape == (50, 64, 64)


def test_boxes_masks_and_overlap_by_construction():
    split = toy_split()
    scenes = make_scenes(split, 200, torch.Generator().manual_seed(0), size_range=(28, 28), max_iou=0.0,
                         min_objects=2, max_objects=3)  # fmt: skip
    for boxes, labels, mask in zip(scenes.boxes, scenes.labels, scenes.masks):
        # a 28-pixel paste of a 10-pixel square: a 10 x 10 ink box (bilinear edges: 10 or 11)
        sides = boxes[:, 2:] - boxes[:, :2]
        assert ((sides >= 9) & (sides <= 11)).all(), boxes
        for box, label in zip(boxes.long(), labels):
            x1, y1, x2, y2 = box.tolist()
            assert (mask[y1:y2, x1:x2] == label + 1).float().mean() > 0.8  # the mask fills the box
        assert set(mask.unique().tolist()) <= {0, *(labels + 1).tolist()}
        # max_iou=0: patches never overlap, so neither do the boxes
        wh = (torch.min(boxes[:, None, 2:], boxes[None, :, 2:]) - torch.max(boxes[:, None, :2], boxes[None, :, :2])).clamp(min=0)
        inter = wh[..., 0] * wh[..., 1]
        assert (inter.triu(1) == 0).all()


def test_scene_errors():
    split = toy_split()
    g = torch.Generator()
    for kwargs, match in [(dict(num_scenes=0), "num_scenes"), (dict(min_objects=3, max_objects=2), "min_objects"),
                          (dict(size_range=(4, 10)), "size_range"), (dict(max_iou=1.5), "max_iou"),
                          (dict(ink_threshold=300), "ink_threshold"), (dict(tries=0), "tries")]:  # fmt: skip
        args = dict(num_scenes=2) | kwargs
        with pytest.raises(ValueError, match=match):
            make_scenes(split, generator=g, **args)


def test_gaussian_radius_by_hand_and_scale_equivariant():
    # a square of side s: the third quadratic is the smallest, r = s (-2.8 + sqrt(2.8^2 + 4 * 2.8 * 0.3)) / 2 / 2.8 * 2.8
    s = torch.tensor(10.0)
    expected = s * (-2.8 + (2.8**2 + 4 * 2.8 * 0.3) ** 0.5) / 2
    torch.testing.assert_close(gaussian_radius(s, s), expected)
    h, w = torch.tensor([3.0, 7.0]), torch.tensor([5.0, 2.0])
    torch.testing.assert_close(gaussian_radius(2 * h, 2 * w), 2 * gaussian_radius(h, w))


def test_centernet_targets_by_hand():
    target = [{"boxes": torch.tensor([[8.0, 4.0, 24.0, 20.0]]), "labels": torch.tensor([3])}]
    t = centernet_targets(target, num_classes=10, output_size=(16, 16))
    # centre (16, 12) px -> cell (4, 3) at stride 4, offset 0; size 16 x 16
    assert t["heatmap"][0, 3, 3, 4] == 1.0 and t["heatmap"][0, 3].max() == 1.0
    assert t["heatmap"][0, :3].sum() == 0 and t["mask"][0].sum() == 1 and t["mask"][0, 3, 4]
    assert t["size"][0, :, 3, 4].tolist() == [16.0, 16.0] and t["offset"][0, :, 3, 4].tolist() == [0.0, 0.0]
    empty = centernet_targets([{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}], 10, (16, 16))
    assert empty["heatmap"].sum() == 0 and not empty["mask"].any()


def test_perfect_outputs_decode_to_the_true_boxes_and_lose_little():
    target = [{"boxes": torch.tensor([[8.0, 4.0, 24.0, 20.0], [40.0, 40.0, 50.0, 58.0]]), "labels": torch.tensor([3, 7])}]
    t = centernet_targets(target, num_classes=10, output_size=(16, 16))
    logits = torch.logit(t["heatmap"].clamp(1e-6, 1 - 1e-6))
    outputs = {"heatmap": logits, "size": t["size"], "offset": t["offset"]}
    detections = decode_centernet(outputs, max_detections=2)[0]
    order = detections["labels"].argsort()
    torch.testing.assert_close(detections["boxes"][order], target[0]["boxes"])
    assert detections["labels"][order].tolist() == [3, 7]
    worse = {"heatmap": torch.zeros_like(logits), "size": t["size"] + 3, "offset": t["offset"]}
    assert centernet_loss(outputs, t) < centernet_loss(worse, t)


def test_models_shapes_and_errors():
    x = torch.zeros(2, 1, 64, 64)
    out = CenterNet(num_classes=10)(x)
    assert out["heatmap"].shape == (2, 10, 16, 16) and out["size"].shape == (2, 2, 16, 16)
    assert torch.sigmoid(out["heatmap"]).mean().item() == pytest.approx(0.1, abs=0.02)  # the prior
    assert UNet(num_classes=11)(x).shape == (2, 11, 64, 64)
    with pytest.raises(ValueError, match="divisible by 4"):
        CenterNet()(torch.zeros(1, 1, 30, 32))
    with pytest.raises(ValueError, match="divisible by 8"):
        UNet()(torch.zeros(1, 1, 36, 32))
    with pytest.raises(ValueError, match="depth must be >= 1"):
        UNet(depth=0)


def test_unet_fits_a_pixel_exact_mask_in_a_few_steps():
    # 30 steps of training on one 2 x 2 square: the network places it to the pixel (the known answer is
    # the mask itself; predicted with the batch's statistics, as in training)
    torch.manual_seed(0)
    net = UNet(num_classes=2, width=8)
    x = torch.zeros(4, 1, 32, 32)
    x[:, :, 10:12, 10:12] = 1.0
    y = (x[:, 0] > 0).long()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad(), loss.backward(), optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
    with torch.no_grad():
        assert torch.equal(net(x).argmax(1), y)  # every one of the 4 x 32 x 32 pixels right


def test_decoding_drops_non_peaks_and_clips_to_the_input():
    heat = torch.full((1, 2, 4, 4), -20.0)
    heat[0, 1, 0, 0] = 5.0  # one confident peak in the corner
    outputs = {"heatmap": heat, "size": torch.full((1, 2, 4, 4), 40.0), "offset": torch.zeros(1, 2, 4, 4)}
    detections = decode_centernet(outputs)[0]
    assert len(detections["boxes"]) >= 1 and (detections["scores"] > 0).all()
    assert detections["boxes"].min() >= 0 and detections["boxes"].max() <= 16
    assert detections["labels"][0] == 1


def test_centernet_loss_equals_a_hand_calculation():
    # One image, one class, a 1 x 2 heat map: a centre (Y = 1) predicted 0.8, a neighbour (Y = 0.5) predicted 0.3.
    p = torch.tensor([[[[0.8, 0.3]]]], dtype=torch.float64)
    outputs = {"heatmap": torch.log(p / (1 - p)),  # logits whose sigmoid is p
               "size": torch.tensor([[[[10.0, 99.0]], [[6.0, 99.0]]]], dtype=torch.float64),  # (1, 2, 1, 2)
               "offset": torch.tensor([[[[0.2, 9.0]], [[0.7, 9.0]]]], dtype=torch.float64)}  # fmt: skip
    targets = {"heatmap": torch.tensor([[[[1.0, 0.5]]]], dtype=torch.float64),
               "size": torch.tensor([[[[12.0, 0.0]], [[5.0, 0.0]]]], dtype=torch.float64),
               "offset": torch.tensor([[[[0.5, 0.0]], [[0.5, 0.0]]]], dtype=torch.float64),
               "mask": torch.tensor([[[True, False]]])}  # fmt: skip
    # focal, N = 1: -[(1 - 0.8)^2 log 0.8 + (1 - 0.5)^4 0.3^2 log(1 - 0.3)]
    focal = -(0.2**2 * math.log(0.8) + 0.5**4 * 0.3**2 * math.log(0.7))
    size = abs(10 - 12) + abs(6 - 5)  # only the centre cell counts (mask): 3 pixels
    offset = abs(0.2 - 0.5) + abs(0.7 - 0.5)  # 0.5 cells
    expected = focal + 0.1 * size + 1.0 * offset  # the default weights: 0.8109...
    assert centernet_loss(outputs, targets).item() == pytest.approx(expected, rel=1e-12)
    assert centernet_loss(outputs, targets, size_weight=0.0, offset_weight=0.0).item() == pytest.approx(focal, rel=1e-12)
