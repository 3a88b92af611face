"""LoRA: adapting a large network by training a low-rank change to some of its weights.

Hu et al. (2021) freeze a pretrained weight :math:`W` (``out × in``) and learn its update as a
product of two thin matrices, :math:`\\Delta W = \\tfrac{\\alpha}{r} B A` with :math:`A` (``r × in``)
and :math:`B` (``out × r``), ``r`` much smaller than ``in`` and ``out``:

.. math::
    h = W x + \\tfrac{\\alpha}{r}\\, B A\\, x .

:math:`A` starts Kaiming-uniform (``a = √5``, PyTorch's ``nn.Linear`` initialisation) and :math:`B`
at zero, so the adapted network starts as the pretrained one. Only :math:`A` and :math:`B` (and any
module kept trainable on purpose, such as a new head) are trained: ``r · (in + out)`` parameters per
layer instead of ``in · out``. After training, :math:`\\Delta W` is added into :math:`W` (*merged*),
and the network costs exactly what the original did at inference.

Everything here follows Hugging Face PEFT's definitions (``peft.tuners.lora``, the tests' oracle):
the layer names ``base_layer``, ``lora_A``, ``lora_B``, ``lora_dropout``; ``scaling = lora_alpha / r``;
dropout on LoRA's input only; for ``nn.Conv2d``, :math:`A` is a convolution with the base layer's
kernel size, stride and padding into ``r`` channels and :math:`B` a 1 × 1 convolution, so that
:math:`\\Delta W[o, i, u, v] = \\tfrac{\\alpha}{r} \\sum_k B[o, k]\\, A[k, i, u, v]`; ``target_modules``
match a module whose name equals an entry or ends with ``"." + entry``; ``modules_to_save`` stay
fully trainable.

What it refuses, where PEFT would warn or compute something else: grouped and depthwise
convolutions (PEFT cannot merge them), dilated convolutions (PEFT's :math:`A` drops the dilation, so
its merged weight would differ from its unmerged output), padding modes other than ``"zeros"``, and
any other module type. Explained in the chapter "Adapting large models".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["LoRAConv2d", "LoRALinear", "apply_lora", "lora_candidates", "merge_lora"]


def _check_rank_alpha(rank: int, alpha: float, dropout: float) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise TypeError(f"rank must be an int, got {type(rank).__name__}")
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")


class _LoRALayer(nn.Module):
    """What LoRA on a Linear and on a Conv2d share: freezing, the forward pass, merge and unmerge."""

    base_layer: nn.Linear | nn.Conv2d
    lora_A: nn.Linear | nn.Conv2d
    lora_B: nn.Linear | nn.Conv2d

    def _finish_init(self, rank: int, alpha: float, dropout: float) -> None:
        self.r, self.lora_alpha = rank, alpha
        self.scaling = alpha / rank
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        weight = self.base_layer.weight
        self.lora_A.to(device=weight.device, dtype=weight.dtype)
        self.lora_B.to(device=weight.device, dtype=weight.dtype)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.base_layer.requires_grad_(False)

    def delta_weight(self) -> torch.Tensor:
        """ΔW = (α / r) B A, shaped like ``base_layer.weight``."""
        raise NotImplementedError  # each subclass knows its weight layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if self.merged:
            return result
        return result + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Add ΔW into the base layer's weight; the forward pass then skips A and B.

        Raises:
            ValueError: already merged.
        """
        if self.merged:
            raise ValueError("this LoRA layer is already merged")
        self.base_layer.weight += self.delta_weight()
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract ΔW from the base layer's weight again (exact up to rounding).

        Raises:
            ValueError: not merged.
        """
        if not self.merged:
            raise ValueError("this LoRA layer is not merged")
        self.base_layer.weight -= self.delta_weight()
        self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, lora_alpha={self.lora_alpha}, scaling={self.scaling:g}, merged={self.merged}"


class LoRALinear(_LoRALayer):
    """LoRA around an ``nn.Linear``: ``base_layer(x) + lora_B(lora_A(dropout(x))) · α / r``.

    Args:
        base_layer: the pretrained layer; frozen (``requires_grad=False``) and kept, not copied.
        rank: r >= 1.
        alpha: α > 0; ``scaling = alpha / rank``.
        dropout: probability of LoRA's input dropout, in [0, 1) (training mode only).

    Shape:
        - Input: ``(*, in_features)``; output: ``(*, out_features)``, like ``base_layer``.
        - ``lora_A.weight``: (r, in_features); ``lora_B.weight``: (out_features, r).

    Raises:
        TypeError: ``base_layer`` is not an ``nn.Linear``, or ``rank`` is not an int.
        ValueError: ``rank < 1``, ``alpha <= 0`` or ``dropout`` outside [0, 1).
    """

    def __init__(self, base_layer: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        if type(base_layer) is not nn.Linear:  # a subclass may compute something else
            raise TypeError(f"LoRALinear wraps an nn.Linear (not a subclass), got {type(base_layer).__name__}")
        _check_rank_alpha(rank, alpha, dropout)
        self.base_layer = base_layer
        self.lora_A = nn.Linear(base_layer.in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, base_layer.out_features, bias=False)
        self._finish_init(rank, alpha, dropout)

    def delta_weight(self) -> torch.Tensor:
        """ΔW = (α / r) B A: (out_features, in_features)."""
        return self.lora_B.weight @ self.lora_A.weight * self.scaling


def _conv_problem(conv: nn.Conv2d) -> str | None:
    """Why LoRA cannot wrap ``conv`` (a sentence), or ``None``."""
    if conv.groups > 1:
        return (
            f"LoRA is not defined here for grouped or depthwise convolutions (groups={conv.groups}); "
            "PEFT cannot merge them either: target a convolution with groups=1"
        )
    if conv.dilation != (1, 1):
        return f"LoRA's A convolution has no dilation; got a base layer with dilation={conv.dilation}"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r} is not supported; only 'zeros'"
    return None


class LoRAConv2d(_LoRALayer):
    """LoRA around an ``nn.Conv2d``: A is a convolution like the base one into r channels, B is 1 × 1.

    ``lora_A`` has the base layer's kernel size, stride and padding, so ``lora_B(lora_A(x))`` has
    the base output's spatial size; merged, ΔW[o, i, u, v] = (α / r) Σ_k B[o, k] A[k, i, u, v].

    Args:
        base_layer: the pretrained convolution; frozen and kept, not copied.
        rank, alpha, dropout: as :class:`LoRALinear`.

    Shape:
        - Input: (B, in_channels, H, W); output as ``base_layer``'s.
        - ``lora_A.weight``: (r, in_channels, kH, kW); ``lora_B.weight``: (out_channels, r, 1, 1).

    Raises:
        TypeError: ``base_layer`` is not an ``nn.Conv2d``, or ``rank`` is not an int.
        ValueError: a grouped or depthwise convolution (``groups > 1``), ``dilation`` other than 1,
            ``padding_mode`` other than ``"zeros"``; ``rank``, ``alpha``, ``dropout`` as
            :class:`LoRALinear`.
    """

    def __init__(self, base_layer: nn.Conv2d, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        if type(base_layer) is not nn.Conv2d:  # a subclass may pad or compute differently
            raise TypeError(f"LoRAConv2d wraps an nn.Conv2d (not a subclass), got {type(base_layer).__name__}")
        problem = _conv_problem(base_layer)
        if problem:
            raise ValueError(problem)
        _check_rank_alpha(rank, alpha, dropout)
        self.base_layer = base_layer
        self.lora_A = nn.Conv2d(
            base_layer.in_channels, rank, base_layer.kernel_size, base_layer.stride, base_layer.padding, bias=False
        )
        self.lora_B = nn.Conv2d(rank, base_layer.out_channels, 1, bias=False)
        self._finish_init(rank, alpha, dropout)

    def delta_weight(self) -> torch.Tensor:
        """ΔW = (α / r) Σ_k B[:, k] A[k]: (out_channels, in_channels, kH, kW)."""
        return torch.einsum("ok,kiuv->oiuv", self.lora_B.weight[:, :, 0, 0], self.lora_A.weight) * self.scaling


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def lora_candidates(model: nn.Module) -> list[str]:
    """Names of ``model``'s modules that LoRA can wrap: every ``nn.Linear`` and every ``nn.Conv2d``
    (exactly these classes) with ``groups == 1``, dilation 1 and zero padding, in registration
    order, except the layers of an ``nn.MultiheadAttention``, ``model`` itself, and layers already
    wrapped in LoRA (and the layers inside them)."""
    inside_lora = [name + "." for name in _lora_layers(model)]
    return [
        name
        for name, module in model.named_modules()
        if name  # the model itself cannot be replaced inside itself
        and _wrap_problem(model, name, module) is None
        and not any(name.startswith(prefix) for prefix in inside_lora)
    ]


def _wrap_problem(model: nn.Module, name: str, module: nn.Module) -> str | None:
    """Why LoRA cannot wrap ``model``'s submodule ``name`` (a sentence), or ``None``."""
    parent_name = name.rpartition(".")[0]
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, nn.MultiheadAttention):
        return f"{name!r} belongs to nn.MultiheadAttention, which reads its weight directly, not through forward"
    if type(module) not in (nn.Linear, nn.Conv2d):
        return f"LoRA wraps nn.Linear and nn.Conv2d (not subclasses); {name!r} is {type(module).__name__}"
    return _conv_problem(module) if type(module) is nn.Conv2d else None


def _lora_layers(model: nn.Module) -> dict[str, _LoRALayer]:
    return {name: module for name, module in model.named_modules() if isinstance(module, _LoRALayer)}


def apply_lora(
    model: nn.Module,
    target_modules: Sequence[str],
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    modules_to_save: Sequence[str] = (),
) -> nn.Module:
    """Wrap every module named by ``target_modules`` in LoRA, in place, and freeze everything else.

    After the call only the LoRA matrices (``lora_A``, ``lora_B``) and the modules named in
    ``modules_to_save`` (typically a new classification head, PEFT's argument of the same name)
    require gradients. Batch-norm running statistics are buffers, untouched by freezing: put the
    model in ``eval()`` mode, or only its norm layers, to keep them fixed.

    Args:
        model: the network, modified in place.
        target_modules: module names; one matches a module whose name equals it or ends with
            ``"." + it`` (PEFT's rule): ``["fc"]``, ``["in_proj", "out_proj"]``, ``["head.0"]``.
            Each entry must match at least one ``nn.Linear`` or ``nn.Conv2d``.
        rank, alpha, dropout: as :class:`LoRALinear`.
        modules_to_save: module names (same matching) left fully trainable, never wrapped.

    Returns:
        ``model``.

    Raises:
        TypeError: ``target_modules`` or ``modules_to_save`` is a string or not a sequence (pass a
            list), or a matched module is not exactly an ``nn.Linear`` or ``nn.Conv2d`` (a subclass
            may compute something LoRA's matrices do not follow).
        ValueError: ``target_modules`` is empty, an entry of ``target_modules`` or
            ``modules_to_save`` matches no module, a layer of ``nn.MultiheadAttention`` (which
            reads its weights without calling the layer), a
            module is both targeted and saved, the model already has LoRA layers, or as
            :class:`LoRALinear` / :class:`LoRAConv2d` (rank, alpha, dropout, grouped convolutions).
    """
    for name, entries in (("target_modules", target_modules), ("modules_to_save", modules_to_save)):
        if isinstance(entries, str) or not isinstance(entries, Sequence):
            raise TypeError(f"{name} must be a list of module names, got {type(entries).__name__} {entries!r}")
    if not target_modules:
        raise ValueError("target_modules is empty: name at least one layer to adapt")
    _check_rank_alpha(rank, alpha, dropout)
    if _lora_layers(model):
        raise ValueError(f"{type(model).__name__} already has LoRA layers: {list(_lora_layers(model))[:3]}")
    names = [name for name, _ in model.named_modules() if name]
    targeted = {n for n in names if any(_matches(n, t) for t in target_modules)}
    saved = {n for n in names if any(_matches(n, s) for s in modules_to_save)}
    for entry in [*target_modules, *modules_to_save]:
        if not any(_matches(n, entry) for n in names):
            raise ValueError(f"no module of {type(model).__name__} is named {entry!r} (or ends with '.{entry}')")
    if targeted & saved:
        raise ValueError(f"modules both targeted and saved: {sorted(targeted & saved)}")
    for name in sorted(targeted):  # every layer checked before any is changed: a refusal changes nothing
        module = model.get_submodule(name)
        problem = _wrap_problem(model, name, module)
        if problem and problem.startswith("LoRA wraps"):
            raise TypeError(problem)
        if problem:
            raise ValueError(f"{name!r}: {problem}")
    model.requires_grad_(False)
    for name in sorted(targeted):
        module = model.get_submodule(name)
        layer = LoRALinear if isinstance(module, nn.Linear) else LoRAConv2d
        model.set_submodule(name, layer(module, rank, alpha, dropout))
    for name in saved:
        model.get_submodule(name).requires_grad_(True)
    return model


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every LoRA layer of ``model`` into its base layer and put the base layer back, in place.

    The result has the original architecture (plain ``nn.Linear`` / ``nn.Conv2d``) with
    W ← W + (α / r) B A, so inference costs what the pretrained network cost. PEFT calls this
    ``merge_and_unload``. Every parameter is left trainable again (``requires_grad=True``), as in a
    freshly built model.

    Returns:
        ``model``.

    Raises:
        ValueError: ``model`` has no LoRA layer, or is itself one (call its ``merge()``).
    """
    if isinstance(model, _LoRALayer):
        raise ValueError("merge_lora takes the model that contains LoRA layers; for one layer call its merge()")
    layers = _lora_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no LoRA layer to merge")
    for name, layer in layers.items():
        if not layer.merged:
            layer.merge()
        model.set_submodule(name, layer.base_layer)
    model.requires_grad_(True)
    return model
