"""Convolutional networks: convolution and pooling from their definitions, and two MNIST networks.

Reading order: the output-size formula; 2-D cross-correlation and true convolution written
as loops over kernel offsets (single channel); the batched, multi-channel layer
:func:`conv2d` as a matrix product over unfolded patches (im2col); max and average
pooling; then the article's network and a faster, better one.

Chapter "Convolutional networks" derives the operations and proves them equal to
PyTorch's; chapter "MNIST in practice" trains the networks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BatchNormCNN",
    "SeedCNN",
    "avg_pool2d",
    "check_image_shape",
    "conv2d",
    "conv_output_size",
    "convolve2d",
    "cross_correlate2d",
    "max_pool2d",
]

IntPair = int | tuple[int, int]


def _pair(value: IntPair, name: str, minimum: int) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return pair


def conv_output_size(size: int, kernel_size: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    r"""Output length of a convolution or pooling along one spatial axis.

    .. math:: H_\text{out} = \left\lfloor \frac{H + 2p - d(k - 1) - 1}{s} \right\rfloor + 1

    the formula of ``nn.Conv2d``'s documentation (``ceil_mode=False`` for pooling).

    Args:
        size: input length H >= 1 (pixels).
        kernel_size: k >= 1.
        stride: s >= 1.
        padding: p >= 0 on each side.
        dilation: d >= 1 (spacing between kernel taps).

    Returns:
        The output length, >= 1.

    Raises:
        ValueError: an argument out of range, or the dilated kernel d(k − 1) + 1 longer than the padded input.

    Examples:
        >>> conv_output_size(28, 5), conv_output_size(28, 3, stride=2, padding=1)
        (24, 14)
    """
    for name, value, minimum in [("size", size, 1), ("kernel_size", kernel_size, 1), ("stride", stride, 1),
                                 ("padding", padding, 0), ("dilation", dilation, 1)]:  # fmt: skip
        _pair(value, name, minimum)
    span = dilation * (kernel_size - 1) + 1
    if size + 2 * padding < span:
        raise ValueError(
            f"kernel spans {span} pixels (kernel_size={kernel_size}, dilation={dilation}) but the padded input "
            f"has only {size + 2 * padding} (size={size}, padding={padding})"
        )
    return (size + 2 * padding - span) // stride + 1


def _check_2d(image: torch.Tensor, kernel: torch.Tensor) -> tuple[int, int]:
    if image.ndim != 2 or kernel.ndim != 2:
        raise ValueError(
            f"expected a 2-D image (H, W) and a 2-D kernel (kH, kW), got {tuple(image.shape)} and {tuple(kernel.shape)}"
        )
    H, W = image.shape
    kH, kW = kernel.shape
    if kH > H or kW > W:
        raise ValueError(f"kernel {tuple(kernel.shape)} is larger than the image {tuple(image.shape)}")
    return H - kH + 1, W - kW + 1


def cross_correlate2d(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    r"""2-D cross-correlation of one image with one kernel, no padding ("valid"): what ``nn.Conv2d`` computes.

    .. math:: Y(x, y) = \sum_{i=0}^{k_H-1} \sum_{j=0}^{k_W-1} X(x + i, y + j)\, K(i, j)

    Written as a loop over kernel offsets (i, j): each weight multiplies a shifted copy of the image.

    Shape:
        image (H, W), kernel (kH, kW) → (H − kH + 1, W − kW + 1).

    Raises:
        ValueError: not 2-D, or the kernel larger than the image.
    """
    H_out, W_out = _check_2d(image, kernel)
    out = image.new_zeros(H_out, W_out)
    for i in range(kernel.shape[0]):
        for j in range(kernel.shape[1]):
            out = out + kernel[i, j] * image[i : i + H_out, j : j + W_out]  # X(x + i, y + j) K(i, j)
    return out


def convolve2d(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    r"""True 2-D convolution, no padding ("valid"): the kernel is flipped, as in the source article's formula.

    .. math:: Y(x, y) = \sum_{i=0}^{k_H-1} \sum_{j=0}^{k_W-1} X(x - i, y - j)\, K(i, j)

    with the output indexed from the first position where the kernel fits, x = k_H − 1, …, H − 1.
    It equals :func:`cross_correlate2d` with the kernel flipped in both axes.

    Shape:
        image (H, W), kernel (kH, kW) → (H − kH + 1, W − kW + 1).

    Raises:
        ValueError: not 2-D, or the kernel larger than the image.
    """
    H_out, W_out = _check_2d(image, kernel)
    kH, kW = kernel.shape
    out = image.new_zeros(H_out, W_out)
    for i in range(kH):
        for j in range(kW):
            # output row r is x = r + kH - 1, so X(x - i) is row r + kH - 1 - i
            out = out + kernel[i, j] * image[kH - 1 - i : kH - 1 - i + H_out, kW - 1 - j : kW - 1 - j + W_out]
    return out


def conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
) -> torch.Tensor:
    r"""Batched, multi-channel 2-D cross-correlation, equal to :func:`torch.nn.functional.conv2d`.

    .. math:: Y_{b,o}(x, y) = \beta_o + \sum_{c} \sum_{i,j} X_{b,c}(s x + d i - p,\; s y + d j - p)\, W_{o,c}(i, j)

    summing over the input channels c of output channel o's group. :func:`torch.nn.functional.unfold`
    copies every receptive field into a column (im2col), so the triple sum over (c, i, j) becomes
    one matrix product between the flattened kernels and those columns; the same sum, regrouped.

    Args:
        input: (B, C_in, H, W).
        weight: (C_out, C_in / groups, kH, kW).
        bias: (C_out,) or ``None``.
        stride, padding, dilation: int or (height, width) pair; >= 1, >= 0 (zeros), >= 1.
        groups: input and output channels are split into this many groups, each convolved separately.

    Shape:
        Output (B, C_out, H_out, W_out), sizes from :func:`conv_output_size`.

    Raises:
        ValueError: wrong rank, channel mismatch, a bias of the wrong shape, a non-positive stride,
            or a kernel larger than the padded input.
    """
    if input.ndim != 4 or weight.ndim != 4:
        raise ValueError(
            f"expected input (B, C_in, H, W) and weight (C_out, C_in / groups, kH, kW), "
            f"got {tuple(input.shape)} and {tuple(weight.shape)}"
        )
    B, C_in, H, W = input.shape
    C_out, C_per_group, kH, kW = weight.shape
    (sH, sW), (pH, pW), (dH, dW) = _pair(stride, "stride", 1), _pair(padding, "padding", 0), _pair(dilation, "dilation", 1)
    if groups < 1 or C_in % groups or C_out % groups or C_per_group * groups != C_in:
        raise ValueError(
            f"channel mismatch: input has C_in={C_in} channels, weight {tuple(weight.shape)} with groups={groups} "
            f"expects C_in = {C_per_group} x {groups} and C_out divisible by groups"
        )
    if bias is not None and tuple(bias.shape) != (C_out,):
        raise ValueError(f"expected bias of shape ({C_out},), got {tuple(bias.shape)}")
    H_out = conv_output_size(H, kH, sH, pH, dH)
    W_out = conv_output_size(W, kW, sW, pW, dW)
    cols = F.unfold(input, (kH, kW), dilation=(dH, dW), padding=(pH, pW), stride=(sH, sW))  # (B, C_in*kH*kW, L)
    cols = cols.view(B, groups, C_per_group * kH * kW, H_out * W_out)  # (B, g, C_in/g*kH*kW, L)
    kernels = weight.reshape(groups, C_out // groups, C_per_group * kH * kW)  # (g, C_out/g, C_in/g*kH*kW)
    out = torch.einsum("gok,bgkl->bgol", kernels, cols)  # (B, g, C_out/g, L)
    out = out.reshape(B, C_out, H_out, W_out)
    if bias is not None:
        out = out + bias.view(1, C_out, 1, 1)
    return out


def _pool_windows(input: torch.Tensor, kernel_size: IntPair, stride: IntPair | None, padding: IntPair, fill: float):
    """Unfold every pooling window: returns (B*C, kH*kW, L) columns, output size and the padded shape."""
    if input.ndim != 4:
        raise ValueError(f"expected input of shape (B, C, H, W), got {tuple(input.shape)}")
    (kH, kW) = _pair(kernel_size, "kernel_size", 1)
    (sH, sW) = _pair(kernel_size if stride is None else stride, "stride", 1)
    (pH, pW) = _pair(padding, "padding", 0)
    if pH > kH // 2 or pW > kW // 2:
        raise ValueError(f"padding must be at most half the kernel size, got padding={padding}, kernel_size={kernel_size}")
    B, C, H, W = input.shape
    H_out, W_out = conv_output_size(H, kH, sH, pH), conv_output_size(W, kW, sW, pW)
    padded = F.pad(input.reshape(B * C, 1, H, W), (pW, pW, pH, pH), value=fill)  # (B*C, 1, H+2p, W+2p)
    cols = F.unfold(padded, (kH, kW), stride=(sH, sW))  # (B*C, kH*kW, L)
    return cols, (H_out, W_out), (kH, kW, sH, sW, pH, pW)


def _refuse_options(function: str, **given: tuple[object, object]) -> None:
    """Raise for every PyTorch option given a value other than the one this function implements."""
    for name, (value, implemented) in given.items():
        if value != implemented:
            raise ValueError(f"{function} implements only {name}={implemented!r} (PyTorch's default), got {name}={value!r}")


def max_pool2d(
    input: torch.Tensor, kernel_size: IntPair, stride: IntPair | None = None, padding: IntPair = 0,
    dilation: IntPair = 1, ceil_mode: bool = False, return_indices: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    r"""2-D max pooling with stride, equal to :func:`torch.nn.functional.max_pool2d`.

    .. math:: O(x, y) = \max_{0 \le i < k_H,\; 0 \le j < k_W} I(s x + i - p,\; s y + j - p)

    The source article's formula omits the stride s. Padding is with −∞, so it never wins.

    Args:
        input: (B, C, H, W) float.
        kernel_size: window size k (int or pair).
        stride: step s (default ``kernel_size``, as in PyTorch).
        padding: p <= k / 2 on each side.
        dilation, ceil_mode: PyTorch's options; only their defaults (1, ``False``) are implemented.
        return_indices: also return where each maximum came from.

    Returns:
        (B, C, H_out, W_out) maxima; with ``return_indices``, also int64 indices into each
        flattened H × W input plane (PyTorch's convention; ties go to the first in row-major order).

    Raises:
        ValueError: wrong rank, non-positive stride, padding over half the kernel, a kernel
            larger than the padded input, or ``dilation`` / ``ceil_mode`` other than the defaults.
    """
    _refuse_options("max_pool2d", dilation=(_pair(dilation, "dilation", 1), (1, 1)), ceil_mode=(ceil_mode, False))
    cols, (H_out, W_out), (kH, kW, sH, sW, pH, pW) = _pool_windows(input, kernel_size, stride, padding, float("-inf"))
    values, offsets = cols.max(dim=1)  # (B*C, L): the first maximum of each window
    B, C, H, W = input.shape
    out = values.view(B, C, H_out, W_out)
    if not return_indices:
        return out
    # float32 holds every index exactly below 2**24 pixels per plane (MPS has no float64)
    plane = torch.arange(H * W, dtype=torch.float32, device=input.device).view(1, 1, H, W)
    where = F.unfold(F.pad(plane, (pW, pW, pH, pH), value=-1.0), (kH, kW), stride=(sH, sW))  # (1, kH*kW, L)
    windows = where.expand(B * C, -1, -1)  # (B*C, kH*kW, L)
    indices = windows.gather(1, offsets.unsqueeze(1)).squeeze(1)  # (B*C, L): input index of each maximum
    return out, indices.long().view(B, C, H_out, W_out)


def avg_pool2d(
    input: torch.Tensor, kernel_size: IntPair, stride: IntPair | None = None, padding: IntPair = 0,
    ceil_mode: bool = False, count_include_pad: bool = True, divisor_override: int | None = None,
) -> torch.Tensor:  # fmt: skip
    r"""2-D average pooling with stride, equal to :func:`torch.nn.functional.avg_pool2d` (its defaults).

    .. math:: O(x, y) = \frac{1}{k_H k_W} \sum_{i, j} I(s x + i - p,\; s y + j - p)

    Padding is with zeros and counted in the average (PyTorch's ``count_include_pad=True``).

    Args:
        input: (B, C, H, W) float.
        kernel_size, stride, padding: as in :func:`max_pool2d`.
        ceil_mode, count_include_pad, divisor_override: PyTorch's options; only their defaults
            (``False``, ``True``, ``None``) are implemented.

    Returns:
        (B, C, H_out, W_out) averages.

    Raises:
        ValueError: as :func:`max_pool2d`, or an option other than its default.
    """
    _refuse_options("avg_pool2d", ceil_mode=(ceil_mode, False), count_include_pad=(count_include_pad, True),
                    divisor_override=(divisor_override, None))  # fmt: skip
    cols, (H_out, W_out), _ = _pool_windows(input, kernel_size, stride, padding, 0.0)
    B, C = input.shape[:2]
    return cols.mean(dim=1).view(B, C, H_out, W_out)


def check_image_shape(x: torch.Tensor, expected: tuple[int, int, int], model: str) -> None:
    """Raise a ``ValueError`` unless ``x`` has shape ``(B, *expected)`` with B >= 1.

    Args:
        x: the input batch.
        expected: (C, H, W) the model was built for.
        model: model name for the message.
    """
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(expected) or x.shape[0] < 1:
        C, H, W = expected
        raise ValueError(f"{model} expects images of shape (B, {C}, {H}, {W}), got {tuple(x.shape)}")


class SeedCNN(nn.Module):
    """The source article's CNN (its section 4), layer for layer: 21,840 parameters for 10 classes.

    ``conv(1→10, 5×5) → ReLU → max-pool 2 → conv(10→20, 5×5) → ReLU → max-pool 2 →
    flatten (320) → linear(320→50) → ReLU → linear(50→num_classes)``; the layout of
    LeNet-5 (LeCun et al., 1998) with other widths. Unlike the article's ``x.view(-1, 320)``,
    which folds a wrong-size image silently into extra batch rows, the input shape is checked.

    ``forward`` max-pools *before* the ReLU. The two commute exactly — ReLU is monotone, so
    ``max(relu(a), relu(b)) = relu(max(a, b))`` — and the gradients are the same too (tested
    bitwise against the article's order), but the ReLU then touches 4× fewer values, which
    makes a CPU training step markedly faster (``benchmarks/mnist_pipeline.py`` measures it).

    Args:
        num_classes: number of output logits.
        article_order: ReLU before max-pooling, as the article writes it (same numbers, slower;
            for measuring what the order costs).

    Shape:
        - Input: (B, 1, 28, 28), float, normalised pixels.
        - Output: (B, num_classes) logits (no softmax).

    Raises:
        ValueError: the input is not (B, 1, 28, 28).
    """

    def __init__(self, num_classes: int = 10, article_order: bool = False) -> None:
        super().__init__()
        self.article_order = article_order
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, num_classes)
        # Parameter-free layers as modules, so hooks (companion.summary.layer_table) see every step.
        self.pool = nn.MaxPool2d(2)
        self.relu = nn.ReLU()
        self.flatten = nn.Flatten()  # keeps the batch dimension, unlike the article's view(-1, 320)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Everything before the classifier: (B, 1, 28, 28) → (B, 50), after ``fc1`` and its ReLU."""
        check_image_shape(x, (1, 28, 28), "SeedCNN")
        for conv in (self.conv1, self.conv2):  # (B, 1, 28, 28) -> (B, 10, 12, 12) -> (B, 20, 4, 4)
            if self.article_order:
                x = self.pool(self.relu(conv(x)))  # ReLU, then max-pool: the article's order
            else:
                x = self.relu(self.pool(conv(x)))  # max-pool, then ReLU: the same, on 4x fewer values
        x = self.flatten(x)  # (B, 320)
        return self.relu(self.fc1(x))  # (B, 50)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """The classifier ``fc2``: (B, 50) → (B, num_classes) logits."""
        return self.fc2(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class BatchNormCNN(nn.Module):
    """SeedCNN's layout made faster to train: batch normalisation, wider layers, one linear head.

    ``[conv 5×5 (no bias) → BatchNorm → max-pool 2 → ReLU] × 2 → flatten → linear``.
    Batch normalisation (Ioffe & Szegedy, 2015) lets a large learning rate train
    without divergence; a bias before BatchNorm would be cancelled by its mean, so the
    convolutions have none; pooling before the ReLU gives the same values as after it
    (both are monotone) on a quarter of the elements. The chapter "MNIST in practice"
    measures its accuracy and training time with the recipe :data:`companion.recipes.IMPROVED`.

    With ``pool_before_norm=True`` each block is ``conv → max-pool 2 → BatchNorm → ReLU``:
    batch normalisation then runs on a quarter of the values, which makes a training step
    cheaper on a CPU. That is another function, not a reordering of the same one: BatchNorm's
    per-channel affine map is decreasing where its scale γ is negative, and then it does not
    commute with the maximum (the normalising statistics are also those of the pooled values).
    :data:`companion.recipes.FAST` uses it.

    Args:
        channels: output channels of the two convolutions.
        num_classes: number of output logits.
        pool_before_norm: max-pool before batch normalisation instead of after it.

    Shape:
        - Input: (B, 1, 28, 28), float, normalised pixels.
        - Output: (B, num_classes) logits.

    Raises:
        ValueError: the input is not (B, 1, 28, 28), or ``channels`` is not two positive integers.
    """

    def __init__(self, channels: tuple[int, int] = (32, 64), num_classes: int = 10,
                 pool_before_norm: bool = False) -> None:  # fmt: skip
        super().__init__()
        self.pool_before_norm = pool_before_norm
        if len(channels) != 2 or min(channels) < 1:
            raise ValueError(f"channels must be two positive integers, got {channels!r}")
        c1, c2 = channels
        self.conv1 = nn.Conv2d(1, c1, kernel_size=5, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=5, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        self.fc = nn.Linear(c2 * 4 * 4, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The convolutional trunk: (B, 1, 28, 28) → feature maps (B, c2, 4, 4), after the last ReLU."""
        check_image_shape(x, (1, 28, 28), "BatchNormCNN")
        x = self._block(x, self.conv1, self.bn1)  # (B, 1, 28, 28) -> (B, c1, 24, 24) -> (B, c1, 12, 12)
        return self._block(x, self.conv2, self.bn2)  # -> (B, c2, 8, 8) -> (B, c2, 4, 4)

    def _block(self, x: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> torch.Tensor:
        if self.pool_before_norm:
            return F.relu(bn(F.max_pool2d(conv(x), 2)))
        return F.relu(F.max_pool2d(bn(conv(x)), 2))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """The classifier: feature maps (B, c2, 4, 4) → logits (B, num_classes)."""
        return self.fc(torch.flatten(features, 1))  # (B, c2 * 16) -> (B, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
