"""Convolutional building blocks: the residual block, depthwise-separable convolution, the inverted residual.

Reading order: the residual block with its projection shortcut (He et al., 2016) and its
bottleneck form; depthwise and depthwise-separable convolution; TensorFlow's "same" padding;
squeeze-and-excitation (Hu et al., 2018); the inverted residual (MBConv) block (Sandler et al.,
2018). Each is tested equal to its PyTorch or torchvision counterpart (torchvision's
``BasicBlock``, ``Bottleneck``, ``SqueezeExcitation`` and ``InvertedResidual``,
``nn.Conv2d(groups=...)``) in float64, values and gradients.

Chapter "Modern convolutional networks" derives and trains them; the networks built from them are
in :mod:`companion.modern_cnn`, :mod:`companion.pretrained` (EfficientNet-Lite0 from
:class:`InvertedResidual` blocks) and :mod:`companion.detection`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Bottleneck",
    "DepthwiseSeparableConv",
    "InvertedResidual",
    "MBConv",
    "NormLayer",
    "ResidualBlock",
    "SqueezeExcitation",
    "conv_bn_relu",
    "depthwise_conv2d",
    "pad_tf_same",
    "tf_same_padding",
]

#: Builds a normalisation layer from a channel count (``nn.BatchNorm2d``, ``nn.Identity``'s wrapper, ...).
NormLayer = Callable[[int], nn.Module]


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """``conv 3×3 (stride, padding 1, no bias) → nn.BatchNorm2d → ReLU``, the unit of most CNN stems.

    Shape:
        (B, C_in, H, W) → (B, C_out, ⌈H / stride⌉, ⌈W / stride⌉).
    """
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False), nn.BatchNorm2d(out_channels),
                         nn.ReLU())  # fmt: skip


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
            (the package's :class:`~companion.norm.BatchNorm2d` gives the same numbers, more slowly).
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


class Bottleneck(nn.Module):
    r"""The bottleneck residual block of ResNet-50/101/152 (He et al., 2016), in torchvision's form.

    ``F``: conv 1×1 (``in_channels`` → ``width``, narrowing) → norm → ReLU → conv 3×3
    (``stride``) → norm → ReLU → conv 1×1 (``width`` → ``4 · width``, widening) → norm;
    ``y = ReLU(F(x) + S(x))`` with the identity shortcut when the shapes agree, else the
    projection conv 1×1 (``stride``) → norm. The stride sits on the 3×3 convolution, as in
    torchvision (and Caffe2's "ResNet v1.5"); the paper put it on the first 1×1. Attribute names
    follow torchvision's ``Bottleneck`` (``conv1 … bn3, downsample``), so its state dict loads as
    is. A 1×1–3×3–1×1 block costs less than two 3×3 convolutions at the wide width: the 3×3
    runs on a quarter of the channels.

    Args:
        in_channels: channels in.
        width: channels of the 3×3 convolution; the block outputs ``expansion · width`` (4·width).
        stride: 1 or 2.
        norm_layer: as :class:`ResidualBlock`.

    Shape:
        - Input: (B, in_channels, H, W).
        - Output: (B, 4 · width, ⌈H / stride⌉, ⌈W / stride⌉).

    Raises:
        ValueError: ``stride`` not 1 or 2, or channels < 1.
    """

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1, norm_layer: NormLayer | None = None) -> None:
        super().__init__()
        if stride not in (1, 2) or min(in_channels, width) < 1:
            raise ValueError(f"expected stride 1 or 2 and positive channels, got in_channels={in_channels}, "
                             f"width={width}, stride={stride}")  # fmt: skip
        norm_layer = norm_layer or nn.BatchNorm2d
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = norm_layer(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = norm_layer(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = norm_layer(out_channels)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or in_channels != out_channels:  # projection shortcut (option B)
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                            norm_layer(out_channels))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))  # narrow: (B, width, H, W)
        out = self.relu(self.bn2(self.conv2(out)))  # 3×3 on the narrow width, stride here
        out = self.bn3(self.conv3(out))  # wide again: F(x), (B, 4 · width, H / s, W / s)
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


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


def pad_tf_same(x: torch.Tensor, kernel_size: int, stride: int) -> torch.Tensor:
    """Zero-pad a batch of images (..., H, W) as TensorFlow's ``"SAME"`` does before a convolution.

    :func:`tf_same_padding` along each axis, from the input's own height and width (so every input
    size gets its own padding, as in TensorFlow).

    Args:
        x: (..., H, W), any dtype.
        kernel_size, stride: the following convolution's, >= 1, the same on both axes.

    Returns:
        (..., H + top + bottom, W + left + right), zeros around ``x``.

    Raises:
        ValueError: an argument < 1, or ``x`` with fewer than two dimensions.

    Examples:
        >>> pad_tf_same(torch.ones(1, 1, 4, 4), 3, 2).shape  # (0, 1) on each axis
        torch.Size([1, 1, 5, 5])
    """
    if x.dim() < 2:
        raise ValueError(f"x must be (..., H, W), got shape {tuple(x.shape)}")
    top, bottom = tf_same_padding(x.shape[-2], kernel_size, stride)
    left, right = tf_same_padding(x.shape[-1], kernel_size, stride)
    return F.pad(x, (left, right, top, bottom))


class SqueezeExcitation(nn.Module):
    r"""Squeeze-and-excitation (Hu et al., 2018): reweight each channel by a gate computed from all.

    *Squeeze*: the global average of each channel, :math:`z_c = \frac{1}{HW}\sum_{h,w} x_{c,h,w}`;
    *excitation*: :math:`s = \sigma\big(W_2\, \delta(W_1 z + b_1) + b_2\big)` with a narrowing
    ``W_1`` (C → ``squeeze_channels``), the activation δ and the sigmoid σ; output
    :math:`x_{c,h,w} \cdot s_c`. Written, as in torchvision, with 1×1 convolutions ``fc1``, ``fc2``
    (state-dict compatible with ``torchvision.ops.SqueezeExcitation``). MnasNet-A1 and EfficientNet
    put it inside their MBConv blocks.

    Args:
        input_channels: C.
        squeeze_channels: the gate's hidden width (EfficientNet: a quarter of the block's input
            channels), >= 1.
        activation: builds δ (default ``nn.ReLU``; EfficientNet uses ``nn.SiLU``).
        scale_activation: builds σ (default ``nn.Sigmoid``).

    Shape:
        - Input: (B, C, H, W); output the same.

    Raises:
        ValueError: channels < 1.
    """

    def __init__(self, input_channels: int, squeeze_channels: int,
                 activation: Callable[[], nn.Module] = nn.ReLU,
                 scale_activation: Callable[[], nn.Module] = nn.Sigmoid) -> None:  # fmt: skip
        super().__init__()
        if min(input_channels, squeeze_channels) < 1:
            raise ValueError(f"channels must be >= 1, got input_channels={input_channels}, "
                             f"squeeze_channels={squeeze_channels}")  # fmt: skip
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.avgpool(x)  # squeeze: (B, C, 1, 1)
        s = self.scale_activation(self.fc2(self.activation(self.fc1(z))))  # excitation: (B, C, 1, 1) in (0, 1)
        return x * s  # each channel scaled by its gate


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
    With t = 1 there is no expansion layer. MnasNet (Tan et al., 2019), which named the block
    MBConv, already added squeeze-and-excitation to some blocks; EfficientNet (Tan & Le, 2019) uses
    it and the SiLU activation in every block (its own contribution is compound scaling);
    EfficientNet-Lite removes both again, which makes its blocks exactly these with kernel sizes 3
    and 5.

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
            out = pad_tf_same(out, self.kernel_size, self.stride)
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
