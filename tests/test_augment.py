"""companion.augment: per-image augmentations, against torchvision and by their definitions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

from companion.augment import AffineParams, affine, cutout, random_affine, random_affine_params


def test_affine_equals_torchvision_image_by_image():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 2, 28, 24, dtype=torch.float64)  # H != W and two channels expose index mix-ups
    params = random_affine_params(6, (28, 24), g, degrees=30, translate=(0.1, 0.2), scale=(0.7, 1.3))
    out = affine(x, params, fill=-0.5)
    for i in range(6):
        reference = TF.affine(x[i], angle=float(params.angle[i]), translate=params.translate[i].tolist(),
                              scale=float(params.scale[i]), shear=[0.0, 0.0],
                              interpolation=InterpolationMode.BILINEAR, fill=[-0.5, -0.5])  # fmt: skip
        torch.testing.assert_close(out[i], reference, rtol=0, atol=1e-12)


def test_random_affine_draws_then_applies_the_same_parameters():
    x = torch.rand(5, 1, 28, 28, dtype=torch.float64)
    out = random_affine(x, torch.Generator().manual_seed(3), degrees=20, translate=(0.1, 0.1), scale=(0.9, 1.1))
    params = random_affine_params(5, (28, 28), torch.Generator().manual_seed(3), 20, (0.1, 0.1), (0.9, 1.1))
    torch.testing.assert_close(out, affine(x, params, fill=x.amin()), rtol=0, atol=0)
    assert not torch.allclose(out[0], out[1])  # one draw per image


def test_random_affine_parameters_lie_in_their_ranges():
    p = random_affine_params(2000, (28, 20), torch.Generator().manual_seed(0), 15, (0.1, 0.25), (0.8, 1.2))
    assert p.angle.abs().max() <= 15 and p.angle.abs().max() > 14
    assert p.translate[:, 0].abs().max() <= 0.1 * 20 and p.translate[:, 1].abs().max() <= 0.25 * 28
    assert 0.8 <= p.scale.min() and p.scale.max() <= 1.2


def test_identity_parameters_leave_images_unchanged():
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    same = random_affine(x, torch.Generator().manual_seed(0), degrees=0, translate=(0, 0), scale=(1, 1))
    torch.testing.assert_close(same, x, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"degrees": -1}, "degrees"), ({"translate": (0.1, 1.5)}, "translate"), ({"scale": (1.2, 0.8)}, "scale"),
])  # fmt: skip
def test_random_affine_refuses_invalid_ranges(kwargs, match):
    with pytest.raises(ValueError, match=match):
        random_affine(torch.zeros(2, 1, 4, 4), torch.Generator(), **kwargs)


def test_affine_refuses_integer_images_and_a_wrong_batch():
    with pytest.raises(TypeError, match="float"):
        random_affine(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.Generator())
    params = AffineParams(torch.zeros(3), torch.zeros(3, 2), torch.ones(3))
    with pytest.raises(ValueError, match="3 images' parameters, images has 2"):
        affine(torch.zeros(2, 1, 4, 4), params)


def test_cutout_paints_one_contiguous_square_per_image_and_nothing_else():
    size = 4
    x = torch.rand(200, 2, 12, 12) + 1  # all > 1, except the planted minimum
    x[0, 0, 0, 0] = -1  # the batch minimum, used as the fill
    out = cutout(x, torch.Generator().manual_seed(0), size)
    changed = (out != x).any(1)  # (B, H, W), per pixel over channels
    for b in range(len(x)):
        rows, cols = changed[b].nonzero(as_tuple=True)
        assert len(rows) > 0  # every image loses a square (its centre is inside the image)
        height, width = int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1
        assert height <= size and width <= size and len(rows) == height * width  # one full rectangle
        box = out[b, :, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert (box == -1).all()  # painted with the minimum, in every channel
        interior = rows.min() > 0 and cols.min() > 0 and rows.max() < 11 and cols.max() < 11
        assert not interior or height == width == size  # clipped only at a border
    assert changed.sum(dim=(1, 2)).float().mean() > 8  # squares are mostly whole


def test_cutout_refuses_bad_arguments_and_passes_an_empty_batch():
    with pytest.raises(ValueError, match="size"):
        cutout(torch.zeros(2, 1, 4, 4), torch.Generator(), 0)
    with pytest.raises(ValueError, match="four dimensions"):
        cutout(torch.zeros(2, 4, 4), torch.Generator(), 2)
    empty = torch.zeros(0, 1, 28, 28)
    assert cutout(empty, torch.Generator(), 4).shape == (0, 1, 28, 28)
    assert random_affine(empty, torch.Generator()).shape == (0, 1, 28, 28)


# ---- MixUp, CutMix, per-image transforms (chapter "Data augmentation") ----

from torchvision.transforms import v2  # noqa: E402

from companion.augment import CutMix, MixUp, cutmix, cutmix_box, mixup, per_image  # noqa: E402


def _batch(seed=0, batch=6, size=8):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size + 2, generator=g), torch.randint(0, 5, (batch,), generator=g)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_mixup_and_cutmix_equal_torchvisions_for_the_same_random_state(seed, alpha):
    images, labels = _batch(seed)
    for ours, theirs in ((MixUp(alpha, 5), v2.MixUp(alpha=alpha, num_classes=5)),
                         (CutMix(alpha, 5), v2.CutMix(alpha=alpha, num_classes=5))):
        torch.manual_seed(seed)
        expected = theirs(images, labels)
        torch.manual_seed(seed)
        got = ours(images, labels)
        torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)
        torch.testing.assert_close(got[1], expected[1], rtol=0, atol=0)


def test_mixup_by_hand_and_its_loss_is_the_mixture_of_two_losses():
    images = torch.stack([torch.full((1, 2, 2), float(v)) for v in (0, 10, 20)])
    labels = torch.tensor([0, 1, 2])
    mixed, targets = mixup(images, labels, 0.75, num_classes=3)
    torch.testing.assert_close(mixed[:, 0, 0, 0], torch.tensor([0.75 * 0 + 0.25 * 20, 7.5, 0.75 * 20 + 2.5]))
    torch.testing.assert_close(targets, torch.tensor([[0.75, 0, 0.25], [0.25, 0.75, 0], [0, 0.25, 0.75]]))
    torch.testing.assert_close(targets.sum(1), torch.ones(3))
    logits = torch.randn(3, 3, dtype=torch.float64)
    both = 0.75 * F.cross_entropy(logits, labels) + 0.25 * F.cross_entropy(logits, labels.roll(1))
    torch.testing.assert_close(F.cross_entropy(logits, targets.double()), both)


def test_cutmix_pastes_the_box_and_weighs_labels_by_the_area_kept():
    images = torch.stack([torch.full((1, 4, 5), float(v)) for v in (1, 2)])
    mixed, targets = cutmix(images, torch.tensor([0, 1]), (1, 0, 3, 2), num_classes=2)  # 2 x 2 of 20 pixels
    assert (mixed[0, 0, 0:2, 1:3] == 2).all() and (mixed[0] == 2).sum() == 4 and (mixed[1, 0, 0:2, 1:3] == 1).all()
    torch.testing.assert_close(targets, torch.tensor([[0.8, 0.2], [0.2, 0.8]]))


def test_cutmix_box_is_clipped_and_its_area_at_most_one_minus_lambda():
    torch.manual_seed(0)
    for _ in range(200):
        lam = torch.rand(()).item()
        x1, y1, x2, y2 = cutmix_box(lam, 28, 30)
        assert 0 <= x1 <= x2 <= 30 and 0 <= y1 <= y2 <= 28
        assert (x2 - x1) * (y2 - y1) <= (1 - lam) * 28 * 30 + 1e-9


def test_probability_targets_mix_too_and_rows_sum_to_one():
    images, labels = _batch()
    soft = F.one_hot(labels, 5).float() * 0.9 + 0.02
    _, mixed = mixup(images, soft, 0.3)
    torch.testing.assert_close(mixed.sum(1), torch.ones(len(images)))


def test_mixing_refusals():
    images, labels = _batch()
    with pytest.raises(ValueError, match="alpha must be > 0"):
        MixUp(0.0, 5)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        CutMix(-1, 5)
    with pytest.raises(TypeError, match="alpha"):
        MixUp("1", 5)
    with pytest.raises(ValueError, match=r"lam must be in \[0, 1\]"):
        mixup(images, labels, 1.5, 5)
    with pytest.raises(TypeError, match="lam must be a number"):
        mixup(images, labels, True, 5)
    with pytest.raises(ValueError, match="num_classes"):
        mixup(images, labels, 0.5)
    with pytest.raises(ValueError, match="for B = 6 images"):
        mixup(images, labels[:3], 0.5, 5)
    with pytest.raises(TypeError, match="float tensor"):
        mixup((images * 255).to(torch.uint8), labels, 0.5, 5)
    with pytest.raises(TypeError, match="integers"):
        mixup(images, labels.float(), 0.5, 5)
    with pytest.raises(ValueError, match="columns"):
        mixup(images, F.one_hot(labels, 5).float(), 0.5, 4)
    with pytest.raises(ValueError, match="box must satisfy"):
        cutmix(images, labels, (3, 0, 2, 4), 5)
    with pytest.raises(ValueError, match="box must satisfy"):
        cutmix(images, labels, (0, 0, 11, 4), 5)


def test_per_image_draws_per_image_where_a_batched_v2_call_draws_once():
    torch.manual_seed(0)
    images = torch.rand(64, 1, 6, 6)
    flip = v2.RandomHorizontalFlip(p=0.5)
    once = flip(images)
    flipped_once = [(once[i] == images[i].flip(-1)).all().item() for i in range(64)]
    assert len(set(flipped_once)) == 1  # one decision for the whole batch
    each = per_image(flip, images)
    flipped_each = [(each[i] == images[i].flip(-1)).all().item() for i in range(64)]
    assert 10 < sum(flipped_each) < 54  # about half, each its own
    torch.manual_seed(1)
    expected = torch.stack([flip(image) for image in images])
    torch.manual_seed(1)
    torch.testing.assert_close(per_image(flip, images), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="four dimensions"):
        per_image(flip, images[0])
    with pytest.raises(TypeError, match="callable"):
        per_image("flip", images)
