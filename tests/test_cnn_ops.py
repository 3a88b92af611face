"""Convolution and pooling from scratch against PyTorch, in float64: values, gradients, errors."""

from __future__ import annotations

import itertools
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from companion.cnn import avg_pool2d, conv2d, conv_output_size, convolve2d, cross_correlate2d, max_pool2d
from companion.utils import assert_same_values_and_grads

D = torch.float64


def rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=D)


# --- output size -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "k", "s", "p", "d"), list(itertools.product([5, 8, 28], [1, 3, 5], [1, 2, 3], [0, 1, 2], [1, 2])))
def test_conv_output_size_matches_real_conv2d_outputs(size, k, s, p, d):
    if size + 2 * p < d * (k - 1) + 1:
        with pytest.raises(ValueError, match="kernel spans"):
            conv_output_size(size, k, s, p, d)
        return
    layer = nn.Conv2d(1, 1, kernel_size=k, stride=s, padding=p, dilation=d)
    expected = layer(torch.zeros(1, 1, size, size)).shape[-1]
    assert conv_output_size(size, k, s, p, d) == expected


def test_conv_output_size_hand_values_and_errors():
    assert conv_output_size(28, 5) == 24 and conv_output_size(12, 5) == 8  # SeedCNN's two convolutions
    assert conv_output_size(224, 7, stride=2, padding=3) == 112  # ResNet's stem
    with pytest.raises(ValueError, match="stride must be >= 1"):
        conv_output_size(28, 3, stride=0)
    with pytest.raises(ValueError, match="padding must be >= 0"):
        conv_output_size(28, 3, padding=-1)


# --- single-channel loops ----------------------------------------------------------------------------------


def test_cross_correlation_equals_conv2d_with_an_asymmetric_kernel():
    image, kernel = rand(9, 7), rand(3, 2, seed=1)  # asymmetric: a flip changes it
    assert_same_values_and_grads(cross_correlate2d, lambda x, k: F.conv2d(x[None, None], k[None, None])[0, 0], image, kernel)


def test_convolution_is_cross_correlation_with_the_flipped_kernel():
    image, kernel = rand(9, 7), rand(3, 2, seed=1)
    torch.testing.assert_close(convolve2d(image, kernel), cross_correlate2d(image, kernel.flip(0, 1)))
    assert not torch.allclose(convolve2d(image, kernel), cross_correlate2d(image, kernel))


def test_convolution_by_its_definition_at_one_point():
    image, kernel = rand(6, 6), rand(3, 3, seed=2)
    x, y = 4, 3  # an output position in the input's coordinates (x >= kH - 1, y >= kW - 1)
    by_hand = sum(image[x - i, y - j] * kernel[i, j] for i in range(3) for j in range(3))
    torch.testing.assert_close(convolve2d(image, kernel)[x - 2, y - 2], by_hand)


def test_convolution_is_commutative_in_full_mode():
    # A property true convolution has and cross-correlation lacks: with full zero padding, X * K = K * X.
    a, b = rand(4, 5), rand(3, 2, seed=3)
    full_a = F.pad(a, (1, 1, 2, 2))  # pad a by (kernel - 1) on each side
    full_b = F.pad(b, (4, 4, 3, 3))
    torch.testing.assert_close(convolve2d(full_a, b), convolve2d(full_b, a))


@pytest.mark.parametrize("fn", [cross_correlate2d, convolve2d])
def test_single_channel_errors(fn):
    with pytest.raises(ValueError, match=r"expected a 2-D image \(H, W\) and a 2-D kernel"):
        fn(rand(1, 5, 5), rand(3, 3))
    with pytest.raises(ValueError, match=r"kernel \(6, 2\) is larger than the image \(5, 5\)"):
        fn(rand(5, 5), rand(6, 2))


# --- batched conv2d ---------------------------------------------------------------------------------------

CONV_SETTINGS = [
    dict(),
    dict(stride=2),
    dict(padding=1),
    dict(stride=(2, 1), padding=(0, 2)),
    dict(dilation=2, padding=2),
    dict(stride=3, padding=1, dilation=(1, 2)),
    dict(groups=2),
    dict(groups=4, stride=2, padding=1),
]


@pytest.mark.parametrize("settings", CONV_SETTINGS, ids=str)
@pytest.mark.parametrize("kernel", [(3, 3), (3, 2), (1, 1), (5, 4)])
def test_conv2d_equals_pytorch(settings, kernel, precision):
    groups = settings.get("groups", 1)
    x, w, b = rand(3, 4, 11, 9), rand(8, 4 // groups, *kernel, seed=1), rand(8, seed=2)
    precision.assert_same_values_and_grads(
        lambda x, w, b: conv2d(x, w, b, **settings), lambda x, w, b: F.conv2d(x, w, b, **settings), x, w, b, seed=99
    )  # fmt: skip


def test_conv2d_without_bias_and_as_nn_conv2d():
    layer = nn.Conv2d(3, 5, kernel_size=(3, 4), stride=2, padding=1, bias=False).double()
    x = rand(2, 3, 10, 12)
    torch.testing.assert_close(conv2d(x, layer.weight, None, stride=2, padding=1), layer(x))


def test_conv2d_batched_equals_one_sample_at_a_time_and_leaves_inputs_unchanged():
    x, w, b = rand(5, 2, 8, 8), rand(3, 2, 3, 3, seed=1), rand(3, seed=2)
    copies = [t.clone() for t in (x, w, b)]
    batched = conv2d(x, w, b, stride=2, padding=1)
    one_by_one = torch.cat([conv2d(x[i : i + 1], w, b, stride=2, padding=1) for i in range(5)])
    torch.testing.assert_close(batched, one_by_one)
    for original, copy in zip((x, w, b), copies, strict=True):
        assert torch.equal(original, copy)


@pytest.mark.parametrize(("x_shape", "w_shape", "kwargs", "match"), [
    ((2, 3, 8, 8), (4, 2, 3, 3), {}, r"channel mismatch: input has C_in=3"),
    ((2, 4, 8, 8), (3, 2, 3, 3), {"groups": 2}, r"channel mismatch"),
    ((3, 8, 8), (4, 3, 3, 3), {}, r"expected input \(B, C_in, H, W\).*got \(3, 8, 8\)"),
    ((2, 3, 8, 8), (4, 3, 3), {}, r"expected input .* got \(2, 3, 8, 8\) and \(4, 3, 3\)"),
    ((2, 3, 4, 4), (4, 3, 7, 7), {"padding": 1}, r"kernel spans 7 pixels .* padded input has only 6"),
    ((2, 3, 8, 8), (4, 3, 3, 3), {"stride": 0}, r"stride must be >= 1"),
    ((2, 3, 8, 8), (4, 3, 3, 3), {"stride": (1, -2)}, r"stride must be >= 1"),
])  # fmt: skip
def test_conv2d_errors(x_shape, w_shape, kwargs, match):
    with pytest.raises(ValueError, match=match):
        conv2d(rand(*x_shape), rand(*w_shape), **kwargs)


def test_conv2d_rejects_a_bias_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"expected bias of shape \(4,\), got \(3,\)"):
        conv2d(rand(1, 3, 8, 8), rand(4, 3, 3, 3), rand(3))


# --- pooling ------------------------------------------------------------------------------------------------

POOL_SETTINGS = [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=1),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=(3, 2), stride=(1, 2)),
    dict(kernel_size=2, stride=3),
    dict(kernel_size=(4, 2), stride=2, padding=(2, 1)),
]


@pytest.mark.parametrize("settings", POOL_SETTINGS, ids=str)
def test_max_pool2d_values_indices_and_gradients_equal_pytorch(settings, precision):
    x = rand(2, 3, 9, 11)
    precision.assert_same_values_and_grads(lambda x: max_pool2d(x, **settings), lambda x: F.max_pool2d(x, **settings),
                                           x, seed=99)  # fmt: skip
    x = x.to(precision.device, precision.dtype)
    _, ours = max_pool2d(x, return_indices=True, **settings)
    _, theirs = F.max_pool2d(x, return_indices=True, **settings)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("settings", POOL_SETTINGS, ids=str)
def test_avg_pool2d_values_and_gradients_equal_pytorch(settings, precision):
    precision.assert_same_values_and_grads(lambda x: avg_pool2d(x, **settings), lambda x: F.avg_pool2d(x, **settings),
                                           rand(2, 3, 9, 11), seed=99)  # fmt: skip


def test_max_pool2d_ties_go_to_the_first_element_like_pytorch():
    x = torch.zeros(1, 1, 4, 4, dtype=D)  # every window is a tie
    assert torch.equal(max_pool2d(x, 2, return_indices=True)[1], F.max_pool2d(x, 2, return_indices=True)[1])
    assert max_pool2d(x, 2, return_indices=True)[1].flatten().tolist() == [0, 2, 8, 10]


def test_pooling_by_hand_with_stride():
    x = torch.arange(16, dtype=D).view(1, 1, 4, 4)
    assert max_pool2d(x, 2).flatten().tolist() == [5, 7, 13, 15]
    assert max_pool2d(x, 2, stride=1).flatten().tolist() == [5, 6, 7, 9, 10, 11, 13, 14, 15]
    assert avg_pool2d(x, 2).flatten().tolist() == [2.5, 4.5, 10.5, 12.5]


def test_pooling_batched_equals_one_at_a_time_and_leaves_the_input_unchanged():
    x = rand(4, 2, 8, 8)
    copy = x.clone()
    for pool in (max_pool2d, avg_pool2d):
        torch.testing.assert_close(pool(x, 3, 2, 1), torch.cat([pool(x[i : i + 1], 3, 2, 1) for i in range(4)]))
    assert torch.equal(x, copy)


@pytest.mark.parametrize("pool", [max_pool2d, avg_pool2d])
@pytest.mark.parametrize(("shape", "kwargs", "match"), [
    ((3, 8, 8), {"kernel_size": 2}, r"expected input of shape \(B, C, H, W\), got \(3, 8, 8\)"),
    ((1, 1, 8, 8), {"kernel_size": 2, "stride": 0}, r"stride must be >= 1"),
    ((1, 1, 8, 8), {"kernel_size": 2, "padding": 2}, r"padding must be at most half the kernel size"),
    ((1, 1, 3, 3), {"kernel_size": 5, "padding": 0}, r"kernel spans 5 pixels"),
    ((1, 1, 8, 8), {"kernel_size": 0}, r"kernel_size must be >= 1"),
])  # fmt: skip
def test_pooling_errors(pool, shape, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pool(rand(*shape), **kwargs)


@pytest.mark.parametrize(("function", "kwargs", "named"), [
    ("max_pool2d", {"dilation": 2}, "dilation=(2, 2)"),
    ("max_pool2d", {"ceil_mode": True}, "ceil_mode=True"),
    ("avg_pool2d", {"ceil_mode": True}, "ceil_mode=True"),
    ("avg_pool2d", {"count_include_pad": False}, "count_include_pad=False"),
    ("avg_pool2d", {"divisor_override": 3}, "divisor_override=3"),
])  # fmt: skip
def test_pooling_refuses_pytorch_options_it_does_not_implement(function, kwargs, named):
    import companion.cnn

    x = torch.randn(1, 1, 7, 7)
    assert getattr(F, function)(x, 2, **kwargs).shape[-1] >= 3  # PyTorch accepts them
    with pytest.raises(ValueError, match=re.escape(named)):
        getattr(companion.cnn, function)(x, 2, **kwargs)


def test_pooling_defaults_spelled_out_are_accepted():
    from companion.cnn import avg_pool2d, max_pool2d

    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(max_pool2d(x, 2, dilation=1, ceil_mode=False), F.max_pool2d(x, 2))
    torch.testing.assert_close(avg_pool2d(x, 3, 1, 1, False, True, None), F.avg_pool2d(x, 3, 1, 1, False, True, None))


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_conv2d_refuses_string_padding(padding):
    from companion.cnn import conv2d

    with pytest.raises(ValueError, match="padding must be an int or a pair of ints"):
        conv2d(torch.randn(1, 1, 5, 5), torch.randn(1, 1, 3, 3), padding=padding)
