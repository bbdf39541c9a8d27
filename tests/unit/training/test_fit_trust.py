"""skin_model.training.fit_trust: fitting calibration, abstention and the OOD check on a fake HAM10000
folder with the tiny model on CPU."""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from skin_model import engine
from skin_model.constants import CLASSES
from skin_model.data.ham10000 import load_ham10000, split_lesions
from skin_model.data.transforms import VARIANTS
from skin_model.io.images import load_image
from skin_model.model.card import ModelCard, TrustSettings
from skin_model.model.network import FEATURE_DIM
from skin_model.predict import Predictor
from skin_model.training import fit_trust as trust
from skin_model.trust.calibration import confidence_grid
from skin_model.trust.triage import TriageRule

CPU = torch.device("cpu")
LIMIT = 10
OOD_KEYS = {"feature_distance", "texture_distance", "min_contrast", "min_sharpness", "min_brightness", "max_brightness"}


@pytest.fixture(scope="module")
def fitted(_tiny_model, fake_ham_at, tmp_path_factory):
    """One fit for the module (calibration is the slow part), recording the batch sizes it scores."""
    # 4 lesions per class: 2 train, 1 validation and 1 test lesion of each class
    ham = load_ham10000(fake_ham_at(tmp_path_factory.mktemp("trust") / "ham", "flat", lesions_per_class=4))
    splits = split_lesions(ham.table).value_counts()
    assert splits["val"] > 0 and splits["train"] > 0
    model = copy.deepcopy(_tiny_model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scored: list[int] = []
    real = engine.encode

    def counting(model, photos, *args, **kwargs):
        scored.append(len(photos))
        return real(model, photos, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine, "encode", counting)
        card = trust.fit(model, ham, seed=0, limit=LIMIT)
    return model, ham, card, before, scored


def test_fit_sets_calibration(fitted) -> None:
    model, _, card, *_ = fitted
    for kind in ("photo", "sequence"):
        t = float(getattr(model, f"{kind}_temperature"))
        assert math.isfinite(t) and 0.05 <= t <= 20.0
        bias = getattr(model, f"{kind}_bias")
        assert bias.shape == (len(CLASSES),) and torch.isfinite(bias).all()
        entry = card["calibration"][kind]
        assert entry["temperature"] == pytest.approx(t)
        assert isinstance(entry["bias"], list) and len(entry["bias"]) == len(CLASSES)
        assert np.allclose(entry["bias"], bias.numpy())
        # the bias is a prior correction: centred on zero
        assert abs(float(bias.sum())) < 1e-4
        assert {"tau", "score", "val_balanced_accuracy", "val_accuracy", "val_ece"} <= set(entry)


def test_fit_sets_the_confidence_map(fitted) -> None:
    model, _, card, before, _ = fitted
    assert torch.equal(before["photo_confidence"], confidence_grid())  # identity until fitted
    table = model.photo_confidence
    assert table.shape == confidence_grid().shape and bool((table.diff() > 0).all())
    assert 1 / len(CLASSES) - 1e-6 <= float(table.min()) and float(table.max()) <= 1.0
    entry = card["calibration"]["photo"]
    assert np.allclose(entry["confidence_map"], table.numpy())
    assert 0.0 <= entry["val_ece_with_map"] <= 1.0


def test_fit_sets_the_ood_statistics(fitted) -> None:
    model, _, _, before, _ = fitted
    assert torch.count_nonzero(before["ood_means"]) == 0
    assert torch.equal(before["ood_precision"], torch.eye(before["ood_precision"].shape[0]))
    assert torch.count_nonzero(model.ood_means) > 0
    assert not torch.allclose(model.ood_precision, torch.eye(model.ood_precision.shape[0]))
    assert torch.isfinite(model.ood_means).all() and torch.isfinite(model.ood_precision).all()
    assert torch.allclose(model.ood_precision, model.ood_precision.T, atol=1e-2 * model.ood_precision.abs().max())
    # the texture reference of the middle block is fitted too (all zeros before)
    assert torch.count_nonzero(before["ood_texture_mean"]) == 0 and torch.count_nonzero(model.ood_texture_mean) > 0
    assert torch.isfinite(model.ood_texture_precision).all() and torch.count_nonzero(model.ood_texture_precision) > 0
    # only the trust buffers change: the network's weights are untouched
    trust_buffers = {"photo_bias", "photo_temperature", "photo_confidence", "sequence_bias", "sequence_temperature",
                     "sequence_mix", "sequence_sharpness", "ood_means", "ood_precision", "ood_texture_mean",
                     "ood_texture_precision"}
    for name, value in model.state_dict().items():
        if name not in trust_buffers:
            assert torch.equal(value, before[name]), name


def test_fit_returns_the_card_entries(fitted) -> None:
    _, _, card, *_ = fitted
    assert set(card) == {"calibration", "inconclusive_below", "abstention", "ood", "triage", "triage_validation"}
    assert 0.0 < card["inconclusive_below"] < 1.0
    rule, figures = card["triage"], card["triage_validation"]
    assert isinstance(rule, TriageRule) and 0.0 <= rule.threshold <= 1.0
    assert set(VARIANTS) <= set(figures) <= {*VARIANTS, "multi_photo_lesions_sequence"}  # every framing users send
    assert all(op["sensitivity"] >= rule.target_sensitivity for op in figures.values())
    assert rule.sensitivity == figures["full"]["sensitivity"]
    assert set(card["ood"]) == OOD_KEYS
    assert all(isinstance(v, float) and math.isfinite(v) for v in card["ood"].values())
    assert card["ood"]["feature_distance"] > 0
    assert 0 < card["ood"]["min_brightness"] < card["ood"]["max_brightness"] <= 254
    abstention = card["abstention"]
    assert abstention["threshold"] == card["inconclusive_below"]
    assert isinstance(abstention["rule"], str) and 0 < abstention["val_coverage"] <= 1
    curve = abstention["val_risk_coverage"]
    assert isinstance(curve, list) and len(curve) > 1
    assert [r["coverage"] for r in curve] == sorted(r["coverage"] for r in curve)
    assert curve[-1]["coverage"] == 1.0
    assert all(0.0 <= r["balanced_accuracy"] <= 1.0 for r in curve)


def test_fitted_card_drives_the_predictor(fitted) -> None:
    model, ham, card, *_ = fitted
    settings = TrustSettings(inconclusive_below=card["inconclusive_below"], ood=card["ood"])
    predictor = Predictor.from_model(model, ModelCard(trust=settings), CPU)
    table = ham.table.assign(split=split_lesions(ham.table))
    photos = [load_image(p) for p in table[table.split == "train"].path[:6]]
    result = predictor.predict([*photos, Image.new("RGB", (64, 48), (128, 128, 128))], sequence=False)
    assert result.status(len(photos)) == "out_of_distribution"
    assert result.ood[len(photos)].reason == "blank"
    # the photos the statistics were fitted on look like what the check expects
    assert sum(result.status(i) != "out_of_distribution" for i in range(len(photos))) >= len(photos) - 1
    assert result.inconclusive_below == card["inconclusive_below"]


def test_limit_keeps_it_small(fitted) -> None:
    *_, scored = fitted
    # train photos in each of the three framings (the OOD reference), then each framing of validation, LIMIT each
    assert scored == [LIMIT] * 6


def _lesions(logits: list[list[list[float]]], labels: list[int]) -> tuple[pd.DataFrame, np.ndarray]:
    """A validation table of lesions (one row per photo) and their raw photo logits."""
    rows, flat = [], []
    for i, (photos, label) in enumerate(zip(logits, labels)):
        for j, row in enumerate(photos):
            rows.append({"lesion_id": f"L{i:03d}", "image_id": f"I{i:03d}_{j}", "label": label})
            flat.append(row)
    return pd.DataFrame(rows), np.array(flat, dtype=np.float32)


def _fit_on(model, table: pd.DataFrame, logits: np.ndarray) -> dict:
    feats = np.zeros((len(table), FEATURE_DIM), dtype=np.float32)
    return trust._fit_sequence(model, table, feats, logits, np.ones(len(CLASSES)), min_lesions=1)


def _agreeing(label: int) -> list[list[float]]:
    """Two photos that agree on `label`: every pooling gives the same answer."""
    row = np.zeros(len(CLASSES))
    row[label] = 2.0
    return [row.tolist(), (row * 0.5).tolist()]


def _clear_and_blurred(label: int, wrong: int, blurred_photos: int, clear_at: int) -> list[list[float]]:
    """One confident photo of `label` at position `clear_at` among `blurred_photos` mildly confident ones of
    `wrong`: the plain mean follows the blurred majority, a sharp pooling the clear photo."""
    clear, blurred = np.zeros(len(CLASSES)), np.zeros(len(CLASSES))
    clear[label], blurred[wrong] = 3.0, 2.0
    photos = [blurred.tolist()] * blurred_photos
    return photos[:clear_at] + [clear.tolist()] + photos[clear_at:]


def test_sequence_fit_favours_the_clear_photo_when_that_helps(tiny_model) -> None:
    # every lesion: one confident, correct photo and two mildly wrong ones that outvote it on average
    labels = [i % len(CLASSES) for i in range(40)]
    logits = [_clear_and_blurred(label, (label + 1) % len(CLASSES), 2, 1) for label in labels]
    table, flat = _lesions(logits, labels)
    fit = _fit_on(tiny_model, table, flat)
    assert fit["sharpness"] > 0 and fit["val_balanced_accuracy"] == 1.0
    assert float(tiny_model.sequence_sharpness) == fit["sharpness"]
    assert not np.any(fit["bias"])


def test_sequence_fit_keeps_the_plain_mean_when_nothing_is_gained(tiny_model) -> None:
    # photos that agree: every pooling gives the same answers, so the simplest one is kept
    labels = [i % len(CLASSES) for i in range(40)]
    table, flat = _lesions([_agreeing(label) for label in labels], labels)
    fit = _fit_on(tiny_model, table, flat)
    assert (fit["sharpness"], fit["mix"]) == (0.0, 0.0)


def test_sequence_fit_keeps_the_plain_mean_against_a_gain_within_noise(tiny_model) -> None:
    # 200 lesions every pooling gets right, 3 where favouring the clear photo helps and 1 where it hurts:
    # a higher validation score for sharpness > 0, but one that resampling the lesions often reverses
    labels = [i % len(CLASSES) for i in range(200)]
    logits = [_agreeing(label) for label in labels]
    for i in range(4):
        label, wrong = i % len(CLASSES), (i + 1) % len(CLASSES)
        logits.append(_clear_and_blurred(label, wrong, 2, 1) if i < 3 else _clear_and_blurred(label, wrong, 3, 0))
        labels.append(label if i < 3 else wrong)
    table, flat = _lesions(logits, labels)
    fit = _fit_on(tiny_model, table, flat)
    assert (fit["sharpness"], fit["mix"]) == (0.0, 0.0)
    assert (float(tiny_model.sequence_sharpness), float(tiny_model.sequence_mix)) == (0.0, 0.0)
