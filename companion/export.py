"""Export: a PyTorch network saved as an ONNX graph and run in ONNX Runtime, in float32 or int8.

``torch.onnx.export(..., dynamo=True)`` captures the network with ``torch.export`` and translates the
graph into ONNX, a format that runtimes without Python or PyTorch read (ONNX Runtime on servers,
phones and browsers). ONNX Runtime's static quantisation (``quantize_static``, QDQ format) then
stores the weights as int8, per output channel, and runs convolutions and matrix products with
int8 kernels. The functions here add what those calls lack for the book's use: a file written all
at once, a dynamic batch dimension, and an ``nn.Module`` around an ONNX Runtime session, so that the
package's evaluation and timing helpers measure it like any network. They need the package's extra
``shipping`` (onnx, onnxscript, onnxruntime). Explained in the chapter "Shipping models".
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

from .utils import atomic_write, dynamic_batch_shapes, eval_mode

__all__ = ["OnnxRuntimeModule", "export_onnx", "quantize_onnx"]

_EXTRA = 'pip install "dl-cv-executable[shipping]" (or pip install onnx onnxscript onnxruntime)'


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"{module} is missing: {_EXTRA}") from error


def export_onnx(model: nn.Module, example_inputs: tuple[torch.Tensor, ...], path: str | os.PathLike) -> Path:
    """Export ``model`` to one ONNX file, its first input's batch dimension dynamic.

    ``torch.onnx.export`` with ``dynamo=True`` (``torch.export`` underneath), in eval mode, weights
    stored inside the file; the graph is checked with ``onnx.checker`` before the file is written, all
    at once (:func:`~companion.utils.atomic_write`): an export that fails leaves ``path`` as it was.

    Args:
        model: a network on the CPU; exported in eval mode (its own mode is put back).
        example_inputs: a tuple of example input tensors, the first a batch (B, ...) with B >= 2
            (``torch.export`` would fix a batch of 1 into the graph).
        path: the ``.onnx`` file to write (its folder is created).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ImportError: onnx or onnxscript is missing (the extra ``shipping``).
        TypeError: ``model`` is not an ``nn.Module`` or ``example_inputs`` not a tuple of tensors.
        ValueError: an example batch of fewer than 2.

    Source: PyTorch's ``torch.onnx.export`` documentation (the ``dynamo=True`` exporter).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(example_inputs, tuple) or not all(isinstance(x, torch.Tensor) for x in example_inputs):
        raise TypeError(f"example_inputs must be a tuple of tensors, got {type(example_inputs).__name__}")
    dynamic = dynamic_batch_shapes(example_inputs)
    onnx = _require("onnx")
    _require("onnxscript")
    with eval_mode(model):
        program = torch.onnx.export(
            model, example_inputs, dynamo=True, dynamic_shapes=dynamic, external_data=False, verbose=False
        )
    onnx.checker.check_model(program.model_proto)
    path = Path(path)
    with atomic_write(path) as out:
        out.write(program.model_proto.SerializeToString())
    return path


def quantize_onnx(
    source: str | os.PathLike, target: str | os.PathLike, calibration: Iterable[torch.Tensor],
    skip: Sequence[str] = (),
) -> Path:
    """Static int8 quantisation of an ONNX network with ONNX Runtime: weights and activations.

    ``onnxruntime.quantization.quant_pre_process`` (shape inference and graph optimisation, as ONNX
    Runtime recommends), then ``quantize_static`` in QDQ format: weights int8, symmetric, per output
    channel; activations uint8, per tensor, their ranges the minimum and maximum seen on the
    calibration batches. ``target`` is written all at once; ``source`` is not changed.

    Args:
        source: a float32 ``.onnx`` file with one input (for example from :func:`export_onnx`).
        target: the int8 ``.onnx`` file to write.
        calibration: float32 batches (B, ...) shaped like the network's input, at least one.
        skip: names of the PyTorch submodules whose operators stay float32 (as in
            :func:`companion.quantization.quantize_pt2e`). They are found through the module path
            the exporter records in each ONNX node (``pkg.torch.onnx.name_scopes``), so ``source``
            must come from :func:`export_onnx` (``torch.onnx.export(..., dynamo=True)``). A node that
            ONNX Runtime's pre-processing creates carries no such path and is quantised.

    Returns:
        ``target`` as a :class:`~pathlib.Path`.

    Raises:
        ImportError: onnxruntime is missing (the extra ``shipping``).
        FileNotFoundError: ``source`` does not exist.
        TypeError: ``skip`` is a string instead of a sequence of names.
        ValueError: the network has more than one input, ``calibration`` yields no batch, or a
            name in ``skip`` matches no node.

    Source: ONNX Runtime's documentation, "Quantize ONNX models" (static quantisation, QDQ format).
    """
    quantization = _require("onnxruntime.quantization")
    onnx = _require("onnx")
    source, target = Path(source), Path(target)
    if isinstance(skip, str) or not isinstance(skip, Sequence):
        raise TypeError(f"skip must be a sequence of module names, got {type(skip).__name__}")
    if not source.is_file():
        raise FileNotFoundError(f"no ONNX file at {source}")
    session = OnnxRuntimeModule(source)
    if len(session.input_names) != 1:
        raise ValueError(f"quantize_onnx handles networks with one input, got {session.input_names}")
    batches = [{session.input_names[0]: batch.detach().cpu().float().numpy()} for batch in calibration]
    if not batches:
        raise ValueError("calibration yielded no batch: need at least one to set the activations' ranges")

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self.batches = iter(batches)

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as folder:
        prepared, quantized = Path(folder) / "prepared.onnx", Path(folder) / "int8.onnx"
        quantization.quant_pre_process(str(source), str(prepared))
        excluded = _nodes_within(onnx.load(str(prepared)), skip)
        quantization.quantize_static(
            str(prepared), str(quantized), Reader(), quant_format=quantization.QuantFormat.QDQ,
            per_channel=True, activation_type=quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8, nodes_to_exclude=excluded,
        )  # fmt: skip
        with atomic_write(target) as out:
            out.write(quantized.read_bytes())
    return target


def _nodes_within(model, modules: Sequence[str]) -> list[str]:
    """Names of the ONNX nodes the exporter recorded as computed inside one of ``modules``."""
    import ast

    found: dict[str, list[str]] = {name: [] for name in modules}
    for node in model.graph.node:
        scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), "[]")
        for name in set(ast.literal_eval(scopes)) & found.keys():
            found[name].append(node.name)
    empty = [name for name, nodes in found.items() if not nodes]
    if empty:
        raise ValueError(f"skip names modules that no node of the ONNX graph was exported from: {empty}")
    return sorted({node for nodes in found.values() for node in nodes})


class OnnxRuntimeModule(nn.Module):
    """An ONNX Runtime session on the CPU, called like a PyTorch network: tensors in, a tensor out.

    ``forward`` hands the inputs to ``InferenceSession.run`` as float32 NumPy arrays and returns the
    first output as a tensor of the graph's output dtype (float32 for the book's networks) on the
    first input's device (computed on the CPU). No gradient flows through
    it; ``eval()``, ``evaluate``, ``predict`` and ``images_per_second`` work as on any module.

    Args:
        path: an ``.onnx`` file.
        num_threads: ONNX Runtime's intra-op threads; ``None`` uses ``torch.get_num_threads()``, the
            same number PyTorch computes with, so that timings compare like with like.

    Attributes:
        path: the file.
        input_names: the graph's input names, in order.

    Raises:
        ImportError: onnxruntime is missing (the extra ``shipping``).
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``num_threads`` < 1.
    """

    def __init__(self, path: str | os.PathLike, num_threads: int | None = None) -> None:
        super().__init__()
        runtime = _require("onnxruntime")
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no ONNX file at {self.path}")
        threads = torch.get_num_threads() if num_threads is None else num_threads
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"num_threads must be an int >= 1 or None, got {num_threads!r}")
        options = runtime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        self.session = runtime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.input_names = [node.name for node in self.session.get_inputs()]

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Run the graph: (B, ...) float32 tensors, as many as the graph's inputs, to its first output."""
        if len(inputs) != len(self.input_names):
            raise ValueError(f"the graph takes {len(self.input_names)} inputs {self.input_names}, got {len(inputs)}")
        feed = {name: x.detach().cpu().float().numpy() for name, x in zip(self.input_names, inputs)}
        output = self.session.run(None, feed)[0]
        return torch.from_numpy(output).to(inputs[0].device)
