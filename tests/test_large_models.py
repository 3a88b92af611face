"""companion.large_models: byte counts by hand, the checkpoint twin = torch.utils.checkpoint, accumulation, FSDP2."""

import math
import os
import subprocess
import sys

import pytest
import torch
import torch.utils.checkpoint as torch_checkpoint
from torch import nn

from companion.large_models import (
    BYTES_PER_PARAMETER,
    SavedTensorMeter,
    accumulate_gradients,
    checkpoint,
    checkpoint_sequential,
    state_bytes,
    tensor_bytes,
    train_sharded,
)


def _net(dropout: float = 0.3) -> nn.Sequential:
    torch.manual_seed(0)
    blocks = [nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Dropout(dropout)) for _ in range(5)]
    return nn.Sequential(*blocks).double()


def _run(net: nn.Module, x: torch.Tensor, forward) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Output and every gradient (input's, then parameters') after forward + backward from seed 1."""
    net.zero_grad()
    x = x.detach().requires_grad_()
    torch.manual_seed(1)  # dropout's masks
    y = forward(x)
    (y.pow(2).sum()).backward()
    return y.detach(), [x.grad, *(p.grad.clone() for p in net.parameters())]


def _assert_same(ours, theirs) -> None:
    torch.testing.assert_close(ours[0], theirs[0], rtol=0, atol=0)
    for a, b in zip(ours[1], theirs[1], strict=True):
        torch.testing.assert_close(a, b)


def test_checkpoint_equals_pytorchs_in_values_and_gradients_with_dropout():
    net, x = _net(), torch.randn(4, 6, dtype=torch.float64)
    ours = _run(net, x, lambda x: checkpoint(net, x))
    theirs = _run(net, x, lambda x: torch_checkpoint.checkpoint(net, x, use_reentrant=False))
    plain = _run(net, x, net)
    _assert_same(ours, theirs)
    _assert_same(ours, plain)  # and both equal the network without checkpointing


def test_without_the_random_state_dropout_draws_other_masks_in_backward():
    net, x = _net(dropout=0.5), torch.randn(4, 6, dtype=torch.float64)
    ours = _run(net, x, lambda x: checkpoint(net, x, preserve_rng_state=False))
    plain = _run(net, x, net)
    torch.testing.assert_close(ours[0], plain[0])  # the forward is the same...
    assert any(not torch.allclose(a, b) for a, b in zip(ours[1][1:], plain[1][1:]))  # ...the gradients are not


def test_checkpoint_passes_keyword_and_non_tensor_arguments_and_returns_tuples():
    torch.manual_seed(0)
    w = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)

    def segment(a, power, *, scale):
        return (a @ w) ** power * scale, a.sum()

    a = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    results = []
    for run in (checkpoint, lambda *args, **kw: torch_checkpoint.checkpoint(*args, use_reentrant=False, **kw)):
        w.grad, a.grad = None, None
        first, second = run(segment, a, 2, scale=0.5)
        (first.sum() + 3 * second).backward()
        results.append((first.detach(), a.grad.clone(), w.grad.clone()))
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs)


def test_checkpoint_recomputes_under_the_autocast_of_its_forward():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 8))
    x = torch.randn(4, 8)
    grads = []
    for run in (lambda x: checkpoint(net, x), lambda x: torch_checkpoint.checkpoint(net, x, use_reentrant=False)):
        net.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = run(x)
        y.float().sum().backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    for ours, theirs in zip(*grads):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


@pytest.mark.parametrize("segments", [1, 2, 3, 5])
def test_checkpoint_sequential_equals_pytorchs(segments):
    net, x = _net(), torch.randn(4, 6, dtype=torch.float64)
    ours = _run(net, x, lambda x: checkpoint_sequential(net, segments, x))
    theirs = _run(net, x, lambda x: torch_checkpoint.checkpoint_sequential(net, segments, x, use_reentrant=False))
    _assert_same(ours, theirs)


def test_checkpoint_without_autograd_just_runs_the_function():
    net = _net()
    with torch.no_grad():
        y = checkpoint(net.eval(), torch.ones(1, 6, dtype=torch.float64))
    assert not y.requires_grad and y.shape == (1, 6)


def test_checkpoint_refusals():
    net, x = _net(), torch.randn(2, 6, dtype=torch.float64)
    for option in ("use_reentrant", "context_fn", "determinism_check", "debug", "early_stop"):
        with pytest.raises(ValueError, match=option):
            checkpoint(net, x, **{option: False})
    with pytest.raises(TypeError, match="callable"):
        checkpoint(3, x)
    with pytest.raises(TypeError, match="preserve_rng_state"):
        checkpoint(net, x, preserve_rng_state=1)
    with pytest.raises(TypeError, match="tensor or a tuple of tensors"):
        checkpoint(lambda t: {"out": t * 2}, x.requires_grad_())
    with pytest.raises(TypeError, match="segments must be an int"):
        checkpoint_sequential(net, 2.0, x)
    with pytest.raises(ValueError, match=r"\[1, 5\]"):
        checkpoint_sequential(net, 6, x)
    with pytest.raises(ValueError, match=r"\[1, 5\]"):
        checkpoint_sequential(net, 0, x)


def test_saved_bytes_of_a_linear_layer_and_relu_by_hand():
    layer = nn.Linear(3, 5)
    x = torch.ones(4, 3)
    with SavedTensorMeter(exclude=layer.parameters()) as meter:
        out = torch.relu(layer(x))  # linear saves its input (4x3) and weight; relu saves its output (4x5)
    assert meter.saved_bytes == meter.peak_bytes == (4 * 3 + 4 * 5) * 4
    assert meter.peak_bytes_by_dtype == {torch.float32: (4 * 3 + 4 * 5) * 4}
    out.sum().backward()
    del out
    assert meter.saved_bytes == 0  # released by backward
    assert meter.total_bytes == (4 * 3 + 4 * 5) * 4


def test_saved_bytes_count_a_storage_once_and_the_weights_only_if_not_excluded():
    layer = nn.Linear(3, 5, bias=False)
    x = torch.ones(4, 3, requires_grad=True)
    with SavedTensorMeter() as meter:
        y = layer(x)
        z = (x * x).sum()  # mul saves x twice: one storage
    assert meter.saved_bytes == 4 * 3 * 4 + 5 * 3 * 4  # x once, the weight counted (not excluded)
    del y, z


def test_saved_bytes_grow_linearly_with_the_batch():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 20), nn.GELU(), nn.Linear(20, 3))
    counts = []
    for batch in (1, 2, 8):
        with SavedTensorMeter(net.parameters()) as meter:
            out = net(torch.randn(batch, 10))
        counts.append(meter.peak_bytes)
    assert counts[1] == 2 * counts[0] and counts[2] == 8 * counts[0]


def test_checkpointing_keeps_only_the_segment_inputs():
    torch.manual_seed(0)
    net = nn.Sequential(*[nn.Sequential(nn.Linear(16, 16), nn.GELU()) for _ in range(4)])
    x = torch.randn(8, 16)
    with SavedTensorMeter(net.parameters()) as plain:
        kept = net(x)  # the graph (and what it saved) lives as long as its output
    with SavedTensorMeter(net.parameters()) as segmented:
        out = checkpoint_sequential(net, 4, x)
        after_forward = segmented.saved_bytes
        out.sum().backward()  # inside the meter: the recomputation is counted
    row = 8 * 16 * 4
    assert plain.saved_bytes == 8 * row  # each block: linear's input, GELU's input (the linear's output)
    assert after_forward == 3 * row + 2 * row  # three segment inputs; the last block as usual
    # backward recomputes each of the three segments: one new linear output each (their inputs are alive)
    assert segmented.total_bytes == 5 * row + 3 * row
    assert segmented.peak_bytes == 5 * row


def test_the_meter_refuses_meta_tensors():
    layer = nn.Linear(3, 3, device="meta")
    with pytest.raises(ValueError, match="meta"):
        with SavedTensorMeter():
            layer(torch.ones(2, 3, device="meta"))


def test_state_bytes_by_hand_after_an_adamw_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))  # 16 + 10 = 26 parameters, 4 tensors
    optimizer = torch.optim.AdamW(model.parameters())
    assert state_bytes(model, optimizer) == state_bytes(model)
    assert state_bytes(model).parameters == 26 * 4 and state_bytes(model).gradients == 0
    model(torch.randn(5, 3)).sum().backward()
    optimizer.step()
    counted = state_bytes(model, optimizer)
    assert (counted.parameters, counted.gradients) == (26 * 4, 26 * 4)
    assert counted.optimizer_state == 2 * 26 * 4 + 4 * 4  # two moments, and a float32 step per tensor
    assert counted.total == 26 * 16 + 16
    rates = BYTES_PER_PARAMETER["fp32 AdamW"]
    assert sum(rates.values()) == sum(BYTES_PER_PARAMETER["mixed-precision Adam (ZeRO)"].values()) == 16


def test_state_bytes_on_the_meta_device_and_shared_parameters():
    with torch.device("meta"):
        model = nn.Linear(1000, 1000)
    assert state_bytes(model).parameters == (1000 * 1000 + 1000) * 4
    tied = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    tied[1].weight = tied[0].weight
    assert state_bytes(tied).parameters == (4 + 2 + 2) * 4
    assert tensor_bytes(torch.zeros(3, 5, dtype=torch.bfloat16)) == 30


def test_state_bytes_refusals():
    with pytest.raises(TypeError, match="nn.Module"):
        state_bytes([torch.zeros(2)])
    with pytest.raises(TypeError, match="Optimizer"):
        state_bytes(nn.Linear(2, 2), optimizer="adam")
    with pytest.raises(TypeError, match="tensor"):
        tensor_bytes([1, 2])


def test_accumulated_micro_batches_equal_one_batch_even_of_unequal_sizes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).double()
    x, y = torch.randn(10, 8, dtype=torch.float64), torch.randint(0, 3, (10,))
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    accumulated = accumulate_gradients(model, nn.functional.cross_entropy, x, y, 3)  # pieces of 4, 3, 3
    torch.testing.assert_close(accumulated, loss.detach())
    for p, g in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, g)


def test_with_batch_norm_micro_batches_do_not_equal_one_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3)).double()
    x, y = torch.randn(12, 8, dtype=torch.float64), torch.randint(0, 3, (12,))
    nn.functional.cross_entropy(model(x), y).backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    accumulate_gradients(model, nn.functional.cross_entropy, x, y, 3)
    assert max((p.grad - g).abs().max().item() for p, g in zip(model.parameters(), expected)) > 1e-3


def test_accumulation_refusals():
    model, x, y = nn.Linear(2, 2), torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)
    with pytest.raises(TypeError, match="micro_batches"):
        accumulate_gradients(model, nn.functional.cross_entropy, x, y, 2.0)
    with pytest.raises(ValueError, match=r"\[1, 4\]"):
        accumulate_gradients(model, nn.functional.cross_entropy, x, y, 5)
    with pytest.raises(ValueError, match="same length"):
        accumulate_gradients(model, nn.functional.cross_entropy, x, y[:3], 2)


def test_train_sharded_refusals(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="strategy"):
        train_sharded("zero3")
    with pytest.raises(TypeError, match="dtype"):
        train_sharded("single", dtype=torch.int64)


@pytest.mark.slow
def test_fsdp2_on_two_processes_equals_one_process_and_shards_the_bytes(tmp_path, data_dir):
    env = {**os.environ, "COMPANION_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1"}
    for name, launcher in (("single", []), ("fsdp", ["-m", "torch.distributed.run", "--standalone",
                                                       "--nproc-per-node=2"])):
        command = [sys.executable, *launcher, "-m", "companion", "shard", str(tmp_path / f"{name}.pt"),
                   "--strategy", name, "--steps", "3", "--dtype", "float64"]
        run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        assert "RuntimeWarning" not in run.stderr, run.stderr[-3000:]
    single, fsdp = (torch.load(tmp_path / f"{name}.pt", weights_only=False) for name in ("single", "fsdp"))
    for name, weight in single["weights"].items():
        torch.testing.assert_close(fsdp["weights"][name], weight, rtol=1e-9, atol=1e-11)
    whole = single["ranks"][0]["bytes"]
    shards = [rank["bytes"] for rank in fsdp["ranks"]]
    for kind in ("parameters", "gradients"):  # the shards add up to the whole, each about half
        assert sum(shard[kind] for shard in shards) == whole[kind]
    parameters = whole["parameters"] // 8  # float64
    steps_bytes = 4 * len(single["weights"])  # AdamW's step counter, one per tensor (on every rank)
    assert sum(s["optimizer_state"] for s in shards) == whole["optimizer_state"] + steps_bytes
    padded = [rank["padded_bytes"] for rank in fsdp["ranks"]]
    by_hand = sum(math.ceil(w.shape[0] / 2) * (w.numel() // w.shape[0]) * 8 for w in single["weights"].values())
    assert padded == [by_hand, by_hand]  # dim 0 padded to a multiple of 2 processes
    assert shards[0]["parameters"] == by_hand >= shards[1]["parameters"]  # rank 0 holds the larger chunks
    assert by_hand - parameters * 8 / 2 < 8 * sum(w.numel() // w.shape[0] for w in single["weights"].values())


def test_the_callers_random_stream_continues_as_with_pytorchs_checkpoint():
    net, x = _net(dropout=0.5), torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    draws = []
    for run in (lambda x: checkpoint(net, x), lambda x: torch_checkpoint.checkpoint(net, x, use_reentrant=False)):
        torch.manual_seed(5)
        run(x).sum().backward()
        draws.append(torch.rand(3))
    torch.testing.assert_close(draws[0], draws[1], rtol=0, atol=0)


def test_the_random_state_of_an_unsupported_device_is_refused():
    x = torch.ones(2, 3, device="meta", requires_grad=True)
    with pytest.raises(ValueError, match="preserve_rng_state on meta"):
        checkpoint(torch.sin, x)
    assert checkpoint(torch.sin, x, preserve_rng_state=False).shape == (2, 3)


def test_tensors_that_require_grad_outside_the_positional_arguments_are_refused():
    w = torch.randn(3, requires_grad=True)
    a = torch.randn(3, requires_grad=True)
    with pytest.raises(TypeError, match="keyword 'm'"):
        checkpoint(lambda a, m: a * m, a, m=w * 2)
    with pytest.raises(TypeError, match="argument 1"):
        checkpoint(lambda a, pair: a * pair[0], a, [w * 2, w])
    out = checkpoint(lambda a, m, scale: a * m * scale, a, w * 2, scale=torch.tensor(3.0))  # no grad: allowed
    out.sum().backward()
    torch.testing.assert_close(a.grad, (w * 6).detach())


def test_double_backward_is_refused():
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    y = checkpoint(torch.sin, x).sum()
    with pytest.raises(ValueError, match="double backward"):
        torch.autograd.grad(y, x, create_graph=True)


def test_the_meter_frees_a_forward_only_graph_and_counts_views_once():
    import gc

    layer = nn.Linear(8, 8)
    with SavedTensorMeter(layer.parameters()) as meter:
        out = torch.tanh(layer(torch.ones(4, 8)))  # tanh saves its own output
        assert meter.saved_bytes == 2 * 4 * 8 * 4
        del out
        gc.collect()
        assert meter.saved_bytes == 0  # no cycle keeps the graph alive
        x = torch.randn(6, 8, requires_grad=True)
        y = x[1:] * x[:-1]  # mul saves both factors: two views of x's storage
        assert meter.saved_bytes == 6 * 8 * 4  # the storage once, whole
    del y


def test_the_shard_command_in_one_process_saves_weights_losses_and_bytes(tmp_path, data_dir, monkeypatch):
    from companion.cli import main

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COMPANION_DATA_DIR", str(data_dir))
    out = tmp_path / "one.pt"
    assert main(["shard", str(out), "--strategy", "single", "--steps", "2", "--batch-size", "8"]) == 0
    result = torch.load(out, weights_only=False)
    assert len(result["losses"]) == 2 and result["world_size"] == 1
    counted = result["ranks"][0]["bytes"]
    parameters = sum(w.numel() for w in result["weights"].values())
    assert counted["parameters"] == counted["gradients"] == 4 * parameters
    assert counted["optimizer_state"] == 8 * parameters + 4 * len(result["weights"])
