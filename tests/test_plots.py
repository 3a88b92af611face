"""The figures: right panels, right content, clear errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Circle, Rectangle
from torch import nn

from companion.diagrams import (
    attention_diagram,
    conv_channels_diagram,
    ddp_diagram,
    lstm_cell_diagram,
    receptive_field_diagram,
    receptive_field_sizes,
    rnn_unrolled_diagram,
    transformer_block_diagram,
)
from companion.history import History
from companion.plots import plot_confusion_matrix, plot_history, show_images
from companion.summary import receptive_fields


def make_history(n: int) -> History:
    h = History()
    for e in range(1, n + 1):
        for field, value in [("epoch", e), ("train_loss", 1 / e), ("train_accuracy", 0.9), ("val_loss", 0.5 / e),
                             ("val_accuracy", 0.95), ("seconds", 1.0), ("lr", 0.1)]:
            getattr(h, field).append(value)
    return h


def test_plot_history_one_panel_per_metric_one_line_per_run():
    fig = plot_history({"a": make_history(3), "b": make_history(5)}, metrics=("train_loss", "val_loss", "val_accuracy"))
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    lines = fig.axes[0].get_lines()
    assert [len(line.get_xdata()) for line in lines] == [3, 5]
    assert list(lines[1].get_ydata()) == pytest.approx([1, 1 / 2, 1 / 3, 1 / 4, 1 / 5])
    assert fig.axes[2].get_ylabel() == "test accuracy"


def test_plot_history_accepts_a_single_history_and_nan():
    h = make_history(2)
    h.val_accuracy[0] = math.nan
    fig = plot_history(h, metrics=("val_accuracy",))
    assert len(fig.axes) == 1 and len(fig.axes[0].get_lines()) == 1


@pytest.mark.parametrize(("histories", "metrics", "match"), [({}, ("train_loss",), "at least one"),
                                                             (make_history(1), ("accuracy",), "unknown metrics")])
def test_plot_history_errors(histories, metrics, match):
    with pytest.raises(ValueError, match=match):
        plot_history(histories, metrics=metrics)


def test_show_images_grid_titles_and_colours():
    images = torch.arange(5 * 4 * 4, dtype=torch.uint8).reshape(5, 1, 4, 4)
    fig = show_images(images, [f"t{i}" for i in range(5)], ncols=3, title_colors=["red"] * 5)
    assert len(fig.axes) == 6  # 2 rows x 3 columns, the last one empty
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 5 and shown[4].get_title() == "t4"
    assert (shown[2].images[0].get_array() == images[2, 0].numpy()).all()
    assert shown[0].title.get_color() == "red"


@pytest.mark.parametrize(("images", "titles", "match"), [
    (torch.zeros(2, 3, 4, 4), None, "expected images"),
    (torch.zeros(0, 4, 4), None, "expected images"),
    (torch.zeros(2, 4, 4), ["only one"], "titles has 1 entries for 2 images"),
])
def test_show_images_errors(images, titles, match):
    with pytest.raises(ValueError, match=match):
        show_images(images, titles)


def test_plot_confusion_matrix_writes_every_nonzero_count():
    matrix = torch.tensor([[5, 1, 0], [0, 7, 2], [0, 0, 9]])
    fig = plot_confusion_matrix(matrix, ["a", "b", "c"])
    texts = sorted(t.get_text() for t in fig.axes[0].texts)
    assert texts == sorted(["5", "1", "7", "2", "9"])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["a", "b", "c"]


def test_plot_confusion_matrix_rejects_a_wrong_shape():
    with pytest.raises(ValueError, match=r"expected a \(3, 3\) matrix for 3 classes, got \(2, 2\)"):
        plot_confusion_matrix(torch.zeros(2, 2), ["a", "b", "c"])


def test_show_images_accepts_images_of_different_sizes():
    fig = show_images([torch.zeros(1, 28, 28), torch.ones(24, 24)], ["digit", "map"])
    shown = [ax for ax in fig.axes if ax.images]
    assert [ax.images[0].get_array().shape for ax in shown] == [(28, 28), (24, 24)]
    with pytest.raises(ValueError, match=r"expected images"):
        show_images([torch.zeros(2, 4, 4)])



# --- Schematic diagrams --------------------------------------------------------------------------


def labels(fig: Figure) -> list[str]:
    """Every non-empty text of a figure, its axes' texts included."""
    texts = [*fig.texts, *(t for ax in fig.axes for t in ax.texts)]
    return [t.get_text() for t in texts if t.get_text()]


def unreadable(fig: Figure) -> list[tuple[str, ...]]:
    """Texts that overlap one another or stick out of the figure, once drawn."""
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for t in [*fig.texts, *(t for ax in fig.axes for t in ax.texts)] if t.get_text()]
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    width, height = fig.bbox.width, fig.bbox.height
    bad = [("outside", s) for s, b in boxes if b.x0 < 0 or b.y0 < 0 or b.x1 > width or b.y1 > height]
    bad += [("overlap", s1, s2) for (s1, b1), (s2, b2) in itertools.combinations(boxes, 2) if b1.overlaps(b2)]
    return bad


DIAGRAMS = [
    (conv_channels_diagram, {}),
    (conv_channels_diagram, dict(in_channels=6, out_channels=3, kernel_size=7)),
    (conv_channels_diagram, dict(in_channels=1, out_channels=1, kernel_size=1)),
    (receptive_field_diagram, {}),
    (receptive_field_diagram, dict(kernel_size=3, stride=2)),
    (receptive_field_diagram, dict(kernel_size=2, stride=1, num_layers=6)),
    (rnn_unrolled_diagram, {}),
    (rnn_unrolled_diagram, dict(steps=1)),
    (rnn_unrolled_diagram, dict(steps=4)),
    (lstm_cell_diagram, {}),
    (attention_diagram, {}),
    (attention_diagram, dict(mask=False)),
    (transformer_block_diagram, {}),
    (transformer_block_diagram, dict(embed_dim=64, num_heads=4, mlp_ratio=2.0)),
    (ddp_diagram, {}),
    (ddp_diagram, dict(world_size=4)),
]


@pytest.mark.parametrize(("draw", "kwargs"), DIAGRAMS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_diagram_texts_neither_overlap_nor_leave_the_figure(draw, kwargs):
    fig = draw(**kwargs)
    assert isinstance(fig, Figure)
    assert 7.9 <= fig.get_figwidth() <= 8.1 and 2.9 <= fig.get_figheight() <= 6
    assert unreadable(fig) == []


def test_the_readability_check_catches_an_overlap_and_an_escape():
    fig = lstm_cell_diagram()
    fig.axes[0].text(0.15, 1.8, "$h_{t-1}$ again", fontsize=11)  # on top of the h_{t-1} label
    fig.axes[0].text(15.9, 4, "off the edge", fontsize=11)
    problems = unreadable(fig)
    assert any(p[0] == "overlap" and "$h_{t-1}$ again" in p for p in problems)
    assert ("outside", "off the edge") in problems


def test_conv_channels_diagram_draws_every_map_and_kernel_slice():
    fig = conv_channels_diagram(in_channels=3, out_channels=2, kernel_size=3)
    text = labels(fig)
    assert "input\n(in_channels=3, H, W)" in text
    assert "output\n(out_channels=2,\nH_out, W_out)" in text
    assert "weight: (out_channels=2, in_channels=3, kernel_size=3, 3);  bias: (2,)" in text
    assert [t for t in text if t.startswith("$W_")] == ["$W_{1}$: 3 × 3 × 3", "$W_{2}$: 3 × 3 × 3"]
    assert [t for t in text if t.startswith("$Y_") and t.endswith("$")] == ["$Y_{1}$", "$Y_{2}$"]
    # 3 input maps + 2 kernels x 3 slices + 2 output maps
    assert sum(isinstance(p, Rectangle) for p in fig.axes[0].patches) == 3 + 2 * 3 + 2
    fig = conv_channels_diagram(in_channels=1, out_channels=3, kernel_size=5)
    assert "$W_{3}$: 1 × 5 × 5" in labels(fig)
    assert sum(isinstance(p, Rectangle) for p in fig.axes[0].patches) == 1 + 3 * 1 + 3


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(in_channels=0), r"in_channels must be an integer from 1 to 6 \(the figure draws every map\), got 0"),
    (dict(out_channels=4), r"out_channels must be an integer from 1 to 3"),
])
def test_conv_channels_diagram_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        conv_channels_diagram(**kwargs)


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(kernel_size=2.0), r"kernel_size must be an integer from 1 to 7, got float 2.0"),
    (dict(in_channels=True), r"in_channels must be an integer from 1 to 6 .*, got bool True"),
])
def test_conv_channels_diagram_refuses_non_integers_with_a_type_error(kwargs, match):
    with pytest.raises(TypeError, match=match):
        conv_channels_diagram(**kwargs)


@pytest.mark.parametrize(("kernel_size", "stride", "num_layers", "expected"), [
    (3, 1, 3, [3, 5, 7]),  # 1 + 2, + 2, + 2
    (3, 2, 3, [3, 7, 15]),  # jumps 1, 2, 4: 1 + 2, + 2 * 2, + 2 * 4
    (5, 1, 2, [5, 9]),
    ((5, 2, 3), (1, 2, 1), 3, [5, 6, 10]),  # 1 + 4; + 1 * 1; jump 2: + 2 * 2
    (1, 3, 2, [1, 1]),
])
def test_receptive_field_sizes_by_hand(kernel_size, stride, num_layers, expected):
    assert receptive_field_sizes(kernel_size, stride, num_layers) == expected


def test_receptive_field_sizes_agree_with_the_summary_module():
    for ks, ss in itertools.product([(3, 3, 3), (5, 2, 3), (2, 4, 1)], [(1, 1, 1), (2, 1, 2), (3, 2, 1)]):
        layers = [nn.Conv2d(1, 1, k, stride=s) for k, s in zip(ks, ss)]
        assert receptive_field_sizes(ks, ss, 3) == [f.size for f in receptive_fields(layers)]


def test_receptive_field_diagram_labels_the_computed_sizes():
    text = labels(receptive_field_diagram(kernel_size=3, stride=1, num_layers=3))
    assert ["$r_{1}$ = 3", "$r_{2}$ = 5", "$r_{3}$ = 7"] == [t for t in text if t.startswith("$r_")]
    assert sorted(t for t in text if t.isdigit()) == ["3", "5", "7"]  # the bars under the input
    text = labels(receptive_field_diagram(kernel_size=3, stride=2, num_layers=3))
    assert ["$r_{1}$ = 3", "$r_{2}$ = 7", "$r_{3}$ = 15"] == [t for t in text if t.startswith("$r_")]
    assert "kernel_size=3, stride=2:" in text[-1]


def test_receptive_field_diagram_shades_what_the_top_unit_depends_on():
    fig = receptive_field_diagram(kernel_size=3, stride=1, num_layers=3)
    shaded = [p for p in fig.axes[0].patches if isinstance(p, Circle) and p.get_facecolor()[:3] != (1, 1, 1)]
    assert len(shaded) == 7 + 5 + 3 + 1  # input, layer 1, layer 2, the top unit
    circles = [p for p in fig.axes[0].patches if isinstance(p, Circle)]
    assert len(circles) == 9 + 7 + 5 + 3  # three top units over 9 inputs, valid convolutions


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(kernel_size=0), r"kernel_size must be an integer from 1 to 9, got 0"),
    (dict(stride=(1, 2)), r"stride has 2 entries for num_layers=3"),
    (dict(num_layers=7), r"num_layers must be an integer from 1 to 6, got 7"),
    (dict(kernel_size=9, stride=3), r"spans 105 input pixels; at most 48 can be drawn"),
])
def test_receptive_field_diagram_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        receptive_field_diagram(**kwargs)


def test_rnn_unrolled_diagram_repeats_the_shared_weights():
    text = labels(rnn_unrolled_diagram(steps=3))
    assert [t for t in text if t.startswith("$x_")] == ["$x_t$", "$x_{1}$", "$x_{2}$", "$x_{3}$"]
    assert text.count("$W_{hh}$") == 1 + 3 and text.count("$W_{ih}$") == 1 + 3  # folded + 3 steps
    assert "$h_0$" in text and "$h_{3}$" in text and "tanh" in text
    assert any("the same weights at every step" in t for t in text)


@pytest.mark.parametrize(("steps", "error"), [(0, ValueError), (5, ValueError), (2.5, TypeError), (True, TypeError)])
def test_rnn_unrolled_diagram_errors(steps, error):
    with pytest.raises(error, match=r"steps must be an integer from 1 to 4"):
        rnn_unrolled_diagram(steps)


def test_lstm_cell_diagram_has_every_gate_and_path():
    text = labels(lstm_cell_diagram())
    for name in ("forget", "input", "candidate", "output", "$c_{t-1}$", "$c_t$", "$h_{t-1}$", "$h_t$", "$x_t$"):
        assert name in text, name
    assert text.count("sigmoid") == 3 and text.count("tanh") == 2  # candidate and output
    assert text.count(r"$\odot$") == 3 and text.count("+") == 1  # forget, input, output; the sum
    assert r"$c_t = f_t \odot c_{t-1} + i_t \odot \tilde c_t$" in text


def test_attention_diagram_with_and_without_mask():
    text = labels(attention_diagram())
    for name in ("$Q$", "$K$", "$V$", r"$QK^\top$", r"$\div\sqrt{d_k}$", "softmax\nover keys", "output\n(M, $d_v$)"):
        assert name in text, name
    assert any("mask" in t for t in text)
    assert text.count("(M, N)") == 3
    text = labels(attention_diagram(mask=False))
    assert not any("mask" in t for t in text) and text.count("(M, N)") == 2
    with pytest.raises(TypeError, match=r"mask must be True or False, got 'causal'"):
        attention_diagram(mask="causal")


def test_transformer_block_diagram_pre_norm_order_and_sizes():
    fig = transformer_block_diagram()
    text = labels(fig)
    boxes = [t for t in fig.axes[0].texts if t.get_text() in ("Layer\nNorm", "multi-head\nattention", "MLP", "+")]
    order = [t.get_text() for t in sorted(boxes, key=lambda t: t.get_position()[0])]
    assert order == ["Layer\nNorm", "multi-head\nattention", "+", "Layer\nNorm", "MLP", "+"]
    assert "Linear D→4D, GELU,\nLinear 4D→D" in text and "$n_h$ heads of size D/$n_h$" in text
    text = labels(transformer_block_diagram(embed_dim=64, num_heads=4, mlp_ratio=2.0))
    assert "Linear 64→128, GELU,\nLinear 128→64" in text and "4 heads of size 16" in text


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(embed_dim=64, num_heads=5), r"num_heads=5 does not divide embed_dim=64"),
    (dict(mlp_ratio=0), r"mlp_ratio must be a number > 0, got 0"),
    (dict(embed_dim=0), r"embed_dim must be an integer"),
])
def test_transformer_block_diagram_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        transformer_block_diagram(**kwargs)


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(mlp_ratio="4"), r"mlp_ratio must be a number > 0, got str '4'"),
    (dict(mlp_ratio=True), r"mlp_ratio must be a number > 0, got bool True"),
    (dict(embed_dim=64.0), r"embed_dim must be an integer .*, got float 64.0"),
])
def test_transformer_block_diagram_refuses_wrong_types_with_a_type_error(kwargs, match):
    with pytest.raises(TypeError, match=match):
        transformer_block_diagram(**kwargs)


@pytest.mark.parametrize("world_size", [2, 3])
def test_ddp_diagram_one_row_per_process_and_one_all_reduce(world_size):
    text = labels(ddp_diagram(world_size))
    assert [t for t in text if t.startswith("shard")] == [f"shard {r}\nB/R samples" for r in range(world_size)]
    assert sum(t.startswith("optimizer step") for t in text) == world_size
    assert sum("all-reduce" in t for t in text) == 1 and any("(average)" in t for t in text)
    assert f"R = {world_size} processes, one global batch of B samples per step" in text


@pytest.mark.parametrize(("world_size", "error"), [(1, ValueError), (5, ValueError), ("2", TypeError)])
def test_ddp_diagram_errors(world_size, error):
    with pytest.raises(error, match=r"world_size must be an integer from 2 to 4"):
        ddp_diagram(world_size)
