"""The figures: right panels, right content, clear errors."""

from __future__ import annotations

import math

import pytest
import torch
from matplotlib.figure import Figure

from companion.plots import plot_confusion_matrix, plot_history, show_images
from companion.history import History


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
