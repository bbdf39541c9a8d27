"""skin_model.evaluation.compare: a paired lesion bootstrap that tells a real gain from noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from skin_model.cli import main
from skin_model.constants import CLASSES, MALIGNANT
from skin_model.evaluation.compare import MEASURES, Outputs, format_comparison, paired_comparison

MALIGNANT_INDEX = [CLASSES.index(name) for name in sorted(MALIGNANT)]


def _lesions(n_lesions: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels of two photos per lesion (both photos of a lesion share its diagnosis) and lesion ids."""
    rng = np.random.default_rng(seed)
    per_lesion = rng.integers(0, len(CLASSES), n_lesions)
    return np.repeat(per_lesion, 2), np.repeat(np.arange(n_lesions), 2)


def _probs(labels: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """Probabilities that favour the true class, less so the larger `noise` is."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, noise, (len(labels), len(CLASSES)))
    logits[np.arange(len(labels)), labels] += 2.0
    return np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


def test_a_clearly_better_candidate_is_ahead_in_nearly_every_resample() -> None:
    labels, groups = _lesions()
    reference, candidate = Outputs(_probs(labels, 3.0, 1), 0.3), Outputs(_probs(labels, 1.0, 2), 0.3)
    report = paired_comparison(labels, groups, {"full": (reference, candidate)}, resamples=300)
    assert report["lesions"] == 300
    auc = report["framings"]["full"]["malignant_auc"]
    assert auc["candidate"] > auc["reference"] + 0.05
    assert auc["share_ahead"] >= 0.99 and auc["difference_interval"][0] > 0
    assert report["framings"]["full"]["balanced_accuracy"]["share_ahead"] >= 0.99
    assert any(row.startswith("full") and "malignant_auc" in row and row.endswith("established")
               for row in format_comparison(report).splitlines())


def test_a_model_against_itself_is_never_ahead() -> None:
    labels, groups = _lesions()
    same = Outputs(_probs(labels, 2.0, 3), 0.3)
    report = paired_comparison(labels, groups, {"full": (same, same), "zoom_0.6": (same, same)}, resamples=200)
    for measures in report["framings"].values():
        assert set(measures) == set(MEASURES)
        for m in measures.values():
            assert m["reference"] == m["candidate"] and m["share_ahead"] == 0.0
            assert m["difference_interval"] == [0.0, 0.0]
    rows = format_comparison(report).splitlines()[2:]
    assert len(rows) == 2 * len(MEASURES) and not any(row.endswith("established") for row in rows)


def test_each_model_is_judged_at_its_own_threshold() -> None:
    """Same probabilities, a lower threshold for the candidate: it flags more, so its sensitivity
    can only rise and its specificity only fall, in every resample; the whole-split figures are
    those of each threshold."""
    labels, groups = _lesions()
    probs = _probs(labels, 2.0, 4)
    report = paired_comparison(labels, groups, {"full": (Outputs(probs, 0.5), Outputs(probs, 0.2))}, resamples=200)
    full = report["framings"]["full"]
    malignant = probs[:, MALIGNANT_INDEX].sum(1)
    truth = np.isin(labels, MALIGNANT_INDEX)
    for threshold, side in ((0.5, "reference"), (0.2, "candidate")):
        assert full["triage_sensitivity"][side] == pytest.approx((malignant[truth] >= threshold).mean())
        assert full["triage_specificity"][side] == pytest.approx((malignant[~truth] < threshold).mean())
    assert full["triage_sensitivity"]["difference_interval"][0] >= 0 > full["triage_specificity"]["difference_interval"][1]
    assert full["malignant_auc"]["difference_interval"] == [0.0, 0.0]  # the ranking needs no threshold


def test_resamples_draw_whole_lesions() -> None:
    """Every photo of a lesion repeated ten times changes nothing when the lesion is the unit:
    the resamples draw lesions, so the intervals are those of the unrepeated photos."""
    labels, groups = _lesions(200)
    ref, cand = Outputs(_probs(labels, 2.5, 5), 0.3), Outputs(_probs(labels, 2.0, 6), 0.3)
    once = paired_comparison(labels, groups, {"full": (ref, cand)}, resamples=200)
    rows = np.repeat(np.arange(len(labels)), 10)
    tenfold = paired_comparison(labels[rows], groups[rows], {"full": (Outputs(ref.probs[rows], 0.3),
                                                                      Outputs(cand.probs[rows], 0.3))}, resamples=200)
    assert tenfold["lesions"] == once["lesions"] == 200
    for measure in MEASURES:
        np.testing.assert_allclose(tenfold["framings"]["full"][measure]["difference_interval"],
                                   once["framings"]["full"][measure]["difference_interval"], atol=1e-9)


def test_cli_compares_the_shipped_weights_with_themselves(ham_dir: Path, capsys: pytest.CaptureFixture) -> None:
    weights = str(Path(__file__).resolve().parents[3] / "weights")
    assert main(["compare", weights, weights, "--data", str(ham_dir), "--limit", "40", "--resamples", "50"]) == 0
    out = capsys.readouterr().out
    assert "paired bootstrap over" in out and "established" in out  # the header explains the word
    rows = [line for line in out.splitlines() if line.startswith(("full", "centre_crop", "zoom_0.6"))]
    assert len(rows) == 3 * len(MEASURES)
    assert all(line.split()[-1] == "0%" for line in rows)  # never ahead of itself
