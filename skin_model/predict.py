"""Prediction API: load the shipped weights once and score photos of one lesion.

    >>> predictor = load_predictor()
    >>> result = predictor.predict([photo_2019, photo_2021])
    >>> result.photos[0]["mel"], result.sequence["mel"]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from . import checkpoint
from .constants import CLASSES, MAX_SEQUENCE
from .data import encode_metadata
from .devices import describe, select_device
from .images import ImageSource, load_image
from .model import SkinLesionNet
from .presets import to_batch

DEFAULT_INCONCLUSIVE_BELOW = 0.5


@dataclass
class Prediction:
    """Per-photo probabilities (time order) and, for two or more photos, the sequence's."""

    photos: list[dict[str, float]]
    sequence: dict[str, float] | None
    inconclusive_below: float = DEFAULT_INCONCLUSIVE_BELOW
    classes: tuple[str, ...] = field(default=CLASSES)

    @staticmethod
    def top(probs: dict[str, float]) -> tuple[str, float]:
        code = max(probs, key=probs.__getitem__)
        return code, probs[code]

    def is_inconclusive(self, probs: dict[str, float]) -> bool:
        """True when the top class is below the confidence threshold chosen for the model."""
        return self.top(probs)[1] < self.inconclusive_below

    def to_dict(self) -> dict[str, Any]:
        return {"classes": list(self.classes), "photos": self.photos, "sequence": self.sequence,
                "inconclusive_below": self.inconclusive_below}


def _probs(logits: torch.Tensor) -> list[dict[str, float]]:
    p = logits.float().softmax(-1).cpu().numpy().reshape(-1, len(CLASSES))
    return [{c: float(v) for c, v in zip(CLASSES, row)} for row in p]


class Predictor:
    """A loaded model on its device; thread-safe for prediction (no shared state is written)."""

    def __init__(self, model: SkinLesionNet, card: dict[str, Any], device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.card = card
        self.device = device

    @property
    def device_name(self) -> str:
        return describe(self.device)

    @property
    def inconclusive_below(self) -> float:
        return float(self.card.get("inconclusive_below", DEFAULT_INCONCLUSIVE_BELOW))

    def _meta(self, n: int, age: float | None, sex: str | None, site: str | None) -> torch.Tensor | None:
        if age is None and not sex and not site:
            return None
        vec = encode_metadata(age, sex, site)
        return torch.as_tensor(np.repeat(vec[None], n, axis=0), device=self.device)

    def tensors(self, images: Sequence[ImageSource]) -> torch.Tensor:
        photos = [img if isinstance(img, Image.Image) and img.mode == "RGB" else load_image(img) for img in images]
        return to_batch(photos).to(self.device)

    @torch.no_grad()
    def predict(self, images: Sequence[ImageSource], age: float | None = None, sex: str | None = None,
                site: str | None = None, sequence: bool | None = None) -> Prediction:
        """Score photos given in time order.

        Each photo gets its own probabilities; with two or more photos (or
        `sequence=True`) the last MAX_SEQUENCE photos are also read as one lesion.
        """
        if not images:
            raise ValueError("no photos given")
        x = self.tensors(images)
        meta = self._meta(len(images), age, sex, site)
        feats = self.model.features(x)
        raw = self.model.photo_logits(feats, meta)
        photos = _probs(self.model.calibrated(raw, "photo"))
        seq = None
        if sequence or (sequence is None and len(images) > 1):
            f, r = feats[-MAX_SEQUENCE:], raw[-MAX_SEQUENCE:]
            seq = _probs(self.model.calibrated(self.model.sequence_logits(f[None], r[None]), "sequence"))[0]
        return Prediction(photos=photos, sequence=seq, inconclusive_below=self.inconclusive_below)

    def predict_each(self, images: Sequence[ImageSource], batch_size: int = 32, **context: Any) -> list[dict[str, float]]:
        """Score unrelated photos independently, in batches."""
        out: list[dict[str, float]] = []
        for start in range(0, len(images), batch_size):
            out += self.predict(images[start:start + batch_size], sequence=False, **context).photos
        return out


def load_predictor(weights: str | Path | None = None, device: str | torch.device | None = None) -> Predictor:
    """Load and verify the weights (the shipped ones by default) on the best device.

    `weights` is the folder holding the safetensors file and its model card.
    The device is the argument, else `SKIN_MODEL_DEVICE`, else CUDA, MPS or CPU.
    """
    model, card = checkpoint.load(weights)
    dev = device if isinstance(device, torch.device) else select_device(device)
    return Predictor(model, card, dev)
