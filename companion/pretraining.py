"""Pretraining and fine-tuning: reuse what one training run learned in another.

Reading order: the tools of fine-tuning (freeze parameters, find and replace a network's
classification head, give the head and the pretrained body different learning rates);
few-label subsets and frozen features for a linear probe; then self-supervised pretraining
without labels — SimCLR's contrastive loss (Chen et al., 2020) on two randomly distorted
views of each image. The fine-tuning tools work on any ``nn.Module`` whose classifier is
its last ``nn.Linear``: the package's networks and torchvision's (ResNet, VGG, ViT, ...).

Chapter "Pretraining and fine-tuning" uses all of them on MNIST and Fashion-MNIST.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .device import synchronize

__all__ = [
    "PretrainHistory",
    "balanced_subset",
    "cutout",
    "extract_features",
    "find_head",
    "freeze",
    "nt_xent_loss",
    "param_groups",
    "pretrain_simclr",
    "random_affine",
    "replace_head",
    "unfreeze",
]


# --- Fine-tuning tools -----------------------------------------------------------------------


def freeze(module: nn.Module) -> nn.Module:
    """Stop gradient updates to every parameter of ``module`` (``requires_grad=False``); returns it.

    Batch-norm running statistics are buffers, not parameters: they still update in
    ``train()`` mode. For a linear probe, keep the frozen part in ``eval()`` mode, or compute
    its features once with :func:`extract_features`.
    """
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def unfreeze(module: nn.Module) -> nn.Module:
    """Make every parameter of ``module`` trainable again (``requires_grad=True``); returns it."""
    for parameter in module.parameters():
        parameter.requires_grad_(True)
    return module


def find_head(model: nn.Module) -> str:
    """The attribute path of ``model``'s classification head: its last registered ``nn.Linear``.

    That is ``"fc"`` for torchvision's ResNets and :class:`~companion.cnn.BatchNormCNN`,
    ``"classifier.6"`` for VGG and AlexNet, ``"heads.head"`` for torchvision's ViT,
    ``"fc2"`` for :class:`~companion.cnn.SeedCNN`, ``"head"`` for
    :class:`~companion.attention.VisionTransformer`.

    Raises:
        ValueError: ``model`` has no ``nn.Linear``.
    """
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to use as a head; pass the head's name")
    return names[-1]


def replace_head(model: nn.Module, num_classes: int, name: str | None = None) -> nn.Linear:
    """Put a freshly initialised ``nn.Linear(in_features, num_classes)`` in place of the head.

    The new layer has the old one's ``in_features``, dtype and device, and is trainable
    even when the rest of ``model`` is frozen. This is the one change that turns a network
    pretrained on one label set into a starting point for another.

    Args:
        model: the network; modified in place.
        num_classes: outputs of the new head, >= 1.
        name: attribute path of the head (``"fc"``, ``"heads.head"``); default :func:`find_head`.

    Returns:
        The new head.

    Raises:
        ValueError: ``num_classes < 1``, or ``name`` does not name an ``nn.Linear`` of ``model``.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    name = find_head(model) if name is None else name
    try:
        old = model.get_submodule(name)
    except AttributeError:
        old = None
    if not isinstance(old, nn.Linear):
        found = "nothing" if old is None else type(old).__name__
        raise ValueError(f"{name!r} must name an nn.Linear of {type(model).__name__}, found {found}")
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None, device=old.weight.device, dtype=old.weight.dtype)
    parent_name, _, attribute = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attribute, new)  # also works for nn.Sequential children named "6"
    return new


def param_groups(
    model: nn.Module,
    lr: float,
    head_lr: float,
    head: str | None = None,
    weight_decay: float = 0.0,
) -> list[dict]:
    """Optimizer parameter groups: the head at ``head_lr``, the pretrained body at ``lr``.

    A smaller learning rate for the body keeps more of what pretraining learned
    ("discriminative fine-tuning", Howard & Ruder, 2018). Frozen parameters
    (``requires_grad=False``) are left out; a group with no trainable parameters is dropped.
    Pass the result to any ``torch.optim`` optimizer: ``torch.optim.AdamW(param_groups(...))``.

    Args:
        model: the network.
        lr: learning rate of every trainable parameter outside the head, > 0.
        head_lr: learning rate of the head's parameters, > 0.
        head: attribute path of the head; default :func:`find_head`.
        weight_decay: weight decay of both groups, >= 0.

    Returns:
        A list of one or two dicts with keys ``"params"``, ``"lr"``, ``"weight_decay"`` and
        ``"name"`` (``"head"`` first, then ``"body"``).

    Raises:
        ValueError: a learning rate <= 0, ``weight_decay < 0``, an unknown ``head``, or no trainable parameter.
    """
    if not lr > 0 or not head_lr > 0:
        raise ValueError(f"learning rates must be > 0, got lr={lr}, head_lr={head_lr}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    head = find_head(model) if head is None else head
    try:
        head_module = model.get_submodule(head)
    except AttributeError as error:
        raise ValueError(f"{type(model).__name__} has no submodule {head!r}") from error
    head_ids = {id(p) for p in head_module.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"name": "head", "params": [p for p in trainable if id(p) in head_ids], "lr": head_lr, "weight_decay": weight_decay},
        {"name": "body", "params": [p for p in trainable if id(p) not in head_ids], "lr": lr, "weight_decay": weight_decay},
    ]
    groups = [group for group in groups if group["params"]]
    if not groups:
        raise ValueError(f"{type(model).__name__} has no trainable parameters (all frozen?)")
    return groups


# --- Few labels, frozen features ----------------------------------------------------------------


def balanced_subset(labels: torch.Tensor, per_class: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``per_class`` randomly chosen samples of every class, class by class.

    Args:
        labels: class indices (N,), int.
        per_class: samples to take from each class, >= 1.
        seed: seeds the choice (a CPU ``torch.Generator``; the same on every device).

    Returns:
        int64 indices (num_classes · per_class,) into ``labels``, on the CPU.

    Raises:
        ValueError: ``per_class < 1``, or a class has fewer than ``per_class`` samples.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    labels = labels.cpu()
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in torch.unique(labels).tolist():
        members = torch.nonzero(labels == label).flatten()
        if len(members) < per_class:
            raise ValueError(f"class {label} has {len(members)} samples, fewer than per_class={per_class}")
        chosen.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    return torch.cat(chosen)


@torch.no_grad()
def extract_features(
    model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model.forward_features`` over ``loader`` in eval mode and flatten each sample's features.

    Args:
        model: a network with ``forward_features`` (:class:`~companion.cnn.BatchNormCNN`,
            :class:`~companion.attention.VisionTransformer`), on ``device``.
        loader: ``(x, y)`` batches.
        device: where batches are moved.

    Returns:
        ``(features, labels)``: float32 (N, D) and int64 (N,), on ``device``.

    Raises:
        TypeError: ``model`` has no ``forward_features`` method.
        ValueError: ``loader`` yields no batches.
    """
    if not callable(getattr(model, "forward_features", None)):
        raise TypeError(f"{type(model).__name__} has no forward_features method")
    was_training = model.training
    model.eval()
    features, labels = [], []
    for x, y in loader:
        features.append(model.forward_features(x.to(device)).flatten(1).float())
        labels.append(y.to(device))
    model.train(was_training)
    if not features:
        raise ValueError("extract_features() got a loader that yielded no batches")
    return torch.cat(features), torch.cat(labels)


# --- Self-supervised pretraining: SimCLR -----------------------------------------------------------


def random_affine(
    images: torch.Tensor,
    generator: torch.Generator,
    max_rotation: float = 15.0,
    scale: tuple[float, float] = (0.8, 1.2),
    max_shift: float = 0.15,
) -> torch.Tensor:
    """Rotate, scale and shift every image by its own random amounts (one batched resampling).

    torchvision's ``RandomAffine`` draws one transform per call, so a batch would share it;
    contrastive learning needs a different distortion per image, so this draws a 2×3 affine
    matrix per image and resamples with ``affine_grid`` / ``grid_sample`` (bilinear).
    Pixels that come from outside the image take the batch's minimum (the background).

    Args:
        images: float (B, C, H, W).
        generator: CPU generator for the random amounts.
        max_rotation: rotation drawn uniformly in ±``max_rotation`` degrees.
        scale: zoom factor range (min, max), > 0; above 1 the digit shrinks.
        max_shift: shift in ±``max_shift`` of the half-width (0.15 ≈ 2 pixels on 28×28).

    Returns:
        float (B, C, H, W), on ``images``' device.

    Raises:
        ValueError: ``images`` is not 4-D float, or ``scale`` is not two positive increasing numbers.
    """
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"images must be float (B, C, H, W), got {images.dtype} {tuple(images.shape)}")
    if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
        raise ValueError(f"scale must be (min, max) with 0 < min <= max, got {scale!r}")
    batch = images.shape[0]
    if batch == 0:
        return images.clone()

    def uniform(low: float, high: float) -> torch.Tensor:
        return (low + (high - low) * torch.rand(batch, generator=generator, dtype=torch.float64)).float()

    angle = uniform(-max_rotation, max_rotation) * (math.pi / 180)
    zoom = uniform(*scale)
    tx, ty = uniform(-max_shift, max_shift), uniform(-max_shift, max_shift)
    cos, sin = zoom * torch.cos(angle), zoom * torch.sin(angle)
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta.to(images.device, images.dtype), list(images.shape), align_corners=False)
    background = images.amin()
    return F.grid_sample(images - background, grid, align_corners=False, padding_mode="zeros") + background


def cutout(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Paint one ``size``×``size`` square per image, at a random centre, with the batch's minimum.

    Cutout (DeVries & Taylor, 2017); the square is clipped at the borders.

    Args:
        images: float (B, C, H, W).
        size: side of the square in pixels, >= 1.
        generator: CPU generator for the centres.

    Returns:
        float (B, C, H, W), a new tensor.

    Raises:
        ValueError: ``size < 1`` or ``images`` not 4-D.
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got {tuple(images.shape)}")
    batch, _, height, width = images.shape
    if batch == 0:
        return images.clone()
    cy = torch.randint(0, height, (batch, 1, 1), generator=generator).to(images.device)
    cx = torch.randint(0, width, (batch, 1, 1), generator=generator).to(images.device)
    rows = torch.arange(height, device=images.device).view(1, height, 1) - cy + size // 2
    cols = torch.arange(width, device=images.device).view(1, 1, width) - cx + size // 2
    square = (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)  # (B, H, W)
    return torch.where(square.unsqueeze(1), images.amin(), images)


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's normalised-temperature cross-entropy (Chen et al., 2020, eq. 1).

    The 2B embeddings are L2-normalised; for each one, its other view is the positive and
    the remaining 2B − 2 are negatives: ``ℓ(i, j) = −log exp(s_ij/τ) / Σ_{k≠i} exp(s_ik/τ)``
    with cosine similarities ``s``, averaged over all 2B anchors.

    Args:
        z1, z2: embeddings of the two views, (B, D) float, row ``n`` of each from the same image.
        temperature: τ > 0; smaller sharpens the softmax over negatives.

    Returns:
        The mean loss (0-d tensor, nats); at least 0, and ``log(2B − 1)`` when all similarities are equal.

    Raises:
        ValueError: shapes differ or are not (B, D) with B >= 2, or ``temperature <= 0``.
    """
    if z1.shape != z2.shape or z1.dim() != 2 or z1.shape[0] < 2:
        raise ValueError(f"z1 and z2 must both be (B, D) with B >= 2, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    batch = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)  # (2B, D)
    similarity = (z @ z.T) / temperature  # (2B, 2B)
    similarity = similarity.masked_fill(torch.eye(2 * batch, dtype=torch.bool, device=z.device), float("-inf"))
    positives = torch.cat([torch.arange(batch, 2 * batch), torch.arange(batch)]).to(z.device)
    return F.cross_entropy(similarity, positives)


@dataclass
class PretrainHistory:
    """Per-epoch record of :func:`pretrain_simclr`.

    Attributes:
        loss: mean contrastive loss of each epoch (nats).
        seconds: wall-clock training time of each epoch.
    """

    loss: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


def pretrain_simclr(
    backbone: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    epochs: int,
    device: torch.device | str,
    lr: float = 4e-3,
    temperature: float = 0.5,
    projection_dim: int = 64,
    hidden_size: int = 256,
    cutout_size: int = 10,
    seed: int = 0,
    progress: bool = True,
) -> PretrainHistory:
    """Train ``backbone`` without labels: SimCLR (Chen et al., 2020) on two random views per image.

    Each batch is distorted twice (:func:`random_affine`, then :func:`cutout`); the backbone's
    flattened ``forward_features`` go through a projection head (linear → batch norm → ReLU →
    linear) and :func:`nt_xent_loss` pulls the two views of an image together and pushes
    other images away. The labels in ``loader`` are ignored. AdamW with a one-cycle
    schedule; the projection head is discarded afterwards, as in the paper.

    Args:
        backbone: has ``forward_features`` (for example :class:`~companion.cnn.BatchNormCNN`), on ``device``;
            trained in place and returned in the mode it came in.
        loader: a re-iterable loader with a length (``DeviceLoader`` with ``drop_last=True``, ``DataLoader``)
            of ``(x, y)`` batches, x normalised, B >= 2; ``set_epoch`` is called when it exists.
        epochs: passes over ``loader``, >= 1.
        device: where the batches go.
        lr: peak learning rate, > 0.
        temperature: τ of :func:`nt_xent_loss`.
        projection_dim, hidden_size: sizes of the projection head.
        cutout_size: side of the erased square in pixels (0: no cutout).
        seed: seeds the distortions.
        progress: show a tqdm bar.

    Returns:
        A :class:`PretrainHistory`.

    Raises:
        ValueError: ``epochs < 1``, ``lr <= 0``, or a batch of fewer than 2 images.
        TypeError: ``backbone`` has no ``forward_features``, or ``loader`` has no length.
        FloatingPointError: the loss became NaN or infinite (the message names the epoch).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if not callable(getattr(backbone, "forward_features", None)):
        raise TypeError(f"{type(backbone).__name__} has no forward_features method")
    if not hasattr(loader, "__len__"):
        raise TypeError(f"loader must be re-iterable with a length (a DeviceLoader or DataLoader), got {type(loader).__name__}")
    generator = torch.Generator().manual_seed(seed)
    first, _ = next(iter(loader))
    was_training = backbone.training
    with torch.no_grad():
        backbone.eval()
        feature_size = backbone.forward_features(first[:2].to(device)).flatten(1).shape[1]
    projection = nn.Sequential(
        nn.Linear(feature_size, hidden_size), nn.BatchNorm1d(hidden_size), nn.ReLU(), nn.Linear(hidden_size, projection_dim)
    ).to(device)
    parameters = list(backbone.parameters()) + list(projection.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=1e-4)
    steps = epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    history = PretrainHistory()
    backbone.train()
    projection.train()
    for epoch in range(epochs):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        started, total, batches = time.perf_counter(), torch.zeros((), device=device), 0
        for x, _ in tqdm(loader, desc=f"SimCLR epoch {epoch + 1}/{epochs}", disable=not progress, leave=False):
            if len(x) < 2:
                raise ValueError(f"SimCLR needs batches of >= 2 images, got a batch of {len(x)}; use DeviceLoader(..., drop_last=True)")
            x = x.to(device)
            views = random_affine(torch.cat([x, x]), generator)  # (2B, C, H, W): two views per image
            if cutout_size:
                views = cutout(views, cutout_size, generator)
            z = projection(backbone.forward_features(views).flatten(1))  # (2B, projection_dim)
            loss = nt_xent_loss(z[: len(x)], z[len(x) :], temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total, batches = total + loss.detach(), batches + 1
        synchronize(device)
        history.seconds.append(time.perf_counter() - started)
        history.loss.append(total.item() / max(batches, 1))
        if not math.isfinite(history.loss[-1]):
            raise FloatingPointError(f"SimCLR loss became non-finite in epoch {epoch + 1}; lower lr")
    backbone.train(was_training)
    return history
