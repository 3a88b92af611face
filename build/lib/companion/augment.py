"""Random augmentations drawn per image, on the device, for whole batches at once.

torchvision's ``RandomAffine`` draws one transform per call, so a batch would share it; training
with shifts, and contrastive learning even more, needs a different distortion per image. The
functions here draw per-image parameters from a CPU ``torch.Generator`` (the same on every device)
and apply them to a batch in one operation. They share one signature, ``(images, generator, ...)``,
and torchvision's argument names and meanings where torchvision has the transform:
:func:`random_affine` takes ``degrees``, ``translate`` and ``scale`` as ``RandomAffine`` does, and
equals ``torchvision.transforms.functional.affine`` image by image (tested).

Batch-level augmentations mix pairs of images and their labels: :func:`mixup` (Zhang et al.,
2018) and :func:`cutmix` (Yun et al., 2019), written from their definitions, and :class:`MixUp`
and :class:`CutMix`, which draw their parameters exactly as ``torchvision.transforms.v2.MixUp``
and ``CutMix`` do and equal them for the same random state (tested). :func:`per_image` applies
any torchvision transform to each image of a batch with its own random parameters.

Used by :class:`~companion.data.DeviceLoader` (through :class:`RandomTranslate`) in "MNIST in
practice", by SimCLR (:mod:`companion.simclr`) in "Pretraining and fine-tuning", and throughout
"Data augmentation".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .utils import check_float_images

__all__ = ["AffineParams", "CutMix", "MixUp", "RandomTranslate", "affine", "cutmix", "cutmix_box", "cutout",
           "mixup", "per_image", "random_affine", "random_affine_params", "random_translate"]  # fmt: skip


def random_translate(images: torch.Tensor, generator: torch.Generator | None = None, max_shift: int = 2) -> torch.Tensor:
    """Shift each image by its own random whole-pixel offset in [-max_shift, max_shift].

    Borders are filled by replicating the edge pixels, which for MNIST-like images is
    the background whatever the normalisation.

    Args:
        images: float tensor (B, C, H, W), on any device.
        generator: CPU generator for the offsets (``None``: the global one).
        max_shift: largest shift in pixels, >= 0.

    Returns:
        A new tensor, same shape, dtype and device; the input is not modified.

    Raises:
        TypeError: ``images`` is not a float tensor.
        ValueError: ``images`` is not 4-D, or ``max_shift`` is negative.
    """
    check_float_images(images)
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    if max_shift == 0:
        return images.clone()
    B, C, H, W = images.shape
    s, device = max_shift, images.device
    padded = F.pad(images, (s, s, s, s), mode="replicate")  # (B, C, H + 2s, W + 2s)
    offsets = torch.randint(0, 2 * s + 1, (2, B), generator=generator).to(device)
    rows = torch.arange(H, device=device) + offsets[0, :, None]  # (B, H)
    cols = torch.arange(W, device=device) + offsets[1, :, None]  # (B, W)
    batch = torch.arange(B, device=device)[:, None, None]  # (B, 1, 1)
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)


@dataclass(frozen=True)
class RandomTranslate:
    """Batch transform for :class:`~companion.data.DeviceLoader`: :func:`random_translate` with a fixed ``max_shift``."""

    max_shift: int = 2

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return random_translate(images, generator, self.max_shift)


@dataclass(frozen=True)
class AffineParams:
    """Per-image affine parameters, with torchvision's meanings (``transforms.functional.affine``).

    Attributes:
        angle: (B,) rotation in degrees, counter-clockwise.
        translate: (B, 2) shift (x, y) in pixels.
        scale: (B,) zoom factor, > 0 (above 1 enlarges).
    """

    angle: torch.Tensor
    translate: torch.Tensor
    scale: torch.Tensor


def random_affine_params(
    batch: int,
    size: tuple[int, int],
    generator: torch.Generator | None = None,
    degrees: float = 15.0,
    translate: tuple[float, float] = (0.075, 0.075),
    scale: tuple[float, float] = (0.8, 1.2),
) -> AffineParams:
    """Draw ``batch`` sets of affine parameters as ``RandomAffine.get_params`` does, but one per image.

    Angle uniform in [-degrees, degrees]; shifts uniform in ±``translate[0] · W`` and
    ±``translate[1] · H`` pixels (not rounded to whole pixels); scale uniform in ``scale``.

    Args:
        batch: number of images.
        size: (H, W) of the images.
        generator: CPU generator (``None``: the global one).
        degrees: largest rotation, >= 0.
        translate: largest shift as fractions of the width and the height, each in [0, 1].
        scale: (min, max) zoom range with 0 < min <= max.

    Raises:
        ValueError: a range outside those limits.
    """
    if degrees < 0:
        raise ValueError(f"degrees must be >= 0, got {degrees}")
    if len(translate) != 2 or not all(0 <= t <= 1 for t in translate):
        raise ValueError(f"translate must be two fractions in [0, 1], got {translate!r}")
    if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
        raise ValueError(f"scale must be (min, max) with 0 < min <= max, got {scale!r}")
    height, width = size

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(batch, generator=generator, dtype=torch.float64)

    angle = uniform(-degrees, degrees)
    dx, dy = translate[0] * width, translate[1] * height
    shift = torch.stack([uniform(-dx, dx), uniform(-dy, dy)], 1)  # (B, 2)
    return AffineParams(angle, shift, uniform(*scale))


def affine(images: torch.Tensor, params: AffineParams, fill: float | torch.Tensor = 0.0) -> torch.Tensor:
    """Rotate, scale and shift every image by its own parameters, bilinear, about its centre.

    The same operation as ``torchvision.transforms.functional.affine(image, angle, translate,
    scale, shear=0, interpolation=BILINEAR, fill=fill)`` for each image, computed for the whole
    batch with one ``affine_grid``-style grid and one ``grid_sample``: each output pixel (centred
    coordinates) is mapped back through the inverse of centre · rotation · scale · translation.

    Args:
        images: float (B, C, H, W).
        params: :class:`AffineParams` with B entries.
        fill: value of pixels that come from outside the image (a number or a 0-d tensor).

    Returns:
        float (B, C, H, W), on ``images``' device.

    Raises:
        TypeError: ``images`` is not a float tensor.
        ValueError: ``images`` is not 4-D, or ``params`` has another batch size.
    """
    check_float_images(images)
    B, _, H, W = images.shape
    if not len(params.angle) == len(params.scale) == len(params.translate) == B:
        raise ValueError(f"params hold {len(params.angle)} images' parameters, images has {B}")
    if B == 0:
        return images.clone()
    rad = params.angle * (math.pi / 180)
    cos, sin, s = torch.cos(rad) / params.scale, torch.sin(rad) / params.scale, params.translate
    # Inverse map in pixel units, centred (torchvision's _get_inverse_affine_matrix with shear 0).
    theta = torch.stack([torch.stack([cos, sin, -(cos * s[:, 0] + sin * s[:, 1])], 1),
                         torch.stack([-sin, cos, -(-sin * s[:, 0] + cos * s[:, 1])], 1)], 1)  # fmt: skip
    theta = theta.to(images.device, images.dtype)  # (B, 2, 3)
    xs = torch.linspace(-W * 0.5 + 0.5, W * 0.5 - 0.5, W, device=images.device, dtype=images.dtype)
    ys = torch.linspace(-H * 0.5 + 0.5, H * 0.5 - 0.5, H, device=images.device, dtype=images.dtype)
    base = torch.stack([xs.expand(H, W), ys[:, None].expand(H, W), torch.ones(H, W, dtype=images.dtype,
                        device=images.device)], -1).reshape(1, H * W, 3)  # fmt: skip
    half = torch.tensor([0.5 * W, 0.5 * H], device=images.device, dtype=images.dtype)
    grid = (base.expand(B, -1, -1) @ theta.transpose(1, 2) / half).reshape(B, H, W, 2)
    fill = torch.as_tensor(fill, dtype=images.dtype, device=images.device)
    # torchvision's fill: resample a channel of ones with the image; where it fell partly or wholly
    # outside, blend towards `fill` by that channel (out = sampled · m + (1 − m) · fill).
    ones = torch.ones_like(images[:, :1])
    sampled = F.grid_sample(torch.cat([images, ones], 1), grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)  # fmt: skip
    inside = sampled[:, -1:]  # (B, 1, H, W), 1 where the source pixel lies inside the image
    return sampled[:, :-1] * inside + (1 - inside) * fill


def random_affine(
    images: torch.Tensor,
    generator: torch.Generator | None = None,
    degrees: float = 15.0,
    translate: tuple[float, float] = (0.075, 0.075),
    scale: tuple[float, float] = (0.8, 1.2),
) -> torch.Tensor:
    """``RandomAffine(degrees, translate, scale)`` with its own draw for every image of the batch.

    :func:`random_affine_params` then :func:`affine`; pixels from outside the image take the
    batch's minimum (the background of normalised digits). The defaults rotate by up to ±15°,
    shift by up to about ±2 pixels on 28 × 28 and zoom by 0.8–1.2.

    Args:
        images: float (B, C, H, W).
        generator: CPU generator for the parameters (``None``: the global one).
        degrees, translate, scale: as :func:`random_affine_params` (torchvision's meanings).

    Returns:
        float (B, C, H, W), on ``images``' device.

    Raises:
        TypeError: ``images`` is not a float tensor.
        ValueError: ``images`` is not 4-D, or a range is invalid.
    """
    check_float_images(images)
    params = random_affine_params(images.shape[0], images.shape[-2:], generator, degrees, translate, scale)
    fill = images.amin() if images.numel() else 0.0
    return affine(images, params, fill=fill)


def cutout(images: torch.Tensor, generator: torch.Generator | None = None, size: int = 10) -> torch.Tensor:
    """Paint one ``size`` × ``size`` square per image, at a random centre, with the batch's minimum.

    Cutout (DeVries & Taylor, 2017): the centre is uniform over the image and the square is
    clipped at the borders, so near an edge less than ``size²`` pixels change.

    Args:
        images: float (B, C, H, W).
        generator: CPU generator for the centres (``None``: the global one).
        size: side of the square in pixels, >= 1.

    Returns:
        float (B, C, H, W), a new tensor.

    Raises:
        TypeError: ``images`` is not a float tensor.
        ValueError: ``size < 1``, or ``images`` is not 4-D.
    """
    check_float_images(images)
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    batch, _, height, width = images.shape
    if batch == 0:
        return images.clone()
    cy = torch.randint(0, height, (batch, 1, 1), generator=generator).to(images.device)
    cx = torch.randint(0, width, (batch, 1, 1), generator=generator).to(images.device)
    rows = torch.arange(height, device=images.device).view(1, height, 1) - cy + size // 2
    cols = torch.arange(width, device=images.device).view(1, 1, width) - cx + size // 2
    square = (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)  # (B, H, W)
    return torch.where(square.unsqueeze(1), images.amin(), images)


def per_image(transform, images: torch.Tensor) -> torch.Tensor:
    """Apply a transform to each image of a batch separately, so each draws its own randomness.

    A ``torchvision.transforms.v2`` transform called on a batched tensor (B, C, H, W) draws one
    set of random parameters and applies it to every image (one flip decision, one crop, one
    RandAugment policy for the whole batch). Calling it once per image gives each image its own.

    Args:
        transform: a callable of one image (C, H, W) returning an image of the same dtype.
        images: (B, C, H, W), any dtype the transform accepts (uint8 for RandAugment).

    Returns:
        The transformed images stacked back into (B, C, H', W').

    Raises:
        TypeError: ``transform`` is not callable or ``images`` is not a tensor.
        ValueError: ``images`` is not 4-D.
    """
    if not callable(transform):
        raise TypeError(f"transform must be callable, got {type(transform).__name__}")
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a tensor (B, C, H, W), got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must have four dimensions (B, C, H, W), got shape {tuple(images.shape)}")
    if len(images) == 0:
        return images.clone()
    return torch.stack([transform(image) for image in images])


def _soft_targets(targets: torch.Tensor, num_classes: int | None, batch: int) -> torch.Tensor:
    """Class indices (B,) as one-hot float rows, or probabilities (B, K) as they are."""
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a tensor, got {type(targets).__name__}")
    if targets.dim() not in (1, 2) or len(targets) != batch:
        raise ValueError(f"targets must be class indices (B,) or probabilities (B, K) for B = {batch} images, "
                         f"got shape {tuple(targets.shape)}")
    if targets.dim() == 2:
        if num_classes is not None and targets.shape[1] != num_classes:
            raise ValueError(f"targets have {targets.shape[1]} columns but num_classes is {num_classes}")
        return targets if targets.is_floating_point() else targets.float()
    if targets.is_floating_point():
        raise TypeError(f"class-index targets must be integers, got {targets.dtype}")
    if num_classes is None:
        raise ValueError("num_classes is needed to one-hot encode class-index targets")
    return F.one_hot(targets, num_classes).float()


def _check_lam(lam: float) -> float:
    if isinstance(lam, bool) or not isinstance(lam, int | float):
        raise TypeError(f"lam must be a number, got {type(lam).__name__}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    return float(lam)


def mixup(images: torch.Tensor, targets: torch.Tensor, lam: float,
          num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""MixUp (Zhang et al., 2018): each image and its label blended with its neighbour's.

    :math:`\tilde x_i = \lambda x_i + (1 - \lambda) x_{i-1}`, :math:`\tilde y_i = \lambda y_i +
    (1 - \lambda) y_{i-1}`: image ``i`` is paired with image ``i - 1`` (the batch rolled by one,
    the first with the last), as torchvision pairs them, so shuffle the batch first.
    Train with the soft-target loss ``F.cross_entropy(logits, mixed_targets)``, which equals
    :math:`\lambda\,\mathrm{CE}(y_i) + (1 - \lambda)\,\mathrm{CE}(y_{i-1})`.

    Args:
        images: float (B, C, H, W).
        targets: int64 class indices (B,) or float probabilities (B, K).
        lam: λ in [0, 1], the weight of each image's own content.
        num_classes: K; needed for class indices.

    Returns:
        (mixed images, float (B, C, H, W); mixed targets, float (B, K) summing to 1 per row).

    Raises:
        TypeError: integer images, float class indices, a non-number ``lam``.
        ValueError: ``lam`` outside [0, 1], images not 4-D, targets of another batch size or
            width, class indices without ``num_classes``.
    """
    check_float_images(images)
    lam = _check_lam(lam)
    soft = _soft_targets(targets, num_classes, len(images))
    mixed = images.roll(1, 0).mul(1.0 - lam).add(images.mul(lam))
    return mixed, soft.roll(1, 0).mul(1.0 - lam).add(soft.mul(lam))


def cutmix_box(lam: float, height: int, width: int) -> tuple[int, int, int, int]:
    """CutMix's box for a λ, drawn as torchvision draws it: ``(x1, y1, x2, y2)``, pixels.

    A centre uniform over the image (``torch.randint`` on the global random stream, first the
    column, then the row), half-sides ``int(0.5 √(1 − λ) × W)`` and ``int(0.5 √(1 − λ) × H)``,
    clipped at the borders: so the box's area is at most (1 − λ) H W, less near an edge.

    Raises:
        TypeError, ValueError: ``lam`` is not a number in [0, 1]; ``height`` or ``width`` < 1.
    """
    lam = _check_lam(lam)
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got {height} and {width}")
    r_x = torch.randint(width, size=(1,))
    r_y = torch.randint(height, size=(1,))
    r = 0.5 * math.sqrt(1.0 - lam)
    half_w, half_h = int(r * width), int(r * height)
    x1 = int(torch.clamp(r_x - half_w, min=0))
    y1 = int(torch.clamp(r_y - half_h, min=0))
    x2 = int(torch.clamp(r_x + half_w, max=width))
    y2 = int(torch.clamp(r_y + half_h, max=height))
    return x1, y1, x2, y2


def cutmix(images: torch.Tensor, targets: torch.Tensor, box: tuple[int, int, int, int],
           num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""CutMix (Yun et al., 2019): paste the neighbour's box into each image; mix labels by area.

    Inside ``box = (x1, y1, x2, y2)`` image ``i`` takes image ``i - 1``'s pixels (the batch rolled
    by one, as torchvision pairs them); the labels mix with the share of the image each keeps,
    :math:`\lambda = 1 - (x_2 - x_1)(y_2 - y_1) / (HW)`, computed from the box actually pasted
    (after clipping), as torchvision does.

    Args:
        images: float (B, C, H, W).
        targets: int64 class indices (B,) or float probabilities (B, K).
        box: pixel bounds, 0 <= x1 <= x2 <= W and 0 <= y1 <= y2 <= H (see :func:`cutmix_box`).
        num_classes: K; needed for class indices.

    Returns:
        (images with the pasted boxes, float (B, C, H, W); mixed targets, float (B, K)).

    Raises:
        TypeError: integer images or float class indices.
        ValueError: a box outside the image or with x2 < x1 or y2 < y1; see :func:`mixup`.
    """
    check_float_images(images)
    soft = _soft_targets(targets, num_classes, len(images))
    height, width = images.shape[-2:]
    x1, y1, x2, y2 = box
    if not (0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height):
        raise ValueError(f"box must satisfy 0 <= x1 <= x2 <= {width} and 0 <= y1 <= y2 <= {height}, got {box}")
    lam = 1.0 - (x2 - x1) * (y2 - y1) / (width * height)
    mixed = images.clone()
    mixed[..., y1:y2, x1:x2] = images.roll(1, 0)[..., y1:y2, x1:x2]
    return mixed, soft.roll(1, 0).mul(1.0 - lam).add(soft.mul(lam))


class _MixBase:
    def __init__(self, alpha: float = 1.0, num_classes: int | None = None) -> None:
        if isinstance(alpha, bool) or not isinstance(alpha, int | float):
            raise TypeError(f"alpha must be a number, got {type(alpha).__name__}")
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0 (the Beta distribution's parameter), got {alpha}")
        self.alpha, self.num_classes = float(alpha), num_classes
        self._beta = torch.distributions.Beta(torch.tensor([self.alpha]), torch.tensor([self.alpha]))

    def draw_lam(self) -> float:
        """λ ~ Beta(α, α) from the global random stream, as torchvision draws it."""
        return float(self._beta.sample(()))


class MixUp(_MixBase):
    """``torchvision.transforms.v2.MixUp`` written with :func:`mixup`: same draws, same outputs.

    Each call draws one λ ~ Beta(α, α) for the whole batch (torch.distributions on the global
    random stream: it takes no generator) and mixes every image with its neighbour.

    Args:
        alpha: α > 0; 1 draws λ uniformly, small α keeps most images nearly unmixed.
        num_classes: K, needed for class-index targets.

    Raises:
        TypeError, ValueError: ``alpha`` is not a number > 0; calls raise as :func:`mixup`.
    """

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix a batch: (B, C, H, W) float, (B,) or (B, K) → mixed images, (B, K) targets."""
        return mixup(images, targets, self.draw_lam(), self.num_classes)


class CutMix(_MixBase):
    """``torchvision.transforms.v2.CutMix`` written with :func:`cutmix`: same draws, same outputs.

    Each call draws one λ ~ Beta(α, α), then one box (:func:`cutmix_box`) for the whole batch;
    the labels mix with the area actually pasted.

    Args:
        alpha: α > 0.
        num_classes: K, needed for class-index targets.

    Raises:
        TypeError, ValueError: ``alpha`` is not a number > 0; calls raise as :func:`cutmix`.
    """

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cut and paste a batch: (B, C, H, W) float, (B,) or (B, K) → new images, (B, K) targets."""
        check_float_images(images)
        box = cutmix_box(self.draw_lam(), images.shape[-2], images.shape[-1])
        return cutmix(images, targets, box, self.num_classes)
