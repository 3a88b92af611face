"""layer_table against hand counts and PyTorch's FlopCounterMode; receptive fields against gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from companion.cnn import BatchNormCNN, SeedCNN
from companion.summary import ReceptiveField, images_per_second, layer_table, receptive_fields


def test_seed_cnn_table_by_hand():
    rows = layer_table(SeedCNN(), (1, 1, 28, 28))  # SeedCNN max-pools before its ReLUs
    assert [r.name for r in rows] == ["conv1", "pool", "relu", "conv2", "pool", "relu", "flatten", "fc1", "relu", "fc2"]
    assert [r.output_shape for r in rows][:4] == [(10, 24, 24), (10, 12, 12), (10, 12, 12), (20, 8, 8)]
    assert rows[6].output_shape == (320,) and rows[-1].output_shape == (10,)
    assert [r.params for r in rows if r.params] == [260, 5020, 16050, 510]
    conv1, conv2, fc1, fc2 = 10 * 24 * 24 * 25, 20 * 8 * 8 * 250, 320 * 50, 50 * 10
    assert [r.macs for r in rows if r.macs] == [conv1, conv2, fc1, fc2]


@pytest.mark.parametrize("model", [SeedCNN(), BatchNormCNN(), nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, groups=1),
                                                                            nn.Conv2d(4, 8, 3, groups=2, padding=1),
                                                                            nn.Flatten(), nn.Linear(8 * 13 * 13, 3))])
def test_macs_equal_half_of_pytorchs_flop_count_and_params_add_up(model):
    rows = layer_table(model, (1, 1, 28, 28))
    with FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(1, 1, 28, 28))
    assert 2 * sum(r.macs for r in rows) == counter.get_total_flops()
    assert sum(r.params for r in rows) == sum(p.numel() for p in model.parameters())


def test_macs_are_per_sample_and_the_mode_is_restored():
    model = SeedCNN().train()
    assert [r.macs for r in layer_table(model, (4, 1, 28, 28))] == [r.macs for r in layer_table(model, (1, 1, 28, 28))]
    assert model.training


def test_layer_table_rejects_a_shape_without_batch():
    with pytest.raises(ValueError, match=r"expected an input shape \(B, ...\)"):
        layer_table(SeedCNN(), (28,))


def test_receptive_fields_of_seed_cnn_by_hand():
    layers = [nn.Conv2d(1, 10, 5), nn.MaxPool2d(2), nn.Conv2d(10, 20, 5), nn.MaxPool2d(2)]
    assert [(f.size, f.jump) for f in receptive_fields(layers)] == [(5, 1), (6, 2), (14, 2), (16, 4)]


def _support(layers, unit, size=32):
    x = (torch.rand(1, 1, size, size, dtype=torch.float64) + 0.1).requires_grad_()
    out = x
    for layer in layers:
        out = layer(out)
    out[0, 0, unit[0], unit[1]].backward()
    rows, cols = (x.grad[0, 0] != 0).nonzero(as_tuple=True)
    return rows.min().item(), cols.min().item(), rows.max().item(), cols.max().item()


def test_receptive_field_box_equals_the_gradient_support_with_padding_stride_and_dilation():
    torch.manual_seed(0)
    layers = [nn.Conv2d(1, 2, 3, padding=1), nn.AvgPool2d(2), nn.Conv2d(2, 2, 3, stride=2, dilation=2, padding=2),
              nn.AvgPool2d(3, stride=1, padding=1)]
    layers = [layer.double() for layer in layers]
    for depth, field in enumerate(receptive_fields(layers), start=1):
        unit = (3, 4)
        top, left, bottom, right = field.box(*unit)
        # Inside the image the support is the box; padding only cuts the box at the border.
        assert _support(layers[:depth], unit) == (max(top, 0), max(left, 0), min(bottom, 31), min(right, 31))


def test_box_arithmetic():
    assert ReceptiveField(size=5, jump=2, start=-1).box(3, 0) == (5, -1, 9, 3)


@pytest.mark.parametrize(("layers", "match"), [([nn.ReLU()], "expected nn.Conv2d"),
                                               ([nn.Conv2d(1, 1, (3, 5))], "square kernel_size")])
def test_receptive_fields_errors(layers, match):
    with pytest.raises(ValueError, match=match):
        receptive_fields(layers)


class _Sleeper(nn.Module):
    """Takes at least ``seconds`` per call; records its mode, grad mode and the dtype its layer computes in."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds, self.calls, self.linear = seconds, [], nn.Linear(4, 2)

    def forward(self, x):
        import time

        time.sleep(self.seconds)
        out = self.linear(x)
        self.calls.append((self.training, torch.is_grad_enabled(), out.dtype))
        return out


def test_images_per_second_is_the_best_pass_after_a_warm_up():
    model = _Sleeper(0.05).train()
    rate = images_per_second(model, torch.zeros(10, 4), repeats=3)
    # every pass sleeps >= 0.05 s, so at most 10 / 0.05 = 200 images/s; a pass over 0.25 s would be an
    # interruption in each of the three passes
    assert 40 < rate <= 200
    assert model.calls == [(False, False, torch.float32)] * 4  # warm-up + 3, in eval mode, without grad
    assert model.training  # mode put back


def test_images_per_second_under_autocast_and_its_errors():
    model = _Sleeper(0.0)
    images_per_second(model, torch.zeros(2, 4), repeats=1, autocast_dtype=torch.bfloat16)
    assert {dtype for *_, dtype in model.calls} == {torch.bfloat16}  # the linear layer ran in bfloat16
    with pytest.raises(ValueError, match="repeats >= 1"):
        images_per_second(model, torch.zeros(2, 4), repeats=0)
    with pytest.raises(ValueError, match=r"shape \(0, 4\)"):
        images_per_second(model, torch.zeros(0, 4))
    with pytest.raises(TypeError, match="got list"):
        images_per_second(model, [1.0, 2.0])
