"""Training and evaluation loops, training history and checkpoints.

The loop is pytorch/examples' MNIST loop made explicit about devices, with per-sample
averaging, a non-finite-loss guard and atomic, resumable checkpoints.
Explained in the chapter "MNIST in practice".
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .device import autocast, grad_scaler, synchronize
from .distributed import all_reduce_sum, is_distributed, is_main_process

__all__ = [
    "History",
    "Metrics",
    "NonFiniteLossError",
    "confusion_matrix",
    "evaluate",
    "fit",
    "load_checkpoint",
    "predict",
    "save_checkpoint",
]

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class Metrics:
    """Loss and accuracy averaged over samples.

    Attributes:
        loss: mean cross-entropy per sample (nats).
        accuracy: fraction of samples classified correctly, in [0, 1].
        num_samples: number of samples averaged over.
    """

    loss: float
    accuracy: float
    num_samples: int


@dataclass
class History:
    """Per-epoch record of a :func:`fit` run; every list has one entry per epoch.

    Attributes:
        epoch: epoch numbers, starting at 1.
        train_loss: mean training loss per sample, as optimised (including label smoothing).
        train_accuracy: training accuracy in [0, 1], measured on the fly in training mode.
        val_loss: validation loss per sample (NaN when no validation data was given).
        val_accuracy: validation accuracy in [0, 1] (NaN when no validation data was given).
        seconds: wall-clock seconds of the epoch's training steps (validation excluded).
        lr: learning rate of the first parameter group in the epoch's last optimizer step.
    """

    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)

    def append(self, **values: float) -> None:
        """Record one epoch: one value for every field (``epoch``, ``train_loss``, ..., ``lr``).

        Raises:
            ValueError: a field is missing or an unknown one is given (nothing is recorded).
        """
        names = [f.name for f in fields(self)]
        if set(values) != set(names):
            missing, unknown = sorted(set(names) - set(values)), sorted(set(values) - set(names))
            raise ValueError(f"History.append needs exactly the fields {names}; "
                             f"missing {missing}, unknown {unknown}")
        for name in names:
            getattr(self, name).append(values[name])

    def __len__(self) -> int:
        return len(self.epoch)

    @property
    def total_seconds(self) -> float:
        """Training seconds summed over epochs."""
        return float(sum(self.seconds))

    def to_dict(self) -> dict[str, list]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, list]) -> History:
        return cls(**{k: list(v) for k, v in data.items()})


def evaluate(model: nn.Module, loader: Batches, device: torch.device | str) -> Metrics:
    """Cross-entropy and accuracy of ``model`` over every sample of ``loader``.

    Runs in ``eval()`` mode under :func:`torch.inference_mode` and restores the
    model's previous mode. Sums per-sample losses, so a short last batch weighs by its size.

    Args:
        model: returns logits (B, K) for inputs (B, ...).
        loader: iterable of ``(x, y)`` batches, ``y`` int64 (B,) class indices.
        device: where the model is; batches are moved there.

    Returns:
        :class:`Metrics` averaged over samples. Under distributed training, when ``loader``
        is sharded (``loader.world_size > 1``), over the samples of all processes.

    Raises:
        ValueError: the loader yields no samples.
    """
    was_training = model.training
    model.eval()
    loss_sum = correct = None
    count = 0
    try:
        with torch.inference_mode():
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                logits = model(x).float()  # (B, K)
                batch_loss = F.cross_entropy(logits, y, reduction="sum")
                batch_correct = (logits.argmax(1) == y).sum()
                loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
                correct = batch_correct if correct is None else correct + batch_correct
                count += len(y)
    finally:
        model.train(was_training)  # also when the model or the loader raises
    totals = [0.0 if loss_sum is None else loss_sum.item(), 0.0 if correct is None else correct.item(), float(count)]
    if is_distributed() and getattr(loader, "world_size", 1) > 1:  # each process saw its shard: sum them
        totals = all_reduce_sum(torch.tensor(totals, dtype=torch.float64, device=_collective_device(device))).tolist()
    loss_total, correct_total, count = totals[0], totals[1], int(totals[2])
    if count == 0:
        raise ValueError("evaluate() got a loader with no samples")
    return Metrics(loss=loss_total / count, accuracy=correct_total / count, num_samples=count)


def _collective_device(device: torch.device | str) -> torch.device:
    """Where tensors for a collective must live: the GPU for nccl, the CPU for gloo."""
    device = torch.device(device)
    return device if device.type == "cuda" else torch.device("cpu")


def predict(model: nn.Module, loader: Batches, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels for every sample of ``loader``, on the CPU.

    Returns:
        ``(logits, labels)``: float32 (N, K) and int64 (N,), in the loader's order.

    Raises:
        ValueError: the loader yields no batches.
    """
    was_training = model.training
    model.eval()
    logits, labels = [], []
    try:
        with torch.inference_mode():
            for x, y in loader:
                logits.append(model(x.to(device)).float().cpu())
                labels.append(y.cpu())
    finally:
        model.train(was_training)  # also when the model or the loader raises
    if not labels:
        raise ValueError("predict() got a loader with no samples")
    return torch.cat(logits), torch.cat(labels)


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Count matrix ``C[i, j]`` = number of samples of true class ``i`` predicted as ``j``.

    Args:
        predictions: int64 (N,) predicted classes in [0, num_classes).
        labels: int64 (N,) true classes in [0, num_classes).
        num_classes: K.

    Returns:
        int64 (K, K) on the inputs' device; rows sum to the class counts.

    Raises:
        ValueError: shapes differ or a value lies outside [0, num_classes).
    """
    if predictions.shape != labels.shape or predictions.ndim != 1:
        raise ValueError(
            f"expected predictions and labels of the same shape (N,), got {tuple(predictions.shape)} and {tuple(labels.shape)}"
        )
    for name, t in (("predictions", predictions), ("labels", labels)):
        if len(t) and (int(t.min()) < 0 or int(t.max()) >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes}), got values in [{int(t.min())}, {int(t.max())}]")
    flat = labels.long() * num_classes + predictions.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    *,
    epoch: int = 0,
    history: History | None = None,
) -> Path:
    """Write a checkpoint atomically: to a temporary file in the same folder, then renamed.

    The file holds only tensors, numbers, strings, lists and dicts, so it loads with
    ``torch.load(path, weights_only=True)``. Tensors are saved from the CPU, so a
    checkpoint written on a GPU loads on a CPU-only machine.

    Args:
        path: destination file; its folder is created if missing.
        model: its ``state_dict()`` is saved.
        optimizer, scheduler: their ``state_dict()`` are saved when given.
        epoch: number of completed epochs.
        history: the :class:`History` so far.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": _to_cpu(model.state_dict()),
        "optimizer": _to_cpu(optimizer.state_dict()) if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": int(epoch),
        "history": (history or History()).to_dict(),
        "torch_rng_state": torch.get_rng_state(),
        "cuda_rng_states": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def load_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> tuple[int, History]:
    """Restore a checkpoint written by :func:`save_checkpoint` into ``model`` (and optimizer, scheduler).

    Loads with ``weights_only=True`` onto the CPU; ``load_state_dict`` then copies
    the tensors to wherever ``model`` and ``optimizer`` live. Also restores the CPU random-number
    state, and the CUDA ones when the checkpoint has them and this machine has as many GPUs, so a
    resumed run continues as an uninterrupted one would.

    Returns:
        ``(epoch, history)``: completed epochs and the :class:`History` so far.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a checkpoint of this package, or holds another model's weights.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a torch.save file: UnpicklingError, EOFError, KeyError, RuntimeError, ...
        reason = (str(err).strip().splitlines() or [""])[0]
        raise ValueError(f"{path} is not a companion checkpoint: torch.load failed ({type(err).__name__}: {reason})") from err
    if not isinstance(state, dict) or not {"model", "epoch", "history"} <= state.keys():
        raise ValueError(f"{path} is not a companion checkpoint (expected keys model, epoch, history)")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:  # missing/unexpected keys or shape mismatches: another model's checkpoint
        reason = str(err).strip().splitlines()[0]
        raise ValueError(f"{path} holds weights of a different model than {type(model).__name__}: {reason}") from err
    if optimizer is not None and state.get("optimizer") is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    if state.get("torch_rng_state") is not None:
        torch.set_rng_state(state["torch_rng_state"])
    cuda_states = state.get("cuda_rng_states") or []
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    return state["epoch"], History.from_dict(state["history"])


def _raise_if_non_finite(losses: list[torch.Tensor], first_step: int, epoch: int) -> None:
    """Check a window of per-step losses with one device sync; name the first bad step.

    Under distributed training every process learns whether any process saw a bad loss,
    so that all of them stop together instead of waiting for the one that stopped.
    """
    finite = torch.isfinite(torch.stack(losses))
    if is_distributed():
        bad = torch.tensor([float(not bool(finite.all()))], device=_collective_device(finite.device))
        if all_reduce_sum(bad).item() and bool(finite.all()):
            raise NonFiniteLossError(f"training loss became non-finite on another process at epoch {epoch}, "
                                     f"steps {first_step}-{first_step + len(losses) - 1}")
    if not bool(finite.all()):
        step = first_step + int((~finite).nonzero()[0])
        raise NonFiniteLossError(
            f"training loss became {losses[step - first_step].item()} at epoch {epoch}, step {step} "
            f"(1-based); lower the learning rate or check the inputs"
        )


def fit(
    model: nn.Module,
    train_loader: Batches,
    *,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    device: torch.device | str,
    loss_fn: LossFn | None = None,
    val_loader: Batches | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    scheduler_interval: Literal["step", "epoch"] = "step",
    checkpoint_path: str | os.PathLike[str] | None = None,
    resume: bool = False,
    mixed_precision: bool = False,
    max_grad_norm: float | None = None,
    progress: bool = True,
    check_every: int = 25,
    on_epoch_end: Callable[[History], None] | None = None,
) -> History:
    """Train ``model`` for ``epochs`` epochs and return its :class:`History`.

    Each step: forward in ``train()`` mode, ``loss_fn(logits, y)``, backward, optimizer
    step, then the scheduler when ``scheduler_interval="step"`` (for example
    ``OneCycleLR``); ``"epoch"`` steps it once per epoch (for example ``StepLR``).
    Validation runs :func:`evaluate` after every epoch. Losses stay on the device and are
    checked for NaN/inf every ``check_every`` steps and at the end of each epoch, so the
    loop syncs with a GPU rarely; a non-finite loss stops training with an error naming the
    epoch and the first bad step.

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
        model: returns logits (B, K); already on ``device``.
        train_loader: iterable of ``(x, y)`` batches; if it has ``set_epoch`` (as
            :class:`~companion.data.DeviceLoader`), it is called with the 0-based epoch.
        optimizer: optimizer over ``model``'s parameters.
        epochs: total number of epochs (a resumed run counts the epochs already done).
        device: where batches are moved.
        loss_fn: ``loss_fn(logits, y)`` → scalar mean loss; default cross-entropy.
        val_loader: optional validation batches.
        scheduler: optional learning-rate scheduler.
        scheduler_interval: ``"step"`` or ``"epoch"``, when ``scheduler.step()`` is called.
        checkpoint_path: if given, a checkpoint is written there after every epoch.
        resume: continue from ``checkpoint_path`` if that file exists.
        mixed_precision: run forward passes under :func:`~companion.device.autocast`: bfloat16
            on CUDA GPUs that support it, else float16 with a gradient scaler
            (:func:`~companion.device.grad_scaler`); no effect on the CPU or MPS. The scaler's
            state is not checkpointed: a resumed float16 run restarts its loss scale.
        max_grad_norm: if given, rescale the gradients so their global 2-norm is at most this
            (``torch.nn.utils.clip_grad_norm_``; Pascanu et al., 2013), before each optimizer step.
        progress: show a tqdm progress bar on stderr.
        check_every: steps between NaN/inf checks (>= 1).
        on_epoch_end: called with the updated :class:`History` after every epoch
            (after the checkpoint is written), for example to print a line.

    Returns:
        The :class:`History`, including epochs restored from a checkpoint.

    Raises:
        ValueError: ``epochs < 0``, ``check_every < 1``, ``max_grad_norm <= 0``, ``resume`` without
            ``checkpoint_path``, an unknown ``scheduler_interval``, or (distributed) processes
            with different numbers of batches per epoch.
        NonFiniteLossError: the training loss became NaN or infinite.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if check_every < 1:
        raise ValueError(f"check_every must be >= 1, got {check_every}")
    if max_grad_norm is not None and not max_grad_norm > 0:
        raise ValueError(f"max_grad_norm must be > 0, got {max_grad_norm}")
    if scheduler_interval not in ("step", "epoch"):
        raise ValueError(f"scheduler_interval must be 'step' or 'epoch', got {scheduler_interval!r}")
    if resume and checkpoint_path is None:
        raise ValueError("resume=True needs a checkpoint_path")
    loss_fn = loss_fn or F.cross_entropy
    history, start = History(), 0
    if resume and Path(checkpoint_path).is_file():
        start, history = load_checkpoint(checkpoint_path, model, optimizer, scheduler)
    network, main, distributed = model, is_main_process(), is_distributed()
    if distributed:
        _check_equal_steps(len(train_loader), device)
        gpu = _cuda_index(device)
        network = nn.parallel.DistributedDataParallel(model, device_ids=None if gpu is None else [gpu])
    scaler = grad_scaler(device, enabled=mixed_precision)
    for epoch in range(start, epochs):
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        model.train()
        losses: list[torch.Tensor] = []
        loss_sum = correct = torch.zeros((), device=device)
        count, checked = 0, 0
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{epochs}", disable=not (progress and main), leave=False)
        started = time.perf_counter()
        for x, y in bar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast(device, enabled=mixed_precision):
                logits = network(x)  # (B, K); under DDP, backward() also averages the gradients
            loss = loss_fn(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()  # float16: loss scaled up, so small gradients survive
            if max_grad_norm is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            lr = float(optimizer.param_groups[0]["lr"])
            scaler.step(optimizer)  # skips the step if a scaled gradient overflowed
            scaler.update()
            if scheduler is not None and scheduler_interval == "step":
                scheduler.step()
            losses.append(loss.detach())
            loss_sum = loss_sum + loss.detach() * len(y)
            correct = correct + (logits.detach().argmax(1) == y).sum()
            count += len(y)
            if len(losses) - checked == check_every:
                _raise_if_non_finite(losses[checked:], checked + 1, epoch + 1)
                checked = len(losses)
                bar.set_postfix(loss=f"{losses[-1].item():.4f}", refresh=False)
        if len(losses) > checked:
            _raise_if_non_finite(losses[checked:], checked + 1, epoch + 1)
        synchronize(device)
        seconds = time.perf_counter() - started
        if distributed:
            # DDP averages gradients, not buffers: the last step left each process its own
            # batch-norm running statistics. Rank 0's go to all, so every process evaluates
            # (and rank 0 saves) one and the same model.
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer, src=0)
            # Metrics of all processes' samples.
            totals = torch.stack([loss_sum.double(), correct.double(), torch.tensor(count, dtype=torch.float64, device=device)])
            loss_sum, correct, count = all_reduce_sum(totals.to(_collective_device(device))).unbind()
            count = int(count.item())
        if scheduler is not None and scheduler_interval == "epoch":
            scheduler.step()
        val = evaluate(model, val_loader, device) if val_loader is not None else None
        history.append(
            epoch=epoch + 1,
            train_loss=loss_sum.item() / max(count, 1),
            train_accuracy=correct.item() / max(count, 1),
            val_loss=val.loss if val else math.nan,
            val_accuracy=val.accuracy if val else math.nan,
            seconds=seconds,
            lr=lr if count else float(optimizer.param_groups[0]["lr"]),
        )
        if checkpoint_path is not None and main:
            save_checkpoint(checkpoint_path, model, optimizer, scheduler, epoch=epoch + 1, history=history)
        if distributed:  # no process reads a checkpoint before rank 0 has written it
            gpu = _cuda_index(device)
            torch.distributed.barrier(device_ids=None if gpu is None else [gpu])
        if on_epoch_end is not None and main:
            on_epoch_end(history)
    return history


def _cuda_index(device: torch.device | str) -> int | None:
    """The GPU index of ``device`` (the current GPU for a bare ``"cuda"``), or None off CUDA."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.cuda.current_device() if device.index is None else device.index


def _check_equal_steps(steps: int, device: torch.device | str) -> None:
    """DDP needs every process to run the same number of steps, or the gradient averaging waits forever."""
    counts = torch.tensor([steps, -steps], dtype=torch.float64, device=_collective_device(device))
    torch.distributed.all_reduce(counts, op=torch.distributed.ReduceOp.MAX)
    if counts[0].item() != -counts[1].item():
        raise ValueError(
            f"processes have between {int(-counts[1].item())} and {int(counts[0].item())} batches per epoch; "
            "use DeviceLoader(..., drop_last=True) so that every process runs the same number of steps"
        )
