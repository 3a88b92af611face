"""companion.evaluation.calibration: equal to torchmetrics, a hand calculation, and its errors."""

from __future__ import annotations

import pytest
import torch

from companion.evaluation import calibration, expected_calibration_error, mean_std, wilson_interval

torchmetrics = pytest.importorskip("torchmetrics")
from torchmetrics.functional.classification import multiclass_calibration_error  # noqa: E402


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("num_bins", [1, 10, 15])
def test_ece_equals_torchmetrics(seed, num_bins):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(500, 7, generator=g) * (seed + 1)  # larger scales: confidences near 1
    logits[:20] = logits[:20] * 1e4  # some softmax confidences exactly 1.0 (their own bin)
    labels = torch.randint(0, 7, (500,), generator=g)
    ours = expected_calibration_error(logits, labels, num_bins)
    theirs = multiclass_calibration_error(logits.softmax(1), labels, num_classes=7, n_bins=num_bins, norm="l1")
    assert ours == pytest.approx(theirs.item(), abs=1e-6)


def test_calibration_by_hand():
    # Four samples, two bins. Confidences 0.2 (wrong) would be < 1/K, so use K = 2 and logits
    # giving confidences 0.6, 0.7 (bin [0.5, 1)) and 1.0 (its own bin).
    p = torch.tensor([0.6, 0.7, 0.6, 1.0], dtype=torch.float64)
    logits = torch.stack([torch.log(p), torch.log1p(-p)], 1)  # class 0 has probability p
    logits[3] = torch.tensor([0.0, -1e4], dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 0])  # right, wrong, right, right
    result = calibration(logits, labels, num_bins=2)
    assert result.count.tolist() == [0, 3, 1]
    torch.testing.assert_close(result.confidence[1], torch.tensor(1.9 / 3, dtype=torch.float64))
    torch.testing.assert_close(result.accuracy[1], torch.tensor(2 / 3, dtype=torch.float64))
    assert result.ece == pytest.approx(3 / 4 * abs(2 / 3 - 1.9 / 3) + 1 / 4 * 0.0)
    # mean confidence (0.6 + 0.7 + 0.6 + 1.0) / 4 minus accuracy 3 / 4: under-confident
    assert result.confidence_gap == pytest.approx(2.9 / 4 - 3 / 4)
    torch.testing.assert_close(result.edges, torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))


def test_a_calibrated_predictor_has_a_small_ece():
    # Labels drawn from the predicted distribution: the expected gap is sampling noise only.
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200_000, 3, generator=g) * 2
    labels = torch.multinomial(logits.softmax(1), 1, generator=g).squeeze(1)
    assert expected_calibration_error(logits, labels) < 0.005
    assert expected_calibration_error(logits * 3, labels) > 0.05  # over-confident


@pytest.mark.parametrize(("logits", "labels", "num_bins", "message"), [
    (torch.zeros(4), torch.zeros(4, dtype=torch.long), 15, "expected logits"),
    (torch.zeros(4, 1), torch.zeros(4, dtype=torch.long), 15, "K >= 2"),
    (torch.zeros(4, 3), torch.zeros(3, dtype=torch.long), 15, "expected logits"),
    (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), 15, "N >= 1"),
    (torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), 0, "num_bins must be >= 1, got 0"),
    (torch.full((4, 3), float("nan")), torch.zeros(4, dtype=torch.long), 15, "finite"),
    (torch.zeros(4, 3), torch.tensor([0, 1, 2, 3]), 15, r"labels must lie in \[0, 3\), got values in \[0, 3\]"),
])  # fmt: skip
def test_calibration_errors(logits, labels, num_bins, message):
    with pytest.raises(ValueError, match=message):
        calibration(logits, labels, num_bins)


@pytest.mark.parametrize(("correct", "total", "confidence"), [(0, 10, 0.95), (7, 10, 0.95), (10, 10, 0.9),
                                                              (9_871, 10_000, 0.95), (50, 51, 0.99)])  # fmt: skip
def test_wilson_interval_equals_scipy(correct, total, confidence):
    stats = pytest.importorskip("scipy.stats")
    low, high = wilson_interval(correct, total, confidence)
    ci = stats.binomtest(correct, total).proportion_ci(confidence, method="wilson")
    assert (low, high) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_wilson_interval_by_hand_and_errors():
    # p = 0.5, n = 100, z = 1.959964: centre 0.5, half-width z/(1+z²/n) * sqrt(0.0025 + z²/40000).
    z = 1.959963984540054
    half = z / (1 + z * z / 100) * (0.0025 + z * z / 40_000) ** 0.5
    assert wilson_interval(50, 100) == pytest.approx((0.5 - half, 0.5 + half), abs=1e-12)
    with pytest.raises(ValueError, match="correct=11, total=10"):
        wilson_interval(11, 10)
    with pytest.raises(ValueError, match="total=0"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="confidence must be in"):
        wilson_interval(1, 2, confidence=1.0)


@pytest.mark.parametrize("values", [[0.97, 0.98, 0.99], [1, 2, 4, 8], [0.5, 0.5]])
def test_mean_std_equals_the_statistics_module(values):
    import statistics

    mean, sd = mean_std(values)
    assert mean == pytest.approx(statistics.mean(values), rel=1e-12)
    assert sd == pytest.approx(statistics.stdev(values), rel=1e-12, abs=1e-15)


def test_mean_std_of_one_run_has_no_spread_and_of_none_refuses():
    mean, sd = mean_std([torch.tensor(0.25)])  # 0-d tensors are numbers too
    assert mean == 0.25 and sd != sd  # nan
    with pytest.raises(ValueError, match="at least one value"):
        mean_std([])

