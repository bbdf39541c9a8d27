"""skin_model.explain.lesion: segmentation of synthetic lesions, the change measures, and the
segmentation against HAM10000's published masks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from skin_model.data.ham10000 import load_ham10000
from skin_model.explain import lesion
from skin_model.explain.lesion import LesionMeasures, changes, measure, segment

SKIN = (226, 178, 152)
BROWN = (96, 58, 36)
SIZE = (240, 200)


def _disc(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill) -> None:
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)


def _shape(discs: list[tuple[float, float, float]], size: tuple[int, int] = SIZE) -> np.ndarray:
    """Boolean mask: the union of discs (cx, cy, r) in pixels."""
    img = Image.new("L", size, 0)
    draw = ImageDraw.Draw(img)
    for cx, cy, r in discs:
        _disc(draw, cx, cy, r, 255)
    return np.asarray(img) > 0


def _photo(mask: np.ndarray, colour=BROWN, second: tuple[np.ndarray, tuple[int, int, int]] | None = None,
           seed: int = 0) -> Image.Image:
    """A noisy skin-coloured photo with `mask` painted in `colour` (and a second region in another)."""
    arr = np.empty((*mask.shape, 3), dtype=np.int16)
    arr[:] = SKIN
    arr[mask] = colour
    if second is not None:
        arr[second[0]] = second[1]
    arr += np.random.default_rng(seed).integers(-8, 9, size=arr.shape, dtype=np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="RGB")


def _ellipse(size: tuple[int, int], box: tuple[float, float, float, float]) -> np.ndarray:
    img = Image.new("L", size, 0)
    ImageDraw.Draw(img).ellipse(box, fill=255)
    return np.asarray(img) > 0


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.mark.parametrize(("size", "box"), [
    ((200, 150), (50, 45, 150, 105)),         # centred ellipse
    ((300, 225), (70, 60, 170, 190)),         # off-centre, upright
    ((160, 160), (60, 50, 110, 120)),         # small
])
def test_segment_recovers_a_drawn_ellipse(size: tuple[int, int], box: tuple[float, ...]) -> None:
    drawn = _ellipse(size, box)
    photo = _photo(drawn)
    mask = segment(photo)
    assert mask.dtype == bool and mask.shape == (size[1], size[0])
    assert _iou(mask, drawn) > 0.8


def test_segment_prefers_the_central_lesion_over_a_corner_spot() -> None:
    central = _shape([(120, 100, 40)])
    corner = _shape([(12, 12, 10)])
    mask = segment(_photo(central | corner))
    assert _iou(mask, central) > 0.8
    assert not mask[:20, :20].any()


def test_measure_area_and_symmetry_of_a_circle() -> None:
    circle = _shape([(120, 100, 45)])
    m = measure(_photo(circle))
    assert isinstance(m, LesionMeasures)
    assert m.area_fraction == pytest.approx(circle.mean(), rel=0.1)
    assert m.area_fraction == pytest.approx(math.pi * 45 ** 2 / (SIZE[0] * SIZE[1]), rel=0.1)
    assert 0.0 <= m.asymmetry < 0.05
    assert m.as_dict() == {"area_fraction": m.area_fraction, "colour_variation": m.colour_variation,
                           "asymmetry": m.asymmetry}


def test_a_lobed_lesion_is_clearly_asymmetric() -> None:
    circle = _shape([(120, 100, 45)])
    lobed = _shape([(110, 105, 45), (155, 75, 30)])  # a large lobe up and to the right
    sym = measure(_photo(circle)).asymmetry
    asym = measure(_photo(lobed)).asymmetry
    assert asym > 0.1
    assert asym > 5 * sym
    # a lobe on a principal axis leaves one mirror symmetric, but still scores clearly higher
    axial = measure(_photo(_shape([(110, 100, 45), (160, 100, 28)]))).asymmetry
    assert axial > 0.05 and axial > 3 * sym
    # the measure is about shape only: the drawn mask gives about the same figure as the segmented one
    assert lesion.asymmetry(lobed) == pytest.approx(asym, abs=0.05)
    assert lesion.asymmetry(circle) == pytest.approx(0.0, abs=0.02)


def test_colour_variation_is_higher_for_a_two_colour_lesion() -> None:
    disc = _shape([(120, 100, 50)])
    left = disc & (np.arange(SIZE[0])[None, :] < 120)
    one = measure(_photo(disc))
    two = measure(_photo(disc, second=(left, (50, 25, 60))))  # dark purple half, brown half
    assert two.area_fraction == pytest.approx(one.area_fraction, rel=0.1)  # both halves segmented
    assert two.colour_variation > 2 * one.colour_variation
    assert one.colour_variation > 0  # the noise


def test_measure_uses_a_given_mask() -> None:
    disc = _shape([(120, 100, 50)])
    photo = _photo(disc)
    given = np.zeros_like(disc)
    given[:50, :60] = True
    m = measure(photo, given)
    assert m.area_fraction == pytest.approx(given.mean())


def test_changes_relative_to_the_first_visit() -> None:
    r = 30
    first = measure(_photo(_shape([(120, 100, r)]), seed=1))
    second = measure(_photo(_shape([(120, 100, r * math.sqrt(2))]), seed=2))  # double the area
    same = measure(_photo(_shape([(118, 102, r)]), seed=3))
    rows = changes([first, second, same])
    assert len(rows) == 3
    assert rows[0]["area_vs_first"] == 1.0
    assert rows[1]["area_vs_first"] == pytest.approx(2.0, rel=0.1)
    assert rows[2]["area_vs_first"] == pytest.approx(1.0, rel=0.1)
    assert rows[1]["area_fraction"] == second.area_fraction and rows[1]["asymmetry"] == second.asymmetry
    assert changes([]) == []
    # no lesion found on the first visit: ratios are undefined, not infinite
    later = changes([LesionMeasures(0.0, 0.0, 0.0), second])
    assert all(math.isnan(r["area_vs_first"]) for r in later)


@pytest.mark.parametrize("colour", [(255, 255, 255), SKIN, (0, 0, 0), (128, 128, 128)])
def test_blank_image_has_no_lesion(colour: tuple[int, int, int]) -> None:
    blank = Image.new("RGB", (200, 150), colour)
    mask = segment(blank)
    assert mask.shape == (150, 200) and not mask.any()
    assert measure(blank) == LesionMeasures(0.0, 0.0, 0.0)


def test_plain_noisy_skin_has_no_lesion() -> None:
    photo = _photo(np.zeros((SIZE[1], SIZE[0]), dtype=bool))
    assert not segment(photo).any()
    assert measure(photo).area_fraction == 0.0


@pytest.mark.slow
def test_segmentation_against_published_masks(ham_dir: Path) -> None:
    ham = load_ham10000(ham_dir)
    table = ham.table[ham.table.mask_path.notna()].sort_values("image_id").reset_index(drop=True)
    picked = table.iloc[::200].head(50)
    if len(picked) < 50:
        pytest.skip(f"only {len(picked)} photos with masks in {ham_dir}")
    ious = []
    for row in picked.itertuples():
        photo = Image.open(row.path).convert("RGB")
        truth = np.asarray(Image.open(row.mask_path).convert("L").resize(photo.size, Image.NEAREST)) >= 128
        ious.append(_iou(segment(photo), truth))
    assert np.mean(ious) > 0.6, f"mean IoU {np.mean(ious):.3f}"
