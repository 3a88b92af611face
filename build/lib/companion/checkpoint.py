"""Atomic, resumable checkpoints that load with ``torch.load(weights_only=True)``.

A checkpoint holds the model's and optimizer's state, the scheduler's, the completed epochs, the
:class:`~companion.history.History` and the random-number states, so that
:func:`~companion.train.fit` resumed from it continues as an uninterrupted run would. Explained in
the chapter "MNIST in practice".
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .history import History
from .utils import atomic_write

__all__ = ["load_checkpoint", "save_checkpoint"]


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
        history: the :class:`~companion.history.History` so far.

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
    with atomic_write(path) as f:
        torch.save(state, f)
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
        ``(epoch, history)``: completed epochs and the :class:`~companion.history.History` so far.

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
