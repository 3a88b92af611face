"""Devices, seeds and mixed precision: the three things every chapter sets up first.

The book runs the same code on CUDA, Apple's MPS and the CPU. :func:`get_device` picks
one, :func:`seed_everything` makes a run repeatable and :func:`autocast` turns on
bfloat16 mixed precision where it pays (CUDA) and does nothing elsewhere.
Explained in the chapter "MNIST in practice".
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Iterator

import numpy as np
import torch

__all__ = [
    "DEVICE_ENV",
    "Timer",
    "autocast",
    "autocast_dtype",
    "get_device",
    "grad_scaler",
    "seed_everything",
    "synchronize",
    "timing_conditions",
]

#: Environment variable that overrides the automatic device choice (``cpu``, ``cuda``, ``cuda:1``, ``mps``).
DEVICE_ENV = "COMPANION_DEVICE"
#: Set to ``1`` by the book's test command in a kernel that shares the CPU with other tests.
SHARED_CPU_ENV = "COMPANION_CPU_SHARED"


def _available(device: torch.device) -> bool:
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        return device.index is None or device.index < torch.cuda.device_count()
    if device.type == "mps":
        return torch.backends.mps.is_available()
    return False


def get_device(device: str | torch.device | None = None) -> torch.device:
    """Return the device to compute on.

    The choice, first match wins: the ``device`` argument, the environment variable
    ``COMPANION_DEVICE``, then CUDA, MPS and the CPU, whichever is available first.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``, a :class:`torch.device`,
            or ``None`` for the automatic choice.

    Returns:
        A :class:`torch.device` that is available on this machine.

    Raises:
        ValueError: the requested name is not a device PyTorch knows.
        RuntimeError: the requested device (argument or environment variable) is not
            available here, for example ``cuda`` on a machine without a CUDA GPU.

    Examples:
        >>> get_device("cpu")
        device(type='cpu')
    """
    source = "argument"
    if device is None and os.environ.get(DEVICE_ENV):
        device, source = os.environ[DEVICE_ENV], f"environment variable {DEVICE_ENV}"
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"expected a device name such as 'cpu', 'cuda', 'cuda:0' or 'mps' ({source}), got {device!r}"
        ) from None
    if not _available(chosen):
        raise RuntimeError(
            f"device {str(chosen)!r} was requested ({source}) but is not available on this machine; "
            f"use 'cpu', or leave the device unset to pick the best available one"
        )
    return chosen


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy and PyTorch (CPU and every CUDA device).

    Args:
        seed: a non-negative integer below 2**32.

    Raises:
        ValueError: ``seed`` is negative or not below 2**32.
        TypeError: ``seed`` is not an integer.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def synchronize(device: torch.device | str) -> None:
    """Wait until the work queued on ``device`` is done (CUDA, MPS); nothing to wait for on the CPU.

    GPUs run asynchronously: time a block of GPU work with a synchronisation at both ends, or the
    clock measures work queued, not work done.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def timing_conditions(device: torch.device | str, language: str = "en") -> str:
    """Say under which conditions seconds measured on ``device`` in this process were taken.

    A chapter glues this next to the seconds it reports, so that a reader knows what was timed:
    on a GPU its name; on the CPU the number of threads PyTorch computes with and, where the
    environment variable ``COMPANION_CPU_SHARED`` is ``1`` (the book's test command sets it when it
    executes two notebooks at a time, one thread each), that other tests shared the CPU.

    Args:
        device: the device the timed work ran on (``"cpu"``, ``"cuda:0"``, ... or a :class:`torch.device`).
        language: ``"en"`` for the English pages, ``"zh"`` for the Chinese edition's (a phrase that
            follows 测得于…).

    Returns:
        A clause such as ``"on the CPU with 2 threads"``, ``"on the CPU with 1 thread, while other
        tests ran beside it"`` or ``"on the CUDA device NVIDIA H100 80GB HBM3"``; in Chinese
        ``"CPU（2个线程）"``, ``"CPU（1个线程，同时有其他测试在运行）"``, ``"CUDA设备NVIDIA H100 80GB HBM3"``.

    Raises:
        ValueError: a ``language`` other than ``"en"`` and ``"zh"``.

    Examples:
        >>> timing_conditions("cpu").startswith("on the CPU with ")
        True
    """
    if language not in ("en", "zh"):
        raise ValueError(f"language must be 'en' or 'zh', got {language!r}")
    zh = language == "zh"
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return f"CUDA设备{name}" if zh else f"on the CUDA device {name}"
    if device.type == "mps":
        return "Apple的MPS" if zh else "on Apple's MPS"
    threads = torch.get_num_threads()
    shared = os.environ.get(SHARED_CPU_ENV) == "1"
    if zh:
        return f"CPU（{threads}个线程{'，同时有其他测试在运行' if shared else ''}）"
    clause = f"on the CPU with {threads} thread{'s' if threads != 1 else ''}"
    if shared:
        clause += ", while other tests ran beside it"
    return clause


class Timer:
    """Seconds a block of work takes on ``device``: CUDA events on a GPU, the wall clock elsewhere.

    GPUs run asynchronously, so the block is bracketed by synchronisations (on CUDA, the events
    time the work on the GPU itself). After the block, ``seconds`` holds the time.

    Examples:
        >>> with Timer("cpu") as timer:
        ...     _ = torch.ones(1000).sum()
        >>> timer.seconds >= 0
        True
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.seconds = float("nan")

    def __enter__(self) -> Timer:
        synchronize(self.device)
        if self.device.type == "cuda":
            self._events = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
            with torch.cuda.device(self.device):  # record on the timed GPU's stream
                self._events[0].record()
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            with torch.cuda.device(self.device):
                self._events[1].record()
            self._events[1].synchronize()
            self.seconds = self._events[0].elapsed_time(self._events[1]) / 1000  # ms -> s
        else:
            synchronize(self.device)
            self.seconds = time.perf_counter() - self._started


def autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """The reduced precision :func:`autocast` uses on ``device``, or ``None`` where it is off.

    bfloat16 on a CUDA GPU that supports it (Ampere and newer: ``torch.cuda.is_bf16_supported()``);
    float16 on older GPUs such as Colab's T4, which need a gradient scaler (:func:`grad_scaler`);
    ``None`` on the CPU and MPS, where the package trains in float32.

    bfloat16 keeps float32's exponent range (Kalamkar et al., 2019), so gradients do not underflow;
    float16 does not, hence loss scaling (Micikevicius et al., 2018).
    """
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.bfloat16 if _native_bf16(device) else torch.float16


def _native_bf16(device: torch.device) -> bool:
    """bfloat16 in hardware on ``device`` (not emulated: a T4 emulates it, slowly)."""
    def check() -> bool:
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # PyTorch before 2.5 counts native support only
            return torch.cuda.is_bf16_supported()

    if not torch.cuda.is_available():
        return check()
    with torch.cuda.device(device):  # the GPU asked about, not the current one
        return check()


@contextlib.contextmanager
def autocast(device: torch.device | str, enabled: bool = True, dtype: torch.dtype | None = None) -> Iterator[None]:
    """Mixed precision: by default on CUDA only (the dtype of :func:`autocast_dtype`), a no-op elsewhere.

    Args:
        device: the device the model runs on.
        enabled: ``False`` turns the context into a no-op everywhere.
        dtype: ``torch.bfloat16`` or ``torch.float16`` to autocast to that dtype on any device
            that supports it (bfloat16 on a CPU: fast where the processor has bfloat16
            instructions, such as AVX512-BF16 or AMX, and emulated, slowly, elsewhere);
            ``None``: :func:`autocast_dtype`'s choice.

    Raises:
        ValueError: ``dtype`` is not bfloat16 or float16, or float16 is asked for off CUDA
            (float16 needs loss scaling, which the package does on CUDA only).

    Examples:
        >>> with autocast("cpu"):
        ...     y = torch.ones(2) * 2  # float32: autocast is off on the CPU by default
        >>> with autocast("cpu", dtype=torch.bfloat16):
        ...     z = torch.ones(2, 2) @ torch.ones(2, 2)  # bfloat16
    """
    device = torch.device(device)
    dtype = _checked_dtype(device, dtype) if enabled else None
    if enabled and dtype is None:
        dtype = autocast_dtype(device)
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def _checked_dtype(device: torch.device, dtype: torch.dtype | None) -> torch.dtype | None:
    if dtype is not None and dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"autocast dtype must be torch.bfloat16 or torch.float16, got {dtype}")
    if dtype == torch.float16 and device.type != "cuda":
        raise ValueError(f"float16 autocast needs a CUDA device (for loss scaling), got {device}; "
                         "use torch.bfloat16 on the CPU")  # fmt: skip
    return dtype


def grad_scaler(device: torch.device | str, enabled: bool = True, dtype: torch.dtype | None = None) -> torch.amp.GradScaler:
    """A gradient scaler that is on exactly when :func:`autocast` (same arguments) runs in float16.

    Its ``scale``, ``unscale_``, ``step`` and ``update`` pass everything through unchanged when it
    is off (bfloat16, float32, the CPU), so a training loop calls them unconditionally.

    Raises:
        ValueError: as :func:`autocast` for ``dtype``.
    """
    device = torch.device(device)
    dtype = _checked_dtype(device, dtype) if enabled else None
    on = enabled and (dtype or autocast_dtype(device)) == torch.float16
    return torch.amp.GradScaler(device.type if device.type == "cuda" else "cpu", enabled=on)
