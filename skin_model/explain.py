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

from .constants import CLASSES
from .deferred_imports import deferred_imports
from .images import ImageSource, load_image
from .predict import Predictor
from .presets import to_batch

# Imported by pytorch-grad-cam only for functions this module never calls (see deferred_imports).
CAM_UNUSED_IMPORTS = ("matplotlib", "matplotlib.lines", "matplotlib.pyplot", "scipy.ndimage", "scipy.sparse",
                      "scipy.sparse.linalg", "sklearn.decomposition")
with deferred_imports(CAM_UNUSED_IMPORTS):
    from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, LayerCAM
    from pytorch_grad_cam.base_cam import BaseCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

METHODS: dict[str, type[BaseCAM]] = {
    "Grad-CAM": GradCAM,
    "Grad-CAM++": GradCAMPlusPlus,
    "LayerCAM": LayerCAM,
    "EigenCAM (gradient-free)": EigenCAM,
}
DEFAULT_METHOD = "Grad-CAM"
# Shows the photo's dominant component whatever the class asked for: offered, never the default.
CLASS_AGNOSTIC = frozenset({"EigenCAM (gradient-free)"})


def default_method(card: dict | None) -> str:
    """The class-discriminative CAM method whose heatmaps fell inside the lesion most often
    on test (pointing game in the model card), else Grad-CAM. The app's heatmap answers
    "what made the model say this class", which a class-agnostic method cannot."""
    scores = ((card or {}).get("metrics") or {}).get("heatmaps") or {}
    measured = {m: v["pointing_game"] for m, v in scores.items()
                if m in METHODS and m not in CLASS_AGNOSTIC and isinstance(v, dict)}
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


class Explainer:
    """Thread-safe heatmaps for a predictor's photo head."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        # Private modules (for the hooks) over the serving model's tensors, not a copy of them:
        # CAMs take gradients with respect to the photo only, and the weights would double the
        # model's memory.
        model = predictor.model
        shared = {id(p): torch.nn.Parameter(p.detach(), requires_grad=False) for p in model.parameters()}
        shared.update({id(b): b for b in model.buffers()})
        self._model = copy.deepcopy(model, shared).eval()
        self._lock = threading.Lock()

    @property
    def target_layer(self) -> torch.nn.Module:
        return self._model.cam_layer

    def heatmaps(self, images: list[ImageSource], targets: list[str | None] | None = None,
                 method: str = DEFAULT_METHOD) -> list[Heatmap]:
        """One heatmap per photo, for the given class codes (None: the predicted class)."""
        if method not in METHODS:
            raise ValueError(f"unknown CAM method {method!r}; choose from {', '.join(METHODS)}")
        photos = [img if isinstance(img, Image.Image) else load_image(img) for img in images]
        x = to_batch(photos, self.predictor.model.image_size).to(self.predictor.device).requires_grad_(True)
        targets = targets or [None] * len(photos)
        with self._lock:
            with torch.no_grad():
                predicted = self._model(x.detach()).argmax(1).tolist()
            codes = [t if t is not None else CLASSES[p] for t, p in zip(targets, predicted)]
            unknown = [c for c in codes if c not in CLASSES]
            if unknown:
                raise ValueError(f"unknown class {unknown[0]!r}")
            with METHODS[method](model=self._model, target_layers=[self.target_layer]) as cam:
                maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(CLASSES.index(c)) for c in codes])
        return [Heatmap(cam=np.nan_to_num(m.astype(np.float32)), target=c, method=method)
                for m, c in zip(maps, codes)]

    def heatmap(self, image: ImageSource, target: str | None = None, method: str = DEFAULT_METHOD) -> Heatmap:
        return self.heatmaps([image], [target], method)[0]
