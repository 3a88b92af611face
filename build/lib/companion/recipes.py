"""Training recipes: a frozen configuration, and one function that trains it on real data.

:data:`ARTICLE` is the source article's program (section 4) with the package's loader;
:data:`IMPROVED` is the faster, better recipe of the chapter "MNIST in practice"
(batch normalisation, AdamW with a one-cycle schedule, label smoothing, random shifts).
The command line (``python -m companion train``) is a thin layer over :func:`run_recipe`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .cnn import BatchNormCNN, SeedCNN
from .concepts import MLP, LogisticRegression
from .augment import RandomTranslate
from .data import DATASETS, DeviceLoader, ImageSplit, load_dataset
from .device import get_device, seed_everything
from .distributed import get_rank, get_world_size, is_distributed
from .evaluation import evaluate
from .history import History, Metrics
from .train import fit

__all__ = [
    "ARTICLE",
    "FAST",
    "IMPROVED",
    "MODELS",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "build_optimizer",
    "build_scheduler",
    "run_recipe",
    "train_model",
]

#: Model names accepted by :func:`build_model` and the command line.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "logreg": LogisticRegression,
    "mlp": MLP,  # hidden_size 128
    "seed-cnn": SeedCNN,
    "bn-cnn": BatchNormCNN,  # channels (32, 64)
    "bn-cnn-small": partial(BatchNormCNN, channels=(16, 32)),
    "bn-cnn-fast": partial(BatchNormCNN, channels=(16, 32), pool_before_norm=True),
}

#: ``TrainConfig.mixed_precision`` values and the ``fit(mixed_precision=...)`` each stands for.
PRECISIONS: dict[str, bool | torch.dtype] = {
    "off": False,
    "auto": True,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run; every field has its unit or range.

    Attributes:
        model: a key of :data:`MODELS` (``"logreg"``, ``"mlp"``, ``"seed-cnn"``, ``"bn-cnn"``, ``"bn-cnn-small"``,
            ``"bn-cnn-fast"``).
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
        max_grad_norm: clip the gradients' global 2-norm to this before every step (``None``: no clipping).
        mixed_precision: ``"off"`` (float32), ``"auto"`` (autocast on CUDA only, bfloat16 or float16
            as :func:`companion.device.autocast_dtype` chooses), ``"bfloat16"`` (on any device; fast
            on CPUs with bfloat16 instructions, emulated and slow on others) or ``"float16"`` (CUDA).
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
    max_grad_norm: float | None = None
    mixed_precision: Literal["off", "auto", "bfloat16", "float16"] = "off"
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
            (self.max_grad_norm is None or self.max_grad_norm > 0, f"max_grad_norm must be > 0, got {self.max_grad_norm}"),
            (self.mixed_precision in PRECISIONS,
             f"mixed_precision must be one of {list(PRECISIONS)}, got {self.mixed_precision!r}"),
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


#: The fastest route to 99 % on a CPU that the benchmark found — half-width BatchNormCNN pooling before
#: its batch norms, one epoch, no shifts, bfloat16 autocast (chosen on a validation split; see
#: ``benchmarks/mnist_pipeline.py``). On a CPU without bfloat16 instructions set ``mixed_precision="off"``.
FAST = TrainConfig(
    model="bn-cnn-fast",
    epochs=1,
    batch_size=128,
    lr=0.02,
    optimizer="adamw",
    weight_decay=5e-4,
    schedule="one-cycle",
    label_smoothing=0.1,
    channels_last=True,
    mixed_precision="bfloat16",
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


def build_optimizer(config: TrainConfig, params: nn.Module | Iterable) -> torch.optim.Optimizer:
    """The optimizer ``config`` names, over a model's parameters or given parameter groups.

    Args:
        config: ``optimizer``, ``lr``, ``momentum`` and ``weight_decay`` are used.
        params: a model, an iterable of parameters, or parameter groups (dicts with ``"params"``
            and optionally their own ``"lr"``, as :func:`companion.finetune.param_groups` makes).

    SGD (with momentum; Sutskever et al., 2013) or AdamW (Loshchilov & Hutter, 2019): AdamW
    decays the weights directly, θ ← θ − lr · (m̂ / (√v̂ + ε) + λ θ), instead of adding λθ to
    the gradient.
    """
    params = params.parameters() if isinstance(params, nn.Module) else params
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def build_scheduler(
    config: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The schedule ``config`` names, stepped every batch: ``None`` for ``"constant"``.

    ``"one-cycle"`` (Smith & Topin, 2019) warms each group's learning rate up to its ``lr``
    over the first 30 % of the ``config.epochs · steps_per_epoch`` steps, then anneals it
    towards zero with a cosine.
    """
    if config.schedule != "one-cycle":
        return None
    peaks = [group["lr"] for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=config.epochs * steps_per_epoch)


def _loader(data: ImageSplit | Iterable, batch_size: int, *, device, **kwargs) -> Iterable:
    if isinstance(data, ImageSplit):
        return DeviceLoader.from_split(data, batch_size, device=device, **kwargs)
    return data


def train_model(
    model: nn.Module,
    train: ImageSplit | Iterable,
    config: TrainConfig,
    *,
    val: ImageSplit | Iterable | None = None,
    params: Iterable | None = None,
    device: str | torch.device | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch_end: Callable[[History], None] | None = None,
) -> History:
    """Train a given ``model`` with ``config``'s training settings; return its History.

    ``config.model`` and ``config.dataset`` are not used (the model and the data are given);
    every other field is: the batch size, optimizer, learning rate and schedule, weight decay,
    label smoothing, shifts, channels-last, gradient clipping, mixed precision, epochs and seed (of the shuffling
    and the shifts; seed the model's initial weights before building it).

    Args:
        model: on ``device``.
        train: an :class:`~companion.data.ImageSplit` (batched by a shuffled
            :class:`~companion.data.DeviceLoader` of ``config.batch_size``) or a ready loader.
        config: the run's settings.
        val: validation data (a split, batched by 1000, or a loader), for ``History.val_*``.
        params: parameter groups for the optimizer (for example
            :func:`companion.finetune.param_groups`); default all of ``model``'s parameters.
        device: see :func:`~companion.device.get_device`.
        checkpoint_path, resume, progress, on_epoch_end: passed to :func:`~companion.train.fit`.

    Returns:
        The :class:`~companion.history.History`.

    Raises:
        ValueError: as :func:`~companion.train.fit`; ``train`` is an ImageSplit under
            distributed training (pass a sharded loader); or ``train`` is a ready loader while
            ``config.max_shift > 0`` or ``config.batch_size`` differs from the loader's (they
            would not apply).
    """
    device = get_device(device)
    if isinstance(train, ImageSplit) and is_distributed():
        raise ValueError("under torchrun, pass train_model a sharded DeviceLoader(..., rank=, world_size=) "
                         "instead of an ImageSplit, or every process would train on the same batches")  # fmt: skip
    if not isinstance(train, ImageSplit):  # a ready loader batches and augments by itself
        size = getattr(train, "batch_size", None) or config.batch_size  # None: a DataLoader's batch_sampler
        if config.max_shift or size != config.batch_size:
            raise ValueError(
                f"train is a ready loader (batch_size={size}), so config.batch_size={config.batch_size} and "
                f"config.max_shift={config.max_shift} would not apply; pass an ImageSplit, or build the "
                "loader with that batch size and a RandomTranslate transform and set max_shift=0"
            )
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    transform = RandomTranslate(config.max_shift) if config.max_shift else None
    train_loader = _loader(train, config.batch_size, device=device, shuffle=True, seed=config.seed,
                           transform=transform)  # fmt: skip
    val_loader = _loader(val, 1000, device=device) if val is not None else None
    optimizer = build_optimizer(config, model if params is None else params)
    steps_per_epoch = len(train_loader) if config.schedule == "one-cycle" else 0  # a plain iterable is fine otherwise
    scheduler = build_scheduler(config, optimizer, steps_per_epoch)

    def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)

    return fit(
        model, train_loader, optimizer=optimizer, epochs=config.epochs, device=device, loss_fn=loss_fn,
        val_loader=val_loader, scheduler=scheduler, max_grad_norm=config.max_grad_norm,
        mixed_precision=PRECISIONS[config.mixed_precision], checkpoint_path=checkpoint_path, resume=resume,
        progress=progress, on_epoch_end=on_epoch_end,
    )  # fmt: skip


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

    The test split is evaluated after every epoch to draw learning curves (``History.val_*``
    then hold test metrics); the recipes' settings are fixed in advance, not selected on it.

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
        download: download the dataset if its files are missing.

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
    transform = RandomTranslate(config.max_shift) if config.max_shift else None
    shard = {"rank": rank, "world_size": world_size}  # one process: the whole split
    train_loader = DeviceLoader.from_split(
        train_split, config.batch_size // world_size, shuffle=True, device=device, seed=config.seed,
        transform=transform, drop_last=world_size > 1, **shard,
    )
    test_loader = DeviceLoader.from_split(test_split, 1000, device=device, **shard)
    # The loader already holds this process's share of the batch and the shifts.
    per_process = dataclasses.replace(config, batch_size=train_loader.batch_size, max_shift=0)
    history = train_model(
        model, train_loader, per_process, val=test_loader, device=device, checkpoint_path=checkpoint_path,
        resume=resume, progress=progress, on_epoch_end=on_epoch_end,
    )  # fmt: skip
    test = evaluate(model, test_loader, device)
    model.eval()
    return TrainResult(model=model, history=history, test=test)
