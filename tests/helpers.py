"""Test helpers shared by every layer of the suite (importable as `helpers`: pytest puts tests/
on the path): synthetic lesion photos, the stub backbone, tiny models and fake HAM10000 folders."""


from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw

from skin_model.constants import CLASSES
from skin_model.engine import preprocess
from skin_model.model import backbones
from skin_model.model.network import SkinLesionNet
from skin_model.trust.ood import OODVerdict

REPO = Path(__file__).resolve().parents[1]

# The suite runs many tiny forward passes; one intra-op thread avoids the thread
# oversubscription that makes them several times slower on a small, busy machine
# (or under pytest-xdist). SKIN_MODEL_TEST_THREADS overrides it.
torch.set_num_threads(int(os.environ.get("SKIN_MODEL_TEST_THREADS", "1")))
DEFAULT_HAM_DIR = REPO.parent / "shared" / "ham10000"

SKIN = (226, 178, 152)
BROWN = (96, 58, 36)

# Out-of-distribution thresholds (a card's trust.ood) that refuse blank or uniform images and nothing else
# (the feature check is off): a test gets refused photos without fitting the check.
QUALITY_ONLY_OOD = {"feature_distance": 1e12, "min_contrast": 5.0, "min_sharpness": 0.0,
                    "min_brightness": 1.0, "max_brightness": 254.0}


def make_lesion_photo(size: tuple[int, int] = (200, 150), centre: tuple[float, float] = (0.5, 0.5),
                      radii: tuple[float, float] = (0.25, 0.2), skin: tuple[int, int, int] = SKIN,
                      lesion: tuple[int, int, int] = BROWN, seed: int = 0) -> Image.Image:
    """A dermoscopy-like RGB photo: noisy skin-coloured background with a dark brown ellipse.

    `centre` and `radii` are fractions of the width and height.
    """
    w, h = size
    img = Image.new("RGB", size, skin)
    cx, cy = centre[0] * w, centre[1] * h
    rx, ry = radii[0] * w, radii[1] * h
    ImageDraw.Draw(img).ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=lesion)
    rng = np.random.default_rng(seed)
    arr = np.asarray(img, dtype=np.int16) + rng.integers(-8, 9, size=(h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="RGB")



STUB_BACKBONE = "stub-cnn"


class StubEncoder(torch.nn.Module):
    """A three-block CNN with EfficientNet-Lite's interface (photos -> (N, 1280), total stride 32),
    so logic tests run a forward in milliseconds instead of EfficientNet's 50 layers."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn

        def block(cin: int, cout: int, k: int, stride: int) -> torch.nn.Module:
            return nn.Sequential(nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2), nn.BatchNorm2d(cout), nn.ReLU())

        self.stem = block(3, 16, 3, 2)
        self.blocks = nn.ModuleList([block(16, 32, 3, 4), block(32, 64, 3, 4), block(64, 1280, 1, 1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.suffix(self.prefix(x, 0), 0)

    def prefix(self, x: torch.Tensor, n: int) -> torch.Tensor:
        x = self.stem(x)
        for b in self.blocks[:n]:
            x = b(x)
        return x

    def suffix(self, x: torch.Tensor, n: int) -> torch.Tensor:
        for b in self.blocks[n:]:
            x = b(x)
        return x.mean((2, 3))


backbones.register(STUB_BACKBONE, backbones.Backbone(
    build=lambda image_size, pretrained: StubEncoder(),
    early_layers=lambda enc, n: [enc.stem, *enc.blocks[:n]] if n > 0 else [],
    cam_layer=lambda enc: enc.blocks[-1], ood_layer=lambda enc: enc.blocks[1],
    prefix=lambda enc, x, n: enc.prefix(x, n), suffix=lambda enc, x, n: enc.suffix(x, n)))


def build_tiny_model(seed: int = 0, backbone: str = STUB_BACKBONE) -> SkinLesionNet:
    """An untrained SkinLesionNet (pretrained=False) whose outputs depend on the photo; on the stub
    backbone unless an EfficientNet is asked for.

    PyTorch's default initialisation lets the signal of a deep network fade to nothing
    (every photo then gets the same output, so equality tests would pass vacuously), so the
    BatchNorm running statistics are estimated on a batch of synthetic photos, as a trained
    network would have them. Weights are untouched.
    """
    torch.manual_seed(seed)
    model = SkinLesionNet(backbone=backbone, pretrained=False)
    photos = [make_lesion_photo(centre=(0.2 + 0.08 * i, 0.3 + 0.05 * i), radii=(0.1 + 0.02 * i, 0.12),
                                lesion=(60 + 15 * i, 40 + 5 * i, 30), seed=i) for i in range(8)]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for module in norms:
        module.momentum = None  # cumulative average: one pass sets the statistics
        module.reset_running_stats()
    model.train()
    with torch.no_grad():
        model.features(preprocess(photos))
    for module, momentum in zip(norms, momenta):
        module.momentum = momentum
    return model.eval()



def write_fake_ham(root: Path, layout: str = "flat", lesions_per_class: int = 3,
                   images_per_lesion: tuple[int, ...] = (1, 2, 3), size: tuple[int, int] = (64, 48)) -> Path:
    """A tiny HAM10000 folder: metadata csv + synthetic JPEGs in the flat or official layout.

    Lesion k of a class gets images_per_lesion[k % len(images_per_lesion)] photos.
    """
    if layout not in ("flat", "official"):
        raise ValueError(layout)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sites = ["back", "face", "trunk", "lower extremity", "unknown"]
    rows = []
    image_no = 24306
    lesion_no = 1
    for dx in CLASSES:
        for k in range(lesions_per_class):
            lesion_id = f"HAM_{lesion_no:07d}"
            lesion_no += 1
            age = float(rng.integers(20, 85)) if k % 4 else np.nan
            sex = ["male", "female", "unknown"][k % 3]
            for _ in range(images_per_lesion[k % len(images_per_lesion)]):
                rows.append({"lesion_id": lesion_id, "image_id": f"ISIC_{image_no:07d}", "dx": dx,
                             "dx_type": "histo", "age": age, "sex": sex, "localization": sites[k % len(sites)]})
                image_no += 1
    table = pd.DataFrame(rows)
    table.to_csv(root / "HAM10000_metadata.csv", index=False)
    for i, row in enumerate(table.itertuples()):
        if layout == "flat":
            folder = root / "images"
        else:
            folder = root / ("HAM10000_images_part_1" if i % 2 == 0 else "HAM10000_images_part_2")
        folder.mkdir(exist_ok=True)
        c = CLASSES.index(row.dx)
        photo = make_lesion_photo(size=size, centre=(0.3 + 0.06 * c, 0.5), radii=(0.15 + 0.02 * c, 0.2),
                                  lesion=(40 + 25 * c, 30 + 10 * c, 20 + 20 * (c % 3)), seed=i)
        photo.save(folder / f"{row.image_id}.jpg", quality=90)
    return root


def refused(n: int, reasons: dict[int, str]) -> list[OODVerdict | None]:
    """Out-of-distribution verdicts for n photos, photo i refused for `reasons[i]` (a trust.ood.REASONS key):
    a Prediction built with them refuses those photos exactly as the predictor would."""
    return [OODVerdict(score=2.0, reason=reasons[i]) if i in reasons else None for i in range(n)]
