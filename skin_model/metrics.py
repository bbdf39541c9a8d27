"""Classification metrics without extra dependencies: balanced accuracy, macro
F1, one-vs-rest AUC, expected calibration error and the confusion matrix."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from skin_model.constants import CLASSES


def confusion(labels: np.ndarray, preds: np.ndarray, n: int = len(CLASSES)) -> np.ndarray:
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (labels, preds), 1)
    return cm


def auc_ovr(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney AUC of one class against the rest (ties count half)."""
    pos = labels.astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(np.asarray(scores), return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse.reshape(-1)]  # tied scores share their average rank
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE with equal-width confidence bins."""
    conf = probs.max(1)
    correct = (probs.argmax(1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ece += inside.mean() * abs(conf[inside].mean() - correct[inside].mean())
    return float(ece)


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Per-bin confidence and accuracy, for a reliability diagram."""
    conf = probs.max(1)
    correct = probs.argmax(1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            rows.append({"lo": float(lo), "hi": float(hi), "count": int(inside.sum()),
                         "confidence": float(conf[inside].mean()), "accuracy": float(correct[inside].mean())})
    return rows


def classification_report(probs: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """All the figures the model card and `skin-model evaluate` show."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    preds = probs.argmax(1)
    cm = confusion(labels, preds)
    support = cm.sum(1)
    predicted = cm.sum(0)
    tp = np.diag(cm)
    recall = np.where(support > 0, tp / np.maximum(support, 1), np.nan)
    precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    present = support > 0
    aucs = [auc_ovr(labels == i, probs[:, i]) for i in range(len(CLASSES))]
    return {
        "n": int(len(labels)),
        "accuracy": float((preds == labels).mean()) if len(labels) else float("nan"),
        "balanced_accuracy": float(np.nanmean(recall[present])) if present.any() else float("nan"),
        "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
        "macro_auc": float(np.nanmean(aucs)),
        "ece": expected_calibration_error(probs, labels),
        "per_class": {
            c: {"recall": float(recall[i]), "precision": float(precision[i]), "auc": aucs[i], "support": int(support[i])}
            for i, c in enumerate(CLASSES)
        },
        "confusion_matrix": cm.tolist(),
    }


INTERVAL_METRICS = ("balanced_accuracy", "accuracy", "melanoma_recall")
# The columns of every performance table (CLI, model card page, README) and the headline figures.
TABLE_METRICS = ("n", "accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "ece")
HEADLINE_METRICS = ("accuracy", "balanced_accuracy", "macro_auc", "ece")
_MEL = CLASSES.index("mel")


def recall_scores(labels: np.ndarray, preds: np.ndarray, n: int = len(CLASSES)) -> tuple[float, float, float]:
    """(balanced accuracy, accuracy, melanoma recall), fast enough to call thousands of times."""
    support = np.bincount(labels, minlength=n)
    hits = np.bincount(labels[preds == labels], minlength=n)
    present = support > 0
    mel = hits[_MEL] / support[_MEL] if support[_MEL] else np.nan
    return float((hits[present] / support[present]).mean()), float((preds == labels).mean()), float(mel)


# How often, over paired resamples of lesions, one predictor must beat another for its lead to count
# as established rather than noise (the sequence pooling's choice, `skin-model compare`).
EVIDENCE = 0.95


def lesion_resamples(groups: np.ndarray | None, n_rows: int, resamples: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Row indices of `resamples` bootstrap resamples that draw whole lesions (`groups`: one id per
    row; each row its own unit when None), so photos of one lesion never count as independent evidence."""
    if groups is None:
        ids = np.arange(n_rows)
    else:  # lesions numbered in the order they first appear, so a seed draws the same lesions as it always has
        _, first, inverse = np.unique(np.asarray(groups), return_index=True, return_inverse=True)
        ids = np.argsort(np.argsort(first))[inverse.reshape(-1)]
    order = np.argsort(ids, kind="stable")
    members = np.split(order, np.flatnonzero(np.diff(ids[order])) + 1)
    rng = np.random.default_rng(seed)
    for _ in range(resamples):
        yield np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])


def bootstrap_intervals(labels: np.ndarray, predictions: dict[str, np.ndarray], groups: np.ndarray | None = None,
                        resamples: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Percentile intervals of balanced accuracy, accuracy and melanoma recall, resampling whole lesions
    (`groups`: one id per row; rows are independent when omitted) so that photos of one
    lesion never count as independent evidence. With two or more predictors the same
    resamples also give the interval of each one's difference from the first, and how
    often it came out ahead: a difference whose interval spans zero is not established."""
    labels = np.asarray(labels, dtype=np.int64)
    preds = {k: np.asarray(v).argmax(1) if np.ndim(v) == 2 else np.asarray(v) for k, v in predictions.items()}
    draws = {k: [] for k in preds}
    for rows in lesion_resamples(groups, len(labels), resamples, seed):
        for k, p in preds.items():
            draws[k].append(recall_scores(labels[rows], p[rows]))
    tail = (1 - level) / 2 * 100
    units = len(labels) if groups is None else len(np.unique(np.asarray(groups)))
    out: dict[str, Any] = {"resamples": resamples, "level": level, "units": units}
    first = next(iter(preds))
    for k, d in draws.items():
        arr = np.array(d)
        entry = {m: np.nanpercentile(arr[:, i], [tail, 100 - tail]).tolist() for i, m in enumerate(INTERVAL_METRICS)
                 if not np.isnan(arr[:, i]).all()}
        if k != first:
            diff = arr[:, 0] - np.array(draws[first])[:, 0]
            entry["balanced_accuracy_minus_" + first] = np.percentile(diff, [tail, 100 - tail]).tolist()
            entry["share_of_resamples_ahead"] = float((diff > 0).mean())
        out[k] = entry
    return out
