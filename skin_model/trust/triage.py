"""Malignancy triage: should this lesion be seen by a dermatologist?

The one question a person with a worrying mole has is answered by an operating point, as
dermatology AI is judged (Haenssle et al., Annals of Oncology 2018): the probability that the
lesion is malignant (the sum of the calibrated probabilities of the malignant classes, akiec +
bcc + mel) against a threshold chosen on the lesion-grouped validation split so that at least
`TARGET_SENSITIVITY` of malignant photos are flagged, in every framing users send (full frame,
centre crop, zoom), with `SENSITIVITY_CONFIDENCE` confidence: a threshold set exactly at the target
on one split falls short of it on new photos about half the time. The sensitivity and specificity
it was chosen for, with lesion-bootstrap intervals, travel in the model card.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from skin_model.metrics import lesion_resamples

TARGET_SENSITIVITY = 0.90
SENSITIVITY_CONFIDENCE = 0.95


@dataclass(frozen=True)
class TriageRule:
    """Flag "see a dermatologist" when the malignant probability is at least `threshold`.

    `sensitivity` and `specificity` are what validation photos (full frame) gave at the
    threshold, with their 95% lesion-bootstrap intervals; `malignant` the classes summed;
    `basis` what the threshold was chosen on; `confidence` the share of lesion-bootstrap
    resamples of validation in which sensitivity reached the target at the threshold (None: the
    point estimate reached it, as in cards fitted before 2026-12-05). `sequence` is the rule for
    a sequence of photos of one lesion, chosen on validation lesions' sequences (pooling changes
    the probabilities' spread, so a photo's threshold does not keep a sequence's sensitivity)."""

    threshold: float
    malignant: tuple[str, ...]
    target_sensitivity: float = TARGET_SENSITIVITY
    sensitivity: float | None = None
    specificity: float | None = None
    sensitivity_interval: tuple[float, float] | None = None
    specificity_interval: tuple[float, float] | None = None
    basis: str = "validation photos"
    sequence: TriageRule | None = None
    confidence: float | None = None

    def for_sequences(self) -> TriageRule:
        """The rule a sequence of photos of one lesion is judged by (this one when none was fitted)."""
        return self.sequence or self

    def malignant_probability(self, probs: Mapping[str, float]) -> float:
        """P(akiec) + P(bcc) + P(mel) of one photo or sequence (clipped to 1 against rounding)."""
        return min(1.0, float(sum(probs[c] for c in self.malignant)))

    def refer(self, probs: Mapping[str, float]) -> bool:
        return self.malignant_probability(probs) >= self.threshold

    def operating_point(self) -> str:
        """The operating point in words, as every output quotes it."""
        if self.sensitivity is None or self.specificity is None:
            return f"threshold {self.threshold:.1%} of malignant probability"
        return (f"chosen on {self.basis} for {self.aim()}: "
                f"sensitivity {self.sensitivity:.0%}, specificity {self.specificity:.0%}")

    def aim(self) -> str:
        """What the threshold was chosen to keep, in the words every output uses."""
        confidence = f" with {self.confidence:.0%} confidence" if self.confidence is not None else ""
        return f"sensitivity \u2265 {self.target_sensitivity:.0%}{confidence}"

    def to_json(self) -> dict[str, Any]:
        out = {"threshold": self.threshold, "malignant": list(self.malignant),
               "target_sensitivity": self.target_sensitivity, "sensitivity": self.sensitivity,
               "specificity": self.specificity,
               "sensitivity_interval": list(self.sensitivity_interval) if self.sensitivity_interval else None,
               "specificity_interval": list(self.specificity_interval) if self.specificity_interval else None,
               "basis": self.basis}
        if self.confidence is not None:
            out["confidence"] = self.confidence
        if self.sequence is not None:
            out["sequence"] = self.sequence.to_json()
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> TriageRule:
        def pair(v: Any) -> tuple[float, float] | None:
            return (float(v[0]), float(v[1])) if v else None

        return cls(threshold=float(raw["threshold"]), malignant=tuple(raw["malignant"]),
                   target_sensitivity=float(raw.get("target_sensitivity", TARGET_SENSITIVITY)),
                   sensitivity=raw.get("sensitivity"), specificity=raw.get("specificity"),
                   sensitivity_interval=pair(raw.get("sensitivity_interval")),
                   specificity_interval=pair(raw.get("specificity_interval")),
                   basis=str(raw.get("basis", "validation photos")),
                   confidence=float(raw["confidence"]) if raw.get("confidence") is not None else None,
                   sequence=cls.from_json(raw["sequence"]) if raw.get("sequence") else None)


def malignant_probability(probs: np.ndarray, classes: Sequence[str], malignant: Sequence[str]) -> np.ndarray:
    """The malignant probability of each row of an (N, classes) probability array."""
    cols = [list(classes).index(c) for c in malignant]
    return np.clip(np.asarray(probs, dtype=np.float64)[:, cols].sum(1), 0.0, 1.0)


def is_malignant(labels: np.ndarray, classes: Sequence[str], malignant: Sequence[str]) -> np.ndarray:
    return np.isin(np.asarray(labels), [list(classes).index(c) for c in malignant])


def rates(flag: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Sensitivity and specificity of a flag against the truth (NaN where a side is empty)."""
    pos, neg = truth.sum(), (~truth).sum()
    sens = float((flag & truth).sum() / pos) if pos else math.nan
    spec = float((~flag & ~truth).sum() / neg) if neg else math.nan
    return sens, spec


def threshold_for(p_malignant: np.ndarray, truth: np.ndarray, target: float = TARGET_SENSITIVITY) -> float:
    """A threshold that flags the fewest rows while still flagging at least `target` of the
    malignant ones, placed halfway between the lowest score it flags and the highest it does not.

    The scores a refit computes differ in the last bits from one CPU to another; a threshold equal to
    one validation photo's score would flag or miss that photo depending on the machine, and with it
    the sensitivity the card quotes. Halfway, every validation photo is on the same side everywhere."""
    p, truth = np.asarray(p_malignant, dtype=np.float64), np.asarray(truth, dtype=bool)
    pos = np.sort(p[truth])[::-1]
    if len(pos) == 0:
        raise ValueError("no malignant photos to choose a triage threshold on")
    return _below(p, pos[max(0, math.ceil(target * len(pos)) - 1)])


def _below(p: np.ndarray, lowest_flagged: float) -> float:
    """A threshold flagging `lowest_flagged` and every higher score, halfway to the next lower score."""
    below = p[p < lowest_flagged]
    return float((lowest_flagged + below.max()) / 2) if len(below) else float(lowest_flagged)


def threshold_with_confidence(p_malignant: np.ndarray, truth: np.ndarray, groups: np.ndarray | None = None,
                              target: float = TARGET_SENSITIVITY, confidence: float = SENSITIVITY_CONFIDENCE,
                              resamples: int = 1000, seed: int = 0) -> float:
    """The highest threshold (placed as `threshold_for` places it) whose sensitivity reaches `target`
    in at least `confidence` of the resamples of whole lesions (`groups`: one id per row): the
    one-sided lesion-bootstrap lower bound of the sensitivity is the target or more.

    A threshold at the target itself flags the target share of these malignant photos, and new
    photos' sensitivity falls on either side of it about equally often; the margin this adds
    shrinks as the validation split holds more malignant lesions."""
    p, truth = np.asarray(p_malignant, dtype=np.float64), np.asarray(truth, dtype=bool)
    if not truth.any():
        raise ValueError("no malignant photos to choose a triage threshold on")
    order = np.flatnonzero(truth)[np.argsort(-p[truth], kind="stable")]
    counts = np.stack([np.bincount(rows, minlength=len(p))[order]
                       for rows in lesion_resamples(groups, len(p), resamples, seed)]).astype(np.float64)
    counts = counts[counts.sum(1) > 0]
    flagged = np.cumsum(counts, 1) / counts.sum(1, keepdims=True)
    lower = np.quantile(flagged, 1 - confidence, axis=0)
    # flagging every malignant photo reaches any target in every resample, so some count always does
    return _below(p, p[order[int(np.argmax(lower >= target - 1e-12))]])


def operating_point(p_malignant: np.ndarray, truth: np.ndarray, threshold: float, groups: np.ndarray | None = None,
                    resamples: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Sensitivity and specificity at `threshold`, with percentile intervals from resampling
    whole lesions (`groups`: one id per row), so photos of one lesion are not counted as
    independent evidence."""
    p, truth = np.asarray(p_malignant, dtype=np.float64), np.asarray(truth, dtype=bool)
    flag = p >= threshold
    sens, spec = rates(flag, truth)
    arr = np.array([rates(flag[rows], truth[rows]) for rows in lesion_resamples(groups, len(p), resamples, seed)])
    tail = (1 - level) / 2 * 100
    interval = [np.nanpercentile(arr[:, i], [tail, 100 - tail]).tolist() if not np.isnan(arr[:, i]).all() else None
                for i in range(2)]
    return {"threshold": float(threshold), "n": int(len(p)), "n_malignant": int(truth.sum()),
            "sensitivity": sens, "specificity": spec, "sensitivity_interval": interval[0],
            "specificity_interval": interval[1], "flagged": float(flag.mean()) if len(p) else math.nan}


def specificity_by(p_malignant: np.ndarray, truth: np.ndarray, threshold: float, kinds: np.ndarray,
                   groups: np.ndarray | None = None) -> dict[str, dict[str, Any]]:
    """Specificity at `threshold` among the benign rows of each kind (HAM10000's `dx_type`: how the
    diagnosis was confirmed), with lesion-bootstrap intervals.

    One specificity over all benign photos mixes nevi that were only followed up, which the flag almost
    never fires for, with benign lesions that looked suspicious enough to be cut out and read by a
    pathologist; the clinician deciding whether to trust the flag needs the second figure on its own."""
    p, truth = np.asarray(p_malignant, dtype=np.float64), np.asarray(truth, dtype=bool)
    kinds = np.asarray(kinds).astype(str)
    ids = np.arange(len(p)) if groups is None else np.asarray(groups)
    out = {}
    for kind in np.unique(kinds[~truth]).tolist():
        rows = ~truth & (kinds == kind)
        op = operating_point(p[rows], truth[rows], threshold, ids[rows])
        out[kind] = {"n": op["n"], "specificity": op["specificity"], "specificity_interval": op["specificity_interval"]}
    return out


def fit(p_by_framing: Mapping[str, np.ndarray], truth: np.ndarray, groups: np.ndarray, malignant: Sequence[str],
        target: float = TARGET_SENSITIVITY, primary: str = "full",
        confidence: float = SENSITIVITY_CONFIDENCE) -> tuple[TriageRule, dict[str, Any]]:
    """Choose the threshold on validation: the highest at which every framing keeps sensitivity at
    `target` or more with `confidence` (`threshold_with_confidence`), so that a user's tight crop
    does not lose sensitivity either. Returns the rule and the validation figures of each framing."""
    threshold = min(threshold_with_confidence(p, truth, groups, target, confidence) for p in p_by_framing.values())
    figures = {name: operating_point(p, truth, threshold, groups) for name, p in p_by_framing.items()}
    return replace(_rule(threshold, figures[primary], malignant, target, "validation photos"),
                   confidence=confidence), figures


def _rule(threshold: float, figures: Mapping[str, Any], malignant: Sequence[str], target: float,
          basis: str) -> TriageRule:
    return TriageRule(threshold=threshold, malignant=tuple(malignant), target_sensitivity=target,
                      sensitivity=figures["sensitivity"], specificity=figures["specificity"],
                      sensitivity_interval=tuple(figures["sensitivity_interval"]) if figures["sensitivity_interval"] else None,
                      specificity_interval=tuple(figures["specificity_interval"]) if figures["specificity_interval"] else None,
                      basis=basis)


MIN_SEQUENCE_POSITIVES = 20


def fit_sequence(rule: TriageRule, p_sequence: np.ndarray, truth: np.ndarray,
                 min_positives: int = MIN_SEQUENCE_POSITIVES) -> tuple[TriageRule, dict[str, Any] | None]:
    """Add the sequence rule: the threshold flagging the fewest validation lesions' sequences while
    still flagging the target share of the malignant ones (one row per lesion with two or more
    photos), and never above the photo threshold: a lesion whose pooled photos would flag it as one
    photo is not cleared because more photos were taken (with about a hundred malignant lesions a
    fitted threshold is noisy, and an error upwards costs sensitivity). With fewer than
    `min_positives` malignant lesions a threshold would be noise: sequences then keep the photo rule."""
    truth = np.asarray(truth, dtype=bool)
    if truth.sum() < min_positives:
        return rule, None
    threshold = min(threshold_for(p_sequence, truth, rule.target_sensitivity), rule.threshold)
    figures = operating_point(p_sequence, truth, threshold)
    sequence = _rule(threshold, figures, rule.malignant, rule.target_sensitivity,
                     "validation lesions' sequences of 2+ photos")
    return replace(rule, sequence=sequence), figures
