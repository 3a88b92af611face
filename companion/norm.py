"""Normalisation layers from their equations: batch normalisation (with running estimates), layer and group normalisation.

Reading order: :func:`batch_norm` (a function: training statistics, running estimates,
evaluation), :class:`BatchNorm2d` (the module that keeps the estimates), :func:`layer_norm` and
:class:`LayerNorm`, :func:`group_norm` and :class:`GroupNorm`. Each is tested equal to PyTorch's
(``F.batch_norm`` / ``nn.BatchNorm2d``, ``F.layer_norm`` / ``nn.LayerNorm``, ``F.group_norm`` /
``nn.GroupNorm``) in float64, values, gradients and running estimates.

Chapter "Modern convolutional networks" derives them and measures what they change.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = [
    "BatchNorm2d",
    "GroupNorm",
    "LayerNorm",
    "batch_norm",
    "group_norm",
    "layer_norm",
]


def batch_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    r"""Batch normalisation (Ioffe & Szegedy, 2015, Algorithm 1), as ``F.batch_norm`` computes it.

    For each channel c, over the batch and all spatial positions (m values),

    .. math::
        \mu_c = \tfrac{1}{m}\textstyle\sum x, \quad \sigma_c^2 = \tfrac{1}{m}\sum (x - \mu_c)^2, \quad
        y = \gamma_c \frac{x - \mu_c}{\sqrt{\sigma_c^2 + \epsilon}} + \beta_c .

    In training mode the batch's statistics normalise, and the running estimates are updated
    in place: ``running ← (1 − momentum) · running + momentum · statistic``, with the
    *unbiased* variance ``σ² · m / (m − 1)`` (PyTorch's definition of momentum, the opposite of
    TensorFlow's). In evaluation mode the running estimates normalise.

    Args:
        input: ``(B, C, *)`` float tensor (``*``: any spatial dimensions, possibly none).
        running_mean, running_var: (C,) buffers, updated in place when ``training``; may be
            ``None`` only when ``training`` (then nothing is tracked).
        weight, bias: γ and β, (C,); ``None`` means 1 and 0.
        training: use and track batch statistics (``True``) or use the running ones.
        momentum: in [0, 1], the weight of the new batch in the running estimates.
        eps: ε > 0 added to the variance.

    Returns:
        Tensor of ``input``'s shape and dtype.

    Raises:
        ValueError: ``input`` has fewer than 2 dimensions; a buffer or parameter is not (C,);
            training with a single value per channel (its variance is undefined, as PyTorch
            refuses); only one of ``running_mean``, ``running_var`` given (PyTorch refuses too);
            evaluation without running estimates.
    """
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must either both be None or neither be None")
    if input.ndim < 2:
        raise ValueError(f"batch_norm expects input of shape (B, C, *), got {tuple(input.shape)}")
    C = input.shape[1]
    for name, tensor in [("running_mean", running_mean), ("running_var", running_var), ("weight", weight),
                         ("bias", bias)]:  # fmt: skip
        if tensor is not None and tuple(tensor.shape) != (C,):
            raise ValueError(f"{name} must have shape ({C},) for {C} channels, got {tuple(tensor.shape)}")
    dims = [0, *range(2, input.ndim)]  # every dimension but the channels
    shape = [1, C] + [1] * (input.ndim - 2)  # (1, C, 1, ...) broadcasts over them
    if training:
        m = input.numel() // C
        if m < 2:
            raise ValueError(f"expected more than 1 value per channel when training, got input {tuple(input.shape)}")
        mean = input.mean(dims)  # μ_c
        var = input.var(dims, unbiased=False)  # σ_c², biased: what normalises
        if running_mean is not None and running_var is not None:
            with torch.no_grad():  # running ← (1 − momentum)·running + momentum·statistic
                running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
                running_var.mul_(1 - momentum).add_(momentum * var.detach() * m / (m - 1))  # unbiased
    else:
        if running_mean is None or running_var is None:
            raise ValueError("evaluation mode needs running_mean and running_var")
        mean, var = running_mean, running_var
    y = (input - mean.view(shape)) / torch.sqrt(var.view(shape) + eps)  # x̂
    if weight is not None:
        y = y * weight.view(shape)  # γ x̂
    if bias is not None:
        y = y + bias.view(shape)  # + β
    return y


class BatchNorm2d(nn.Module):
    """:func:`batch_norm` as a module, state-dict compatible with ``nn.BatchNorm2d``.

    Same arguments, buffers and behaviour: ``momentum=None`` averages all batches seen
    (factor ``1 / num_batches_tracked``); ``track_running_stats=False`` uses batch statistics
    in both modes; ``affine=False`` has no γ, β.

    Shape:
        - Input: (B, C, H, W).
        - Output: same.

    Raises:
        ValueError: the input is not (B, num_features, H, W), or as :func:`batch_norm`.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True) -> None:  # fmt: skip
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.ones(num_features))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm2d({self.num_features}) expects input (B, {self.num_features}, H, W), "
                             f"got {tuple(x.shape)}")  # fmt: skip
        w, b, eps = self.weight, self.bias, self.eps
        if self.training and self.track_running_stats:  # batch statistics, and track them
            self.num_batches_tracked.add_(1)
            momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            return batch_norm(x, self.running_mean, self.running_var, w, b, True, momentum, eps)
        if self.training or not self.track_running_stats:  # batch statistics, nothing tracked
            return batch_norm(x, None, None, w, b, True, 0.0, eps)
        return batch_norm(x, self.running_mean, self.running_var, w, b, False, 0.0, eps)  # running estimates

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"


def layer_norm(
    input: torch.Tensor,
    normalized_shape: Sequence[int],
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    r"""Layer normalisation (Ba et al., 2016), as ``F.layer_norm`` computes it.

    Each sample is normalised over its last ``len(normalized_shape)`` dimensions — no batch
    statistics, so training and evaluation are the same and a batch of one works:
    :math:`y = \gamma \odot (x - \mu) / \sqrt{\sigma^2 + \epsilon} + \beta`, with μ and the
    biased σ² taken over those dimensions.

    Args:
        input: ``(*, *normalized_shape)`` float tensor.
        normalized_shape: the trailing shape to normalise over, for example ``(D,)``.
        weight, bias: γ and β of shape ``normalized_shape``; ``None`` means 1 and 0.
        eps: ε > 0.

    Returns:
        Tensor of ``input``'s shape and dtype.

    Raises:
        ValueError: ``input``'s trailing dimensions, or ``weight``/``bias``, are not ``normalized_shape``.
    """
    shape = tuple(normalized_shape)
    if len(shape) == 0 or tuple(input.shape[input.ndim - len(shape):]) != shape:
        raise ValueError(f"layer_norm over {shape} expects input of shape (*, {', '.join(map(str, shape))}), "
                         f"got {tuple(input.shape)}")  # fmt: skip
    for name, tensor in [("weight", weight), ("bias", bias)]:
        if tensor is not None and tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")
    dims = tuple(range(-len(shape), 0))
    mean = input.mean(dims, keepdim=True)  # μ per sample
    var = input.var(dims, unbiased=False, keepdim=True)  # σ² per sample
    y = (input - mean) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


class LayerNorm(nn.Module):
    """:func:`layer_norm` as a module, state-dict compatible with ``nn.LayerNorm``
    (same arguments: ``normalized_shape``, ``eps``, ``elementwise_affine``, ``bias``).

    Shape:
        - Input: ``(*, *normalized_shape)``; output the same.

    Raises:
        ValueError: as :func:`layer_norm`.
    """

    def __init__(self, normalized_shape: int | Sequence[int], eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True) -> None:  # fmt: skip
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.normalized_shape, self.eps = shape, eps
        self.weight = nn.Parameter(torch.ones(shape)) if elementwise_affine else None
        self.bias = nn.Parameter(torch.zeros(shape)) if elementwise_affine and bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}"


def group_norm(
    input: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    r"""Group normalisation (Wu & He, 2018), as ``F.group_norm`` computes it.

    The C channels of each sample are split into ``num_groups`` groups of C / G consecutive
    channels; each group is normalised over its channels and all spatial positions, with its own
    mean and biased variance, then every channel gets its own γ and β:
    :math:`y = \gamma_c (x - \mu_{b,g}) / \sqrt{\sigma^2_{b,g} + \epsilon} + \beta_c`. No
    statistic crosses samples, so the result does not depend on the batch size (batch
    normalisation's weakness at small batches). ``num_groups = 1`` normalises each sample over
    all its channels and positions (layer normalisation over (C, H, W), with per-channel γ, β);
    ``num_groups = C`` normalises each channel of each sample alone (instance normalisation).

    Args:
        input: ``(B, C, *)`` float tensor.
        num_groups: G, which divides C.
        weight, bias: γ and β, (C,); ``None`` means 1 and 0.
        eps: ε > 0 added to the variance.

    Returns:
        Tensor of ``input``'s shape and dtype.

    Raises:
        ValueError: ``input`` has fewer than 2 dimensions, G does not divide C, or ``weight``/``bias``
            are not (C,).
    """
    if input.ndim < 2:
        raise ValueError(f"group_norm expects input of shape (B, C, *), got {tuple(input.shape)}")
    B, C = input.shape[:2]
    if num_groups < 1 or C % num_groups != 0:
        raise ValueError(f"num_groups must divide the {C} channels, got {num_groups}")
    for name, tensor in [("weight", weight), ("bias", bias)]:
        if tensor is not None and tuple(tensor.shape) != (C,):
            raise ValueError(f"{name} must have shape ({C},), got {tuple(tensor.shape)}")
    grouped = input.reshape(B, num_groups, -1)  # (B, G, C/G · spatial)
    mean = grouped.mean(-1, keepdim=True)  # μ per sample and group
    var = grouped.var(-1, unbiased=False, keepdim=True)  # biased σ² per sample and group
    y = ((grouped - mean) / torch.sqrt(var + eps)).reshape(input.shape)
    shape = (1, C) + (1,) * (input.ndim - 2)  # γ, β per channel
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y


class GroupNorm(nn.Module):
    """:func:`group_norm` as a module, state-dict compatible with ``nn.GroupNorm``
    (same arguments: ``num_groups``, ``num_channels``, ``eps``, ``affine``).

    Shape:
        - Input: ``(B, num_channels, *)``; output the same.

    Raises:
        ValueError: ``num_groups`` does not divide ``num_channels`` (at construction), or as
            :func:`group_norm`.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        if num_groups < 1 or num_channels % num_groups != 0:
            raise ValueError(f"num_groups must divide num_channels, got {num_groups} and {num_channels}")
        self.num_groups, self.num_channels, self.eps = num_groups, num_channels, eps
        self.weight = nn.Parameter(torch.ones(num_channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_channels)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}"
