"""skin_model.trust.calibration: temperature, prior correction and confidence map on made-up logits with a known truth."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skin_model.constants import CLASSES
from skin_model.metrics import classification_report, expected_calibration_error
from skin_model.trust.calibration import (
    CONFIDENCE_KNOTS,
    confidence_grid,
    fit_calibration,
    fit_confidence_map,
    fit_temperature,
    remap_confidence,
    softmax,
)

N = len(CLASSES)


def toy(scale: float, n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from known probabilities; logits = scale * true log-probabilities."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(N, 0.7), size=n)
    labels = np.array([rng.choice(N, p=p) for p in probs])
    return scale * np.log(probs), labels


def test_softmax() -> None:
    logits = np.array([[0.0, np.log(3.0)], [1000.0, 1000.0]])
    assert np.allclose(softmax(logits), [[0.25, 0.75], [0.5, 0.5]])


def test_overconfident_logits_get_a_temperature_above_one() -> None:
    logits, labels = toy(5.0)
    t = fit_temperature(logits, labels)
    assert t > 1.0
    assert t == pytest.approx(5.0, rel=0.2)  # the truth is recovered
    before = expected_calibration_error(softmax(logits), labels)
    after = expected_calibration_error(softmax(logits / t), labels)
    assert after < before / 3
    assert after < 0.05


def test_underconfident_logits_get_a_temperature_below_one() -> None:
    logits, labels = toy(0.4)
    t = fit_temperature(logits, labels)
    assert t < 1.0 and t == pytest.approx(0.4, rel=0.2)


def test_calibrated_logits_keep_temperature_near_one() -> None:
    logits, labels = toy(1.0)
    assert fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.15)


def test_temperature_does_not_change_the_ranking() -> None:
    logits, labels = toy(5.0, n=500)
    t = fit_temperature(logits, labels)
    assert np.array_equal(softmax(logits / t).argmax(1), logits.argmax(1))


def test_fit_calibration_keys_and_effect() -> None:
    logits, labels = toy(5.0, n=2000)
    counts = np.bincount(labels, minlength=N)
    fit = fit_calibration(logits, labels, counts)
    assert {"bias", "temperature", "tau", "score", "val_balanced_accuracy", "val_accuracy", "val_ece"} <= set(fit)
    assert fit["bias"].shape == (N,) and fit["bias"].dtype == np.float32
    assert fit["temperature"] > 1.0
    # the recorded figures are those of the chosen correction
    report = classification_report(softmax(logits / fit["temperature"] + fit["bias"]), labels)
    assert fit["val_balanced_accuracy"] == pytest.approx(report["balanced_accuracy"], abs=1e-6)
    assert fit["val_ece"] == pytest.approx(report["ece"], abs=1e-3)
    assert fit["val_ece"] < expected_calibration_error(softmax(logits), labels)


def test_prior_correction_helps_rare_classes() -> None:
    # a model that over-predicts the frequent class: logits carry a log-prior too many
    rng = np.random.default_rng(1)
    prior = np.array([0.02, 0.05, 0.1, 0.02, 0.1, 0.67, 0.04])
    labels = rng.choice(N, p=prior, size=4000)
    signal = rng.normal(size=(4000, N))
    signal[np.arange(4000), labels] += 1.5
    logits = signal + 2.0 * np.log(prior)
    counts = np.bincount(labels, minlength=N)
    fit = fit_calibration(logits, labels, counts)
    plain = classification_report(softmax(logits), labels)["balanced_accuracy"]
    assert fit["tau"] > 0  # pushes probability towards rare classes
    assert fit["val_balanced_accuracy"] > plain + 0.05
    assert fit["bias"][5] < fit["bias"][0]  # nv is damped, akiec boosted
    # only taus from the grid given are tried
    only_zero = fit_calibration(logits, labels, counts, taus=np.array([0.0]))
    assert only_zero["tau"] == 0.0 and np.allclose(only_zero["bias"], 0.0)


def miscalibrated(n: int = 4000, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Confident photos are right less often than they claim and unsure ones more often:
    no single temperature fixes both ends."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.0, size=(n, N)) * rng.uniform(0.2, 4.0, size=(n, 1))
    probs = softmax(logits)
    conf, top = probs.max(1), probs.argmax(1)
    truth = 0.25 + 0.5 * conf  # accuracy actually reached at each confidence
    right = rng.random(n) < truth
    other = (top + rng.integers(1, N, n)) % N
    return logits, np.where(right, top, other)


def test_confidence_map_lowers_ece_where_a_temperature_cannot() -> None:
    logits, labels = miscalibrated()
    fit_l, fit_y, test_l, test_y = logits[:2000], labels[:2000], logits[2000:], labels[2000:]
    t = fit_temperature(fit_l, fit_y)
    table = fit_confidence_map(softmax(fit_l / t), fit_y)
    assert table.shape == (CONFIDENCE_KNOTS,)
    assert np.all(np.diff(table) > 0) and table[0] >= 1 / N - 1e-6 and table[-1] <= 1.0  # strictly increasing
    temperature_only = softmax(test_l / t)
    mapped = remap_confidence(torch.as_tensor(test_l / t), torch.as_tensor(table)).numpy()
    assert np.allclose(mapped.sum(1), 1.0, atol=1e-5)
    assert np.array_equal(mapped.argmax(1), temperature_only.argmax(1))  # no decision changes
    before = expected_calibration_error(temperature_only, test_y)
    after = expected_calibration_error(mapped, test_y)
    assert after < before / 4 and after < 0.05, (before, after)


def test_identity_map_changes_nothing_and_keeps_proportions() -> None:
    logits, _ = toy(3.0, n=200)
    out = remap_confidence(torch.as_tensor(logits), confidence_grid()).numpy()
    assert np.allclose(out, softmax(logits), atol=1e-5)
    lowered = remap_confidence(torch.as_tensor(logits), torch.full((CONFIDENCE_KNOTS,), 0.5)).numpy()
    probs = softmax(logits)
    top = probs.argmax(1)
    keep = probs.max(1) > 0.5
    rows = np.arange(len(probs))[keep]
    assert np.allclose(lowered[rows, top[keep]], 0.5, atol=1e-5)
    # the other classes share what is left in their original proportions
    others = np.ones_like(probs, dtype=bool)
    others[np.arange(len(probs)), top] = False
    share_after = lowered[others].reshape(len(probs), N - 1)[keep]
    share_before = probs[others].reshape(len(probs), N - 1)[keep]
    assert np.allclose(share_after / share_after.sum(1, keepdims=True),
                       share_before / share_before.sum(1, keepdims=True), atol=1e-5)


def test_remap_keeps_the_top_class_on_top_when_the_map_asks_for_less() -> None:
    logits = torch.tensor([[2.0, 1.9, 0.0, 0.0, 0.0, 0.0, 0.0], [50.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    out = remap_confidence(logits, torch.full((CONFIDENCE_KNOTS,), 1 / N))
    assert out.argmax(1).tolist() == [0, 0]
    assert torch.isfinite(out).all() and torch.allclose(out.sum(1), torch.ones(2, dtype=out.dtype))
