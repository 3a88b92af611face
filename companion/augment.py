"""Random augmentations drawn per image, on the device, for whole batches at once.

torchvision's ``RandomAffine`` draws one transform per call, so a batch would share it; training
with shifts, and contrastive learning even more, needs a different distortion per image. The
functions here draw per-image parameters from a CPU ``torch.Generator`` (the same on every device)
and apply them to a batch in one operation. They share one signature, ``(images, generator, ...)``,
and torchvision's argument names and meanings where torchvision has the transform:
:func:`random_affine` takes ``degrees``, ``translate`` and ``scale`` as ``RandomAffine`` does, and
equals ``torchvision.transforms.functional.affine`` image by image (tested).

Used by :class:`~companion.data.DeviceLoader` (through :class:`RandomTranslate`) in "MNIST in
practice" and by SimCLR (:mod:`companion.simclr`) in "Pretraining and fine-tuning".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .utils import check_float_images

__all__ = ["AffineParams", "RandomTranslate", "affine", "cutout", "random_affine", "random_affine_params",
           "random_translate"]  # fmt: skip


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
