"""skin_model.metrics on hand-made toys with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from skin_model.constants import CLASSES
from skin_model.metrics import (
    auc_ovr,
    bootstrap_intervals,
    classification_report,
    confusion,
    expected_calibration_error,
    lesion_resamples,
    reliability,
)

N = len(CLASSES)


def one_hot_probs(preds: list[int], confidence: float = 0.9) -> np.ndarray:
    """Probabilities whose argmax is `preds`, with the given top confidence."""
    probs = np.full((len(preds), N), (1 - confidence) / (N - 1))
    probs[np.arange(len(preds)), preds] = confidence
    return probs


def test_confusion_matrix() -> None:
    labels = np.array([0, 0, 1, 2, 2, 2, 6])
    preds = np.array([0, 1, 1, 2, 0, 2, 5])
    cm = confusion(labels, preds)
    assert cm.shape == (N, N) and cm.sum() == len(labels)
    assert cm[0, 0] == 1 and cm[0, 1] == 1 and cm[1, 1] == 1
    assert cm[2, 2] == 2 and cm[2, 0] == 1 and cm[6, 5] == 1
    assert cm[3:5].sum() == 0  # rows are truth, columns predictions
    assert np.array_equal(cm.sum(1)[:3], [2, 1, 3]) and np.array_equal(cm.sum(0)[:3], [2, 2, 2])


def test_balanced_accuracy_ignores_the_majority_class() -> None:
    labels = np.array([5] * 8 + [4] * 2)
    report = classification_report(one_hot_probs([5] * 10), labels)
    assert report["accuracy"] == pytest.approx(0.8)
    assert report["balanced_accuracy"] == pytest.approx(0.5)  # mean recall of the present classes
    assert report["n"] == 10


def test_per_class_recall_precision_and_support() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 2])
    preds = [0, 0, 0, 1, 1, 0, 2]
    report = classification_report(one_hot_probs(preds), labels)
    pc = report["per_class"]
    assert list(pc) == list(CLASSES)
    assert pc["akiec"]["recall"] == pytest.approx(3 / 4) and pc["akiec"]["precision"] == pytest.approx(3 / 4)
    assert pc["bcc"]["recall"] == pytest.approx(1 / 2) and pc["bcc"]["precision"] == pytest.approx(1 / 2)
    assert pc["bkl"]["recall"] == 1.0 and pc["bkl"]["precision"] == 1.0
    assert [pc[c]["support"] for c in CLASSES] == [4, 2, 1, 0, 0, 0, 0]
    assert math.isnan(pc["mel"]["recall"])  # absent class: no recall
    assert report["balanced_accuracy"] == pytest.approx((3 / 4 + 1 / 2 + 1) / 3)
    f1 = [0.75, 0.5, 1.0]
    assert report["macro_f1"] == pytest.approx(np.mean(f1))
    assert report["confusion_matrix"] == confusion(labels, np.array(preds)).tolist()


def test_auc_perfect_constant_reversed_and_ties() -> None:
    labels = np.array([1, 1, 1, 0, 0, 0, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1, 0.0])
    assert auc_ovr(labels, scores) == 1.0
    assert auc_ovr(labels, -scores) == 0.0
    assert auc_ovr(labels, np.full(7, 0.4)) == 0.5
    # one positive below one negative: 11 of 12 pairs ordered
    assert auc_ovr(labels, np.array([0.9, 0.8, 0.25, 0.3, 0.2, 0.1, 0.0])) == pytest.approx(11 / 12)
    assert auc_ovr(labels, np.array([0.9, 0.8, 0.3, 0.3, 0.2, 0.1, 0.0])) == pytest.approx(11.5 / 12)
    assert math.isnan(auc_ovr(np.ones(4), np.arange(4.0)))


def test_macro_auc_of_perfect_and_constant_scores() -> None:
    labels = np.repeat(np.arange(N), 3)
    perfect = classification_report(one_hot_probs(list(labels)), labels)
    assert perfect["macro_auc"] == 1.0 and perfect["accuracy"] == 1.0 and perfect["balanced_accuracy"] == 1.0
    constant = classification_report(np.full((len(labels), N), 1 / N), labels)
    assert constant["macro_auc"] == 0.5


def test_ece_zero_when_perfectly_calibrated() -> None:
    # 3 of 4 predictions at confidence 0.75 are right, and 1 of 2 at confidence 0.5
    probs = np.zeros((6, N))
    probs[:4, 0], probs[:4, 1] = 0.75, 0.25
    probs[4:, 2], probs[4:, 3] = 0.5, 0.5 - 1e-9
    labels = np.array([0, 0, 0, 1, 2, 3])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-8)
    assert classification_report(probs, labels)["ece"] == pytest.approx(0.0, abs=1e-8)


def test_ece_of_overconfident_predictions() -> None:
    probs = one_hot_probs([0] * 10, confidence=0.9)
    labels = np.array([0] * 5 + [1] * 5)  # 90% confident, 50% right
    assert expected_calibration_error(probs, labels) == pytest.approx(0.4)
    # mixed bins: weighted by the share of samples in each
    probs = np.vstack([one_hot_probs([0] * 5, 0.9), one_hot_probs([0] * 5, 0.6)])
    labels = np.array([0] * 5 + [0, 0, 0, 1, 1])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.5 * 0.1 + 0.5 * 0.0)


def test_reliability_bins() -> None:
    probs = np.vstack([one_hot_probs([0] * 4, 0.95), one_hot_probs([1] * 2, 0.35)])
    labels = np.array([0, 0, 0, 2, 1, 0])
    rows = reliability(probs, labels, bins=10)
    assert [r["count"] for r in rows] == [2, 4]
    assert rows[0]["lo"] == pytest.approx(0.3) and rows[0]["accuracy"] == pytest.approx(0.5)
    assert rows[1]["confidence"] == pytest.approx(0.95) and rows[1]["accuracy"] == pytest.approx(0.75)


def test_bootstrap_intervals_cover_the_estimate_and_narrow_with_more_data() -> None:
    rng = np.random.default_rng(0)

    def noisy(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, N, n)
        preds = np.where(rng.random(n) < 0.8, labels, rng.integers(0, N, n))
        return labels, preds

    widths = []
    for n in (200, 5000):
        labels, preds = noisy(n)
        ci = bootstrap_intervals(labels, {"model": one_hot_probs(preds.tolist())}, resamples=300)
        lo, hi = ci["model"]["balanced_accuracy"]
        assert lo <= classification_report(one_hot_probs(preds.tolist()), labels)["balanced_accuracy"] <= hi
        assert ci["units"] == n
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2


def test_bootstrap_resamples_whole_groups_and_compares_on_the_same_draws() -> None:
    labels = np.repeat(np.arange(N), 20)
    better = labels.copy()
    worse = np.where(np.arange(len(labels)) % 2 == 0, labels, (labels + 1) % N)
    # ten copies of one lesion count once: 7 lesions of 20 photos each
    groups = np.repeat(np.arange(N), 20)
    ci = bootstrap_intervals(labels, {"worse": worse, "better": better}, groups=groups, resamples=200)
    assert ci["units"] == N
    assert ci["better"]["balanced_accuracy"] == [1.0, 1.0]
    lo, hi = ci["better"]["balanced_accuracy_minus_worse"]
    assert lo > 0 and ci["better"]["share_of_resamples_ahead"] == 1.0
    # a predictor compared with itself is never ahead
    same = bootstrap_intervals(labels, {"a": worse, "b": worse.copy()}, resamples=50)
    assert same["b"]["balanced_accuracy_minus_a"] == [0.0, 0.0] and same["b"]["share_of_resamples_ahead"] == 0.0


def test_bootstrap_gives_a_melanoma_recall_interval() -> None:
    """Half the melanomas found, every other class right: melanoma recall's interval holds 0.5 and excludes 1."""
    mel = CLASSES.index("mel")
    labels = np.repeat(np.arange(N), 40)
    preds = labels.copy()
    preds[np.flatnonzero(labels == mel)[::2]] = CLASSES.index("nv")
    ci = bootstrap_intervals(labels, {"model": preds}, resamples=300)
    lo, hi = ci["model"]["melanoma_recall"]
    assert lo <= 0.5 <= hi and hi < 1.0
    no_mel = bootstrap_intervals(labels[labels != mel], {"model": preds[labels != mel]}, resamples=20)
    assert "melanoma_recall" not in no_mel["model"]


def test_lesion_resamples_draw_whole_lesions_numbered_as_they_first_appear() -> None:
    groups = np.array(["HAM_9", "HAM_1", "HAM_9", "HAM_5", "HAM_1", "HAM_9"])
    renamed = np.array(["a", "z", "a", "m", "z", "a"])  # the same lesions, ids that sort the other way
    draws = list(lesion_resamples(groups, len(groups), 50, seed=3))
    assert all(np.array_equal(a, b) for a, b in zip(draws, lesion_resamples(renamed, len(groups), 50, seed=3)))
    members = {g: set(np.flatnonzero(groups == g)) for g in set(groups)}
    for rows in draws:
        counts = np.bincount(rows, minlength=len(groups))
        for rows_of_lesion in members.values():  # a lesion is drawn whole or not at all, every photo as often
            assert len({counts[r] for r in rows_of_lesion}) == 1
        assert sum(counts[min(m)] for m in members.values()) == len(members)  # as many lesions as there are


def test_auc_with_ties_matches_the_pairwise_count() -> None:
    rng = np.random.default_rng(0)
    labels = rng.random(300) < 0.3
    scores = np.round(rng.random(300), 1)  # many ties
    pos, neg = scores[labels], scores[~labels]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert auc_ovr(labels, scores) == pytest.approx(pairs / (len(pos) * len(neg)))
