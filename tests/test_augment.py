"""companion.augment: per-image augmentations, against torchvision and by their definitions."""

from __future__ import annotations

import pytest
import torch
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
