"""Fit the post-training trust layer on the lesion-grouped validation split:
calibration of both heads, the "inconclusive" threshold, and the statistics and
thresholds of the out-of-distribution check. Training calls it; `skin-model
calibrate` refits it on existing weights."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from . import abstain, ood
from .calibration import fit_calibration
from .constants import CLASSES
from .data import Ham10000, split_lesions
from .evaluate import VARIANTS, calibrated_probs, lesion_groups, lesion_sequence_logits, photo_outputs
from .images import load_image
from .model import SkinLesionNet


def _photos(paths: list[str]) -> list:
    return [load_image(p) for p in tqdm(paths, desc="decode", leave=False)]


@torch.no_grad()
def fit(model: SkinLesionNet, ham: Ham10000, device: torch.device, seed: int = 0, limit: int | None = None) -> dict[str, Any]:
    """Set calibration and OOD buffers in `model`; return the model-card entries.

    `limit` keeps only that many photos per split (for quick smoke runs)."""
    model.eval()
    table = ham.table.assign(split=split_lesions(ham.table, seed))
    if limit:
        table = table.sample(frac=1.0, random_state=seed).groupby("split").head(limit)
    train_t = table[table.split == "train"].reset_index(drop=True)
    val_t = table[table.split == "val"].reset_index(drop=True)
    n = len(CLASSES)

    train_feats, _ = photo_outputs(model, _photos(list(train_t.path)), device)
    means, precision = ood.fit_gaussian(train_feats, train_t.label.to_numpy(), n)
    model.ood_means.copy_(torch.as_tensor(means))
    model.ood_precision.copy_(torch.as_tensor(precision))

    val_photos = _photos(list(val_t.path))
    val_labels = val_t.label.to_numpy()
    quality_rows, distances = [], []
    val_feats = val_logits = None
    for name, variant in VARIANTS.items():
        imgs = [variant(p) for p in val_photos]
        feats, logits = photo_outputs(model, imgs, device)
        if name == "full":
            val_feats, val_logits = feats, logits
        quality_rows += [ood.quality(img) for img in imgs]
        distances.append(ood.mahalanobis(torch.as_tensor(feats, device=device), model.ood_means,
                                         model.ood_precision).cpu().numpy())
    assert val_feats is not None and val_logits is not None
    thresholds = ood.fit_thresholds(quality_rows, np.concatenate(distances))

    counts = np.bincount(train_t.label.to_numpy(), minlength=n)
    photo_fit = fit_calibration(val_logits, val_labels, counts)
    groups = lesion_groups(val_t)
    seq_labels = np.array([val_labels[g[0]] for g in groups])
    seq_logits = lesion_sequence_logits(model, val_feats, val_logits, groups, device)
    seq_fit = fit_calibration(seq_logits, seq_labels, np.bincount(seq_labels, minlength=n))
    for kind, f in (("photo", photo_fit), ("sequence", seq_fit)):
        getattr(model, f"{kind}_bias").copy_(torch.as_tensor(f["bias"]))
        getattr(model, f"{kind}_temperature").fill_(float(f["temperature"]))

    probs = calibrated_probs(model, val_logits, "photo")
    choice = abstain.choose_threshold(probs, val_labels)

    def plain(f: dict[str, Any]) -> dict[str, Any]:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in f.items()}

    return {
        "calibration": {"photo": plain(photo_fit), "sequence": plain(seq_fit)},
        "inconclusive_below": choice["threshold"],
        "abstention": {**choice, "val_risk_coverage": abstain.risk_coverage(probs, val_labels)},
        "ood": thresholds,
    }
