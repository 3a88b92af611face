"""What a network is made of and what it costs: a layer-by-layer table, the receptive field of each
layer, and its inference throughput.

Chapter "Convolutional networks" uses the first two on SeedCNN; "Modern CNNs" and "Pretrained models"
measure throughput with :func:`images_per_second`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .device import Timer
from .utils import eval_mode

__all__ = ["LayerInfo", "ReceptiveField", "count_parameters", "images_per_second", "layer_table", "receptive_fields"]


def count_parameters(module: nn.Module | Iterable[torch.Tensor], trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``module`` (each shared tensor counted once).

    Args:
        module: any ``nn.Module``, or an iterable of parameter tensors (an optimizer's
            ``param_groups[k]["params"]``).
        trainable_only: count only parameters with ``requires_grad=True``
            (what an optimizer would update after :func:`companion.finetune.freeze`).

    Returns:
        The count, an int >= 0.
    """
    params = module.parameters() if isinstance(module, nn.Module) else module
    unique = {id(p): p for p in params}.values()
    return sum(p.numel() for p in unique if p.requires_grad or not trainable_only)


@dataclass(frozen=True)
class LayerInfo:
    """One call of a leaf module during a forward pass.

    Attributes:
        name: the module's attribute path (``"conv1"``); a module called twice appears twice.
        kind: the module's class name.
        output_shape: output shape for one sample, without the batch dimension.
        params: parameters of the module, counted at its first call only (0 when called again).
        macs: multiply-accumulates per sample: ``C_out · H_out · W_out · (C_in / groups) · kH · kW``
            for ``nn.Conv2d``, ``in_features · out_features`` for ``nn.Linear``, 0 otherwise
            (biases, activations and pooling are not counted).
    """

    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    macs: int


def _macs(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        return output[0].numel() * per_output
    if isinstance(module, nn.Linear):
        return output[0].numel() // module.out_features * module.in_features * module.out_features
    return 0


def layer_table(model: nn.Module, input_shape: Sequence[int]) -> list[LayerInfo]:
    """Run one forward pass on zeros and record every leaf module's call, in call order.

    Args:
        model: any module; its leaf modules (those without children) are recorded.
        input_shape: full input shape including a batch dimension, for example (1, 1, 28, 28).

    Returns:
        One :class:`LayerInfo` per call. ``sum(row.params)`` equals the model's parameter count
        when every parameter lives in a leaf module.

    Raises:
        ValueError: ``input_shape`` is not a shape with a batch dimension >= 1.
    """
    if len(input_shape) < 2 or min(input_shape) < 1:
        raise ValueError(f"expected an input shape (B, ...) with positive sizes, got {tuple(input_shape)}")
    rows: list[LayerInfo] = []
    seen: set[int] = set()

    def record(name: str):
        def hook(module: nn.Module, inputs, output: torch.Tensor) -> None:
            params = 0 if id(module) in seen else sum(p.numel() for p in module.parameters())
            seen.add(id(module))
            rows.append(LayerInfo(name, type(module).__name__, tuple(output.shape[1:]), params, _macs(module, output)))

        return hook

    leaves = [(name, m) for name, m in model.named_modules() if not list(m.children())]
    handles = [m.register_forward_hook(record(name)) for name, m in leaves]
    try:
        parameter = next(model.parameters(), None)
        kwargs = {"device": parameter.device, "dtype": parameter.dtype} if parameter is not None else {}
        with eval_mode(model), torch.no_grad():
            model(torch.zeros(*input_shape, **kwargs))
    finally:
        for handle in handles:
            handle.remove()
    return rows


@dataclass(frozen=True)
class ReceptiveField:
    """Receptive field of one unit of a layer, in input pixels.

    Attributes:
        size: side of the square input region that can influence one unit.
        jump: input pixels between neighbouring units of this layer (the product of strides).
        start: input coordinate of the top-left corner of unit (0, 0)'s region (negative with padding).
    """

    size: int
    jump: int
    start: int

    def box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) input rows and columns, inclusive, seen by unit (row, col)."""
        top, left = self.start + row * self.jump, self.start + col * self.jump
        return top, left, top + self.size - 1, left + self.size - 1


def _square(value: int | tuple[int, ...], name: str) -> int:
    values = (value,) if isinstance(value, int) else tuple(value)
    if len(set(values)) != 1:
        raise ValueError(f"receptive_fields() handles square {name}s only, got {value!r}")
    return values[0]


def receptive_fields(layers: Sequence[nn.Module]) -> list[ReceptiveField]:
    """Receptive field after each layer of a chain of convolutions and poolings.

    With size r, jump j and start t before a layer of kernel k, stride s, padding p, dilation d:

    .. math:: r' = r + d(k - 1)\\,j, \\qquad j' = j\\,s, \\qquad t' = t - p\\,j

    starting from the input, r = j = 1, t = 0 (Araujo, Norris & Sim, 2019, "Computing
    Receptive Fields of Convolutional Neural Networks", Distill).

    Args:
        layers: ``nn.Conv2d``, ``nn.MaxPool2d`` and ``nn.AvgPool2d`` modules in the order they are applied.

    Returns:
        One :class:`ReceptiveField` per layer.

    Raises:
        ValueError: another kind of module, or a non-square kernel, stride, padding or dilation.
    """
    size, jump, start, fields = 1, 1, 0, []
    for layer in layers:
        if not isinstance(layer, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d):
            raise ValueError(f"expected nn.Conv2d, nn.MaxPool2d or nn.AvgPool2d layers, got {type(layer).__name__}")
        k = _square(layer.kernel_size, "kernel_size")
        s = _square(layer.stride, "stride")
        p = _square(layer.padding, "padding")
        d = _square(getattr(layer, "dilation", 1), "dilation")
        size, start, jump = size + d * (k - 1) * jump, start - p * jump, jump * s
        fields.append(ReceptiveField(size=size, jump=jump, start=start))
    return fields


def images_per_second(
    model: nn.Module, inputs: torch.Tensor, repeats: int = 5, autocast_dtype: torch.dtype | None = None
) -> float:
    """Inference throughput of ``model`` on the batch ``inputs``: the best of ``repeats`` timed passes.

    One untimed pass first (warm-up: memory allocation, kernel selection), then ``repeats`` passes,
    each timed with :class:`~companion.device.Timer` (which waits for the GPU); the fastest one counts,
    because slower ones measure interruptions, not the model. The model runs in ``eval()`` mode under
    :func:`torch.no_grad` (its mode is put back afterwards). The memory layout is that of ``inputs``
    and the model: convert both with ``memory_format=torch.channels_last`` to time that layout.

    Args:
        model: on the device of ``inputs``.
        inputs: one batch (B, ...), B >= 1, on the model's device; its layout is kept.
        repeats: timed passes, >= 1.
        autocast_dtype: run under ``torch.autocast`` with this dtype (``torch.bfloat16``; float16 on a
            GPU), or ``None`` for the model's own precision.

    Returns:
        Images per second, B divided by the fastest pass's seconds (> 0).

    Raises:
        ValueError: ``repeats < 1`` or an empty batch.
        TypeError: ``inputs`` is not a tensor.
    """
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a tensor (B, ...), got {type(inputs).__name__}")
    if repeats < 1 or inputs.dim() == 0 or inputs.shape[0] < 1:
        raise ValueError(f"need repeats >= 1 and a batch of >= 1 inputs, got repeats={repeats}, shape {tuple(inputs.shape)}")
    device = inputs.device
    amp = torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
    seconds = []
    with eval_mode(model), torch.no_grad(), amp:
        model(inputs)  # warm-up
        for _ in range(repeats):
            with Timer(device) as timer:
                model(inputs)
            seconds.append(timer.seconds)
    return inputs.shape[0] / min(seconds)
