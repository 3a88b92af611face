"""SimCLR: self-supervised pretraining by telling two distortions of an image apart from all others.

Chen et al. (2020): every image of a batch is distorted twice (:func:`~companion.augment.random_affine`,
then :func:`~companion.augment.cutout`); a backbone and a small projection head embed the 2B
views; :func:`nt_xent_loss` makes the two views of an image the most similar pair among the 2B.
No labels are used. :class:`SimCLR` holds backbone and head, :meth:`SimCLR.batch_loss` is the
loss of one step, and :func:`pretrain_simclr` trains it with :func:`companion.train.fit` — the
same epoch function, :class:`~companion.history.History` and
:class:`~companion.train.NonFiniteLossError` as supervised training. The projection head is
discarded afterwards, as in the paper.

Explained in the chapter "Pretraining and fine-tuning".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .augment import cutout, random_affine
from .utils import eval_mode
from .history import History
from .train import fit

__all__ = ["SimCLR", "nt_xent_loss", "pretrain_simclr"]


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


class SimCLR(nn.Module):
    """A backbone and SimCLR's projection head (linear → batch norm → ReLU → linear).

    Args:
        backbone: a network with ``forward_features`` (for example
            :class:`~companion.cnn.BatchNormCNN`); its flattened features feed the head.
        feature_size: size of the flattened features (``backbone.forward_features(x).flatten(1)``).
        hidden_size: width of the head's hidden layer.
        projection_dim: size of the embeddings the loss compares.
        temperature: τ of :func:`nt_xent_loss`, > 0.
        degrees, translate, scale: the views' random affine distortion
            (:func:`~companion.augment.random_affine`, torchvision's meanings).
        cutout_size: side of the erased square in pixels (0: no cutout).
        seed: seeds the distortions (a CPU generator).

    Shape:
        - ``forward``: (B, C, H, W) → (B, projection_dim).

    Raises:
        TypeError: ``backbone`` has no ``forward_features``.
        ValueError: ``temperature <= 0`` or ``cutout_size < 0``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_size: int,
        hidden_size: int = 256,
        projection_dim: int = 64,
        temperature: float = 0.5,
        degrees: float = 15.0,
        translate: tuple[float, float] = (0.075, 0.075),
        scale: tuple[float, float] = (0.8, 1.2),
        cutout_size: int = 10,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not callable(getattr(backbone, "forward_features", None)):
            raise TypeError(f"{type(backbone).__name__} has no forward_features method")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if cutout_size < 0:
            raise ValueError(f"cutout_size must be >= 0, got {cutout_size}")
        self.backbone = backbone
        self.projection = nn.Sequential(nn.Linear(feature_size, hidden_size), nn.BatchNorm1d(hidden_size),
                                        nn.ReLU(), nn.Linear(hidden_size, projection_dim))  # fmt: skip
        self.temperature, self.cutout_size = temperature, cutout_size
        self.distortion = {"degrees": degrees, "translate": translate, "scale": scale}
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.backbone.forward_features(x).flatten(1))  # (B, projection_dim)

    def views(self, x: torch.Tensor) -> torch.Tensor:
        """Two random distortions of every image: (B, C, H, W) → (2B, C, H, W), view 1 then view 2."""
        views = random_affine(torch.cat([x, x]), self.generator, **self.distortion)
        return cutout(views, self.generator, self.cutout_size) if self.cutout_size else views

    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, None]:
        """The loss of one step for :func:`~companion.train.train_epoch` (labels ``y`` unused).

        ``model`` is this module or its DistributedDataParallel wrapper (which must run the
        forward pass for DDP to average the gradients).

        Raises:
            ValueError: a batch of fewer than 2 images (the loss needs negatives).
        """
        if len(x) < 2:
            raise ValueError(f"SimCLR needs batches of >= 2 images, got a batch of {len(x)}; "
                             "use DeviceLoader(..., drop_last=True)")  # fmt: skip
        z = model(self.views(x))  # (2B, projection_dim)
        return nt_xent_loss(z[: len(x)], z[len(x) :], self.temperature), None


def pretrain_simclr(
    backbone: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    epochs: int,
    device: torch.device | str,
    lr: float = 4e-3,
    weight_decay: float = 1e-4,
    optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None,
    progress: bool = True,
    **simclr: object,
) -> History:
    """Train ``backbone`` without labels with SimCLR (Chen et al., 2020); return the History.

    Builds a :class:`SimCLR` module around ``backbone`` and trains it with
    :func:`companion.train.fit` (``batch_loss=SimCLR.batch_loss``): by default AdamW
    (``lr``, ``weight_decay``) with a one-cycle schedule stepped every batch. The History's
    ``train_loss`` is the contrastive loss per epoch (nats); accuracies are NaN (no labels).

    Args:
        backbone: has ``forward_features``, on ``device``; trained in place and returned in
            the mode it came in.
        loader: a re-iterable loader with a length (``DeviceLoader`` with ``drop_last=True``,
            ``DataLoader``) of ``(x, y)`` batches, x normalised, B >= 2; the labels are ignored.
        epochs: passes over ``loader``, >= 1.
        device: where the batches go.
        lr: peak learning rate of the default one-cycle schedule, > 0.
        weight_decay: AdamW's decoupled weight decay (default optimizer only).
        optimizer: a factory ``parameters -> optimizer`` used instead of AdamW with one-cycle
            (then no schedule); it receives the :class:`SimCLR` module's parameters, backbone and
            projection head, for example ``lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)``.
        progress: show a tqdm bar.
        **simclr: :class:`SimCLR`'s keyword arguments (``temperature``, ``projection_dim``,
            ``hidden_size``, ``degrees``, ``translate``, ``scale``, ``cutout_size``, ``seed``).

    Returns:
        The :class:`~companion.history.History`.

    Raises:
        ValueError: ``epochs < 1``, ``lr <= 0``, a batch of fewer than 2 images, or an invalid
            :class:`SimCLR` argument.
        TypeError: ``backbone`` has no ``forward_features``, or ``loader`` has no length.
        NonFiniteLossError: the loss became NaN or infinite (the message names epoch and step).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if not callable(getattr(backbone, "forward_features", None)):
        raise TypeError(f"{type(backbone).__name__} has no forward_features method")
    if not hasattr(loader, "__len__"):
        raise TypeError(f"loader must be re-iterable with a length (a DeviceLoader or DataLoader), "
                        f"got {type(loader).__name__}")  # fmt: skip
    first, _ = next(iter(loader))
    with eval_mode(backbone), torch.no_grad():
        feature_size = backbone.forward_features(first[:2].to(device)).flatten(1).shape[1]
    was_training = backbone.training
    model = SimCLR(backbone, feature_size, **simclr).to(device)
    scheduler = None
    if optimizer is None:
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * len(loader))
    else:
        optimizer = optimizer(model.parameters())
    # The backbone's classifier is not used by the loss; frozen for the run, DDP does not wait for it.
    unused = _unused_parameters(model, first[:2].to(device))
    for parameter in unused:
        parameter.requires_grad_(False)
    try:
        return fit(model, loader, optimizer=optimizer, epochs=epochs, device=device, batch_loss=model.batch_loss,
                   scheduler=scheduler, progress=progress)  # fmt: skip
    finally:
        for parameter in unused:
            parameter.requires_grad_(True)
        backbone.train(was_training)  # also when training stops with an error


def _unused_parameters(model: nn.Module, x: torch.Tensor) -> list[nn.Parameter]:
    """Trainable parameters of ``model`` that its output does not depend on (eval mode, no update)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    with eval_mode(model):
        grads = torch.autograd.grad(model(x).sum(), trainable, allow_unused=True)
    return [p for p, g in zip(trainable, grads) if g is None]
