"""skin_model.evaluation.ood_set: the offline set of images that are not dermatoscopic photos."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from helpers import make_lesion_photo
from PIL import Image

from skin_model.evaluation import ood_set
from skin_model.trust import ood

KINDS = {"blank", "noise", "gradient", "document", "screenshot"}


def _kinds(items: list[tuple[str, Image.Image]]) -> Counter:
    return Counter(name.split(":")[0] for name, _ in items)


def _check_images(items: list[tuple[str, Image.Image]]) -> None:
    names = [name for name, _ in items]
    assert len(set(names)) == len(names), "names are unique"
    for name, img in items:
        assert ":" in name
        assert isinstance(img, Image.Image) and img.mode == "RGB", name
        assert min(img.size) >= 16, name


def test_generated_has_every_kind() -> None:
    items = ood_set.generated()
    _check_images(items)
    kinds = _kinds(items)
    assert set(kinds) == KINDS
    assert kinds == {"blank": 6, "noise": 8, "gradient": 2, "document": 4, "screenshot": 4}
    by_name = dict(items)
    white = np.asarray(by_name["blank:(255, 255, 255)"])
    assert (white == 255).all()
    for name, img in items:
        spread = np.asarray(img, dtype=np.float64).reshape(-1, 3).std(0).max()
        if name.startswith("blank:"):
            assert spread == 0.0, name
        else:
            assert spread > 5.0, name  # everything else has content
    # documents are mostly white paper with dark text
    doc = np.asarray(by_name["document:0"].convert("L"))
    assert (doc > 240).mean() > 0.8 and (doc < 80).any()
    gradient = np.asarray(by_name["gradient:grey"].convert("L"), dtype=np.float32)
    assert gradient[:, 0].mean() < 5 and gradient[:, -1].mean() > 250


def test_generated_is_reproducible_per_seed() -> None:
    a, b, c = ood_set.generated(0), ood_set.generated(0), ood_set.generated(1)
    assert [n for n, _ in a] == [n for n, _ in b]
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for (_, x), (_, y) in zip(a, b))
    noise_a, noise_c = dict(a)["noise:uniform0"], dict(c)["noise:uniform0"]
    assert not np.array_equal(np.asarray(noise_a), np.asarray(noise_c))


def test_corrupted_gives_three_versions_per_photo() -> None:
    photos = [make_lesion_photo(seed=i) for i in range(3)]
    items = ood_set.corrupted(photos)
    _check_images(items)
    assert len(items) == 3 * len(photos)
    assert _kinds(items) == {"blurred": 3, "overexposed": 3, "underexposed": 3}
    by_name = dict(items)
    for i, photo in enumerate(photos):
        q = ood.quality(photo)
        assert by_name[f"blurred:{i}"].size == photo.size
        assert ood.quality(by_name[f"blurred:{i}"])["sharpness"] < 0.2 * q["sharpness"]
        assert ood.quality(by_name[f"overexposed:{i}"])["brightness"] > q["brightness"] + 50
        assert ood.quality(by_name[f"underexposed:{i}"])["brightness"] < 0.15 * q["brightness"]
    assert ood_set.corrupted([]) == []


def test_build_without_photos_is_the_samples_and_the_generated_images() -> None:
    items = ood_set.build([])
    assert _kinds(items) - _kinds(ood_set.skimage_photos()) - _kinds(ood_set.ordinary_photos()) == _kinds(
        ood_set.generated())


def test_ordinary_photos_are_at_least_60_in_the_three_framings() -> None:
    """Issue #14: at least 60 ordinary photos, from what installs offline, framed as users frame photos."""
    pytest.importorskip("skimage")
    pytest.importorskip("matplotlib")
    items = ood_set.ordinary_photos()
    _check_images(items)
    assert len(items) >= 60 and _kinds(items) == {"ordinary": len(items)}
    names = {n for n, _ in items}
    assert {"ordinary:coffee.png:full", "ordinary:coffee.png:centre_crop", "ordinary:coffee.png:zoom_0.6",
            "ordinary:grace_hopper.jpg:full"} <= names
    sizes = {n.rsplit(":", 1)[1]: img.size for n, img in items if n.startswith("ordinary:coffee.png:")}
    assert sizes["centre_crop"][0] == sizes["centre_crop"][1] == min(sizes["full"])
    assert sizes["zoom_0.6"][0] == round(0.6 * min(sizes["full"]))


def test_build_includes_skimage_samples_and_corrupts_some_photos() -> None:
    pytest.importorskip("skimage")
    photos = [make_lesion_photo(seed=i) for i in range(6)]
    items = ood_set.build(photos, n_corrupted=4, seed=0)
    _check_images(items)
    kinds = _kinds(items)
    assert kinds["skimage"] >= 10
    assert kinds["skimage"] == len(ood_set.skimage_photos())
    assert {"skimage:astronaut", "skimage:camera", "skimage:coffee"} <= {n for n, _ in items}
    assert KINDS <= set(kinds)
    assert kinds["blurred"] == kinds["overexposed"] == kinds["underexposed"] == 4
    # more corruptions asked for than photos given: every photo once
    assert _kinds(ood_set.build(photos, n_corrupted=100))["blurred"] == len(photos)
    # the corrupted photos are a seeded choice (skimage's binary_blobs is random, so names only there)
    again = ood_set.build(photos, n_corrupted=4, seed=0)
    assert [n for n, _ in again] == [n for n, _ in items]
    corrupted = [(x, y) for (n, x), (_, y) in zip(items, again) if n.split(":")[0] in ("blurred", "overexposed")]
    assert len(corrupted) == 8
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in corrupted)


def test_skimage_samples_are_rgb_uint8() -> None:
    pytest.importorskip("skimage")
    samples = dict(ood_set.skimage_photos())
    assert samples, "scikit-image is installed, so its samples are used"
    assert all(name.startswith("skimage:") for name in samples)
    # float and greyscale samples are stretched to 0-255 RGB
    phantom = np.asarray(samples["skimage:shepp_logan_phantom"])
    assert phantom.shape[2] == 3 and phantom.min() == 0 and phantom.max() == 255
    camera = np.asarray(samples["skimage:camera"])
    assert (camera[..., 0] == camera[..., 1]).all()


def test_to_pil_stretches_floats() -> None:
    img = ood_set._to_pil(np.array([[0.0, 0.5], [1.0, 0.25]]))
    assert img.mode == "RGB"
    assert np.asarray(img)[..., 0].tolist() == [[0, 128], [255, 64]]  # rounded
    flat = ood_set._to_pil(np.full((4, 4), 3.0))  # a constant float image does not divide by zero
    assert (np.asarray(flat) == 0).all()
