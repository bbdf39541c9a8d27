"""Choose when to answer "inconclusive": a confidence threshold picked on
validation, with the risk-coverage curve that justifies it."""

from __future__ import annotations

from typing import Any

import numpy as np

from skin_model.metrics import classification_report


def risk_coverage(probs: np.ndarray, labels: np.ndarray, points: int = 21) -> list[dict[str, float]]:
    """Balanced accuracy and accuracy on the photos answered, at each coverage level."""
    conf = probs.max(1)
    order = np.argsort(-conf)
    rows = []
    for coverage in np.linspace(0.05, 1.0, points - 1).tolist() + [1.0]:
        k = max(1, int(round(coverage * len(order))))
        keep = order[:k]
        rep = classification_report(probs[keep], labels[keep])
        rows.append({"coverage": k / len(order), "threshold": float(conf[order[k - 1]]),
                     "balanced_accuracy": rep["balanced_accuracy"], "accuracy": rep["accuracy"]})
    return sorted({r["coverage"]: r for r in rows}.values(), key=lambda r: r["coverage"])


def choose_threshold(probs: np.ndarray, labels: np.ndarray, target_balanced_accuracy: float = 0.90,
                     min_coverage: float = 0.70) -> dict[str, Any]:
    """The lowest confidence threshold whose answered photos reach the target balanced
    accuracy; when none does, the threshold answering `min_coverage` of the photos."""
    conf = probs.max(1)
    candidates = np.unique(np.quantile(conf, np.linspace(0.0, 0.6, 61)))
    chosen = None
    for t in candidates:
        keep = conf >= t
        if keep.sum() < 20:
            break
        rep = classification_report(probs[keep], labels[keep])
        if rep["balanced_accuracy"] >= target_balanced_accuracy:
            chosen = (float(t), "target reached")
            break
    if chosen is None:
        chosen = (float(np.quantile(conf, 1 - min_coverage)), f"target not reached; answering {min_coverage:.0%}")
    keep = conf >= chosen[0]
    rep = classification_report(probs[keep], labels[keep])
    return {"threshold": chosen[0], "rule": chosen[1], "val_coverage": float(keep.mean()),
            "val_balanced_accuracy_answered": rep["balanced_accuracy"], "val_accuracy_answered": rep["accuracy"]}


def answered_report(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    """Coverage and metrics on the answered photos at a fixed threshold (for test)."""
    keep = probs.max(1) >= threshold
    rep = classification_report(probs[keep], labels[keep]) if keep.any() else None
    return {"threshold": threshold, "coverage": float(keep.mean()),
            "balanced_accuracy_answered": rep["balanced_accuracy"] if rep else float("nan"),
            "accuracy_answered": rep["accuracy"] if rep else float("nan")}
