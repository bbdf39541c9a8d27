"""Grad-CAM heatmaps with the pytorch-grad-cam package.

The explainer owns a private copy of the network's modules (over the same weight
tensors), guarded by a lock: CAM hooks never touch the model that serves
predictions, so concurrent sessions cannot see each other's activations, and every
CAM is used as a context manager so its hooks are released after each call.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image

from skin_model.constants import CLASSES
from skin_model.engine import Encoded, Scorer, ShownClass, device_of, preprocess, shown_probabilities
from skin_model.explain.deferred_imports import deferred_imports
from skin_model.io.images import ImageSource, load_image
from skin_model.model.card import ModelCard
from skin_model.model.network import SkinLesionNet

# Imported by pytorch-grad-cam only for functions this module never calls (see deferred_imports).
CAM_UNUSED_IMPORTS = ("matplotlib", "matplotlib.lines", "matplotlib.pyplot", "scipy.ndimage", "scipy.sparse",
                      "scipy.sparse.linalg", "sklearn.decomposition")
with deferred_imports(CAM_UNUSED_IMPORTS):
    from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, LayerCAM
    from pytorch_grad_cam.base_cam import BaseCAM

METHODS: dict[str, type[BaseCAM]] = {
    "Grad-CAM": GradCAM,
    "Grad-CAM++": GradCAMPlusPlus,
    "LayerCAM": LayerCAM,
    "EigenCAM (gradient-free)": EigenCAM,
}
DEFAULT_METHOD = "Grad-CAM"
# Shows the photo's dominant component whatever the class asked for: offered, never the default.
CLASS_AGNOSTIC = frozenset({"EigenCAM (gradient-free)"})


def default_method(card: ModelCard | None) -> str:
    """The class-discriminative CAM method whose heatmaps fell inside the lesion most often
    on test (pointing game in the model card), else Grad-CAM. The app's heatmap answers
    "what made the model say this class", which a class-agnostic method cannot."""
    scores = card.heatmap_scores() if card is not None else {}
    measured = {m: v["pointing_game"] for m, v in scores.items() if m in METHODS and m not in CLASS_AGNOSTIC}
    return max(measured, key=measured.get) if measured else DEFAULT_METHOD


@dataclass
class Heatmap:
    """A CAM in [0, 1] at the model's input resolution, for one target class."""

    cam: np.ndarray
    target: str
    method: str

    def resized(self, size: tuple[int, int]) -> np.ndarray:
        """The CAM at (width, height), bilinear."""
        img = Image.fromarray((self.cam * 255).astype(np.uint8)).resize(size, Image.BILINEAR)
        return np.asarray(img, dtype=np.float32) / 255.0

    def overlay(self, photo: Image.Image, opacity: float = 0.5) -> Image.Image:
        """The photo with the heatmap blended on top (opacity 0 = photo only)."""
        rgb = np.asarray(photo.convert("RGB"), dtype=np.float32) / 255.0
        # Blend here rather than with show_cam_on_image, which divides the result by its
        # maximum and so brightens the photo (a dark photo about 2x, even at opacity 0).
        heat = cv2.applyColorMap(np.uint8(255 * self.resized(photo.size)), cv2.COLORMAP_JET)
        heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
        alpha = float(np.clip(opacity, 0.0, 1.0))
        blended = (1.0 - alpha) * rgb + alpha * heat
        return Image.fromarray(np.round(255.0 * blended).astype(np.uint8))

    def peak(self) -> tuple[float, float]:
        """(x, y) of the hottest point, as fractions of width and height."""
        y, x = np.unravel_index(int(np.argmax(self.cam)), self.cam.shape)
        return (x + 0.5) / self.cam.shape[1], (y + 0.5) / self.cam.shape[0]


@dataclass
class Explained:
    """One forward's heatmaps and the features and raw logits that forward gave (the prediction
    is built from these, so a heatmap and its probabilities never come from different forwards)."""

    heatmaps: list[Heatmap]
    encoded: Encoded


class Explainer:
    """Thread-safe heatmaps for a model's photo head."""

    def __init__(self, model: SkinLesionNet) -> None:
        # Private modules (for the hooks) over the serving model's tensors, not a copy of them:
        # CAMs take gradients with respect to the photo only, and the weights would double the
        # model's memory.
        shared = {id(p): torch.nn.Parameter(p.detach(), requires_grad=False) for p in model.parameters()}
        shared.update({id(b): b for b in model.buffers()})
        self._model = copy.deepcopy(model, shared).eval()
        self._lock = threading.Lock()
        self.target_layer: torch.nn.Module = self._model.cam_layer

    def explain(self, photos: list[Image.Image], meta: torch.Tensor | None = None,
                targets: list[str | None] | None = None, method: str = DEFAULT_METHOD) -> Explained:
        """One forward with CAM hooks: a heatmap per photo for the given class codes (None: the
        class the user is shown, with the same patient context `meta`), and the features and
        raw logits of that forward."""
        if method not in METHODS:
            raise ValueError(f"unknown CAM method {method!r}; choose from {', '.join(METHODS)}")
        targets = targets or [None] * len(photos)
        unknown = [c for c in targets if c is not None and c not in CLASSES]
        if unknown:
            raise ValueError(f"unknown class {unknown[0]!r}")
        device = device_of(self._model)
        x = preprocess(photos, self._model.data_config).to(device).requires_grad_(True)
        chosen = [ShownClass(self._model, None if c is None else CLASSES.index(c)) for c in targets]
        with self._lock:
            scorer = Scorer(self._model, None if meta is None else meta.to(device))
            with METHODS[method](model=scorer, target_layers=[self.target_layer]) as cam:
                maps = cam(input_tensor=x, targets=chosen)
            encoded = scorer.last
        assert encoded is not None
        # Gradient-free methods (EigenCAM) never call their targets: the shown class comes from the same forward.
        shown = shown_probabilities(self._model, encoded.logits, "photo").argmax(-1).tolist()
        for c, index in zip(chosen, shown):
            if c.index is None:
                c.index = int(index)
        heatmaps = [Heatmap(cam=np.nan_to_num(m.astype(np.float32)), target=CLASSES[c.index], method=method)
                    for m, c in zip(maps, chosen)]
        return Explained(heatmaps, encoded)

    def heatmaps(self, images: list[ImageSource], targets: list[str | None] | None = None,
                 method: str = DEFAULT_METHOD) -> list[Heatmap]:
        """One heatmap per photo (without patient context), for evaluation and the CLI."""
        photos = [img if isinstance(img, Image.Image) else load_image(img) for img in images]
        return self.explain(photos, targets=targets, method=method).heatmaps

    def heatmap(self, image: ImageSource, target: str | None = None, method: str = DEFAULT_METHOD) -> Heatmap:
        return self.heatmaps([image], [target], method)[0]
