"""Shipping: distillation, int8 quantisation and export (chapter "Shipping models").

Oracles: hand calculations and ``F.kl_div`` / ``F.cross_entropy`` for the distillation loss; PyTorch's
``PerChannelMinMaxObserver``, ``torch.quantize_per_channel`` and the ``quantized_decomposed`` operators for
the from-scratch quantiser; the float32 network for PT2E and ONNX Runtime; SciPy for the t quantile.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers torch.ops.quantized_decomposed)
import torch.nn.functional as F
from torch import nn

import companion
from companion.distillation import cached_distillation_loss, distillation_loss, soft_target_loss
from companion.evaluation import paired_t_interval, t_quantile
from companion.finetune import ProbeResult, Standardize
from companion.quantization import (
    dequantize_per_channel,
    fake_quantize_weights,
    layer_sensitivity,
    per_channel_scales,
    quantize_per_channel,
    quantize_pt2e,
)
from companion.utils import assert_same_values_and_grads


# ---------------------------------------------------------------------------------------------
# distillation


def test_soft_target_loss_equals_a_hand_calculation():
    student = torch.tensor([[2.0, 1.0, 0.1]], dtype=torch.float64, requires_grad=True)
    teacher = torch.tensor([[3.0, 1.5, -1.0]], dtype=torch.float64)
    T = 2.0
    p = [math.exp(v / T) for v in (2.0, 1.0, 0.1)]
    q = [math.exp(v / T) for v in (3.0, 1.5, -1.0)]
    p, q = [v / sum(p) for v in p], [v / sum(q) for v in q]
    expected = T**2 * sum(qk * math.log(qk / pk) for pk, qk in zip(p, q))
    loss = soft_target_loss(student, teacher, T)
    assert loss.item() == pytest.approx(expected, abs=1e-13)
    loss.backward()  # d(T^2 KL)/dz = T (p - q)
    assert student.grad[0].tolist() == pytest.approx([T * (a - b) for a, b in zip(p, q)], abs=1e-13)


@pytest.mark.parametrize("temperature", [1.0, 2.5, 8.0])
def test_soft_target_loss_equals_kl_div_times_t_squared(temperature):
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 6, 5, dtype=torch.float64)

    def reference(z):
        log_p = F.log_softmax(z / temperature, 1)
        log_q = F.log_softmax(teacher / temperature, 1)
        return temperature**2 * F.kl_div(log_p, log_q, reduction="batchmean", log_target=True)

    assert_same_values_and_grads(lambda z: soft_target_loss(z, teacher, temperature), reference, student)


def test_at_temperature_one_the_gradient_is_soft_cross_entropys():
    torch.manual_seed(1)
    student, teacher = torch.randn(2, 4, 7, dtype=torch.float64)
    ours = student.clone().requires_grad_()
    soft_target_loss(ours, teacher, 1.0).backward()
    theirs = student.clone().requires_grad_()
    F.cross_entropy(theirs, F.softmax(teacher, 1)).backward()  # probability targets
    torch.testing.assert_close(ours.grad, theirs.grad)


def test_at_high_temperature_distillation_matches_logits():
    """Hinton et al., section 2.1: T (p - q) -> (z - v) / K for zero-mean logits."""
    torch.manual_seed(2)
    z, v = torch.randn(2, 1, 10, dtype=torch.float64)
    z, v = (z - z.mean()).requires_grad_(), v - v.mean()
    soft_target_loss(z, v, 1e4).backward()
    torch.testing.assert_close(z.grad, (z - v).detach() / 10, rtol=1e-3, atol=1e-6)


def test_no_gradient_reaches_the_teacher():
    student = torch.randn(3, 4, requires_grad=True)
    teacher = torch.randn(3, 4, requires_grad=True)
    soft_target_loss(student, teacher, 3.0).backward()
    assert teacher.grad is None and student.grad is not None


def test_distillation_loss_mixes_the_two_terms():
    torch.manual_seed(3)
    student, teacher = torch.randn(2, 5, 4, dtype=torch.float64)
    target = torch.tensor([0, 3, 1, 2, 2])
    hard = F.cross_entropy(student, target)
    soft = soft_target_loss(student, teacher, 4.0)
    assert distillation_loss(student, teacher, target, 4.0, alpha=0.0) == pytest.approx(hard.item())
    assert distillation_loss(student, teacher, target, 4.0, alpha=1.0) == pytest.approx(soft.item())
    mixed = distillation_loss(student, teacher, target, 4.0, alpha=0.25).item()
    assert mixed == pytest.approx(0.25 * soft.item() + 0.75 * hard.item())


@pytest.mark.parametrize(
    ("student", "teacher", "target", "kwargs", "error"),
    [
        (torch.ones(2, 3, dtype=torch.int64), torch.ones(2, 3), torch.zeros(2, dtype=torch.int64), {}, TypeError),
        ([[1.0, 2.0]], torch.ones(1, 2), torch.zeros(1, dtype=torch.int64), {}, TypeError),
        (torch.ones(2, 3), torch.ones(2, 4), torch.zeros(2, dtype=torch.int64), {}, ValueError),
        (torch.ones(6), torch.ones(6), torch.zeros(6, dtype=torch.int64), {}, ValueError),
        (torch.ones(2, 3), torch.ones(2, 3), torch.zeros(2, dtype=torch.int64), {"temperature": 0.0}, ValueError),
        (torch.ones(2, 3), torch.ones(2, 3), torch.zeros(2, dtype=torch.int64), {"temperature": True}, ValueError),
        (torch.ones(2, 3), torch.ones(2, 3), torch.zeros(2, dtype=torch.int64), {"alpha": 1.5}, ValueError),
        (torch.ones(2, 3), torch.ones(2, 3), torch.zeros(2), {}, TypeError),
        (torch.ones(2, 3), torch.ones(2, 3), torch.zeros(3, dtype=torch.int64), {}, ValueError),
        (torch.ones(2, 3), torch.ones(2, 3), torch.tensor([0, 3]), {}, ValueError),
    ],
)
def test_distillation_loss_refuses_bad_input(student, teacher, target, kwargs, error):
    with pytest.raises(error):
        distillation_loss(student, teacher, target, **kwargs)


def test_cached_distillation_loss_looks_up_the_batch():
    torch.manual_seed(4)
    model = nn.Linear(3, 4)
    x = torch.randn(8, 3)
    teacher_logits, target = torch.randn(8, 4), torch.randint(0, 4, (8,))
    batch_loss = cached_distillation_loss(teacher_logits, target, temperature=2.0, alpha=0.5)
    index = torch.tensor([5, 0, 7])
    loss, logits = batch_loss(model, x[index], index)
    assert logits is None
    expected = distillation_loss(model(x[index]), teacher_logits[index], target[index], 2.0, 0.5)
    assert loss.item() == pytest.approx(expected.item())


def test_cached_distillation_loss_trains_with_fit():
    torch.manual_seed(5)
    images = torch.randint(0, 256, (64, 1, 4, 4), dtype=torch.uint8)
    target = torch.randint(0, 3, (64,))
    teacher_logits = torch.randn(64, 3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    loader = companion.DeviceLoader(images, torch.arange(64), 16, shuffle=True, device="cpu")
    history = companion.fit(model, loader, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), epochs=2,
                            device="cpu", batch_loss=cached_distillation_loss(teacher_logits, target), progress=False)
    assert len(history.train_loss) == 2 and history.train_loss[1] < history.train_loss[0]


def test_cached_distillation_loss_refuses_before_training():
    with pytest.raises(ValueError, match="differ in length"):
        cached_distillation_loss(torch.randn(5, 3), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="temperature"):
        cached_distillation_loss(torch.randn(5, 3), torch.zeros(5, dtype=torch.int64), temperature=-1.0)
    with pytest.raises(TypeError):
        cached_distillation_loss(torch.randn(5, 3), torch.zeros(5))


# ---------------------------------------------------------------------------------------------
# the from-scratch quantiser


def _weights(shape, seed=0):
    torch.manual_seed(seed)
    spread = 10.0 ** torch.linspace(-3, 1, shape[0])  # channels of very different sizes
    return torch.randn(shape) * spread.reshape(-1, *[1] * (len(shape) - 1))


@pytest.mark.parametrize("shape", [(16, 8, 3, 3), (10, 1280), (32, 1, 3, 3)])
def test_scales_equal_pytorchs_per_channel_observer(shape):
    weight = _weights(shape)
    for dtype, qdtype in ((torch.int8, torch.qint8), (torch.uint8, torch.quint8)):
        observer = torch.ao.quantization.PerChannelMinMaxObserver(ch_axis=0, dtype=qdtype,
                                                                  qscheme=torch.per_channel_symmetric)
        observer(weight)
        expected_scales, expected_zero_points = observer.calculate_qparams()
        scales, zero_points = per_channel_scales(weight, dtype=dtype)
        assert torch.equal(scales, expected_scales)
        assert torch.equal(zero_points, expected_zero_points)


def test_scales_of_a_vector_by_hand():
    weight = torch.tensor([0.51, -2.55, 0.0])  # each element its own channel
    scales, zero_points = per_channel_scales(weight)
    eps = torch.finfo(torch.float32).eps
    assert scales.tolist() == pytest.approx([0.51 / 127.5, 2.55 / 127.5, eps]) and zero_points.tolist() == [0, 0, 0]


def test_scales_along_another_axis_and_of_a_zero_channel():
    weight = _weights((6, 4, 3)).transpose(0, 1).contiguous()  # channels along axis 1
    weight[:, 2] = 0
    observer = torch.ao.quantization.PerChannelMinMaxObserver(ch_axis=1, dtype=torch.qint8,
                                                              qscheme=torch.per_channel_symmetric)
    observer(weight)
    scales, _ = per_channel_scales(weight, axis=1)
    assert torch.equal(scales, observer.calculate_qparams()[0])
    assert scales[2] == torch.finfo(torch.float32).eps


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8])
def test_quantize_and_dequantize_equal_pytorchs(axis, dtype):
    weight = _weights((12, 7, 3, 3)).movedim(0, axis).contiguous()
    scales, zero_points = per_channel_scales(weight, axis=axis, dtype=dtype)
    q = quantize_per_channel(weight, scales, zero_points, axis=axis, dtype=dtype)
    low, high = (-128, 127) if dtype == torch.int8 else (0, 255)
    decomposed = torch.ops.quantized_decomposed.quantize_per_channel(
        weight, scales, zero_points, axis, low, high, dtype)
    assert torch.equal(q, decomposed)
    with warnings.catch_warnings():  # quantized tensor dtypes are deprecated, still the reference
        warnings.simplefilter("ignore")
        qdtype = torch.qint8 if dtype == torch.int8 else torch.quint8
        reference = torch.quantize_per_channel(weight, scales, zero_points, axis, qdtype)
        assert torch.equal(q, reference.int_repr())
        assert torch.equal(dequantize_per_channel(q, scales, zero_points, axis), reference.dequantize())


def test_rounding_is_half_to_even_and_out_of_range_values_are_clipped():
    weight = torch.tensor([[0.5, 1.5, 2.5, -0.5, -1.5, 300.0, -300.0]])
    q = quantize_per_channel(weight, torch.ones(1), torch.zeros(1, dtype=torch.int64))
    assert q.tolist() == [[0, 2, 2, 0, -2, 127, -128]]
    narrow = quantize_per_channel(weight, torch.ones(1), torch.zeros(1, dtype=torch.int64), quant_min=-7, quant_max=7)
    assert narrow.tolist() == [[0, 2, 2, 0, -2, 7, -7]]


def test_the_round_trip_error_is_at_most_half_a_step():
    weight = _weights((8, 27))
    scales, zero_points = per_channel_scales(weight)
    restored = dequantize_per_channel(quantize_per_channel(weight, scales, zero_points), scales, zero_points)
    # the largest weight of a channel may be clipped by up to one step (127.5 -> 127)
    assert bool(((restored - weight).abs() <= scales[:, None] * 0.5 + 1e-7 * weight.abs()).float().mean() > 0.95)
    assert bool(((restored - weight).abs() <= scales[:, None] * (0.5 + 1e-5)).all())


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: per_channel_scales(torch.ones(3, 3, dtype=torch.float64)), TypeError),
        (lambda: per_channel_scales([1.0, 2.0]), TypeError),
        (lambda: per_channel_scales(torch.ones(3, 3), axis=2), ValueError),
        (lambda: per_channel_scales(torch.ones(3, 3), dtype=torch.int16), ValueError),
        (lambda: per_channel_scales(torch.ones(3, 3), quant_min=-200), ValueError),
        (lambda: per_channel_scales(torch.ones(3, 3), quant_min=5, quant_max=5), ValueError),
        (lambda: quantize_per_channel(torch.ones(3, 2), torch.ones(2), torch.zeros(3, dtype=torch.int64)), ValueError),
        (lambda: quantize_per_channel(torch.ones(3, 2), torch.tensor([1.0, 0.0, 1.0]), torch.zeros(3, dtype=torch.int64)), ValueError),
        (lambda: quantize_per_channel(torch.ones(3, 2), torch.ones(3), torch.zeros(3)), ValueError),
        (lambda: dequantize_per_channel(torch.ones(3, 2), torch.ones(3), torch.zeros(3, dtype=torch.int64)), TypeError),
        (lambda: dequantize_per_channel(torch.ones(3, 2, dtype=torch.int8), torch.ones(3), torch.zeros(3, dtype=torch.int64), axis=2), ValueError),
    ],
)  # fmt: skip
def test_the_quantiser_refuses_bad_input(call, error):
    with pytest.raises(error):
        call()


def _small_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    ).eval()


def test_fake_quantize_weights_rounds_every_weight_and_changes_nothing_else():
    model = _small_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    copied = fake_quantize_weights(model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # model untouched
    for name, value in copied.state_dict().items():
        if name.endswith("weight") and value.dim() > 1:
            scales, zero_points = per_channel_scales(before[name])
            expected = dequantize_per_channel(quantize_per_channel(before[name], scales, zero_points), scales, zero_points)
            assert torch.equal(value, expected) and not torch.equal(value, before[name])
        else:
            assert torch.equal(value, before[name])  # biases, batch-norm parameters and statistics
    with pytest.raises(TypeError):
        fake_quantize_weights(torch.ones(3))


def test_layer_sensitivity_measures_each_layer_alone():
    model = _small_cnn()
    with torch.no_grad():
        model[3].weight.zero_()  # an all-zero weight is exactly representable: no change
    model[3].weight.data[0, 0, 0, 0] = 0.0
    x = torch.randn(5, 1, 8, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = dict(layer_sensitivity(model, x))
    assert set(scores) == {"0", "3", "7"}
    assert scores["3"] == 0.0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # layer "0" by hand
    changed = _small_cnn()
    changed.load_state_dict(before)
    with torch.no_grad():
        reference = changed(x)
        s, z = per_channel_scales(changed[0].weight)
        changed[0].weight.copy_(dequantize_per_channel(quantize_per_channel(changed[0].weight, s, z), s, z))
        expected = ((changed(x) - reference).norm(dim=1) / reference.norm(dim=1)).mean().item()
    assert scores["0"] == pytest.approx(expected)
    assert list(scores.values()) == sorted(scores.values(), reverse=True)


def test_layer_sensitivity_refuses_a_network_without_weights_to_quantise():
    with pytest.raises(ValueError, match="no Conv2d or Linear"):
        layer_sensitivity(nn.Sequential(nn.ReLU()), torch.randn(2, 3))
    with pytest.raises(TypeError):
        layer_sensitivity(lambda x: x, torch.randn(2, 3))


# ---------------------------------------------------------------------------------------------
# PyTorch's PT2E flow (torchao)


@pytest.fixture(scope="module")
def trained_cnn():
    """A small CNN with non-random batch-norm statistics, its inputs and calibration batches."""
    model = _small_cnn()
    model.train()
    with torch.no_grad():
        for _ in range(5):
            model(torch.randn(32, 1, 8, 8))
    model.eval()
    torch.manual_seed(6)
    calibration = [torch.randn(32, 1, 8, 8) for _ in range(4)]
    return model, calibration, torch.randn(16, 1, 8, 8)


def test_quantize_pt2e_stays_close_to_float32_and_stores_int8(trained_cnn):
    pytest.importorskip("torchao")
    model, calibration, x = trained_cnn
    quantized = quantize_pt2e(model, (calibration[0],), calibration)
    with torch.no_grad():
        reference, out = model(x), quantized(x)
        single = quantized(x[:1])  # the batch dimension is dynamic
    # the stated tolerance: 5 % of the largest logit (8-bit activations: about 1/255 per layer)
    assert (out - reference).abs().max() <= 0.05 * reference.abs().max()
    torch.testing.assert_close(single, out[:1])
    dtypes = [t.dtype for t in quantized.state_dict().values()]
    assert dtypes.count(torch.int8) == 3  # two convolutions and the linear layer
    float_weights = [k for k, t in quantized.state_dict().items() if k.endswith("weight") and t.dim() > 1]
    assert not float_weights  # the float32 weights the graph no longer reads are gone
    quantized.eval()  # allowed


def test_quantize_pt2e_skip_keeps_a_module_in_float32(trained_cnn):
    pytest.importorskip("torchao")
    model, calibration, _ = trained_cnn
    quantized = quantize_pt2e(model, (calibration[0],), calibration, skip=["7"])
    dtypes = [t.dtype for t in quantized.state_dict().values()]
    assert dtypes.count(torch.int8) == 2  # the two convolutions only


def test_quantize_pt2e_refuses_bad_input(trained_cnn):
    pytest.importorskip("torchao")
    model, calibration, _ = trained_cnn
    with pytest.raises(ValueError, match="no batch"):
        quantize_pt2e(model, (calibration[0],), [])
    with pytest.raises(ValueError, match="no submodule"):
        quantize_pt2e(model, (calibration[0],), calibration, skip=["head"])
    with pytest.raises(TypeError):
        quantize_pt2e(model, (calibration[0],), calibration, skip="7")
    with pytest.raises(TypeError):
        quantize_pt2e(model, calibration[0], calibration)
    with pytest.raises(TypeError):
        quantize_pt2e(lambda x: x, (calibration[0],), calibration)


# ---------------------------------------------------------------------------------------------
# export to ONNX and ONNX Runtime


def test_export_onnx_runs_in_onnx_runtime_like_pytorch(trained_cnn, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from companion.export import OnnxRuntimeModule, export_onnx

    model, _, x = trained_cnn
    path = export_onnx(model, (x[:2],), tmp_path / "cnn.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["cnn.onnx"]  # no temporary file left
    runtime = OnnxRuntimeModule(path, num_threads=1)
    with torch.no_grad():
        torch.testing.assert_close(runtime(x), model(x), rtol=1e-5, atol=1e-5)  # another batch size
    assert runtime(x).dtype == torch.float32 and companion.summary.images_per_second(runtime, x) > 0


def test_a_failed_export_leaves_the_file_as_it_was(tmp_path):
    pytest.importorskip("onnxscript")
    from companion.export import export_onnx

    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("cannot be traced")

    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous")
    with pytest.raises(Exception, match="cannot be traced"):
        export_onnx(Broken(), (torch.ones(2, 3),), target)
    assert target.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_quantize_onnx_makes_a_smaller_int8_network_close_to_float32(trained_cnn, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import onnx

    from companion.export import OnnxRuntimeModule, export_onnx, quantize_onnx

    model, calibration, x = trained_cnn
    source = export_onnx(model, (x[:2],), tmp_path / "cnn.onnx")
    target = quantize_onnx(source, tmp_path / "int8.onnx", calibration)
    skipped = quantize_onnx(source, tmp_path / "mixed.onnx", calibration, skip=["7"])
    with torch.no_grad():
        reference = model(x)
    out = OnnxRuntimeModule(target)(x)
    assert (out - reference).abs().max() <= 0.05 * reference.abs().max()

    def quantised_weights(path):
        graph = onnx.load(str(path)).graph
        return sum(1 for t in graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) > 1)

    assert quantised_weights(target) == 3 and quantised_weights(skipped) == 2
    assert target.stat().st_size < source.stat().st_size


def test_quantize_onnx_and_the_runtime_module_refuse_bad_input(trained_cnn, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from companion.export import OnnxRuntimeModule, export_onnx, quantize_onnx

    model, calibration, x = trained_cnn
    source = export_onnx(model, (x[:2],), tmp_path / "cnn.onnx")
    with pytest.raises(FileNotFoundError):
        quantize_onnx(tmp_path / "missing.onnx", tmp_path / "out.onnx", calibration)
    with pytest.raises(ValueError, match="no batch"):
        quantize_onnx(source, tmp_path / "out.onnx", [])
    with pytest.raises(ValueError, match="no node"):
        quantize_onnx(source, tmp_path / "out.onnx", calibration, skip=["head"])
    with pytest.raises(TypeError):
        quantize_onnx(source, tmp_path / "out.onnx", calibration, skip="7")
    assert not (tmp_path / "out.onnx").exists()
    with pytest.raises(FileNotFoundError):
        OnnxRuntimeModule(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="num_threads"):
        OnnxRuntimeModule(source, num_threads=0)
    with pytest.raises(ValueError, match="takes 1 inputs"):
        OnnxRuntimeModule(source)(x, x)
    with pytest.raises(TypeError):
        export_onnx(model, x, tmp_path / "other.onnx")
    with pytest.raises(TypeError):
        export_onnx(lambda v: v, (x,), tmp_path / "other.onnx")


# ---------------------------------------------------------------------------------------------
# the probe as one module; Student's t


def test_probe_classifier_and_folded_head_equal_the_standardised_head():
    torch.manual_seed(7)
    head = nn.Linear(6, 3).double()
    mean, std = torch.randn(6, dtype=torch.float64), torch.rand(6, dtype=torch.float64) + 0.1
    probe = ProbeResult(accuracy=0.5, head=head, mean=mean, std=std, seconds=0.0)
    features = torch.randn(4, 6, dtype=torch.float64)
    expected = head((features - mean) / std)
    torch.testing.assert_close(probe.classifier()(features), expected)
    torch.testing.assert_close(probe.folded_head()(features), expected)
    with pytest.raises(ValueError):
        Standardize(mean, torch.zeros(6))
    with pytest.raises(ValueError):
        Standardize(mean, std[:3])


@pytest.mark.parametrize("df", [1, 2, 3, 4, 7, 30])
def test_t_quantile_equals_scipy(df):
    stats = pytest.importorskip("scipy.stats")
    for p in (0.025, 0.3, 0.5, 0.9, 0.975, 0.999):
        assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-10, abs=1e-12)


def test_t_quantile_known_values_and_errors():
    assert t_quantile(0.75, 1) == pytest.approx(1.0)  # the Cauchy distribution's quartile
    assert t_quantile(0.975, 2) == pytest.approx(0.95 * math.sqrt(2 / (1 - 0.95**2)))
    for bad in ((0.0, 3), (1.0, 3), (0.5, 0)):
        with pytest.raises(ValueError):
            t_quantile(*bad)
    with pytest.raises(TypeError):
        t_quantile(0.9, 2.5)


def test_paired_t_interval_equals_scipys_paired_test():
    stats = pytest.importorskip("scipy.stats")
    a, b = [96.1, 96.3, 96.0, 96.5, 96.2], [95.2, 95.5, 95.1, 95.0, 95.4]
    mean, low, high = paired_t_interval(a, b)
    interval = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert (mean, low, high) == pytest.approx((sum(a) / 5 - sum(b) / 5, interval.low, interval.high))
    with pytest.raises(ValueError):
        paired_t_interval([1.0], [2.0])
    with pytest.raises(ValueError):
        paired_t_interval([1.0, 2.0], [2.0, 3.0, 4.0])
    with pytest.raises(ValueError):
        paired_t_interval([1.0, 2.0], [2.0, 3.0], confidence=1.0)


# ---------------------------------------------------------------------------------------------
# refusals added after review


def test_a_narrower_uint8_range_centres_its_zero_point_as_pytorch_does():
    weight = _weights((4, 9))
    observer = torch.ao.quantization.PerChannelMinMaxObserver(
        ch_axis=0, dtype=torch.quint8, qscheme=torch.per_channel_symmetric, quant_min=0, quant_max=127)
    observer(weight)
    scales, zero_points = per_channel_scales(weight, dtype=torch.uint8, quant_min=0, quant_max=127)
    expected_scales, expected_zero_points = observer.calculate_qparams()
    assert torch.equal(scales, expected_scales) and torch.equal(zero_points, expected_zero_points)
    assert zero_points.tolist() == [63] * 4


def test_numpy_numbers_are_numbers():
    np = pytest.importorskip("numpy")
    student, teacher = torch.randn(2, 3, 4)
    target = torch.tensor([0, 1, 2])
    expected = distillation_loss(student, teacher, target, 4.0, 0.5)
    assert distillation_loss(student, teacher, target, np.float32(4.0), np.float64(0.5)) == pytest.approx(expected.item())


def test_more_refusals():
    with pytest.raises(ValueError, match="finite"):
        paired_t_interval([1.0, float("nan")], [1.0, 2.0])
    with pytest.raises(TypeError):
        Standardize([0.0], torch.ones(1))
    with pytest.raises(ValueError, match="all zero"):
        layer_sensitivity(nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2, bias=False)).apply(
            lambda m: nn.init.zeros_(m.weight) if isinstance(m, nn.Linear) else None), torch.randn(4, 3))


def test_examples_must_be_a_cpu_batch_of_at_least_two(trained_cnn):
    pytest.importorskip("torchao")
    pytest.importorskip("onnxscript")
    from companion.export import export_onnx

    model, calibration, x = trained_cnn
    with pytest.raises(ValueError, match="at least 2"):
        quantize_pt2e(model, (x[:1],), calibration)
    with pytest.raises(ValueError, match="at least 2"):
        export_onnx(model, (x[:1],), "unused.onnx")
    with pytest.raises(ValueError, match="CPU"):
        quantize_pt2e(_small_cnn().to("meta"), (x[:2],), calibration)
    model.train()
    quantize_pt2e(model, (x[:2],), calibration[:1])
    assert model.training  # the caller's mode is put back
    model.eval()
