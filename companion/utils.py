"""Small utilities every layer of the package uses: a model's mode for a block, the one atomic write, the
one check of an image batch, and the comparison of a from-scratch function with the library's (values
and gradients).

Nothing here imports another module of the package, so that model code (attention, summaries,
SimCLR) can use :func:`eval_mode` without depending on the metrics of :mod:`companion.evaluation`,
the data, checkpoint and benchmark code share one :func:`atomic_write`, and the chapters and tests
share one :func:`value_and_grad_gaps` / :func:`assert_same_values_and_grads`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import torch
from torch import nn

__all__ = ["assert_same_values_and_grads", "atomic_write", "check_float_images", "dynamic_batch_shapes", "eval_mode",
           "value_and_grad_gaps"]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in ``eval()`` mode for the block and restore its previous mode after it.

    The previous mode comes back also when the block raises.

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


def check_float_images(images: torch.Tensor, name: str = "images") -> None:
    """Refuse anything but a float batch of images ``(B, C, H, W)``.

    Args:
        images: the batch to check.
        name: how the error message names it.

    Raises:
        TypeError: not a tensor, or a tensor whose dtype is not floating point (for example uint8
            pixels: convert with ``.float() / 255`` first).
        ValueError: a float tensor that does not have four dimensions.

    Examples:
        >>> check_float_images(torch.zeros(2, 1, 28, 28))
        >>> check_float_images(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
        Traceback (most recent call last):
        ...
        TypeError: images must be a float tensor (B, C, H, W), got torch.uint8; convert pixels with .float() / 255
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a float tensor (B, C, H, W), got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(f"{name} must be a float tensor (B, C, H, W), got {images.dtype}; "
                        "convert pixels with .float() / 255")  # fmt: skip
    if images.dim() != 4:
        raise ValueError(f"{name} must have four dimensions (B, C, H, W), got shape {tuple(images.shape)}")


def dynamic_batch_shapes(example_inputs: tuple[torch.Tensor, ...]) -> tuple[dict | None, ...]:
    """``dynamic_shapes`` for ``torch.export``: the first input's dimension 0 is a batch of any size.

    ``torch.export.export`` and ``torch.onnx.export(dynamo=True)`` specialise every dimension
    they are not told is dynamic, and a dimension of size 1 even when told (0/1 specialisation),
    so the example batch must hold at least 2 samples for the exported program to accept any
    batch. Used by :func:`~companion.quantization.quantize_pt2e` and
    :func:`~companion.export.export_onnx` (chapter "Shipping models").

    Args:
        example_inputs: a tuple of tensors, the first a batch (B, ...) with B >= 2.

    Returns:
        One entry per input, ``{0: Dim("batch", min=1)}`` for the first and ``None`` (all
        static) for the others, as a tuple.

    Raises:
        ValueError: no inputs, or a first input that is a scalar or a batch of fewer than 2.

    Source: PyTorch's ``torch.export`` documentation ("Expressing dynamism", 0/1 specialisation).
    """
    if not example_inputs or example_inputs[0].dim() == 0 or example_inputs[0].shape[0] < 2:
        shape = tuple(example_inputs[0].shape) if example_inputs else None
        raise ValueError(f"example_inputs[0] must be a batch of at least 2 (B, ...), got shape {shape}")
    batch = torch.export.Dim("batch", min=1)
    return tuple({0: batch} if i == 0 else None for i in range(len(example_inputs)))


def _usual_permissions() -> int:
    """The mode ``open()`` gives a new file: ``0o666`` less the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", suffix: str = ".tmp") -> Iterator[IO]:
    """Write ``path`` all at once: a hidden temporary file beside it, renamed over it when the block succeeds.

    Readers of ``path`` see the old file or the complete new one, never a half-written one. If the
    block raises (an interrupted download, a checksum that does not match, a full disk), the
    temporary file is removed and ``path`` is left as it was. The new file gets the permissions
    ``open()`` would give it (``0o666`` less the umask, usually ``0o644``), not the ``0o600`` of a
    temporary file, so that other users of a shared folder (a data root, a results folder) can read it.
    The folder is created if missing.

    Args:
        path: the file to write.
        mode: ``"wb"`` (bytes) or ``"w"`` (text, UTF-8).
        suffix: the temporary file's suffix (``".part"`` for downloads, say).

    Yields:
        The open temporary file.

    Raises:
        ValueError: ``mode`` is not ``"wb"`` or ``"w"``.

    Examples:
        >>> import json, tempfile
        >>> target = Path(tempfile.mkdtemp()) / "record.json"
        >>> with atomic_write(target, "w") as out:
        ...     json.dump({"accuracy": 0.99}, out)
        >>> json.loads(target.read_text())
        {'accuracy': 0.99}
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        with os.fdopen(handle, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as out:
            yield out
        os.chmod(tmp, _usual_permissions())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _output_and_grads(fn: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...], seed: int):
    """``fn`` on fresh leaf copies of ``inputs``; gradients of ``sum(output * probe)`` w.r.t. inputs and parameters."""
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    output = fn(*leaves)
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"expected a function that returns one tensor, got {type(output).__name__}")
    probe = torch.randn(output.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    wrt = [t for t in leaves if t.requires_grad] + (list(fn.parameters()) if isinstance(fn, nn.Module) else [])
    grads = torch.autograd.grad((output * probe.to(output.device, output.dtype)).sum(), wrt, allow_unused=True)
    return output, [torch.zeros_like(t) if g is None else g for t, g in zip(wrt, grads, strict=True)]


def _both(ours, reference, inputs, seed):
    out_a, grads_a = _output_and_grads(ours, inputs, seed)
    out_b, grads_b = _output_and_grads(reference, inputs, seed)
    if len(grads_a) != len(grads_b):
        raise ValueError(f"the two sides have different numbers of parameters: {len(grads_a) - len(inputs)} and "
                         f"{len(grads_b) - len(inputs)} (a module's parameters are compared in order)")  # fmt: skip
    return out_a, grads_a, out_b, grads_b


def value_and_grad_gaps(ours: Callable[..., torch.Tensor], reference: Callable[..., torch.Tensor],
                        *inputs: torch.Tensor, seed: int = 0) -> tuple[float, float]:  # fmt: skip
    """Largest gaps between two implementations of one function: in value, and in gradient.

    Both run on fresh copies of ``inputs``. The gradients are those of ``sum(output * probe)`` for
    one random ``probe`` (a random projection of the output, so every output element counts),
    with respect to every floating-point input and, where a side is an ``nn.Module``, its
    parameters in the order ``parameters()`` gives them. Compare in float64 to see rounding, not
    the float32 noise floor.

    Args:
        ours, reference: functions (or modules) of ``inputs`` returning one tensor each, of one shape.
        inputs: tensors.
        seed: the probe's seed.

    Returns:
        ``(value gap, gradient gap)``: the largest absolute differences, in the outputs' units.

    Raises:
        TypeError: a side returns something other than one tensor.
        ValueError: the two sides have different numbers of parameters, or outputs or gradients of
            different shapes.

    Examples:
        >>> x = torch.randn(4, 3, dtype=torch.float64)
        >>> value_and_grad_gaps(lambda t: t.softmax(-1), lambda t: t.exp() / t.exp().sum(-1, keepdim=True), x)[0] < 1e-15
        True
    """
    out_a, grads_a, out_b, grads_b = _both(ours, reference, inputs, seed)
    pairs = [(out_a, out_b), *zip(grads_a, grads_b, strict=True)]
    for a, b in pairs:
        if a.shape != b.shape:
            raise ValueError(f"shapes differ: {tuple(a.shape)} and {tuple(b.shape)}")
    gap = lambda a, b: (a - b).abs().max().item() if a.numel() else 0.0  # noqa: E731
    return gap(out_a, out_b), max((gap(a, b) for a, b in pairs[1:]), default=0.0)


def assert_same_values_and_grads(ours: Callable[..., torch.Tensor], reference: Callable[..., torch.Tensor],
                                 *inputs: torch.Tensor, seed: int = 0,
                                 assert_close: Callable[..., None] = torch.testing.assert_close) -> None:  # fmt: skip
    """Assert that two implementations agree in value and in gradient (as :func:`value_and_grad_gaps` computes them).

    Args:
        ours, reference, inputs, seed: as :func:`value_and_grad_gaps`.
        assert_close: the comparison, default :func:`torch.testing.assert_close` (its tolerances
            for the dtype: 1e-7 relative in float64).

    Raises:
        AssertionError: a value or a gradient differs (the message names which).
        TypeError, ValueError: as :func:`value_and_grad_gaps`.
    """
    out_a, grads_a, out_b, grads_b = _both(ours, reference, inputs, seed)
    floats = sum(t.is_floating_point() for t in inputs)
    assert_close(out_a, out_b, msg=lambda m: f"values differ: {m}")
    for index, (a, b) in enumerate(zip(grads_a, grads_b, strict=True)):
        what = f"input {index}" if index < floats else f"parameter {index - floats}"
        assert_close(a, b, msg=lambda m, what=what: f"gradients w.r.t. {what} differ: {m}")
