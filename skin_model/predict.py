"""Prediction API: load the shipped weights once and score photos of one lesion.

    >>> predictor = load_predictor()
    >>> result = predictor.predict([photo_2019, photo_2021])
    >>> result.photos[0]["mel"], result.sequence["mel"]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from . import checkpoint, ood
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
    ood: list[ood.OODVerdict | None] = field(default_factory=list)
    classes: tuple[str, ...] = field(default=CLASSES)
    sequence_method: str | None = None  # how the sequence combined the photos, in words (reports quote it)

    @staticmethod
    def top(probs: dict[str, float]) -> tuple[str, float]:
        code = max(probs, key=probs.__getitem__)
        return code, probs[code]

    def is_inconclusive(self, probs: dict[str, float]) -> bool:
        """True when the top class is below the confidence threshold chosen for the model."""
        return self.top(probs)[1] < self.inconclusive_below

    def rejected(self, i: int) -> str | None:
        """Why photo i gets no diagnosis (not a dermatoscopic photo, blurred, ...), or None."""
        verdict = self.ood[i] if i < len(self.ood) else None
        return verdict.message if verdict is not None and verdict.rejected else None

    def status(self, i: int) -> str:
        """"out_of_distribution", "inconclusive" or "answered" for photo i."""
        if self.rejected(i):
            return "out_of_distribution"
        return "inconclusive" if self.is_inconclusive(self.photos[i]) else "answered"

    def to_dict(self) -> dict[str, Any]:
        return {"classes": list(self.classes), "photos": self.photos, "sequence": self.sequence,
                "inconclusive_below": self.inconclusive_below,
                "status": [self.status(i) for i in range(len(self.photos))]}


def _probs(probs: torch.Tensor) -> list[dict[str, float]]:
    p = probs.float().cpu().numpy().reshape(-1, len(CLASSES))
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
    def sequence_method(self) -> str:
        """How the sequence prediction combines the photos, in words for the app."""
        sharp, mix = float(self.model.sequence_sharpness), float(self.model.sequence_mix)
        pooled = ("the mean of the photos' probabilities, clearer (more confident) photos weighing more" if sharp > 0
                  else "the mean of the photos' probabilities")
        return pooled + (", corrected by an LSTM that reads them in time order" if mix > 0 else "")

    @property
    def inconclusive_below(self) -> float:
        return float(self.card.get("inconclusive_below", DEFAULT_INCONCLUSIVE_BELOW))

    def _meta(self, n: int, age: float | None, sex: str | None, site: str | None) -> torch.Tensor | None:
        if age is None and not sex and not site:
            return None
        vec = encode_metadata(age, sex, site)
        return torch.as_tensor(np.repeat(vec[None], n, axis=0), device=self.device)

    @torch.no_grad()
    def predict(self, images: Sequence[ImageSource], age: float | None = None, sex: str | None = None,
                site: str | None = None, sequence: bool | None = None) -> Prediction:
        """Score photos given in time order.

        Each photo gets its own probabilities and out-of-distribution verdict; with
        two or more photos (or `sequence=True`) the last MAX_SEQUENCE photos that
        passed the check are also read as one lesion.
        """
        if not images:
            raise ValueError("no photos given")
        pil = [img if isinstance(img, Image.Image) and img.mode == "RGB" else load_image(img) for img in images]
        x = to_batch(pil, self.model.image_size).to(self.device)
        meta = self._meta(len(pil), age, sex, site)
        feats = self.model.features(x)
        raw = self.model.photo_logits(feats, meta)
        photos = _probs(self.model.photo_probabilities(self.model.calibrated(raw, "photo")))
        verdicts = self.check(pil, feats)
        accepted = [i for i, v in enumerate(verdicts) if v is None or not v.rejected][-MAX_SEQUENCE:]
        seq = None
        if accepted and (sequence or (sequence is None and len(pil) > 1)):
            f, r = feats[accepted], raw[accepted]
            seq = _probs(self.model.calibrated(self.model.sequence_logits(f[None], r[None]), "sequence").softmax(-1))[0]
        return Prediction(photos=photos, sequence=seq, inconclusive_below=self.inconclusive_below, ood=verdicts,
                          sequence_method=self.sequence_method if seq is not None else None)

    def check(self, photos: list[Image.Image], feats: torch.Tensor) -> list[ood.OODVerdict | None]:
        """The out-of-distribution verdict of each photo (None when the weights carry no OOD fit)."""
        thresholds = self.card.get("ood")
        if not thresholds:
            return [None] * len(photos)
        dist = ood.mahalanobis(feats, self.model.ood_means, self.model.ood_precision).cpu().tolist()
        return [ood.verdict(ood.quality(p), d, thresholds) for p, d in zip(photos, dist)]

    def predict_each(self, images: Sequence[ImageSource], batch_size: int = 32, **context: Any) -> Prediction:
        """Score unrelated photos independently, in batches (no sequence)."""
        parts = [self.predict(images[start:start + batch_size], sequence=False, **context)
                 for start in range(0, len(images), batch_size)]
        return Prediction(photos=[p for part in parts for p in part.photos], sequence=None,
                          inconclusive_below=self.inconclusive_below, ood=[v for part in parts for v in part.ood])


def load_predictor(weights: str | Path | None = None, device: str | torch.device | None = None) -> Predictor:
    """Load and verify the weights (the shipped ones by default) on the best device.

    `weights` is the folder holding the safetensors file and its model card.
    The device is the argument, else `SKIN_MODEL_DEVICE`, else CUDA, MPS or CPU.
    """
    model, card = checkpoint.load(weights)
    dev = device if isinstance(device, torch.device) else select_device(device)
    return Predictor(model, card, dev)
