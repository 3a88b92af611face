"""companion.evaluation's temperature scaling and Brier score: a known scaling undone, L-BFGS as oracle, hand cases."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from companion.evaluation import brier_score, calibration, fit_temperature



def _calibrated_logits(n=200_000, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 3, generator=g, dtype=torch.float64) * 2
    labels = torch.multinomial(logits.softmax(1), 1, generator=g).squeeze(1)
    return logits, labels


def test_temperature_undoes_a_known_scaling():
    # Labels drawn from softmax(z): z · 3 is over-confident by exactly T = 3, z / 2 under by 1/2.
    logits, labels = _calibrated_logits()
    assert fit_temperature(logits * 3, labels) == pytest.approx(3, rel=0.02)
    assert fit_temperature(logits / 2, labels) == pytest.approx(0.5, rel=0.02)


def test_temperature_minimises_the_nll_as_lbfgs_finds_it():
    logits, labels = _calibrated_logits(5_000, seed=1)
    logits = logits * 2.5 + 0.3 * torch.randn(5_000, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    t = fit_temperature(logits, labels)
    nll = lambda temperature: F.cross_entropy(logits / temperature, labels).item()  # noqa: E731
    assert nll(t) < nll(t * 1.001) and nll(t) < nll(t / 1.001)
    # oracle: PyTorch's L-BFGS on log T, as temperature-scaling code usually fits it
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1, max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    assert t == pytest.approx(log_t.exp().item(), rel=1e-6)


def test_temperature_refusals():
    with pytest.raises(ValueError, match="no better than uniform"):
        fit_temperature(torch.zeros(4, 3), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="keeps falling"):  # separable: every sample ranked right
        fit_temperature(torch.tensor([[5.0, 0.0], [0.0, 5.0]]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="tol must be > 0"):
        fit_temperature(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([0, 1]), tol=0)
    with pytest.raises(ValueError, match="finite floats"):
        fit_temperature(torch.zeros(2, 2, dtype=torch.long), torch.tensor([0, 1]))


def test_brier_score_by_hand():
    # probabilities (0.8, 0.2) with label 0: 0.2² + 0.2² = 0.08; (0.5, 0.5) with label 1: 0.5
    p = torch.tensor([[0.8, 0.2], [0.5, 0.5]], dtype=torch.float64)
    assert brier_score(p.log(), torch.tensor([0, 1])) == pytest.approx((0.08 + 0.5) / 2)
    # certain and wrong: 2; certain and right: 0
    assert brier_score(torch.tensor([[100.0, -100.0]]), torch.tensor([1])) == pytest.approx(2)
    assert brier_score(torch.tensor([[100.0, -100.0]]), torch.tensor([0])) == pytest.approx(0)


@pytest.mark.parametrize(("logits", "labels", "message"), [
    (torch.zeros(4), torch.zeros(4, dtype=torch.long), "expected logits"),
    (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), "N >= 1"),
    (torch.full((2, 3), float("inf")), torch.zeros(2, dtype=torch.long), "finite"),
    (torch.zeros(2, 3), torch.tensor([0, 3]), r"labels must lie in \[0, 3\)"),
])  # fmt: skip
def test_brier_and_temperature_errors(logits, labels, message):
    for function in (brier_score, fit_temperature):
        with pytest.raises(ValueError, match=message):
            function(logits, labels)


def test_temperature_ends_with_a_tolerance_below_float64_resolution():
    logits, labels = _calibrated_logits(2_000, seed=3)
    assert fit_temperature(logits * 2, labels, tol=1e-30) == pytest.approx(fit_temperature(logits * 2, labels), rel=1e-9)


def test_confidence_gap_says_over_or_under():
    logits, labels = _calibrated_logits(50_000, seed=4)
    assert calibration(logits * 3, labels).confidence_gap > 0.05
    assert calibration(logits / 3, labels).confidence_gap < -0.05
