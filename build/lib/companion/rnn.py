r"""Recurrent networks from their equations: Elman RNN, LSTM and GRU cells, a multi-layer wrapper,
and a classifier that reads an image row by row.

Parameters are named and stacked as PyTorch's (``weight_ih`` (G·H, I), ``weight_hh`` (G·H, H),
``bias_ih``, ``bias_hh``; gates in the order i, f, g, o for the LSTM and r, z, n for the GRU),
so weights copy across with :meth:`Recurrent.from_torch`. Shape letters: B batch, T time steps,
I input features, H hidden units, L layers.

Chapter "Recurrent networks" derives the equations and proves these modules equal to
``nn.RNN``, ``nn.LSTM`` and ``nn.GRU``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

__all__ = ["GRU", "GRUCell", "LSTM", "LSTMCell", "LSTMGates", "RNN", "RNNCell", "Recurrent", "RowClassifier"]

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class _Cell(nn.Module):
    """Shared parameters of the three cells: ``num_gates`` blocks of ``hidden_size`` rows each."""

    num_gates = 1

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True) -> None:
        super().__init__()
        if input_size < 1 or hidden_size < 1:
            raise ValueError(f"input_size and hidden_size must be >= 1, got {input_size} and {hidden_size}")
        self.input_size, self.hidden_size = input_size, hidden_size
        G = self.num_gates
        self.weight_ih = nn.Parameter(torch.empty(G * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(G * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(G * hidden_size)) if bias else None
        self.bias_hh = nn.Parameter(torch.empty(G * hidden_size)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's initialisation: every parameter uniform in [-1/√H, 1/√H]."""
        bound = 1 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def _affine(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """W_ih x + b_ih and W_hh h + b_hh, all gates at once: (B, G·H) each."""
        xi = x @ self.weight_ih.T  # (B, I) -> (B, G*H)
        hh = h @ self.weight_hh.T  # (B, H) -> (B, G*H)
        if self.bias_ih is not None:
            xi, hh = xi + self.bias_ih, hh + self.bias_hh
        return xi, hh

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.input_size:
            raise ValueError(f"{type(self).__name__} expects input (B, {self.input_size}), got {tuple(x.shape)}")

    def _check_state(self, h: torch.Tensor, x: torch.Tensor, name: str = "h") -> None:
        if tuple(h.shape) != (x.shape[0], self.hidden_size):
            raise ValueError(f"expected {name} of shape ({x.shape[0]}, {self.hidden_size}), got {tuple(h.shape)}")


class RNNCell(_Cell):
    r"""Elman recurrent cell (Elman, 1990), equal to ``nn.RNNCell`` with ``nonlinearity="tanh"``.

    .. math:: h_t = \tanh(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh})

    Shape:
        x (B, I), h (B, H) → h' (B, H). ``h=None`` starts from zeros on x's device and dtype.

    Raises:
        ValueError: x or h of the wrong shape.
    """

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        self._check(x)
        h = x.new_zeros(x.shape[0], self.hidden_size) if h is None else h
        self._check_state(h, x)
        xi, hh = self._affine(x, h)
        return torch.tanh(xi + hh)  # h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)


class LSTMGates(NamedTuple):
    """The gate activations of one LSTM step, each (B, H): input, forget, candidate, output."""

    i: torch.Tensor
    f: torch.Tensor
    g: torch.Tensor
    o: torch.Tensor


class LSTMCell(_Cell):
    r"""Long short-term memory cell (Hochreiter & Schmidhuber, 1997; forget gate: Gers et al., 2000).

    .. math::
        i_t &= \sigma(W_{ii} x_t + b_{ii} + W_{hi} h_{t-1} + b_{hi}) \\
        f_t &= \sigma(W_{if} x_t + b_{if} + W_{hf} h_{t-1} + b_{hf}) \\
        g_t &= \tanh(W_{ig} x_t + b_{ig} + W_{hg} h_{t-1} + b_{hg}) \\
        o_t &= \sigma(W_{io} x_t + b_{io} + W_{ho} h_{t-1} + b_{ho}) \\
        c_t &= f_t \odot c_{t-1} + i_t \odot g_t \\
        h_t &= o_t \odot \tanh(c_t)

    Equal to ``nn.LSTMCell``.

    Shape:
        x (B, I), state (h, c) each (B, H) → (h', c'). ``state=None`` starts from zeros.

    Raises:
        ValueError: x, h or c of the wrong shape.
    """

    num_gates = 4

    def gates(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The four gate activations (i, f, g, o), each (B, H)."""
        xi, hh = self._affine(x, h)
        a_i, a_f, a_g, a_o = (xi + hh).chunk(4, dim=1)  # PyTorch's stacking order: i, f, g, o
        i = torch.sigmoid(a_i)  # input gate
        f = torch.sigmoid(a_f)  # forget gate
        g = torch.tanh(a_g)  # candidate cell values
        o = torch.sigmoid(a_o)  # output gate
        return i, f, g, o

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None, return_gates: bool = False
    ):
        """One step: ``(h', c')``, or ``(h', c', gates)`` with ``return_gates=True``.

        ``gates`` is an :class:`LSTMGates` of the step's i, f, g, o, each (B, H): the values
        the chapter plots, from the same computation that produced ``h'`` and ``c'``.
        """
        self._check(x)
        if state is None:
            zeros = x.new_zeros(x.shape[0], self.hidden_size)
            state = (zeros, zeros)
        h, c = state
        self._check_state(h, x, "h")
        self._check_state(c, x, "c")
        i, f, g, o = self.gates(x, h)
        c_next = f * c + i * g  # c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t
        h_next = o * torch.tanh(c_next)  # h_t = o_t ⊙ tanh(c_t)
        if return_gates:
            return h_next, c_next, LSTMGates(i, f, g, o)
        return h_next, c_next


class GRUCell(_Cell):
    r"""Gated recurrent unit (Cho et al., 2014), equal to ``nn.GRUCell``.

    .. math::
        r_t &= \sigma(W_{ir} x_t + b_{ir} + W_{hr} h_{t-1} + b_{hr}) \\
        z_t &= \sigma(W_{iz} x_t + b_{iz} + W_{hz} h_{t-1} + b_{hz}) \\
        n_t &= \tanh(W_{in} x_t + b_{in} + r_t \odot (W_{hn} h_{t-1} + b_{hn})) \\
        h_t &= (1 - z_t) \odot n_t + z_t \odot h_{t-1}

    The last line is the interpolation the source article attaches to an LSTM.

    Shape:
        x (B, I), h (B, H) → h' (B, H). ``h=None`` starts from zeros.

    Raises:
        ValueError: x or h of the wrong shape.
    """

    num_gates = 3

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        self._check(x)
        h = x.new_zeros(x.shape[0], self.hidden_size) if h is None else h
        self._check_state(h, x)
        xi, hh = self._affine(x, h)
        x_r, x_z, x_n = xi.chunk(3, dim=1)  # PyTorch's stacking order: r, z, n
        h_r, h_z, h_n = hh.chunk(3, dim=1)
        r = torch.sigmoid(x_r + h_r)  # reset gate
        z = torch.sigmoid(x_z + h_z)  # update gate
        n = torch.tanh(x_n + r * h_n)  # candidate: the reset gate scales W_hn h + b_hn
        return (1 - z) * n + z * h  # h_t = (1 - z_t) ⊙ n_t + z_t ⊙ h_{t-1}


class Recurrent(nn.Module):
    """A stack of recurrent cells run over a sequence; the base of :class:`RNN`, :class:`LSTM`, :class:`GRU`.

    Args:
        input_size: features per time step, I.
        hidden_size: hidden units per layer, H.
        num_layers: stacked layers, L; layer l > 0 reads layer l − 1's outputs.
        bias: use the two bias vectors of each cell.
        batch_first: input and output are (B, T, ·) instead of (T, B, ·).

    Shape:
        - Input: (T, B, I), or (B, T, I) with ``batch_first``, or (T, I) unbatched (either way).
        - Initial state (optional): h0 (L, B, H), (L, H) unbatched; for the LSTM a pair (h0, c0).
        - Output: ``(output, h_n)``, or ``(output, (h_n, c_n))`` for the LSTM, as PyTorch: output
          (T, B, H) or (B, T, H) holds the last layer's h_t at every step; h_n, c_n are (L, B, H).
          Unbatched: (T, H) and (L, H).

    Raises:
        ValueError: input not 2-D or 3-D or with the wrong feature size, or an initial state of the
            wrong shape.
    """

    cell_class: type[_Cell] = RNNCell

    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True, batch_first: bool = False
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.batch_first = batch_first
        sizes = [input_size] + [hidden_size] * (num_layers - 1)
        self.cells = nn.ModuleList(self.cell_class(size, hidden_size, bias) for size in sizes)

    @property
    def is_lstm(self) -> bool:
        return self.cell_class is LSTMCell

    @classmethod
    def from_torch(cls, module: nn.RNNBase) -> Recurrent:
        """A copy of PyTorch's ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` (unidirectional, no projections).

        Raises:
            ValueError: the module is bidirectional, has projections, dropout, a ReLU nonlinearity,
                or does not match this class.
        """
        expected = {RNN: "RNN_TANH", LSTM: "LSTM", GRU: "GRU"}[cls]
        if module.mode != expected or module.bidirectional or getattr(module, "proj_size", 0) or module.dropout:
            raise ValueError(
                f"{cls.__name__}.from_torch expects a unidirectional {expected} without projections or dropout, "
                f"got mode={module.mode}, bidirectional={module.bidirectional}, dropout={module.dropout}"
            )
        ours = cls(module.input_size, module.hidden_size, module.num_layers, module.bias, module.batch_first)
        ours = ours.to(device=module.weight_ih_l0.device, dtype=module.weight_ih_l0.dtype)
        with torch.no_grad():
            for layer, cell in enumerate(ours.cells):
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    if getattr(cell, name) is not None:
                        getattr(cell, name).copy_(getattr(module, f"{name}_l{layer}"))
        return ours

    def _initial_state(self, x: torch.Tensor, hx: State | None) -> list:
        B = x.shape[1]
        expected = (self.num_layers, B, self.hidden_size)
        if hx is None:
            zeros = x.new_zeros(B, self.hidden_size)
            return [(zeros, zeros) if self.is_lstm else zeros for _ in self.cells]
        parts = hx if self.is_lstm else (hx,)
        if self.is_lstm and (not isinstance(hx, tuple) or len(hx) != 2):
            raise ValueError("LSTM expects the initial state as a pair (h0, c0)")
        for name, part in zip(("h0", "c0"), parts):
            if tuple(part.shape) != expected:
                raise ValueError(f"expected {name} of shape {expected} (L, B, H), got {tuple(part.shape)}")
        if self.is_lstm:
            return [(hx[0][layer], hx[1][layer]) for layer in range(self.num_layers)]
        return [hx[layer] for layer in range(self.num_layers)]

    def _unbatched_state(self, hx: State | None) -> State | None:
        """An unbatched initial state, (L, H) or a pair of them, given a batch of one: (L, 1, H)."""
        if hx is None:
            return None
        parts = hx if self.is_lstm and isinstance(hx, tuple) else (hx,)
        for part in parts:
            if not isinstance(part, torch.Tensor) or part.ndim != 2:
                shape = tuple(part.shape) if isinstance(part, torch.Tensor) else type(part).__name__
                raise ValueError(f"an unbatched input takes an initial state of shape (L, H), got {shape}")
        return tuple(part.unsqueeze(1) for part in parts) if self.is_lstm else hx.unsqueeze(1)

    def forward(self, x: torch.Tensor, hx: State | None = None):
        if x.ndim not in (2, 3) or x.shape[-1] != self.input_size:
            layout = "(B, T, I)" if self.batch_first else "(T, B, I)"
            raise ValueError(f"{type(self).__name__} expects input {layout}, or (T, I) unbatched, with "
                             f"I={self.input_size}, got {tuple(x.shape)}")  # fmt: skip
        unbatched = x.ndim == 2  # (T, I), as PyTorch accepts it: a batch of one, removed again at the end
        if unbatched:
            x, hx = x.unsqueeze(1), self._unbatched_state(hx)  # (T, 1, I)
        elif self.batch_first:
            x = x.transpose(0, 1)  # (B, T, I) -> (T, B, I)
        states = self._initial_state(x, hx)
        layer_input = x
        for layer, cell in enumerate(self.cells):
            outputs = []
            for x_t in layer_input:  # x_t: (B, I) for layer 0, (B, H) above
                states[layer] = cell(x_t, states[layer])
                outputs.append(states[layer][0] if self.is_lstm else states[layer])
            layer_input = torch.stack(outputs)  # (T, B, H)
        output = layer_input.transpose(0, 1) if self.batch_first and not unbatched else layer_input
        if self.is_lstm:
            h_n = torch.stack([h for h, _ in states])  # (L, B, H)
            c_n = torch.stack([c for _, c in states])
            if unbatched:
                return output[:, 0], (h_n[:, 0], c_n[:, 0])  # (T, H), ((L, H), (L, H))
            return output, (h_n, c_n)
        h_n = torch.stack(states)  # (L, B, H)
        return (output[:, 0], h_n[:, 0]) if unbatched else (output, h_n)


class RNN(Recurrent):
    """Multi-layer Elman RNN with tanh, equal to ``nn.RNN`` (see :class:`Recurrent` for arguments and shapes)."""

    cell_class = RNNCell


class LSTM(Recurrent):
    """Multi-layer LSTM, equal to ``nn.LSTM`` (see :class:`Recurrent` for arguments and shapes)."""

    cell_class = LSTMCell


class GRU(Recurrent):
    """Multi-layer GRU, equal to ``nn.GRU`` (see :class:`Recurrent` for arguments and shapes)."""

    cell_class = GRUCell


class RowClassifier(nn.Module):
    """Classify an image by reading it as a sequence of rows: row t is the input x_t (chapter "Recurrent networks").

    A recurrent network reads the H rows of W pixels top to bottom; a linear layer maps the
    last layer's final hidden state to class logits.

    Args:
        rnn: a recurrent module with ``batch_first=True`` and ``input_size`` = image width;
            the package's :class:`RNN` / :class:`LSTM` / :class:`GRU` or PyTorch's.
        num_classes: number of logits.

    Shape:
        - Input: (B, 1, H, W) with W = ``rnn.input_size``.
        - Output: (B, num_classes) logits.

    Raises:
        ValueError: ``rnn`` is not batch-first, or the input is not (B, 1, H, W) with that width.
    """

    def __init__(self, rnn: nn.Module, num_classes: int = 10) -> None:
        super().__init__()
        if not rnn.batch_first:
            raise ValueError("RowClassifier needs a recurrent module built with batch_first=True")
        self.rnn = rnn
        self.head = nn.Linear(rnn.hidden_size, num_classes)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """The last layer's final hidden state after reading every row: (B, 1, H, W) → (B, hidden_size)."""
        if images.ndim != 4 or images.shape[1] != 1 or images.shape[-1] != self.rnn.input_size:
            raise ValueError(
                f"RowClassifier expects images (B, 1, H, {self.rnn.input_size}), got {tuple(images.shape)}"
            )
        rows = images[:, 0]  # (B, 1, H, W) -> (B, T=H, I=W)
        _, state = self.rnn(rows)
        h_n = state[0] if isinstance(state, tuple) else state  # (L, B, H_hidden)
        return h_n[-1]  # (B, hidden_size)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """The linear classifier: (B, hidden_size) → (B, num_classes) logits."""
        return self.head(features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))
