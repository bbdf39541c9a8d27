"""The heatmap methods the app offers, which one it shows first, and how each turns the CAM layer's
activations and gradients into a map: torch-free, so heatmaps are drawn from the served graph's outputs
(ONNX Runtime) without torch, with pytorch-grad-cam's own formulas (explain/cam.py runs pytorch-grad-cam
itself, for evaluation, the torch engine and the tests that hold the two equal)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from skin_model.model.card import ModelCard

METHOD_NAMES: tuple[str, ...] = ("Grad-CAM", "Grad-CAM++", "LayerCAM", "EigenCAM (gradient-free)")
DEFAULT_METHOD = "Grad-CAM"
# Shows the photo's dominant component whatever the class asked for: offered, never the default.
CLASS_AGNOSTIC = frozenset({"EigenCAM (gradient-free)"})


def default_method(card: ModelCard | None) -> str:
    """The class-discriminative CAM method whose heatmaps fell inside the lesion most often
    on test (pointing game in the model card), else Grad-CAM. The app's heatmap answers
    "what made the model say this class", which a class-agnostic method cannot."""
    scores = card.heatmap_scores() if card is not None else {}
    measured = {m: v["pointing_game"] for m, v in scores.items() if m in METHOD_NAMES and m not in CLASS_AGNOSTIC}
    return max(measured, key=measured.get) if measured else DEFAULT_METHOD


def _weighted_sum(weights: np.ndarray, activations: np.ndarray) -> np.ndarray:
    return (weights[:, None, None] * activations).sum(axis=0)


def _grad_cam_plus_plus(activations: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """Chattopadhyay et al. 2018, eq. 19, with the ReLU of eq. 7, as pytorch-grad-cam computes it."""
    power_2 = grads ** 2
    power_3 = power_2 * grads
    sums = activations.sum(axis=(1, 2))[:, None, None]
    aij = np.where(grads != 0, power_2 / (2 * power_2 + sums * power_3 + 0.000001), 0)
    return _weighted_sum((np.maximum(grads, 0) * aij).sum(axis=(1, 2)), activations)


def _first_component(activations: np.ndarray) -> np.ndarray:
    """The activations projected on their first principal component (EigenCAM, Muhammad & Yeasin 2020)."""
    flat = np.nan_to_num(activations, nan=0.0).reshape(activations.shape[0], -1).T
    flat = flat - flat.mean(axis=0)
    _, _, vt = np.linalg.svd(flat, full_matrices=True)
    return (flat @ vt[0, :]).reshape(activations.shape[1:])


RAW_MAPS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "Grad-CAM": lambda a, g: _weighted_sum(g.mean(axis=(1, 2)), a),
    "Grad-CAM++": _grad_cam_plus_plus,
    "LayerCAM": lambda a, g: (np.maximum(g, 0) * a).sum(axis=0),
    "EigenCAM (gradient-free)": lambda a, g: _first_component(a),
}


def _scaled(cam: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    import cv2  # pytorch-grad-cam resizes with OpenCV; loaded once a heatmap is drawn, not for a prediction

    cam = cam - np.min(cam)
    cam = cam / (1e-7 + np.max(cam))
    return cv2.resize(np.float32(cam), size) if size is not None else np.float32(cam)


def heatmap(method: str, activations: np.ndarray, gradients: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One photo's CAM in [0, 1] at `size` (width, height) from the CAM layer's output (C, h, w) and the
    gradient of the explained logit with respect to it (C, h, w): pytorch-grad-cam's formulas, scaling
    and resizing, step for step, on arrays the served graph gives (tests hold it to pytorch-grad-cam's own
    heatmaps), so heatmaps need neither torch nor a second forward."""
    if method not in RAW_MAPS:
        raise ValueError(f"unknown CAM method {method!r}; choose from {', '.join(METHOD_NAMES)}")
    activations, gradients = np.float32(activations), np.float32(gradients)
    layer = _scaled(np.maximum(RAW_MAPS[method](activations, gradients), 0), size)
    return np.nan_to_num(_scaled(np.maximum(layer, 0)))
