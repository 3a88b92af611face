"""Which pixels a classifier's decision rests on: saliency, integrated gradients, Grad-CAM.

The attributions are computed by Captum (Kokhlikyan et al., 2020), PyTorch's interpretability
library; this module fixes their conventions for the book's image classifiers (one
(B, 1, H, W) map per image, Grad-CAM upsampled to the input's size) and measures how much of
an attribution falls where a mask says it should. Chapter "Trends, measured" applies them
to a CNN trained on MNIST; the chapter "Attention and self-attention" shows a ViT's attention maps.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from .utils import check_float_images

with warnings.catch_warnings():  # Captum imports tqdm.auto, which warns in notebooks without ipywidgets
    warnings.filterwarnings("ignore", message="IProgress not found")
    from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Saliency

__all__ = ["attribution_in_mask", "grad_cam", "integrated_gradients", "saliency"]


def _check(images: torch.Tensor, target: torch.Tensor | int) -> torch.Tensor:
    check_float_images(images)
    target = torch.as_tensor(target, device=images.device).long()
    if target.dim() == 0:
        target = target.expand(images.shape[0])
    if target.shape != (images.shape[0],):
        raise ValueError(f"target must be an int or (B,) class indices for {images.shape[0]} images, got shape {tuple(target.shape)}")
    return target


def saliency(model: nn.Module, images: torch.Tensor, target: torch.Tensor | int) -> torch.Tensor:
    """Gradient saliency (Simonyan et al., 2014): ``|∂ z_target / ∂ x|`` for every pixel.

    Args:
        model: returns logits (B, K); used in its current mode (call ``eval()`` first).
        images: float (B, C, H, W), as the model expects them (normalised).
        target: the class to explain: an int or (B,) int64 indices.

    Returns:
        float (B, C, H, W), >= 0, on ``images``' device.

    Raises:
        TypeError: ``images`` is not a float tensor.
        ValueError: ``images`` is not 4-D, or ``target`` has the wrong shape.
    """
    target = _check(images, target)
    images = images.detach().clone().requires_grad_(True)  # Captum warns when it has to set this itself
    return Saliency(model).attribute(images, target=target, abs=True).detach()


def integrated_gradients(
    model: nn.Module,
    images: torch.Tensor,
    target: torch.Tensor | int,
    baseline: torch.Tensor | float | None = None,
    n_steps: int = 50,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrated gradients (Sundararajan et al., 2017) from ``baseline`` to ``images``.

    ``IG_i(x) = (x_i − x'_i) · ∫₀¹ ∂z_target(x' + α(x − x')) / ∂x_i dα``, by the Gauss–Legendre
    rule with ``n_steps`` points. The attributions sum to ``z(x) − z(x')`` (completeness);
    the returned error measures how far the quadrature is from that.

    Args:
        model: returns logits (B, K); used in its current mode.
        images: float (B, C, H, W).
        target: an int or (B,) class indices.
        baseline: the reference image x' (same shape, or a number); default: the batch's
            minimum value, i.e. a blank (background) image for normalised MNIST.
        n_steps: integration points, >= 1.

    Returns:
        ``(attributions, delta)``: float (B, C, H, W) signed attributions and (B,) the
        completeness error ``Σ_i IG_i − (z(x) − z(x'))``.

    Raises:
        TypeError: ``images`` is not a float tensor.
        ValueError: bad shapes, or ``n_steps < 1``.
    """
    target = _check(images, target)
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    if baseline is None:
        baseline = images.amin().item()
    attributions, delta = IntegratedGradients(model).attribute(
        images, baselines=baseline, target=target, n_steps=n_steps, return_convergence_delta=True
    )
    return attributions.detach(), delta.detach()


def grad_cam(model: nn.Module, layer: nn.Module, images: torch.Tensor, target: torch.Tensor | int) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al., 2017) at ``layer``, upsampled to the input's size.

    For feature maps ``A_k`` of ``layer`` and class score ``z_c``: weights
    ``w_k = mean_{u,v} ∂z_c/∂A_k[u,v]`` and map ``ReLU(Σ_k w_k A_k)``, bilinearly resized
    to (H, W).

    Args:
        model: returns logits (B, K); used in its current mode.
        layer: a module of ``model`` whose output is (B, C', H', W') feature maps
            (for :class:`~companion.cnn.BatchNormCNN`, ``model.bn2``: the last feature maps before pooling).
        images: float (B, C, H, W).
        target: an int or (B,) class indices.

    Returns:
        float (B, 1, H, W), >= 0.

    Raises:
        TypeError: ``images`` is not a float tensor.
        ValueError: bad shapes.
    """
    target = _check(images, target)
    cam = LayerGradCam(model, layer).attribute(images, target=target, relu_attributions=True)  # (B, 1, H', W')
    return LayerAttribution.interpolate(cam, tuple(images.shape[-2:]), interpolate_mode="bilinear").detach()


def attribution_in_mask(attributions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Share of each image's absolute attribution that falls inside ``mask``.

    Args:
        attributions: (B, C, H, W) or (B, 1, H, W), any sign.
        mask: bool (B, 1, H, W) or (B, C, H, W), for example the pixels with ink.

    Returns:
        float (B,) in [0, 1] (0 for an image whose attributions are all zero).

    Raises:
        ValueError: shapes that do not broadcast to (B, C, H, W) per image.
    """
    if attributions.dim() != 4 or mask.dim() != 4 or mask.shape[0] != attributions.shape[0]:
        raise ValueError(f"expected (B, C, H, W) attributions and mask, got {tuple(attributions.shape)} and {tuple(mask.shape)}")
    try:
        shape = torch.broadcast_shapes(attributions.shape, mask.shape)
    except RuntimeError:
        raise ValueError(f"mask {tuple(mask.shape)} does not broadcast with attributions {tuple(attributions.shape)}") from None
    weight = attributions.abs().expand(shape)  # a (B, 1, H, W) map counts once per channel of a (B, C, H, W) mask
    inside = (weight * mask.to(weight.dtype)).flatten(1).sum(1)
    total = weight.flatten(1).sum(1)
    return torch.where(total > 0, inside / total.clamp(min=torch.finfo(weight.dtype).tiny), torch.zeros_like(total))
