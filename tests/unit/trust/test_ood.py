"""skin_model.trust.ood: image quality, Mahalanobis feature distance, thresholds and verdicts,
and the out-of-distribution check inside the predictor (tiny test weights)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_lesion_photo
from PIL import Image, ImageEnhance, ImageFilter

from skin_model.constants import CARD_FILE
from skin_model.engine import preprocess
from skin_model.evaluation.evaluate import VARIANTS
from skin_model.predict import Predictor, load_predictor
from skin_model.trust import ood
from skin_model.trust.ood import OODVerdict, fit_gaussian, fit_thresholds, mahalanobis, quality, verdict

THRESHOLD_KEYS = {"feature_distance", "min_contrast", "min_sharpness", "min_brightness", "max_brightness"}


def _photos(n: int, seed: int) -> list[Image.Image]:
    """Varied synthetic lesion photos: position, size and colour drawn at random."""
    rng = np.random.default_rng(seed)
    return [make_lesion_photo(size=(200, 150), centre=tuple(rng.uniform(0.35, 0.65, 2)),
                         radii=(rng.uniform(0.12, 0.3), rng.uniform(0.15, 0.3)),
                         lesion=tuple(int(v) for v in rng.integers([40, 25, 15], [140, 90, 70])),
                         seed=1000 * seed + i) for i in range(n)]


def _blurred(photo: Image.Image) -> Image.Image:
    return photo.filter(ImageFilter.GaussianBlur(radius=max(photo.size) / 25))


def _bright(photo: Image.Image) -> Image.Image:
    return ImageEnhance.Brightness(photo).enhance(3.5)


def _dark(photo: Image.Image) -> Image.Image:
    return ImageEnhance.Brightness(photo).enhance(0.08)


# --- quality -----------------------------------------------------------------------------

def test_quality_measures(lesion_photo) -> None:
    photo = lesion_photo()
    q = quality(photo)
    assert set(q) == {"contrast", "sharpness", "brightness"}
    assert all(isinstance(v, float) for v in q.values())
    assert quality(_blurred(photo))["sharpness"] < 0.2 * q["sharpness"]
    assert quality(photo.filter(ImageFilter.GaussianBlur(2)))["sharpness"] < q["sharpness"]
    dark = quality(_dark(photo))
    assert dark["brightness"] < 20 < q["brightness"]
    assert dark["contrast"] < q["contrast"]
    assert quality(_bright(photo))["brightness"] > 240
    # the same photo at another size measures about the same (fixed working size)
    bigger = quality(photo.resize((400, 300), Image.BILINEAR))
    assert bigger["brightness"] == pytest.approx(q["brightness"], rel=0.02)
    assert bigger["contrast"] == pytest.approx(q["contrast"], rel=0.05)


@pytest.mark.parametrize("colour", [(255, 255, 255), (0, 0, 0), (128, 128, 128), (226, 178, 152)])
def test_quality_of_a_uniform_image(colour: tuple[int, int, int]) -> None:
    q = quality(Image.new("RGB", (300, 200), colour))
    assert q["contrast"] == pytest.approx(0.0, abs=1e-3)
    # a uniform image has no detail whatever its brightness (PIL's unfiltered border is left out)
    assert q["sharpness"] == pytest.approx(0.0, abs=1e-3)
    grey = np.asarray(Image.new("RGB", (1, 1), colour).convert("L"))[0, 0]
    assert q["brightness"] == pytest.approx(float(grey), abs=0.5)


# --- Gaussian fit and Mahalanobis distance ---------------------------------------------------

@pytest.fixture
def clusters() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three well separated classes in 16 dimensions (unit spread), 60 points each."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (3, 16)) * 8
    labels = np.repeat(np.arange(3), 60)
    feats = centres[labels] + rng.normal(0, 1, (180, 16))
    return feats.astype(np.float32), labels, centres


def test_fit_gaussian(clusters) -> None:
    feats, labels, centres = clusters
    means, precision = fit_gaussian(feats, labels, n_classes=4)
    assert means.shape == (4, 16) and precision.shape == (16, 16)
    assert means.dtype == np.float32 and precision.dtype == np.float32
    for c in range(3):
        assert np.allclose(means[c], feats[labels == c].mean(0), atol=1e-4)
        assert np.linalg.norm(means[c] - centres[c]) < 1.0  # about sqrt(16 / 60)
    assert np.allclose(means[3], feats.mean(0), atol=1e-4)  # a class without samples: the overall mean
    assert np.allclose(precision, precision.T, atol=1e-3)
    assert np.linalg.eigvalsh(precision.astype(np.float64)).min() > 0
    # the within-class spread is 1 per dimension: the precision is about the identity
    assert np.allclose(np.diag(precision), 1.0, atol=0.35)


def test_fit_gaussian_is_invertible_with_few_samples() -> None:
    rng = np.random.default_rng(1)
    feats = rng.normal(0, 1, (5, 40))  # fewer samples than dimensions: shrinkage keeps it invertible
    means, precision = fit_gaussian(feats, np.array([0, 0, 1, 1, 1]), 2)
    assert np.isfinite(precision).all()


def test_mahalanobis_small_near_a_class_mean_large_far(clusters) -> None:
    feats, labels, centres = clusters
    means, precision = (torch.as_tensor(a) for a in fit_gaussian(feats, labels, 3))
    rng = np.random.default_rng(5)
    near = torch.as_tensor(centres[[0, 1, 2, 1]] + rng.normal(0, 1, (4, 16)), dtype=torch.float32)
    far = torch.as_tensor(centres.mean(0) + rng.normal(0, 1, (4, 16)) * 30, dtype=torch.float32)
    d_near = mahalanobis(near, means, precision)
    d_far = mahalanobis(far, means, precision)
    assert d_near.shape == (4,)
    assert (d_near < 3).all()  # about 1 per dimension
    assert (d_far > 20).all()
    assert d_far.min() > 10 * d_near.max()
    # at a class mean the distance is zero
    assert mahalanobis(means[:1], means, precision).item() == pytest.approx(0.0, abs=1e-4)


def test_mahalanobis_is_the_squared_distance_to_the_nearest_mean_per_dimension() -> None:
    means = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    precision = torch.eye(2)
    x = torch.tensor([[1.0, 1.0], [9.0, 0.0], [5.0, 4.0]])
    assert torch.allclose(mahalanobis(x, means, precision), torch.tensor([1.0, 0.5, 20.5]))
    # the precision weighs the directions
    assert torch.allclose(mahalanobis(x[:1], means, torch.diag(torch.tensor([4.0, 1.0]))), torch.tensor([2.5]))


# --- thresholds and verdicts ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def fitted() -> tuple[dict[str, float], list[Image.Image]]:
    """Thresholds from 16 synthetic lesion photos in every framing, distances about 1; and fresh photos."""
    val = _photos(16, seed=1)
    rows = [quality(v(p)) for p in val for v in VARIANTS.values()]
    distances = np.random.default_rng(0).gamma(10, 0.1, len(rows))
    return fit_thresholds(rows, distances), _photos(4, seed=2)


def test_fit_thresholds(fitted) -> None:
    t, _ = fitted
    assert set(t) == THRESHOLD_KEYS
    assert all(isinstance(v, float) for v in t.values())
    assert 1.0 < t["feature_distance"] < 3.0
    assert 0 < t["min_contrast"] and 0 < t["min_sharpness"]
    assert 0 < t["min_brightness"] < t["max_brightness"] <= 254.0


def test_fit_thresholds_sit_beyond_the_validation_photos() -> None:
    rows = [{"contrast": c, "sharpness": 10 * c, "brightness": 100 + c} for c in range(20, 60)]
    t = fit_thresholds(rows, np.linspace(0, 1, 101), feature_quantile=0.9, quality_quantile=1.0, margin=0.5)
    assert t["feature_distance"] == pytest.approx(0.9)
    assert t["min_contrast"] == pytest.approx(10.0)
    assert t["min_sharpness"] == pytest.approx(100.0)
    assert t["min_brightness"] == pytest.approx(60.0)
    assert t["max_brightness"] == pytest.approx(159 + 0.5 * 255 * 0.5)
    bright = fit_thresholds([{"contrast": 1, "sharpness": 1, "brightness": 250}], np.ones(1))
    assert bright["max_brightness"] == 254.0


def test_in_distribution_photos_are_accepted(fitted) -> None:
    t, fresh = fitted
    for photo in fresh:
        v = verdict(quality(photo), 1.0, t)
        assert not v.rejected and v.reason is None and v.message is None
        assert 0 < v.score <= 1.0


@pytest.mark.parametrize(("make", "reason"), [
    (lambda p: Image.new("RGB", p.size, (128, 128, 128)), "blank"),
    (lambda p: Image.new("RGB", p.size, (226, 178, 152)), "blank"),
    (_blurred, "blur"),
    (_bright, "bright"),
    (_dark, "dark"),
])
def test_unusable_images_are_rejected_with_their_reason(fitted, make, reason: str) -> None:
    t, fresh = fitted
    v = verdict(quality(make(fresh[0])), 1.0, t)
    assert v.rejected and v.reason == reason
    assert v.score > 1.0


def test_reasons_name_the_root_cause(fitted) -> None:
    t, fresh = fitted
    # an under-exposed photo also loses contrast and detail: it is dark, not blank or blurred
    q = quality(_dark(fresh[0]))
    assert q["contrast"] < t["min_contrast"] and q["sharpness"] < t["min_sharpness"]
    assert verdict(q, 1.0, t).reason == "dark"
    # a uniform image has no detail either: blank, not blurred; unless its exposure is already out of range
    assert verdict(quality(Image.new("RGB", (200, 150), (90, 90, 90))), 1.0, t).reason == "blank"
    assert verdict(quality(Image.new("RGB", (200, 150), "white")), 1.0, t).reason == "bright"
    assert verdict(quality(Image.new("RGB", (200, 150), "black")), 1.0, t).reason == "dark"
    # a uniform image stays rejected for its quality however close its features
    assert verdict(quality(Image.new("RGB", (200, 150), (128, 128, 128))), 0.0, t).reason == "blank"


def test_far_features_are_rejected(fitted) -> None:
    t, fresh = fitted
    q = quality(fresh[0])
    v = verdict(q, 5 * t["feature_distance"], t)
    assert v.rejected and v.reason == "features"
    assert v.score == pytest.approx(5.0)
    assert not verdict(q, 0.9 * t["feature_distance"], t).rejected
    # the feature check beats a quality check it exceeds
    assert verdict(quality(_bright(fresh[0])), 1e6, t).reason == "features"


def test_score_is_the_largest_ratio(fitted) -> None:
    t, fresh = fitted
    q = quality(fresh[0])
    v = verdict(q, 0.5 * t["feature_distance"], t)
    expected = max(t["min_contrast"] / q["contrast"], t["min_sharpness"] / q["sharpness"],
                   t["min_brightness"] / q["brightness"], (255 - t["max_brightness"]) / (255 - q["brightness"]), 0.5)
    assert v.score == pytest.approx(expected)


def test_verdict_messages() -> None:
    assert OODVerdict(0.5, None).message is None
    assert not OODVerdict(0.5, None).rejected
    assert OODVerdict(2.0, "blank").message == "This image is blank or nearly uniform; no diagnosis is given."
    assert OODVerdict(2.0, "features").message == (
        "This image does not look like a dermatoscopic photo of a skin lesion; no diagnosis is given.")
    assert OODVerdict(2.0, "blur").message == "This image is too blurred; no diagnosis is given."
    assert OODVerdict(2.0, "dark").message == "This image is under-exposed (too dark); no diagnosis is given."
    assert OODVerdict(2.0, "bright").message == "This image is over-exposed (too bright); no diagnosis is given."
    assert set(ood.REASONS) == {"features", "blank", "blur", "dark", "bright"}
    for reason in ood.REASONS:
        v = OODVerdict(3.0, reason)
        assert v.rejected and v.message.startswith("This image ") and v.message.endswith("no diagnosis is given.")


# --- inside the predictor --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def guarded(tiny_weights: Path) -> Predictor:
    """The tiny predictor with an OOD fit: class statistics on 21 synthetic photos, thresholds on
    12 others in every framing (as trust.fit does with train and validation)."""
    predictor = load_predictor(tiny_weights, device="cpu", engine="torch")  # statistics fitted in memory below
    model = predictor.model
    train = _photos(21, seed=11)
    with torch.no_grad():
        feats = model.features(preprocess(train)).numpy()
        means, precision = fit_gaussian(feats, np.arange(21) % 7, 7)
        model.ood_means.copy_(torch.as_tensor(means))
        model.ood_precision.copy_(torch.as_tensor(precision))
        rows, distances = [], []
        for variant in VARIANTS.values():
            imgs = [variant(p) for p in _photos(12, seed=12)]
            rows += [quality(img) for img in imgs]
            distances.append(mahalanobis(model.features(preprocess(imgs)), model.ood_means, model.ood_precision).numpy())
    predictor.card = replace(predictor.card,
                             trust=replace(predictor.card.trust, ood=fit_thresholds(rows, np.concatenate(distances))))
    return predictor


def test_predictor_without_an_ood_fit_rejects_nothing(tiny_weights: Path) -> None:
    plain = load_predictor(tiny_weights, device="cpu")
    assert plain.card.trust.ood is None
    assert "ood" not in json.loads((tiny_weights / CARD_FILE).read_text())
    result = plain.predict([Image.new("RGB", (200, 150), "white")])
    assert result.ood == [None]
    assert result.rejected(0) is None and result.status(0) != "out_of_distribution"


def test_predictor_rejects_a_blank_image(guarded: Predictor) -> None:
    result = guarded.predict([Image.new("RGB", (200, 150), "white")])
    assert result.status(0) == "out_of_distribution"
    message = result.rejected(0)
    assert isinstance(message, str) and message.startswith("This image ") and "no diagnosis" in message
    assert result.ood[0].rejected
    assert result.to_dict()["status"] == ["out_of_distribution"]
    # the probabilities are still there, but the status says not to use them
    assert sum(result.photos[0].values()) == pytest.approx(1.0, abs=1e-5)


def test_predictor_answers_a_lesion_photo(guarded: Predictor) -> None:
    fresh = _photos(4, seed=13)
    result = guarded.predict(fresh, sequence=False)
    for i in range(len(fresh)):
        assert result.rejected(i) is None, result.ood[i]
        assert result.status(i) in ("answered", "inconclusive")
        assert result.ood[i] is not None and result.ood[i].score <= 1.0


def test_sequence_leaves_out_rejected_photos(guarded: Predictor) -> None:
    a, b = _photos(2, seed=14)
    blank, black = Image.new("RGB", (200, 150), "white"), Image.new("RGB", (200, 150), "black")
    mixed = guarded.predict([a, blank, b, black])
    assert [mixed.status(i) == "out_of_distribution" for i in range(4)] == [False, True, False, True]
    assert mixed.sequence_photos == [0, 2]
    clean = guarded.predict([a, b])
    assert mixed.sequence is not None and clean.sequence is not None
    for c in clean.sequence:
        assert mixed.sequence[c] == pytest.approx(clean.sequence[c], abs=1e-5)
    # the rejected photos would have changed it
    with_all = Predictor.from_model(guarded.model, replace(guarded.card, trust=replace(guarded.card.trust, ood=None))
                                    ).predict([a, blank, b, black])
    assert max(abs(with_all.sequence[c] - clean.sequence[c]) for c in clean.sequence) > 1e-4
    # every photo rejected: no sequence at all
    none = guarded.predict([blank, black], sequence=True)
    assert none.sequence is None
    assert [none.status(i) for i in range(2)] == ["out_of_distribution"] * 2
    # one of two refused: the one accepted photo is a photo, never a "sequence over 1 photos"
    one = guarded.predict([a, blank], sequence=True)
    assert one.sequence is None and one.sequence_photos == [] and one.sequence_decision() is None
    assert one.status(0) in ("answered", "inconclusive") and one.status(1) == "out_of_distribution"


def test_predict_each_carries_the_verdicts(guarded: Predictor) -> None:
    photo = _photos(1, seed=15)[0]
    result = guarded.predict_each([photo, Image.new("RGB", (120, 90), (128, 128, 128))], batch_size=1)
    assert len(result.ood) == 2
    assert result.status(1) == "out_of_distribution" and result.ood[1].reason == "blank"
    assert result.status(0) in ("answered", "inconclusive")


# --- per-framing thresholds and the texture check ---------------------------------------------------

def test_thresholds_hold_in_every_framing() -> None:
    """Zoomed photos sit further from the reference: a pooled quantile would refuse them far more often
    than the quantile says; the highest of the framings' quantiles refuses none more than that."""
    rng = np.random.default_rng(3)
    full, zoom = rng.gamma(10, 0.1, 2000), rng.gamma(10, 0.1, 2000) + 0.5
    rows = [{"contrast": 30.0, "sharpness": 50.0, "brightness": 120.0}]
    pooled = fit_thresholds(rows, np.concatenate([full, zoom]), feature_quantile=0.99)["feature_distance"]
    assert (zoom > pooled).mean() > 0.015
    t = fit_thresholds(rows, [full, zoom], feature_quantile=0.99, texture_distances=[full, 2 * zoom],
                       texture_quantile=0.98)
    assert all((d > t["feature_distance"]).mean() <= 0.01 for d in (full, zoom))
    assert t["texture_distance"] == pytest.approx(np.quantile(2 * zoom, 0.98))
    assert "texture_distance" not in fit_thresholds(rows, [full, zoom])


def test_the_texture_distance_refuses_when_fitted_and_is_ignored_by_older_cards() -> None:
    q = {"contrast": 40.0, "sharpness": 80.0, "brightness": 120.0}
    old = {"feature_distance": 2.0, "min_contrast": 5.0, "min_sharpness": 5.0, "min_brightness": 40.0,
           "max_brightness": 230.0}
    assert not verdict(q, 1.0, old, texture_distance=50.0).rejected  # a card without the texture threshold
    new = {**old, "texture_distance": 4.0}
    assert not verdict(q, 1.0, new, texture_distance=3.0).rejected
    refused = verdict(q, 1.0, new, texture_distance=6.0)
    assert refused.rejected and refused.reason == "features" and refused.score == pytest.approx(1.5)


def test_texture_statistics_come_from_the_same_forward_and_leave_no_hook(tiny_weights: Path) -> None:
    model = load_predictor(tiny_weights, device="cpu").model
    x = preprocess(_photos(3, seed=4), model.data_config)
    with torch.no_grad():
        feats, textures = model.features_and_texture(x)
        assert torch.equal(feats, model.features(x))
    channels = model.ood_texture_mean.shape[1] // 2
    assert textures.shape == (3, 2 * channels) and not model.ood_layer._forward_hooks
    with torch.no_grad():  # the stub's middle block is blocks[1]: its output's channel means and deviations
        middle = model.encoder.blocks[1](model.encoder.blocks[0](model.encoder.stem(x)))
    torch.testing.assert_close(textures, ood.texture(middle))


def test_the_predictor_refuses_a_photo_whose_texture_is_unlike_real_photos(tiny_weights: Path) -> None:
    """Final features that do not tell this image apart (feature threshold never reached) and the quality
    checks passed: the texture statistics of the middle block still refuse it, and accept lesion photos."""
    predictor = load_predictor(tiny_weights, device="cpu", engine="torch")  # statistics fitted in memory below
    model = predictor.model
    train, val = _photos(40, seed=21), _photos(12, seed=22)
    with torch.no_grad():
        t = torch.cat([model.features_and_texture(preprocess([v(p) for p in train], model.data_config))[1]
                       for v in VARIANTS.values()]).numpy()
        mean, precision = fit_gaussian(t, np.zeros(len(t), dtype=int), 1)
        model.ood_texture_mean.copy_(torch.as_tensor(mean))
        model.ood_texture_precision.copy_(torch.as_tensor(precision))
        ref = model.ood_reference()
        rows, textures = [], []
        for variant in VARIANTS.values():
            imgs = [variant(p) for p in val]
            rows += [quality(img) for img in imgs]
            textures.append(mahalanobis(model.features_and_texture(preprocess(imgs, model.data_config))[1],
                                        ref.texture_mean, ref.texture_precision).numpy())
    thresholds = {**fit_thresholds(rows, np.zeros(3), texture_distances=textures), "feature_distance": 1e9}
    predictor.card = replace(predictor.card, trust=replace(predictor.card.trust, ood=thresholds))
    stripes = np.zeros((150, 200, 3), dtype=np.uint8)
    stripes[:, ::8] = (40, 160, 60)
    stripes[::8] = (200, 200, 40)
    stripes += np.uint8(90)
    ordinary = Image.fromarray(stripes)
    result = predictor.predict([ordinary, *_photos(3, seed=23)], sequence=False)
    assert result.status(0) == "out_of_distribution" and result.ood[0].reason == "features"
    assert [result.status(i) for i in (1, 2, 3)].count("out_of_distribution") == 0
