"""skin_model.evaluation.evaluate: the model-card figures on a fake HAM10000 folder with the tiny model."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw

from skin_model.constants import CLASSES
from skin_model.data.ham10000 import Ham10000, load_ham10000, split_lesions
from skin_model.engine import preprocess
from skin_model.evaluation import ood_set
from skin_model.evaluation.evaluate import (
    VARIANTS,
    evaluate_heatmaps,
    evaluate_ood,
    evaluate_split,
    format_table,
    lesion_groups,
    split_table,
    to_json,
    triage_report,
)
from skin_model.evaluation.summary import interval_notes
from skin_model.explain.cam import METHODS
from skin_model.io.images import load_image
from skin_model.metrics import classification_report
from skin_model.model.card import ModelCard, TrustSettings
from skin_model.model.network import SkinLesionNet
from skin_model.predict import load_predictor
from skin_model.trust import ood, triage

REPORT_KEYS = {"n", "accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "ece", "per_class", "confusion_matrix"}


def _write_masks(ham: Ham10000, skip: int = 5) -> int:
    """Lesion masks for every photo but every `skip`-th, drawn where write_fake_ham paints the lesion."""
    folder = ham.root / "masks"
    folder.mkdir()
    written = 0
    for i, row in enumerate(ham.table.itertuples()):
        if i % skip == 0:
            continue
        w, h = Image.open(row.path).size
        c = CLASSES.index(row.dx)
        cx, cy, rx, ry = (0.3 + 0.06 * c) * w, 0.5 * h, (0.15 + 0.02 * c) * w, 0.2 * h
        mask = Image.new("L", (w, h), 0)
        ImageDraw.Draw(mask).ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=255)
        mask.save(folder / f"{row.image_id}_segmentation.png")
        written += 1
    return written


@pytest.fixture(scope="module")
def ham(fake_ham_at, tmp_path_factory) -> Ham10000:
    """4 lesions per class (1, 2, 3, 1 photos): 2 train, 1 val, 1 test lesion per class; masks for most photos."""
    root = fake_ham_at(tmp_path_factory.mktemp("evaluate") / "ham", "flat", lesions_per_class=4)
    _write_masks(load_ham10000(root))
    return load_ham10000(root)


@pytest.fixture(scope="module")
def test_rows(ham: Ham10000) -> pd.DataFrame:
    table = ham.table.assign(split=split_lesions(ham.table))
    return table[table.split == "test"].reset_index(drop=True)


@pytest.fixture(scope="module")
def model(_tiny_model) -> SkinLesionNet:
    return copy.deepcopy(_tiny_model)


@pytest.fixture(scope="module")
def report(model: SkinLesionNet, ham: Ham10000) -> dict:
    return evaluate_split(model, ham, "test", card=ModelCard(trust=TrustSettings(inconclusive_below=0.2)))


# --- evaluate_split --------------------------------------------------------------------------

def test_evaluate_split_single_photos(report: dict, test_rows: pd.DataFrame, model: SkinLesionNet) -> None:
    assert report["split"] == "test"
    assert report["n_photos"] == len(test_rows) > 0
    assert report["n_lesions"] == test_rows.lesion_id.nunique() == len(CLASSES)
    assert set(report["single_photo"]) == set(VARIANTS) == {"full", "centre_crop", "zoom_0.6"}
    assert set(report["with_patient_context"]) == set(VARIANTS)
    for part in ("single_photo", "with_patient_context"):
        for name, r in report[part].items():
            assert set(r) >= REPORT_KEYS, (part, name)
            assert r["n"] == len(test_rows)
            assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["balanced_accuracy"] <= 1.0
            assert np.asarray(r["confusion_matrix"]).sum() == len(test_rows)
            assert [r["per_class"][c]["support"] for c in CLASSES] == np.bincount(
                test_rows.label, minlength=len(CLASSES)).tolist()
    # "full" is the plain prediction on the whole photo
    with torch.no_grad():
        probs = model(preprocess([load_image(p) for p in test_rows.path])).softmax(-1).numpy()
    expected = classification_report(probs, test_rows.label.to_numpy())
    assert report["single_photo"]["full"]["accuracy"] == pytest.approx(expected["accuracy"])
    assert report["single_photo"]["full"]["confusion_matrix"] == expected["confusion_matrix"]


def test_evaluate_split_lesions(report: dict, test_rows: pd.DataFrame) -> None:
    sizes = test_rows.groupby("lesion_id").size()
    multi = report["multi_photo_lesions"]
    assert multi["n_lesions"] == int((sizes >= 2).sum()) > 0
    assert multi["n_photos"] == int(sizes[sizes >= 2].sum())
    assert multi["single_photo"]["n"] == multi["n_photos"]
    assert multi["mean_of_photos"]["n"] == multi["sequence"]["n"] == multi["n_lesions"]
    # every lesion (one photo or more) read as a sequence
    assert report["per_lesion_sequence"]["n"] == len(sizes)
    assert set(report["per_lesion_sequence"]) >= REPORT_KEYS
    # the reliability bins cover every photo
    bins = report["reliability"]
    assert sum(b["count"] for b in bins) == len(test_rows)
    assert all(0 <= b["lo"] < b["hi"] <= 1 and b["lo"] <= b["confidence"] <= b["hi"] for b in bins)
    assert all(0.0 <= b["accuracy"] <= 1.0 for b in bins)
    # the card's threshold gives the abstention figures
    a = report["abstention"]
    assert a["threshold"] == 0.2 and 0.0 <= a["coverage"] <= 1.0
    assert a["risk_coverage"][-1]["coverage"] == 1.0
    # intervals: photos resampled by lesion; the sequence compared with the mean on the same resamples
    full = report["intervals"]["single_photo_full"]
    assert full["units"] == len(sizes)
    lo, hi = full["full"]["balanced_accuracy"]
    assert lo <= report["single_photo"]["full"]["balanced_accuracy"] <= hi
    seq = report["intervals"]["multi_photo_lesions"]
    assert seq["units"] == multi["n_lesions"]
    lo, hi = seq["sequence"]["balanced_accuracy_minus_mean_of_photos"]
    point = multi["sequence"]["balanced_accuracy"] - multi["mean_of_photos"]["balanced_accuracy"]
    assert lo - 1e-9 <= point <= hi + 1e-9 or multi["n_lesions"] < 5


def test_evaluate_split_without_card_or_with_limit(model: SkinLesionNet, ham: Ham10000) -> None:
    small = evaluate_split(model, ham, "val", limit=3)
    assert small["split"] == "val" and small["n_photos"] == 3
    assert "abstention" not in small
    assert small["single_photo"]["full"]["n"] == 3
    assert small["multi_photo_lesions"]["n_lesions"] <= small["n_lesions"] <= 3


def test_format_table(report: dict) -> None:
    text = format_table(report)
    lines = text.splitlines()
    assert lines[0] == f"split=test  photos={report['n_photos']}  lesions={report['n_lesions']}"
    for name in ("single photo, full frame", "single photo, centre square crop", "single photo, zoomed (60% centre crop)",
                 "single photo + patient context, full frame",
                 "single photo + patient context, zoomed (60% centre crop)",
                 "per lesion (sequence), all lesions", "lesions with 2+ photos: each photo",
                 "lesions with 2+ photos: mean of photos", "lesions with 2+ photos: sequence head"):
        assert any(line.startswith(name) for line in lines), name
    assert "inconclusive below 0.200" in text
    assert "confusion matrix" in text
    assert "95% intervals (bootstrap over lesions)" in text
    assert all(note in text for note in interval_notes(report)) and interval_notes(report)[-1].startswith(
        "lesions with 2+ photos")
    for c in CLASSES:
        assert any(line.startswith(c) for line in lines), c
    row = next(line for line in lines if line.startswith("single photo, full frame"))
    assert f"{report['single_photo']['full']['accuracy']:.4f}" in row
    assert "inconclusive below" not in format_table({k: v for k, v in report.items() if k != "abstention"})


def test_to_json_round_trips(report: dict) -> None:
    import json

    assert json.loads(to_json(report))["n_photos"] == report["n_photos"]


# --- lesion_groups and split_table -----------------------------------------------------------------

def test_lesion_groups_keep_each_lesion_together_in_image_id_order() -> None:
    table = pd.DataFrame({
        "lesion_id": ["L2", "L1", "L2", "L3", "L1", "L2", "L4"],
        "image_id": ["ISIC_05", "ISIC_09", "ISIC_01", "ISIC_02", "ISIC_03", "ISIC_04", "ISIC_07"],
    }, index=[10, 11, 12, 13, 14, 15, 16])  # positions, not labels, come back
    groups = lesion_groups(table)
    assert [g.tolist() for g in groups] == [[4, 1], [2, 5, 0], [3], [6]]
    for g in groups:
        assert table.iloc[g].lesion_id.nunique() == 1
        ids = table.iloc[g].image_id.tolist()
        assert ids == sorted(ids)
    assert sorted(np.concatenate(groups).tolist()) == list(range(len(table)))
    assert [g.tolist() for g in lesion_groups(table, min_photos=2)] == [[4, 1], [2, 5, 0]]
    assert lesion_groups(table, min_photos=4) == []


def test_lesion_groups_on_fake_ham(ham: Ham10000) -> None:
    groups = lesion_groups(ham.table)
    assert len(groups) == ham.table.lesion_id.nunique()
    assert sum(len(g) for g in groups) == len(ham.table)


def test_split_table(ham: Ham10000, test_rows: pd.DataFrame) -> None:
    table = split_table(ham, "test")
    assert table.image_id.tolist() == test_rows.image_id.tolist()
    assert (table.split == "test").all() and table.index.tolist() == list(range(len(table)))
    assert len(split_table(ham, "test", limit=2)) == 2


# --- heatmaps ------------------------------------------------------------------------------

def test_evaluate_heatmaps(tiny_weights: Path, ham: Ham10000, test_rows: pd.DataFrame) -> None:
    predictor = load_predictor(tiny_weights, device="cpu")
    masked = test_rows[test_rows.mask_path.notna()]
    assert 4 < len(masked) < len(test_rows)  # the photos without a mask are left out
    out = evaluate_heatmaps(predictor.model, ham, "test", limit=4)
    assert out["n"] == 4
    assert set(out) == {"n", "lesion_share_of_frame", *METHODS}
    # the masks are read at the photo's size: about the ellipse's share of the frame
    shares = [np.pi * (0.15 + 0.02 * CLASSES.index(dx)) * 0.2 for dx in masked.dx]
    assert min(shares) * 0.8 < out["lesion_share_of_frame"] < max(shares) * 1.2
    for method in METHODS:
        assert set(out[method]) == {"pointing_game", "energy_inside_mask"}
        assert 0.0 <= out[method]["pointing_game"] <= 1.0
        assert 0.0 < out[method]["energy_inside_mask"] <= 1.0
        assert out[method]["pointing_game"] * 4 == pytest.approx(round(out[method]["pointing_game"] * 4))


def test_evaluate_heatmaps_method_choice_and_no_masks(tiny_weights: Path, ham: Ham10000, fake_ham) -> None:
    predictor = load_predictor(tiny_weights, device="cpu")
    out = evaluate_heatmaps(predictor.model, ham, "test", limit=2, methods=["EigenCAM (gradient-free)"])
    assert set(out) == {"n", "lesion_share_of_frame", "EigenCAM (gradient-free)"} and out["n"] == 2
    no_masks = load_ham10000(fake_ham(lesions_per_class=4))
    assert evaluate_heatmaps(predictor.model, no_masks, "test") == {"n": 0}


# --- out-of-distribution ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def guarded(model: SkinLesionNet, ham: Ham10000) -> tuple[SkinLesionNet, ModelCard]:
    """The tiny model with OOD statistics on the train photos and thresholds on validation."""
    guarded = copy.deepcopy(model)
    table = ham.table.assign(split=split_lesions(ham.table))
    train = table[table.split == "train"]
    val = [load_image(p) for p in table[table.split == "val"].path]
    with torch.no_grad():
        feats = guarded.features(preprocess([load_image(p) for p in train.path])).numpy()
        means, precision = ood.fit_gaussian(feats, train.label.to_numpy(), len(CLASSES))
        guarded.ood_means.copy_(torch.as_tensor(means))
        guarded.ood_precision.copy_(torch.as_tensor(precision))
        imgs = [v(p) for v in VARIANTS.values() for p in val]
        dist = ood.mahalanobis(guarded.features(preprocess(imgs)), guarded.ood_means, guarded.ood_precision)
    return guarded, ModelCard(trust=TrustSettings(ood=ood.fit_thresholds([ood.quality(i) for i in imgs], dist.numpy())))


def test_evaluate_ood(guarded: tuple[SkinLesionNet, ModelCard], ham: Ham10000) -> None:
    model, card = guarded
    out = evaluate_ood(model, card, ham, "test", limit=3)
    assert out["n_real"] == 3
    expected = len(ood_set.build([load_image(p) for p in split_table(ham, "test", limit=3).path]))
    assert out["n_outliers"] == expected
    assert 0.0 <= out["auroc"] <= 1.0
    assert out["auroc"] > 0.5  # blank, blurred and exposure-ruined images are caught whatever the features
    kinds = out["outliers_rejected_by_kind"]
    assert {"skimage", "blank", "noise", "gradient", "document", "screenshot",
            "blurred", "overexposed", "underexposed"} <= set(kinds)
    assert all(0.0 <= v <= 1.0 for v in kinds.values())
    assert kinds["blank"] == 1.0  # no contrast at all: always rejected
    assert kinds["underexposed"] == 1.0
    assert 0.0 <= out["outliers_rejected"] <= 1.0
    assert set(out["real_wrongly_rejected"]) == set(VARIANTS)
    assert all(0.0 <= v <= 1.0 for v in out["real_wrongly_rejected"].values())
    reasons = out["outlier_reasons"]
    assert sum(reasons.values()) == out["n_outliers"]
    assert set(reasons) <= {"accepted", *ood.REASONS}
    assert reasons.get("accepted", 0) == round(out["n_outliers"] * (1 - out["outliers_rejected"]))


def test_an_interval_of_no_difference_is_said_in_words() -> None:
    """A sequence that equals the mean of its photos gave "+0.000 to +0.000" on the model card page."""
    same = {"intervals": {"multi_photo_lesions": {"sequence": {"balanced_accuracy_minus_mean_of_photos": [0.0, 0.0],
                                                                "share_of_resamples_ahead": 0.0}}}}
    notes = interval_notes(same)
    assert notes == ["lesions with 2+ photos: the sequence prediction's balanced accuracy equals that of the mean of "
                     "the photos in every resample (no difference)"]
    same["intervals"]["multi_photo_lesions"]["sequence"]["balanced_accuracy_minus_mean_of_photos"] = [-0.01, 0.02]
    assert "-0.010 to +0.020" in interval_notes(same)[0]


def test_triage_report_gives_the_benign_specificity_by_confirmation(report: dict) -> None:
    rule = triage.TriageRule(threshold=0.5, malignant=("akiec", "bcc", "mel"))
    nv, mel = CLASSES.index("nv"), CLASSES.index("mel")
    labels = np.array([mel, mel, nv, nv, nv, nv])

    def probs(malignant: list[float]) -> np.ndarray:
        out = np.zeros((len(malignant), len(CLASSES)))
        out[:, mel], out[:, nv] = malignant, 1 - np.asarray(malignant)
        return out

    full = probs([0.9, 0.4, 0.7, 0.2, 0.1, 0.1])
    tri = triage_report(rule, {"full": full, "zoom_0.6": probs([0.9] * 6)}, labels, np.arange(6), None,
                        np.zeros(0, dtype=int), np.array(["histo", "histo", "histo", "histo", "follow_up", "follow_up"]))
    by = tri["benign_specificity_by_confirmation"]
    assert by["histo"]["n"] == 2 and by["histo"]["specificity"] == 0.5  # from the full frame, not the zoom
    assert by["follow_up"]["n"] == 2 and by["follow_up"]["specificity"] == 1.0
    assert tri["single_photo"]["full"]["sensitivity"] == 0.5
    text = format_table({**report, "triage": tri})
    assert "benign, confirmed by histopathology: specificity 0.500" in text
    assert "benign, confirmed by follow-up examination: specificity 1.000" in text
    assert "benign_specificity_by_confirmation" not in triage_report(rule, {"full": full}, labels, np.arange(6), None,
                                                                     np.zeros(0, dtype=int))
