"""int8 quantisation: storing a network's weights (and computing) with 8-bit integers.

An affine quantiser maps a real number :math:`x` to an integer :math:`q` with a scale :math:`s > 0` and
a zero point :math:`z` (Jacob et al., 2018):

.. math::
    q = \\operatorname{clamp}\\big(\\operatorname{round}(x / s) + z,\\; q_\\text{min},\\; q_\\text{max}\\big),
    \\qquad \\hat x = s\\,(q - z).

Weights are quantised *per output channel* and *symmetrically* (:math:`z = 0`), each channel with its
own scale :math:`s_c = \\max_i |w_{c,i}| \\,/\\, \\tfrac{q_\\text{max} - q_\\text{min}}{2}` — the rule of
PyTorch's ``PerChannelMinMaxObserver`` with ``torch.per_channel_symmetric``, which the x86 quantiser of
the PT2E flow uses for weights. The from-scratch functions here are tested equal to
``torch.quantize_per_channel`` on the same scales and zero points.

The library flow (:func:`quantize_pt2e`) is PyTorch's current one for convolutional networks:
``torch.export`` captures the network, the x86 quantiser annotates it, calibration batches set the
activations' scales, and ``convert_pt2e`` writes quantise/dequantise pairs around every quantised
operator. It lives in torchao (``torch.ao.quantization``'s eager API is deprecated), installed with
the package's extra ``shipping``. Explained in the chapter "Shipping models".
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from .utils import dynamic_batch_shapes, eval_mode

__all__ = [
    "dequantize_per_channel",
    "fake_quantize_weights",
    "layer_sensitivity",
    "per_channel_scales",
    "quantize_per_channel",
    "quantize_pt2e",
]

_RANGES = {torch.int8: (-128, 127), torch.uint8: (0, 255)}


def _check_weight(weight: torch.Tensor, axis: int) -> None:
    if not isinstance(weight, torch.Tensor) or weight.dtype != torch.float32:
        kind = weight.dtype if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise TypeError(f"weight must be a float32 tensor (as torch.quantize_per_channel needs), got {kind}")
    if isinstance(axis, bool) or not isinstance(axis, int) or not 0 <= axis < weight.dim():
        raise ValueError(f"axis must be an int in [0, {weight.dim()}) for a weight of shape {tuple(weight.shape)}, got {axis!r}")


def _check_range(dtype: torch.dtype, quant_min: int | None, quant_max: int | None) -> tuple[int, int]:
    if dtype not in _RANGES:
        raise ValueError(f"dtype must be torch.int8 or torch.uint8, got {dtype}")
    low, high = _RANGES[dtype]
    quant_min = low if quant_min is None else quant_min
    quant_max = high if quant_max is None else quant_max
    if not low <= quant_min < quant_max <= high:
        raise ValueError(f"need {low} <= quant_min < quant_max <= {high} for {dtype}, got {quant_min}, {quant_max}")
    return quant_min, quant_max


def _along(values: torch.Tensor, weight: torch.Tensor, axis: int) -> torch.Tensor:
    """Reshape per-channel ``values`` (C,) to broadcast against ``weight`` along ``axis``."""
    shape = [1] * weight.dim()
    shape[axis] = -1
    return values.reshape(shape)


def per_channel_scales(
    weight: torch.Tensor, axis: int = 0, dtype: torch.dtype = torch.int8,
    quant_min: int | None = None, quant_max: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-channel scales and zero points: PyTorch's ``PerChannelMinMaxObserver`` rule.

    :math:`s_c = \\max(|w_c|_\\infty / \\tfrac{q_\\text{max} - q_\\text{min}}{2},\\ \\varepsilon)` with
    :math:`\\varepsilon` float32's machine epsilon, so an all-zero channel gets a positive scale; the
    zero point is 0 for int8 and the middle of the range for uint8 (128 for the full range,
    ``(quant_min + quant_max) // 2`` for a narrower one).

    Args:
        weight: float32, any shape with at least one dimension (a convolution's (C_out, C_in / groups, k, k)).
        axis: the channel dimension, in [0, weight.dim()).
        dtype: ``torch.int8`` (default, range [-128, 127]) or ``torch.uint8`` ([0, 255]).
        quant_min, quant_max: a narrower integer range, or ``None`` for the dtype's full range.

    Returns:
        ``(scales, zero_points)``: float32 (C,) > 0 and int64 (C,), C = ``weight.shape[axis]``.

    Raises:
        TypeError: ``weight`` is not a float32 tensor.
        ValueError: ``axis`` outside the weight's dimensions; another dtype; a range outside the dtype's.

    Source: ``torch.ao.quantization.observer.PerChannelMinMaxObserver`` (``qscheme=torch.per_channel_symmetric``).
    """
    _check_weight(weight, axis)
    quant_min, quant_max = _check_range(dtype, quant_min, quant_max)
    dims = [d for d in range(weight.dim()) if d != axis]
    amax = weight.detach().abs().amax(dim=dims) if dims else weight.detach().abs()
    scales = torch.clamp(amax / ((quant_max - quant_min) / 2), min=torch.finfo(torch.float32).eps)
    if dtype == torch.int8:
        zero = 0
    else:  # uint8: the middle of the range, 128 for the full one (PyTorch's observer does the same)
        zero = 128 if (quant_min, quant_max) == _RANGES[torch.uint8] else (quant_min + quant_max) // 2
    return scales.float(), torch.full_like(scales, zero, dtype=torch.int64)


def _check_qparams(weight: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor, axis: int) -> None:
    channels = weight.shape[axis]
    if not isinstance(scales, torch.Tensor) or scales.shape != (channels,) or not scales.is_floating_point():
        raise ValueError(f"scales must be a floating-point tensor of shape ({channels},), got {getattr(scales, 'shape', scales)}")
    if not bool((scales > 0).all()):
        raise ValueError("scales must all be > 0")
    if not isinstance(zero_points, torch.Tensor) or zero_points.shape != (channels,) or zero_points.is_floating_point():
        raise ValueError(f"zero_points must be an integer tensor of shape ({channels},), got {getattr(zero_points, 'shape', zero_points)}")


def quantize_per_channel(
    weight: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor, axis: int = 0,
    dtype: torch.dtype = torch.int8, quant_min: int | None = None, quant_max: int | None = None,
) -> torch.Tensor:
    """Quantise ``weight`` channel by channel: :math:`\\operatorname{clamp}(\\operatorname{round}(w / s_c) + z_c)`.

    As in PyTorch, :math:`w / s_c` is computed as :math:`w \\cdot (1 / s_c)` in float32 (the two can
    differ in the last bit, and then round differently), and rounding is half to even
    (``torch.round``). Equal to ``torch.ops.quantized_decomposed.quantize_per_channel`` (the operator
    of a PT2E-quantised graph) and to ``torch.quantize_per_channel(...).int_repr()`` on the same scales.

    Args:
        weight: float32, any shape; ``weight.shape[axis]`` = C channels.
        scales: (C,) floating point, > 0 (for example from :func:`per_channel_scales`).
        zero_points: (C,) integers.
        axis: the channel dimension.
        dtype: ``torch.int8`` or ``torch.uint8``, the result's dtype.
        quant_min, quant_max: the clamp range, or ``None`` for the dtype's.

    Returns:
        The integers, ``weight``'s shape, dtype ``dtype``.

    Raises:
        TypeError: ``weight`` is not a float32 tensor.
        ValueError: a bad ``axis``, dtype or range; ``scales`` or ``zero_points`` of the wrong shape or
            kind, or a scale <= 0.

    Source: Jacob et al., "Quantization and training of neural networks for efficient
    integer-arithmetic-only inference" (2018), equation (1); PyTorch's ``quantize_per_channel``.
    """
    _check_weight(weight, axis)
    quant_min, quant_max = _check_range(dtype, quant_min, quant_max)
    _check_qparams(weight, scales, zero_points, axis)
    inverse = 1.0 / _along(scales.float(), weight, axis)  # PyTorch multiplies by 1 / s (not x / s)
    q = torch.round(weight * inverse) + _along(zero_points, weight, axis)
    return torch.clamp(q, quant_min, quant_max).to(dtype)


def dequantize_per_channel(
    q: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor, axis: int = 0
) -> torch.Tensor:
    """The real values the integers stand for: :math:`\\hat w = s_c\\,(q - z_c)`, float32.

    Args:
        q: int8 or uint8 integers, any shape; ``q.shape[axis]`` = C.
        scales: (C,) floating point, > 0.
        zero_points: (C,) integers.
        axis: the channel dimension.

    Returns:
        float32, ``q``'s shape.

    Raises:
        TypeError: ``q`` is not an int8 or uint8 tensor.
        ValueError: a bad ``axis``; ``scales`` or ``zero_points`` of the wrong shape or kind.
    """
    if not isinstance(q, torch.Tensor) or q.dtype not in _RANGES:
        kind = q.dtype if isinstance(q, torch.Tensor) else type(q).__name__
        raise TypeError(f"q must be an int8 or uint8 tensor, got {kind}")
    if isinstance(axis, bool) or not isinstance(axis, int) or not 0 <= axis < q.dim():
        raise ValueError(f"axis must be an int in [0, {q.dim()}), got {axis!r}")
    _check_qparams(q, scales, zero_points, axis)
    shifted = q.to(torch.int64) - _along(zero_points, q, axis)
    return (shifted * _along(scales.float(), q, axis)).float()


def fake_quantize_weights(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose Conv2d and Linear weights are replaced by their int8 round trip.

    Each weight becomes :func:`dequantize_per_channel` of :func:`quantize_per_channel` with
    :func:`per_channel_scales` (int8, symmetric, per output channel); biases, other layers and the
    activations stay float32. The copy computes what an int8-weight network computes, in float32: it
    measures the error of weight quantisation alone. ``model`` is not changed.

    Args:
        model: an ``nn.Module`` with float32 weights.

    Returns:
        The copy (same class, same device).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or a Conv2d or Linear weight is not float32.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    copied = copy.deepcopy(model)
    with torch.no_grad():
        for module in copied.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                _round_trip_(module.weight)
    return copied


def _round_trip_(weight: torch.Tensor) -> None:
    """Replace ``weight`` in place by its int8 per-channel round trip."""
    scales, zero_points = per_channel_scales(weight)
    weight.copy_(dequantize_per_channel(quantize_per_channel(weight, scales, zero_points), scales, zero_points))


def layer_sensitivity(model: nn.Module, inputs: torch.Tensor) -> list[tuple[str, float]]:
    """How much quantising each layer's weights alone changes the network's output.

    For every ``nn.Conv2d`` and ``nn.Linear`` in turn, its weight is replaced by its int8 round
    trip (as in :func:`fake_quantize_weights`), the network runs on ``inputs``, and the weight is put
    back. The score is the mean over the batch of :math:`\\lVert \\hat y - y \\rVert / \\lVert y \\rVert`,
    the output's relative change: the per-layer analysis that Nagel et al.'s white paper recommends
    before choosing which layers to keep in higher precision. ``model`` is unchanged afterwards
    (in eval mode if it was).

    Args:
        model: a float32 network; it runs in eval mode.
        inputs: one batch (B, ...) for ``model``, B >= 1, on its device.

    Returns:
        ``(layer name, relative change)`` pairs, the most sensitive first; changes >= 0.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or a weight is not float32.
        ValueError: ``model`` has no Conv2d or Linear layer, or its output is all zero for an input.

    Source: Nagel et al., "A white paper on neural network quantization" (2021), section 4.8.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Conv2d or Linear layer to quantise")
    scores = []
    with eval_mode(model), torch.no_grad():
        reference = model(inputs).flatten(1)
        if not bool((reference.norm(dim=1) > 0).all()):
            raise ValueError("the network's output is all zero for an input: a relative change is undefined")
        for name, layer in layers:
            original = layer.weight.detach().clone()
            try:
                _round_trip_(layer.weight)
                change = (model(inputs).flatten(1) - reference).norm(dim=1) / reference.norm(dim=1)
            finally:
                layer.weight.copy_(original)
            scores.append((name, change.mean().item()))
    return sorted(scores, key=lambda pair: -pair[1])


def quantize_pt2e(
    model: nn.Module, example_inputs: tuple[torch.Tensor, ...], calibration: Iterable[torch.Tensor],
    skip: Sequence[str] = (),
) -> nn.Module:
    """Post-training static int8 quantisation with PyTorch's PT2E flow and the x86 quantiser (torchao).

    The steps: ``torch.export.export`` on ``example_inputs`` (the batch size of the example is kept
    dynamic), ``prepare_pt2e`` with ``X86InductorQuantizer`` and its default configuration (weights
    int8 symmetric per channel, activations uint8 per tensor), one forward pass per calibration batch to
    set the activations' scales, then ``convert_pt2e``. The result holds int8 weights and runs
    quantise/dequantise pairs in eager mode (a reference, slower than float32); ``torch.compile`` lowers
    it to int8 kernels. The float32 weights the graph no longer reads are deleted, so the state dict
    holds what the network needs. ``.eval()`` works on it (``allow_exported_model_train_eval``).

    Args:
        model: a float32 network on the CPU; captured in eval mode (its own mode is put back).
        example_inputs: a tuple of example inputs on the CPU, the first a batch (B, ...) with B >= 2.
        calibration: batches like ``example_inputs[0]``, at least one.
        skip: names of submodules (as ``model.named_modules()`` gives them) left in float32, with
            everything inside them: the layers a sensitivity analysis finds that int8 harms most.

    Returns:
        The quantised network, a ``torch.fx.GraphModule``.

    Raises:
        ImportError: torchao is missing (install the package's extra: ``pip install "dl-cv-executable[shipping]"``).
        TypeError: ``model`` is not an ``nn.Module``, ``example_inputs`` not a tuple of tensors, or
            ``skip`` a string instead of a sequence of names.
        ValueError: ``calibration`` yields no batch, a name in ``skip`` is not a submodule of ``model``,
            an example batch of fewer than 2, or a network or input not on the CPU.

    Source: PyTorch's "PyTorch 2 Export post training quantization" and "x86 backend with Inductor" tutorials.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(example_inputs, tuple) or not all(isinstance(x, torch.Tensor) for x in example_inputs):
        raise TypeError(f"example_inputs must be a tuple of tensors, got {type(example_inputs).__name__}")
    # torchao registers an Enum with torch's pytree the way newer torch deprecates, and torch logs a
    # warning meant for torchao's maintainers at import: silenced for the import only.
    pytree_log = logging.getLogger("torch.utils._pytree")
    level = pytree_log.level
    pytree_log.setLevel(logging.ERROR)
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86
        from torchao.quantization.pt2e import allow_exported_model_train_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as error:
        raise ImportError(
            'quantize_pt2e needs torchao: pip install "dl-cv-executable[shipping]" (or pip install torchao)'
        ) from error
    finally:
        pytree_log.setLevel(level)
    _check_skip(model, skip)
    dynamic = dynamic_batch_shapes(example_inputs)
    _check_on_cpu(model, example_inputs)
    with eval_mode(model):
        exported = torch.export.export(model, example_inputs, dynamic_shapes=dynamic).module()
    quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
    for name in skip:
        quantizer.set_module_name_qconfig(name, None)
    prepared = prepare_pt2e(exported, quantizer)
    seen = 0
    with torch.no_grad():
        for inputs in calibration:
            prepared(inputs)
            seen += 1
    if not seen:
        raise ValueError("calibration yielded no batch: need at least one to set the activations' scales")
    quantized = convert_pt2e(prepared)
    _drop_unread_tensors(quantized)
    allow_exported_model_train_eval(quantized)
    return quantized


def _check_on_cpu(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> None:
    """The x86 quantiser's target: the network and the example inputs on the CPU."""
    if any(t.device.type != "cpu" for t in [*model.parameters(), *model.buffers(), *example_inputs]):
        raise ValueError("the network and example_inputs must be on the CPU (the x86 quantiser's target)")


def _check_skip(model: nn.Module, skip: Sequence[str]) -> None:
    """``skip`` must be a sequence of names of ``model``'s submodules (not one string)."""
    if isinstance(skip, str) or not isinstance(skip, Sequence):
        raise TypeError(f"skip must be a sequence of module names, got {type(skip).__name__}")
    names = {name for name, _ in model.named_modules() if name}
    unknown = [name for name in skip if name not in names]
    if unknown:
        raise ValueError(f"skip names no submodule of {type(model).__name__}: {unknown}")


def _drop_unread_tensors(graph_module: torch.fx.GraphModule) -> None:
    """Delete the parameters and buffers the graph no longer reads (the float32 weights it replaced)."""
    read = {node.target for node in graph_module.graph.nodes if node.op == "get_attr"}
    names = [n for n, _ in graph_module.named_parameters()] + [n for n, _ in graph_module.named_buffers()]
    for name in names:
        if name not in read:
            owner, _, attribute = name.rpartition(".")
            delattr(graph_module.get_submodule(owner), attribute)
