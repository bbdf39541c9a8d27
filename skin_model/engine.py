"""The one inference engine: how photos become features, logits and the probabilities a user sees.

The predictor, the explainer, evaluation, the trust fit and training's validation all call
these functions, so a figure in the model card and a probability on screen come from the
same code:

    encoded = encode(model, photos, meta)                    # batched, no gradients
    probs = shown_probabilities(model, encoded.logits)       # what the user is shown

Serving runs the same forward as graphs (model/serving.py): `TorchEngine` here, and
`runtime.OnnxEngine` (ONNX Runtime, no torch) as exported; both return `model.scores.Scores`.

`preprocess` builds the network's input from photos (data.preprocess also encodes the patient
context). `Scorer` is the same forward as a module, for Grad-CAM: it runs once per photo and
keeps the features and logits of that forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from skin_model.data.config import DataConfig
from skin_model.data.preprocess import pixels, shades_of_gray
from skin_model.model.network import SkinLesionNet
from skin_model.model.scores import Scores
from skin_model.model.serving import HeatmapGraph, PhotoGraph, SequenceGraph

Kind = Literal["photo", "sequence"]
DEFAULT_CONFIG = DataConfig()


def preprocess(images: Sequence[Image.Image] | torch.Tensor, config: DataConfig = DEFAULT_CONFIG) -> torch.Tensor:
    """RGB photos (PIL, or a uint8 (N, 3, H, W) batch) -> the normalised (N, 3, height, width) input.

    The whole frame is resized to the input size (nothing of the lesion is cut away) on the uint8
    pixels with antialiasing, then scaled to [0, 1] and normalised. Photos go through
    `data.preprocess.pixels`, which the ONNX Runtime engine uses too; a uint8 batch (training's
    validation) through torch's own resize, which that module reproduces bit for bit. So training's
    validation, both engines and the explainer see identical inputs, and a batch and the same photos
    one by one give the same values (the colour normalisation, when the card asks for it, is
    `data.preprocess.shades_of_gray` on both paths)."""
    if not isinstance(images, torch.Tensor):
        return torch.from_numpy(pixels(images, config))
    x = F.interpolate(images, size=config.input_size, mode=config.interpolation, antialias=True, align_corners=False)
    if config.colour_constancy:
        x = torch.from_numpy(shades_of_gray(x.cpu().numpy())).to(images.device)
    x = x.to(torch.float32).mul_(1 / 255)
    mean = torch.tensor(config.mean, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(config.std, dtype=x.dtype).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)


@dataclass
class Encoded:
    """Pooled features (N, F), raw, uncalibrated photo logits (N, 7) and the middle block's texture
    statistics (N, 2C, for the out-of-distribution check) of N photos, from one forward."""

    features: torch.Tensor
    logits: torch.Tensor
    textures: torch.Tensor

    def numpy(self) -> tuple[np.ndarray, np.ndarray]:
        """(features, logits) as numpy arrays on the CPU, for the fits and reports that work on arrays."""
        return self.features.cpu().numpy(), self.logits.cpu().numpy()


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _rows(meta: np.ndarray | torch.Tensor | None, start: int, stop: int, device: torch.device) -> torch.Tensor | None:
    if meta is None:
        return None
    return torch.as_tensor(np.asarray(meta[start:stop], dtype=np.float32), device=device)


@torch.no_grad()
def encode(model: SkinLesionNet, photos: Sequence[Image.Image] | torch.Tensor,
           meta: np.ndarray | torch.Tensor | None = None, batch_size: int = 64,
           channels_last: bool = False) -> Encoded:
    """Features and raw photo logits of RGB photos (PIL, or a uint8 (N, 3, H, W) batch), with
    patient context rows `meta` (N, META_DIM) when given. Inputs are built from the model's
    data config (`model.data_config`, which comes from its card)."""
    device = device_of(model)
    feats, logits, textures = [], [], []
    for start in range(0, len(photos), batch_size):
        x = preprocess(photos[start:start + batch_size], model.data_config).to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        f, t = model.features_and_texture(x)
        feats.append(f.float())
        textures.append(t)
        logits.append(model.photo_logits(f, _rows(meta, start, start + len(x), device)).float())
    if not feats:
        raise ValueError("no photos given")
    return Encoded(torch.cat(feats), torch.cat(logits), torch.cat(textures))


@torch.no_grad()
def context_logits(model: SkinLesionNet, features: torch.Tensor | np.ndarray,
                   meta: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Raw photo logits with patient context `meta` from features `encode` already computed: the
    context head adds to the photo head, so reports with and without context share one forward."""
    device = model.photo_bias.device
    feats = torch.as_tensor(features, device=device).float()
    return model.photo_logits(feats, _rows(meta, 0, len(feats), device)).float()


def shown_probabilities(model: SkinLesionNet, logits: torch.Tensor | np.ndarray, kind: Kind = "photo") -> torch.Tensor:
    """The probabilities a user is shown, from raw logits of the photo or the sequence head:
    calibrated (temperature and prior correction), and for photos the top class's confidence
    mapped to the accuracy seen on validation."""
    calibrated = model.calibrated(torch.as_tensor(logits, device=model.photo_bias.device).float(), kind)
    return model.photo_probabilities(calibrated) if kind == "photo" else calibrated.softmax(-1)


@torch.no_grad()
def sequence_logits(model: SkinLesionNet, features: torch.Tensor | np.ndarray, logits: torch.Tensor | np.ndarray,
                    groups: Sequence[Sequence[int]]) -> torch.Tensor:
    """Raw sequence logits (len(groups), 7) of each group of photo rows, time order = row order."""
    device = model.photo_bias.device
    feats, raw = torch.as_tensor(features, device=device), torch.as_tensor(logits, device=device)
    out = [model.sequence_logits(feats[list(rows)][None], raw[list(rows)][None])[0].float() for rows in groups]
    return torch.stack(out) if out else torch.zeros(0, logits.shape[-1], device=device)


class TorchEngine:
    """The served graphs (model/serving.py) run in torch: on a GPU, for weights without an ONNX
    export, and as the reference the ONNX Runtime engine is tested against. Same `Scores`."""

    name = "PyTorch"

    def __init__(self, model: SkinLesionNet) -> None:
        self.model = model
        self._photo, self._sequence, self._heatmap = PhotoGraph(model), SequenceGraph(model), HeatmapGraph(model)

    @property
    def serves_heatmaps(self) -> bool:
        return self.model.closed_form_heatmaps

    @torch.no_grad()
    def score(self, pixels: np.ndarray, meta: np.ndarray, heatmaps: bool = False) -> Scores:
        device = device_of(self.model)
        graph = self._heatmap if heatmaps else self._photo
        out = graph(torch.as_tensor(pixels, device=device), torch.as_tensor(meta, device=device))
        return Scores(*(t.float().cpu().numpy() for t in out))

    @torch.no_grad()
    def sequence(self, features: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        device = device_of(self.model)
        raw, shown = self._sequence(torch.as_tensor(features, device=device), torch.as_tensor(logits, device=device))
        return raw.float().cpu().numpy(), shown.float().cpu().numpy()


class Scorer(nn.Module):
    """`encode`'s forward as a module (for Grad-CAM's hooks): photos in, calibrated photo logits
    out, with the patient context `meta`; the features and raw logits of the last forward stay
    on `last`, so the prediction needs no second forward."""

    def __init__(self, model: SkinLesionNet, meta: torch.Tensor | None = None) -> None:
        super().__init__()
        self.model, self.meta = model, meta
        self.last: Encoded | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats, textures = self.model.features_and_texture(x)
        raw = self.model.photo_logits(feats, self.meta)
        self.last = Encoded(feats.detach().float(), raw.detach().float(), textures)
        return self.model.calibrated(raw, "photo")


class ShownClass:
    """Grad-CAM target: the class the user is shown for the photo (the top shown probability),
    or the class asked for. Called on the photo's calibrated logits; records its choice."""

    def __init__(self, model: SkinLesionNet, index: int | None = None) -> None:
        self.model, self.index = model, index

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        if self.index is None:
            self.index = int(self.model.photo_probabilities(output.detach()[None].float())[0].argmax())
        return output[..., self.index]
