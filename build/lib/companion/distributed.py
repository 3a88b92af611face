"""Distributed data-parallel training on PyTorch's engine (``torch.distributed`` + DDP).

The package does not implement distribution; it uses ``DistributedDataParallel`` (Li et al.,
2020), which averages gradients across processes during ``backward()``. This module holds
the few pieces around it: start the process group from the environment ``torchrun`` sets,
say which process is the main one, wrap a model in DDP, check that every process runs as many
steps, copy batch-norm statistics from rank 0 after an epoch, sum metrics over processes, and
wait for each other at a barrier.
:func:`companion.train.fit` and :class:`companion.data.DeviceLoader` use them, so the same
training code runs in one process or in many::

    torchrun --standalone --nproc-per-node=2 -m companion train --model mlp --epochs 1

Explained in the chapter "Trends, measured".
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .device import get_device

__all__ = [
    "DistributedInfo",
    "all_reduce_sum",
    "barrier",
    "broadcast_buffers",
    "check_equal_steps",
    "collective_device",
    "destroy_distributed",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "wrap_ddp",
]


@dataclass(frozen=True)
class DistributedInfo:
    """Where this process stands: its rank among ``world_size`` processes and its device.

    Attributes:
        rank: global rank in [0, world_size).
        world_size: number of processes (1 without torchrun).
        local_rank: rank on this machine (selects the GPU).
        device: the device this process trains on.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """This process's global rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True on rank 0, the process that prints and writes files."""
    return get_rank() == 0


def init_distributed(device: str | torch.device | None = None, backend: str | None = None) -> DistributedInfo:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    ``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
    ``MASTER_PORT`` for every process it starts. With ``WORLD_SIZE`` > 1 this initialises
    the default process group — ``nccl`` on CUDA, ``gloo`` on the CPU — and gives each
    process its own GPU (``cuda:LOCAL_RANK``); otherwise it does nothing and returns
    rank 0 of 1. Calling it again in an initialised group returns the same information.

    Args:
        device: the device type to train on (default: :func:`~companion.device.get_device`);
            under torchrun a CUDA device is replaced by ``cuda:LOCAL_RANK``; otherwise it is kept.
        backend: ``"gloo"`` or ``"nccl"``; default by device type.

    Returns:
        A :class:`DistributedInfo`.

    Raises:
        ValueError: ``WORLD_SIZE``, ``RANK`` or ``LOCAL_RANK`` is not an integer, or the rank is out of range.
        RuntimeError: the requested device is not available, or more processes than GPUs on a machine.
    """
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as error:
        raise ValueError(f"WORLD_SIZE, RANK and LOCAL_RANK must be integers: {error}") from error
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= RANK < WORLD_SIZE, got RANK={rank}, WORLD_SIZE={world_size}")
    device = get_device(device)
    launched = world_size > 1 or "LOCAL_RANK" in os.environ
    if device.type == "cuda" and launched:  # torchrun: one GPU per process, chosen by LOCAL_RANK
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices on this machine")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type == "cuda":
        torch.cuda.set_device(device)  # one process: the GPU the caller asked for (cuda:N)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend=backend or ("nccl" if device.type == "cuda" else "gloo"))
    return DistributedInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def destroy_distributed() -> None:
    """Leave the process group, if one was initialised (safe to call when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes, in place, and return it (unchanged when not distributed)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def collective_device(device: torch.device | str) -> torch.device:
    """Where tensors for a collective must live: the GPU for ``nccl``, the CPU for ``gloo``."""
    device = torch.device(device)
    return device if device.type == "cuda" else torch.device("cpu")


def _cuda_index(device: torch.device | str) -> int | None:
    """The GPU index of ``device`` (the current GPU for a bare ``"cuda"``), or None off CUDA."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.cuda.current_device() if device.index is None else device.index


def wrap_ddp(model: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
    """``model`` inside ``DistributedDataParallel`` in a process group, else ``model`` itself.

    DDP averages the gradients over processes during ``backward()`` (Li et al., 2020); the
    wrapper shares ``model``'s parameters, so an optimizer built on ``model`` trains both.
    """
    if not is_distributed():
        return model
    gpu = _cuda_index(device)
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=None if gpu is None else [gpu])


def check_equal_steps(steps: int, device: torch.device | str) -> None:
    """Fail on every process if the processes would run different numbers of steps.

    DDP's gradient averaging waits for every process at every step: one process with a batch
    fewer would make the others wait forever. No-op outside a process group.

    Raises:
        ValueError: the processes' step counts differ (the message gives the range).
    """
    if not is_distributed():
        return
    counts = torch.tensor([steps, -steps], dtype=torch.float64, device=collective_device(device))
    dist.all_reduce(counts, op=dist.ReduceOp.MAX)
    if counts[0].item() != -counts[1].item():
        raise ValueError(
            f"processes have between {int(-counts[1].item())} and {int(counts[0].item())} batches per epoch; "
            "use DeviceLoader(..., drop_last=True) so that every process runs the same number of steps"
        )


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Copy every buffer (batch-norm running statistics) from rank 0 to all processes.

    DDP averages gradients, not buffers: after an epoch each process has its own running
    statistics. Copying rank 0's makes every process hold one and the same model.
    """
    if is_distributed():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def barrier(device: torch.device | str) -> None:
    """Wait until every process arrives here (no-op outside a process group)."""
    if is_distributed():
        gpu = _cuda_index(device)
        dist.barrier(device_ids=None if gpu is None else [gpu])
