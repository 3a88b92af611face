"""companion.train and companion.recipes: evaluation, the training loop, checkpoints and resuming.

Small hand-made models and batches check the arithmetic; a 512-image MNIST subset checks that
a resumed run is the uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from companion.cnn import SeedCNN
from companion.augment import RandomTranslate
from companion.checkpoint import load_checkpoint, save_checkpoint
from companion.data import DeviceLoader
from companion.device import seed_everything
from companion.evaluation import confusion_matrix, evaluate, predict
from companion.history import History, Metrics
from companion.data import ImageSplit
from companion.recipes import ARTICLE, FAST, IMPROVED, TrainConfig, build_model, build_optimizer, train_model
from companion.train import NonFiniteLossError, fit

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# --- helpers ----------------------------------------------------------------------------

# Ten samples whose logits are the inputs themselves (identity model below), three classes.
# The last two, the short last batch of a batch size of 4, are confidently wrong.
LOGITS = [
    [2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 0.5, 0.0],
    [0.2, 0.1, 0.0], [0.0, 2.0, 1.0], [1.0, 1.5, 0.0], [0.0, 0.0, 0.5],
    [5.0, 0.0, 0.0], [0.0, 4.0, 0.0],
]  # fmt: skip
LABELS = [0, 1, 2, 0, 2, 1, 0, 2, 2, 0]


def cross_entropy_by_hand(logits: list[float], label: int) -> float:
    """-log softmax(logits)[label] = log(sum_j e^{z_j}) - z_label."""
    return math.log(sum(math.exp(z) for z in logits)) - logits[label]


def identity_model() -> nn.Linear:
    model = nn.Linear(3, 3)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3))
        model.bias.zero_()
    return model


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(y), batch_size)]


def hand_data() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(LOGITS), torch.tensor(LABELS)


class Recorder(nn.Module):
    """A linear classifier that records ``self.training`` at every forward pass."""

    def __init__(self, in_features: int = 3, num_classes: int = 3) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, num_classes)
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        return self.linear(x)


class EpochLoader(list):
    """A list of batches that records the epochs ``fit`` announces through ``set_epoch``."""

    def __init__(self, items) -> None:
        super().__init__(items)
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)


def random_batches(n_batches: int, batch_size: int = 4, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch_size, 3, generator=g), torch.randint(0, 3, (batch_size,), generator=g))
            for _ in range(n_batches)]  # fmt: skip


def params_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --- evaluate / predict -----------------------------------------------------------------


def test_evaluate_weighs_a_short_last_batch_by_its_size(cpu):
    x, y = hand_data()
    losses = [cross_entropy_by_hand(z, label) for z, label in zip(LOGITS, LABELS, strict=True)]
    correct = sum(max(range(3), key=z.__getitem__) == label for z, label in zip(LOGITS, LABELS, strict=True))
    assert correct == 6
    mean_of_batch_means = (sum(losses[0:4]) / 4 + sum(losses[4:8]) / 4 + sum(losses[8:10]) / 2) / 3

    metrics = evaluate(identity_model(), batches(x, y, 4), cpu)
    assert metrics.num_samples == 10
    assert metrics.loss == pytest.approx(sum(losses) / 10, rel=1e-6)
    assert metrics.loss != pytest.approx(mean_of_batch_means, rel=1e-2)  # the classic mistake
    assert metrics.accuracy == correct / 10

    via_loader = evaluate(identity_model(), DeviceLoader(x, y, 4, device=cpu), cpu)
    assert via_loader == metrics


def test_evaluate_uses_eval_mode_and_restores_the_mode(cpu):
    x, y = hand_data()
    model = Recorder()
    model.train()
    evaluate(model, batches(x, y, 4), cpu)
    assert model.modes == [False] * 3 and model.training
    model.eval()
    evaluate(model, batches(x, y, 4), cpu)
    assert not model.training


def test_evaluate_dropout_is_off(cpu):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 16), nn.Dropout(0.5), nn.Linear(16, 3)).train()
    x, y = hand_data()
    first, second = evaluate(model, batches(x, y, 4), cpu), evaluate(model, batches(x, y, 4), cpu)
    assert first == second  # random dropout masks would change the loss


def test_predict_rejects_an_empty_loader(cpu):
    with pytest.raises(ValueError, match="no samples"):
        predict(nn.Linear(2, 2), [], cpu)


def test_evaluate_rejects_an_empty_loader(cpu):
    model = Recorder().train()
    with pytest.raises(ValueError, match="no samples"):
        evaluate(model, [], cpu)
    assert model.training


@pytest.mark.parametrize("function", [evaluate, predict])
def test_mode_is_restored_when_the_model_raises(cpu, function):
    model = SeedCNN().train()
    wrong = [(torch.zeros(2, 1, 28, 28), torch.zeros(2, dtype=torch.int64)),
             (torch.zeros(2, 1, 32, 32), torch.zeros(2, dtype=torch.int64))]  # fmt: skip
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        function(model, wrong, cpu)
    assert model.training


def test_predict_returns_every_logit_in_order(cpu):
    torch.manual_seed(0)
    model = Recorder().train()
    x, y = torch.randn(10, 3), torch.arange(10) % 3
    logits, labels = predict(model, batches(x, y, 4), cpu)
    assert logits.shape == (10, 3) and logits.dtype == torch.float32 and logits.device.type == "cpu"
    with torch.no_grad():
        torch.testing.assert_close(logits, model.linear(x))
    assert torch.equal(labels, y)
    assert model.training and set(model.modes) == {False}


def test_confusion_matrix_hand_example():
    predictions = torch.tensor([0, 1, 1, 2, 2, 2, 0])
    labels = torch.tensor([0, 1, 2, 2, 0, 2, 0])
    expected = torch.tensor([
        [2, 0, 1],  # class 0: twice right, once called 2
        [0, 1, 0],
        [0, 1, 2],  # class 2: once called 1, twice right
    ])  # fmt: skip
    matrix = confusion_matrix(predictions, labels, 3)
    assert matrix.dtype == torch.int64
    assert torch.equal(matrix, expected)


def test_confusion_matrix_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    predictions, labels = torch.randint(0, 5, (200,), generator=g), torch.randint(0, 5, (200,), generator=g)
    expected = torch.zeros(5, 5, dtype=torch.int64)
    for p, t in zip(predictions.tolist(), labels.tolist(), strict=True):
        expected[t, p] += 1
    matrix = confusion_matrix(predictions, labels, 5)
    assert torch.equal(matrix, expected)
    assert torch.equal(matrix.sum(1), torch.bincount(labels, minlength=5))
    assert int(matrix.trace()) == int((predictions == labels).sum())


def test_confusion_matrix_empty_is_zeros():
    empty = torch.zeros(0, dtype=torch.int64)
    assert torch.equal(confusion_matrix(empty, empty, 4), torch.zeros(4, 4, dtype=torch.int64))


@pytest.mark.parametrize(
    ("predictions", "labels", "match"),
    [
        (torch.tensor([0, 1]), torch.tensor([0, 1, 2]), "same shape"),
        (torch.zeros(2, 2, dtype=torch.int64), torch.zeros(2, 2, dtype=torch.int64), "same shape"),
        (torch.tensor([0, 3]), torch.tensor([0, 1]), r"predictions must lie in \[0, 3\)"),
        (torch.tensor([0, 1]), torch.tensor([-1, 1]), r"labels must lie in \[0, 3\)"),
    ],
)
def test_confusion_matrix_errors(predictions, labels, match):
    with pytest.raises(ValueError, match=match):
        confusion_matrix(predictions, labels, 3)


# --- fit --------------------------------------------------------------------------------


def test_fit_history_has_one_entry_per_epoch(cpu):
    torch.manual_seed(0)
    model = Recorder()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    history = fit(model, random_batches(3), optimizer=optimizer, epochs=3, device=cpu, progress=False)
    assert history.epoch == [1, 2, 3] and len(history) == 3
    for values in history.to_dict().values():
        assert len(values) == 3
    assert all(s >= 0 for s in history.seconds) and history.total_seconds == pytest.approx(sum(history.seconds))
    assert history.lr == [0.1, 0.1, 0.1]


def test_fit_switches_between_train_and_eval(cpu):
    model = Recorder().eval()  # fit must switch it to train() itself
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train, val = random_batches(3), random_batches(2, seed=1)
    fit(model, train, optimizer=optimizer, epochs=2, device=cpu, val_loader=val, progress=False)
    assert model.modes == ([True] * 3 + [False] * 2) * 2


def test_fit_reports_per_sample_means(cpu):
    # With a learning rate of 0 the model never changes, so the training loss and accuracy of
    # every epoch must equal evaluate()'s on the same batches (10 samples, short last batch).
    x, y = hand_data()
    model = identity_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    train = batches(x, y, 4)
    history = fit(model, train, optimizer=optimizer, epochs=2, device=cpu, val_loader=train, progress=False)
    expected = evaluate(model, train, cpu)
    assert history.train_loss == pytest.approx([expected.loss] * 2, rel=1e-6)
    assert history.train_accuracy == [expected.accuracy] * 2 == [0.6, 0.6]
    assert history.val_loss == pytest.approx([expected.loss] * 2, rel=1e-6)


def test_fit_validation_metrics_present_or_nan(cpu):
    torch.manual_seed(0)
    model = Recorder()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    val = random_batches(2, seed=1)
    history = fit(model, random_batches(3), optimizer=optimizer, epochs=2, device=cpu, val_loader=val, progress=False)
    final = evaluate(model, val, cpu)  # the model has not changed since the last validation
    assert history.val_loss[-1] == final.loss and history.val_accuracy[-1] == final.accuracy
    assert not any(math.isnan(v) for v in history.val_loss + history.val_accuracy)

    history = fit(model, random_batches(3), optimizer=optimizer, epochs=2, device=cpu, progress=False)
    assert len(history.val_loss) == 2 and all(math.isnan(v) for v in history.val_loss + history.val_accuracy)


@pytest.mark.parametrize(("interval", "expected"), [("step", [0.5**2, 0.5**5]), ("epoch", [1.0, 0.5])])
def test_fit_steps_the_scheduler_per_step_or_per_epoch(cpu, interval, expected):
    model = Recorder()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    history = fit(model, random_batches(3), optimizer=optimizer, epochs=2, device=cpu, scheduler=scheduler,
                  scheduler_interval=interval, progress=False)  # fmt: skip
    assert history.lr == pytest.approx(expected, rel=1e-12)
    assert scheduler.last_epoch == {"step": 6, "epoch": 2}[interval]


def test_fit_announces_each_epoch_to_the_loader(cpu):
    model = Recorder()
    loader = EpochLoader(random_batches(2))
    fit(model, loader, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), epochs=3, device=cpu, progress=False)
    assert loader.epochs == [0, 1, 2]


def test_fit_uses_the_loss_function(cpu):
    calls = []

    def loss_fn(logits, y):
        calls.append(len(y))
        return F.cross_entropy(logits, y, label_smoothing=0.1)

    model = identity_model()
    x, y = hand_data()
    history = fit(model, batches(x, y, 4), optimizer=torch.optim.SGD(model.parameters(), lr=0.0), epochs=1,
                  device=cpu, loss_fn=loss_fn, progress=False)  # fmt: skip
    assert calls == [4, 4, 2]
    smoothed = F.cross_entropy(x, y, label_smoothing=0.1).item()
    assert history.train_loss[0] == pytest.approx(smoothed, rel=1e-6)


def test_fit_zero_epochs_changes_nothing(cpu):
    model = Recorder()
    before = params_of(model)
    history = fit(model, random_batches(2), optimizer=torch.optim.SGD(model.parameters(), lr=1.0), epochs=0,
                  device=cpu, progress=False)  # fmt: skip
    assert len(history) == 0 and model.modes == []
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fit_calls_on_epoch_end_after_the_checkpoint(cpu, tmp_path):
    path = tmp_path / "run.pt"
    seen = []

    def on_epoch_end(history: History) -> None:
        epoch, _ = load_checkpoint(path, Recorder())
        seen.append((len(history), epoch))

    model = Recorder()
    fit(model, random_batches(2), optimizer=torch.optim.SGD(model.parameters(), lr=0.1), epochs=3, device=cpu,
        checkpoint_path=path, on_epoch_end=on_epoch_end, progress=False)  # fmt: skip
    assert seen == [(1, 1), (2, 2), (3, 3)]


class NaNAtCall:
    """Cross-entropy that turns non-finite at its ``bad``-th call (1-based) and stays so (like diverged weights)."""

    def __init__(self, bad: int, value: float = math.nan) -> None:
        self.bad, self.value, self.calls = bad, value, 0

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        loss = F.cross_entropy(logits, y)
        return loss * self.value if self.calls >= self.bad else loss


@pytest.mark.parametrize(("check_every", "calls_at_error"), [(1, 17), (3, 19), (4, 18), (25, 20)])
def test_fit_names_epoch_and_step_of_a_non_finite_loss(cpu, tmp_path, check_every, calls_at_error):
    # 10 steps per epoch: call 17 is step 7 of epoch 2. Checks run every `check_every` steps and
    # at the end of each epoch, so the error comes at the first check at or after step 7.
    model = Recorder()
    loss_fn = NaNAtCall(bad=17)
    path = tmp_path / "run.pt"
    with pytest.raises(NonFiniteLossError) as info:
        fit(model, random_batches(10), optimizer=torch.optim.SGD(model.parameters(), lr=0.1), epochs=3, device=cpu,
            loss_fn=loss_fn, check_every=check_every, checkpoint_path=path, progress=False)  # fmt: skip
    assert isinstance(info.value, RuntimeError)
    message = str(info.value)
    assert "epoch 2, step 7 " in message and "nan" in message
    assert loss_fn.calls == calls_at_error
    assert load_checkpoint(path, Recorder())[0] == 1  # the failed epoch was not saved


def test_fit_reports_infinite_loss(cpu):
    model = Recorder()
    with pytest.raises(NonFiniteLossError, match=r"became inf at epoch 1, step 2 "):
        fit(model, random_batches(5), optimizer=torch.optim.SGD(model.parameters(), lr=0.0), epochs=1, device=cpu,
            loss_fn=NaNAtCall(bad=2, value=math.inf), progress=False)  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epochs": -1}, "epochs must be >= 0"),
        ({"check_every": 0}, "check_every must be >= 1"),
        ({"resume": True}, "resume=True needs a checkpoint_path"),
        ({"scheduler_interval": "batch"}, "scheduler_interval must be 'step' or 'epoch'"),
    ],
)
def test_fit_argument_errors(cpu, kwargs, match):
    model = Recorder()
    arguments = {"optimizer": torch.optim.SGD(model.parameters(), lr=0.1), "epochs": 1, "device": cpu,
                 "progress": False, **kwargs}  # fmt: skip
    with pytest.raises(ValueError, match=match):
        fit(model, random_batches(2), **arguments)
    assert model.modes == []  # rejected before any step


# --- checkpoints ------------------------------------------------------------------------


def trained_setup(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(seed)
    model = Recorder()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    return model, optimizer, scheduler


def take_steps(model, optimizer, scheduler, n: int, seed: int = 0) -> None:
    for x, y in random_batches(n, seed=seed):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        scheduler.step()


def test_checkpoint_write_is_atomic_and_clean(tmp_path):
    model, optimizer, scheduler = trained_setup()
    path = tmp_path / "sub" / "dir" / "model.pt"
    assert save_checkpoint(path, model, optimizer, scheduler, epoch=1) == path
    assert os.listdir(path.parent) == ["model.pt"]
    save_checkpoint(path, model, optimizer, scheduler, epoch=2)  # overwrite
    assert os.listdir(path.parent) == ["model.pt"]
    assert load_checkpoint(path, Recorder())[0] == 2


def test_failed_checkpoint_write_keeps_the_old_file(tmp_path, monkeypatch):
    model, optimizer, _ = trained_setup()
    path = save_checkpoint(tmp_path / "model.pt", model, optimizer, epoch=1)
    good = path.read_bytes()

    def crash(obj, f):  # dies halfway through writing, as on a full disk or a kill
        f.write(b"half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, model, optimizer, epoch=2)
    assert os.listdir(tmp_path) == ["model.pt"]
    assert path.read_bytes() == good


def test_checkpoint_loads_with_weights_only(tmp_path):
    model, optimizer, scheduler = trained_setup()
    take_steps(model, optimizer, scheduler, 3)
    history = History(epoch=[1], train_loss=[0.5], train_accuracy=[0.75], val_loss=[math.nan],
                      val_accuracy=[math.nan], seconds=[1.5], lr=[0.01])  # fmt: skip
    path = save_checkpoint(tmp_path / "model.pt", model, optimizer, scheduler, epoch=1, history=history)
    state = torch.load(path, weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch", "history", "torch_rng_state"} <= state.keys()
    assert state["epoch"] == 1 and state["history"]["train_loss"] == [0.5]
    for name, tensor in model.state_dict().items():
        assert torch.equal(state["model"][name], tensor)


def test_checkpoint_round_trip(tmp_path):
    model, optimizer, scheduler = trained_setup(seed=0)
    take_steps(model, optimizer, scheduler, 3)
    history = History(epoch=[1, 2], train_loss=[0.9, 0.4], train_accuracy=[0.5, 0.8], val_loss=[math.nan, 0.3],
                      val_accuracy=[math.nan, 0.9], seconds=[1.0, 2.0], lr=[0.01, 0.005])  # fmt: skip
    path = save_checkpoint(tmp_path / "model.pt", model, optimizer, scheduler, epoch=2, history=history)
    after_save = torch.rand(3)  # the CPU random state moves on after saving...

    fresh_model, fresh_optimizer, fresh_scheduler = trained_setup(seed=1)
    epoch, restored = load_checkpoint(path, fresh_model, fresh_optimizer, fresh_scheduler)
    assert torch.equal(torch.rand(3), after_save)  # ...and loading rewinds it to the saved state
    assert epoch == 2
    assert restored.epoch == [1, 2] and restored.train_loss == [0.9, 0.4] and restored.lr == [0.01, 0.005]
    assert math.isnan(restored.val_loss[0]) and restored.val_loss[1] == 0.3
    for name, tensor in model.state_dict().items():
        assert torch.equal(fresh_model.state_dict()[name], tensor)
    assert fresh_scheduler.last_epoch == scheduler.last_epoch == 3
    assert fresh_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"] == 0.005
    # The restored optimizer (Adam moments, step counts) takes exactly the original's next steps.
    take_steps(model, optimizer, scheduler, 2, seed=5)
    take_steps(fresh_model, fresh_optimizer, fresh_scheduler, 2, seed=5)
    for name, tensor in model.state_dict().items():
        assert torch.equal(fresh_model.state_dict()[name], tensor)


def test_load_checkpoint_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nope.pt", Recorder())


class _NotATensor:
    pass


@pytest.mark.parametrize("content", ["text", "empty", "tensor", "other dict", "object"])
def test_load_checkpoint_rejects_other_files(tmp_path, content):
    path = tmp_path / "file.pt"
    if content == "text":
        path.write_text("hello, I am not a checkpoint\n")
    elif content == "empty":
        path.write_bytes(b"")
    elif content == "tensor":
        torch.save(torch.zeros(3), path)
    elif content == "other dict":
        torch.save({"state_dict": Recorder().state_dict()}, path)
    else:
        torch.save(_NotATensor(), path)  # refused by weights_only=True
    model = Recorder()
    before = params_of(model)
    with pytest.raises(ValueError, match="is not a companion checkpoint"):
        load_checkpoint(path, model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@cuda_only
def test_checkpoint_saved_on_cuda_loads_on_cpu(tmp_path):
    torch.manual_seed(0)
    model = Recorder().cuda()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for x, y in random_batches(3):
        optimizer.zero_grad()
        F.cross_entropy(model(x.cuda()), y.cuda()).backward()
        optimizer.step()
    path = save_checkpoint(tmp_path / "gpu.pt", model, optimizer, epoch=1)
    state = torch.load(path, weights_only=True)  # no map_location needed: saved from the CPU
    assert all(t.device.type == "cpu" for t in state["model"].values())
    cpu_model = Recorder()
    cpu_optimizer = torch.optim.Adam(cpu_model.parameters(), lr=0.01)
    assert load_checkpoint(path, cpu_model, cpu_optimizer)[0] == 1
    for name, tensor in model.state_dict().items():
        assert torch.equal(cpu_model.state_dict()[name], tensor.cpu())
    moments = [s["exp_avg"] for s in cpu_optimizer.state.values()]
    assert len(moments) == 2 and all(m.device.type == "cpu" for m in moments)


# --- resuming: 1 epoch + checkpoint + 1 epoch == 2 epochs ------------------------------------


def _resume_setup(split, model_seed: int, make_model):
    seed_everything(model_seed)
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = DeviceLoader.from_split(split, 64, shuffle=True, seed=3, device="cpu", transform=RandomTranslate(1))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=2 * len(loader))
    return model, optimizer, loader, scheduler


class DropoutMLP(nn.Module):
    """Uses the global random state during training, so resuming must restore it."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.mark.parametrize("make_model", [SeedCNN, DropoutMLP])
def test_resumed_run_equals_uninterrupted_run(mnist_train, mnist_test, tmp_path, cpu, make_model):
    train, val = mnist_train.head(256), DeviceLoader.from_split(mnist_test.head(128), 128, device="cpu")

    def run(epochs: int, model_seed: int, **kwargs):
        model, optimizer, loader, scheduler = _resume_setup(train, model_seed, make_model)
        history = fit(model, loader, optimizer=optimizer, epochs=epochs, device=cpu, scheduler=scheduler,
                      val_loader=val, progress=False, **kwargs)  # fmt: skip
        return model, history

    straight, straight_history = run(2, model_seed=0)
    path = tmp_path / "run.pt"
    first, first_history = run(1, model_seed=0, checkpoint_path=path)
    torch.rand(100)  # disturb the global random state between the two halves
    resumed, resumed_history = run(2, model_seed=123, checkpoint_path=path, resume=True)  # other initial weights

    assert not all(torch.equal(first.state_dict()[k], v) for k, v in straight.state_dict().items())
    for name, tensor in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], tensor, rtol=1e-6, atol=1e-7)
    assert resumed_history.epoch == straight_history.epoch == [1, 2]
    assert resumed_history.train_loss[0] == first_history.train_loss[0]  # restored from the checkpoint
    assert resumed_history.train_loss == pytest.approx(straight_history.train_loss, rel=1e-6)
    assert resumed_history.val_loss == pytest.approx(straight_history.val_loss, rel=1e-6)
    assert resumed_history.lr == pytest.approx(straight_history.lr, rel=1e-9)
    assert load_checkpoint(path, make_model())[0] == 2


def test_resume_without_a_checkpoint_file_starts_fresh(tmp_path, cpu):
    torch.manual_seed(0)
    model = Recorder()
    history = fit(model, random_batches(2), optimizer=torch.optim.SGD(model.parameters(), lr=0.1), epochs=2,
                  device=cpu, checkpoint_path=tmp_path / "new.pt", resume=True, progress=False)  # fmt: skip
    assert history.epoch == [1, 2] and len(model.modes) == 4
    assert (tmp_path / "new.pt").is_file()


def test_resume_of_a_finished_run_trains_no_more(tmp_path, cpu):
    torch.manual_seed(0)
    model = Recorder()
    path = tmp_path / "run.pt"
    fit(model, random_batches(2), optimizer=torch.optim.SGD(model.parameters(), lr=0.1), epochs=2, device=cpu,
        checkpoint_path=path, progress=False)  # fmt: skip
    again = Recorder()
    loader = EpochLoader(random_batches(2))
    history = fit(again, loader, optimizer=torch.optim.SGD(again.parameters(), lr=0.1), epochs=2, device=cpu,
                  checkpoint_path=path, resume=True, progress=False)  # fmt: skip
    assert history.epoch == [1, 2] and again.modes == [] and loader.epochs == []
    for name, tensor in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor)


# --- recipes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model", "nope"),
        ("dataset", "cifar10"),
        ("epochs", 0),
        ("batch_size", 0),
        ("lr", 0.0),
        ("optimizer", "adam"),
        ("momentum", 1.0),
        ("weight_decay", -1e-4),
        ("schedule", "cosine"),
        ("label_smoothing", 1.0),
        ("max_shift", -1),
        ("mixed_precision", "fp8"),
        ("seed", 2**32),
    ],
)
def test_train_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError) as info:
        TrainConfig(**{field: value})
    message = str(info.value)
    assert message.startswith(f"{field} must") and message.endswith(f"got {value!r}")


def test_train_config_is_frozen_and_recipes_are_valid():
    config = TrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 1.0  # type: ignore[misc]
    assert (ARTICLE.model, ARTICLE.optimizer, ARTICLE.lr, ARTICLE.momentum, ARTICLE.batch_size) == (
        "seed-cnn", "sgd", 0.001, 0.9, 64)  # fmt: skip
    assert IMPROVED.model == "bn-cnn" and IMPROVED.schedule == "one-cycle"
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        dataclasses.replace(IMPROVED, epochs=0)


def test_recipe_train_reports_missing_data(tmp_path, cpu):
    from companion.data import DataNotFoundError
    from companion.recipes import run_recipe as train

    with pytest.raises(DataNotFoundError, match="MNIST files not found"):
        train(TrainConfig(epochs=1), root=tmp_path, device=cpu, progress=False)


def test_build_model_and_optimizer():
    assert isinstance(build_model("seed-cnn"), SeedCNN)
    assert build_model("bn-cnn", num_classes=7).fc.out_features == 7
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        build_model("nope")
    model = build_model("seed-cnn")
    sgd = build_optimizer(ARTICLE, model)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9 and sgd.defaults["lr"] == 0.001
    adamw = build_optimizer(IMPROVED, model)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["weight_decay"] == 5e-4
    assert sum(p.numel() for g in adamw.param_groups for p in g["params"]) == 21_840


def test_recipe_train_improved_on_a_subset(small_data, cpu):
    from companion.recipes import run_recipe as train

    config = dataclasses.replace(IMPROVED, epochs=2, batch_size=64)
    result = train(config, device=cpu, progress=False)
    assert not result.model.training
    assert result.test.num_samples == 200 and len(result.history) == 2
    assert result.history.val_loss[-1] == pytest.approx(result.test.loss, rel=1e-6)
    # One-cycle over epochs x steps per epoch = 2 x 4 steps, stepped after every batch: PyTorch's own
    # schedule, stepped the same way, gives the learning rate of each epoch's last step.
    reference = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=config.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(reference, max_lr=config.lr, total_steps=8)
    expected = []
    for step in range(1, 9):
        if step % 4 == 0:
            expected.append(reference.param_groups[0]["lr"])
        reference.step()
        schedule.step()
    assert result.history.lr == pytest.approx(expected, rel=1e-9)


def test_recipe_train_is_seeded(small_data, cpu):
    from companion.recipes import run_recipe as train

    config = TrainConfig(model="seed-cnn", epochs=1, batch_size=32, max_shift=1, seed=5)
    first, second = train(config, device=cpu, progress=False), train(config, device=cpu, progress=False)
    assert isinstance(first.test, Metrics) and first.test == second.test
    assert first.history.train_loss == second.history.train_loss
    other = train(dataclasses.replace(config, seed=6), device=cpu, progress=False)
    assert other.history.train_loss != first.history.train_loss


def test_fit_clips_the_gradient_norm(cpu):
    # One SGD step with lr 1 moves the weights by exactly the (clipped) gradient.
    model = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    x, y = torch.full((4, 3), 100.0), torch.zeros(4, dtype=torch.int64)
    before = model.weight.detach().clone()
    fit(model, [(x, y)], optimizer=torch.optim.SGD(model.parameters(), lr=1.0), epochs=1, device=cpu,
        max_grad_norm=0.5, progress=False)
    assert (model.weight.detach() - before).norm().item() == pytest.approx(0.5, rel=1e-5)
    with pytest.raises(ValueError, match="max_grad_norm must be > 0"):
        fit(model, [(x, y)], optimizer=torch.optim.SGD(model.parameters(), lr=1.0), epochs=1, device=cpu,
            max_grad_norm=0.0, progress=False)


def test_checkpoint_file_has_the_usual_permissions(tmp_path, cpu):
    umask = os.umask(0)
    os.umask(umask)
    path = save_checkpoint(tmp_path / "c.pt", nn.Linear(2, 2))
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fit_with_mixed_precision_on_cuda_and_resume_on_cpu(tmp_path):
    torch.manual_seed(0)
    model = SeedCNN().cuda()
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
    history = fit(model, batches, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), epochs=1, device="cuda",
                  mixed_precision=True, checkpoint_path=tmp_path / "c.pt", progress=False)
    assert len(history) == 1 and math.isfinite(history.train_loss[0])
    cpu_model = SeedCNN()
    epoch, _ = load_checkpoint(tmp_path / "c.pt", cpu_model)
    assert epoch == 1
    torch.testing.assert_close(cpu_model.conv1.weight, model.conv1.weight.cpu())


class _RecordingScaler(torch.amp.GradScaler):
    """A real CPU gradient scaler, switched on (as fit's is for float16 on CUDA), that counts its calls."""

    def __init__(self) -> None:
        super().__init__("cpu", init_scale=2.0**10, enabled=True)
        self.calls: list[str] = []

    def scale(self, outputs):
        self.calls.append("scale")
        return super().scale(outputs)

    def unscale_(self, optimizer):
        self.calls.append("unscale_")
        return super().unscale_(optimizer)


def test_fit_routes_the_step_through_the_gradient_scaler(cpu, monkeypatch):
    # float16 on CUDA scales the loss; faked on the CPU with a real, enabled scaler. A power-of-two
    # scale is undone exactly, so the trained weights equal an unscaled run's.
    import companion.train

    data = random_batches(6)
    torch.manual_seed(0)
    plain = nn.Linear(3, 3)
    scaled = nn.Linear(3, 3)
    scaled.load_state_dict(plain.state_dict())
    fit(plain, data, optimizer=torch.optim.SGD(plain.parameters(), lr=0.1), epochs=2, device=cpu,
        max_grad_norm=1.0, progress=False)
    recorder = _RecordingScaler()
    monkeypatch.setattr(companion.train, "grad_scaler", lambda device, enabled, dtype=None: recorder)
    fit(scaled, data, optimizer=torch.optim.SGD(scaled.parameters(), lr=0.1), epochs=2, device=cpu,
        max_grad_norm=1.0, mixed_precision=True, progress=False)
    assert recorder.calls == ["scale", "unscale_"] * 12
    for (name, a), b in zip(plain.state_dict().items(), scaled.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_history_append_records_one_epoch_in_every_field():
    history = History()
    values = dict(epoch=1, train_loss=0.5, train_accuracy=0.8, val_loss=0.4, val_accuracy=0.9, seconds=2.0, lr=0.1)
    history.append(**values)
    assert history.to_dict() == {name: [value] for name, value in values.items()}


@pytest.mark.parametrize(("change", "match"), [
    ({"lr": None}, r"missing \['lr'\]"),
    ({"val_acc": 0.9}, r"unknown \['val_acc'\]"),
])  # fmt: skip
def test_history_append_refuses_missing_or_unknown_fields(change, match):
    values = dict(epoch=1, train_loss=0.5, train_accuracy=0.8, val_loss=0.4, val_accuracy=0.9, seconds=2.0, lr=0.1)
    values.update(change)
    values = {k: v for k, v in values.items() if v is not None}
    history = History()
    with pytest.raises(ValueError, match=match):
        history.append(**values)
    assert len(history) == 0 and history.epoch == []


def test_fit_accepts_a_plain_iterable_without_a_length(cpu):
    torch.manual_seed(0)
    model = nn.Linear(3, 3)
    data = random_batches(4)
    history = fit(model, iter(data), optimizer=torch.optim.SGD(model.parameters(), lr=0.1), epochs=1,
                  device=cpu, progress=False)  # fmt: skip
    assert history.epoch == [1] and math.isfinite(history.train_loss[0])


def test_train_model_refuses_settings_a_ready_loader_would_ignore(cpu):
    from companion.recipes import train_model

    loader = DeviceLoader(torch.rand(8, 1, 28, 28), torch.zeros(8, dtype=torch.long), 4, device="cpu")
    model = SeedCNN()
    with pytest.raises(ValueError, match=r"max_shift=2 would not apply"):
        train_model(model, loader, TrainConfig(batch_size=4, max_shift=2, epochs=1), device=cpu, progress=False)
    with pytest.raises(ValueError, match=r"ready loader \(batch_size=4\), so config.batch_size=64"):
        train_model(model, loader, TrainConfig(epochs=1), device=cpu, progress=False)
    history = train_model(model, loader, TrainConfig(batch_size=4, epochs=1), device=cpu, progress=False)
    assert len(history) == 1


def test_train_model_equals_fit_with_the_same_settings(cpu, mnist_test):
    # train_model is fit with config's optimizer, schedule and loss: same weights after one epoch.
    split = mnist_test.head(256)
    config = TrainConfig(epochs=1, batch_size=32, lr=3e-3, optimizer="adamw", weight_decay=0.01,
                         schedule="one-cycle", label_smoothing=0.1)  # fmt: skip
    from companion.recipes import train_model

    torch.manual_seed(0)
    ours = SeedCNN()
    reference = SeedCNN()
    reference.load_state_dict(ours.state_dict())
    train_model(ours, split, config, device=cpu, progress=False)
    loader = DeviceLoader.from_split(split, 32, shuffle=True, device="cpu", seed=0)
    optimizer = torch.optim.AdamW(reference.parameters(), lr=3e-3, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=len(loader))
    fit(reference, loader, optimizer=optimizer, epochs=1, device=cpu, scheduler=scheduler, progress=False,
        loss_fn=lambda z, y: F.cross_entropy(z, y, label_smoothing=0.1))  # fmt: skip
    for (name, a), b in zip(ours.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_eval_mode_restores_the_mode_also_on_an_error():
    from companion.utils import eval_mode

    model = nn.Dropout(0.5)
    with eval_mode(model):
        assert not model.training
    assert model.training
    with pytest.raises(RuntimeError, match="boom"):
        with eval_mode(model):
            raise RuntimeError("boom")
    assert model.training
    model.eval()
    with eval_mode(model):
        pass
    assert not model.training  # a model in eval mode stays there


def test_count_parameters_of_parameter_groups_counts_shared_tensors_once():
    from companion.summary import count_parameters

    layer = nn.Linear(4, 3)
    assert count_parameters([layer.weight, layer.bias, layer.weight]) == 15 == count_parameters(layer)


def _dtypes_seen(model: nn.Module) -> list[torch.dtype]:
    seen: list[torch.dtype] = []
    model.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    return seen


def test_fit_autocasts_to_a_given_dtype_on_the_cpu(cpu):
    # torch.bfloat16 turns autocast on even on the CPU; True leaves the CPU in float32.
    data = random_batches(3)
    for mixed_precision, expected in [(torch.bfloat16, torch.bfloat16), (True, torch.float32), (False, torch.float32)]:
        torch.manual_seed(0)
        model = nn.Linear(3, 3)
        seen = _dtypes_seen(model)
        fit(model, data, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), epochs=1, device=cpu,
            mixed_precision=mixed_precision, progress=False)  # fmt: skip
        assert set(seen) == {expected}, mixed_precision


def test_fit_refuses_float16_on_the_cpu_and_other_dtypes(cpu):
    model = nn.Linear(3, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="float16 autocast needs a CUDA device"):
        fit(model, random_batches(1), optimizer=optimizer, epochs=1, device=cpu, mixed_precision=torch.float16,
            progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="must be torch.bfloat16 or torch.float16, got torch.float64"):
        fit(model, random_batches(1), optimizer=optimizer, epochs=1, device=cpu, mixed_precision=torch.float64,
            progress=False)  # fmt: skip


def test_train_model_passes_the_configs_mixed_precision(cpu):
    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
    split = ImageSplit("mnist", True, images, torch.arange(64) % 10, list("0123456789"), mean=0.5, std=0.5)
    for precision, expected in [("bfloat16", torch.bfloat16), ("off", torch.float32), ("auto", torch.float32)]:
        torch.manual_seed(0)
        model = SeedCNN()
        seen = _dtypes_seen(model)
        config = TrainConfig(epochs=1, batch_size=32, mixed_precision=precision)
        train_model(model, split, config, device=cpu, progress=False)
        assert set(seen) == {expected}, precision


def test_fast_recipe_runs_in_bfloat16_on_the_pool_first_network():
    assert FAST.mixed_precision == "bfloat16" and FAST.model == "bn-cnn-fast"
    model = build_model(FAST.model)
    assert model.pool_before_norm and (model.conv1.out_channels, model.conv2.out_channels) == (16, 32)


@pytest.mark.parametrize("name", ["LogisticRegression", "MLP", "SeedCNN", "BatchNormCNN", "EfficientCNN", "DeepCNN",
                                  "RowClassifier", "VisionTransformer"])  # fmt: skip
def test_every_classifier_splits_into_features_and_head(name):
    """forward = forward_head(forward_features), exactly, so every tool that takes a backbone takes each of them."""
    from companion.attention import VisionTransformer
    from companion.cnn import BatchNormCNN, SeedCNN
    from companion.concepts import MLP, LogisticRegression
    from companion.finetune import Headless
    from companion.modern_cnn import DeepCNN, EfficientCNN
    from companion.rnn import GRU, RowClassifier
    from companion.simclr import SimCLR

    build = {"LogisticRegression": LogisticRegression, "MLP": MLP, "SeedCNN": SeedCNN, "BatchNormCNN": BatchNormCNN,
             "EfficientCNN": EfficientCNN, "DeepCNN": lambda: DeepCNN(depth=8),
             "RowClassifier": lambda: RowClassifier(GRU(28, 16, batch_first=True)),
             "VisionTransformer": VisionTransformer}  # fmt: skip
    torch.manual_seed(0)
    model = build[name]().eval()
    x = torch.randn(3, 1, 28, 28)
    features = model.forward_features(x)
    assert torch.equal(model(x), model.forward_head(features))
    assert Headless(model)(x).shape[0] == 3  # the input of the last linear layer: a feature extractor
    feature_size = features.flatten(1).shape[1]
    assert SimCLR(model, feature_size=feature_size)(x).shape[0] == 3  # SimCLR takes it as a backbone
