"""companion.device: get_device's precedence and errors, seed_everything, autocast."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from companion.device import (
    DEVICE_ENV,
    Timer,
    autocast,
    autocast_dtype,
    get_device,
    grad_scaler,
    seed_everything,
    synchronize,
)

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def no_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend this machine has neither CUDA nor MPS."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend this machine has exactly one CUDA GPU (get_device only asks, it allocates nothing)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


# --- get_device: precedence -------------------------------------------------------------


def test_get_device_argument(no_accelerator):
    assert get_device("cpu") == torch.device("cpu")
    assert get_device(torch.device("cpu")) == torch.device("cpu")


def test_get_device_auto_without_accelerator_is_cpu(no_accelerator):
    assert get_device() == torch.device("cpu")


def test_get_device_auto_prefers_cuda(fake_cuda, monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert get_device() == torch.device("cuda")


def test_get_device_auto_mps_before_cpu(no_accelerator, monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert get_device() == torch.device("mps")


def test_get_device_env_beats_auto(fake_cuda, monkeypatch):
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert get_device() == torch.device("cpu")  # auto would have chosen CUDA


def test_get_device_argument_beats_env(no_accelerator, monkeypatch):
    # The environment names a device that is not available: consulting it would raise.
    monkeypatch.setenv(DEVICE_ENV, "cuda")
    assert get_device("cpu") == torch.device("cpu")


def test_get_device_empty_env_means_auto(no_accelerator, monkeypatch):
    monkeypatch.setenv(DEVICE_ENV, "")
    assert get_device() == torch.device("cpu")


def test_get_device_cuda_index(fake_cuda):
    assert get_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(RuntimeError, match="cuda:1"):
        get_device("cuda:1")  # only one GPU


# --- get_device: errors -----------------------------------------------------------------


def test_get_device_cuda_unavailable_raises(no_accelerator):
    with pytest.raises(RuntimeError) as info:
        get_device("cuda")
    message = str(info.value)
    assert "'cuda'" in message and "not available" in message and "argument" in message


def test_get_device_mps_unavailable_raises(no_accelerator):
    with pytest.raises(RuntimeError, match="'mps'.*not available"):
        get_device("mps")


def test_get_device_env_unavailable_raises_and_names_variable(no_accelerator, monkeypatch):
    monkeypatch.setenv(DEVICE_ENV, "cuda")
    with pytest.raises(RuntimeError, match=DEVICE_ENV):
        get_device()


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "", "cpu cpu"])
def test_get_device_bad_name_raises_value_error(name, no_accelerator):
    with pytest.raises(ValueError) as info:
        get_device(name)
    assert repr(name) in str(info.value)
    assert info.value.__cause__ is None  # raised `from None`: no chained PyTorch error


def test_get_device_bad_env_name_raises_value_error(no_accelerator, monkeypatch):
    monkeypatch.setenv(DEVICE_ENV, "tpu9")
    with pytest.raises(ValueError) as info:
        get_device()
    assert "'tpu9'" in str(info.value) and DEVICE_ENV in str(info.value)


@cuda_only
def test_get_device_real_cuda():
    device = get_device("cuda")
    assert device.type == "cuda"
    assert torch.zeros(1, device=device).is_cuda


# --- seed_everything --------------------------------------------------------------------


def _draw() -> tuple[float, float, torch.Tensor]:
    return random.random(), float(np.random.rand()), torch.rand(5)


def test_seed_everything_repeats_every_generator():
    seed_everything(1234)
    first = _draw()
    seed_everything(1234)
    second = _draw()
    assert first[0] == second[0]
    assert first[1] == second[1]
    assert torch.equal(first[2], second[2])


def test_seed_everything_different_seeds_differ():
    seed_everything(1)
    a = _draw()
    seed_everything(2)
    b = _draw()
    assert a[0] != b[0] and a[1] != b[1] and not torch.equal(a[2], b[2])


def test_seed_everything_matches_each_library_seeded_directly():
    seed_everything(7)
    ours = _draw()
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    reference = _draw()
    assert ours[:2] == reference[:2] and torch.equal(ours[2], reference[2])


@pytest.mark.parametrize("seed", [0, 2**32 - 1])
def test_seed_everything_accepts_range_ends(seed):
    seed_everything(seed)
    assert torch.initial_seed() == seed


@pytest.mark.parametrize("seed", [-1, 2**32, 2**40])
def test_seed_everything_out_of_range_raises_value_error(seed):
    with pytest.raises(ValueError, match=str(seed)):
        seed_everything(seed)


@pytest.mark.parametrize("seed", [1.0, 1.5, "3", None, True])
def test_seed_everything_non_int_raises_type_error(seed):
    with pytest.raises(TypeError, match="seed must be an int"):
        seed_everything(seed)


# --- autocast ---------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu")])
def test_autocast_is_a_no_op_on_cpu(device):
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with autocast(device):
        y = a @ b
        assert not torch.is_autocast_enabled("cpu")
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, a @ b, rtol=0, atol=0)


def test_autocast_to_bfloat16_on_the_cpu_when_asked():
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with autocast("cpu", dtype=torch.bfloat16):
        y = a @ b
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), a @ b, rtol=2e-2, atol=2e-2)  # bfloat16 keeps 8 significant bits
    with autocast("cpu", enabled=False, dtype=torch.bfloat16):
        assert (a @ b).dtype == torch.float32


@pytest.mark.parametrize(("device", "dtype", "message"), [
    ("cpu", torch.float16, "float16 autocast needs a CUDA device"),
    ("cpu", torch.float64, "must be torch.bfloat16 or torch.float16, got torch.float64"),
    ("cuda", torch.int8, "must be torch.bfloat16 or torch.float16, got torch.int8"),
])  # fmt: skip
def test_autocast_and_grad_scaler_refuse_other_dtypes(device, dtype, message):
    with pytest.raises(ValueError, match=message):
        with autocast(device, dtype=dtype):
            pass
    with pytest.raises(ValueError, match=message):
        grad_scaler(device, dtype=dtype)


def test_grad_scaler_follows_an_explicit_dtype(monkeypatch):
    made = []
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device, enabled: made.append((device, enabled)))
    grad_scaler("cuda", dtype=torch.float16)
    grad_scaler("cuda", dtype=torch.bfloat16)
    grad_scaler("cpu", dtype=torch.bfloat16)
    assert made == [("cuda", True), ("cuda", False), ("cpu", False)]


@cuda_only
def test_autocast_is_reduced_precision_on_cuda():
    a, b = torch.randn(4, 8, device="cuda"), torch.randn(8, 3, device="cuda")
    with autocast("cuda"):
        y = a @ b
    assert y.dtype == autocast_dtype("cuda")
    with autocast("cuda", enabled=False):
        z = a @ b
    assert z.dtype == torch.float32


# --- mixed precision on the GPUs readers have -------------------------------------------


@pytest.mark.parametrize(("bf16", "expected"), [(True, torch.bfloat16), (False, torch.float16)])
def test_autocast_dtype_follows_the_gpus_bf16_support(monkeypatch, bf16, expected):
    # Faked capability check: an Ampere-class GPU (bf16) or a T4 (no bf16), without a GPU here.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    assert autocast_dtype("cuda") == expected
    assert autocast_dtype(torch.device("cuda:0")) == expected
    assert autocast_dtype("cpu") is None and autocast_dtype("mps") is None


@pytest.mark.parametrize(("bf16", "scaled"), [(True, False), (False, True)])
def test_grad_scaler_is_on_exactly_for_float16(monkeypatch, bf16, scaled):
    made = []
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device, enabled: made.append((device, enabled)))
    grad_scaler("cuda")
    grad_scaler("cuda", enabled=False)
    grad_scaler("cpu")
    assert made == [("cuda", scaled), ("cuda", False), ("cpu", False)]


def test_grad_scaler_off_passes_everything_through():
    scaler = grad_scaler("cpu")
    loss = torch.tensor(2.5, requires_grad=True)
    assert not scaler.is_enabled() and scaler.scale(loss) is loss


@cuda_only
def test_autocast_on_this_gpu_matches_its_bf16_support():
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    with autocast("cuda"):
        y = torch.randn(4, 8, device="cuda") @ torch.randn(8, 3, device="cuda")
    assert y.dtype == expected


def test_synchronize_waits_on_the_devices_queue(monkeypatch):
    waited = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(("cuda", device)))
    monkeypatch.setattr(torch.mps, "synchronize", lambda: waited.append(("mps", None)))
    synchronize("cpu")
    synchronize("cuda:0")
    synchronize(torch.device("mps"))
    assert waited == [("cuda", torch.device("cuda:0")), ("mps", None)]


def test_timer_measures_the_block_on_the_cpu():
    import time

    with Timer("cpu") as timer:
        time.sleep(0.05)
    assert 0.05 <= timer.seconds < 1.0


@cuda_only
def test_timer_uses_cuda_events_on_a_gpu():
    x = torch.randn(2000, 2000, device="cuda")
    with Timer("cuda") as timer:
        for _ in range(10):
            x = x @ x / 2000
    assert timer.seconds > 0 and hasattr(timer, "_events")


def test_autocast_dtype_asks_for_native_bf16_not_emulated(monkeypatch):
    asked = []
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda **kwargs: asked.append(kwargs) or False)
    assert autocast_dtype("cuda") == torch.float16  # a T4: bf16 only emulated -> float16 with a scaler
    assert asked == [{"including_emulation": False}]


def test_timing_conditions_name_the_threads_and_a_shared_cpu(monkeypatch: pytest.MonkeyPatch):
    from companion.device import SHARED_CPU_ENV, timing_conditions

    threads = torch.get_num_threads()
    monkeypatch.delenv(SHARED_CPU_ENV, raising=False)
    plural = "thread" if threads == 1 else "threads"
    assert timing_conditions("cpu") == f"on the CPU with {threads} {plural}"
    monkeypatch.setenv(SHARED_CPU_ENV, "1")
    assert timing_conditions(torch.device("cpu")) == f"on the CPU with {threads} {plural}, while other tests ran beside it"
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert timing_conditions("cpu").startswith("on the CPU with 1 thread,")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    assert timing_conditions("cuda:0") == "on the CUDA device Tesla T4"  # no CPU clause on a GPU


def test_timing_conditions_in_chinese(monkeypatch: pytest.MonkeyPatch):
    from companion.device import SHARED_CPU_ENV, timing_conditions

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.delenv(SHARED_CPU_ENV, raising=False)
    assert timing_conditions("cpu", language="zh") == "CPU（2个线程）"
    monkeypatch.setenv(SHARED_CPU_ENV, "1")
    assert timing_conditions("cpu", language="zh") == "CPU（2个线程，同时有其他测试在运行）"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    assert timing_conditions("cuda:0", language="zh") == "CUDA设备Tesla T4"
    with pytest.raises(ValueError, match="language must be 'en' or 'zh'"):
        timing_conditions("cpu", language="fr")
