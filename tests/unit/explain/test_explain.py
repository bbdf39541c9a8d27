"""skin_model.explain.cam: Grad-CAM heatmaps on the tiny test weights, hooks released, overlays;
and, with the shipped weights, heatmaps that point at the lesion."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter

from skin_model.constants import CLASSES, IMAGE_SIZE
from skin_model.explain.cam import METHODS, Explainer
from skin_model.explain.heatmap import Heatmap
from skin_model.explain.methods import default_method
from skin_model.model.card import ModelCard
from skin_model.predict import Predictor, load_predictor


@pytest.fixture(scope="module")
def predictor(tiny_weights: Path) -> Predictor:
    return load_predictor(tiny_weights, device="cpu")


@pytest.fixture(scope="module")
def explainer(predictor: Predictor) -> Explainer:
    return Explainer(predictor.model)


@pytest.fixture
def photo(lesion_photo) -> Image.Image:
    return lesion_photo(centre=(0.3, 0.6), radii=(0.12, 0.15))


def _hooks(model: torch.nn.Module) -> list[str]:
    return [name for name, m in model.named_modules()
            if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks]


@pytest.mark.parametrize("method", list(METHODS))
def test_heatmap_for_each_method(explainer: Explainer, predictor: Predictor, photo: Image.Image,
                                 method: str) -> None:
    heat = explainer.heatmap(photo, method=method)
    assert isinstance(heat, Heatmap) and heat.method == method
    assert heat.cam.shape == (IMAGE_SIZE, IMAGE_SIZE)
    assert heat.cam.dtype == np.float32 and np.isfinite(heat.cam).all()
    assert heat.cam.min() >= 0.0 and heat.cam.max() <= 1.0
    assert heat.cam.max() > heat.cam.min()  # a map, not a constant
    # without a target the predicted class is explained
    assert heat.target == predictor.predict([photo]).top(predictor.predict([photo]).photos[0])[0]
    # hooks are released: neither the explainer's copy nor the serving model keeps any
    assert _hooks(explainer._model) == []
    assert _hooks(predictor.model) == []
    x, y = heat.peak()
    assert 0.0 < x < 1.0 and 0.0 < y < 1.0


def test_explainer_shares_the_weights_and_leaves_the_serving_model_as_it_was(predictor: Predictor) -> None:
    flags = [p.requires_grad for p in predictor.model.parameters()]
    explainer = Explainer(predictor.model)
    pairs = list(zip(explainer._model.parameters(), predictor.model.parameters(), strict=True))
    assert all(a is not b and a.data_ptr() == b.data_ptr() for a, b in pairs)  # no second copy of the weights
    assert not any(a.requires_grad for a, _ in pairs)
    assert [p.requires_grad for p in predictor.model.parameters()] == flags


def test_explainer_uses_a_private_copy(explainer: Explainer, predictor: Predictor) -> None:
    assert explainer._model is not predictor.model
    assert explainer.target_layer is explainer._model.cam_layer
    assert explainer.target_layer not in set(predictor.model.modules())
    for (name, a), b in zip(explainer._model.state_dict().items(), predictor.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_serving_model_unchanged_by_cam(explainer: Explainer, predictor: Predictor, photo: Image.Image) -> None:
    before = predictor.predict([photo]).photos[0]
    explainer.heatmap(photo)
    assert predictor.predict([photo]).photos[0] == before
    assert all(not p.requires_grad for p in explainer._model.parameters())
    assert all(p.grad is None for p in predictor.model.parameters())


def test_explicit_target(explainer: Explainer, photo: Image.Image) -> None:
    mel = explainer.heatmap(photo, target="mel")
    vasc = explainer.heatmap(photo, target="vasc")
    assert mel.target == "mel" and vasc.target == "vasc"
    assert not np.allclose(mel.cam, vasc.cam, atol=1e-3)
    again = explainer.heatmap(photo, target="mel")
    assert np.allclose(mel.cam, again.cam, atol=1e-5)


def test_several_photos_and_targets(explainer: Explainer, lesion_photo) -> None:
    photos = [lesion_photo(), lesion_photo(centre=(0.7, 0.3), radii=(0.1, 0.1), seed=1)]
    maps = explainer.heatmaps(photos, ["bcc", None])
    assert [m.target for m in maps][0] == "bcc" and maps[1].target in CLASSES
    assert np.allclose(maps[0].cam, explainer.heatmap(photos[0], "bcc").cam, atol=1e-4)


def test_unknown_method_and_class(explainer: Explainer, photo: Image.Image) -> None:
    with pytest.raises(ValueError, match="unknown CAM method 'Saliency'"):
        explainer.heatmap(photo, method="Saliency")
    with pytest.raises(ValueError, match="unknown class 'scc'"):
        explainer.heatmap(photo, target="scc")
    # a refused request leaves no hooks behind either
    assert _hooks(explainer._model) == []


def test_overlay_size_and_opacity(explainer: Explainer, lesion_photo) -> None:
    photo = lesion_photo(size=(210, 140))
    heat = explainer.heatmap(photo)
    assert heat.resized(photo.size).shape == (140, 210)
    full = heat.overlay(photo, 0.5)
    assert isinstance(full, Image.Image) and full.mode == "RGB" and full.size == photo.size

    base = np.asarray(photo, dtype=np.int16)
    none = np.asarray(heat.overlay(photo, 0.0), dtype=np.int16)
    assert np.abs(none - base).max() <= 1
    half = np.abs(np.asarray(full, dtype=np.int16) - base).mean()
    most = np.abs(np.asarray(heat.overlay(photo, 0.9), dtype=np.int16) - base).mean()
    assert 5 < half < most


def test_overlay_opacity_zero_keeps_a_dark_photo_as_it_is(explainer: Explainer, lesion_photo) -> None:
    dark = lesion_photo(skin=(110, 80, 70), lesion=(40, 25, 20))
    heat = explainer.heatmap(dark)
    assert np.abs(np.asarray(heat.overlay(dark, 0.0), dtype=np.int16) - np.asarray(dark, dtype=np.int16)).max() <= 1


def test_overlay_accepts_other_modes(lesion_photo) -> None:
    heat = Heatmap(cam=np.linspace(0, 1, IMAGE_SIZE * IMAGE_SIZE, dtype=np.float32).reshape(IMAGE_SIZE, IMAGE_SIZE),
                   target="mel", method="Grad-CAM")
    grey = lesion_photo(size=(60, 40)).convert("L")
    out = heat.overlay(grey, 1.0)
    assert out.size == (60, 40) and out.mode == "RGB"
    # full opacity shows the colour map: cold (blue) at the top, hot (red) at the bottom
    arr = np.asarray(out, dtype=int)
    assert arr[1, 30, 2] > arr[1, 30, 0] and arr[-2, 30, 0] > arr[-2, 30, 2]
    assert heat.peak() == pytest.approx(((IMAGE_SIZE - 0.5) / IMAGE_SIZE, (IMAGE_SIZE - 0.5) / IMAGE_SIZE))


def test_default_method_is_the_best_class_discriminative_one() -> None:
    def card(scores: dict[str, float]) -> ModelCard:
        return ModelCard(metrics={"heatmaps": {"n": 200, **{m: {"pointing_game": v} for m, v in scores.items()}}})

    assert default_method(None) == default_method(ModelCard()) == "Grad-CAM"
    assert default_method(card({"Grad-CAM": 0.90, "Grad-CAM++": 0.93, "LayerCAM": 0.7})) == "Grad-CAM++"
    # EigenCAM ignores the class asked for: even when it scores best it is not the default
    assert default_method(card({"Grad-CAM": 0.93, "Grad-CAM++": 0.92, "EigenCAM (gradient-free)": 0.95})) == "Grad-CAM"
    assert default_method(card({"EigenCAM (gradient-free)": 0.95})) == "Grad-CAM"


# ----------------------------------------------------------------------------- shipped weights


def irregular_lesion(size: tuple[int, int], centre: tuple[float, float], radius: float = 0.13,
                     seed: int = 0) -> tuple[Image.Image, np.ndarray]:
    """A noisy skin-coloured photo with one dark brown blob of wavy outline, and the blob's mask.

    `centre` is a fraction of the width and height, `radius` of the shorter side.
    """
    w, h = size
    rng = np.random.default_rng(seed)
    cx, cy, r = centre[0] * w, centre[1] * h, radius * min(w, h)
    phase = rng.uniform(0, 2 * math.pi, 2)
    outline = []
    for t in np.linspace(0, 2 * math.pi, 48, endpoint=False):
        k = 1 + 0.18 * math.sin(3 * t + phase[0]) + 0.1 * math.sin(5 * t + phase[1]) + 0.05 * rng.standard_normal()
        outline.append((cx + r * k * math.cos(t), cy + r * k * math.sin(t)))
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).polygon(outline, fill=255)
    blend = np.asarray(mask.filter(ImageFilter.GaussianBlur(1.5)), dtype=np.float32)[..., None] / 255.0
    skin, brown = np.array([226, 178, 152], np.float32), np.array([92, 56, 34], np.float32)
    arr = skin * (1 - blend) + brown * blend + rng.integers(-8, 9, size=(h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), np.asarray(mask) > 127


@pytest.fixture(scope="module")
def shipped() -> Predictor:
    """The shipped weights (checksum verified), whatever their input size."""
    return load_predictor(device="cpu")


@pytest.mark.parametrize("size", [(224, 224), (200, 150)])
@pytest.mark.parametrize("centre", [(0.3, 0.35), (0.7, 0.65), (0.7, 0.3)])
def test_shipped_heatmap_peaks_on_the_lesion(shipped: Predictor, size: tuple[int, int],
                                             centre: tuple[float, float]) -> None:
    photo, mask = irregular_lesion(size, centre)
    method = default_method(shipped.card)  # what the app shows first
    fx, fy = shipped.explainer.heatmap(photo, method=method).peak()
    x, y = fx * size[0], fy * size[1]  # the peak in photo pixels
    ys, xs = np.nonzero(mask)
    distance = float(np.hypot(xs + 0.5 - x, ys + 0.5 - y).min())
    # The CAM is computed on the last block's grid (the input size / 32: 7x7 at 224 px, 5x5 at 160 px)
    # and upsampled, so its peak is only located to within a grid cell: allow half a cell of the photo.
    tolerance = 0.5 * max(size) / math.ceil(shipped.model.image_size / 32)
    assert distance <= tolerance, f"{method} peaks at ({x:.0f}, {y:.0f}), {distance:.0f} px from the lesion"
