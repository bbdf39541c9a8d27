"""Training views (`augment_batch`): the input's shape, and rotations that turn the view without shearing it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skin_model.constants import MEAN, STD
from skin_model.data.transforms import augment_batch


def _disk_photos(n: int, height: int, width: int, radius: int) -> torch.Tensor:
    """White photos with a black disk in the middle: round in pixels, whatever the frame's aspect."""
    yy, xx = np.mgrid[:height, :width]
    disk = (yy - (height - 1) / 2) ** 2 + (xx - (width - 1) / 2) ** 2 <= radius ** 2
    photo = np.where(disk, 0, 255).astype(np.uint8)
    return torch.from_numpy(photo)[None, None].expand(n, 3, height, width).contiguous()


def _elongation(view: torch.Tensor, radius: int) -> float:
    """Ratio of the larger to the smaller principal axis of the dark pixels near the view's centre."""
    grey = view.mean(0).numpy()
    h, w = grey.shape
    yy, xx = np.mgrid[:h, :w]
    near = (yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2 <= (3 * radius) ** 2
    dark = near & (grey < (grey[near].max() + grey[near].min()) / 2)
    coords = np.stack([yy[dark], xx[dark]]).astype(np.float64)
    low, high = np.linalg.eigvalsh(np.cov(coords))
    return float(np.sqrt(high / low))


@pytest.mark.parametrize("size", [96, (75, 100)])
def test_views_have_the_input_shape_and_normalised_values(size) -> None:
    photos = torch.randint(0, 256, (6, 3, 150, 200), dtype=torch.uint8)
    views = augment_batch(photos, size, torch.Generator().manual_seed(0))
    height, width = (size, size) if isinstance(size, int) else size
    assert views.shape == (6, 3, height, width) and views.dtype == torch.float32
    low = min((0 - m) / s for m, s in zip(MEAN, STD))
    high = max((1 - m) / s for m, s in zip(MEAN, STD))
    assert low - 1e-5 <= float(views.min()) and float(views.max()) <= high + 1e-5


@pytest.mark.parametrize(("frame", "size"), [((120, 120), 96), ((150, 200), (75, 100))])
def test_rotations_keep_a_round_lesion_round(frame: tuple[int, int], size) -> None:
    """Whole-frame views (scale 1, no aspect change) of a round lesion: any rotation, on a square or a
    4:3 input, must leave it round (a rotation done in normalised coordinates shears a 4:3 view)."""
    radius = frame[0] // 8
    photos = _disk_photos(48, *frame, radius=radius)
    views = augment_batch(photos, size, torch.Generator().manual_seed(3), scale=(1.0, 1.0), ratio=(1.0, 1.0),
                          jitter=0.0, hue=0.0, blur_p=0.0)
    out_radius = radius * views.shape[-2] / frame[0]
    elongations = [_elongation(v, round(out_radius)) for v in views]
    assert max(elongations) < 1.15, elongations


def test_colour_normalised_views_do_not_depend_on_the_white_balance() -> None:
    """With the card's colour constancy, a photo and the same photo under a warm light give the same
    training view (the same draw of crop, rotation and jitter), as they give the same inference input."""
    rng = np.random.default_rng(1)
    grey = torch.from_numpy(rng.integers(60, 200, (4, 1, 150, 200)).astype(np.float64))
    photos = (grey * torch.tensor([0.9, 0.85, 0.8]).view(1, 3, 1, 1)).round().to(torch.uint8)
    warm = (grey * torch.tensor([1.1, 0.8, 0.55]).view(1, 3, 1, 1)).round().to(torch.uint8)

    def gap(colour: str | None) -> float:
        a, b = (augment_batch(x, (75, 100), torch.Generator().manual_seed(3), colour_constancy=colour)
                for x in (photos, warm))
        return float((a - b).abs().mean())

    assert gap("shades_of_gray") < gap(None) / 5, (gap("shades_of_gray"), gap(None))
