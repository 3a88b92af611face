"""Schematic diagrams: what an equation of a chapter says, drawn in that chapter's notation.

A convolution's channels and its receptive field (chapter "Convolutional networks"), an unrolled
RNN and an LSTM cell ("Recurrent networks"), scaled dot-product attention and a transformer block
("Attention"), and a DistributedDataParallel step ("Trends"). Numbers in them are computed from
their arguments, never typed; receptive fields come from :func:`companion.summary.receptive_fields`.

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot. Data figures
(learning curves, image grids) are in :mod:`companion.plots`.
"""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyBboxPatch, Rectangle
from torch import nn

from .summary import receptive_fields

__all__ = [
    "attention_diagram",
    "conv_channels_diagram",
    "ddp_diagram",
    "lstm_cell_diagram",
    "receptive_field_diagram",
    "receptive_field_sizes",
    "rnn_unrolled_diagram",
    "transformer_block_diagram",
]

# Drawn on one axes in data units, 2 units per inch (a 16-unit-wide figure is 8 inches), with
# equal aspect so circles stay round. Every label is a separate ``ax.text``; arrows carry none.

_FILL = {
    "data": "#dbe9f6",  # inputs and activations
    "weight": "#fde2c4",  # learned parameters
    "op": "#eeeeee",  # operations without parameters
    "gate": "#f6d5e5",  # sigmoid gates
    "comm": "#d9f0d3",  # communication between processes
}
_CHANNEL_COLORS = ("#9ecae1", "#a1d99b", "#fdae6b", "#bcbddc", "#fc9272", "#d9d9d9")
_EDGE = "#444444"
_HIGHLIGHT = "#d95f02"


def _canvas(width: float, height: float) -> tuple[Figure, Axes]:
    """A figure of ``width`` x ``height`` inches with one axes spanning it, 2 data units per inch."""
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 2 * width)
    ax.set_ylim(0, 2 * height)
    ax.set_aspect("equal")
    ax.axis("off")
    return fig, ax


def _box(ax: Axes, x: float, y: float, w: float, h: float, text: str = "", fill: str = "op", fontsize: float = 9,
         dashed: bool = False) -> None:
    """A rounded box centred on (x, y), with ``text`` in its middle."""
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0,rounding_size=0.15",
                                facecolor=_FILL.get(fill, fill), edgecolor=_EDGE, linewidth=1.1,
                                linestyle="--" if dashed else "-"))
    if text:
        ax.text(x, y, text, ha="center", va="center", fontsize=fontsize)


def _node(ax: Axes, x: float, y: float, symbol: str, radius: float = 0.28) -> None:
    """A small circle with an operator (r"$\\odot$", "+", r"$\\Sigma$") at (x, y)."""
    ax.add_patch(Circle((x, y), radius, facecolor="white", edgecolor=_EDGE, linewidth=1.1, zorder=3))
    ax.text(x, y, symbol, ha="center", va="center", fontsize=11, zorder=4)


def _arrow(ax: Axes, start: tuple[float, float], end: tuple[float, float], color: str = _EDGE,
           linestyle: str = "-", connection: str | None = None, head: bool = True) -> None:
    """An arrow (or a plain line when ``head`` is False) from ``start`` to ``end``, no label."""
    props = dict(arrowstyle="-|>" if head else "-", color=color, linewidth=1.2, linestyle=linestyle,
                 shrinkA=0, shrinkB=0, mutation_scale=12)
    if connection:
        props["connectionstyle"] = connection
    ax.annotate("", xy=end, xytext=start, arrowprops=props)


def _check_int(name: str, value: object, low: int, high: int, why: str = "") -> int:
    reason = f" ({why})" if why else ""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer from {low} to {high}{reason}, got {type(value).__name__} {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be an integer from {low} to {high}{reason}, got {value!r}")
    return value


def conv_channels_diagram(in_channels: int = 3, out_channels: int = 2, kernel_size: int = 3) -> Figure:
    """A convolution layer's channels: every kernel spans all input channels, one kernel per output map.

    Draws the ``in_channels`` input maps :math:`X_c` as a stack (one colour per channel),
    ``out_channels`` kernels :math:`W_o`, each a stack of ``in_channels`` slices of
    ``kernel_size`` x ``kernel_size`` taps coloured like the input channel they multiply, and for each
    kernel the sum over input channels plus the bias :math:`\\beta_o` that gives output map
    :math:`Y_o`. Shapes are labelled with ``nn.Conv2d``'s argument names: the weight is
    (``out_channels``, ``in_channels``, ``kernel_size``, ``kernel_size``), the bias (``out_channels``,).

    Args:
        in_channels: input channels :math:`C_\\text{in}`, 1 to 6.
        out_channels: output channels (kernels) :math:`C_\\text{out}`, 1 to 3.
        kernel_size: taps per side of each kernel, 1 to 7.

    Returns:
        The :class:`~matplotlib.figure.Figure`, 8 x 4 inches.

    Raises:
        TypeError: an argument that is not an integer (a bool is not one).
        ValueError: an integer outside its range.
    """
    c_in = _check_int("in_channels", in_channels, 1, 6, "the figure draws every map")
    c_out = _check_int("out_channels", out_channels, 1, 3, "the figure draws every kernel")
    k = _check_int("kernel_size", kernel_size, 1, 7)
    fig, ax = _canvas(8, 4)
    # Input stack: channel 1 in front (lower left), the others behind it.
    size, step = 2.4, 0.32
    x0, y0 = 0.6, 2.9 - (c_in - 1) * step / 2
    for c in reversed(range(c_in)):
        ax.add_patch(Rectangle((x0 + c * step, y0 + c * step), size, size, facecolor=_CHANNEL_COLORS[c],
                               edgecolor=_EDGE, linewidth=1))
    ax.text(x0 + size / 2, y0 + size / 2, "$X$", ha="center", va="center", fontsize=12)
    input_right = x0 + size + (c_in - 1) * step
    input_mid = y0 + (size + (c_in - 1) * step) / 2
    ax.text((x0 + input_right) / 2, y0 - 0.35, f"input\n(in_channels={c_in}, H, W)", ha="center", va="top", fontsize=9)
    # Kernels, each a stack of c_in slices of k x k taps; one line per slice into the sum over channels.
    spacing = 3.5 / (c_out - 1) if c_out > 1 else 3.5
    rows = [6.0 - i * spacing for i in range(c_out)] if c_out > 1 else [4.2]
    kstep = 0.18 if c_out < 3 else 0.12
    tiny = min(1.1, spacing - 0.6 - (c_in - 1) * kstep)
    kx, sx, ox, osize = 6.3, 9.6, 11.2, min(1.3, spacing - 0.45)
    for o, ky in enumerate(rows):
        base_y = ky - (tiny + (c_in - 1) * kstep) / 2
        for c in reversed(range(c_in)):
            left, bottom = kx + c * kstep, base_y + c * kstep
            ax.add_patch(Rectangle((left, bottom), tiny, tiny, facecolor=_CHANNEL_COLORS[c], edgecolor=_EDGE,
                                   linewidth=0.9))
            if c == 0:  # the taps of the front slice
                for t in range(1, k):
                    ax.plot([left + t * tiny / k] * 2, [bottom, bottom + tiny], color=_EDGE, linewidth=0.5)
                    ax.plot([left, left + tiny], [bottom + t * tiny / k] * 2, color=_EDGE, linewidth=0.5)
        for c in range(c_in):  # slice c's contribution W_oc * X_c, into the sum
            start = (kx + c * kstep + tiny, base_y + c * kstep + tiny / 2)
            ax.plot([start[0], sx - 0.3], [start[1], ky], color=_CHANNEL_COLORS[c], linewidth=2, zorder=1)
        kernel_top = base_y + tiny + (c_in - 1) * kstep
        ax.text(kx + (tiny + (c_in - 1) * kstep) / 2, kernel_top + 0.12, f"$W_{{{o + 1}}}$: {c_in} × {k} × {k}",
                ha="center", va="bottom", fontsize=9)
        _arrow(ax, (input_right + 0.1, input_mid), (kx - 0.1, ky))
        _node(ax, sx, ky, r"$\Sigma$", radius=0.3)
        ax.text(sx, ky - 0.42, rf"$+\beta_{{{o + 1}}}$", ha="center", va="top", fontsize=9)
        _arrow(ax, (sx + 0.3, ky), (ox - 0.05, ky))
        ax.add_patch(Rectangle((ox, ky - osize / 2), osize, osize, facecolor=_FILL["data"], edgecolor=_EDGE,
                               linewidth=1))
        ax.text(ox + osize / 2, ky, f"$Y_{{{o + 1}}}$", ha="center", va="center", fontsize=11)
    ax.text(7.6, 7.8, f"weight: (out_channels={c_out}, in_channels={c_in}, kernel_size={k}, {k});"
            f"  bias: ({c_out},)", ha="center", va="top", fontsize=9)
    ax.text(ox + osize + 0.3, sum(rows) / len(rows), f"output\n(out_channels={c_out},\nH_out, W_out)", ha="left",
            va="center", fontsize=9)
    ax.text(8.0, 0.3, r"$Y_o = \beta_o + \sum_c\, W_{o,c} \star X_c$: slice $W_{o,c}$ slides over"
            " input channel $X_c$ (same colour), the results are summed", ha="center", va="bottom", fontsize=9)
    return fig


def _per_layer(name: str, value: int | Sequence[int], num_layers: int) -> list[int]:
    values = [value] * num_layers if isinstance(value, int) and not isinstance(value, bool) else list(value)
    if len(values) != num_layers:
        raise ValueError(f"{name} has {len(values)} entries for num_layers={num_layers}")
    for v in values:
        _check_int(name, v, 1, 9)
    return values


def receptive_field_sizes(kernel_size: int | Sequence[int] = 3, stride: int | Sequence[int] = 1,
                          num_layers: int = 3) -> list[int]:
    """Receptive field of one unit after each of ``num_layers`` stacked convolutions (no dilation).

    The recurrence of :func:`companion.summary.receptive_fields`, from :math:`r_0 = 1`, :math:`j_0 = 1`:
    :math:`r_l = r_{l-1} + (k_l - 1)\\, j_{l-1}` with jump :math:`j_{l-1} = s_1 \\cdots s_{l-1}`.

    Args:
        kernel_size: one kernel size for every layer, or one per layer (1 to 9).
        stride: one stride for every layer, or one per layer (1 to 9).
        num_layers: how many layers, 1 to 6.

    Returns:
        ``[r_1, ..., r_L]``, input pixels per side that one unit of each layer depends on.

    Raises:
        TypeError: an argument that is not an integer (a bool is not one).
        ValueError: a value outside its range, or a sequence whose length is not ``num_layers``.
    """
    layers = _check_int("num_layers", num_layers, 1, 6)
    chain = [nn.MaxPool2d(k, s) for k, s in zip(_per_layer("kernel_size", kernel_size, layers),
                                                 _per_layer("stride", stride, layers), strict=True)]  # fmt: skip
    return [field.size for field in receptive_fields(chain)]  # a pooling window counts as a kernel


def receptive_field_diagram(kernel_size: int | Sequence[int] = 3, stride: int | Sequence[int] = 1,
                            num_layers: int = 3) -> Figure:
    """How the receptive field grows through stacked convolutions, drawn along one axis.

    Draws a row of units per layer, the input at the bottom, each unit placed over the centre of
    the input pixels it depends on, and lines from one top-layer unit down to everything it
    depends on (its receptive field). A unit of each layer is outlined in that layer's colour,
    with a bar under the input marking the pixels it sees and, at the right, its size
    :math:`r_l` from :func:`receptive_field_sizes`, which computes the figure's numbers. Without
    padding; in 2-D the field is :math:`r_l \\times r_l`.

    Args:
        kernel_size: one kernel size for every layer, or one per layer (1 to 9).
        stride: one stride for every layer, or one per layer (1 to 9).
        num_layers: how many layers, 1 to 6.

    Returns:
        The :class:`~matplotlib.figure.Figure`, 8 inches wide.

    Raises:
        TypeError: an argument that is not an integer (a bool is not one).
        ValueError: a value outside its range, a sequence whose length is not ``num_layers``, or a
            receptive field too wide to draw (more than 48 input pixels).
    """
    sizes = receptive_field_sizes(kernel_size, stride, num_layers)
    kernels = _per_layer("kernel_size", kernel_size, num_layers)
    strides = _per_layer("stride", stride, num_layers)
    jumps = [1]
    for s in strides:
        jumps.append(jumps[-1] * s)
    top_units = 3 if sizes[-1] + 2 * jumps[-1] <= 48 else 1
    n_input = sizes[-1] + (top_units - 1) * jumps[-1]
    if n_input > 48:
        raise ValueError(f"the top unit's receptive field spans {sizes[-1]} input pixels; at most 48 can be drawn")
    counts = [n_input]
    for k, s in zip(kernels, strides, strict=True):
        counts.append((counts[-1] - k) // s + 1)
    all_sizes = [1, *sizes]
    row_gap, bar_gap = 1.1, 0.42
    height = (0.95 + row_gap * num_layers + bar_gap * num_layers + 0.9) / 2
    fig, ax = _canvas(8, height)
    left, right = 2.2, 12.2
    dx = (right - left) / max(n_input - 1, 1)
    radius = min(0.2, 0.38 * dx)
    y_input = 0.35 + bar_gap * num_layers + 0.3

    def x_of(layer: int, i: int) -> float:
        return left + dx * (i * jumps[layer] + (all_sizes[layer] - 1) / 2)

    def y_of(layer: int) -> float:
        return y_input + layer * row_gap

    # What the middle top unit depends on, layer by layer, going down.
    top = (counts[-1] - 1) // 2
    field = {num_layers: (top, top)}
    for layer in range(num_layers, 0, -1):
        a, b = field[layer]
        field[layer - 1] = (a * strides[layer - 1], b * strides[layer - 1] + kernels[layer - 1] - 1)
    colors = [_HIGHLIGHT, "#1b9e77", "#7570b3", "#e7298a", "#66a61e", "#e6ab02"]
    for layer in range(1, num_layers + 1):  # connections, under the units
        a, b = field[layer]
        for i in range(counts[layer]):
            for t in range(kernels[layer - 1]):
                below = i * strides[layer - 1] + t
                on = a <= i <= b
                ax.plot([x_of(layer, i), x_of(layer - 1, below)], [y_of(layer), y_of(layer - 1)],
                        color=_HIGHLIGHT if on else "#cccccc", linewidth=1.1 if on else 0.6, zorder=1)
    for layer in range(num_layers + 1):
        a, b = field[layer]
        middle = (a + b) // 2
        for i in range(counts[layer]):
            on = a <= i <= b
            marked = layer > 0 and i == middle
            ax.add_patch(Circle((x_of(layer, i), y_of(layer)), radius, zorder=2,
                                facecolor="#fbd3b3" if on else "white",
                                edgecolor=colors[(layer - 1) % len(colors)] if marked else _EDGE,
                                linewidth=2.2 if marked else 0.8))
        ax.text(left - 0.5, y_of(layer), "input" if layer == 0 else f"layer {layer}", ha="right", va="center",
                fontsize=9)
        if layer == 0:
            continue
        first = middle * jumps[layer]  # the input pixels of the marked unit
        last = first + all_sizes[layer] - 1
        y_bar = y_input - 0.3 - bar_gap * (num_layers - layer + 1)
        color = colors[(layer - 1) % len(colors)]
        ax.plot([x_of(0, first) - radius, x_of(0, last) + radius], [y_bar, y_bar], color=color, linewidth=3,
                solid_capstyle="butt")
        ax.text(x_of(0, last) + radius + 0.15, y_bar, str(all_sizes[layer]), ha="left", va="center", fontsize=8,
                color=color)
        ax.text(right + 0.6, y_of(layer), f"$r_{{{layer}}}$ = {all_sizes[layer]}", ha="left", va="center",
                fontsize=10, color=color)
    k_text = kernels[0] if len(set(kernels)) == 1 else tuple(kernels)
    s_text = strides[0] if len(set(strides)) == 1 else tuple(strides)
    ax.text(8.0, 2 * height - 0.25, f"kernel_size={k_text}, stride={s_text}:  "
            r"$r_l = r_{l-1} + (k_l - 1)\, j_{l-1}$,  $j_l = j_{l-1}\, s_l$,  $r_0 = j_0 = 1$",
            ha="center", va="top", fontsize=9)
    return fig


def rnn_unrolled_diagram(steps: int = 3) -> Figure:
    """An Elman RNN, folded (one cell with a loop) and unrolled over ``steps`` time steps.

    Draws, on the left, one cell with its recurrent loop; on the right, the same cell repeated at
    :math:`t = 1, \\dots, T`: :math:`x_t` enters from below through :math:`W_{ih}`, the previous state
    :math:`h_{t-1}` from the left through :math:`W_{hh}` (from :math:`h_0`), and :math:`h_t` leaves
    upwards and to the next step. The same weights are used at every step. Notation of chapter
    "Recurrent networks": :math:`h_t = \\tanh(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh})`.

    Args:
        steps: time steps to unroll, 1 to 4.

    Returns:
        The :class:`~matplotlib.figure.Figure`, 8 x 3.4 inches.

    Raises:
        TypeError: ``steps`` is not an integer.
        ValueError: ``steps`` is outside 1 to 4.
    """
    T = _check_int("steps", steps, 1, 4)
    fig, ax = _canvas(8, 3.4)
    w, h, y = 1.5, 1.1, 3.5
    # Folded: one cell and its loop.
    fx = 1.3
    _box(ax, fx, y, w, h, "tanh", fill="weight")
    _arrow(ax, (fx, 1.2), (fx, y - h / 2))
    ax.text(fx, 1.1, "$x_t$", ha="center", va="top", fontsize=11)
    _arrow(ax, (fx, y + h / 2), (fx, 5.8))
    ax.text(fx, 5.9, "$h_t$", ha="center", va="bottom", fontsize=11)
    _arrow(ax, (fx + w / 2, y + 0.3), (fx + w / 2, y - 0.3),
           connection="arc,angleA=0,angleB=0,armA=28,armB=28,rad=8")
    ax.text(fx + w / 2 + 0.25, y + 0.75, "$W_{hh}$", ha="left", va="center", fontsize=10)
    ax.text(fx + 0.1, 2.1, "$W_{ih}$", ha="left", va="center", fontsize=10)
    ax.text(3.35, y + 0.05, "unroll", ha="center", va="bottom", fontsize=9)
    _arrow(ax, (2.85, y - 0.1), (3.85, y - 0.1))
    # Unrolled.
    start, end = 6.3, 14.9
    spacing = (end - start) / max(T - 1, 1) if T > 1 else 0
    xs = [start + t * spacing for t in range(T)] if T > 1 else [(start + end) / 2 - 1]
    ax.text(4.3, y, "$h_0$", ha="center", va="center", fontsize=11)
    previous = 4.3 + 0.3
    for t, x in enumerate(xs, start=1):
        _box(ax, x, y, w, h, "tanh", fill="weight")
        _arrow(ax, (previous, y), (x - w / 2, y))
        label_x = (previous + x - w / 2) / 2
        ax.text(label_x, y + 0.12, "$W_{hh}$", ha="center", va="bottom", fontsize=9)
        if t > 1:
            ax.text(label_x, y - 0.12, f"$h_{{{t - 1}}}$", ha="center", va="top", fontsize=10)
        _arrow(ax, (x, 1.2), (x, y - h / 2))
        ax.text(x, 1.1, f"$x_{{{t}}}$", ha="center", va="top", fontsize=11)
        ax.text(x + 0.1, 2.1, "$W_{ih}$", ha="left", va="center", fontsize=9)
        _arrow(ax, (x, y + h / 2), (x, 5.8))
        ax.text(x, 5.9, f"$h_{{{t}}}$", ha="center", va="bottom", fontsize=11)
        previous = x + w / 2
    ax.text(8.0, 0.1, r"$h_t = \tanh(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh})$, "
            "the same weights at every step", ha="center", va="bottom", fontsize=9)
    return fig


def lstm_cell_diagram() -> Figure:
    """One LSTM step: the gates, the additive cell-state path and the output.

    Draws, in the notation of chapter "Recurrent networks", the cell state :math:`c_{t-1} \\to c_t` along
    the top, scaled by the forget gate :math:`f_t` (:math:`\\odot`) and added to (+) the input gate
    :math:`i_t` times the candidate :math:`\\tilde c_t`; the four gate boxes (sigmoid for the input,
    forget and output gates, tanh for the candidate) fed by :math:`x_t` and :math:`h_{t-1}`; and the
    output :math:`h_t = o_t \\odot \\tanh(c_t)`. The function has no arguments: the cell's equations
    fix its picture.

    Returns:
        The :class:`~matplotlib.figure.Figure`, 8 x 4.4 inches.
    """
    fig, ax = _canvas(8, 4.4)
    ax.add_patch(FancyBboxPatch((1.4, 0.9), 12.0, 6.8, boxstyle="round,pad=0,rounding_size=0.4",
                                facecolor="#f7f7f7", edgecolor="#999999", linewidth=1))
    y_c, y_gate, y_in, y_mix, y_h = 6.9, 3.3, 1.6, 5.0, 3.3
    x_f, x_i, x_g, x_o, x_h = 3.4, 5.3, 7.2, 9.1, 11.3
    gw, gh = 1.5, 1.1
    # Cell-state path along the top: forget, then add.
    ax.text(0.15, y_c + 0.2, "$c_{t-1}$", ha="left", va="bottom", fontsize=11)
    _arrow(ax, (0.15, y_c), (x_f - 0.28, y_c))
    _node(ax, x_f, y_c, r"$\odot$")
    _arrow(ax, (x_f + 0.28, y_c), (x_g - 0.28, y_c))
    _node(ax, x_g, y_c, "+")
    _arrow(ax, (x_g + 0.28, y_c), (15.8, y_c))
    ax.text(15.8, y_c + 0.2, "$c_t$", ha="right", va="bottom", fontsize=11)
    # Inputs along the bottom, into the four gates.
    ax.text(0.15, y_in + 0.2, "$h_{t-1}$", ha="left", va="bottom", fontsize=11)
    _arrow(ax, (0.15, y_in), (x_o, y_in), head=False)
    _arrow(ax, (2.3, 0.2), (2.3, y_in - 0.02))
    ax.text(2.45, 0.35, "$x_t$", ha="left", va="center", fontsize=11)
    gates = [(x_f, "sigmoid", "forget", "$f_t$", "gate"), (x_i, "sigmoid", "input", "$i_t$", "gate"),
             (x_g, "tanh", "candidate", r"$\tilde c_t$", "weight"), (x_o, "sigmoid", "output", "$o_t$", "gate")]
    for x, symbol, name, label, fill in gates:
        _arrow(ax, (x, y_in), (x, y_gate - gh / 2))
        _box(ax, x, y_gate, gw, gh, fill=fill)
        ax.text(x, y_gate + 0.17, symbol, ha="center", va="center", fontsize=10)
        ax.text(x, y_gate - 0.3, name, ha="center", va="center", fontsize=8)
    # Forget gate up to the cell path; input gate times candidate, up into the sum.
    _arrow(ax, (x_f, y_gate + gh / 2), (x_f, y_c - 0.28))
    ax.text(x_f + 0.12, 4.7, "$f_t$", ha="left", va="center", fontsize=10)
    _arrow(ax, (x_i, y_gate + gh / 2), (x_i, y_mix), head=False)
    _arrow(ax, (x_i, y_mix), (x_g - 0.28, y_mix))
    ax.text(x_i - 0.12, 4.4, "$i_t$", ha="right", va="center", fontsize=10)
    _arrow(ax, (x_g, y_gate + gh / 2), (x_g, y_mix - 0.28))
    ax.text(x_g + 0.12, 4.25, r"$\tilde c_t$", ha="left", va="center", fontsize=10)
    _node(ax, x_g, y_mix, r"$\odot$")
    _arrow(ax, (x_g, y_mix + 0.28), (x_g, y_c - 0.28))
    # Output: tanh of the new cell state, scaled by the output gate.
    _arrow(ax, (x_h, y_c), (x_h, 5.6 + 0.4))
    _box(ax, x_h, 5.6, 1.2, 0.8, "tanh", fill="op")
    _arrow(ax, (x_h, 5.6 - 0.4), (x_h, y_h + 0.28))
    _arrow(ax, (x_o + gw / 2, y_gate), (x_h - 0.28, y_h))
    ax.text((x_o + gw / 2 + x_h - 0.28) / 2, y_h + 0.12, "$o_t$", ha="center", va="bottom", fontsize=10)
    _node(ax, x_h, y_h, r"$\odot$")
    _arrow(ax, (x_h + 0.28, y_h), (15.8, y_h))
    ax.text(15.8, y_h + 0.2, "$h_t$", ha="right", va="bottom", fontsize=11)
    ax.text(13.5, 0.45, "sigmoid: values in (0, 1)    $\\odot$: element-wise product", ha="right",
            va="center", fontsize=8)
    ax.text(x_f + 0.3, y_c - 0.35, r"$f_t \odot c_{t-1}$", ha="left", va="top", fontsize=9)
    ax.text(x_g + 0.3, y_c - 0.35, r"$c_t = f_t \odot c_{t-1} + i_t \odot \tilde c_t$", ha="left", va="top", fontsize=9)
    ax.text(x_h + 0.3, y_h - 0.35, r"$h_t = o_t \odot \tanh(c_t)$", ha="left", va="top", fontsize=9)
    return fig


def attention_diagram(mask: bool = True) -> Figure:
    """Scaled dot-product attention as a data flow, with the shapes of every intermediate.

    Draws :math:`\\operatorname{softmax}(Q K^\\top / \\sqrt{d_k})\\, V` left to right in the notation of chapter
    "Attention": queries :math:`Q` (M, :math:`d_k`), keys :math:`K` (N, :math:`d_k`) and values :math:`V`
    (N, :math:`d_v`); the scores :math:`Q K^\\top` (M, N), scaled by :math:`1/\\sqrt{d_k}`; with ``mask``,
    the optional mask (a dashed box) that sets the scores of forbidden keys to :math:`-\\infty`; the
    softmax over the keys, whose rows sum to 1; and the product with :math:`V`, the output (M, :math:`d_v`).

    Args:
        mask: draw the optional mask step.

    Returns:
        The :class:`~matplotlib.figure.Figure`, 8 x 3 inches.

    Raises:
        TypeError: ``mask`` is not a bool.
    """
    if not isinstance(mask, bool):
        raise TypeError(f"mask must be True or False, got {mask!r}")
    fig, ax = _canvas(8, 3)
    y, w, h = 3.6, 2.0, 1.0
    inputs = [("$Q$", "(M, $d_k$)", 4.9), ("$K$", "(N, $d_k$)", 3.0), ("$V$", "(N, $d_v$)", 1.1)]
    for name, shape, yy in inputs:
        _box(ax, 0.8, yy, 0.9, 0.8, name, fill="data", fontsize=12)
        ax.text(0.8, yy - 0.5, shape, ha="center", va="top", fontsize=8)
    steps = [("$QK^\\top$", "op", False), ("$\\div\\sqrt{d_k}$", "op", False)]
    if mask:
        steps.append(("optional mask\nforbidden → $-\\infty$", "op", True))
    steps.append(("softmax\nover keys", "op", False))
    xs = [3.2 + i * (9.6 - 3.2) / (len(steps) - 1) for i in range(len(steps))]
    for (text, fill, dashed), x in zip(steps, xs, strict=True):
        _box(ax, x, y, w if dashed else 1.5, h, text, fill=fill, fontsize=8 if dashed else 9, dashed=dashed)
    _arrow(ax, (0.8 + 0.45, 4.9), (xs[0] - 0.75, y + 0.25))
    _arrow(ax, (0.8 + 0.45, 3.0), (xs[0] - 0.75, y - 0.25))
    for (a, (_, _, dashed_a)), (b, (_, _, dashed_b)) in zip(zip(xs, steps), zip(xs[1:], steps[1:])):
        start = a + (w if dashed_a else 1.5) / 2
        end = b - (w if dashed_b else 1.5) / 2
        _arrow(ax, (start, y), (end, y))
        ax.text((start + end) / 2, y + 0.62, "(M, N)", ha="center", va="bottom", fontsize=8)
    ax.text(xs[0], y - 0.62, "scores", ha="center", va="top", fontsize=8)
    ax.text(xs[-1], y - 0.62, "weights: rows sum to 1", ha="center", va="top", fontsize=8)
    mx, my = 12.6, 2.3
    _box(ax, mx, my, 1.5, h, "$\\cdot\\, V$", fill="op", fontsize=11)
    _arrow(ax, (xs[-1] + 0.75, y), (mx, my + h / 2), connection="angle,angleA=0,angleB=90,rad=0")
    _arrow(ax, (0.8 + 0.45, 1.1), (mx, my - h / 2), connection="angle,angleA=0,angleB=-90,rad=0")
    _arrow(ax, (mx + 0.75, my), (14.4, my))
    ax.text(15.2, my, "output\n(M, $d_v$)", ha="center", va="center", fontsize=9)
    ax.text(8.0, 5.9, r"$\operatorname{Attention}(Q, K, V) = \operatorname{softmax}(QK^\top / \sqrt{d_k})\, V$",
            ha="center", va="top", fontsize=10)
    return fig


def _width(value: float) -> str:
    return f"{value:g}"


def transformer_block_diagram(embed_dim: int | None = None, num_heads: int | None = None,
                              mlp_ratio: float = 4.0) -> Figure:
    """A pre-norm transformer encoder block, as in ViT and the package's ``TransformerBlock``.

    Draws the tokens :math:`x` (N, D) flowing left to right through LayerNorm, multi-head
    attention and a residual add, :math:`x \\leftarrow x + \\operatorname{MHA}(\\operatorname{LN}(x))`,
    then LayerNorm, the MLP (Linear D → ``mlp_ratio`` · D, GELU, Linear back to D) and a second
    residual add, :math:`x \\leftarrow x + \\operatorname{MLP}(\\operatorname{LN}(x))`; a ViT stacks
    ``depth`` such blocks. Sizes are written with the letters D and :math:`n_h` unless
    ``embed_dim`` and ``num_heads`` are given.

    Args:
        embed_dim: the token size D, or None to write "D".
        num_heads: the number of heads :math:`n_h`, or None to write ":math:`n_h`"; must divide ``embed_dim``.
        mlp_ratio: hidden width of the MLP over D, > 0.

    Returns:
        The :class:`~matplotlib.figure.Figure`, 8 x 3 inches.

    Raises:
        TypeError: a size that is not an integer, or a ratio that is not a number.
        ValueError: a non-positive size or ratio, or ``num_heads`` not dividing ``embed_dim``.
    """
    if embed_dim is not None:
        _check_int("embed_dim", embed_dim, 1, 1 << 20)
    if num_heads is not None:
        _check_int("num_heads", num_heads, 1, 1 << 10)
        if embed_dim is not None and embed_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} does not divide embed_dim={embed_dim}")
    if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, int | float):
        raise TypeError(f"mlp_ratio must be a number > 0, got {type(mlp_ratio).__name__} {mlp_ratio!r}")
    if not mlp_ratio > 0:
        raise ValueError(f"mlp_ratio must be a number > 0, got {mlp_ratio!r}")
    D = str(embed_dim) if embed_dim is not None else "D"
    hidden = _width(embed_dim * mlp_ratio) if embed_dim is not None else f"{_width(mlp_ratio)}D"
    heads = str(num_heads) if num_heads is not None else "$n_h$"
    if embed_dim is not None and num_heads is not None:
        head_size = str(embed_dim // num_heads)
    else:
        head_size = f"{D}/{heads}" if num_heads is None or embed_dim is None else ""
    fig, ax = _canvas(8, 3)
    y, h = 2.5, 1.1
    _arrow(ax, (0.1, y), (2.0, y))
    ax.text(0.15, y - 0.2, f"$x$\n(N, {D})", ha="left", va="top", fontsize=9)
    blocks = [(2.95, 1.3, "Layer\nNorm", "op"), (5.15, 2.1, "multi-head\nattention", "weight"),
              (9.05, 1.3, "Layer\nNorm", "op"), (11.3, 1.9, "MLP", "weight")]
    adds = [7.15, 13.25]
    for x, w, text, fill in blocks:
        _box(ax, x, y, w, h, text, fill=fill, fontsize=9)
    _arrow(ax, (2.95 + 0.65, y), (5.15 - 1.05, y))
    _arrow(ax, (5.15 + 1.05, y), (adds[0] - 0.28, y))
    _node(ax, adds[0], y, "+")
    _arrow(ax, (adds[0] + 0.28, y), (9.05 - 0.65, y))
    _arrow(ax, (9.05 + 0.65, y), (11.3 - 0.95, y))
    _arrow(ax, (11.3 + 0.95, y), (adds[1] - 0.28, y))
    _node(ax, adds[1], y, "+")
    _arrow(ax, (adds[1] + 0.28, y), (15.9, y))
    ax.text(15.85, y - 0.2, f"(N, {D})", ha="right", va="top", fontsize=9)
    for split, add in [(1.6, adds[0]), (adds[0] + 0.75, adds[1])]:  # the residual connections
        ax.plot([split, split, add], [y, 4.4, 4.4], color=_EDGE, linewidth=1.2)
        _arrow(ax, (add, 4.4), (add, y + 0.28))
    ax.text((1.6 + adds[0]) / 2, 4.55, r"$x \leftarrow x + \operatorname{MHA}(\operatorname{LN}(x))$", ha="center",
            va="bottom", fontsize=9)
    ax.text((adds[0] + 0.75 + adds[1]) / 2, 4.55, r"$x \leftarrow x + \operatorname{MLP}(\operatorname{LN}(x))$",
            ha="center", va="bottom", fontsize=9)
    ax.text(5.15, y - 0.75, f"{heads} heads" + (f" of size {head_size}" if head_size else ""), ha="center",
            va="top", fontsize=8)
    ax.text(11.3, y - 0.75, f"Linear {D}→{hidden}, GELU,\nLinear {hidden}→{D}", ha="center", va="top", fontsize=8)
    ax.add_patch(FancyBboxPatch((1.25, 0.35), 12.55, 5.0, boxstyle="round,pad=0,rounding_size=0.3", fill=False,
                                edgecolor="#999999", linestyle="--", linewidth=1))
    ax.text(13.7, 0.5, "× depth (pre-norm, as in ViT)", ha="right", va="bottom", fontsize=8, color="#555555")
    return fig


def ddp_diagram(world_size: int = 2) -> Figure:
    """One training step of DistributedDataParallel: shards, replicas, the gradient all-reduce.

    Draws, in the notation of chapter "Trends", a global batch of B samples split into
    ``world_size`` = R shards of B/R; one row per process (rank r, one GPU each) with its model replica
    :math:`\\theta`, forward pass and loss :math:`L_r`, backward pass and local gradient
    :math:`\\nabla_\\theta L_r`; one all-reduce across the rows that averages the gradients,
    :math:`g = \\frac{1}{R} \\sum_r \\nabla_\\theta L_r` (DDP runs it inside ``backward()``, bucket by
    bucket); and the identical optimizer step on every process, which keeps the replicas equal.

    Args:
        world_size: number of processes R, 2 to 4.

    Returns:
        The :class:`~matplotlib.figure.Figure`, 8 inches wide, 0.8 + 1.3 R inches high.

    Raises:
        TypeError: ``world_size`` is not an integer.
        ValueError: ``world_size`` is outside 2 to 4.
    """
    W = _check_int("world_size", world_size, 2, 4)
    height = 0.8 + 1.3 * W
    fig, ax = _canvas(8, height)
    row_gap = 2.6
    top = 2 * height - 1.9
    rows = [top - r * row_gap for r in range(W)]
    bw, bh = 1.75, 1.15
    columns = [3.1, 5.25, 7.4, 9.55, 11.85, 14.5]
    _box(ax, 0.85, sum(rows) / W, 1.3, rows[0] - rows[-1] + bh, "batch\nB\nsamples", fill="data", fontsize=9)
    for r, y in enumerate(rows):
        ax.text(columns[0] - bw / 2, y + bh / 2 + 0.12, f"process {r} (rank {r}, GPU {r})", ha="left", va="bottom",
                fontsize=8, color="#555555")
        _arrow(ax, (1.5, y), (columns[0] - bw / 2, y))
        _box(ax, columns[0], y, bw, bh, f"shard {r}\nB/R samples", fill="data", fontsize=8)
        _box(ax, columns[1], y, bw, bh, "replica\nweights $\\theta$", fill="weight", fontsize=8)
        _box(ax, columns[2], y, bw, bh, f"forward\nloss $L_{r}$", fill="op", fontsize=8)
        _box(ax, columns[3], y, bw, bh, f"backward\n$\\nabla_\\theta L_{r}$", fill="op", fontsize=8)
        _box(ax, columns[5], y, 1.95, bh, "optimizer step\n$\\theta \\leftarrow \\theta - \\eta\\, g$",
             fill="weight", fontsize=8)
        for a, b in zip(columns[:3], columns[1:4]):
            _arrow(ax, (a + bw / 2, y), (b - bw / 2, y))
        _arrow(ax, (columns[3] + bw / 2, y), (columns[4] - 0.9, y))
        _arrow(ax, (columns[4] + 0.9, y), (columns[5] - 0.975, y))
    span = rows[0] - rows[-1] + bh
    _box(ax, columns[4], sum(rows) / W, 1.8, span, "all-reduce\n(average)\n\n"
         r"$g = \frac{1}{R} \sum_r \nabla_\theta L_r$", fill="comm", fontsize=8)
    ax.text(columns[4], rows[-1] - bh / 2 - 0.15, "inside backward(),\nbucket by bucket", ha="center", va="top",
            fontsize=7, color="#555555")
    ax.text(8.0, 0.2, "same initial θ (broadcast from rank 0) + same g on every process = identical replicas "
            "after every step", ha="center", va="bottom", fontsize=8)
    ax.text(8.0, 2 * height - 0.2, f"R = {W} processes, one global batch of B samples per step", ha="center",
            va="top", fontsize=9)
    return fig
