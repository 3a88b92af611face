"""The training loop: one epoch of steps, a guard against non-finite losses, and ``fit``.

:func:`train_epoch` is pytorch/examples' MNIST ``train()`` made explicit about devices: every
step moves a batch to the device, computes a loss, back-propagates and steps the optimizer (and
the scheduler, per step). The loss of a step comes from ``batch_loss(model, x, y)``, by default
cross-entropy of the model's logits, so the same epoch function trains a classifier and SimCLR
(:mod:`companion.simclr`). :func:`fit` runs epochs, validates, records a
:class:`~companion.history.History`, writes checkpoints and, inside a process group, trains with
DistributedDataParallel (:mod:`companion.distributed`).

Explained in the chapter "MNIST in practice".
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .checkpoint import load_checkpoint, save_checkpoint
from .device import autocast, grad_scaler, synchronize
from .distributed import (
    all_reduce_sum,
    barrier,
    broadcast_buffers,
    check_equal_steps,
    collective_device,
    is_distributed,
    is_main_process,
    wrap_ddp,
)
from .evaluation import evaluate
from .history import History

__all__ = ["EpochStats", "NonFiniteGuard", "NonFiniteLossError", "classification_loss", "fit", "train_epoch"]

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``batch_loss(model, x, y) -> (loss, logits or None)``: the loss of one step (a 0-d tensor) and,
#: for classifiers, the logits (B, K) that the epoch's training accuracy is counted from.
BatchLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


def classification_loss(loss_fn: LossFn = F.cross_entropy) -> BatchLoss:
    """The default ``batch_loss``: ``loss_fn(model(x), y)``, with the logits for the accuracy."""

    def batch_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)  # (B, K)
        return loss_fn(logits.float(), y), logits

    return batch_loss


class NonFiniteGuard:
    """Collect each step's loss on the device and check a window of them with one sync.

    A GPU runs ahead of Python; reading a loss every step (``loss.item()``) would make it wait.
    The guard keeps the losses as device tensors and checks ``check_every`` of them at once,
    and the rest at :meth:`finish`; the error names the epoch and the first bad step (1-based).
    Inside a process group every process learns whether any process saw a bad loss, so that
    all of them stop together instead of waiting for the one that stopped.

    Raises:
        ValueError: ``check_every < 1``.
    """

    def __init__(self, epoch: int, check_every: int = 25) -> None:
        if check_every < 1:
            raise ValueError(f"check_every must be >= 1, got {check_every}")
        self.epoch, self.check_every = epoch, check_every
        self.losses: list[torch.Tensor] = []
        self.checked = 0

    def add(self, loss: torch.Tensor) -> None:
        """Record one step's loss; check the window when it is full."""
        self.losses.append(loss.detach())
        if len(self.losses) - self.checked == self.check_every:
            self._check()

    def finish(self) -> None:
        """Check the losses not checked yet (call at the end of the epoch)."""
        if len(self.losses) > self.checked:
            self._check()

    def _check(self) -> None:
        window, first = self.losses[self.checked :], self.checked + 1
        self.checked = len(self.losses)
        finite = torch.isfinite(torch.stack(window))
        ok = bool(finite.all())
        if is_distributed():
            bad = torch.tensor([float(not ok)], device=collective_device(finite.device))
            if all_reduce_sum(bad).item() and ok:
                raise NonFiniteLossError(f"training loss became non-finite on another process at epoch "
                                         f"{self.epoch}, steps {first}-{first + len(window) - 1}")  # fmt: skip
        if not ok:
            step = first + int((~finite).nonzero()[0])
            raise NonFiniteLossError(
                f"training loss became {self.losses[step - 1].item()} at epoch {self.epoch}, step {step} "
                f"(1-based); lower the learning rate or check the inputs"
            )


@dataclass
class EpochStats:
    """Totals of one epoch of :func:`train_epoch`, on this process.

    Attributes:
        loss_sum: sum over samples of the step losses (0-d float32 tensor on the device).
        correct: correctly classified samples (0-d tensor), or ``None`` when ``batch_loss``
            returns no logits (SimCLR).
        count: samples seen.
        seconds: wall-clock seconds of the steps (the device synchronised at the end).
        lr: learning rate of the first parameter group in the last step.
    """

    loss_sum: torch.Tensor
    correct: torch.Tensor | None
    count: int
    seconds: float
    lr: float

    def all_reduced(self, device: torch.device | str) -> EpochStats:
        """The totals summed over all processes (itself when not distributed)."""
        if not is_distributed():
            return self
        correct = self.correct if self.correct is not None else torch.zeros(())
        totals = torch.stack([self.loss_sum.cpu().double(), correct.cpu().double(), torch.tensor(float(self.count))])
        loss_sum, correct, count = all_reduce_sum(totals.to(collective_device(device))).unbind()
        return EpochStats(loss_sum, correct if self.correct is not None else None, int(count.item()), self.seconds, self.lr)


def train_epoch(
    model: nn.Module,
    loader: Batches,
    optimizer: torch.optim.Optimizer,
    device: torch.device | str,
    *,
    epoch: int = 1,
    batch_loss: BatchLoss | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    mixed_precision: bool | torch.dtype = False,
    scaler: torch.amp.GradScaler | None = None,
    max_grad_norm: float | None = None,
    check_every: int = 25,
    progress: bool = False,
    desc: str | None = None,
) -> EpochStats:
    """Train ``model`` for one pass over ``loader`` (the model is put in ``train()`` mode).

    Each step: move the batch to ``device``; forward under :func:`~companion.device.autocast`
    when ``mixed_precision``; ``loss, logits = batch_loss(model, x, y)``; backward (through
    ``scaler`` for float16); clip the gradients' global 2-norm to ``max_grad_norm`` when given
    (Pascanu et al., 2013); step the optimizer, then ``scheduler`` (a per-step schedule such as
    ``OneCycleLR``). Losses are checked by a :class:`NonFiniteGuard`.

    Args:
        model: the network (or its DDP wrapper) on ``device``.
        loader: ``(x, y)`` batches; if it has ``set_epoch``, it is called with ``epoch - 1``.
        optimizer: over ``model``'s parameters.
        device: where batches go.
        epoch: 1-based epoch number, for ``set_epoch`` and the messages.
        batch_loss: see ``BatchLoss`` (``batch_loss(model, x, y) -> (loss, logits or None)``); default :func:`classification_loss` (cross-entropy).
        scheduler: stepped after every optimizer step, if given.
        mixed_precision: autocast the forward pass: ``True`` on CUDA only (the dtype of
            :func:`~companion.device.autocast_dtype`), or a dtype (``torch.bfloat16`` on any
            device, ``torch.float16`` on CUDA).
        scaler: a gradient scaler (default :func:`~companion.device.grad_scaler`).
        max_grad_norm: clip threshold, > 0, or ``None``.
        check_every: steps per non-finite check, >= 1.
        progress: show a tqdm bar; ``desc`` labels it.

    Returns:
        :class:`EpochStats` of this process.

    Raises:
        NonFiniteLossError: a loss became NaN or infinite (the message names epoch and step).
        ValueError: ``check_every < 1``; ``mixed_precision`` is a dtype other than bfloat16 or
            float16, or float16 off CUDA.
    """
    batch_loss = batch_loss or classification_loss()
    enabled, dtype = _precision(mixed_precision)
    scaler = scaler or grad_scaler(device, enabled=enabled, dtype=dtype)
    guard = NonFiniteGuard(epoch, check_every)
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch - 1)
    model.train()
    loss_sum = torch.zeros((), device=device)  # float32: MPS has no float64
    correct, count, lr = None, 0, float(optimizer.param_groups[0]["lr"])
    started = time.perf_counter()
    for x, y in tqdm(loader, desc=desc or f"epoch {epoch}", disable=not progress, leave=False):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, enabled=enabled, dtype=dtype):
            loss, logits = batch_loss(model, x, y)  # under DDP, backward() also averages the gradients
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()  # float16: loss scaled up, so small gradients survive
        if max_grad_norm is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        lr = float(optimizer.param_groups[0]["lr"])
        scaler.step(optimizer)  # skips the step if a scaled gradient overflowed
        scaler.update()
        if scheduler is not None:
            scheduler.step()
        guard.add(loss)
        loss_sum += loss.detach() * len(x)
        if logits is not None:
            hits = (logits.detach().argmax(1) == y).sum()
            correct = hits if correct is None else correct + hits
        count += len(x)
    guard.finish()
    synchronize(device)
    return EpochStats(loss_sum, correct, count, time.perf_counter() - started, lr)


def _precision(mixed_precision: bool | torch.dtype) -> tuple[bool, torch.dtype | None]:
    """``mixed_precision`` as :func:`~companion.device.autocast`'s ``enabled`` and ``dtype``."""
    if isinstance(mixed_precision, torch.dtype):
        return True, mixed_precision
    return bool(mixed_precision), None


def _check_fit_arguments(epochs, check_every, max_grad_norm, scheduler_interval, resume, checkpoint_path) -> None:
    checks = [
        (epochs >= 0, f"epochs must be >= 0, got {epochs}"),
        (check_every >= 1, f"check_every must be >= 1, got {check_every}"),
        (max_grad_norm is None or max_grad_norm > 0, f"max_grad_norm must be > 0, got {max_grad_norm}"),
        (scheduler_interval in ("step", "epoch"),
         f"scheduler_interval must be 'step' or 'epoch', got {scheduler_interval!r}"),
        (not resume or checkpoint_path is not None, "resume=True needs a checkpoint_path"),
    ]  # fmt: skip
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def fit(
    model: nn.Module,
    train_loader: Batches,
    *,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    device: torch.device | str,
    loss_fn: LossFn | None = None,
    batch_loss: BatchLoss | None = None,
    val_loader: Batches | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    scheduler_interval: Literal["step", "epoch"] = "step",
    checkpoint_path: str | os.PathLike[str] | None = None,
    resume: bool = False,
    mixed_precision: bool | torch.dtype = False,
    max_grad_norm: float | None = None,
    progress: bool = True,
    check_every: int = 25,
    on_epoch_end: Callable[[History], None] | None = None,
) -> History:
    """Train ``model`` for ``epochs`` epochs of :func:`train_epoch` and return its :class:`~companion.history.History`.

    After every epoch: the scheduler steps if ``scheduler_interval="epoch"`` (for example
    ``StepLR``; ``"step"`` steps it every batch, for example ``OneCycleLR``), :func:`~companion.evaluation.evaluate`
    runs on ``val_loader``, the History gains a row, a checkpoint is written, ``on_epoch_end``
    is called. With ``resume`` and an existing checkpoint, training continues after its epoch
    exactly as an uninterrupted run would.

    **Distributed data parallel.** Inside a process group (started by ``torchrun`` and
    :func:`companion.distributed.init_distributed`), ``fit`` wraps ``model`` in
    ``DistributedDataParallel``, which averages gradients over processes in ``backward()``;
    ``train_loader`` must be sharded (``DeviceLoader(..., rank=, world_size=)``) with the
    same number of batches on every process. Training metrics are summed over processes,
    batch-norm running statistics are copied from rank 0 after every epoch, and only rank 0
    shows progress, writes checkpoints and calls ``on_epoch_end``. With per-process batch
    ``B / world_size`` the updates equal one process's with batch ``B`` for networks without
    batch-dependent layers; batch normalisation normalises each process's ``B / world_size``
    samples separately (``nn.SyncBatchNorm.convert_sync_batchnorm`` makes it use all ``B`` on GPUs).

    Args:
        model: on ``device``; returns logits (B, K) unless ``batch_loss`` says otherwise.
        train_loader: ``(x, y)`` batches; ``set_epoch`` is called when it exists.
        optimizer: over ``model``'s parameters.
        epochs: total number of epochs (a resumed run counts the epochs already done).
        device: where batches are moved.
        loss_fn: ``loss_fn(logits, y)`` → scalar mean loss; default cross-entropy.
        batch_loss: the step's loss instead (see :func:`train_epoch`); excludes ``loss_fn``.
        val_loader: optional validation batches (``History.val_*``; NaN without).
        scheduler, scheduler_interval: the learning-rate schedule and when it steps.
        checkpoint_path: if given, a checkpoint is written there after every epoch.
        resume: continue from ``checkpoint_path`` if that file exists.
        mixed_precision: ``True``: autocast on CUDA, bfloat16 where supported, else float16 with a
            gradient scaler (:func:`~companion.device.grad_scaler`), no effect on the CPU or MPS;
            a dtype: autocast to it on any device (``torch.bfloat16``; ``torch.float16`` on CUDA).
            The scaler's state is not checkpointed: a resumed float16 run restarts its loss scale.
        max_grad_norm: clip the gradients' global 2-norm to this before each step.
        progress: show a tqdm progress bar on stderr.
        check_every: steps between NaN/inf checks (>= 1).
        on_epoch_end: called with the updated :class:`~companion.history.History` after every epoch.

    Returns:
        The :class:`~companion.history.History`, including epochs restored from a checkpoint.

    Raises:
        ValueError: ``epochs < 0``, ``check_every < 1``, ``max_grad_norm <= 0``, ``resume`` without
            ``checkpoint_path``, an unknown ``scheduler_interval``, both ``loss_fn`` and
            ``batch_loss``, a ``mixed_precision`` dtype :func:`~companion.device.autocast` refuses, or (distributed) processes with different numbers of batches per epoch.
        NonFiniteLossError: the training loss became NaN or infinite.
    """
    _check_fit_arguments(epochs, check_every, max_grad_norm, scheduler_interval, resume, checkpoint_path)
    if loss_fn is not None and batch_loss is not None:
        raise ValueError("give loss_fn or batch_loss, not both")
    batch_loss = batch_loss or classification_loss(loss_fn or F.cross_entropy)
    history, start = History(), 0
    if resume and Path(checkpoint_path).is_file():
        start, history = load_checkpoint(checkpoint_path, model, optimizer, scheduler)
    if is_distributed():  # a plain iterable without a length is fine in one process
        check_equal_steps(len(train_loader), device)
    network, main = wrap_ddp(model, device), is_main_process()
    enabled, dtype = _precision(mixed_precision)
    scaler = grad_scaler(device, enabled=enabled, dtype=dtype)
    for epoch in range(start + 1, epochs + 1):
        stats = train_epoch(
            network, train_loader, optimizer, device, epoch=epoch, batch_loss=batch_loss,
            scheduler=scheduler if scheduler_interval == "step" else None, mixed_precision=mixed_precision,
            scaler=scaler, max_grad_norm=max_grad_norm, check_every=check_every,
            progress=progress and main, desc=f"epoch {epoch}/{epochs}",
        )  # fmt: skip
        broadcast_buffers(model)  # every process evaluates (and rank 0 saves) one and the same model
        stats = stats.all_reduced(device)
        if scheduler is not None and scheduler_interval == "epoch":
            scheduler.step()
        val = evaluate(model, val_loader, device) if val_loader is not None else None
        count = max(stats.count, 1)
        history.append(
            epoch=epoch,
            train_loss=stats.loss_sum.item() / count,
            train_accuracy=stats.correct.item() / count if stats.correct is not None else math.nan,
            val_loss=val.loss if val else math.nan,
            val_accuracy=val.accuracy if val else math.nan,
            seconds=stats.seconds,
            lr=stats.lr,
        )
        if checkpoint_path is not None and main:
            save_checkpoint(checkpoint_path, model, optimizer, scheduler, epoch=epoch, history=history)
        barrier(device)  # no process reads a checkpoint before rank 0 has written it
        if on_epoch_end is not None and main:
            on_epoch_end(history)
    return history
