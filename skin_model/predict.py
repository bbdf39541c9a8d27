"""Prediction API: load the shipped weights once and score photos of one lesion.

    >>> predictor = load_predictor()
    >>> result = predictor.predict([photo_2019, photo_2021])
    >>> result.photos[0]["mel"], result.sequence["mel"]
    >>> analysis = predictor.analyse([photo], method="Grad-CAM")   # + heatmaps, one forward

Every probability comes from `engine.shown_probabilities`; `predict` and `analyse` build
their `Prediction` with the same function, from one forward per photo.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from skin_model import engine
from skin_model.constants import CLASSES
from skin_model.devices import describe, select_device
from skin_model.io.images import ImageSource, load_image
from skin_model.model import checkpoint
from skin_model.model.card import ModelCard
from skin_model.model.network import SkinLesionNet
from skin_model.trust import ood
from skin_model.trust.decision import Decision, decide
from skin_model.trust.triage import TriageRule

if TYPE_CHECKING:  # Grad-CAM (with torchvision and OpenCV) loads only once a heatmap is asked for
    from skin_model.explain.cam import Explainer, Heatmap

DEFAULT_INCONCLUSIVE_BELOW = 0.5


@dataclass
class Prediction:
    """Per-photo probabilities (time order) and, for two or more accepted photos, the sequence's.

    `sequence_photos` are the indices of the photos the sequence read (the last
    `max_sequence` that passed the out-of-distribution check). What each means for the
    user comes from `decision(i)` and `sequence_decision()` (trust.decision.decide)."""

    photos: list[dict[str, float]]
    sequence: dict[str, float] | None
    inconclusive_below: float = DEFAULT_INCONCLUSIVE_BELOW
    ood: list[ood.OODVerdict | None] = field(default_factory=list)
    classes: tuple[str, ...] = field(default=CLASSES)
    sequence_method: str | None = None  # how the sequence combined the photos, in words (reports quote it)
    sequence_photos: list[int] = field(default_factory=list)
    triage: TriageRule | None = None

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

    def decision(self, i: int) -> Decision:
        """What photo i means for the user (refused, see a dermatologist, answered, inconclusive)."""
        return decide(self.photos[i], self.inconclusive_below, self.triage, self.rejected(i))

    def sequence_decision(self) -> Decision | None:
        """What the lesion's sequence means for the user (None without a sequence)."""
        return None if self.sequence is None else decide(
            self.sequence, self.inconclusive_below, self.triage.for_sequences() if self.triage else None)

    def status(self, i: int) -> str:
        """The status of photo i's decision (one of trust.decision.STATUSES)."""
        return self.decision(i).status

    def answered_any(self) -> bool:
        """True when at least one photo passed the out-of-distribution check (reports need one)."""
        return any(self.rejected(i) is None for i in range(len(self.photos)))

    def to_dict(self) -> dict[str, Any]:
        seq = self.sequence_decision()
        decisions = [self.decision(i) for i in range(len(self.photos))]
        return {"classes": list(self.classes), "photos": self.photos, "sequence": self.sequence,
                "sequence_photos": self.sequence_photos, "inconclusive_below": self.inconclusive_below,
                "triage": self.triage.to_json() if self.triage else None,
                "status": [d.status for d in decisions], "decisions": [d.to_dict() for d in decisions],
                "sequence_decision": seq.to_dict() if seq else None}


@dataclass
class Analysis:
    """What one analysis shows: the prediction and, for each photo, its heatmap."""

    prediction: Prediction
    heatmaps: list[Heatmap]


def _probs(probs: torch.Tensor) -> list[dict[str, float]]:
    p = probs.float().cpu().numpy().reshape(-1, len(CLASSES))
    return [{c: float(v) for c, v in zip(CLASSES, row)} for row in p]


class Predictor:
    """A loaded model on its device; thread-safe for prediction (no shared state is written)."""

    def __init__(self, model: SkinLesionNet, card: ModelCard, device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.card = card
        self.device = device
        self._explainer: Explainer | None = None
        self._explainer_lock = threading.Lock()

    @functools.cached_property
    def device_name(self) -> str:
        return describe(self.device)

    @property
    def explainer(self) -> Explainer:
        """The Grad-CAM explainer over this model, made on first use."""
        from skin_model.explain.cam import Explainer

        with self._explainer_lock:
            if self._explainer is None:
                self._explainer = Explainer(self.model)
            return self._explainer

    @functools.cached_property
    def default_cam_method(self) -> str:
        """The heatmap method the card's figures recommend (fixed for the weights: computed once)."""
        from skin_model.explain.cam import default_method

        return default_method(self.card)

    @property
    def sequence_method(self) -> str:
        """Exactly how the sequence's probabilities are computed from the photos', in words for the
        app and the reports (so a caption never says "the mean" of numbers that are not the mean)."""
        sharp, mix = float(self.model.sequence_sharpness), float(self.model.sequence_mix)
        temperature = float(self.model.sequence_temperature)
        bias = self.model.sequence_bias.abs().max().item()
        pooled = ("a weighted mean of the photos' probabilities, clearer (more confident) photos weighing more"
                  if sharp > 0 else "the mean of the photos' probabilities")
        if mix > 0:
            pooled += ", corrected by an LSTM that reads them in time order"
        if abs(temperature - 1) > 1e-6 or bias > 1e-6:
            pooled += (f", then recalibrated on validation lesions (temperature {temperature:.2f}"
                       + (", prior correction" if bias > 1e-6 else "") + "), so it is not exactly that mean")
        return pooled

    @property
    def inconclusive_below(self) -> float:
        return self.card.trust.inconclusive_below

    @property
    def triage(self) -> TriageRule | None:
        """The card's "see a dermatologist" rule (None for weights fitted before triage existed)."""
        return self.card.trust.triage

    def _meta(self, n: int, age: float | None, sex: str | None, site: str | None) -> torch.Tensor | None:
        if age is None and not sex and not site:
            return None
        vec = engine.encode_metadata(age, sex, site)
        return torch.as_tensor(np.repeat(vec[None], n, axis=0), device=self.device)

    @staticmethod
    def _decoded(images: Sequence[ImageSource]) -> list[Image.Image]:
        if not images:
            raise ValueError("no photos given")
        return [img if isinstance(img, Image.Image) and img.mode == "RGB" else load_image(img) for img in images]

    @torch.no_grad()
    def _prediction(self, photos: list[Image.Image], encoded: engine.Encoded, sequence: bool | None) -> Prediction:
        """The one place a Prediction is assembled from a forward's features and raw logits."""
        shown = _probs(engine.shown_probabilities(self.model, encoded.logits, "photo"))
        verdicts = self.check(photos, encoded)
        accepted = [i for i, v in enumerate(verdicts) if v is None or not v.rejected][-self.card.max_sequence:]
        seq = None
        if len(accepted) > 1 and sequence is not False:  # one accepted photo is a photo, not a sequence
            raw = engine.sequence_logits(self.model, encoded.features, encoded.logits, [accepted])
            seq = _probs(engine.shown_probabilities(self.model, raw, "sequence"))[0]
        return Prediction(photos=shown, sequence=seq, inconclusive_below=self.inconclusive_below, ood=verdicts,
                          sequence_method=self.sequence_method if seq is not None else None,
                          sequence_photos=accepted if seq is not None else [], triage=self.triage)

    def predict(self, images: Sequence[ImageSource], age: float | None = None, sex: str | None = None,
                site: str | None = None, sequence: bool | None = None) -> Prediction:
        """Score photos given in time order.

        Each photo gets its own probabilities and out-of-distribution verdict; when two or
        more photos pass the check (and `sequence` is not False), the last MAX_SEQUENCE of
        them are also read as one lesion.
        """
        photos = self._decoded(images)
        encoded = engine.encode(self.model, photos, self._meta(len(photos), age, sex, site))
        return self._prediction(photos, encoded, sequence)

    def analyse(self, images: Sequence[ImageSource], age: float | None = None, sex: str | None = None,
                site: str | None = None, sequence: bool | None = None, method: str | None = None,
                target: str | None = None) -> Analysis:
        """`predict` plus a heatmap per photo from the same forward: for `target`, or for the class
        the user is shown for that photo (with the same patient context)."""
        photos = self._decoded(images)
        explained = self.explainer.explain(photos, self._meta(len(photos), age, sex, site), [target] * len(photos),
                                           method or self.default_cam_method)
        return Analysis(self._prediction(photos, explained.encoded, sequence), explained.heatmaps)

    def check(self, photos: list[Image.Image], encoded: engine.Encoded) -> list[ood.OODVerdict | None]:
        """The out-of-distribution verdict of each photo from its forward (None when the weights carry no OOD fit)."""
        return ood.check(photos, encoded.features, self.model.ood_reference(), self.card.trust.ood or {},
                         encoded.textures)

    def predict_each(self, images: Sequence[ImageSource], batch_size: int = 32, **context: Any) -> Prediction:
        """Score unrelated photos independently, in batches (no sequence)."""
        parts = [self.predict(images[start:start + batch_size], sequence=False, **context)
                 for start in range(0, len(images), batch_size)]
        return Prediction(photos=[p for part in parts for p in part.photos], sequence=None,
                          inconclusive_below=self.inconclusive_below, ood=[v for part in parts for v in part.ood],
                          triage=self.triage)


def load_predictor(weights: str | Path | None = None, device: str | torch.device | None = None) -> Predictor:
    """Load and verify the weights (the shipped ones by default) on the best device.

    `weights` is the folder holding the safetensors file and its model card (default:
    `SKIN_MODEL_WEIGHTS`, else the weights installed with the package or the repository's).
    The device is the argument, else `SKIN_MODEL_DEVICE`, else CUDA, MPS or CPU.
    """
    model, card = checkpoint.load(weights)
    dev = device if isinstance(device, torch.device) else select_device(device)
    return Predictor(model, card, dev)


__all__ = ["Analysis", "Prediction", "Predictor", "load_predictor"]
