"""Fit the post-training trust layer on the lesion-grouped validation split:
calibration of both heads, the "inconclusive" threshold, the "see a dermatologist"
triage threshold, and the statistics and thresholds of the out-of-distribution check. Training calls it; `skin-model
calibrate` refits it on existing weights."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from skin_model import engine
from skin_model.constants import CLASSES, MALIGNANT
from skin_model.data.ham10000 import Ham10000, lesion_groups, training_tables
from skin_model.data.transforms import VARIANTS
from skin_model.io.images import load_image
from skin_model.metrics import EVIDENCE, bootstrap_intervals, expected_calibration_error
from skin_model.model.network import FEATURE_DIM, SkinLesionNet
from skin_model.trust import abstain, ood, triage
from skin_model.trust.calibration import fit_calibration, fit_confidence_map, softmax


def _photos(paths: list[str]) -> list:
    return [load_image(p) for p in tqdm(paths, desc="decode", leave=False)]


SEQUENCE_SHARPNESS = (0.0, 5.0, 10.0, 25.0)
SEQUENCE_MIX = (0.0, 0.5, 1.0)


def _fit_sequence(model: SkinLesionNet, val_t: pd.DataFrame, feats: np.ndarray, logits: np.ndarray, counts: np.ndarray,
                  min_lesions: int = 30) -> dict[str, Any]:
    """Fit the sequence head where it is used: on validation lesions with two or more
    photos (all lesions when there are too few). It pools the photos' calibrated
    probabilities, which already carry the prior correction, so only how sharply pooling
    favours confident photos, the weight of the LSTM's correction and a temperature are
    chosen here. The plain mean of the photos' probabilities is the default: another pooling
    is kept only when its balanced accuracy beats the mean's in `metrics.EVIDENCE` (95%) of
    resamples of the lesions, and the best such by score. Choosing among twelve poolings on a
    few hundred lesions otherwise picks noise (the second round's sharpness 25 with half the
    LSTM led on validation and found fewer melanomas than the mean on new lesions); a prior
    correction refitted on them did not transfer either."""
    labels = val_t.label.to_numpy()
    groups = lesion_groups(val_t, min_photos=2)
    if len(groups) < min_lesions:
        groups = lesion_groups(val_t)
    seq_labels = np.array([labels[g[0]] for g in groups])
    candidates, predictions = [], {}
    for mix in SEQUENCE_MIX:
        for sharpness in SEQUENCE_SHARPNESS:
            model.sequence_mix.fill_(mix)
            model.sequence_sharpness.fill_(sharpness)
            seq = engine.sequence_logits(model, feats, logits, groups).cpu().numpy()
            fit = fit_calibration(seq, seq_labels, counts, taus=np.zeros(1))
            candidates.append({**fit, "mix": mix, "sharpness": sharpness, "val_lesions": len(groups)})
            predictions[f"{mix}/{sharpness}"] = seq  # no prior correction here: the argmax is the decision
    plain = candidates[0]
    assert (plain["mix"], plain["sharpness"]) == (0.0, 0.0), "the plain mean must come first"
    ahead = bootstrap_intervals(seq_labels, predictions)
    best = plain
    for fit in candidates[1:]:
        fit["share_ahead_of_mean"] = ahead[f'{fit["mix"]}/{fit["sharpness"]}']["share_of_resamples_ahead"]
        if fit["share_ahead_of_mean"] >= EVIDENCE and fit["score"] > best["score"] + 1e-9:
            best = fit
    model.sequence_mix.fill_(best["mix"])
    model.sequence_sharpness.fill_(best["sharpness"])
    return best


def _set_calibration(model: SkinLesionNet, kind: str, fit: dict[str, Any]) -> None:
    getattr(model, f"{kind}_bias").copy_(torch.as_tensor(fit["bias"]))
    getattr(model, f"{kind}_temperature").fill_(float(fit["temperature"]))


@torch.no_grad()
def fit(model: SkinLesionNet, ham: Ham10000, seed: int = 0, limit: int | None = None) -> dict[str, Any]:
    """Set calibration (temperature, prior correction, confidence map), sequence pooling
    and OOD buffers in `model`; return the model-card entries (`triage` is a TriageRule).

    `limit` keeps only that many photos per split (for quick smoke runs)."""
    model.eval()
    train_t, val_t = training_tables(ham.table, seed, limit)
    n = len(CLASSES)

    # Every framing users send is a real photo: the reference statistics cover all of them, not only full frames.
    train_photos = _photos(list(train_t.path))
    train = [engine.encode(model, [variant(p) for p in train_photos]) for variant in VARIANTS.values()]
    del train_photos
    train_feats = torch.cat([e.features for e in train])[:, :FEATURE_DIM].cpu().numpy()
    means, precision = ood.fit_gaussian(train_feats, np.tile(train_t.label.to_numpy(), len(VARIANTS)), n)
    model.ood_means.copy_(torch.as_tensor(means))
    model.ood_precision.copy_(torch.as_tensor(precision))
    train_textures = torch.cat([e.textures for e in train]).cpu().numpy()
    texture_mean, texture_precision = ood.fit_gaussian(train_textures, np.zeros(len(train_textures), dtype=int), 1)
    model.ood_texture_mean.copy_(torch.as_tensor(texture_mean))
    model.ood_texture_precision.copy_(torch.as_tensor(texture_precision))
    del train, train_feats, train_textures
    reference = model.ood_reference()

    val_photos = _photos(list(val_t.path))
    val_labels = val_t.label.to_numpy()
    quality_rows, distances, texture_distances = [], [], []
    val_feats = val_logits = None
    framing_logits = {}
    for name, variant in VARIANTS.items():
        imgs = [variant(p) for p in val_photos]
        # The predictor's own forward (the engine's default memory layout): a threshold sits exactly on a
        # validation photo's score, and another layout's rounding would move that photo across it.
        encoded = engine.encode(model, imgs)
        feats, logits = encoded.numpy()
        framing_logits[name] = logits
        if name == "full":
            val_feats, val_logits = feats, logits
        quality_rows += [ood.quality(img) for img in imgs]
        distances.append(ood.mahalanobis(encoded.features, reference.means, reference.precision).cpu().numpy())
        texture_distances.append(ood.mahalanobis(encoded.textures, reference.texture_mean,
                                                 reference.texture_precision).cpu().numpy())
    assert val_feats is not None and val_logits is not None
    thresholds = ood.fit_thresholds(quality_rows, distances, texture_distances=texture_distances)

    counts = np.bincount(train_t.label.to_numpy(), minlength=n)
    photo_fit = fit_calibration(val_logits, val_labels, counts)
    _set_calibration(model, "photo", photo_fit)
    model.photo_confidence.copy_(torch.as_tensor(fit_confidence_map(
        softmax(val_logits / photo_fit["temperature"] + photo_fit["bias"]), val_labels)))
    photo_fit["confidence_map"] = model.photo_confidence.tolist()
    model.sequence_bias.zero_()
    model.sequence_temperature.fill_(1.0)
    seq_fit = _fit_sequence(model, val_t, val_feats, val_logits, counts)
    _set_calibration(model, "sequence", seq_fit)

    probs = engine.shown_probabilities(model, val_logits, "photo").cpu().numpy()
    photo_fit["val_ece_with_map"] = expected_calibration_error(probs, val_labels)
    choice = abstain.choose_threshold(probs, val_labels)
    malignant = tuple(sorted(MALIGNANT))
    rule, triage_val = triage.fit(
        {name: triage.malignant_probability(engine.shown_probabilities(model, logits, "photo").cpu().numpy(), CLASSES,
                                            malignant) for name, logits in framing_logits.items()},
        triage.is_malignant(val_labels, CLASSES, malignant), val_t.lesion_id.to_numpy(), malignant)
    groups = lesion_groups(val_t, min_photos=2)
    if groups:
        seq_probs = engine.shown_probabilities(
            model, engine.sequence_logits(model, val_feats, val_logits, groups), "sequence").cpu().numpy()
        rule, seq_val = triage.fit_sequence(rule, triage.malignant_probability(seq_probs, CLASSES, malignant),
                                            triage.is_malignant(val_labels[[g[0] for g in groups]], CLASSES, malignant))
        if seq_val is not None:
            triage_val["multi_photo_lesions_sequence"] = seq_val

    def plain(f: dict[str, Any]) -> dict[str, Any]:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in f.items()}

    return {
        "calibration": {"photo": plain(photo_fit), "sequence": plain(seq_fit)},
        "inconclusive_below": choice["threshold"],
        "abstention": {**choice, "val_risk_coverage": abstain.risk_coverage(probs, val_labels)},
        "ood": thresholds,
        "triage": rule,
        "triage_validation": triage_val,
    }
