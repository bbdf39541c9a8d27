"""An offline evaluation set of images that are not dermatoscopic photos of a skin
lesion: ordinary photos (every sample image that scikit-image, scikit-learn and matplotlib
install, each whole, as a centre square crop and zoomed, as users frame photos),
generated images (blank, noise, gradients, documents, screenshots) and corrupted versions
of real test photos (heavy blur, over- and under-exposure)."""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from skin_model.io.pixels import stretch_to_uint8

SKIMAGE_SAMPLES = ("astronaut", "brick", "camera", "cat", "cell", "checkerboard", "chelsea", "clock", "coffee",
                   "coins", "colorwheel", "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry",
                   "logo", "moon", "page", "retina", "rocket", "text", "binary_blobs", "shepp_logan_phantom")


def _to_pil(arr: np.ndarray) -> Image.Image:
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        arr = stretch_to_uint8(arr)
    img = Image.fromarray(arr)
    return img.convert("RGB")


def skimage_photos() -> list[tuple[str, Image.Image]]:
    """scikit-image's bundled sample images (skipped when scikit-image is absent)."""
    try:
        from skimage import data
    except ImportError:
        return []
    out = []
    for name in SKIMAGE_SAMPLES:
        try:
            out.append((f"skimage:{name}", _to_pil(getattr(data, name)())))
        except Exception:  # a sample that needs a download is simply left out
            continue
    return out


def _sample_files() -> list[Path]:
    """The sample images the installed scikit-image, scikit-learn and matplotlib ship (none is downloaded)."""
    found: list[Path] = []
    for module, folder, pattern in (("skimage", "data", "*"), ("sklearn", "datasets/images", "*.jpg"),
                                    ("matplotlib", "mpl-data/sample_data", "*")):
        try:
            root = Path(import_module(module).__file__).parent / folder
        except ImportError:
            continue
        found += sorted(f for f in root.glob(pattern) if f.suffix.lower() in (".png", ".jpg", ".gif"))
    return found


def ordinary_photos(min_side: int = 64) -> list[tuple[str, Image.Image]]:
    """Ordinary, non-dermoscopic photos in the framings users send (whole, centre square crop, zoom):
    ~31 sample images x 3 = ~93 with scikit-image, scikit-learn and matplotlib installed."""
    from skin_model.data.transforms import VARIANTS

    out = []
    for path in _sample_files():
        try:
            with Image.open(path) as img:
                photo = img.convert("RGB")
        except (OSError, ValueError):
            continue
        if min(photo.size) < min_side:  # icons, not photos
            continue
        out += [(f"ordinary:{path.name}:{name}", variant(photo)) for name, variant in VARIANTS.items()]
    return out


def generated(seed: int = 0) -> list[tuple[str, Image.Image]]:
    """Blank, noise, gradient, document and screenshot-like images."""
    rng = np.random.default_rng(seed)
    out = []
    for colour in [(255, 255, 255), (0, 0, 0), (128, 128, 128), (220, 170, 150), (30, 60, 200), (200, 40, 40)]:
        out.append((f"blank:{colour}", Image.new("RGB", (300, 225), colour)))
    for i in range(4):
        out.append((f"noise:uniform{i}", Image.fromarray(rng.integers(0, 256, (225, 300, 3), dtype=np.uint8))))
        grey = rng.normal(128, 40, (225, 300)).clip(0, 255).astype(np.uint8)
        out.append((f"noise:gaussian{i}", Image.fromarray(grey).convert("RGB")))
    x = np.linspace(0, 255, 300)[None, :, None].repeat(225, 0)
    y = np.linspace(0, 255, 225)[:, None, None].repeat(300, 1)
    out.append(("gradient:rgb", Image.fromarray(np.concatenate([x, y, 255 - x], 2).astype(np.uint8))))
    out.append(("gradient:grey", Image.fromarray(x[..., 0].astype(np.uint8)).convert("RGB")))
    for i in range(4):
        doc = Image.new("RGB", (300, 400), "white")
        draw = ImageDraw.Draw(doc)
        for line in range(2, 38):
            words = " ".join("".join(chr(rng.integers(97, 123)) for _ in range(rng.integers(2, 9)))
                             for _ in range(rng.integers(3, 8)))
            draw.text((15, line * 10), words, fill=(20, 20, 20))
        out.append((f"document:{i}", doc))
    for i in range(4):
        shot = Image.new("RGB", (400, 300), (245, 245, 248))
        draw = ImageDraw.Draw(shot)
        draw.rectangle((0, 0, 400, 30), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        draw.rectangle((0, 30, 80, 300), fill=(230, 232, 236))
        for j in range(6):
            top = 45 + j * 40
            draw.rectangle((95, top, 380, top + 28), outline=(180, 180, 190), fill=(255, 255, 255))
            draw.text((105, top + 8), f"Item {j} settings value {rng.integers(0, 999)}", fill=(40, 40, 40))
        out.append((f"screenshot:{i}", shot))
    return out


def corrupted(photos: list[Image.Image], seed: int = 0) -> list[tuple[str, Image.Image]]:
    """Unusable versions of real photos: heavily blurred, over- and under-exposed."""
    out = []
    for i, photo in enumerate(photos):
        out.append((f"blurred:{i}", photo.filter(ImageFilter.GaussianBlur(radius=max(photo.size) / 25))))
        out.append((f"overexposed:{i}", ImageEnhance.Brightness(photo).enhance(3.5)))
        out.append((f"underexposed:{i}", ImageEnhance.Brightness(photo).enhance(0.08)))
    return out


def build(test_photos: list[Image.Image], n_corrupted: int = 100, seed: int = 0) -> list[tuple[str, Image.Image]]:
    """The whole out-of-distribution set: names (kind:detail) and images."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(test_photos), size=min(n_corrupted, len(test_photos)), replace=False) if test_photos else []
    return ordinary_photos() + skimage_photos() + generated(seed) + corrupted([test_photos[i] for i in pick], seed)
