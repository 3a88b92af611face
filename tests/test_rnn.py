"""RNN, LSTM and GRU from their equations against PyTorch, in float64: outputs, states, gradients, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from companion.rnn import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell, RowClassifier

D = torch.float64
PAIRS = [(RNN, nn.RNN), (LSTM, nn.LSTM), (GRU, nn.GRU)]
CELLS = [(RNNCell, nn.RNNCell), (LSTMCell, nn.LSTMCell), (GRUCell, nn.GRUCell)]


def flat(state):
    return list(state) if isinstance(state, tuple) else [state]


@pytest.mark.parametrize(("ours", "theirs"), CELLS, ids=lambda c: getattr(c, "__name__", ""))
def test_cells_equal_pytorch_cells_values_and_gradients(ours, theirs, precision):
    torch.manual_seed(0)
    reference = theirs(5, 7).to(precision.device, precision.dtype)
    cell = ours(5, 7).to(precision.device, precision.dtype)
    cell.load_state_dict(reference.state_dict())  # same parameter names and gate stacking
    x = precision.randn(3, 5).requires_grad_()
    h = precision.randn(3, 7, seed=1)
    state = (h, precision.randn(3, 7, seed=2)) if ours is LSTMCell else h
    out_ours, out_theirs = flat(cell(x, state)), flat(reference(x, state))
    for a, b in zip(out_ours, out_theirs, strict=True):
        precision.assert_close(a, b)
    loss_ours = sum((t * (i + 1)).sum() for i, t in enumerate(out_ours))
    loss_theirs = sum((t * (i + 1)).sum() for i, t in enumerate(out_theirs))
    grads_ours = torch.autograd.grad(loss_ours, [x, *cell.parameters()])
    grads_theirs = torch.autograd.grad(loss_theirs, [x, *reference.parameters()])
    for a, b in zip(grads_ours, grads_theirs, strict=True):
        precision.assert_close(a, b)


@pytest.mark.parametrize(("ours", "theirs"), PAIRS, ids=lambda c: getattr(c, "__name__", ""))
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("with_state", [False, True])
def test_sequences_equal_pytorch(ours, theirs, batch_first, num_layers, with_state):
    torch.manual_seed(1)
    B, T, I, H = 3, 5, 4, 6  # batch != time steps, so a transposed layout cannot pass
    reference = theirs(I, H, num_layers=num_layers, batch_first=batch_first).double()
    model = ours.from_torch(reference)
    x = torch.randn(*((B, T, I) if batch_first else (T, B, I)), dtype=D)
    hx = None
    if with_state:
        h0 = torch.randn(num_layers, B, H, dtype=D)
        hx = (h0, torch.randn(num_layers, B, H, dtype=D)) if ours is LSTM else h0
    x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ours, state_ours = model(x_ours, hx)
    out_theirs, state_theirs = reference(x_theirs, hx)
    torch.testing.assert_close(out_ours, out_theirs)
    for a, b in zip(flat(state_ours), flat(state_theirs), strict=True):
        torch.testing.assert_close(a, b)
    probe = torch.randn_like(out_ours)
    loss_ours = (out_ours * probe).sum() + sum(s.sum() for s in flat(state_ours))
    loss_theirs = (out_theirs * probe).sum() + sum(s.sum() for s in flat(state_theirs))
    grads_ours = torch.autograd.grad(loss_ours, [x_ours, *model.parameters()])
    grads_theirs = torch.autograd.grad(loss_theirs, [x_theirs, *reference.parameters()])
    # Parameter order: ours is per layer (w_ih, w_hh, b_ih, b_hh); PyTorch's is the same per layer.
    for a, b in zip(grads_ours, grads_theirs, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("cls", [RNN, LSTM, GRU])
def test_initial_state_follows_the_input_dtype_and_device(cls):
    model = cls(3, 4, num_layers=2).double()
    x = torch.randn(5, 2, 3, dtype=D)
    out, state = model(x)
    assert out.dtype == D and all(s.dtype == D for s in flat(state))
    assert all(s.shape == (2, 2, 4) for s in flat(state))
    zeros = torch.zeros(2, 2, 4, dtype=D)  # the reference: PyTorch's documented default state, zeros
    out_given, state_given = model(x, (zeros, zeros) if cls is LSTM else zeros)
    torch.testing.assert_close(out, out_given)
    for ours, given in zip(flat(state), flat(state_given), strict=True):
        torch.testing.assert_close(ours, given)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_lstm_runs_on_cuda_like_on_cpu():
    torch.manual_seed(0)
    reference = nn.LSTM(3, 4, batch_first=True)
    model = LSTM.from_torch(reference)
    x = torch.randn(2, 5, 3)
    torch.testing.assert_close(model.cuda()(x.cuda())[0].cpu(), model.cpu()(x)[0], rtol=1e-4, atol=1e-5)


def test_lstm_by_hand_one_step():
    cell = LSTMCell(1, 1, bias=False)
    with torch.no_grad():
        cell.weight_ih.copy_(torch.tensor([[1.0], [2.0], [3.0], [4.0]]))  # i, f, g, o
        cell.weight_hh.zero_()
    h, c = cell(torch.tensor([[0.5]]), (torch.zeros(1, 1), torch.tensor([[2.0]])))
    i, f, g, o = torch.sigmoid(torch.tensor(0.5)), torch.sigmoid(torch.tensor(1.0)), torch.tanh(torch.tensor(1.5)), torch.sigmoid(torch.tensor(2.0))
    assert c.item() == pytest.approx((f * 2 + i * g).item())
    assert h.item() == pytest.approx((o * torch.tanh(f * 2 + i * g)).item())


def test_gru_by_hand_update_gate_interpolates():
    cell = GRUCell(1, 1, bias=False)
    with torch.no_grad():
        cell.weight_ih.copy_(torch.tensor([[0.0], [100.0], [0.0]]))  # z saturates at 1 for x > 0
        cell.weight_hh.zero_()
    h = torch.tensor([[0.7]])
    assert cell(torch.tensor([[1.0]]), h).item() == pytest.approx(0.7)  # z = 1: keep the old state


def test_from_torch_rejects_unsupported_modules():
    with pytest.raises(ValueError, match="expects a unidirectional LSTM"):
        LSTM.from_torch(nn.LSTM(3, 4, bidirectional=True))
    with pytest.raises(ValueError, match="expects a unidirectional RNN_TANH"):
        RNN.from_torch(nn.RNN(3, 4, nonlinearity="relu"))
    with pytest.raises(ValueError, match="expects a unidirectional GRU"):
        GRU.from_torch(nn.LSTM(3, 4))


@pytest.mark.parametrize(("cls", "x", "hx", "match"), [
    (LSTM, torch.randn(5, 2, 4), None, r"expects input \(T, B, I\), or \(T, I\) unbatched, with I=3, got \(5, 2, 4\)"),
    (GRU, torch.randn(2, 2, 3, 3), None, r"expects input \(T, B, I\), or \(T, I\) unbatched, with I=3, got \(2, 2, 3, 3\)"),
    (GRU, torch.randn(5, 3), torch.zeros(2, 1, 4), r"unbatched input takes an initial state of shape \(L, H\), got \(2, 1, 4\)"),
    (LSTM, torch.randn(5, 3), (torch.zeros(2, 4), torch.zeros(2, 1, 4)), r"unbatched input takes an initial state"),
    (RNN, torch.randn(5, 2, 3), torch.zeros(1, 2, 4), r"expected h0 of shape \(2, 2, 4\) \(L, B, H\), got \(1, 2, 4\)"),
    (LSTM, torch.randn(5, 2, 3), (torch.zeros(2, 2, 4), torch.zeros(2, 3, 4)), r"expected c0 of shape \(2, 2, 4\)"),
    (LSTM, torch.randn(5, 2, 3), torch.zeros(2, 2, 4), r"pair \(h0, c0\)"),
])  # fmt: skip
def test_sequence_errors(cls, x, hx, match):
    with pytest.raises(ValueError, match=match):
        cls(3, 4, num_layers=2)(x, hx)


@pytest.mark.parametrize(("cell", "args", "match"), [
    (RNNCell(3, 4), (torch.randn(2, 5),), r"RNNCell expects input \(B, 3\), got \(2, 5\)"),
    (GRUCell(3, 4), (torch.randn(2, 3), torch.randn(2, 5)), r"expected h of shape \(2, 4\), got \(2, 5\)"),
    (LSTMCell(3, 4), (torch.randn(2, 3), (torch.randn(2, 4), torch.randn(1, 4))), r"expected c of shape \(2, 4\)"),
])  # fmt: skip
def test_cell_errors(cell, args, match):
    with pytest.raises(ValueError, match=match):
        cell(*args)


def test_constructor_errors():
    with pytest.raises(ValueError, match="num_layers must be >= 1"):
        LSTM(3, 4, num_layers=0)
    with pytest.raises(ValueError, match="input_size and hidden_size must be >= 1"):
        GRUCell(0, 4)


def test_row_classifier_reads_rows_in_order_and_checks_shapes():
    torch.manual_seed(0)
    model = RowClassifier(GRU(28, 16, batch_first=True)).double()
    images = torch.randn(4, 1, 28, 28, dtype=D)
    logits = model(images)
    assert logits.shape == (4, 10)
    _, h_n = model.rnn(images[:, 0])
    torch.testing.assert_close(logits, model.head(h_n[-1]))
    assert not torch.allclose(model(images.flip(2)), logits)  # reading the rows in reverse changes the answer
    with pytest.raises(ValueError, match=r"expects images \(B, 1, H, 28\), got \(4, 28, 28\)"):
        model(images[:, 0])
    with pytest.raises(ValueError, match="batch_first=True"):
        RowClassifier(nn.LSTM(28, 16))


def test_row_classifier_accepts_pytorch_modules():
    model = RowClassifier(nn.LSTM(28, 8, batch_first=True))
    images = torch.randn(2, 1, 28, 28)
    _, (h_n, _) = model.rnn(images[:, 0])  # the reference: the head on PyTorch's last hidden state
    torch.testing.assert_close(model(images), model.head(h_n[-1]))
    assert model(images).shape == (2, 10)


def test_lstm_cell_returns_its_gates_on_request():
    torch.manual_seed(0)
    reference = nn.LSTMCell(5, 7).double()
    cell = LSTMCell(5, 7).double()
    cell.load_state_dict(reference.state_dict())
    x, h, c = torch.randn(3, 5, dtype=D), torch.randn(3, 7, dtype=D), torch.randn(3, 7, dtype=D)
    h_next, c_next, gates = cell(x, (h, c), return_gates=True)
    h_ref, c_ref = reference(x, (h, c))
    torch.testing.assert_close(h_next, h_ref)
    torch.testing.assert_close(c_next, c_ref)
    # the gates are the ones the step used: recombining them gives the step's state
    torch.testing.assert_close(gates.f * c + gates.i * gates.g, c_next)
    torch.testing.assert_close(gates.o * torch.tanh(c_next), h_next)
    assert all(((0 < gate) & (gate < 1)).all() for gate in (gates.i, gates.f, gates.o))


@pytest.mark.parametrize("cls", [RNN, LSTM, GRU])
@pytest.mark.parametrize("batch_first", [False, True])
def test_unbatched_sequences_equal_pytorchs(cls, batch_first):
    """(T, I) input and (L, H) states, as PyTorch accepts them (its module samples use them)."""
    torch.manual_seed(0)
    reference = {RNN: nn.RNN, LSTM: nn.LSTM, GRU: nn.GRU}[cls](3, 4, num_layers=2, batch_first=batch_first).double()
    ours = cls.from_torch(reference)
    x = torch.randn(5, 3, dtype=torch.float64)
    hx = torch.randn(2, 4, dtype=torch.float64)
    state = (hx, torch.randn(2, 4, dtype=torch.float64)) if cls is LSTM else hx
    for given in (None, state):
        out, h = ours(x, given)
        ref_out, ref_h = reference(x, given)
        assert out.shape == (5, 4)
        torch.testing.assert_close(out, ref_out)
        torch.testing.assert_close(h, ref_h)  # (L, H), or a pair of them
