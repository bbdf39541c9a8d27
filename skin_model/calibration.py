"""Post-hoc calibration fitted on validation: a class bias (prior correction for
balanced accuracy) and a temperature (for honest probabilities)."""

from __future__ import annotations

import numpy as np
import torch

from .metrics import classification_report


def fit_temperature(logits: np.ndarray, labels: np.ndarray, bias: np.ndarray | None = None) -> float:
    """Temperature T minimising the NLL of softmax(logits / T + bias)."""
    x = torch.tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.tensor(np.asarray(labels), dtype=torch.long)
    b = torch.zeros(x.shape[1], dtype=torch.float64) if bias is None else torch.as_tensor(bias, dtype=torch.float64)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x / log_t.exp() + b, y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def fit_calibration(logits: np.ndarray, labels: np.ndarray, class_counts: np.ndarray,
                    taus: np.ndarray | None = None) -> dict[str, object]:
    """Choose a prior correction -tau*log(freq) that maximises balanced accuracy plus
    accuracy on validation, then the temperature that makes its probabilities honest."""
    taus = np.round(np.linspace(-0.5, 1.0, 16), 3) if taus is None else taus
    log_freq = np.log(np.maximum(class_counts, 1) / np.sum(class_counts))
    best: dict[str, object] | None = None
    for tau in taus:
        bias = -tau * (log_freq - log_freq.mean())
        temperature = fit_temperature(logits, labels, bias)
        report = classification_report(softmax(logits / temperature + bias), labels)
        score = report["balanced_accuracy"] + report["accuracy"]
        if best is None or score > best["score"]:
            best = {"tau": float(tau), "bias": bias.astype(np.float32), "temperature": temperature,
                    "score": score, "val_balanced_accuracy": report["balanced_accuracy"],
                    "val_accuracy": report["accuracy"], "val_ece": report["ece"]}
    assert best is not None
    return best
