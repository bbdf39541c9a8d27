"""skin_model.trust.triage: the malignant probability and the "see a dermatologist" threshold."""

from __future__ import annotations

import numpy as np
import pytest

from skin_model.constants import CLASSES, MALIGNANT
from skin_model.metrics import lesion_resamples
from skin_model.trust import triage
from skin_model.trust.triage import TriageRule

MAL = tuple(sorted(MALIGNANT))


def test_malignant_probability_sums_the_malignant_classes() -> None:
    probs = np.zeros((2, len(CLASSES)))
    probs[0, CLASSES.index("mel")], probs[0, CLASSES.index("nv")] = 0.3, 0.7
    probs[1, CLASSES.index("bcc")], probs[1, CLASSES.index("akiec")], probs[1, CLASSES.index("bkl")] = 0.2, 0.1, 0.7
    assert triage.malignant_probability(probs, CLASSES, MAL) == pytest.approx([0.3, 0.3])
    rule = TriageRule(threshold=0.3, malignant=MAL)
    assert rule.malignant_probability(dict(zip(CLASSES, probs[1]))) == pytest.approx(0.3)
    assert rule.refer(dict(zip(CLASSES, probs[1])))


def test_threshold_flags_at_least_the_target_share_of_malignant_rows() -> None:
    rng = np.random.default_rng(0)
    truth = rng.random(500) < 0.2
    p = np.where(truth, rng.beta(5, 2, 500), rng.beta(2, 5, 500))
    for target in (0.8, 0.9, 0.95):
        t = triage.threshold_for(p, truth, target)
        assert (p[truth] >= t).mean() >= target
        # the fewest flags: raised past the lowest flagged score, it misses the target
        assert (p[truth] > p[p >= t].min()).mean() < target
        # halfway between two scores: a change in the last bits of every score moves no flag
        gap = min(p[p >= t].min() - t, t - p[p < t].max())
        assert gap > 1e-6
        for nudge in (-1e-7, 1e-7):
            np.testing.assert_array_equal(p + nudge >= t, p >= t)
    with pytest.raises(ValueError, match="no malignant"):
        triage.threshold_for(p, np.zeros(500, bool))


def test_fit_keeps_the_target_in_every_framing_and_reports_intervals() -> None:
    rng = np.random.default_rng(1)
    truth = rng.random(400) < 0.25
    full = np.where(truth, rng.beta(6, 2, 400), rng.beta(2, 6, 400))
    zoom = np.clip(full - 0.05 * truth, 0, 1)  # a framing where malignant photos look less malignant
    groups = np.arange(400) // 2
    rule, figures = triage.fit({"full": full, "zoom": zoom}, truth, groups, MAL, target=0.9)
    assert rule.threshold == pytest.approx(triage.threshold_with_confidence(zoom, truth, groups, 0.9, 0.95))
    assert rule.threshold < triage.threshold_with_confidence(full, truth, groups, 0.9, 0.95)
    assert rule.confidence == triage.SENSITIVITY_CONFIDENCE
    assert figures["full"]["sensitivity"] >= 0.9 and figures["zoom"]["sensitivity"] >= 0.9
    lo, hi = rule.sensitivity_interval
    assert lo <= rule.sensitivity <= hi and 0 < hi - lo < 0.2
    lo, hi = rule.specificity_interval
    assert lo <= rule.specificity <= hi
    assert TriageRule.from_json(rule.to_json()) == rule
    assert "for sensitivity \u2265 90% with 95% confidence: sensitivity" in rule.operating_point()


def _scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.random(n) < 0.2
    return np.where(truth, rng.beta(5, 2, n), rng.beta(2, 5, n)), truth


def test_threshold_with_confidence_keeps_the_target_in_that_share_of_lesion_resamples() -> None:
    p, truth = _scores(1000, 2)
    groups = np.arange(1000) // 2
    t = triage.threshold_with_confidence(p, truth, groups, target=0.9, confidence=0.95)
    assert t < triage.threshold_for(p, truth, 0.9)  # a margin below the point estimate

    def share_reaching(threshold: float) -> float:
        sens = [(p[rows][truth[rows]] >= threshold).mean() for rows in lesion_resamples(groups, len(p), 1000)]
        return float(np.mean(np.array(sens) >= 0.9 - 1e-12))

    assert share_reaching(t) >= 0.95
    # the highest such threshold: raised past the lowest malignant score it flags, it no longer holds
    assert share_reaching(np.nextafter(p[truth & (p >= t)].min(), 1)) < 0.95
    assert min(p[p >= t].min() - t, t - p[p < t].max()) > 1e-6  # halfway between two scores, as threshold_for
    with pytest.raises(ValueError, match="no malignant"):
        triage.threshold_with_confidence(p, np.zeros(1000, bool))


def test_the_margin_counts_lesions_not_photos_and_shrinks_with_more_of_them() -> None:
    p, truth = _scores(600, 3)
    alone = triage.threshold_with_confidence(p, truth, np.arange(600))
    # three identical photos of each lesion are no more evidence than one...
    tripled = triage.threshold_with_confidence(np.repeat(p, 3), np.repeat(truth, 3), np.repeat(np.arange(600), 3))
    assert tripled == pytest.approx(alone)
    # ...unless they are wrongly counted as independent lesions, which narrows the bound
    assert triage.threshold_with_confidence(np.repeat(p, 3), np.repeat(truth, 3), None) > alone

    def margin(n: int) -> float:
        p, truth = _scores(n, 4)
        return float((p[truth] >= triage.threshold_with_confidence(p, truth)).mean()) - 0.9

    assert margin(6000) < margin(600)
    assert margin(6000) > 0


def test_cards_fitted_before_the_confidence_rule_read_as_the_point_rule() -> None:
    rule = TriageRule(threshold=0.2, malignant=MAL, sensitivity=0.91, specificity=0.76, confidence=0.95)
    old = {k: v for k, v in rule.to_json().items() if k != "confidence"}
    assert TriageRule.from_json(old).confidence is None
    assert "with 95% confidence" not in TriageRule.from_json(old).operating_point()
    assert "for sensitivity \u2265 90% with 95% confidence: sensitivity 91%, specificity 76%" in rule.operating_point()


def test_operating_point_counts_whole_lesions_in_the_bootstrap() -> None:
    truth = np.array([True] * 10 + [False] * 10)
    p = np.r_[np.linspace(0.5, 1, 10), np.linspace(0, 0.6, 10)]
    same = triage.operating_point(p, truth, 0.55, groups=np.zeros(20))  # one lesion: every resample is the same
    assert same["sensitivity_interval"] == pytest.approx([same["sensitivity"]] * 2)
    assert same["sensitivity"] == pytest.approx(0.9) and same["specificity"] == pytest.approx(0.9)


def _photo_rule_and_sequences(seed: int, malignant_photos: tuple[float, float], malignant_sequences: tuple[float, float],
                              benign_sequences: tuple[float, float]) -> tuple[TriageRule, np.ndarray, np.ndarray]:
    """A photo rule fitted on 300 photos (30% malignant, benign photos Beta(2, 6)) and 120 sequences'
    pooled probabilities, each drawn from the Beta distributions given."""
    rng = np.random.default_rng(seed)
    truth = rng.random(300) < 0.3
    photos = np.where(truth, rng.beta(*malignant_photos, 300), rng.beta(2, 6, 300))
    rule, _ = triage.fit({"full": photos}, truth, np.arange(300), MAL, target=0.9)
    seq_truth = rng.random(120) < 0.3
    pooled = np.where(seq_truth, rng.beta(*malignant_sequences, 120), rng.beta(*benign_sequences, 120))
    return rule, pooled, seq_truth


def test_sequences_get_their_own_threshold_when_validation_has_enough_malignant_lesions() -> None:
    """Pooling photos shrinks a sequence's malignant probability towards the middle: a photo's threshold
    would lose sequences' sensitivity, so sequences get the threshold that keeps the target on them."""
    rule, pooled, seq_truth = _photo_rule_and_sequences(2, malignant_photos=(6, 2), malignant_sequences=(3, 3),
                                                        benign_sequences=(2, 6))
    assert (pooled[seq_truth] >= rule.threshold).mean() < 0.9  # the photo rule would miss sequences
    fitted, figures = triage.fit_sequence(rule, pooled, seq_truth)
    seq = fitted.for_sequences()
    assert seq is fitted.sequence and seq.threshold < rule.threshold and figures["sensitivity"] >= 0.9
    assert (pooled[seq_truth] >= seq.threshold).mean() >= 0.9 and "sequences" in seq.operating_point()
    assert fitted.threshold == rule.threshold  # photos keep theirs
    assert TriageRule.from_json(fitted.to_json()) == fitted
    few, none = triage.fit_sequence(rule, pooled[:30], seq_truth[:30])  # too few malignant lesions: keep the photo rule
    assert none is None and few.for_sequences() is few


def test_a_sequence_threshold_is_never_above_the_photo_threshold() -> None:
    """Sequences whose pooled probabilities spread wider than photos' would get a higher threshold of
    their own; it is capped at the photo threshold, so more photos never clear a lesion one photo flags."""
    rule, pooled, seq_truth = _photo_rule_and_sequences(3, malignant_photos=(3, 3), malignant_sequences=(9, 1),
                                                        benign_sequences=(1, 9))
    assert triage.threshold_for(pooled, seq_truth, 0.9) > rule.threshold  # uncapped, sequences would be judged laxer
    fitted, figures = triage.fit_sequence(rule, pooled, seq_truth)
    assert fitted.for_sequences().threshold == rule.threshold and figures["threshold"] == rule.threshold
    assert figures["sensitivity"] >= 0.9


def test_specificity_by_confirmation_splits_the_benign_photos_and_ignores_malignant_ones() -> None:
    truth = np.array([True] * 4 + [False] * 10)
    p = np.r_[[0.9, 0.8, 0.7, 0.1], [0.05] * 6, [0.6, 0.6, 0.1, 0.1]]
    kinds = np.array(["histo"] * 4 + ["follow_up"] * 6 + ["histo"] * 4)
    groups = np.r_[np.arange(4), np.arange(10, 16), [20, 20, 21, 21]]
    by = triage.specificity_by(p, truth, 0.5, kinds, groups)
    assert set(by) == {"histo", "follow_up"}
    assert by["follow_up"]["n"] == 6 and by["follow_up"]["specificity"] == 1.0
    assert by["histo"]["n"] == 4 and by["histo"]["specificity"] == 0.5  # the malignant histo photos are not counted
    lo, hi = by["histo"]["specificity_interval"]
    assert lo == 0.0 and hi == 1.0  # two lesions of two photos: a resample holds one, the other or both
    overall = triage.operating_point(p, truth, 0.5, groups)["specificity"]
    assert overall == pytest.approx((6 + 2) / 10)
