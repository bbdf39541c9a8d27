"""Evaluate a model on a lesion-grouped split: single photos (also centre-cropped
and zoomed, as users frame them), with and without patient context, and whole
lesions read as sequences."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from . import abstain, ood_set
from .constants import CLASSES
from .data import Ham10000, split_lesions, table_metadata
from .images import load_image
from .metrics import auc_ovr, bootstrap_intervals, classification_report, reliability
from .model import SkinLesionNet
from .presets import centre_crop, to_batch

VARIANTS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "full": lambda img: img,
    "centre_crop": lambda img: centre_crop(img, 1.0),
    "zoom_0.6": lambda img: centre_crop(img, 0.6),
}


@torch.no_grad()
def photo_outputs(model: SkinLesionNet, images: list[Image.Image], device: torch.device,
                  meta: np.ndarray | None = None, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features and raw (uncalibrated) per-photo logits."""
    feats, logits = [], []
    for start in range(0, len(images), batch_size):
        x = to_batch(images[start:start + batch_size], model.image_size).to(device)
        f = model.features(x)
        m = None if meta is None else torch.as_tensor(meta[start:start + batch_size], device=device)
        feats.append(f.float().cpu())
        logits.append(model.photo_logits(f, m).float().cpu())
    return torch.cat(feats).numpy(), torch.cat(logits).numpy()


@torch.no_grad()
def lesion_sequence_logits(model: SkinLesionNet, feats: np.ndarray, logits: np.ndarray,
                           groups: list[np.ndarray], device: torch.device) -> np.ndarray:
    """Raw sequence logits of each group of row indices (time order = row order)."""
    out = []
    for rows in groups:
        f = torch.as_tensor(feats[rows], device=device)[None]
        lg = torch.as_tensor(logits[rows], device=device)[None]
        out.append(model.sequence_logits(f, lg)[0].float().cpu().numpy())
    return np.stack(out) if out else np.zeros((0, len(CLASSES)), dtype=np.float32)


def lesion_groups(table: pd.DataFrame, min_photos: int = 1) -> list[np.ndarray]:
    """Positional row indices of each lesion's photos, in image_id order (HAM10000 has no dates)."""
    positions = table.reset_index(drop=True)
    groups = []
    for _, rows in positions.sort_values("image_id").groupby("lesion_id", sort=True):
        if len(rows) >= min_photos:
            groups.append(rows.index.to_numpy())
    return groups


def calibrated_probs(model: SkinLesionNet, logits: np.ndarray, kind: str) -> np.ndarray:
    """The probabilities the predictor shows, from raw logits of the photo or sequence head."""
    calibrated = model.calibrated(torch.as_tensor(logits, device=model.photo_bias.device).float(), kind)
    if kind == "photo":
        return model.photo_probabilities(calibrated).cpu().numpy()
    return calibrated.softmax(-1).cpu().numpy()


def split_table(ham: Ham10000, split: str, seed: int = 0, limit: int | None = None) -> pd.DataFrame:
    table = ham.table.assign(split=split_lesions(ham.table, seed))
    table = table[table.split == split].reset_index(drop=True)
    return table.iloc[:limit].reset_index(drop=True) if limit else table


def ood_scores(model: SkinLesionNet, card: dict[str, Any], photos: list[Image.Image], device: torch.device,
               batch_size: int = 64) -> tuple[np.ndarray, list[str | None]]:
    """Out-of-distribution score (> 1 rejects) and reason of each photo, as the predictor decides."""
    from .predict import Predictor

    checker = Predictor(model, card, device)
    scores, reasons = [], []
    for start in range(0, len(photos), batch_size):
        chunk = photos[start:start + batch_size]
        with torch.no_grad():
            feats = model.features(to_batch(chunk, model.image_size).to(device))
        for v in checker.check(chunk, feats):
            scores.append(v.score)
            reasons.append(v.reason)
    return np.array(scores), reasons


def evaluate_ood(model: SkinLesionNet, card: dict[str, Any], ham: Ham10000, split: str = "test",
                 device: torch.device | None = None, seed: int = 0, limit: int | None = None) -> dict[str, Any]:
    """AUROC between real photos of the split and the offline OOD set, and rejection rates."""
    device = device or next(model.parameters()).device
    table = split_table(ham, split, seed, limit)
    photos = [load_image(p) for p in table.path]
    outliers = ood_set.build(photos, seed=seed)
    real, _ = ood_scores(model, card, photos, device)
    fake, reasons = ood_scores(model, card, [img for _, img in outliers], device)
    labels = np.r_[np.zeros(len(real)), np.ones(len(fake))]
    kinds: dict[str, list[bool]] = {}
    for (name, _), score in zip(outliers, fake):
        kinds.setdefault(name.split(":")[0], []).append(bool(score > 1))
    variants = {}
    for name, variant in VARIANTS.items():
        scores, _ = ood_scores(model, card, [variant(p) for p in photos], device)
        variants[name] = float((scores > 1).mean())
    return {
        "n_real": len(real), "n_outliers": len(fake),
        "auroc": auc_ovr(labels.astype(int), np.r_[real, fake]),
        "real_wrongly_rejected": variants,
        "outliers_rejected": float((fake > 1).mean()),
        "outliers_rejected_by_kind": {k: float(np.mean(v)) for k, v in kinds.items()},
        "outlier_reasons": {r or "accepted": reasons.count(r) for r in set(reasons)},
    }


def evaluate_heatmaps(predictor: Any, ham: Ham10000, split: str = "test", seed: int = 0, limit: int | None = 300,
                      methods: list[str] | None = None) -> dict[str, Any]:
    """Pointing game (heatmap peak inside the lesion mask) and share of heatmap energy
    inside the mask, for each CAM method, on photos of the split that have masks."""
    from .explain import METHODS, Explainer

    table = split_table(ham, split, seed)
    table = table[table.mask_path.notna()].reset_index(drop=True)
    if limit:
        table = table.sample(n=min(limit, len(table)), random_state=seed).reset_index(drop=True)
    if table.empty:
        return {"n": 0}
    explainer = Explainer(predictor)
    photos = [load_image(p) for p in table.path]
    masks = [np.asarray(Image.open(p).convert("L").resize(photo.size)) >= 128
             for p, photo in zip(table.mask_path, photos)]
    out: dict[str, Any] = {"n": len(photos), "lesion_share_of_frame": float(np.mean([m.mean() for m in masks]))}
    for method in methods or list(METHODS):
        hits, energy = [], []
        for start in range(0, len(photos), 16):
            heats = explainer.heatmaps(photos[start:start + 16], method=method)
            for heat, photo, mask in zip(heats, photos[start:start + 16], masks[start:start + 16]):
                cam = heat.resized(photo.size)
                y, x = np.unravel_index(int(np.argmax(cam)), cam.shape)
                hits.append(bool(mask[y, x]))
                energy.append(float(cam[mask].sum() / max(cam.sum(), 1e-9)))
        out[method] = {"pointing_game": float(np.mean(hits)), "energy_inside_mask": float(np.mean(energy))}
    return out


def evaluate_split(model: SkinLesionNet, ham: Ham10000, split: str = "test", device: torch.device | None = None,
                   seed: int = 0, limit: int | None = None, card: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every figure of the model card for one split."""
    device = device or next(model.parameters()).device
    model.eval()
    table = split_table(ham, split, seed, limit)
    labels = table.label.to_numpy()
    photos = [load_image(p) for p in table.path]
    meta = table_metadata(table)
    report: dict[str, Any] = {"split": split, "n_photos": len(table), "n_lesions": int(table.lesion_id.nunique()),
                              "single_photo": {}, "with_patient_context": {}}
    base_feats = base_logits = None
    for name, variant in VARIANTS.items():
        imgs = [variant(p) for p in photos]
        feats, logits = photo_outputs(model, imgs, device)
        report["single_photo"][name] = classification_report(calibrated_probs(model, logits, "photo"), labels)
        _, logits_meta = photo_outputs(model, imgs, device, meta=meta)
        report["with_patient_context"][name] = classification_report(calibrated_probs(model, logits_meta, "photo"), labels)
        if name == "full":
            base_feats, base_logits = feats, logits
    assert base_feats is not None and base_logits is not None
    groups = lesion_groups(table, min_photos=2)
    lesion_labels = np.array([labels[g[0]] for g in groups])
    photo_probs = calibrated_probs(model, base_logits, "photo")
    seq_probs = calibrated_probs(model, lesion_sequence_logits(model, base_feats, base_logits, groups, device), "sequence")
    rows = np.concatenate(groups) if groups else np.zeros(0, dtype=int)
    mean_probs = np.stack([photo_probs[g].mean(0) for g in groups]) if groups else None
    report["intervals"] = {"single_photo_full": bootstrap_intervals(labels, {"full": photo_probs}, table.lesion_id)}
    if groups:
        report["intervals"]["multi_photo_lesions"] = bootstrap_intervals(
            lesion_labels, {"mean_of_photos": mean_probs, "sequence": seq_probs})
    report["multi_photo_lesions"] = {
        "n_lesions": len(groups),
        "n_photos": int(len(rows)),
        "single_photo": classification_report(photo_probs[rows], labels[rows]) if len(rows) else None,
        "mean_of_photos": classification_report(mean_probs, lesion_labels) if groups else None,
        "sequence": classification_report(seq_probs, lesion_labels) if groups else None,
    }
    all_groups = lesion_groups(table, min_photos=1)
    all_seq = calibrated_probs(model, lesion_sequence_logits(model, base_feats, base_logits, all_groups, device), "sequence")
    report["per_lesion_sequence"] = classification_report(all_seq, np.array([labels[g[0]] for g in all_groups]))
    report["reliability"] = reliability(photo_probs, labels)
    if card and "inconclusive_below" in card:
        report["abstention"] = {**abstain.answered_report(photo_probs, labels, card["inconclusive_below"]),
                                "risk_coverage": abstain.risk_coverage(photo_probs, labels)}
    return report


def format_table(report: dict[str, Any]) -> str:
    """A readable summary of :func:`evaluate_split`'s output."""
    keys = ("n", "accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "ece")
    lines = [f"split={report['split']}  photos={report['n_photos']}  lesions={report['n_lesions']}", "",
             f"{'view':40s}" + "".join(f"{k:>18s}" for k in keys)]

    def row(name: str, r: dict[str, Any] | None) -> None:
        if r is not None:
            lines.append(f"{name:40s}" + "".join(f"{r[k]:>18d}" if k == "n" else f"{r[k]:>18.4f}" for k in keys))

    for name, r in report["single_photo"].items():
        row(f"single photo, {name}", r)
    for name, r in report["with_patient_context"].items():
        row(f"single photo + patient context, {name}", r)
    row("per lesion (sequence), all lesions", report["per_lesion_sequence"])
    multi = report["multi_photo_lesions"]
    row("lesions with 2+ photos: each photo", multi["single_photo"])
    row("lesions with 2+ photos: mean of photos", multi["mean_of_photos"])
    row("lesions with 2+ photos: sequence head", multi["sequence"])
    lines += ["", "95% intervals (bootstrap over lesions):"]
    full_ci = report["intervals"]["single_photo_full"]["full"]
    lines.append("  single photo, full: balanced accuracy {:.3f}-{:.3f}, accuracy {:.3f}-{:.3f}".format(
        *full_ci["balanced_accuracy"], *full_ci["accuracy"])
        + (", melanoma recall {:.3f}-{:.3f}".format(*full_ci["melanoma_recall"]) if "melanoma_recall" in full_ci else ""))
    if "multi_photo_lesions" in report["intervals"]:
        seq_ci = report["intervals"]["multi_photo_lesions"]["sequence"]
        lines.append("  lesions with 2+ photos, sequence minus mean of photos: balanced accuracy {:+.3f} to {:+.3f} "
                     "(ahead in {:.0%} of resamples)".format(*seq_ci["balanced_accuracy_minus_mean_of_photos"],
                                                            seq_ci["share_of_resamples_ahead"]))
    if "abstention" in report:
        a = report["abstention"]
        lines += ["", f"inconclusive below {a['threshold']:.3f}: answers {a['coverage']:.1%} of photos, balanced "
                      f"accuracy {a['balanced_accuracy_answered']:.4f}, accuracy {a['accuracy_answered']:.4f} on those"]
    full = report["single_photo"]["full"]
    lines += ["", f"{'class':8s}{'recall':>10s}{'precision':>11s}{'auc':>8s}{'support':>9s}"]
    for c, r in full["per_class"].items():
        lines.append(f"{c:8s}{r['recall']:>10.3f}{r['precision']:>11.3f}{r['auc']:>8.3f}{r['support']:>9d}")
    lines += ["", "confusion matrix (rows: truth, columns: prediction) " + " ".join(CLASSES)]
    for c, r in zip(CLASSES, full["confusion_matrix"]):
        lines.append(f"{c:8s}" + "".join(f"{v:>7d}" for v in r))
    return "\n".join(lines)


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2)
