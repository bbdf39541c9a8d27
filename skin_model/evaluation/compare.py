"""Is a candidate model better than the shipped one beyond resampling noise?

A ship decision compares two models on the same validation photos. A lead of a few thousandths in
one number is what resampling a few hundred lesions moves by chance, so each measure is recomputed
for both models on the same 1,000 resamples of whole lesions (a paired bootstrap), and the
comparison reports how often the candidate came out ahead, with the interval of the difference. The
measures are those the product is judged by: balanced accuracy and melanoma recall of the top class,
malignant-versus-benign AUC (the triage's ranking), and the triage's sensitivity and specificity at
each model's own threshold, in every framing users send."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from skin_model.constants import CLASSES, MALIGNANT
from skin_model.data.transforms import VARIANTS
from skin_model.evaluation.evaluate import calibrated_probs, photo_outputs
from skin_model.metrics import EVIDENCE, auc_ovr, lesion_resamples, recall_scores
from skin_model.model.card import ModelCard
from skin_model.model.network import SkinLesionNet
from skin_model.trust import triage

MEASURES: tuple[str, ...] = ("balanced_accuracy", "melanoma_recall", "malignant_auc", "triage_sensitivity",
                             "triage_specificity")
_MALIGNANT = tuple(sorted(MALIGNANT))


@dataclass(frozen=True)
class Outputs:
    """One model's shown probabilities for the same photos (rows) in one framing, and the triage
    threshold of its model card."""

    probs: np.ndarray
    threshold: float


def outputs_of(model: SkinLesionNet, card: ModelCard, photos: list[Image.Image]) -> dict[str, Outputs]:
    """What a model shows for each photo in every framing (full, centre crop, zoom), through the
    same engine functions the app uses, with the triage threshold of its card."""
    if card.trust.triage is None:
        raise ValueError("these weights have no triage threshold yet: run skin-model calibrate on them first")
    outputs = {}
    for name, variant in VARIANTS.items():
        _, logits = photo_outputs(model, [variant(p) for p in photos])
        outputs[name] = Outputs(calibrated_probs(model, logits, "photo"), card.trust.triage.threshold)
    return outputs


def _measures(labels: np.ndarray, truth: np.ndarray, top: np.ndarray, malignant: np.ndarray,
              threshold: float) -> np.ndarray:
    """The `MEASURES` of one model on some rows: `top` its top class, `malignant` its triage score."""
    balanced, _, melanoma = recall_scores(labels, top)
    return np.array([balanced, melanoma, auc_ovr(truth, malignant), *triage.rates(malignant >= threshold, truth)])


def paired_comparison(labels: np.ndarray, groups: np.ndarray, framings: Mapping[str, tuple[Outputs, Outputs]],
                      resamples: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Each measure of the reference (first) and candidate (second) model in each framing, the
    interval of candidate minus reference over resamples of whole lesions (`groups`, one id per
    row), and the share of resamples in which the candidate was ahead. Both models are scored on
    the very same resamples, so what they share (which lesions were drawn) cancels out."""
    labels = np.asarray(labels, dtype=np.int64)
    truth = triage.is_malignant(labels, CLASSES, _MALIGNANT)
    # Each model's top class and triage score, computed once; the resamples only index them.
    scored = {name: [(o.probs.argmax(1), triage.malignant_probability(o.probs, CLASSES, _MALIGNANT), o.threshold)
                     for o in pair] for name, pair in framings.items()}
    draws: dict[str, list[np.ndarray]] = {name: [] for name in framings}
    for rows in lesion_resamples(groups, len(labels), resamples, seed):
        for name, ((top_a, mal_a, t_a), (top_b, mal_b, t_b)) in scored.items():
            draws[name].append(_measures(labels[rows], truth[rows], top_b[rows], mal_b[rows], t_b)
                               - _measures(labels[rows], truth[rows], top_a[rows], mal_a[rows], t_a))
    tail = (1 - level) / 2 * 100
    report: dict[str, Any] = {"resamples": resamples, "level": level, "lesions": len(pd.unique(np.asarray(groups))),
                              "framings": {}}
    for name, pair in scored.items():
        whole = [_measures(labels, truth, *model) for model in pair]
        diff = np.array(draws[name])
        report["framings"][name] = {
            measure: {"reference": float(whole[0][i]), "candidate": float(whole[1][i]),
                      "difference_interval": (np.nanpercentile(diff[:, i], [tail, 100 - tail]).tolist()
                                              if np.isfinite(diff[:, i]).any() else [np.nan, np.nan]),
                      "share_ahead": float((diff[:, i] > 0).mean())}
            for i, measure in enumerate(MEASURES)}
    return report


def format_comparison(report: Mapping[str, Any], evidence: float = EVIDENCE) -> str:
    """The comparison as a plain table; a lead is called established only when the candidate was
    ahead in at least `evidence` of the resamples."""
    lines = [f"paired bootstrap over {report['lesions']} lesions, {report['resamples']} resamples; "
             f"'established' = candidate ahead in at least {evidence:.0%} of them",
             f"{'framing':12s} {'measure':20s} {'reference':>9s} {'candidate':>9s} {'difference (95%)':>20s} "
             f"{'ahead':>6s}"]
    for name, measures in report["framings"].items():
        for measure, m in measures.items():
            lo, hi = m["difference_interval"]
            verdict = "  established" if m["share_ahead"] >= evidence else ""
            lines.append(f"{name:12s} {measure:20s} {m['reference']:9.4f} {m['candidate']:9.4f} "
                         f"{f'{lo:+.4f} to {hi:+.4f}':>20s} {m['share_ahead']:6.0%}{verdict}")
    return "\n".join(lines)
