"""Evaluation: metrics, predictions, confusion matrices and frozen features, in eval mode.

Every function here runs the model in ``eval()`` mode under :func:`torch.inference_mode`, through
:func:`eval_mode`, which puts the model's previous mode back afterwards — also when the model or
the loader raises. Tensors that leave this module are on the CPU. Explained in the chapter
"MNIST in practice"; :func:`extract_features` in "Pretraining and fine-tuning".
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import all_reduce_sum, collective_device, is_distributed
from .history import Metrics

__all__ = ["confusion_matrix", "eval_mode", "evaluate", "extract_features", "predict"]

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in ``eval()`` mode for the block and restore its previous mode after it.

    Examples:
        >>> model = nn.Dropout(0.5)
        >>> with eval_mode(model):
        ...     model.training
        False
        >>> model.training
        True
    """
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def evaluate(model: nn.Module, loader: Batches, device: torch.device | str) -> Metrics:
    """Cross-entropy and accuracy of ``model`` over every sample of ``loader``.

    Sums per-sample losses, so a short last batch weighs by its size.

    Args:
        model: returns logits (B, K) for inputs (B, ...).
        loader: iterable of ``(x, y)`` batches, ``y`` int64 (B,) class indices.
        device: where the model is; batches are moved there.

    Returns:
        :class:`~companion.history.Metrics` averaged over samples. Under distributed training,
        when ``loader`` is sharded (``loader.world_size > 1``), over the samples of all processes.

    Raises:
        ValueError: the loader yields no samples.
    """
    loss_sum = correct = None
    count = 0
    with eval_mode(model), torch.inference_mode():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            logits = model(x).float()  # (B, K)
            batch_loss = F.cross_entropy(logits, y, reduction="sum")
            batch_correct = (logits.argmax(1) == y).sum()
            loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
            correct = batch_correct if correct is None else correct + batch_correct
            count += len(y)
    totals = [0.0 if loss_sum is None else loss_sum.item(), 0.0 if correct is None else correct.item(), float(count)]
    if is_distributed() and getattr(loader, "world_size", 1) > 1:  # each process saw its shard: sum them
        totals = all_reduce_sum(torch.tensor(totals, dtype=torch.float64, device=collective_device(device))).tolist()
    loss_total, correct_total, count = totals[0], totals[1], int(totals[2])
    if count == 0:
        raise ValueError("evaluate() got a loader with no samples")
    return Metrics(loss=loss_total / count, accuracy=correct_total / count, num_samples=count)


def predict(model: nn.Module, loader: Batches, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels for every sample of ``loader``, on the CPU.

    Returns:
        ``(logits, labels)``: float32 (N, K) and int64 (N,), in the loader's order.

    Raises:
        ValueError: the loader yields no batches.
    """
    logits, labels = [], []
    with eval_mode(model), torch.inference_mode():
        for x, y in loader:
            logits.append(model(x.to(device)).float().cpu())
            labels.append(y.cpu())
    if not labels:
        raise ValueError("predict() got a loader with no samples")
    return torch.cat(logits), torch.cat(labels)


def extract_features(model: nn.Module, loader: Batches, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """``model.forward_features`` of every sample of ``loader``, flattened, on the CPU.

    Args:
        model: a network with ``forward_features`` (:class:`~companion.cnn.BatchNormCNN`,
            :class:`~companion.attention.VisionTransformer`), on ``device``.
        loader: ``(x, y)`` batches.
        device: where batches are moved.

    Returns:
        ``(features, labels)``: float32 (N, D) and int64 (N,), on the CPU, in the loader's order
        (as :func:`predict`).

    Raises:
        TypeError: ``model`` has no ``forward_features`` method.
        ValueError: ``loader`` yields no batches.
    """
    if not callable(getattr(model, "forward_features", None)):
        raise TypeError(f"{type(model).__name__} has no forward_features method")
    features, labels = [], []
    with eval_mode(model), torch.inference_mode():
        for x, y in loader:
            features.append(model.forward_features(x.to(device)).flatten(1).float().cpu())
            labels.append(y.cpu())
    if not features:
        raise ValueError("extract_features() got a loader that yielded no batches")
    return torch.cat(features), torch.cat(labels)


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
