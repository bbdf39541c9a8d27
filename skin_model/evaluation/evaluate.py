"""Evaluate a model on a lesion-grouped split: single photos (also centre-cropped
and zoomed, as users frame them), with and without patient context, and whole
lesions read as sequences."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from PIL import Image

from skin_model import engine, runtime
from skin_model.constants import CLASSES, CONFIRMATION
from skin_model.data import preprocess
from skin_model.data.ham10000 import Ham10000, lesion_groups, split_table
from skin_model.data.transforms import VARIANTS
from skin_model.evaluation import ood_set
from skin_model.evaluation.summary import interval_notes, performance_rows
from skin_model.explain.cam import METHODS, Explainer
from skin_model.io.images import load_image
from skin_model.metrics import TABLE_METRICS, auc_ovr, bootstrap_intervals, classification_report, reliability
from skin_model.model.card import ModelCard
from skin_model.model.network import SkinLesionNet
from skin_model.trust import abstain, ood, triage


def photo_outputs(model: SkinLesionNet, images: list[Image.Image], meta: np.ndarray | None = None,
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features and raw (uncalibrated) per-photo logits, as numpy arrays (engine.encode)."""
    return engine.encode(model, images, meta).numpy()


def lesion_sequence_logits(model: SkinLesionNet, feats: np.ndarray, logits: np.ndarray,
                           groups: list[np.ndarray]) -> np.ndarray:
    """Raw sequence logits of each group of row indices (time order = row order)."""
    return engine.sequence_logits(model, feats, logits, groups).cpu().numpy()


def calibrated_probs(model: SkinLesionNet, logits: np.ndarray, kind: engine.Kind) -> np.ndarray:
    """The probabilities the predictor shows (engine.shown_probabilities), as a numpy array."""
    return engine.shown_probabilities(model, logits, kind).cpu().numpy()


def ood_scores(model: SkinLesionNet, card: ModelCard, photos: list[Image.Image]) -> tuple[np.ndarray, list[str | None]]:
    """Out-of-distribution score (> 1 rejects) and reason of each photo, as the predictor decides."""
    scores = runtime.score_photos(engine.TorchEngine(model), photos, model.data_config)
    verdicts = ood.check([ood.quality(p) for p in photos], scores.feature_distance, card.trust.ood or {},
                         scores.texture_distance)
    return np.array([v.score for v in verdicts]), [v.reason for v in verdicts]


def evaluate_ood(model: SkinLesionNet, card: ModelCard, ham: Ham10000, split: str = "test", seed: int = 0,
                 limit: int | None = None) -> dict[str, Any]:
    """AUROC between real photos of the split and the offline OOD set, and rejection rates."""
    if not card.trust.ood:
        raise ValueError("these weights carry no out-of-distribution fit; run skin-model calibrate first")
    table = split_table(ham, split, seed, limit)
    photos = [load_image(p) for p in table.path]
    outliers = ood_set.build(photos, seed=seed)
    real, _ = ood_scores(model, card, photos)
    fake, reasons = ood_scores(model, card, [img for _, img in outliers])
    labels = np.r_[np.zeros(len(real)), np.ones(len(fake))]
    kinds: dict[str, list[bool]] = {}
    for (name, _), score in zip(outliers, fake):
        kinds.setdefault(name.split(":")[0], []).append(bool(score > 1))
    variants = {}
    for name, variant in VARIANTS.items():
        scores, _ = ood_scores(model, card, [variant(p) for p in photos])
        variants[name] = float((scores > 1).mean())
    return {
        "n_real": len(real), "n_outliers": len(fake),
        "auroc": auc_ovr(labels.astype(int), np.r_[real, fake]),
        "real_wrongly_rejected": variants,
        "outliers_rejected": float((fake > 1).mean()),
        "outliers_rejected_by_kind": {k: float(np.mean(v)) for k, v in kinds.items()},
        "outlier_reasons": {r or "accepted": reasons.count(r) for r in set(reasons)},
    }


def evaluate_heatmaps(model: SkinLesionNet, ham: Ham10000, split: str = "test", seed: int = 0, limit: int | None = 300,
                      methods: list[str] | None = None) -> dict[str, Any]:
    """Pointing game (heatmap peak inside the lesion mask) and share of heatmap energy
    inside the mask, for each CAM method, on photos of the split that have masks."""
    table = split_table(ham, split, seed)
    table = table[table.mask_path.notna()].reset_index(drop=True)
    if limit:
        table = table.sample(n=min(limit, len(table)), random_state=seed).reset_index(drop=True)
    if table.empty:
        return {"n": 0}
    explainer = Explainer(model)
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


def evaluate_split(model: SkinLesionNet, ham: Ham10000, split: str = "test", seed: int = 0, limit: int | None = None,
                   card: ModelCard | None = None) -> dict[str, Any]:
    """Every figure of the model card for one split (the abstention figures need the card's threshold)."""
    model.eval()
    table = split_table(ham, split, seed, limit)
    labels = table.label.to_numpy()
    photos = [load_image(p) for p in table.path]
    meta = preprocess.table_metadata(table)
    report: dict[str, Any] = {"split": split, "n_photos": len(table), "n_lesions": int(table.lesion_id.nunique()),
                              "single_photo": {}, "with_patient_context": {}}
    base_feats = base_logits = None
    framing_probs = {}
    for name, variant in VARIANTS.items():
        imgs = [variant(p) for p in photos]
        feats, logits = photo_outputs(model, imgs)
        framing_probs[name] = calibrated_probs(model, logits, "photo")
        report["single_photo"][name] = classification_report(framing_probs[name], labels)
        logits_meta = engine.context_logits(model, feats, meta).cpu().numpy()
        report["with_patient_context"][name] = classification_report(calibrated_probs(model, logits_meta, "photo"), labels)
        if name == "full":
            base_feats, base_logits = feats, logits
    assert base_feats is not None and base_logits is not None
    groups = lesion_groups(table, min_photos=2)
    lesion_labels = np.array([labels[g[0]] for g in groups])
    photo_probs = calibrated_probs(model, base_logits, "photo")
    seq_probs = calibrated_probs(model, lesion_sequence_logits(model, base_feats, base_logits, groups), "sequence")
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
    all_seq = calibrated_probs(model, lesion_sequence_logits(model, base_feats, base_logits, all_groups), "sequence")
    report["per_lesion_sequence"] = classification_report(all_seq, np.array([labels[g[0]] for g in all_groups]))
    report["reliability"] = reliability(photo_probs, labels)
    if card is not None:
        report["abstention"] = {**abstain.answered_report(photo_probs, labels, card.trust.inconclusive_below),
                                "risk_coverage": abstain.risk_coverage(photo_probs, labels)}
    if card is not None and card.trust.triage is not None:
        report["triage"] = triage_report(card.trust.triage, framing_probs, labels, table.lesion_id.to_numpy(),
                                         seq_probs if groups else None, lesion_labels, table.dx_type.to_numpy())
    return report


def card_metrics(model: SkinLesionNet, ham: Ham10000, card: ModelCard, seed: int = 0, limit: int | None = None,
                 heatmap_photos: int = 200) -> dict[str, Any]:
    """Every test figure a model card carries, for these weights and the trust layer of `card`: the
    split's figures, the out-of-distribution check and Grad-CAM's faithfulness on `heatmap_photos`
    photos with masks. Training's last step writes them; `skin-model evaluate --update-card` measures
    them again when the evaluation gains a figure, without refitting anything."""
    metrics = evaluate_split(model, ham, "test", seed=seed, limit=limit, card=card)
    metrics["ood"] = evaluate_ood(model, card, ham, "test", seed=seed, limit=limit)
    if heatmap_photos:
        metrics["heatmaps"] = evaluate_heatmaps(model, ham, "test", seed=seed,
                                                limit=min(heatmap_photos, limit or heatmap_photos))
    return metrics


def triage_report(rule: triage.TriageRule, framing_probs: dict[str, np.ndarray], labels: np.ndarray,
                  lesion_ids: np.ndarray, sequence_probs: np.ndarray | None, lesion_labels: np.ndarray,
                  confirmation: np.ndarray | None = None) -> dict[str, Any]:
    """Sensitivity and specificity of the "see a dermatologist" flag at the card's threshold, with
    lesion-bootstrap 95% intervals: per photo in each framing, and per multi-photo lesion's sequence.
    With `confirmation` (each photo's `dx_type`), also the full-frame specificity among benign photos
    by how their diagnosis was confirmed."""
    truth = triage.is_malignant(labels, CLASSES, rule.malignant)
    out: dict[str, Any] = {"threshold": rule.threshold, "target_sensitivity": rule.target_sensitivity,
                           "confidence": rule.confidence, "malignant": list(rule.malignant), "single_photo": {}}
    for name, probs in framing_probs.items():
        out["single_photo"][name] = triage.operating_point(
            triage.malignant_probability(probs, CLASSES, rule.malignant), truth, rule.threshold, lesion_ids)
    if confirmation is not None:
        out["benign_specificity_by_confirmation"] = triage.specificity_by(
            triage.malignant_probability(framing_probs["full"], CLASSES, rule.malignant), truth, rule.threshold,
            confirmation, lesion_ids)
    if sequence_probs is not None and len(sequence_probs):
        seq_rule = rule.for_sequences()
        out["multi_photo_lesions_sequence"] = triage.operating_point(
            triage.malignant_probability(sequence_probs, CLASSES, rule.malignant),
            triage.is_malignant(lesion_labels, CLASSES, rule.malignant), seq_rule.threshold)
    return out


def format_table(report: dict[str, Any]) -> str:
    """A readable summary of :func:`evaluate_split`'s output."""
    rows = performance_rows(report)
    width = max([len("view"), *(len(row["evaluation"]) for row in rows)]) + 2
    lines = [f"split={report['split']}  photos={report['n_photos']}  lesions={report['n_lesions']}", "",
             f"{'view':{width}s}" + "".join(f"{k:>18s}" for k in TABLE_METRICS)]
    for row in rows:
        lines.append(f"{row['evaluation']:{width}s}" + "".join(
            f"{row[k]:>18d}" if k == "n" else f"{row[k]:>18.4f}" for k in TABLE_METRICS))
    lines += ["", "95% intervals (bootstrap over lesions):", *(f"  {note}" for note in interval_notes(report))]
    if "abstention" in report:
        a = report["abstention"]
        lines += ["", f"inconclusive below {a['threshold']:.3f}: answers {a['coverage']:.1%} of photos, balanced "
                      f"accuracy {a['balanced_accuracy_answered']:.4f}, accuracy {a['accuracy_answered']:.4f} on those"]
    if "triage" in report:
        t = report["triage"]
        aim = triage.TriageRule(threshold=t["threshold"], malignant=tuple(t["malignant"]),
                                target_sensitivity=t["target_sensitivity"], confidence=t.get("confidence")).aim()
        lines += ["", f"see a dermatologist when P(malignant) >= {t['threshold']:.3f} (chosen on validation for {aim}):"]
        for name, op in t["single_photo"].items():
            lines.append(f"  {name:12s} sensitivity {op['sensitivity']:.3f} ({_span(op['sensitivity_interval'])}), "
                         f"specificity {op['specificity']:.3f} ({_span(op['specificity_interval'])})")
        if "multi_photo_lesions_sequence" in t:
            op = t["multi_photo_lesions_sequence"]
            lines.append(f"  {'sequences':12s} sensitivity {op['sensitivity']:.3f} ({_span(op['sensitivity_interval'])}), "
                         f"specificity {op['specificity']:.3f} ({_span(op['specificity_interval'])}) at "
                         f"{op['threshold']:.3f} ({op['n']} lesions with 2+ photos)")
        for kind, op in t.get("benign_specificity_by_confirmation", {}).items():
            lines.append(f"  benign, confirmed by {CONFIRMATION.get(kind, kind)}: specificity {op['specificity']:.3f} "
                         f"({_span(op['specificity_interval'])}), {op['n']} photos (full frame)")
    full = report["single_photo"]["full"]
    lines += ["", f"{'class':8s}{'recall':>10s}{'precision':>11s}{'auc':>8s}{'support':>9s}"]
    for c, r in full["per_class"].items():
        lines.append(f"{c:8s}{r['recall']:>10.3f}{r['precision']:>11.3f}{r['auc']:>8.3f}{r['support']:>9d}")
    lines += ["", "confusion matrix (rows: truth, columns: prediction) " + " ".join(CLASSES)]
    for c, r in zip(CLASSES, full["confusion_matrix"]):
        lines.append(f"{c:8s}" + "".join(f"{v:>7d}" for v in r))
    return "\n".join(lines)


def _span(interval: list[float] | None) -> str:
    return f"{interval[0]:.3f}-{interval[1]:.3f}" if interval else "no interval"


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2)
