"""Post-hoc calibration fitted on validation: a class bias (prior correction for
balanced accuracy), a temperature (for honest probabilities), and a monotone map of
the top class's probability (top-label isotonic calibration) that removes the
miscalibration a single temperature leaves, without changing any decision."""

from __future__ import annotations

import numpy as np
import torch

from skin_model.constants import CLASSES

CONFIDENCE_KNOTS = 33


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
    from skin_model.metrics import classification_report  # fit time only: applying calibration needs no pandas

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


def confidence_grid(knots: int = CONFIDENCE_KNOTS) -> torch.Tensor:
    """Where the confidence map is tabulated: the top class's probability runs from 1/7 to 1."""
    return torch.linspace(1.0 / len(CLASSES), 1.0, knots)


def fit_confidence_map(probs: np.ndarray, labels: np.ndarray, knots: int = CONFIDENCE_KNOTS,
                       identity_share: float = 0.05) -> np.ndarray:
    """Observed accuracy as a monotone function of the top class's probability
    (isotonic regression), tabulated on `confidence_grid`. A temperature can only
    stretch all confidences alike; this follows where the model is over- or
    under-confident (top-label calibration, Gupta & Ramdas 2022). A small share of the
    identity keeps the map strictly increasing, so a more confident photo never shows a
    lower or equal probability (on validation it cost no calibration)."""
    from sklearn.isotonic import IsotonicRegression

    probs = np.asarray(probs, dtype=np.float64)
    correct = (probs.argmax(1) == np.asarray(labels)).astype(np.float64)
    iso = IsotonicRegression(y_min=1.0 / len(CLASSES), y_max=1.0, out_of_bounds="clip")
    iso.fit(probs.max(1), correct)
    grid = confidence_grid(knots).double().numpy()
    return ((1 - identity_share) * iso.predict(grid) + identity_share * grid).astype(np.float32)


def remap_confidence(logits: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Probabilities from calibrated logits (..., 7) whose top class gets `table`'s
    value at its probability (linear between knots); the other classes share the rest
    in their softmax proportions. The top class stays on top, so decisions do not change."""
    logits = logits.float()
    table = table.to(logits.device, logits.dtype)
    probs = logits.softmax(-1)
    conf, top = probs.max(-1)
    k = table.numel()
    lo = 1.0 / logits.shape[-1]
    pos = ((conf - lo) / (1.0 - lo)).clamp(0.0, 1.0) * (k - 1)
    left = pos.floor().clamp(max=k - 2).long()
    frac = pos - left
    new = table[left] * (1 - frac) + table[left + 1] * frac
    is_top = torch.nn.functional.one_hot(top, logits.shape[-1]).bool()
    rest = logits.masked_fill(is_top, float("-inf")).softmax(-1)
    runner_up = rest.max(-1).values
    new = torch.maximum(new, runner_up / (1 + runner_up) + 1e-6).clamp(max=1.0)
    return torch.where(is_top, new.unsqueeze(-1), (1 - new).unsqueeze(-1) * rest)
