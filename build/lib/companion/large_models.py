"""Training large models: where a training step's memory goes, and the techniques that cut it.

A training step holds four kinds of tensors: the weights, their gradients, the optimizer's
state, and the activations autograd saves for the backward pass. This module counts them from
the tensors themselves (:func:`state_bytes`, :class:`SavedTensorMeter`), writes activation
checkpointing from its definition (:func:`checkpoint`, :func:`checkpoint_sequential`, equal to
:func:`torch.utils.checkpoint.checkpoint` in values and gradients), and accumulates gradients
over micro-batches (:func:`accumulate_gradients`). Sharded data parallelism is PyTorch's own
FSDP2 (:func:`torch.distributed.fsdp.fully_shard`, Zhao et al., 2023), not re-implemented:
:func:`train_sharded` runs it, and ``python -m companion shard`` launches it under
``torchrun``::

    torchrun --standalone --nproc-per-node=2 -m companion shard OUT --strategy fsdp

Sources: Chen et al., "Training deep nets with sublinear memory cost", 2016 (checkpointing);
Rajbhandari et al., "ZeRO: memory optimizations toward training trillion parameter models", 2020
(the bytes per parameter, the sharding stages); Micikevicius et al., "Mixed precision training",
2018. Explained in the chapter "Training large models".
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = [
    "BYTES_PER_PARAMETER",
    "SavedTensorMeter",
    "StateBytes",
    "accumulate_gradients",
    "checkpoint",
    "checkpoint_sequential",
    "state_bytes",
    "tensor_bytes",
    "train_sharded",
]

#: Bytes per parameter a training step keeps besides activations, as published. fp32 AdamW:
#: fp32 weights and gradients, two fp32 moments. Mixed-precision Adam as ZeRO counts it
#: (Rajbhandari et al., 2020, Section 3.1): fp16 weights and gradients, and an fp32 master
#: copy of the weights plus two fp32 moments (4 + 4 + 4 = 12) in the optimizer.
BYTES_PER_PARAMETER: dict[str, dict[str, int]] = {
    "fp32 AdamW": {"weights": 4, "gradients": 4, "optimizer state": 8},
    "mixed-precision Adam (ZeRO)": {"weights": 2, "gradients": 2, "optimizer state": 12},
}

_TORCH_CHECKPOINT_OPTIONS = ("use_reentrant", "context_fn", "determinism_check", "debug", "early_stop")


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes of a tensor's elements: ``numel × element_size``; a DTensor counts its local shard.

    Works on the meta device (a shape and a dtype are enough). Views count their own elements,
    not the storage they look into.

    Raises:
        TypeError: ``tensor`` is not a tensor.
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"expected a tensor, got {type(tensor).__name__}")
    if hasattr(tensor, "to_local"):  # a DTensor (FSDP2's sharded parameter): this process's shard
        tensor = tensor.to_local()
    return tensor.numel() * tensor.element_size()


@dataclass(frozen=True)
class StateBytes:
    """Bytes a training step keeps between steps, counted from the tensors.

    Attributes:
        parameters: the model's parameters (each tensor once).
        gradients: their ``.grad`` tensors where present.
        optimizer_state: every tensor in the optimizer's state for these parameters (Adam's two
            moments, and its ``step`` counters: one 4-byte scalar per parameter tensor).
    """

    parameters: int
    gradients: int
    optimizer_state: int

    @property
    def total(self) -> int:
        """The three together, in bytes."""
        return self.parameters + self.gradients + self.optimizer_state


def state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> StateBytes:
    """Count the bytes of a model's parameters, gradients and optimizer state.

    Under FSDP2 each parameter is a DTensor and the counts are this process's shards. The
    optimizer's state exists only after its first ``step()``; before that it counts 0.

    Args:
        model: any module, on any device (the meta device included).
        optimizer: the optimizer over ``model``'s parameters, or ``None`` (counts 0).

    Returns:
        A :class:`StateBytes`, in bytes.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or ``optimizer`` not an optimizer.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    parameters = list(model.parameters())  # each tensor once, also when shared
    state = optimizer.state if optimizer is not None else {}
    return StateBytes(
        parameters=sum(tensor_bytes(p) for p in parameters),
        gradients=sum(tensor_bytes(p.grad) for p in parameters if p.grad is not None),
        optimizer_state=sum(
            tensor_bytes(value)
            for p in parameters
            for value in state.get(p, {}).values()
            if isinstance(value, torch.Tensor)
        ),
    )


class _Packed:
    """What autograd stores instead of a saved tensor while a meter counts: its lifetime is the saved tensor's.

    It holds the tensor detached: an operation that saves its own output would otherwise make a
    reference cycle (output → grad_fn → saved variable → this object → output) that Python's
    garbage collector cannot see into, and the graph would never be freed.
    """

    __slots__ = ("tensor", "meter", "key")

    def __init__(self, tensor: torch.Tensor, meter: SavedTensorMeter, key: tuple | None) -> None:
        self.tensor, self.meter, self.key = tensor, meter, key

    def __del__(self) -> None:  # autograd released the saved tensor (after backward, or with the graph)
        if self.key is not None:
            self.meter._release(self.key)


class SavedTensorMeter:
    """Count the bytes autograd saves for the backward pass: live, at peak, and in all.

    A context manager around :func:`torch.autograd.graph.saved_tensors_hooks`. Every tensor an
    operation saves for its backward passes through the hook; the meter counts the storage it
    lives in once (several views of one storage count once: the storage is what stays in
    memory) and stops counting it when autograd releases it. Storages of the tensors in
    ``exclude`` (the model's parameters: a linear layer saves its weight) are not counted, so
    the result is the activation memory. Run ``backward()`` inside the context too, to count
    what checkpointing recomputes (the hooks apply only inside it): this works for
    :func:`checkpoint` and PyTorch's reentrant checkpoint, not for
    ``torch.utils.checkpoint(..., use_reentrant=False)``, whose own hooks take over inside its
    segments. The excluded storages are fixed when the meter is made (FSDP's gathered weights,
    allocated later, would count as activations). Gradients, the optimizer and temporaries that are not
    saved are not counted: this is the part of a step's memory that grows with the batch.

    Args:
        exclude: tensors whose storages are not counted, usually ``model.parameters()``.

    Attributes:
        saved_bytes: bytes saved and not yet released, now.
        peak_bytes: the largest ``saved_bytes`` seen (during backward, checkpointing recomputes
            a segment and saves its tensors again: the peak includes them).
        total_bytes: bytes of every storage saved, released or not.
        peak_bytes_by_dtype: ``saved_bytes`` per dtype at the peak.

    Raises:
        ValueError: a saved tensor is on the meta device (it has no storage to count; measure on
            a real device with a small batch).

    Examples:
        >>> layer = nn.Linear(3, 2)
        >>> with SavedTensorMeter(exclude=layer.parameters()) as meter:
        ...     loss = layer(torch.ones(4, 3)).sum()
        >>> meter.saved_bytes  # the input, 4 x 3 float32 (the weight is excluded)
        48
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        self._excluded = {_storage_key(t) for t in exclude}
        self._count: dict[tuple, int] = {}
        self._dtype: dict[tuple, tuple[torch.dtype, int]] = {}
        self.saved_bytes = self.peak_bytes = self.total_bytes = 0
        self.peak_bytes_by_dtype: dict[torch.dtype, int] = {}
        self._live_by_dtype: dict[torch.dtype, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def __enter__(self) -> SavedTensorMeter:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._hooks.__exit__(*exc_info)

    def _pack(self, tensor: torch.Tensor) -> _Packed:
        if tensor.device.type == "meta":
            raise ValueError("a saved tensor is on the meta device: it has no storage to count; "
                             "measure on a real device (a small batch), then scale")
        key = _storage_key(tensor)
        if key in self._excluded or key[2] == 0:
            return _Packed(tensor.detach(), self, None)
        if key not in self._count:
            nbytes = tensor.untyped_storage().nbytes()
            self._count[key], self._dtype[key] = 0, (tensor.dtype, nbytes)
            self.saved_bytes += nbytes
            self.total_bytes += nbytes
            self._live_by_dtype[tensor.dtype] = self._live_by_dtype.get(tensor.dtype, 0) + nbytes
            if self.saved_bytes > self.peak_bytes:
                self.peak_bytes = self.saved_bytes
                self.peak_bytes_by_dtype = dict(self._live_by_dtype)
        self._count[key] += 1
        return _Packed(tensor.detach(), self, key)  # detached: no cycle through grad_fn

    @staticmethod
    def _unpack(packed: _Packed) -> torch.Tensor:
        return packed.tensor

    def _release(self, key: tuple) -> None:
        self._count[key] -= 1
        if self._count[key] == 0:
            del self._count[key]
            dtype, nbytes = self._dtype.pop(key)
            self.saved_bytes -= nbytes
            self._live_by_dtype[dtype] -= nbytes


def _storage_key(tensor: torch.Tensor) -> tuple:
    storage = tensor.untyped_storage()
    return (tensor.device.type, tensor.device.index, storage.data_ptr() if storage.nbytes() else 0)


class _Checkpoint(torch.autograd.Function):
    """Forward without saving activations; in backward, run the segment again with autograd on."""

    @staticmethod
    def forward(ctx, run: Callable, preserve_rng_state: bool, _anchor: torch.Tensor, *args: object):
        ctx.run, ctx.preserve_rng_state = run, preserve_rng_state
        ctx.autocast = [(kind, torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind))
                        for kind in _autocast_device_types()]
        if preserve_rng_state:  # dropout must draw the same masks when the segment runs again
            devices = {a.device for a in args if isinstance(a, torch.Tensor) and a.device.type != "cpu"}
            ctx.rng_states = _rng_states(sorted(devices, key=str))
        ctx.positions = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
        ctx.others = [None if isinstance(a, torch.Tensor) else a for a in args]
        ctx.save_for_backward(*(args[i] for i in ctx.positions))  # only the segment's inputs
        outputs = run(*args)  # grad mode is off inside forward: nothing is saved
        if isinstance(outputs, torch.Tensor):
            return outputs
        if isinstance(outputs, tuple) and all(isinstance(o, torch.Tensor) for o in outputs):
            return outputs
        raise TypeError(f"checkpoint: the function must return a tensor or a tuple of tensors, "
                        f"got {type(outputs).__name__}")

    @staticmethod
    def backward(ctx, *grad_outputs: torch.Tensor):
        if torch.is_grad_enabled():
            raise ValueError("checkpoint: double backward (create_graph=True) is not implemented; "
                             "use torch.utils.checkpoint.checkpoint(..., use_reentrant=False)")
        args = list(ctx.others)
        for i, saved in zip(ctx.positions, ctx.saved_tensors):
            args[i] = saved.detach().requires_grad_(saved.requires_grad)
        current = _rng_states(list(ctx.rng_states)[1:]) if ctx.preserve_rng_state else None
        try:
            if ctx.preserve_rng_state:
                _set_rng_states(ctx.rng_states)
            with torch.enable_grad(), _autocast_as(ctx.autocast):
                outputs = ctx.run(*args)
        finally:  # the caller's random stream continues as if nothing had been recomputed
            if current is not None:
                _set_rng_states(current)
        outputs = (outputs,) if isinstance(outputs, torch.Tensor) else outputs
        pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if o.requires_grad and g is not None]
        if pairs:  # parameter gradients accumulate into .grad here, as in any backward()
            torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        grads = [a.grad if isinstance(a, torch.Tensor) else None for a in args]
        return (None, None, None, *grads)


def _autocast_device_types() -> list[str]:
    kinds = ["cpu"]
    if torch.cuda.is_available():
        kinds.append("cuda")
    if torch.backends.mps.is_available():
        kinds.append("mps")
    return kinds


def _rng_states(devices: list[torch.device]) -> dict:
    """The CPU's random state, then each device's (CUDA or MPS), keyed by device."""
    states: dict = {"cpu": torch.get_rng_state()}
    for device in devices:
        if device.type == "cuda":
            states[device] = torch.cuda.get_rng_state(device)
        elif device.type == "mps":
            states[device] = torch.mps.get_rng_state()
        else:
            raise ValueError(f"checkpoint: preserve_rng_state on {device.type} tensors is not implemented "
                             "(CPU, CUDA and MPS are); pass preserve_rng_state=False or use "
                             "torch.utils.checkpoint.checkpoint")
    return states


def _set_rng_states(states: dict) -> None:
    for device, state in states.items():
        if device == "cpu":
            torch.set_rng_state(state)
        elif device.type == "cuda":
            torch.cuda.set_rng_state(state, device)
        else:
            torch.mps.set_rng_state(state)


def _autocast_as(recorded: list[tuple[str, bool, torch.dtype]]) -> contextlib.ExitStack:
    """Re-enter the autocast state recorded in forward (backward runs outside the user's ``autocast``)."""
    stack = contextlib.ExitStack()
    for kind, enabled, dtype in recorded:
        stack.enter_context(torch.autocast(kind, dtype=dtype, enabled=enabled))
    return stack


def checkpoint(function: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]], *args: object,
               preserve_rng_state: bool = True, **kwargs: object) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Run ``function(*args, **kwargs)`` without keeping its activations; recompute them in backward.

    Activation checkpointing (Chen et al., 2016): the forward pass runs the segment with autograd
    off, keeping only its inputs; the backward pass runs it again with autograd on, from the same
    random state (so dropout draws the same masks) and the same autocast state, and
    back-propagates through the recomputed graph. Memory: the segment's inputs instead of
    everything it would save; cost: one more forward pass of the segment.

    Equal in values and gradients to ``torch.utils.checkpoint.checkpoint(function, *args,
    use_reentrant=False)`` when the tensors that require grad are positional arguments or
    leaves the function uses (a module's parameters). Like PyTorch's reentrant variant, the
    forward pass runs under ``no_grad`` (a module that branches on grad mode may take another
    path than in the recomputation) and parameter gradients are accumulated into ``.grad`` by
    an inner ``backward()``, also when the outer call is :func:`torch.autograd.grad`; double
    backward (``create_graph=True``) is refused. A private zero-size tensor that
    requires grad is passed along, so that the output requires grad even when no input does
    (the first segment of a network, whose input is the images).

    Args:
        function: the segment; returns a tensor or a tuple of tensors.
        *args: its positional arguments (tensors are saved; others are kept as they are).
        preserve_rng_state: restore the CPU's random state, and that of the inputs' CUDA or MPS
            devices, before recomputing, as PyTorch does by default (and the caller's afterwards).
        **kwargs: passed to ``function``.

    Returns:
        What ``function`` returns.

    Raises:
        TypeError: ``function`` is not callable, ``preserve_rng_state`` is not a bool, a tensor
            that requires grad is passed as a keyword argument or inside a container (pass it
            positionally), or the function returns something other than a tensor or a tuple
            of tensors.
        ValueError: one of PyTorch's options this version lacks (``use_reentrant``,
            ``context_fn``, ``determinism_check``, ``debug``, ``early_stop``), or
            ``preserve_rng_state`` with inputs on a device other than the CPU, CUDA or MPS.
    """
    if not callable(function):
        raise TypeError(f"checkpoint: function must be callable, got {type(function).__name__}")
    if not isinstance(preserve_rng_state, bool):
        raise TypeError(f"checkpoint: preserve_rng_state must be a bool, got {preserve_rng_state!r}")
    unsupported = [name for name in _TORCH_CHECKPOINT_OPTIONS if name in kwargs]
    if unsupported:
        raise ValueError(f"checkpoint: torch.utils.checkpoint's option(s) {unsupported} are not "
                         "implemented here; use torch.utils.checkpoint.checkpoint for them")
    nested = [f"keyword {name!r}" for name, value in kwargs.items() if _holds_tensor_requiring_grad(value, True)]
    nested += [f"argument {i}" for i, value in enumerate(args) if _holds_tensor_requiring_grad(value, False)]
    if nested:
        raise TypeError(f"checkpoint: tensors that require grad must be positional arguments, "
                        f"not keyword arguments or inside containers: {nested}")
    run = functools.partial(function, **kwargs) if kwargs else function
    if not torch.is_grad_enabled():  # nothing would be saved anyway
        return run(*args)
    anchor = torch.empty(0, requires_grad=True)
    return _Checkpoint.apply(run, preserve_rng_state, anchor, *args)


def _holds_tensor_requiring_grad(value: object, top: bool) -> bool:
    """A tensor that requires grad in a keyword argument (``top``) or inside a list, tuple or dict."""
    if isinstance(value, torch.Tensor):
        return top and value.requires_grad
    if isinstance(value, list | tuple):
        return any(_holds_tensor_requiring_grad(v, True) for v in value)
    if isinstance(value, dict):
        return any(_holds_tensor_requiring_grad(v, True) for v in value.values())
    return False


def checkpoint_sequential(functions: nn.Sequential | Sequence[Callable[[torch.Tensor], torch.Tensor]],
                          segments: int, input: torch.Tensor, preserve_rng_state: bool = True) -> torch.Tensor:
    """Run layers one after another in ``segments`` segments, checkpointing all but the last.

    Splits like ``torch.utils.checkpoint.checkpoint_sequential``: segments of
    ``len(functions) // segments`` layers, the last segment taking the remainder and running
    without checkpointing (its activations are needed at once by backward). With n layers and
    k segments, forward keeps k − 1 segment inputs and the last segment's activations; backward
    recomputes one segment at a time, so the peak is about k + n / k layers' activations,
    smallest at k = √n (Chen et al., 2016).

    Args:
        functions: an ``nn.Sequential`` or a list of modules or functions of one tensor.
        segments: k, an int in [1, number of layers].
        input: the first layer's input.
        preserve_rng_state: see :func:`checkpoint`.

    Returns:
        The last layer's output.

    Raises:
        TypeError: ``segments`` is not an int.
        ValueError: ``segments`` is outside [1, number of layers].
    """
    layers = list(functions.children()) if isinstance(functions, nn.Sequential) else list(functions)
    if not isinstance(segments, int) or isinstance(segments, bool):
        raise TypeError(f"segments must be an int, got {type(segments).__name__}")
    if not 1 <= segments <= len(layers):
        raise ValueError(f"segments must be in [1, {len(layers)}] (the number of layers), got {segments}")

    def run(start: int, end: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def forward(x: torch.Tensor) -> torch.Tensor:
            for layer in layers[start:end]:
                x = layer(x)
            return x

        return forward

    size = len(layers) // segments
    for start in range(0, size * (segments - 1), size):
        input = checkpoint(run(start, start + size), input, preserve_rng_state=preserve_rng_state)
    last = size * (segments - 1)
    return run(last, len(layers))(input)


def accumulate_gradients(model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                         inputs: torch.Tensor, targets: torch.Tensor, micro_batches: int) -> torch.Tensor:
    """Back-propagate a batch's mean loss in ``micro_batches`` pieces; gradients add up in ``.grad``.

    Each micro-batch's mean loss is weighted by its share of the batch (its size over the
    batch's), so that the accumulated gradient is the gradient of the whole batch's mean loss
    also when the pieces differ in size. Exact for networks whose layers treat samples
    independently and whose loss is a plain mean over samples; batch normalisation normalises
    each micro-batch with its own statistics and is not, and neither is a mean that weights
    samples unequally (``ignore_index``, class weights in ``cross_entropy``). Does not zero
    the gradients first and does not step: call ``optimizer.zero_grad()`` before and
    ``optimizer.step()`` after, as for one batch.

    Args:
        model: the network.
        loss_fn: ``loss_fn(outputs, targets)``, a mean over the samples (as PyTorch's losses by default).
        inputs: (B, ...) tensor.
        targets: (B, ...) tensor.
        micro_batches: k, an int in [1, B]; pieces as ``torch.tensor_split`` cuts them.

    Returns:
        The batch's mean loss, a detached scalar tensor.

    Raises:
        TypeError: ``micro_batches`` is not an int.
        ValueError: ``micro_batches`` outside [1, B], or ``inputs`` and ``targets`` of different lengths.
    """
    if not isinstance(micro_batches, int) or isinstance(micro_batches, bool):
        raise TypeError(f"micro_batches must be an int, got {type(micro_batches).__name__}")
    if len(inputs) != len(targets):
        raise ValueError(f"inputs and targets must have the same length, got {len(inputs)} and {len(targets)}")
    if not 1 <= micro_batches <= len(inputs):
        raise ValueError(f"micro_batches must be in [1, {len(inputs)}] (the batch size), got {micro_batches}")
    total = 0
    for x, y in zip(inputs.tensor_split(micro_batches), targets.tensor_split(micro_batches)):
        loss = loss_fn(model(x), y) * (len(x) / len(inputs))
        loss.backward()
        total = total + loss.detach()
    return total


# ---- Sharded data parallelism: PyTorch's FSDP2, launched with torchrun ---------------------------------


def _mnist_batches(steps: int, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from .data import load_dataset

    split = load_dataset("mnist", train=True, download=True)
    images = split.normalize(split.images[: steps * batch_size])
    labels = split.labels[: steps * batch_size]
    return list(zip(images.split(batch_size), labels.split(batch_size)))


def _padded_shard_bytes(model: nn.Module, world_size: int) -> int:
    """Bytes of this process's shards as FSDP2 allocates them: each parameter's dim 0 padded to a multiple of R."""
    total = 0
    for p in model.parameters():
        rows = p.shape[0] if p.dim() else 1
        total += math.ceil(rows / world_size) * (p.numel() // max(rows, 1)) * p.element_size()
    return total


def train_sharded(strategy: str, steps: int = 4, batch_size: int = 32, lr: float = 1e-3,
                  dtype: torch.dtype = torch.float32) -> dict:
    """Train the attention chapter's ViT on MNIST for a few steps: one process, DDP or FSDP2.

    Every strategy sees the same global batches (the first ``steps × batch_size`` training
    images) and splits each among the processes, so all three should end with the same weights
    up to rounding. With ``"fsdp"`` each transformer block and then the whole model is passed to
    PyTorch's ``fully_shard`` on a one-dimensional CPU device mesh (gloo): every parameter,
    its gradient and its AdamW moments are sharded on dim 0 across the R processes
    (ZeRO stage 3), gathered for each block's forward and again for its backward
    (``reshard_after_forward=True``), and the gradients reduce-scattered.

    Run under ``torchrun`` (``"ddp"``, ``"fsdp"``) or in one process (``"single"``). ``dtype``
    float64 makes rounding too small to hide a difference: in float32, AdamW turns the rounding
    noise of gradients that are zero in exact arithmetic (the attention's key bias: softmax
    ignores a constant added to every score) into steps of size up to ``lr``.

    Returns:
        A dict, the same on every rank, with ``weights`` (full tensors, on the CPU), ``losses``
        (the global batches' mean losses), ``world_size``, and ``ranks``, one dict per rank
        with ``bytes`` (the :class:`StateBytes` fields of its local shards) and
        ``padded_bytes`` (FSDP2's allocation per rank for one copy of the weights).

    Raises:
        TypeError: ``dtype`` is not a floating-point dtype.
        ValueError: unknown ``strategy``, a batch not divisible by the processes, or ``"single"``
            under more than one process.
    """
    import torch.distributed as dist

    from .attention import VisionTransformer
    from .distributed import all_reduce_sum, init_distributed

    if strategy not in ("single", "ddp", "fsdp"):
        raise ValueError(f"strategy must be 'single', 'ddp' or 'fsdp', got {strategy!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    info = init_distributed(device="cpu")
    rank, world = info.rank, info.world_size
    if strategy == "single" and world > 1:
        raise ValueError("strategy 'single' runs in one process; launch ddp or fsdp with torchrun")
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} is not divisible by the {world} processes")
    torch.manual_seed(0)
    model = VisionTransformer().to(dtype)
    if strategy == "fsdp":
        # FSDP2, as the chapter shows it: shard each block, then the rest of the model
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))  # on GPUs: ("cuda", (world,)), backend NCCL
        for block in model.blocks:
            fully_shard(block, mesh=mesh, reshard_after_forward=True)  # its own all-gather group
        fully_shard(model, mesh=mesh, reshard_after_forward=True)  # the remaining weights
        # end of the FSDP2 lines
    elif strategy == "ddp" and world > 1:
        model = nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for images, labels in _mnist_batches(steps, batch_size):
        x, y = images.chunk(world)[rank].to(dtype), labels.chunk(world)[rank]
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()  # DDP all-reduces, FSDP2 reduce-scatters: both average over processes
        # the optimizer updates what this process holds: all weights (DDP), its shards (FSDP2)
        optimizer.step()
        losses.append(all_reduce_sum(loss.detach()).item() / world if world > 1 else loss.item())
    counted = asdict(state_bytes(model, optimizer))
    padded = _padded_shard_bytes(model, world)
    module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    weights = {name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
               for name, p in module.named_parameters()}
    per_rank = [None] * world
    if world > 1:
        dist.all_gather_object(per_rank, {"bytes": counted, "padded_bytes": padded})
    else:
        per_rank = [{"bytes": counted, "padded_bytes": padded}]
    return {"weights": weights, "losses": losses, "world_size": world, "ranks": per_rank}
