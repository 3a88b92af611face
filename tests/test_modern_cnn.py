"""Normalisation, residual and efficient blocks from scratch against PyTorch and torchvision, in float64."""

from __future__ import annotations

import copy
import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18
from torchvision.models.mobilenetv2 import InvertedResidual as TorchvisionInvertedResidual
from torchvision.models.resnet import BasicBlock

from companion.blocks import (
    Bottleneck,
    DepthwiseSeparableConv,
    InvertedResidual,
    MBConv,
    ResidualBlock,
    SqueezeExcitation,
    depthwise_conv2d,
    pad_tf_same,
    tf_same_padding,
)
from companion.modern_cnn import DeepCNN, EfficientCNN, ResNet, resnet50
from companion.norm import BatchNorm2d, GroupNorm, LayerNorm, batch_norm, group_norm, layer_norm
from companion.summary import count_parameters, layer_table

D = torch.float64


def rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=D)


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights *and* running statistics, so that no default (γ = 1, μ = 0) hides a mistake."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                values = torch.rand(tensor.shape, generator=g, dtype=D) + 0.5 if "var" in name else torch.randn(
                    tensor.shape, generator=g, dtype=D)  # fmt: skip
                tensor.copy_(values * (0.3 if "weight" in name and tensor.ndim == 4 else 1))
    return module


def assert_modules_agree(ours, theirs, x, names=None):
    """Same outputs, input gradients, parameter gradients (by ``names``: ours → theirs) and buffers."""
    ours.zero_grad(set_to_none=True), theirs.zero_grad(set_to_none=True)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_a, out_b = ours(xa), theirs(xb)
    torch.testing.assert_close(out_a, out_b)
    probe = rand(*out_a.shape, seed=7)
    (out_a * probe).sum().backward()
    (out_b * probe).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad)
    params_b = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, params_b[names(name) if names else name].grad, msg=name)
    buffers_b = dict(theirs.named_buffers())
    for name, b in ours.named_buffers():
        torch.testing.assert_close(b, buffers_b[names(name) if names else name], msg=name)


# --- batch normalisation -------------------------------------------------------------------------


@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm2d_equals_pytorch_over_several_training_steps_then_in_eval(momentum, affine):
    ours = BatchNorm2d(5, momentum=momentum, affine=affine).double()
    theirs = nn.BatchNorm2d(5, momentum=momentum, affine=affine).double()
    if affine:
        randomize(ours)
        theirs.load_state_dict(ours.state_dict())
    for step in range(4):  # different batch sizes, a short last batch
        x = rand(6 - step, 5, 4, 3, seed=step) * 3 + 2
        assert_modules_agree(ours, theirs, x)
    assert int(ours.num_batches_tracked) == 4
    assert not torch.allclose(ours.running_mean, torch.zeros(5, dtype=D))  # they did move
    ours.eval(), theirs.eval()
    assert_modules_agree(ours, theirs, rand(3, 5, 4, 3, seed=9))
    assert set(ours.state_dict()) == set(theirs.state_dict())


def test_batch_norm_running_estimate_by_hand_uses_the_unbiased_variance():
    x = torch.tensor([1.0, 2.0, 4.0, 9.0], dtype=D).view(4, 1)  # mean 4, biased var 9.5, unbiased 38/3
    mean, var = torch.zeros(1, dtype=D), torch.ones(1, dtype=D)
    y = batch_norm(x, mean, var, training=True, momentum=0.25)
    torch.testing.assert_close(mean, torch.tensor([0.25 * 4.0], dtype=D))
    torch.testing.assert_close(var, torch.tensor([0.75 + 0.25 * 38 / 3], dtype=D))
    torch.testing.assert_close(y.flatten(), (x.flatten() - 4) / math.sqrt(9.5 + 1e-5))


def test_batch_norm_function_equals_f_batch_norm_for_any_rank():
    for shape in [(7, 3), (5, 3, 6), (2, 3, 4, 5, 2)]:
        x = rand(*shape)
        w, b = rand(3, seed=1), rand(3, seed=2)
        ra, rb = rand(3, seed=3), rand(3, seed=3)
        va, vb = rand(3, seed=4).abs() + 0.5, rand(3, seed=4).abs() + 0.5
        ours = batch_norm(x, ra, va, w, b, training=True, momentum=0.2, eps=1e-3)
        theirs = F.batch_norm(x, rb, vb, w, b, training=True, momentum=0.2, eps=1e-3)
        torch.testing.assert_close(ours, theirs)
        torch.testing.assert_close((ra, va), (rb, vb))
        torch.testing.assert_close(batch_norm(x, ra, va, w, b), F.batch_norm(x, rb, vb, w, b))


def test_batch_norm_without_running_stats_uses_batch_statistics_in_eval_too():
    ours = BatchNorm2d(4, track_running_stats=False).double().eval()
    theirs = nn.BatchNorm2d(4, track_running_stats=False).double().eval()
    assert_modules_agree(ours, theirs, rand(3, 4, 2, 2))
    assert ours.running_mean is None and "running_mean" not in ours.state_dict()


def test_batch_norm_errors():
    with pytest.raises(ValueError, match="both be None or neither"):
        batch_norm(rand(4, 3), torch.zeros(3, dtype=D), None, training=True)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        batch_norm(rand(1, 3), None, None, training=True)
    with pytest.raises(ValueError, match=r"running_mean must have shape \(3,\)"):
        batch_norm(rand(2, 3), torch.zeros(4, dtype=D), torch.ones(3, dtype=D))
    with pytest.raises(ValueError, match="evaluation mode needs"):
        batch_norm(rand(2, 3), None, None, training=False)
    with pytest.raises(ValueError, match=r"\(B, C, \*\)"):
        batch_norm(rand(3), None, None, training=True)
    with pytest.raises(ValueError, match=r"expects input \(B, 4, H, W\), got \(2, 3, 5, 5\)"):
        BatchNorm2d(4)(torch.zeros(2, 3, 5, 5))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        BatchNorm2d(4)(torch.zeros(1, 4, 1, 1))


# --- layer normalisation -------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(6,), (3, 6), (2, 3, 6)])
@pytest.mark.parametrize("kwargs", [{}, {"elementwise_affine": False}, {"bias": False}, {"eps": 1e-2}])
def test_layer_norm_equals_pytorch(shape, kwargs):
    ours = randomize(LayerNorm(shape, **kwargs).double())
    theirs = nn.LayerNorm(shape, **kwargs).double()
    theirs.load_state_dict(ours.state_dict())
    assert_modules_agree(ours, theirs, rand(4, 5, *shape) * 2 + 1)
    ours.eval(), theirs.eval()  # no statistics: the same in both modes
    assert_modules_agree(ours, theirs, rand(1, *shape, seed=3))


def test_layer_norm_errors():
    with pytest.raises(ValueError, match=r"expects input of shape \(\*, 6\), got \(2, 5\)"):
        layer_norm(rand(2, 5), (6,))
    with pytest.raises(ValueError, match=r"weight must have shape \(5,\)"):
        layer_norm(rand(2, 5), (5,), weight=torch.ones(4, dtype=D))
    with pytest.raises(ValueError, match="expects input of shape"):
        LayerNorm(8)(torch.zeros(3, 7))


# --- residual block ------------------------------------------------------------------------------


@pytest.mark.parametrize("in_channels, out_channels, stride", [(4, 4, 1), (4, 6, 1), (4, 6, 2), (5, 5, 2)])
@pytest.mark.parametrize("training", [True, False])
def test_residual_block_equals_torchvision_basic_block(in_channels, out_channels, stride, training):
    ours = randomize(ResidualBlock(in_channels, out_channels, stride).double())
    projection = stride != 1 or in_channels != out_channels
    assert (ours.downsample is not None) == projection
    downsample = None
    if projection:
        downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                   nn.BatchNorm2d(out_channels))  # fmt: skip
    theirs = BasicBlock(in_channels, out_channels, stride, downsample).double()
    theirs.load_state_dict(ours.state_dict())  # strict: the same keys
    ours.train(training), theirs.train(training)
    assert_modules_agree(ours, theirs, rand(3, in_channels, 7, 6))


def test_residual_block_loads_resnet18_blocks_and_the_package_batch_norm_gives_the_same():
    net = resnet18(weights=None).double().eval()
    for block in (net.layer1[0], net.layer2[0]):  # identity and projection shortcuts
        ours = ResidualBlock(block.conv1.in_channels, block.conv1.out_channels, block.stride).double().eval()
        ours.load_state_dict(randomize(block).state_dict())
        scratch = ResidualBlock(block.conv1.in_channels, block.conv1.out_channels, block.stride,
                                norm_layer=BatchNorm2d).double().eval()  # fmt: skip
        scratch.load_state_dict(block.state_dict())
        x = rand(2, block.conv1.in_channels, 8, 8)
        assert_modules_agree(ours, block, x)
        assert_modules_agree(scratch, block, x)


def test_plain_block_is_the_residual_block_without_the_addition():
    plain = randomize(ResidualBlock(4, 6, 2, shortcut=False).double().eval())
    assert plain.downsample is None
    x = rand(2, 4, 6, 6)
    expected = F.relu(plain.bn2(plain.conv2(F.relu(plain.bn1(plain.conv1(x))))))
    torch.testing.assert_close(plain(x), expected)


def test_residual_block_errors():
    with pytest.raises(ValueError, match="stride 1 or 2"):
        ResidualBlock(4, 4, stride=3)


# --- depthwise and separable convolutions --------------------------------------------------------


@pytest.mark.parametrize("kernel_size, stride, padding", [(3, 1, 1), (3, 2, 1), (5, 2, 2), (3, 1, 0)])
def test_depthwise_conv2d_equals_grouped_conv2d(kernel_size, stride, padding):
    x, w, b = rand(2, 5, 9, 8), rand(5, 1, kernel_size, kernel_size, seed=1), rand(5, seed=2)
    leaves_a = [t.clone().requires_grad_() for t in (x, w, b)]
    leaves_b = [t.clone().requires_grad_() for t in (x, w, b)]
    ours = depthwise_conv2d(*leaves_a, stride=stride, padding=padding)
    theirs = F.conv2d(*leaves_b, stride=stride, padding=padding, groups=5)
    torch.testing.assert_close(ours, theirs)
    probe = rand(*ours.shape, seed=3)
    for ga, gb in zip(torch.autograd.grad((ours * probe).sum(), leaves_a),
                      torch.autograd.grad((theirs * probe).sum(), leaves_b)):  # fmt: skip
        torch.testing.assert_close(ga, gb)


def test_depthwise_conv2d_by_hand_one_channel_does_not_see_another():
    x = torch.zeros(1, 2, 3, 3, dtype=D)
    x[0, 1] = 1.0  # only channel 1 has signal
    w = torch.ones(2, 1, 3, 3, dtype=D)
    out = depthwise_conv2d(x, w)
    assert out.shape == (1, 2, 1, 1) and out[0, 0].item() == 0.0 and out[0, 1].item() == 9.0


def test_depthwise_conv2d_errors():
    with pytest.raises(ValueError, match=r"weight \(C, 1, k, k\)"):
        depthwise_conv2d(rand(1, 3, 5, 5), rand(4, 1, 3, 3))
    with pytest.raises(ValueError, match="stride >= 1"):
        depthwise_conv2d(rand(1, 3, 5, 5), rand(3, 1, 3, 3), stride=0)
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\)"):
        depthwise_conv2d(rand(1, 3, 5, 5), rand(3, 1, 3, 3), rand(3, 1))
    with pytest.raises(ValueError, match="does not fit the padded input"):
        depthwise_conv2d(rand(1, 3, 2, 5), rand(3, 1, 3, 3))
    for kwargs in [dict(stride=(1, 2)), dict(padding="same")]:
        with pytest.raises(TypeError, match="F.conv2d\\(groups=C\\)"):
            depthwise_conv2d(rand(1, 3, 5, 5), rand(3, 1, 3, 3), **kwargs)


@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_separable_conv_equals_pytorch_built_from_grouped_convs(stride):
    ours = randomize(DepthwiseSeparableConv(4, 6, 3, stride).double())
    theirs = nn.Sequential(
        nn.Conv2d(4, 4, 3, stride, 1, groups=4, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 6, 1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
    ).double()  # fmt: skip
    names = {"depthwise": "0", "bn1": "1", "pointwise": "3", "bn2": "4"}

    def rename(name):
        head, rest = name.split(".", 1)
        return f"{names[head]}.{rest}"

    theirs.load_state_dict({rename(k): v for k, v in ours.state_dict().items()})
    assert_modules_agree(ours, theirs, rand(3, 4, 7, 7), names=rename)
    ours.eval()  # and the from-scratch function with the module's weights
    x = rand(2, 4, 7, 7, seed=5)
    by_hand = depthwise_conv2d(x, ours.depthwise.weight, stride=stride, padding=1)
    by_hand = F.relu(ours.bn2(torch.einsum("bchw,oc->bohw", F.relu(ours.bn1(by_hand)), ours.pointwise.weight[:, :, 0, 0])))
    torch.testing.assert_close(ours(x), by_hand)


def test_separable_parameters_and_macs_by_formula():
    C_in, C_out, k = 16, 32, 3
    block = DepthwiseSeparableConv(C_in, C_out, k)
    convs = C_in * k * k + C_in * C_out
    assert count_parameters(block) == convs + 2 * C_in + 2 * C_out  # plus the two norms' γ, β
    rows = layer_table(block, (1, C_in, 10, 10))
    assert sum(r.macs for r in rows) == 100 * convs  # per output position, at stride 1
    plain = nn.Conv2d(C_in, C_out, k, padding=1, bias=False)
    assert sum(r.macs for r in layer_table(plain, (1, C_in, 10, 10))) == 100 * C_in * C_out * k * k


# --- inverted residual (MBConv) ------------------------------------------------------------------


@pytest.mark.parametrize("in_channels, out_channels, stride, expand_ratio",
                         [(4, 4, 1, 6), (4, 6, 2, 6), (4, 4, 1, 1), (6, 4, 1, 1), (4, 8, 2, 3)])  # fmt: skip
@pytest.mark.parametrize("training", [True, False])
def test_inverted_residual_equals_torchvision(in_channels, out_channels, stride, expand_ratio, training):
    theirs = randomize(TorchvisionInvertedResidual(in_channels, out_channels, stride, expand_ratio).double())
    ours = InvertedResidual.from_torchvision(theirs)
    assert ours.use_residual == theirs.use_res_connect
    assert count_parameters(ours) == count_parameters(theirs)
    ours.train(training), theirs.train(training)
    mapping = {v: k for k, v in _torchvision_names(ours, theirs).items()}
    assert_modules_agree(ours, theirs, rand(3, in_channels, 8, 7), names=lambda name: mapping[name])


def _torchvision_names(ours, theirs):
    """torchvision name → package name, paired by position (the two list tensors in the same order)."""
    return {t: o for (t, _), (o, _) in zip(theirs.state_dict().items(), ours.state_dict().items(), strict=True)}


def test_inverted_residual_from_torchvision_keeps_batch_norm_settings_and_refuses_others():
    theirs = TorchvisionInvertedResidual(4, 4, 1, 6, norm_layer=partial(nn.BatchNorm2d, eps=1e-3, momentum=0.01))
    ours = InvertedResidual.from_torchvision(theirs)
    assert ours.project[1].eps == 1e-3 and ours.expand[1].momentum == 0.01
    assert MBConv is InvertedResidual
    with pytest.raises(TypeError, match="mobilenetv2.InvertedResidual"):
        InvertedResidual.from_torchvision(nn.Conv2d(1, 1, 1))


@pytest.mark.parametrize("size, kernel_size, stride, expected",
                         [(224, 3, 2, (0, 1)), (112, 3, 1, (1, 1)), (28, 5, 2, (1, 2)), (7, 5, 1, (2, 2)),
                          (1, 3, 2, (1, 1)), (15, 5, 2, (2, 2))])  # fmt: skip
def test_tf_same_padding_by_hand_gives_ceil_size(size, kernel_size, stride, expected):
    before, after = tf_same_padding(size, kernel_size, stride)
    assert (before, after) == expected
    assert (size + before + after - kernel_size) // stride + 1 == math.ceil(size / stride)


def test_tf_same_padding_errors():
    with pytest.raises(ValueError, match="must be >= 1"):
        tf_same_padding(10, 3, 0)


def test_inverted_residual_tf_same_padding_pads_after_on_odd_totals():
    block = randomize(InvertedResidual(3, 5, stride=2, expand_ratio=1, kernel_size=3, padding="tf-same").double())
    block.eval()
    x = rand(1, 3, 8, 6)
    out = block(x)
    assert out.shape == (1, 5, 4, 3)
    conv = block.depthwise[0]
    expected = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, stride=2, groups=3)
    expected = block.project(block.depthwise[2](block.depthwise[1](expected)))
    torch.testing.assert_close(out, expected)


def test_inverted_residual_errors():
    for kwargs in [dict(stride=3), dict(expand_ratio=0.5), dict(kernel_size=4), dict(padding="same")]:
        with pytest.raises(ValueError, match="expected stride 1 or 2"):
            InvertedResidual(4, 4, **kwargs)


# --- the networks --------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [8, 14, 20])
def test_deep_cnn_has_6n_plus_2_weighted_layers_and_plain_has_no_shortcuts(depth):
    for residual in (True, False):
        net = DeepCNN(depth, residual=residual)
        rows = layer_table(net, (2, 1, 28, 28))
        convs = [r for r in rows if r.kind == "Conv2d" and not r.name.endswith("downsample.0")]
        assert len(convs) + 1 == depth  # + the linear layer
        assert rows[-1].output_shape == (10,)
        has_projection = any(r.name.endswith("downsample.0") for r in rows)
        assert has_projection == residual
    assert DeepCNN(8, batch_norm=False).stem[0].bias is not None


def test_deep_cnn_residual_differs_from_plain_only_by_the_shortcut():
    torch.manual_seed(0)
    residual = DeepCNN(8, residual=True).double().eval()
    plain = DeepCNN(8, residual=False).double().eval()
    missing, unexpected = plain.load_state_dict(residual.state_dict(), strict=False)
    assert not missing and all(".downsample." in key for key in unexpected)  # only the projections are extra
    x = rand(2, 1, 28, 28)
    h_res = h_plain = residual.stem(x)
    torch.testing.assert_close(h_res, plain.stem(x))
    for block_res, block_plain in zip(residual.blocks, plain.blocks):
        h_in = h_res
        F_x = block_res.bn2(block_res.conv2(F.relu(block_res.bn1(block_res.conv1(h_in)))))
        shortcut = h_in if block_res.downsample is None else block_res.downsample(h_in)
        h_res = block_res(h_in)
        torch.testing.assert_close(h_res, F.relu(F_x + shortcut))  # residual: ReLU(F(x) + S(x))
        torch.testing.assert_close(block_plain(h_in), F.relu(F_x))  # plain: ReLU(F(x)), same weights
    assert not torch.allclose(residual(x), plain(x))


def test_network_errors():
    with pytest.raises(ValueError, match=r"6n \+ 2"):
        DeepCNN(10)
    with pytest.raises(ValueError, match="'conv', 'separable' or 'mbconv'"):
        EfficientCNN("dense")
    with pytest.raises(ValueError, match="three positive widths"):
        EfficientCNN("conv", widths=(8, 16))


def test_efficient_cnn_block_kinds_cost_what_their_formulas_say():
    macs = {kind: sum(r.macs for r in layer_table(EfficientCNN(kind), (1, 1, 28, 28)))
            for kind in ("conv", "separable", "mbconv")}  # fmt: skip
    assert macs["separable"] < macs["conv"] / 4  # k² = 9 → roughly 1/9 of the cost for wide layers
    params = {kind: count_parameters(EfficientCNN(kind)) for kind in macs}
    assert params["separable"] < params["conv"]
    net = EfficientCNN("mbconv", widths=(8, 8, 8), blocks_per_stage=1)
    assert isinstance(net.blocks[0], InvertedResidual) and net.blocks[0].use_residual
    assert copy.deepcopy(net)(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_pad_tf_same_pads_each_axis_by_its_own_size_and_refuses_a_vector():
    x = torch.arange(4 * 5, dtype=D).reshape(1, 1, 4, 5)
    padded = pad_tf_same(x, 3, 2)  # H = 4: (0, 1); W = 5: (1, 1), by hand
    assert padded.shape == (1, 1, 5, 7)
    torch.testing.assert_close(padded[..., :4, 1:6], x)
    assert padded[..., 4, :].abs().sum() == 0 and padded[..., :, 0].abs().sum() == 0 and padded[..., :, 6].abs().sum() == 0
    # TensorFlow's output size, ceil(size / stride), after a valid convolution of the padded input
    assert F.conv2d(padded, torch.ones(1, 1, 3, 3, dtype=D), stride=2).shape[-2:] == (2, 3)
    with pytest.raises(ValueError, match=r"\(\.\.\., H, W\)"):
        pad_tf_same(torch.zeros(5), 3, 2)



# --- bottleneck, ResNet-50, squeeze-and-excitation, group normalisation -----------------------


@pytest.mark.parametrize("in_channels, width, stride", [(16, 4, 1), (8, 4, 1), (16, 4, 2), (8, 2, 2)])
@pytest.mark.parametrize("training", [True, False])
def test_bottleneck_equals_torchvision(in_channels, width, stride, training):
    from torchvision.models.resnet import Bottleneck as TorchvisionBottleneck

    ours = randomize(Bottleneck(in_channels, width, stride).double())
    projection = stride != 1 or in_channels != 4 * width
    assert (ours.downsample is not None) == projection
    downsample = None
    if projection:
        downsample = nn.Sequential(nn.Conv2d(in_channels, 4 * width, 1, stride, bias=False),
                                   nn.BatchNorm2d(4 * width))  # fmt: skip
    theirs = TorchvisionBottleneck(in_channels, width, stride, downsample).double()
    theirs.load_state_dict(ours.state_dict())  # strict: the same keys
    ours.train(training), theirs.train(training)
    assert_modules_agree(ours, theirs, rand(2, in_channels, 7, 6))


def test_resnet50_is_torchvision_s_resnet50():
    from torchvision.models import resnet50 as torchvision_resnet50

    with torch.device("meta"):  # no memory: shapes only
        assert count_parameters(resnet50()) == count_parameters(torchvision_resnet50()) == 25_557_032
    theirs = randomize(torchvision_resnet50(num_classes=10).double())
    ours = resnet50(num_classes=10).double()
    ours.load_state_dict(theirs.state_dict())  # strict
    for training in (True, False):
        ours.train(training), theirs.train(training)
        x = rand(2, 3, 64, 64)
        torch.testing.assert_close(ours(x), theirs(x))


def test_resnet_errors():
    with pytest.raises(ValueError, match="four block counts"):
        ResNet((3, 4, 6))
    with pytest.raises(ValueError, match="four block counts"):
        ResNet((3, 0, 6, 3))
    with pytest.raises(ValueError, match="stride 1 or 2"):
        Bottleneck(8, 2, stride=3)


@pytest.mark.parametrize("activation", [nn.ReLU, nn.SiLU])
def test_squeeze_excitation_equals_torchvision(activation):
    from torchvision.ops import SqueezeExcitation as TorchvisionSE

    ours = randomize(SqueezeExcitation(12, 3, activation=activation).double())
    theirs = TorchvisionSE(12, 3, activation=activation).double()
    theirs.load_state_dict(ours.state_dict())
    assert_modules_agree(ours, theirs, rand(2, 12, 5, 4))


def test_squeeze_excitation_by_hand():
    se = randomize(SqueezeExcitation(3, 2).double())
    x = rand(1, 3, 4, 4)
    z = x.mean((2, 3)).flatten()  # squeeze
    w1, b1 = se.fc1.weight[:, :, 0, 0], se.fc1.bias
    w2, b2 = se.fc2.weight[:, :, 0, 0], se.fc2.bias
    gate = torch.sigmoid(w2 @ torch.relu(w1 @ z + b1) + b2)  # excitation, one value per channel
    torch.testing.assert_close(se(x), x * gate[None, :, None, None])
    with pytest.raises(ValueError, match="channels must be >= 1"):
        SqueezeExcitation(3, 0)


@pytest.mark.parametrize("num_groups, channels, shape", [(1, 6, (5, 4)), (3, 6, (5, 4)), (6, 6, (3,)), (2, 4, ())])
def test_group_norm_equals_pytorch(num_groups, channels, shape):
    theirs = randomize(nn.GroupNorm(num_groups, channels).double())
    ours = GroupNorm(num_groups, channels).double()
    ours.load_state_dict(theirs.state_dict())
    assert_modules_agree(ours, theirs, rand(3, channels, *shape))
    plain = group_norm(rand(2, channels, *shape), num_groups)
    torch.testing.assert_close(plain, F.group_norm(rand(2, channels, *shape), num_groups))


def test_group_norm_does_not_depend_on_the_batch_and_errors():
    x = rand(8, 6, 4, 4)
    torch.testing.assert_close(group_norm(x, 3)[:1], group_norm(x[:1], 3))  # one sample alone: the same
    with pytest.raises(ValueError, match="must divide"):
        group_norm(x, 4)
    with pytest.raises(ValueError, match="must divide"):
        GroupNorm(4, 6)
    with pytest.raises(ValueError, match="weight must have shape"):
        group_norm(x, 3, weight=torch.ones(5, dtype=D))
    with pytest.raises(ValueError, match="shape \\(B, C, \\*\\)"):
        group_norm(torch.ones(4), 2)
