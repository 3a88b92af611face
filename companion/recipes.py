"""Training recipes: a frozen configuration, and one function that trains it on real data.

:data:`ARTICLE` is the source article's program (section 4) with the package's loader;
:data:`IMPROVED` is the faster, better recipe of the chapter "MNIST in practice"
(batch normalisation, AdamW with a one-cycle schedule, label smoothing, random shifts).
The command line (``python -m companion train``) is a thin layer over :func:`run_recipe`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .cnn import BatchNormCNN, SeedCNN
from .concepts import MLP, LogisticRegression
from .data import DATASETS, DeviceLoader, RandomTranslate, load_dataset
from .device import get_device, seed_everything
from .distributed import get_rank, get_world_size
from .train import History, Metrics, evaluate, fit

__all__ = ["ARTICLE", "FAST", "IMPROVED", "MODELS", "TrainConfig", "TrainResult", "build_model", "build_optimizer", "run_recipe"]

#: Model names accepted by :func:`build_model` and the command line.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "logreg": LogisticRegression,
    "mlp": MLP,  # hidden_size 128
    "seed-cnn": SeedCNN,
    "bn-cnn": BatchNormCNN,  # channels (32, 64)
    "bn-cnn-small": partial(BatchNormCNN, channels=(16, 32)),
}


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run; every field has its unit or range.

    Attributes:
        model: a key of :data:`MODELS` (``"logreg"``, ``"mlp"``, ``"seed-cnn"``, ``"bn-cnn"``, ``"bn-cnn-small"``).
        dataset: ``"mnist"`` or ``"fashion-mnist"``.
        epochs: passes over the 60,000 training images.
        batch_size: samples per optimizer step.
        lr: learning rate (the peak learning rate with ``schedule="one-cycle"``).
        optimizer: ``"sgd"`` (with ``momentum``) or ``"adamw"``.
        momentum: SGD momentum in [0, 1).
        weight_decay: decoupled (AdamW) or L2 (SGD) weight decay per step, >= 0.
        schedule: ``"constant"`` or ``"one-cycle"`` (Smith & Topin, 2019; stepped every batch).
        label_smoothing: in [0, 1); 0 is plain cross-entropy.
        max_shift: random translation per training image, in pixels (0: none).
        channels_last: store the model's weights channels-last (faster convolutions on CPU for wide layers).
        seed: seeds the initial weights, the shuffling and the shifts.
    """

    model: str = "seed-cnn"
    dataset: str = "mnist"
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.01
    optimizer: Literal["sgd", "adamw"] = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: Literal["constant", "one-cycle"] = "constant"
    label_smoothing: float = 0.0
    max_shift: int = 0
    channels_last: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            (self.model in MODELS, f"model must be one of {sorted(MODELS)}, got {self.model!r}"),
            (self.dataset in DATASETS, f"dataset must be one of {sorted(DATASETS)}, got {self.dataset!r}"),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.optimizer in ("sgd", "adamw"), f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.schedule in ("constant", "one-cycle"), f"schedule must be 'constant' or 'one-cycle', got {self.schedule!r}"),
            (0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}"),
            (self.max_shift >= 0, f"max_shift must be >= 0, got {self.max_shift}"),
            (0 <= self.seed < 2**32, f"seed must be in [0, 2**32), got {self.seed}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


#: The source article's settings (section 4) — SeedCNN, SGD lr 0.001, momentum 0.9, batch 64, 10 epochs.
ARTICLE = TrainConfig(model="seed-cnn", epochs=10, batch_size=64, lr=0.001, optimizer="sgd", momentum=0.9)

#: The chapter's improved recipe — BatchNormCNN, AdamW + one-cycle, label smoothing 0.1, shifts of up to 2 pixels.
IMPROVED = TrainConfig(
    model="bn-cnn",
    epochs=2,
    batch_size=128,
    lr=0.01,
    optimizer="adamw",
    weight_decay=5e-4,
    schedule="one-cycle",
    label_smoothing=0.1,
    max_shift=2,
    channels_last=True,
)


#: The fastest route to 99 % on a CPU that the benchmark found — half-width BatchNormCNN, one epoch, no shifts.
FAST = TrainConfig(
    model="bn-cnn-small",
    epochs=1,
    batch_size=128,
    lr=0.02,
    optimizer="adamw",
    weight_decay=5e-4,
    schedule="one-cycle",
    label_smoothing=0.1,
    channels_last=True,
)


@dataclass
class TrainResult:
    """What :func:`run_recipe` returns: the trained model (in eval mode), its history and final test metrics."""

    model: nn.Module
    history: History
    test: Metrics


def build_model(name: str, num_classes: int = 10) -> nn.Module:
    """A freshly initialised model from :data:`MODELS`.

    Raises:
        ValueError: unknown ``name``.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(MODELS)}")
    return MODELS[name](num_classes=num_classes)


def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer ``config`` names, over all of ``model``'s parameters."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def run_recipe(
    config: TrainConfig,
    *,
    root: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch_end: Callable[[History], None] | None = None,
    download: bool = False,
) -> TrainResult:
    """Train ``config`` on its dataset's training split; validate and test on the test split.

    The test split is evaluated after every epoch to draw learning curves; the recipes'
    settings are fixed in advance, not selected on it.

    Under ``torchrun`` (after :func:`companion.distributed.init_distributed`), each of the
    ``W`` processes trains on its shard with ``config.batch_size / W`` samples per step, so
    that ``config.batch_size`` stays the global batch; for networks without batch
    normalisation the run computes what one process would (the last incomplete global batch
    of an epoch is dropped). Batch normalisation normalises each process's share of the batch.

    Args:
        config: the run's settings.
        root: data root (see :func:`~companion.data.data_root`).
        device: see :func:`~companion.device.get_device`.
        checkpoint_path, resume, progress, on_epoch_end: passed to :func:`~companion.train.fit`.
        download: let torchvision download the dataset if its files are missing.

    Returns:
        A :class:`TrainResult`.

    Raises:
        DataNotFoundError: the dataset files are missing (and ``download`` is off or failed).
        RuntimeError: the requested device is not available.
        ValueError: under distributed training, ``config.batch_size`` is not divisible by the number of processes.
    """
    rank, world_size = get_rank(), get_world_size()
    if config.batch_size % world_size:
        raise ValueError(f"batch_size {config.batch_size} must be divisible by the {world_size} processes")
    seed_everything(config.seed)
    device = get_device(device)
    train_split = load_dataset(config.dataset, train=True, root=root, download=download)
    test_split = load_dataset(config.dataset, train=False, root=root, download=download)
    model = build_model(config.model, num_classes=len(train_split.classes)).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    transform = RandomTranslate(config.max_shift) if config.max_shift else None
    shard = {"rank": rank, "world_size": world_size}  # one process: the whole split
    train_loader = DeviceLoader.from_split(
        train_split, config.batch_size // world_size, shuffle=True, device=device, seed=config.seed,
        transform=transform, drop_last=world_size > 1, **shard,
    )
    test_loader = DeviceLoader.from_split(test_split, 1000, device=device, **shard)
    optimizer = build_optimizer(config, model)
    scheduler = None
    if config.schedule == "one-cycle":
        total_steps = config.epochs * len(train_loader)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total_steps)

    def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)

    history = fit(
        model,
        train_loader,
        optimizer=optimizer,
        epochs=config.epochs,
        device=device,
        loss_fn=loss_fn,
        val_loader=test_loader,
        scheduler=scheduler,
        checkpoint_path=checkpoint_path,
        resume=resume,
        progress=progress,
        on_epoch_end=on_epoch_end,
    )
    test = evaluate(model, test_loader, device)
    model.eval()
    return TrainResult(model=model, history=history, test=test)
