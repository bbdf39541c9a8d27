"""skin_model.trust.abstain: risk-coverage curve, the "inconclusive" threshold and its test report."""

from __future__ import annotations

import numpy as np
import pytest

from skin_model.constants import CLASSES
from skin_model.metrics import classification_report
from skin_model.trust.abstain import answered_report, choose_threshold, risk_coverage

N = len(CLASSES)


def _probs(top: np.ndarray, conf: np.ndarray) -> np.ndarray:
    """Rows whose largest probability `conf` sits on class `top`, the rest spread evenly."""
    probs = np.repeat(((1 - conf) / (N - 1))[:, None], N, axis=1)
    probs[np.arange(len(top)), top] = conf
    return probs


@pytest.fixture
def confident_right() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """70 confident, correct rows over classes 0-5 and 30 unsure rows of class 6, all wrong.

    Any answered set that holds one of the wrong rows has a class with recall 0, so its
    balanced accuracy is at most 6/7 < 0.9."""
    rng = np.random.default_rng(0)
    good_labels = np.arange(70) % 6
    good = _probs(good_labels, rng.uniform(0.80, 0.95, 70))
    bad_labels = np.full(30, 6)
    bad = _probs(rng.integers(0, 6, 30), rng.uniform(0.25, 0.45, 30))
    order = rng.permutation(100)
    probs = np.concatenate([good, bad])[order]
    labels = np.concatenate([good_labels, bad_labels])[order]
    correct = (probs.argmax(1) == labels)
    assert correct.sum() == 70
    return probs, labels, correct


def test_risk_coverage_is_monotone_and_ends_at_full_coverage(confident_right) -> None:
    probs, labels, _ = confident_right
    curve = risk_coverage(probs, labels)
    coverage = [r["coverage"] for r in curve]
    thresholds = [r["threshold"] for r in curve]
    assert coverage == sorted(coverage) and len(set(coverage)) == len(coverage)
    assert all(0 < c <= 1 for c in coverage)
    # answering more photos means accepting lower confidence
    assert all(a >= b for a, b in zip(thresholds, thresholds[1:]))
    # on this set accuracy can only fall as the unsure, wrong rows are let in
    acc = [r["accuracy"] for r in curve]
    assert all(a >= b - 1e-12 for a, b in zip(acc, acc[1:]))
    assert acc[0] == 1.0
    last = curve[-1]
    assert last["coverage"] == 1.0
    assert last["threshold"] == pytest.approx(probs.max(1).min())
    full = classification_report(probs, labels)
    assert last["balanced_accuracy"] == pytest.approx(full["balanced_accuracy"])
    assert last["accuracy"] == pytest.approx(full["accuracy"]) == pytest.approx(0.7)


def test_risk_coverage_points() -> None:
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(N), 200)
    labels = rng.integers(0, N, 200)
    curve = risk_coverage(probs, labels, points=11)
    levels = np.linspace(0.05, 1.0, 10)
    assert [r["coverage"] for r in curve] == pytest.approx(np.round(levels * 200) / 200)
    # each point is the balanced accuracy of the most confident photos
    conf = probs.max(1)
    mid = curve[5]
    keep = conf >= mid["threshold"]
    assert keep.mean() == pytest.approx(mid["coverage"])
    assert mid["balanced_accuracy"] == pytest.approx(classification_report(probs[keep], labels[keep])["balanced_accuracy"])


def test_choose_threshold_answers_only_the_confident_correct_rows(confident_right) -> None:
    probs, labels, correct = confident_right
    choice = choose_threshold(probs, labels, target_balanced_accuracy=0.90)
    assert choice["rule"] == "target reached"
    conf = probs.max(1)
    answered = conf >= choice["threshold"]
    assert np.array_equal(answered, correct)  # every correct row answered, every wrong one abstained on
    assert conf[~correct].max() < choice["threshold"] <= conf[correct].min()
    assert choice["val_coverage"] == pytest.approx(0.70)
    assert choice["val_balanced_accuracy_answered"] >= 0.9
    assert choice["val_balanced_accuracy_answered"] == pytest.approx(1.0)
    assert choice["val_accuracy_answered"] == pytest.approx(1.0)


def test_choose_threshold_takes_the_lowest_threshold_that_reaches_the_target() -> None:
    # already above target with every row answered: nothing is abstained on
    rng = np.random.default_rng(2)
    labels = np.arange(60) % N
    probs = _probs(labels, rng.uniform(0.4, 0.9, 60))
    choice = choose_threshold(probs, labels)
    assert choice["rule"] == "target reached"
    assert choice["threshold"] == pytest.approx(probs.max(1).min())
    assert choice["val_coverage"] == 1.0


def test_choose_threshold_falls_back_to_answering_70_percent() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, N, 200)
    probs = _probs((labels + 1) % N, rng.uniform(0.2, 0.9, 200))  # always wrong: target unreachable
    choice = choose_threshold(probs, labels, target_balanced_accuracy=0.9, min_coverage=0.7)
    assert choice["rule"].startswith("target not reached")
    assert "70%" in choice["rule"]
    assert choice["val_coverage"] == pytest.approx(0.70, abs=0.01)
    assert choice["threshold"] == pytest.approx(np.quantile(probs.max(1), 0.3))
    assert choice["val_balanced_accuracy_answered"] == 0.0
    other = choose_threshold(probs, labels, min_coverage=0.5)
    assert other["val_coverage"] == pytest.approx(0.5, abs=0.01) and "50%" in other["rule"]


def test_answered_report_at_a_fixed_threshold(confident_right) -> None:
    probs, labels, correct = confident_right
    at_half = answered_report(probs, labels, 0.5)
    assert at_half["threshold"] == 0.5
    assert at_half["coverage"] == pytest.approx(0.70)
    assert at_half["balanced_accuracy_answered"] == pytest.approx(1.0)
    assert at_half["accuracy_answered"] == pytest.approx(1.0)

    everything = answered_report(probs, labels, 0.0)
    full = classification_report(probs, labels)
    assert everything["coverage"] == 1.0
    assert everything["balanced_accuracy_answered"] == pytest.approx(full["balanced_accuracy"])
    assert everything["accuracy_answered"] == pytest.approx(0.70)

    nothing = answered_report(probs, labels, 0.99)
    assert nothing["coverage"] == 0.0
    assert np.isnan(nothing["balanced_accuracy_answered"]) and np.isnan(nothing["accuracy_answered"])
