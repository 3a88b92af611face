"""Distributed data-parallel training: sharded loading, DDP inside fit(), torchrun end to end (gloo, CPU)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from companion.augment import RandomTranslate
from companion.data import DeviceLoader
from companion.distributed import get_rank, get_world_size, init_distributed, is_distributed, is_main_process

WORKER = Path(__file__).with_name("ddp_worker.py")


def _torchrun(nproc: int, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_shards_of_each_global_batch_are_the_single_process_batch(world_size, drop_last):
    x, y = torch.arange(50.0).view(50, 1, 1, 1), torch.arange(50)
    whole = DeviceLoader(x, y, 4 * world_size, shuffle=True, drop_last=drop_last, device="cpu", seed=1)
    shards = [DeviceLoader(x, y, 4, shuffle=True, drop_last=drop_last, device="cpu", seed=1, rank=r, world_size=world_size)
              for r in range(world_size)]
    for epoch in range(2):
        for loader in [whole, *shards]:
            loader.set_epoch(epoch)
        per_rank = [list(shard) for shard in shards]
        for step, (_, labels) in enumerate(whole):
            parts = [batches[step][1] for batches in per_rank if step < len(batches)]
            assert torch.equal(torch.cat(parts), labels)
        assert sum(len(b) for b in per_rank[0]) >= sum(len(b) for b in per_rank[-1])
    assert sum(s.num_samples for s in shards) == whole.num_samples
    assert [len(s) for s in shards] == [len(list(s)) for s in shards]
    if drop_last:
        assert len({len(s) for s in shards}) == 1  # equal steps on every process


@pytest.mark.parametrize("world_size", [2, 3])
def test_random_shifts_of_the_shards_are_the_single_process_shifts(world_size):
    images = torch.zeros(30, 1, 8, 8)
    images[:, :, 3:5, 3:5] = torch.arange(1.0, 31.0).view(30, 1, 1, 1)  # a distinct blob per image
    labels = torch.arange(30)
    shift = RandomTranslate(2)
    whole = DeviceLoader(images, labels, 2 * world_size, shuffle=True, drop_last=True, device="cpu", seed=5, transform=shift)
    shards = [DeviceLoader(images, labels, 2, shuffle=True, drop_last=True, device="cpu", seed=5, transform=shift,
                           rank=r, world_size=world_size) for r in range(world_size)]
    per_rank = [list(shard) for shard in shards]
    for step, (x, y) in enumerate(whole):
        torch.testing.assert_close(torch.cat([batches[step][0] for batches in per_rank]), x)
        assert torch.equal(torch.cat([batches[step][1] for batches in per_rank]), y)
    assert not torch.equal(per_rank[0][0][0], images[per_rank[0][0][1]])  # the shifts did move the images


def test_shard_arguments_are_checked():
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        DeviceLoader(torch.zeros(4, 1, 1, 1), torch.zeros(4), 2, device="cpu", rank=2, world_size=2)
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        DeviceLoader(torch.zeros(4, 1, 1, 1), torch.zeros(4), 2, device="cpu", world_size=0)


def test_without_torchrun_it_is_one_process(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = init_distributed(device="cpu")
    assert (info.rank, info.world_size, info.local_rank, info.device) == (0, 1, 0, torch.device("cpu"))
    assert not is_distributed() and is_main_process() and get_rank() == 0 and get_world_size() == 1


def test_an_explicit_gpu_is_kept_without_torchrun(monkeypatch):
    import companion.distributed as distributed

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    chosen = []
    monkeypatch.setattr(distributed, "get_device", lambda device=None: torch.device(device))  # pretend 2 GPUs
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    assert init_distributed("cuda:1").device == torch.device("cuda", 1)
    monkeypatch.setenv("LOCAL_RANK", "0")  # under torchrun, LOCAL_RANK picks the GPU
    assert init_distributed("cuda:1").device == torch.device("cuda", 0)
    assert chosen == [torch.device("cuda", 1), torch.device("cuda", 0)]


def test_more_processes_than_gpus_is_a_clear_error(monkeypatch):
    import companion.distributed as distributed

    monkeypatch.setattr(distributed, "get_device", lambda device=None: torch.device(device))  # pretend 1 GPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(RuntimeError, match="LOCAL_RANK 1 but only 1 CUDA devices"):
        init_distributed("cuda")


def test_run_recipe_needs_a_global_batch_divisible_by_the_processes(monkeypatch):
    import companion.recipes as recipes
    from companion.recipes import TrainConfig, run_recipe

    monkeypatch.setattr(recipes, "get_world_size", lambda: 3)
    with pytest.raises(ValueError, match="batch_size 100 must be divisible by the 3 processes"):
        run_recipe(TrainConfig(batch_size=100), device="cpu")


def test_bad_torchrun_environment_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="must be integers"):
        init_distributed(device="cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK=2, WORLD_SIZE=2"):
        init_distributed(device="cpu")


def test_two_processes_with_half_batches_end_where_one_process_ends(tmp_path):
    """DDP's gradient averaging: 2 ranks x batch 12 == 1 process x batch 24, after 3 epochs of SGD with momentum."""
    results = {}
    for nproc in (1, 2):
        out = tmp_path / f"nproc{nproc}.pt"
        run = _torchrun(nproc, str(WORKER), str(out), "24")
        assert run.returncode == 0, run.stderr[-3000:]
        results[nproc] = torch.load(out, weights_only=True)
    one, two = results[1], results[2]
    for name, value in one["model"].items():
        torch.testing.assert_close(two["model"][name], value, rtol=1e-5, atol=1e-6)
    # Metrics are reduced over both processes: same training loss and accuracy as one process.
    assert two["history"]["train_loss"] == pytest.approx(one["history"]["train_loss"], rel=1e-5)
    assert two["history"]["val_accuracy"] == pytest.approx(one["history"]["val_accuracy"])
    assert not torch.equal(one["model"]["fc1.weight"], torch.zeros_like(one["model"]["fc1.weight"]))


def test_batch_norm_statistics_are_the_same_on_every_process_after_training(tmp_path):
    """DDP averages gradients, not buffers; fit() copies rank 0's running statistics so all ranks hold one model."""
    out = tmp_path / "bn"
    run = _torchrun(2, str(WORKER), str(out), "24", "batchnorm")
    assert run.returncode == 0, run.stderr[-3000:]
    rank0, rank1 = (torch.load(f"{out}.rank{r}.pt", weights_only=True) for r in (0, 1))
    for name, value in rank0["model"].items():
        assert torch.equal(rank1["model"][name], value), name
    metrics = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
    assert [rank0["history"][m] for m in metrics] == [rank1["history"][m] for m in metrics]  # reduced: the same on both


def test_processes_with_different_step_counts_are_refused(tmp_path):
    out = tmp_path / "unequal.pt"
    run = _torchrun(2, str(WORKER), str(out), "24", "unequal")
    assert "batches per epoch" in torch.load(out, weights_only=True)["error"], run.stderr[-3000:]


def test_torchrun_command_line_matches_a_single_process(data_dir, tmp_path):
    args = ["--model", "logreg", "--epochs", "1", "--batch-size", "200", "--lr", "0.003", "--no-progress", "--device", "cpu"]
    env = {"COMPANION_DATA_DIR": str(data_dir)}
    single = subprocess.run([sys.executable, "-m", "companion", "train", *args, "--checkpoint", str(tmp_path / "one.pt")],
                            capture_output=True, text=True, timeout=300, env={**os.environ, **env})
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = _torchrun(2, "-m", "companion", "train", *args, "--checkpoint", str(tmp_path / "two.pt"), env=env)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "2 processes" in ddp.stdout and ddp.stdout.count("test accuracy:") == 1  # only rank 0 prints
    one = torch.load(tmp_path / "one.pt", weights_only=True)["model"]
    two = torch.load(tmp_path / "two.pt", weights_only=True)["model"]
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5)
    assert single.stdout.splitlines()[-1] == ddp.stdout.splitlines()[-1]  # the same test accuracy line


def test_simclr_trains_under_ddp_although_the_classifier_gets_no_gradient(tmp_path):
    # BatchNormCNN.fc is not used by SimCLR's loss; without find_unused_parameters DDP stops at step 2.
    out = tmp_path / "simclr.pt"
    result = _torchrun(2, str(WORKER), str(out), "24", "simclr")
    assert result.returncode == 0, result.stderr[-2000:]
    history = torch.load(out, weights_only=True)["history"]
    assert len(history["train_loss"]) == 2 and all(math.isfinite(v) for v in history["train_loss"])
