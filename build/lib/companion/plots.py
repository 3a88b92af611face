"""Data figures the chapters draw: learning curves, image grids, confusion matrices, reliability diagrams.

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot, so
nothing is shown twice in a notebook and nothing is left open in a script. The schematic
diagrams (what an equation says, drawn) are in :mod:`companion.diagrams`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from matplotlib.figure import Figure

from .evaluation import Calibration
from .history import History

__all__ = [
    "plot_confusion_matrix",
    "plot_history",
    "plot_reliability",
    "show_images",
]

_FILL_ACCURACY = "#c6dbef"
_EDGE = "#444444"

_LABELS = {
    "train_loss": "training loss",
    "train_accuracy": "training accuracy",
    "val_loss": "test loss",
    "val_accuracy": "test accuracy",
}


def plot_history(
    histories: Mapping[str, History] | History, metrics: Sequence[str] = ("train_loss", "val_accuracy")
) -> Figure:
    """Learning curves: one panel per metric, one line per run, against the epoch.

    Args:
        histories: a :class:`~companion.history.History`, or ``{run name: History}``.
        metrics: :class:`~companion.history.History` fields to draw (``train_loss``, ``train_accuracy``,
            ``val_loss``, ``val_accuracy``).

    Raises:
        ValueError: an unknown metric name, or no histories.
    """
    if isinstance(histories, History):
        histories = {"run": histories}
    if not histories:
        raise ValueError("plot_history() needs at least one History")
    unknown = [m for m in metrics if m not in _LABELS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; expected some of {sorted(_LABELS)}")
    fig = Figure(figsize=(4.5 * len(metrics), 3.4), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics, strict=True):
        for name, history in histories.items():
            ax.plot(history.epoch, getattr(history, metric), marker="o", markersize=3, label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(_LABELS[metric])
        if metric.endswith("loss"):
            ax.set_yscale("log")  # losses fall by orders of magnitude
        ax.grid(alpha=0.3, which="both")
    axes[0].legend()
    return fig


def show_images(
    images: torch.Tensor | Sequence[torch.Tensor],
    titles: Sequence[str] | None = None,
    ncols: int = 8,
    title_colors: Sequence[str] | None = None,
) -> Figure:
    """A grid of grayscale images with optional titles.

    Args:
        images: a tensor (N, 1, H, W) or (N, H, W), or a sequence of N tensors (1, H, W) or (H, W)
            whose sizes may differ; any dtype; each image is scaled to its own range.
        titles: N strings, one per image.
        ncols: images per row.
        title_colors: N matplotlib colours for the titles (for example black/red for right/wrong).

    Raises:
        ValueError: no images, an image that is not (H, W) or (1, H, W), or ``titles``/``title_colors``
            of a different length than ``images``.
    """
    if isinstance(images, torch.Tensor) and images.ndim not in (3, 4):
        raise ValueError(f"expected images of shape (N, 1, H, W) or (N, H, W) with N >= 1, got {tuple(images.shape)}")
    planes = [image[0] if image.ndim == 3 and image.shape[0] == 1 else image for image in images]
    if not planes or any(plane.ndim != 2 for plane in planes):
        shapes = [tuple(image.shape) for image in images][:3]
        raise ValueError(f"expected images of shape (N, 1, H, W) or (N, H, W) with N >= 1, got {len(planes)} of shapes {shapes}")
    for name, seq in (("titles", titles), ("title_colors", title_colors)):
        if seq is not None and len(seq) != len(planes):
            raise ValueError(f"{name} has {len(seq)} entries for {len(planes)} images")
    n = len(planes)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig = Figure(figsize=(1.25 * ncols, 1.45 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for i, ax in enumerate(axes):
        ax.axis("off")
        if i < n:
            ax.imshow(planes[i].detach().float().cpu().numpy(), cmap="gray")
            if titles is not None:
                ax.set_title(titles[i], fontsize=9, color=title_colors[i] if title_colors else "black")
    return fig


def plot_confusion_matrix(matrix: torch.Tensor, classes: Sequence[str]) -> Figure:
    """Draw a (K, K) confusion matrix (rows: true class, columns: predicted), counts in the cells.

    The colour scale is logarithmic so the few mistakes stay visible next to the large diagonal.

    Raises:
        ValueError: ``matrix`` is not (K, K) with K = ``len(classes)``.
    """
    K = len(classes)
    if tuple(matrix.shape) != (K, K):
        raise ValueError(f"expected a ({K}, {K}) matrix for {K} classes, got {tuple(matrix.shape)}")
    from matplotlib.colors import LogNorm

    counts = matrix.detach().cpu().numpy()
    fig = Figure(figsize=(5.6, 4.8), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(counts + 1, cmap="Blues", norm=LogNorm())
    for i in range(K):
        for j in range(K):
            if counts[i, j]:
                color = "white" if i == j else "black"
                ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(range(K), classes, rotation=45 if max(map(len, classes)) > 2 else 0)
    ax.set_yticks(range(K), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    fig.colorbar(image, ax=ax, label="count + 1 (log scale)")
    return fig


def plot_reliability(calibrations: Mapping[str, Calibration]) -> Figure:
    """Reliability diagrams: accuracy against confidence per bin, one panel per model.

    Args:
        calibrations: label -> :class:`~companion.evaluation.Calibration` (from
            :func:`companion.evaluation.calibration`). Each panel draws the accuracy of every
            non-empty bin as a bar over the bin, the diagonal a calibrated model would follow,
            and the gap to each bin's mean confidence; the title gives the ECE in percent.
            Confidences equal to 1 (a bin of their own) are drawn as a bar at the right edge.

    Raises:
        ValueError: ``calibrations`` is empty.
    """
    if not calibrations:
        raise ValueError("plot_reliability needs at least one calibration")
    fig = Figure(figsize=(3.6 * len(calibrations), 3.6), layout="constrained")
    axes = fig.subplots(1, len(calibrations), squeeze=False)[0]
    for ax, (label, cal) in zip(axes, calibrations.items()):
        edges = cal.edges.double()
        lefts = torch.cat([edges[:-1], edges[-1:] - 0.01])  # the 1.0-bin: a thin bar at the edge
        widths = torch.cat([edges[1:] - edges[:-1], torch.tensor([0.01], dtype=edges.dtype)])
        used = cal.count > 0
        ax.bar(lefts[used], cal.accuracy[used].double(), width=widths[used], align="edge",
               color=_FILL_ACCURACY, edgecolor="#3182bd", label="accuracy")  # fmt: skip
        ax.bar(lefts[used], (cal.confidence - cal.accuracy)[used].double(), bottom=cal.accuracy[used].double(),
               width=widths[used], align="edge", color="none", edgecolor="#e6550d", hatch="//",
               label="gap to confidence")  # fmt: skip
        ax.plot([0, 1], [0, 1], color=_EDGE, linestyle="--", linewidth=1, label="calibrated")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top-1 probability)", ylabel="accuracy",
               title=f"{label}: ECE {100 * cal.ece:.2f} %")  # fmt: skip
        ax.legend(loc="upper left", fontsize=8)
    return fig
