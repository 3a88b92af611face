"""The command line, ``python -m companion train``: exit codes, error output, a short run and resuming.

Exit codes (companion/cli.py): 0 success, 1 data or device problem (one line on stderr), 2 bad arguments.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from companion.cli import main
from companion.cnn import SeedCNN
from companion.data import DATA_DIR_ENV
from companion.device import DEVICE_ENV
from companion.checkpoint import load_checkpoint

TEST_ACCURACY = re.compile(r"^test accuracy: (\d+\.\d\d)% \((\d+)/(\d+)\), test loss (\d+\.\d{4})$", re.MULTILINE)
EPOCH_LINE = re.compile(r"^epoch +(\d+)  train loss \d+\.\d{4}  train acc +\d+\.\d\d%  test loss \d+\.\d{4}  "
                        r"test acc +\d+\.\d\d%  +\d+\.\d s$", re.MULTILINE)  # fmt: skip


# --- as a program: one subprocess per case, all started at once --------------------------------


@pytest.fixture(scope="module")
def empty_root(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("empty-data-root"))


@pytest.fixture(scope="module")
def cli_runs(empty_root) -> dict[str, subprocess.CompletedProcess]:
    """Run ``python -m companion`` with each case's arguments in parallel; start-up (importing torch) dominates."""
    cases = {  # more argument errors are checked in-process below: the same argparse exit, without a start-up
        "no command": [],
        "epochs 0": ["train", "--epochs", "0"],
        "missing data": ["train", "--data-dir", empty_root, "--device", "cpu", "--no-progress"],
    }
    env = {k: v for k, v in os.environ.items() if k not in (DATA_DIR_ENV, DEVICE_ENV)}
    env["OMP_NUM_THREADS"] = "1"
    processes = {
        name: subprocess.Popen([sys.executable, "-m", "companion", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
        for name, args in cases.items()
    }
    runs = {}
    for name, process in processes.items():
        out, err = process.communicate(timeout=300)
        runs[name] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    return runs


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no command", "the following arguments are required: command"),
        ("epochs 0", "argument --epochs: expected an integer >= 1, got 0"),
    ],
)
def test_bad_arguments_exit_2_with_usage(cli_runs, case, message):
    run = cli_runs[case]
    assert run.returncode == 2
    assert run.stderr.startswith("usage: python -m companion")
    assert message in run.stderr
    assert "Traceback" not in run.stderr and run.stdout == ""


def test_missing_data_exits_1_with_one_line(cli_runs, empty_root):
    run = cli_runs["missing data"]
    assert run.returncode == 1
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, run.stderr
    assert "Traceback" not in run.stderr
    line = lines[0]
    assert line.startswith("error: MNIST files not found in ")
    assert empty_root in line and DATA_DIR_ENV in line and "train-images-idx3-ubyte" in line
    assert run.stdout.startswith("training seed-cnn on mnist (")


# --- in-process: argument errors, device errors ----------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "the following arguments are required: command"),
        (["train", "--epochs", "0"], "argument --epochs: expected an integer >= 1, got 0"),
        (["train", "--model", "nope"], "argument --model: invalid choice: 'nope'"),
        (["train", "--resume"], "--resume needs --checkpoint PATH"),
        (["train", "--lr", "0"], "argument --lr: expected a number > 0, got 0"),
        (["train", "--lr", "nan"], "argument --lr: expected a number > 0, got nan"),
        (["train", "--seed", "-1"], "argument --seed: expected an integer in [0, 2**32), got -1"),
        (["train", "--batch-size", "2.5"], "argument --batch-size: expected an integer >= 1, got '2.5'"),
        (["train", "--lr", "fast"], "argument --lr: expected a number > 0, got 'fast'"),
        (["train", "--recipe", "fastest"], "argument --recipe: invalid choice: 'fastest'"),
        (["train", "--dataset", "cifar10"], "argument --dataset: invalid choice: 'cifar10'"),
        (["evaluate"], "argument command: invalid choice: 'evaluate'"),
    ],
)
def test_bad_arguments_in_process(capsys, args, message):
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage:") and message in err
    assert "_positive" not in err and "_seed" not in err  # no private names in what a user reads


def test_unknown_device_name_is_a_bad_argument_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--device", "tpu", "--no-progress"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage:") and "expected a device such as cpu, cuda, cuda:1 or mps, got 'tpu'" in err


def test_unavailable_cuda_exits_1(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["train", "--device", "cuda", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'cuda'" in err and "not available" in err


# --- in-process: short successful runs on a subset (see the small_data fixture) ------------------


def _accuracy(out: str) -> tuple[float, int, int, float]:
    match = TEST_ACCURACY.search(out)
    assert match, out
    percent, correct, total, loss = match.groups()
    return float(percent), int(correct), int(total), float(loss)


def test_short_run_resume_and_output(small_data, capsys, tmp_path):
    path = tmp_path / "ckpt" / "run.pt"
    common = ["train", "--batch-size", "32", "--device", "cpu", "--no-progress", "--checkpoint", str(path)]

    assert main([*common, "--epochs", "1"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # --no-progress: nothing on stderr
    assert captured.out.startswith("training seed-cnn on mnist (cpu): TrainConfig(model='seed-cnn', dataset='mnist', ")
    assert "epochs=1, batch_size=32," in captured.out.splitlines()[0]
    assert [int(e) for e in EPOCH_LINE.findall(captured.out)] == [1]
    percent, correct, total, _ = _accuracy(captured.out)
    assert total == 200 and f"{100 * correct / total:.2f}" == f"{percent:.2f}"
    assert load_checkpoint(path, SeedCNN())[0] == 1

    assert main([*common, "--epochs", "2", "--resume"]) == 0
    second = capsys.readouterr().out
    assert [int(e) for e in EPOCH_LINE.findall(second)] == [2]  # epoch 1 came from the checkpoint
    assert load_checkpoint(path, SeedCNN())[0] == 2

    assert main([*common, "--epochs", "2", "--resume"]) == 0  # nothing left to train
    third = capsys.readouterr().out
    assert EPOCH_LINE.findall(third) == []
    assert _accuracy(third) == _accuracy(second)  # the same weights, restored


@pytest.mark.parametrize("content", ["garbage", "another model"])
def test_resume_from_a_bad_checkpoint_exits_1_with_one_line(small_data, capsys, tmp_path, content):
    path = tmp_path / "bad.pt"
    if content == "garbage":
        path.write_bytes(b"not a checkpoint")
    else:
        torch.save({"model": {"weight": torch.zeros(1)}, "epoch": 1, "history": {}}, path)
    code = main(["train", "--epochs", "1", "--device", "cpu", "--no-progress", "--checkpoint", str(path), "--resume"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("error: ") and str(path) in err
    assert ("not a companion checkpoint" if content == "garbage" else "different model than SeedCNN") in err


def test_short_run_fashion_mnist(small_data, capsys):
    assert main(["train", "--dataset", "fashion-mnist", "--epochs", "2", "--batch-size", "16", "--lr", "0.05",
                 "--seed", "3", "--device", "cpu", "--no-progress"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert out.startswith("training seed-cnn on fashion-mnist (cpu):") and "lr=0.05" in out and "seed=3" in out
    assert [int(e) for e in EPOCH_LINE.findall(out)] == [1, 2]
    percent, correct, total, loss = _accuracy(out)
    # 32 steps on 256 images: far from trained, but well above chance (10 %, loss ln 10 = 2.30).
    assert total == 200 and percent > 30 and loss < 2.0


@pytest.mark.slow
def test_full_epoch_bn_cnn(data_dir, capsys):
    assert main(["train", "--model", "bn-cnn", "--epochs", "1", "--device", "cpu", "--no-progress",
                 "--data-dir", str(data_dir)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    percent, correct, total, _ = _accuracy(out)
    assert total == 10_000 and percent > 97.0
