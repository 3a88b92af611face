"""Modern convolutional networks: the normalisations, the residual connection and the efficient blocks.

Reading order: batch normalisation from its equations (a function, then a module with the
running estimates), layer normalisation; the residual block with its projection shortcut;
depthwise and depthwise-separable convolution; the inverted residual (MBConv) block; then
the networks the chapter trains. Each from-scratch piece is tested equal to PyTorch's
(``nn.BatchNorm2d``, ``nn.LayerNorm``, torchvision's ``BasicBlock`` and ``InvertedResidual``,
``nn.Conv2d(groups=...)``) in float64, values and gradients.

Chapter "Modern convolutional networks" derives and trains them; chapter "Pretrained models in
practice" loads ImageNet weights into :class:`InvertedResidual` blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BatchNorm2d",
    "DeepCNN",
    "DepthwiseSeparableConv",
    "EfficientCNN",
    "InvertedResidual",
    "LayerNorm",
    "MBConv",
    "ResidualBlock",
    "batch_norm",
    "depthwise_conv2d",
    "layer_norm",
    "tf_same_padding",
]

NormLayer = Callable[[int], nn.Module]


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


class ResidualBlock(nn.Module):
    r"""The basic residual block of He et al. (2016): :math:`y = \mathrm{ReLU}(F(x) + S(x))`.

    ``F``: conv 3×3 (``stride``) → norm → ReLU → conv 3×3 → norm. ``S``, the shortcut: the
    identity when the shapes agree; otherwise (``stride > 1`` or a change of channels) the
    *projection* shortcut of the paper's option B, conv 1×1 (``stride``) → norm. Attribute names
    follow torchvision's ``BasicBlock`` (``conv1, bn1, conv2, bn2, downsample``), so its state
    dict loads as is.

    ``shortcut=False`` drops ``S`` altogether (``y = ReLU(F(x))``): the "plain" block of the
    paper's degradation experiment, with the same layers but no addition.

    Args:
        in_channels, out_channels: channels in and out.
        stride: 1 or 2 (the first convolution's, and the projection's).
        norm_layer: builds the normalisation from a channel count; default ``nn.BatchNorm2d``
            (the package's :class:`BatchNorm2d` gives the same numbers, more slowly).
        shortcut: add the shortcut (a residual block) or not (a plain block).
        bias: give the convolutions biases (for a network without normalisation, whose
            β would otherwise be the only bias; torchvision's block has none).

    Shape:
        - Input: (B, in_channels, H, W).
        - Output: (B, out_channels, ⌈H / stride⌉, ⌈W / stride⌉).

    Raises:
        ValueError: ``stride`` not 1 or 2, or channels < 1.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, norm_layer: NormLayer | None = None,
                 shortcut: bool = True, bias: bool = False) -> None:  # fmt: skip
        super().__init__()
        if stride not in (1, 2) or min(in_channels, out_channels) < 1:
            raise ValueError(f"expected stride 1 or 2 and positive channels, got in_channels={in_channels}, "
                             f"out_channels={out_channels}, stride={stride}")  # fmt: skip
        norm_layer = norm_layer or nn.BatchNorm2d
        self.shortcut = shortcut
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias)
        self.bn1 = norm_layer(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias)
        self.bn2 = norm_layer(out_channels)
        self.relu = nn.ReLU()
        self.downsample = None
        if shortcut and (stride != 1 or in_channels != out_channels):  # projection shortcut (option B)
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=bias),
                                            norm_layer(out_channels))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))  # (B, C_out, H / s, W / s)
        out = self.bn2(self.conv2(out))  # F(x)
        if not self.shortcut:
            return self.relu(out)  # plain block
        identity = x if self.downsample is None else self.downsample(x)  # S(x), same shape as F(x)
        return self.relu(out + identity)  # y = ReLU(F(x) + S(x))


def depthwise_conv2d(
    input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: int = 1, padding: int = 0
) -> torch.Tensor:
    r"""Depthwise convolution from its definition: each channel cross-correlated with its own kernel.

    .. math:: Y_{b,c}(x, y) = \beta_c + \sum_{i,j} X_{b,c}(s x + i - p,\, s y + j - p)\, W_c(i, j)

    No sum over channels — what ``nn.Conv2d(C, C, k, groups=C)`` computes, written without
    ``groups``: the k × k patches of every channel are unfolded and each is dotted with that
    channel's kernel. It costs ``C · k²`` multiply-accumulates per position instead of a full
    convolution's ``C_out · C · k²``.

    Args:
        input: (B, C, H, W).
        weight: (C, 1, k, k), the layout of ``nn.Conv2d(groups=C).weight``.
        bias: (C,) or ``None``.
        stride, padding: ints (the same along both axes; zero padding).

    Returns:
        (B, C, H_out, W_out), the output size of ``nn.Conv2d``.

    Raises:
        ValueError: shapes that do not fit (input, weight, bias, or a kernel larger than the
            padded input), or a stride < 1 / padding < 0.
        TypeError: a stride or padding that is not an int (pairs and ``"same"`` are refused).
    """
    if input.ndim != 4 or weight.ndim != 4 or weight.shape[:2] != (input.shape[1], 1) or weight.shape[2] != weight.shape[3]:
        raise ValueError(f"expected input (B, C, H, W) and weight (C, 1, k, k), got {tuple(input.shape)} and "
                         f"{tuple(weight.shape)}")  # fmt: skip
    if bias is not None and tuple(bias.shape) != (input.shape[1],):
        raise ValueError(f"bias must have shape ({input.shape[1]},), got {tuple(bias.shape)}")
    for name, value in (("stride", stride), ("padding", padding)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"depthwise_conv2d takes an int {name} (the same on both axes), got {value!r}; "
                            "use F.conv2d(groups=C) for per-axis values or padding='same'")  # fmt: skip
    if stride < 1 or padding < 0:
        raise ValueError(f"expected stride >= 1 and padding >= 0, got stride={stride}, padding={padding}")
    if min(input.shape[-2:]) + 2 * padding < weight.shape[-1]:
        raise ValueError(f"a {weight.shape[-1]}x{weight.shape[-1]} kernel does not fit the padded input "
                         f"{tuple(input.shape[-2:])} with padding={padding}")  # fmt: skip
    B, C, H, W = input.shape
    k = weight.shape[-1]
    H_out, W_out = (H + 2 * padding - k) // stride + 1, (W + 2 * padding - k) // stride + 1
    patches = F.unfold(input, k, padding=padding, stride=stride)  # (B, C·k·k, L), channel-major
    patches = patches.view(B, C, k * k, H_out * W_out)  # (B, C, k², L)
    out = torch.einsum("bckl,ck->bcl", patches, weight.view(C, k * k))  # one dot product per channel
    if bias is not None:
        out = out + bias.view(1, C, 1)
    return out.view(B, C, H_out, W_out)


class DepthwiseSeparableConv(nn.Module):
    """A depthwise-separable convolution block (MobileNet, Howard et al., 2017).

    ``depthwise k×k (groups = in_channels, stride) → norm → ReLU → pointwise 1×1 → norm → ReLU``:
    a k × k convolution factored into a per-channel spatial filter and a channel mix. Parameters
    ``C_in · k² + C_in · C_out`` instead of ``C_in · C_out · k²`` (norms aside).

    Args:
        in_channels, out_channels, kernel_size, stride: as ``nn.Conv2d`` (an odd kernel_size);
            padding keeps the size at stride 1.
        norm_layer: default ``nn.BatchNorm2d``.

    Shape:
        - Input: (B, in_channels, H, W); output (B, out_channels, ⌈H / stride⌉, ⌈W / stride⌉).

    Raises:
        ValueError: an even ``kernel_size`` or channels < 1.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 norm_layer: NormLayer | None = None) -> None:  # fmt: skip
        super().__init__()
        if kernel_size % 2 == 0 or min(in_channels, out_channels) < 1:
            raise ValueError(f"expected an odd kernel_size and positive channels, got kernel_size={kernel_size}, "
                             f"in_channels={in_channels}, out_channels={out_channels}")  # fmt: skip
        norm_layer = norm_layer or nn.BatchNorm2d
        self.depthwise = nn.Conv2d(in_channels, in_channels, kernel_size, stride, kernel_size // 2,
                                   groups=in_channels, bias=False)  # fmt: skip
        self.bn1 = norm_layer(in_channels)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn2 = norm_layer(out_channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.depthwise(x)))  # (B, C_in, H / s, W / s): spatial, per channel
        return self.relu(self.bn2(self.pointwise(x)))  # (B, C_out, H / s, W / s): channels mixed


def tf_same_padding(size: int, kernel_size: int, stride: int) -> tuple[int, int]:
    """TensorFlow's ``padding="SAME"`` along one axis: (before, after) so that the output is ⌈size / stride⌉.

    The total ``max((⌈size/stride⌉ − 1)·stride + kernel_size − size, 0)`` is split with the odd
    pixel *after* — asymmetric where PyTorch pads symmetrically. Weights trained in TensorFlow
    (EfficientNet-Lite's) expect it: for 224 pixels, k = 3, stride 2 it is (0, 1), not (1, 1).

    Args:
        size: input length along the axis, >= 1 (pixels).
        kernel_size: >= 1.
        stride: >= 1.

    Returns:
        (before, after), pixels of zero padding.

    Raises:
        ValueError: an argument < 1.

    Examples:
        >>> tf_same_padding(224, 3, 2), tf_same_padding(112, 3, 1), tf_same_padding(28, 5, 2)
        ((0, 1), (1, 1), (1, 2))
    """
    if min(size, kernel_size, stride) < 1:
        raise ValueError(f"size, kernel_size and stride must be >= 1, got {size}, {kernel_size}, {stride}")
    out = -(-size // stride)  # ⌈size / stride⌉
    total = max((out - 1) * stride + kernel_size - size, 0)
    return total // 2, total - total // 2


def _like_batch_norm(bn: nn.BatchNorm2d) -> NormLayer:
    def build(num_features: int) -> nn.BatchNorm2d:
        return nn.BatchNorm2d(num_features, eps=bn.eps, momentum=bn.momentum)

    return build


class InvertedResidual(nn.Module):
    r"""The inverted residual block with a linear bottleneck (MobileNetV2, Sandler et al., 2018), or MBConv.

    (MBConv, "mobile inverted bottleneck convolution", is MnasNet's name for it, Tan et al., 2019,
    which EfficientNet kept.)

    ``expand 1×1 (C_in → t·C_in) → norm → ReLU6 → depthwise k×k (stride) → norm → ReLU6 →
    project 1×1 (→ C_out) → norm``, plus the input when ``stride == 1`` and ``C_in == C_out``.
    "Inverted": the block is narrow at its ends and wide (``expand_ratio`` t) in the middle, the
    opposite of ResNet's bottleneck; "linear bottleneck": no activation after the projection.
    With t = 1 there is no expansion layer. EfficientNet's MBConv (Tan & Le, 2019) adds
    squeeze-and-excitation and the SiLU activation; EfficientNet-Lite removes both again, which
    makes its blocks exactly these with kernel sizes 3 and 5.

    Submodules ``expand`` (``None`` when t = 1), ``depthwise`` and ``project`` are
    ``nn.Sequential(conv, norm[, activation])``.

    Args:
        in_channels, out_channels: C_in, C_out.
        stride: 1 or 2, the depthwise convolution's.
        expand_ratio: t >= 1; the hidden width is ``round(t · C_in)``.
        kernel_size: odd, the depthwise kernel (3 or 5 in EfficientNet).
        norm_layer: default ``nn.BatchNorm2d`` (EfficientNet's weights want ``eps=1e-3``).
        padding: ``"symmetric"``: PyTorch's ``kernel_size // 2`` on each side (torchvision's
            MobileNetV2); ``"tf-same"``: :func:`tf_same_padding` of the actual input, for weights
            trained in TensorFlow.

    Shape:
        - Input: (B, C_in, H, W); output (B, C_out, ⌈H / stride⌉, ⌈W / stride⌉).

    Raises:
        ValueError: stride not 1 or 2, expand_ratio < 1, an even kernel_size, an unknown padding.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, expand_ratio: float = 6,
                 kernel_size: int = 3, norm_layer: NormLayer | None = None,
                 padding: Literal["symmetric", "tf-same"] = "symmetric") -> None:  # fmt: skip
        super().__init__()
        if stride not in (1, 2) or expand_ratio < 1 or kernel_size % 2 == 0 or padding not in ("symmetric", "tf-same"):
            raise ValueError(f"expected stride 1 or 2, expand_ratio >= 1, an odd kernel_size and padding "
                             f"'symmetric' or 'tf-same'; got stride={stride}, expand_ratio={expand_ratio}, "
                             f"kernel_size={kernel_size}, padding={padding!r}")  # fmt: skip
        norm_layer = norm_layer or nn.BatchNorm2d
        hidden = int(round(in_channels * expand_ratio))
        self.stride, self.kernel_size, self.padding = stride, kernel_size, padding
        self.use_residual = stride == 1 and in_channels == out_channels
        self.expand = None
        if expand_ratio != 1:
            self.expand = nn.Sequential(nn.Conv2d(in_channels, hidden, 1, bias=False), norm_layer(hidden), nn.ReLU6())
        pad = kernel_size // 2 if padding == "symmetric" else 0  # tf-same pads in forward, by input size
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, kernel_size, stride, pad, groups=hidden, bias=False), norm_layer(hidden), nn.ReLU6()
        )
        self.project = nn.Sequential(nn.Conv2d(hidden, out_channels, 1, bias=False), norm_layer(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.expand is None else self.expand(x)  # (B, t·C_in, H, W)
        if self.padding == "tf-same":
            top, bottom = tf_same_padding(out.shape[-2], self.kernel_size, self.stride)
            left, right = tf_same_padding(out.shape[-1], self.kernel_size, self.stride)
            out = F.pad(out, (left, right, top, bottom))
        out = self.depthwise(out)  # (B, t·C_in, H / s, W / s)
        out = self.project(out)  # (B, C_out, H / s, W / s), linear: no activation
        return x + out if self.use_residual else out

    @classmethod
    def from_torchvision(cls, block: nn.Module) -> InvertedResidual:
        """An equal block with the weights of torchvision's ``mobilenetv2.InvertedResidual``.

        The key mapping (torchvision → package): with expansion, ``conv.0.*`` → ``expand.*``,
        ``conv.1.*`` → ``depthwise.*``, ``conv.2`` → ``project.0``, ``conv.3`` → ``project.1``;
        without, ``conv.0.*`` → ``depthwise.*`` and the rest one index lower. Every tensor is
        mapped (``load_state_dict(strict=True)``).

        Raises:
            TypeError: ``block`` is not a torchvision ``InvertedResidual``.
        """
        from torchvision.models.mobilenetv2 import InvertedResidual as TorchvisionBlock

        if not isinstance(block, TorchvisionBlock):
            raise TypeError(f"expected torchvision.models.mobilenetv2.InvertedResidual, got {type(block).__name__}")
        layers = list(block.conv)
        expanded = len(layers) == 4
        depthwise_conv = layers[1 if expanded else 0][0]
        in_channels = (layers[0][0] if expanded else depthwise_conv).in_channels
        bn = layers[-1]
        norm_layer = _like_batch_norm(bn)
        ours = cls(in_channels, block.out_channels, block.stride, depthwise_conv.in_channels / in_channels,
                   depthwise_conv.kernel_size[0], norm_layer)  # fmt: skip
        if expanded:
            prefixes = {"conv.0.": "expand.", "conv.1.": "depthwise.", "conv.2.": "project.0.", "conv.3.": "project.1."}
        else:
            prefixes = {"conv.0.": "depthwise.", "conv.1.": "project.0.", "conv.2.": "project.1."}
        mapping = {}
        for key, value in block.state_dict().items():
            prefix = next(p for p in prefixes if key.startswith(p))
            mapping[prefixes[prefix] + key.removeprefix(prefix)] = value
        ours.to(device=depthwise_conv.weight.device, dtype=depthwise_conv.weight.dtype)
        ours.load_state_dict(mapping)  # after .to: loading float64 values into float32 would round them
        return ours


#: Another name of :class:`InvertedResidual`, EfficientNet's.
MBConv = InvertedResidual


def _no_norm(num_features: int) -> nn.Module:
    return nn.Identity()


def _he_init(model: nn.Module) -> None:
    """He et al. (2015) initialisation in its forward form, ``kaiming_normal_(mode="fan_in")``.

    It keeps the activations' variance through ReLU layers, which a network without
    normalisation needs; torchvision's ResNet uses the backward form (``fan_out``), which batch
    normalisation makes harmless.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class DeepCNN(nn.Module):
    """He et al.'s (2016, section 4.2) CIFAR network for 28 × 28 images: plain or residual, 6n + 2 layers.

    ``stem conv 3×3 (stride 2) → 3 stages of n blocks (width, 2·width, 4·width channels; the
    first block of stages 2 and 3 has stride 2) → global average pool → linear``. Each block is a
    :class:`ResidualBlock` with two 3 × 3 convolutions, so ``depth = 6n + 2`` counts the layers
    with weights. ``residual=False`` gives the *plain* network of the paper's degradation
    experiment: the same layers without the shortcuts. One deviation: where a block changes
    shape, the shortcut is the projection (the paper's option B, a 1 × 1 convolution, which
    the plain network does not have), while the paper's CIFAR networks use option A (identity
    with zero-padded channels, no parameters), so that plain and residual networks have exactly
    the same parameters; here the residual one has two 1 × 1 projections more. The stem's stride 2 (the paper's is 1, on 32 × 32) keeps it cheap
    on a CPU: the stages run at 14 × 14, 7 × 7 and 4 × 4. Weights start from He initialisation.

    Args:
        depth: 6n + 2 with n >= 1 (8, 14, 20, 26, 32, ...).
        residual: shortcuts (ResNet) or not (plain).
        width: channels of the first stage.
        batch_norm: batch normalisation after every convolution; without it the
            convolutions get biases.
        in_channels, num_classes: input channels, output logits.

    Shape:
        - Input: (B, in_channels, H, W), for example (B, 1, 28, 28).
        - Output: (B, num_classes) logits.

    Raises:
        ValueError: ``depth`` is not 6n + 2 with n >= 1, or ``width`` < 1.
    """

    def __init__(self, depth: int = 20, residual: bool = True, width: int = 16, batch_norm: bool = True,
                 in_channels: int = 1, num_classes: int = 10) -> None:  # fmt: skip
        super().__init__()
        if depth < 8 or (depth - 2) % 6 or width < 1:
            raise ValueError(f"depth must be 6n + 2 with n >= 1 (8, 14, 20, ...) and width >= 1, "
                             f"got depth={depth}, width={width}")  # fmt: skip
        n = (depth - 2) // 6
        norm_layer = nn.BatchNorm2d if batch_norm else _no_norm
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, stride=2, padding=1, bias=not batch_norm),
                                  norm_layer(width), nn.ReLU())  # fmt: skip
        blocks, channels = [], width
        for stage, out_channels in enumerate((width, 2 * width, 4 * width)):
            for index in range(n):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(ResidualBlock(channels, out_channels, stride, norm_layer, shortcut=residual,
                                            bias=not batch_norm))  # fmt: skip
                channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        _he_init(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) → pooled features (B, 4·width)."""
        x = self.blocks(self.stem(x))  # (B, 4·width, H / 8, W / 8)
        return torch.flatten(self.pool(x), 1)  # (B, 4·width)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)  # (B, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class EfficientCNN(nn.Module):
    """One small network, three kinds of block: for comparing accuracy with parameters and MACs.

    ``stem conv 3×3 (stride 2) → 3 stages of blocks_per_stage blocks (widths; the first block of
    stages 2 and 3 has stride 2) → global average pool → linear``, where a block is

    - ``"conv"``: a plain 3 × 3 convolution → batch norm → ReLU;
    - ``"separable"``: a :class:`DepthwiseSeparableConv` (3 × 3);
    - ``"mbconv"``: an :class:`InvertedResidual` (3 × 3, ``expand_ratio``).

    Args:
        block: ``"conv"``, ``"separable"`` or ``"mbconv"``.
        widths: channels of the three stages (the stem has ``widths[0]``).
        blocks_per_stage: blocks in each stage, >= 1.
        expand_ratio: the MBConv blocks' t.
        in_channels, num_classes: input channels, output logits.

    Shape:
        - Input: (B, in_channels, H, W); output (B, num_classes) logits.

    Raises:
        ValueError: an unknown ``block``, not three positive widths, or blocks_per_stage < 1.
    """

    def __init__(self, block: Literal["conv", "separable", "mbconv"] = "conv", widths: Sequence[int] = (16, 32, 64),
                 blocks_per_stage: int = 2, expand_ratio: float = 4, in_channels: int = 1,
                 num_classes: int = 10) -> None:  # fmt: skip
        super().__init__()
        if block not in ("conv", "separable", "mbconv") or len(widths) != 3 or min(widths) < 1 or blocks_per_stage < 1:
            raise ValueError(f"expected block 'conv', 'separable' or 'mbconv', three positive widths and "
                             f"blocks_per_stage >= 1; got block={block!r}, widths={tuple(widths)}, "
                             f"blocks_per_stage={blocks_per_stage}")  # fmt: skip
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())  # fmt: skip
        layers, channels = [], widths[0]
        for stage, out_channels in enumerate(widths):
            for index in range(blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                if block == "conv":
                    layers.append(nn.Sequential(nn.Conv2d(channels, out_channels, 3, stride, 1, bias=False),
                                                nn.BatchNorm2d(out_channels), nn.ReLU()))  # fmt: skip
                elif block == "separable":
                    layers.append(DepthwiseSeparableConv(channels, out_channels, 3, stride))
                else:
                    layers.append(InvertedResidual(channels, out_channels, stride, expand_ratio))
                channels = out_channels
        self.blocks = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))  # (B, widths[2], H / 8, W / 8)
        return self.fc(torch.flatten(self.pool(x), 1))  # (B, num_classes)
