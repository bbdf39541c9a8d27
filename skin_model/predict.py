"""Prediction API: load the shipped weights once and score photos of one lesion.

    >>> predictor = load_predictor()
    >>> result = predictor.predict([photo_2019, photo_2021])
    >>> result.photos[0]["mel"], result.sequence["mel"]
    >>> analysis = predictor.analyse([photo], method="Grad-CAM")   # + heatmaps

Every probability comes from the engine's served graph (model/serving.py): on ONNX Runtime
(runtime.OnnxEngine, the default on a CPU: no torch import) or in torch (engine.TorchEngine). With
the shipped weights, heatmaps come from the same forward (the heatmap graph) without torch; torch
and the network load only for an evaluation, a GPU, or weights without a heatmap graph.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from skin_model import runtime
from skin_model.constants import CLASSES
from skin_model.data.preprocess import encode_metadata, pixels
from skin_model.explain.methods import METHOD_NAMES, heatmap
from skin_model.io.images import ImageSource, load_image
from skin_model.model.card import ModelCard
from skin_model.model.files import check_card, default_weights_dir, read_card, verified
from skin_model.model.scores import Engine, Scores
from skin_model.trust import ood
from skin_model.trust.decision import Decision, decide
from skin_model.trust.triage import TriageRule

if TYPE_CHECKING:  # torch, the network and Grad-CAM load only when asked for
    import torch

    from skin_model.explain.cam import Explainer
    from skin_model.explain.heatmap import Heatmap
    from skin_model.model.network import SkinLesionNet

ENGINES = ("onnx", "torch")
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


def _probs(probs: np.ndarray) -> list[dict[str, float]]:
    p = np.asarray(probs, dtype=np.float64).reshape(-1, len(CLASSES))
    return [{c: float(v) for c, v in zip(CLASSES, row)} for row in p]


class Predictor:
    """Weights ready to score photos; thread-safe (no shared state is written while predicting).

    `engine` computes every probability (runtime.OnnxEngine or engine.TorchEngine); `model`, the
    torch network, is loaded from `directory` only when first needed (heatmaps, evaluation)."""

    def __init__(self, card: ModelCard, engine: Engine, directory: Path | None = None,
                 model: SkinLesionNet | None = None) -> None:
        if directory is None and model is None:
            raise ValueError("a predictor needs the weights' folder or a loaded model")
        self.card, self.engine, self.directory = card, engine, directory
        self._model = model
        self._lock = threading.Lock()
        self._explainer: Explainer | None = None

    @classmethod
    def from_model(cls, model: SkinLesionNet, card: ModelCard, device: str | torch.device = "cpu") -> Predictor:
        """A predictor over a network already in memory, on the torch engine (training, tests)."""
        from skin_model.engine import TorchEngine

        model = model.to(device).eval()
        return cls(card, TorchEngine(model), model=model)

    @property
    def model(self) -> SkinLesionNet:
        """The torch network of these weights (verified; loaded on first use, on the CPU unless the
        engine is torch on another device)."""
        with self._lock:
            if self._model is None:
                from skin_model.model import checkpoint

                self._model = checkpoint.load(self.directory)[0]
            return self._model

    @functools.cached_property
    def device_name(self) -> str:
        """Where and with what the probabilities are computed, for the app's sidebar."""
        if isinstance(self.engine, runtime.OnnxEngine):
            return f"CPU ({self.engine.name}, {runtime.threads()} threads)"
        from skin_model.devices import describe
        from skin_model.engine import device_of

        return f"{describe(device_of(self.model))} ({self.engine.name})"

    @property
    def explainer(self) -> Explainer:
        """The Grad-CAM explainer over this model, made on first use (this loads torch)."""
        from skin_model.explain.cam import Explainer

        model = self.model
        with self._lock:
            if self._explainer is None:
                self._explainer = Explainer(model)
            return self._explainer

    def prepare_heatmaps(self) -> None:
        """Load now what heatmaps need (the heatmap graph, or the torch explainer for weights without one), so
        that the first photo analysed does not pay for it."""
        if not self.engine.serves_heatmaps:
            self.explainer  # noqa: B018 (made on first use)
        elif isinstance(self.engine, runtime.OnnxEngine):
            self.engine.load_heatmaps()
        self.default_cam_method  # noqa: B018 (read from the card once)

    @functools.cached_property
    def default_cam_method(self) -> str:
        """The heatmap method the card's figures recommend (fixed for the weights: computed once)."""
        from skin_model.explain.methods import default_method

        return default_method(self.card)

    POOLING = ("sequence_sharpness", "sequence_mix", "sequence_temperature", "sequence_bias")

    @property
    def _pooling(self) -> dict[str, np.ndarray]:
        """The sequence pooling's fitted buffers: the network's when it is in memory (what the torch engine
        runs), else the verified weights file's (describing the pooling must not load torch)."""
        if self._model is not None or self.directory is None:
            return {n: getattr(self.model, n).detach().cpu().numpy() for n in self.POOLING}
        return self._pooling_from_file

    @functools.cached_property
    def _pooling_from_file(self) -> dict[str, np.ndarray]:
        from safetensors import safe_open

        path = verified(self.directory / self.card.weights_file, self.card.sha256, "weights")
        with safe_open(str(path), framework="numpy") as weights:
            known = set(weights.keys())
            defaults = {"sequence_sharpness": np.zeros(()), "sequence_mix": np.ones(())}  # before they were fitted
            return {n: weights.get_tensor(n) if n in known else defaults[n] for n in self.POOLING}

    @property
    def sequence_uses_lstm(self) -> bool:
        """False when validation gave the LSTM's correction a weight of 0: the network has an LSTM that
        changes nothing shown (so a description of the architecture must say so)."""
        return float(self._pooling["sequence_mix"]) > 0

    @property
    def sequence_method(self) -> str:
        """Exactly how the sequence's probabilities are computed from the photos', in words for the
        app and the reports (so a caption never says "the mean" of numbers that are not the mean)."""
        pooling = self._pooling
        sharp = float(pooling["sequence_sharpness"])
        temperature = float(pooling["sequence_temperature"])
        bias = float(np.abs(pooling["sequence_bias"]).max())
        pooled = ("a weighted mean of the photos' probabilities, clearer (more confident) photos weighing more"
                  if sharp > 0 else "the mean of the photos' probabilities")
        if self.sequence_uses_lstm:
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

    @staticmethod
    def _meta(n: int, age: float | None, sex: str | None, site: str | None) -> np.ndarray:
        """Context rows for n photos (zeros, which add exactly nothing, when nothing is known)."""
        return np.repeat(encode_metadata(age, sex, site)[None], n, axis=0)

    @staticmethod
    def _decoded(images: Sequence[ImageSource]) -> list[Image.Image]:
        if not images:
            raise ValueError("no photos given")
        return [img if isinstance(img, Image.Image) and img.mode == "RGB" else load_image(img) for img in images]

    def _score(self, photos: Sequence[Image.Image], meta: np.ndarray, batch_size: int = 64, heatmaps: bool = False,
               ) -> tuple[Scores, list[dict[str, float]]]:
        """The engine's scores and each photo's quality, in batches. Preparing the next batch in a thread
        beside ONNX Runtime's own threads gained nothing on two cores (a pool of two lost half the speed):
        the engine uses every core, and the preparation (about 2 ms a photo) is small beside it."""
        parts, qualities = [], []
        for start in range(0, len(photos), batch_size):
            batch = photos[start:start + batch_size]
            parts.append(self.engine.score(pixels(batch, self.card.data_config), meta[start:start + len(batch)],
                                           heatmaps))
            qualities += [ood.quality(p) for p in batch]
        return (parts[0] if len(parts) == 1 else Scores.concat(parts)), qualities

    def _prediction(self, scores: Scores, qualities: list[dict[str, float]],
                    sequence: bool | None) -> Prediction:
        """The one place a Prediction is assembled from a forward's scores."""
        verdicts = ood.check(qualities, scores.feature_distance, self.card.trust.ood or {}, scores.texture_distance)
        accepted = [i for i, v in enumerate(verdicts) if v is None or not v.rejected][-self.card.max_sequence:]
        seq = None
        if len(accepted) > 1 and sequence is not False:  # one accepted photo is a photo, not a sequence
            seq = _probs(self.engine.sequence(scores.features[accepted], scores.logits[accepted])[1])[0]
        return Prediction(photos=_probs(scores.shown), sequence=seq, inconclusive_below=self.inconclusive_below,
                          ood=verdicts, sequence_method=self.sequence_method if seq is not None else None,
                          sequence_photos=accepted if seq is not None else [], triage=self.triage)

    def predict(self, images: Sequence[ImageSource], age: float | None = None, sex: str | None = None,
                site: str | None = None, sequence: bool | None = None) -> Prediction:
        """Score photos given in time order.

        Each photo gets its own probabilities and out-of-distribution verdict; when two or
        more photos pass the check (and `sequence` is not False), the last MAX_SEQUENCE of
        them are also read as one lesion.
        """
        photos = self._decoded(images)
        return self._prediction(*self._score(photos, self._meta(len(photos), age, sex, site)), sequence)

    def analyse(self, images: Sequence[ImageSource], age: float | None = None, sex: str | None = None,
                site: str | None = None, sequence: bool | None = None, method: str | None = None,
                target: str | None = None) -> Analysis:
        """`predict` plus a heatmap per photo: for `target`, else for the class the user is shown for
        that photo (the prediction's own top class, so the heatmap explains what is on screen).

        With a heatmap graph (the shipped weights) the prediction and Grad-CAM's activations and
        gradients come from one forward of the engine, and the maps from pytorch-grad-cam's formulas
        (explain/methods.py): no torch. Otherwise pytorch-grad-cam runs on the torch network."""
        method = method or self.default_cam_method
        if method not in METHOD_NAMES:
            raise ValueError(f"unknown CAM method {method!r}; choose from {', '.join(METHOD_NAMES)}")
        if target is not None and target not in CLASSES:
            raise ValueError(f"unknown class {target!r}")
        photos = self._decoded(images)
        meta = self._meta(len(photos), age, sex, site)
        served = self.engine.serves_heatmaps
        scores, qualities = self._score(photos, meta, heatmaps=served)
        prediction = self._prediction(scores, qualities, sequence)
        targets = [target or Prediction.top(p)[0] for p in prediction.photos]
        if not served:
            return Analysis(prediction, self.explainer.explain(photos, meta, targets, method).heatmaps)
        from skin_model.explain.heatmap import Heatmap

        height, width = self.card.data_config.input_size
        assert scores.cam_activations is not None and scores.cam_gradients is not None
        return Analysis(prediction, [
            Heatmap(heatmap(method, scores.cam_activations[i], scores.cam_gradients[i, CLASSES.index(c)],
                            (width, height)), c, method) for i, c in enumerate(targets)])

    def predict_each(self, images: Sequence[ImageSource], batch_size: int = 64, **context: Any) -> Prediction:
        """Score unrelated photos independently (no sequence), in batches: how folders are scored."""
        photos = self._decoded(images)
        meta = self._meta(len(photos), context.get("age"), context.get("sex"), context.get("site"))
        return self._prediction(*self._score(photos, meta, batch_size), sequence=False)


def load_predictor(weights: str | Path | None = None, device: str | torch.device | None = None,
                   engine: str | None = None) -> Predictor:
    """Load and verify the weights (the shipped ones by default).

    `weights` is the folder holding the weights, their ONNX graphs and their model card (default:
    `SKIN_MODEL_WEIGHTS`, else the weights installed with the package or the repository's).
    `engine` is "onnx" or "torch" (default: `SKIN_MODEL_ENGINE`, else ONNX Runtime on the CPU when
    the weights carry an export, torch otherwise). `device` (default: `SKIN_MODEL_DEVICE`) other
    than "cpu" asks for torch on that device (CUDA, MPS).
    """
    directory = Path(weights) if weights is not None else default_weights_dir()
    card = read_card(directory)
    device = str(device) if device else os.environ.get("SKIN_MODEL_DEVICE") or None
    engine = engine or os.environ.get("SKIN_MODEL_ENGINE") or ("onnx" if card.onnx and device in (None, "cpu")
                                                              else "torch")
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
    if engine == "onnx":
        if device not in (None, "cpu"):
            raise ValueError(f"the ONNX Runtime engine runs on the CPU, not {device!r}; use the torch engine")
        # The graph holds the network, so any backbone name serves; the rest must agree with this code.
        check_card(card, backbones=(card.backbone, *(m.backbone for m in card.members)))
        return Predictor(card, runtime.OnnxEngine(directory, card), directory)
    from skin_model.devices import select_device
    from skin_model.engine import TorchEngine
    from skin_model.model import checkpoint

    model, card = checkpoint.load(directory)
    model = model.to(select_device(device)).eval()
    return Predictor(card, TorchEngine(model), directory, model)


__all__ = ["Analysis", "Prediction", "Predictor", "load_predictor"]
