"""Evaluation: metrics, predictions, confusion matrices and frozen features, in eval mode.

Every function here runs the model in ``eval()`` mode under :func:`torch.inference_mode`, through
:func:`companion.utils.eval_mode`, which puts the model's previous mode back afterwards — also when the model or
the loader raises. Tensors that leave this module are on the CPU. Explained in the chapter
"MNIST in practice" (:func:`calibration`, :func:`fit_temperature` and :func:`brier_score` in "Ablation and calibration"); :func:`extract_features` in "Pretraining and fine-tuning"; :func:`extract_layer_features` in "Pretrained models in practice".
The summaries of a result's uncertainty are here too: :func:`wilson_interval` for one accuracy
on a finite test set, :func:`mean_std` for a result repeated over seeds, and
:func:`paired_t_interval` for the difference of two methods run with the same seeds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import all_reduce_sum, collective_device, is_distributed
from .history import Metrics
from .utils import eval_mode

__all__ = [
    "Calibration",
    "brier_score",
    "calibration",
    "confusion_matrix",
    "evaluate",
    "expected_calibration_error",
    "extract_features",
    "extract_layer_features",
    "fit_temperature",
    "mean_std",
    "paired_t_interval",
    "predict",
    "t_quantile",
    "wilson_interval",
]

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def evaluate(model: nn.Module, loader: Batches, device: torch.device | str) -> Metrics:
    """Cross-entropy and accuracy of ``model`` over every sample of ``loader``.

    Sums per-sample losses, so a short last batch weighs by its size.

    Args:
        model: returns logits (B, K) for inputs (B, ...).
        loader: iterable of ``(x, y)`` batches, ``y`` int64 (B,) class indices.
        device: where the model is; batches are moved there.

    Returns:
        :class:`~companion.history.Metrics` averaged over samples. Under distributed training,
        when ``loader`` is sharded (``loader.world_size > 1``), over the samples of all processes.

    Raises:
        ValueError: the loader yields no samples.
    """
    loss_sum = correct = None
    count = 0
    with eval_mode(model), torch.inference_mode():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            logits = model(x).float()  # (B, K)
            batch_loss = F.cross_entropy(logits, y, reduction="sum")
            batch_correct = (logits.argmax(1) == y).sum()
            loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
            correct = batch_correct if correct is None else correct + batch_correct
            count += len(y)
    totals = [0.0 if loss_sum is None else loss_sum.item(), 0.0 if correct is None else correct.item(), float(count)]
    if is_distributed() and getattr(loader, "world_size", 1) > 1:  # each process saw its shard: sum them
        totals = all_reduce_sum(torch.tensor(totals, dtype=torch.float64, device=collective_device(device))).tolist()
    loss_total, correct_total, count = totals[0], totals[1], int(totals[2])
    if count == 0:
        raise ValueError("evaluate() got a loader with no samples")
    return Metrics(loss=loss_total / count, accuracy=correct_total / count, num_samples=count)


def predict(model: nn.Module, loader: Batches, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels for every sample of ``loader``, on the CPU.

    Returns:
        ``(logits, labels)``: float32 (N, K) and int64 (N,), in the loader's order.

    Raises:
        ValueError: the loader yields no batches.
    """
    logits, labels = [], []
    with eval_mode(model), torch.inference_mode():
        for x, y in loader:
            logits.append(model(x.to(device)).float().cpu())
            labels.append(y.cpu())
    if not labels:
        raise ValueError("predict() got a loader with no samples")
    return torch.cat(logits), torch.cat(labels)


def extract_features(model: nn.Module, loader: Batches, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """``model.forward_features`` of every sample of ``loader``, flattened, on the CPU.

    Args:
        model: a network with ``forward_features`` (:class:`~companion.cnn.BatchNormCNN`,
            :class:`~companion.attention.VisionTransformer`), on ``device``.
        loader: ``(x, y)`` batches.
        device: where batches are moved.

    Returns:
        ``(features, labels)``: float32 (N, D) and int64 (N,), on the CPU, in the loader's order
        (as :func:`predict`).

    Raises:
        TypeError: ``model`` has no ``forward_features`` method.
        ValueError: ``loader`` yields no batches.
    """
    if not callable(getattr(model, "forward_features", None)):
        raise TypeError(f"{type(model).__name__} has no forward_features method")
    features, labels = [], []
    with eval_mode(model), torch.inference_mode():
        for x, y in loader:
            features.append(model.forward_features(x.to(device)).flatten(1).float().cpu())
            labels.append(y.cpu())
    if not features:
        raise ValueError("extract_features() got a loader that yielded no batches")
    return torch.cat(features), torch.cat(labels)


def extract_layer_features(model: nn.Module, loader: Batches, layers: Iterable[str],
                           device: torch.device | str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The outputs of several named submodules, globally average-pooled, for every sample of ``loader``.

    One forward pass per batch, with a forward hook on each layer: the features of early and late
    layers for the question "which layer transfers best?" (Yosinski et al., 2014). A 4-D output
    (B, C, H, W) is averaged over H and W, as the network's own global pooling does; a 2-D output
    (B, D) is kept as it is. Each layer must run exactly once per forward pass: a module that is
    reused (one ``nn.ReLU`` called twice in a block) or skipped would misalign features and
    labels, so it is refused. The hooks are removed afterwards, also when the model raises.

    Args:
        model: any ``nn.Module`` on ``device``; its ``forward`` is run in ``eval()`` mode.
        loader: ``(x, y)`` batches.
        layers: names from ``model.named_modules()`` (``"blocks.4"``), at least one, no repeats.
        device: where batches are moved.

    Returns:
        ``(features, labels)``: a dict from each name, in the given order, to float32 (N, C) on
        the CPU, and the labels (N,) as the loader yields them (int64 for the book's loaders), in
        the loader's order.

    Raises:
        ValueError: no layers, a repeated name, a name that is not a submodule of ``model``, a
            layer whose output is not a 2-D or 4-D tensor, a layer that does not run exactly once
            per forward pass, or a loader that yields no batches.
    """
    layers = list(layers)
    modules = dict(model.named_modules())
    unknown = [name for name in layers if name not in modules]
    if not layers or len(set(layers)) != len(layers) or unknown:
        raise ValueError(f"layers must be distinct names of submodules of {type(model).__name__}, at least one; "
                         f"got {layers} (unknown: {unknown})")  # fmt: skip
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in layers}

    def record(name: str):
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            if not isinstance(output, torch.Tensor) or output.ndim not in (2, 4):
                shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
                raise ValueError(f"layer {name!r} must output a (B, D) or (B, C, H, W) tensor, got {shape}")
            pooled = output.mean((2, 3)) if output.ndim == 4 else output  # (B, C)
            outputs[name].append(pooled.float().cpu())

        return hook

    handles = [modules[name].register_forward_hook(record(name)) for name in layers]
    labels = []
    try:
        with eval_mode(model), torch.inference_mode():
            for batch, (x, y) in enumerate(loader):
                model(x.to(device))
                labels.append(y.cpu())
                calls = {name: len(outputs[name]) - batch for name in layers}
                if any(count != 1 for count in calls.values()):
                    wrong = {name: count for name, count in calls.items() if count != 1}
                    raise ValueError(f"each layer must run exactly once per forward pass; calls in one pass: {wrong}")
    finally:
        for handle in handles:
            handle.remove()
    if not labels:
        raise ValueError("extract_layer_features() got a loader that yielded no batches")
    return {name: torch.cat(outputs[name]) for name in layers}, torch.cat(labels)


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Count matrix ``C[i, j]`` = number of samples of true class ``i`` predicted as ``j``.

    Args:
        predictions: int64 (N,) predicted classes in [0, num_classes).
        labels: int64 (N,) true classes in [0, num_classes).
        num_classes: K.

    Returns:
        int64 (K, K) on the inputs' device; rows sum to the class counts.

    Raises:
        ValueError: shapes differ or a value lies outside [0, num_classes).
    """
    if predictions.shape != labels.shape or predictions.ndim != 1:
        raise ValueError(
            f"expected predictions and labels of the same shape (N,), got {tuple(predictions.shape)} and {tuple(labels.shape)}"
        )
    for name, t in (("predictions", predictions), ("labels", labels)):
        if len(t) and (int(t.min()) < 0 or int(t.max()) >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes}), got values in [{int(t.min())}, {int(t.max())}]")
    flat = labels.long() * num_classes + predictions.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


@dataclass(frozen=True)
class Calibration:
    """Confidence against accuracy in bins: what a reliability diagram draws.

    Attributes:
        edges: float (M + 1,) bin edges 0, 1/M, …, 1. Bin ``m < M`` holds the confidences in
            ``[m/M, (m+1)/M)``; bin ``M`` holds the confidences equal to 1 (torchmetrics' binning).
        confidence: float (M + 1,) mean top-1 confidence per bin (0 where the bin is empty).
        accuracy: float (M + 1,) fraction of correct top-1 predictions per bin (0 where empty).
        count: int64 (M + 1,) samples per bin.
        ece: expected calibration error, ``Σ_m (count_m / N) · |accuracy_m − confidence_m|``, in [0, 1].
    """

    edges: torch.Tensor
    confidence: torch.Tensor
    accuracy: torch.Tensor
    count: torch.Tensor
    ece: float

    @property
    def confidence_gap(self) -> float:
        """Mean top-1 confidence minus accuracy over all samples, in [-1, 1].

        The count-weighted mean of ``confidence - accuracy`` over the bins: > 0 means the
        classifier is over-confident on average, < 0 under-confident. The ECE counts both
        alike; this says which (Guo et al., 2017, read reliability diagrams the same way).
        """
        weights = self.count.to(self.confidence.dtype) / self.count.sum()
        return (weights * (self.confidence - self.accuracy)).sum().item()


def _check_logits(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if logits.ndim != 2 or logits.shape[1] < 2 or labels.shape != logits.shape[:1] or len(labels) == 0:
        raise ValueError(f"expected logits (N, K) with N >= 1, K >= 2 and labels (N,), "
                         f"got {tuple(logits.shape)} and {tuple(labels.shape)}")  # fmt: skip
    if not logits.is_floating_point() or not torch.isfinite(logits).all():
        raise ValueError(f"logits must be finite floats, got dtype {logits.dtype}")
    if int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]:
        raise ValueError(f"labels must lie in [0, {logits.shape[1]}), got values in [{int(labels.min())}, {int(labels.max())}]")


def calibration(logits: torch.Tensor, labels: torch.Tensor, num_bins: int = 15) -> Calibration:
    """Bin the top-1 confidences of ``logits`` and compare them with the accuracy in each bin.

    A classifier is calibrated when, among the predictions made with confidence ``p``, a
    fraction ``p`` is right (Guo et al., 2017). The expected calibration error (Naeini et al.,
    2015) is the count-weighted mean gap between accuracy and confidence over the bins; the bins
    and the arithmetic are those of ``torchmetrics.functional.classification.
    multiclass_calibration_error(..., norm="l1")``, which it equals (tested).

    Args:
        logits: float (N, K) logits (softmax is applied here), N >= 1, K >= 2, finite.
        labels: int64 (N,) true classes in [0, K).
        num_bins: M >= 1 equal-width bins (torchmetrics' default: 15).

    Returns:
        A :class:`Calibration` on the CPU, in the dtype of ``logits``.

    Raises:
        ValueError: wrong shapes, no samples, labels outside [0, K), non-float or non-finite logits, or ``num_bins < 1``.
    """
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    _check_logits(logits, labels)
    logits, labels = logits.detach().cpu(), labels.cpu()
    confidence, prediction = F.softmax(logits, dim=1).max(dim=1)  # (N,), (N,)
    correct = (prediction == labels).to(confidence.dtype)
    edges = torch.linspace(0, 1, num_bins + 1, dtype=confidence.dtype)
    index = torch.bucketize(confidence, edges, right=True) - 1  # [m/M, (m+1)/M) -> m; 1.0 -> M
    count = torch.bincount(index, minlength=num_bins + 1)
    safe = count.clamp(min=1).to(confidence.dtype)
    mean_confidence = torch.zeros(num_bins + 1, dtype=confidence.dtype).index_add_(0, index, confidence) / safe
    accuracy = torch.zeros(num_bins + 1, dtype=confidence.dtype).index_add_(0, index, correct) / safe
    ece = ((count / len(labels)) * (accuracy - mean_confidence).abs()).sum().item()
    return Calibration(edges, mean_confidence, accuracy, count, ece)


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor, num_bins: int = 15) -> float:
    """The expected calibration error of :func:`calibration` (same arguments and errors), in [0, 1]."""
    return calibration(logits, labels, num_bins).ece


def brier_score(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The multiclass Brier score: mean squared distance of the predicted distribution to the one-hot label.

    ``mean_i Σ_k (softmax(logits_i)_k − [y_i = k])²`` (Brier, 1950), in
    [0, 2]: 0 for certain and right, 2 for certain and wrong. Unlike the ECE it needs no bins, and
    unlike the accuracy it rewards well-placed doubt.

    Args:
        logits: float (N, K) logits, N >= 1, K >= 2, finite (softmax is applied here).
        labels: int64 (N,) true classes in [0, K).

    Returns:
        The score as a Python float.

    Raises:
        ValueError: wrong shapes, no samples, non-float or non-finite logits, labels outside [0, K).
    """
    _check_logits(logits, labels)
    probabilities = F.softmax(logits.detach().cpu().double(), dim=1)
    one_hot = F.one_hot(labels.cpu().long(), logits.shape[1]).double()
    return ((probabilities - one_hot) ** 2).sum(1).mean().item()


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, tol: float = 1e-10) -> float:
    """Temperature scaling: the T > 0 that minimises the cross-entropy of ``logits / T``.

    Guo et al. (2017) fit one scalar on the validation split's logits and divide every later
    logit by it: the argmax, hence the accuracy, is unchanged, only the confidence moves. With
    β = 1/T the negative log-likelihood is convex in β (a log-sum-exp of a linear function of β
    minus a linear one), and its derivative ``mean_i (E_{p_β}[z_i] − z_{i, y_i})`` increases
    with β, so the minimum is found by bisection on that derivative (in float64, to a relative
    ``tol`` in β), not by a gradient method's few steps.

    Args:
        logits: float (N, K) validation logits z, N >= 1, K >= 2, finite.
        labels: int64 (N,) true classes in [0, K).
        tol: stop when the bracket on β is narrower than ``tol · β``, or cannot shrink in
            float64 any more; > 0.

    Returns:
        T as a Python float; > 1 means the network was over-confident, < 1 under-confident.

    Raises:
        ValueError: wrong shapes, no samples, non-float or non-finite logits, labels outside
            [0, K), ``tol <= 0``; logits that no finite temperature fits (the NLL keeps falling
            as T → 0: every sample is already ranked right, so there is nothing to calibrate);
            or logits whose true-class logit is on average no higher than their mean logit
            (no better than uniform: the NLL is smallest at T → ∞).
    """
    _check_logits(logits, labels)
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    z = logits.detach().cpu().double()
    z_true = z.gather(1, labels.cpu().long()[:, None]).squeeze(1)

    def slope(beta: float) -> float:  # d NLL / d beta
        return ((F.softmax(beta * z, dim=1) * z).sum(1) - z_true).mean().item()

    if slope(0.0) >= 0:
        raise ValueError("the true class's logit is on average no higher than the mean logit "
                         "(no better than uniform): no finite temperature fits")
    if bool((z_true >= z.max(1).values).all()):  # then the slope is < 0 for every beta
        raise ValueError("the NLL keeps falling as T -> 0 (every sample ranked right): no temperature fits")
    low, high = 0.0, 1.0
    while slope(high) < 0:  # ends: some sample ranks a wrong class first, so NLL -> inf
        low, high = high, 2 * high
    while high - low > tol * high:
        middle = (low + high) / 2
        if middle in (low, high):  # the bracket cannot shrink in float64 any more
            break
        low, high = (middle, high) if slope(middle) < 0 else (low, middle)
    return 2 / (low + high)


def wilson_interval(correct: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for an accuracy measured as ``correct`` out of ``total`` (Wilson, 1927).

    It covers the sampling noise of a finite test set (each test image a Bernoulli trial), not
    the variation between training runs (seeds); equal to
    ``scipy.stats.binomtest(correct, total).proportion_ci(confidence, method="wilson")`` (tested).

    Args:
        correct: 0 <= correct <= total.
        total: number of test samples, >= 1.
        confidence: coverage in (0, 1), for example 0.95.

    Returns:
        ``(low, high)``, fractions in [0, 1].

    Raises:
        ValueError: counts out of range, or ``confidence`` outside (0, 1).
    """
    if total < 1 or not 0 <= correct <= total:
        raise ValueError(f"expected 0 <= correct <= total and total >= 1, got correct={correct}, total={total}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.5 + confidence / 2, dtype=torch.float64)).item()
    p, n = correct / total, total
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (divisor n - 1) of a result repeated over seeds.

    What the chapters report as "mean ± sd over the seeds": the spread between training runs,
    not the sampling noise of the test set (for that, :func:`wilson_interval`). Equal to
    ``statistics.mean`` and ``statistics.stdev`` (tested).

    Args:
        values: n >= 1 numbers (floats, ints, or 0-d tensors), in any unit.

    Returns:
        ``(mean, sd)`` as floats in the unit of ``values``; ``sd`` is ``nan`` when n = 1
        (one run says nothing about the spread).

    Raises:
        ValueError: no values.

    Examples:
        >>> mean_std([0.97, 0.98, 0.99])
        (0.98, 0.010000000000000009)
        >>> mean_std([5.0])
        (5.0, nan)
    """
    data = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if data.numel() == 0:
        raise ValueError("mean_std needs at least one value, got none")
    sd = data.std().item() if data.numel() > 1 else math.nan
    return data.mean().item(), sd


def _t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with integer ``df``: the finite series of Abramowitz and Stegun 26.7.3-4."""
    theta = math.atan(abs(t) / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2:  # odd: A = (2/π)(θ + sin θ cos θ (1 + 2/3 cos²θ + (2·4)/(3·5) cos⁴θ + ...))
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        inside = (2 / math.pi) * (theta + s * math.cos(theta) * total)
    else:  # even: A = sin θ (1 + 1/2 cos²θ + (1·3)/(2·4) cos⁴θ + ...)
        term, total = 1.0, 1.0
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        inside = s * total
    return 0.5 + math.copysign(inside / 2, t)


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t distribution with ``df`` degrees of freedom.

    The distribution function is the exact finite series for integer ``df`` (Abramowitz and Stegun,
    *Handbook of Mathematical Functions*, 26.7.3 and 26.7.4), inverted by bisection to float64
    precision. Equal to ``scipy.stats.t.ppf(p, df)`` (tested); ``t_quantile(0.975, 2)`` is
    :math:`4.303 = \\sqrt{2}\\, (2p - 1) / \\sqrt{1 - (2p - 1)^2}`.

    Args:
        p: probability in (0, 1).
        df: degrees of freedom, an int >= 1 (n - 1 for n paired runs).

    Returns:
        The quantile, a float (negative for ``p < 0.5``).

    Raises:
        TypeError: ``df`` is not an int.
        ValueError: ``p`` outside (0, 1) or ``df < 1``.

    Examples:
        >>> round(t_quantile(0.975, 4), 4)
        2.7764
    """
    if isinstance(df, bool) or not isinstance(df, int):
        raise TypeError(f"df must be an int >= 1, got {type(df).__name__}")
    if df < 1 or not 0 < p < 1:
        raise ValueError(f"need 0 < p < 1 and df >= 1, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    low, high = 0.0, 1.0
    while _t_cdf(high, df) < p:
        high *= 2
    for _ in range(200):
        middle = (low + high) / 2
        if middle in (low, high):
            break
        low, high = (middle, high) if _t_cdf(middle, df) < p else (low, middle)
    return (low + high) / 2


def paired_t_interval(
    a: Iterable[float], b: Iterable[float], confidence: float = 0.95
) -> tuple[float, float, float]:
    """Mean of the paired differences ``a[i] - b[i]`` and its confidence interval (paired t).

    For two methods run with the same seeds (same data order, same initial weights where they
    share a shape), pairing removes the variation the seeds share. With n pairs, mean
    :math:`\\bar d` and sample standard deviation :math:`s_d`, the interval is
    :math:`\\bar d \\pm t_{(1 + c)/2,\\, n-1}\\, s_d / \\sqrt{n}`; it excludes 0 exactly when
    ``scipy.stats.ttest_rel(a, b)`` rejects "no difference" at level 1 - c (tested).

    Args:
        a, b: n >= 2 numbers each, paired by position, in one unit (points of accuracy, say).
        confidence: coverage in (0, 1).

    Returns:
        ``(mean, low, high)`` in the unit of ``a``.

    Raises:
        ValueError: lengths that differ, fewer than 2 pairs, a value that is not finite, or
            ``confidence`` outside (0, 1).
    """
    a, b = [float(v) for v in a], [float(v) for v in b]
    if not all(math.isfinite(v) for v in a + b):
        raise ValueError("a and b must hold finite numbers (a NaN or an infinity arrived)")
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"need two equally long sequences of >= 2 paired values, got {len(a)} and {len(b)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    mean, sd = mean_std([x - y for x, y in zip(a, b)])
    half = t_quantile((1 + confidence) / 2, len(a) - 1) * sd / math.sqrt(len(a))
    return mean, mean - half, mean + half
