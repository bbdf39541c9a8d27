"""What an engine returns for a batch of photos, and what the predictor asks of an engine: the
contract `runtime.OnnxEngine` (ONNX Runtime) and `engine.TorchEngine` (torch) both keep."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Protocol

import numpy as np


@dataclass
class Scores:
    """One forward's outputs for N photos, as arrays: pooled features (N, F), raw photo logits
    (N, 7), the probabilities a user is shown (N, 7), and the distances (N,) of the features and
    of the middle block's texture statistics to real photos (the out-of-distribution check)."""

    features: np.ndarray
    logits: np.ndarray
    shown: np.ndarray
    feature_distance: np.ndarray
    texture_distance: np.ndarray
    # what Grad-CAM reads, when asked for: the CAM layer's output (N, C, h, w) and the gradient of every
    # class's calibrated logit with respect to it (N, 7, C, h, w)
    cam_activations: np.ndarray | None = None
    cam_gradients: np.ndarray | None = None

    @classmethod
    def concat(cls, parts: list[Scores]) -> Scores:
        return cls(*(None if getattr(parts[0], f.name) is None else np.concatenate([getattr(p, f.name) for p in parts])
                     for f in fields(cls)))


class Engine(Protocol):
    """What the predictor needs from an engine (ONNX Runtime here, torch in engine.py)."""

    name: str

    def score(self, pixels: np.ndarray, meta: np.ndarray, heatmaps: bool = False) -> Scores: ...

    @property
    def serves_heatmaps(self) -> bool: ...

    def sequence(self, features: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...
