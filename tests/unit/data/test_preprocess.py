"""skin_model.data.preprocess: the torch-free input of the serving engine is torch's own, bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from skin_model.data.config import DataConfig
from skin_model.data.preprocess import colour_gains, normalise, pixels, resize, shades_of_gray
from skin_model.engine import preprocess

SIZES = [(150, 200), (160, 160), (224, 224), (37, 301)]


def torch_resize(rgb: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    return F.interpolate(x, size=size, mode=mode, antialias=True, align_corners=False)[0].numpy()


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("shape", [(150, 200), (160, 160), (90, 120), (480, 640), (1200, 37), (17, 23)])
def test_resize_is_torchs_uint8_resize(mode: str, shape: tuple[int, int]) -> None:
    """Noise (every level, sharp edges: the worst case for rounding) at sizes that shrink, grow, keep
    one side, and shrink far enough that the sums need float64."""
    rgb = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    for size in SIZES:
        assert np.array_equal(resize(rgb, size, mode), torch_resize(rgb, size, mode)), (shape, size)


def test_real_photos_resize_as_torch_does(ham_dir: Path) -> None:
    """HAM10000 photos, whole and at a phone camera's size: PIL's resize differs from torch's in about
    1.5% of these values; this module must not differ in any."""
    for path in sorted((ham_dir / "images").glob("*.jpg"))[:12]:
        photo = Image.open(path).convert("RGB")
        for rgb in (np.asarray(photo), np.asarray(photo.resize((1600, 1200)))):
            for size in SIZES[:2]:
                assert np.array_equal(resize(rgb, size), torch_resize(rgb, size, "bilinear")), path.name


def test_pixels_equal_the_torch_engines_input_from_photos_and_from_batches(lesion_photo) -> None:
    photos = [lesion_photo(seed=i, size=(200, 150)) for i in range(3)]
    batch = torch.stack([torch.from_numpy(np.array(p)).permute(2, 0, 1) for p in photos])
    for config in (DataConfig(), DataConfig(image_size=200, input_height=150), DataConfig(interpolation="bicubic")):
        ours = pixels(photos, config)
        assert ours.dtype == np.float32 and ours.shape == (3, 3, *config.input_size)
        assert np.array_equal(ours, preprocess(batch, config).numpy())  # training's validation batches
        assert np.array_equal(ours, preprocess(photos, config).numpy())
    odd = [lesion_photo(size=(97, 61)).convert("RGBA"), lesion_photo(size=(640, 480)).convert("L")]
    assert np.array_equal(pixels(odd), np.concatenate([pixels([p.convert("RGB")]) for p in odd]))


def test_normalise_by_lookup_is_the_arithmetic() -> None:
    levels = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16).repeat(3, axis=1)
    config = DataConfig(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    mean = torch.tensor(config.mean).view(1, 3, 1, 1)
    std = torch.tensor(config.std).view(1, 3, 1, 1)
    expected = torch.from_numpy(levels).float().mul_(1 / 255).sub_(mean).div_(std).numpy()
    assert np.array_equal(normalise(levels, config), expected)
    with pytest.raises(ValueError, match="no photos"):
        pixels([])


def _cast(photo: Image.Image, cast: tuple[float, float, float]) -> Image.Image:
    """The photo as a camera with another white balance would have taken it."""
    rgb = np.asarray(photo, dtype=np.float64) * np.asarray(cast)
    return Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))


def test_shades_of_gray_neutralises_a_colour_cast() -> None:
    """A grey texture under a warm and a cold light: normalised, each becomes grey (equal channels
    within rounding), and a photo that is already grey is left exactly as it was."""
    texture = np.random.default_rng(0).integers(40, 200, (1, 1, 60, 80)).astype(np.float64)
    grey = np.repeat(texture, 3, axis=1).astype(np.uint8)
    assert np.array_equal(shades_of_gray(grey), grey)
    for cast in ((1.2, 0.9, 0.7), (0.6, 0.8, 1.1)):
        tinted = np.clip(np.rint(texture * np.asarray(cast).reshape(1, 3, 1, 1)), 0, 255).astype(np.uint8)
        assert np.abs(tinted[:, 0].astype(int) - tinted[:, 2].astype(int)).mean() > 20
        out = shades_of_gray(tinted).astype(int)
        assert np.abs(out[:, 0] - out[:, 1]).max() <= 2 and np.abs(out[:, 0] - out[:, 2]).max() <= 2


def test_a_dark_channel_keeps_its_gain_and_the_batch_is_per_photo() -> None:
    photos = np.zeros((2, 3, 8, 8), dtype=np.uint8)
    photos[0, 0] = 200  # red only: green and blue carry no light
    photos[1] = 90
    gains = colour_gains(photos)
    assert np.isfinite(gains).all() and gains[0, 1] == gains[0, 2] == 1.0
    assert np.allclose(gains[1], 1.0)
    assert np.array_equal(shades_of_gray(photos)[1], photos[1])


def test_a_colour_normalising_card_gives_one_input_whatever_the_white_balance(lesion_photo) -> None:
    """Why the option exists: the same lesion under another white balance reaches the network almost
    unchanged, on the serving path and on training's validation path alike."""
    config = DataConfig(image_size=96, input_height=72, colour_constancy="shades_of_gray")
    photo = lesion_photo(size=(200, 150))
    warm = _cast(photo, (1.15, 0.95, 0.8))
    plain = np.abs(pixels([warm], DataConfig(image_size=96, input_height=72)) - pixels([photo], DataConfig(
        image_size=96, input_height=72))).mean()
    normalised = np.abs(pixels([warm], config) - pixels([photo], config)).mean()
    assert normalised < plain / 5
    batch = torch.stack([torch.from_numpy(np.array(p)).permute(2, 0, 1) for p in (photo, warm)])
    assert np.array_equal(pixels([photo, warm], config), preprocess(batch, config).numpy())
