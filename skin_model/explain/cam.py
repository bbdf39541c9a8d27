"""Grad-CAM heatmaps with the pytorch-grad-cam package (the method names, the default method and the
heatmap itself live in torch-free modules, so pages and reports that only show heatmaps never load torch).

The explainer owns a private copy of the network's modules (over the same weight
tensors), guarded by a lock: CAM hooks never touch the model that serves
predictions, so concurrent sessions cannot see each other's activations, and every
CAM is used as a context manager so its hooks are released after each call.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from skin_model.constants import CLASSES
from skin_model.engine import Encoded, Scorer, ShownClass, device_of, preprocess, shown_probabilities
from skin_model.explain.deferred_imports import deferred_imports
from skin_model.explain.heatmap import Heatmap
from skin_model.explain.methods import DEFAULT_METHOD, METHOD_NAMES
from skin_model.io.images import ImageSource, load_image
from skin_model.model.network import SkinLesionNet

# Imported by pytorch-grad-cam only for functions this module never calls (see deferred_imports): plots,
# factorisations, the ROAD metric, detection targets' box IoU and its image utilities' torchvision transforms
# (torchvision alone costs the app about 170 MB: it pulls in torch._dynamo).
CAM_UNUSED_IMPORTS = ("matplotlib", "matplotlib.lines", "matplotlib.pyplot", "scipy.ndimage", "scipy.sparse",
                      "scipy.sparse.linalg", "sklearn.decomposition", "torchvision", "torchvision.transforms",
                      "torchvision.transforms.functional")
with deferred_imports(CAM_UNUSED_IMPORTS):
    from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, LayerCAM
    from pytorch_grad_cam.base_cam import BaseCAM

METHODS: dict[str, type[BaseCAM]] = dict(zip(METHOD_NAMES, (GradCAM, GradCAMPlusPlus, LayerCAM, EigenCAM)))


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

    def explain(self, photos: list[Image.Image], meta: torch.Tensor | np.ndarray | None = None,
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
            scorer = Scorer(self._model, None if meta is None else torch.as_tensor(meta, device=device))
            with METHODS[method](model=scorer, target_layers=[self.target_layer]) as cam:
                maps = cam(input_tensor=x, targets=chosen)
            encoded = scorer.last
        assert encoded is not None
        if any(c.index is None for c in chosen):
            # Gradient-free methods (EigenCAM) never call their targets: the shown class comes from the same forward.
            shown = shown_probabilities(self._model, encoded.logits, "photo").argmax(-1).tolist()
            for c, index in zip(chosen, shown):
                c.index = int(index) if c.index is None else c.index
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
