"""Ablation of the training recipe on the lesion-grouped validation split.

Levers are tried one at a time on top of the best recipe so far and kept only
when they raise validation balanced accuracy + macro AUC (the score training
uses to pick its epoch). Test-time augmentation (flips) is measured on every
run without retraining. The result is a table for the model card and the
training flags of the winning recipe.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from skin_model.constants import CLASSES
from skin_model.data.ham10000 import load_ham10000, training_tables
from skin_model.devices import select_device
from skin_model.metrics import classification_report
from skin_model.model.network import SkinLesionNet
from skin_model.training.config import TrainConfig
from skin_model.training.stages import features_of, photo_logits_of, preload, seed_everything, train_encoder
from skin_model.trust.calibration import fit_calibration, softmax

# (name, overrides): the base recipe first (the shipped CPU one), then one lever per row. On a CPU give
# `--budget-min`: the rows share it, each row's schedule following the clock.
LEVERS: list[tuple[str, dict[str, Any]]] = [
    ("base: Lite0, 160 px, stem + 5 blocks frozen, EMA (the shipped CPU recipe)", {}),
    ("stem + 3 blocks frozen", {"freeze_blocks": 3}),
    ("176 px input", {"image_size": 176}),
    ("the photos' own 200x150 input (no squashing into a square)", {"image_size": 200, "input_height": 150}),
    ("stem + 8 blocks frozen, trained on 8 cached augmented views a photo", {"freeze_blocks": 8, "cached_views": 8}),
    ("progressive resizing: the first 60% of the run at 0.7 of the input's sides", {"progressive": 0.6}),
    ("logit-adjusted loss (tau 1) on the sqrt-balanced batches", {"logit_adjust": 1.0}),
    ("logit-adjusted loss (tau 1) instead of resampling", {"logit_adjust": 1.0, "sampling_power": 1.0}),
    ("mixup / CutMix on half the batches", {"mixup": 0.5}),
    ("learning rate 3e-4", {"lr": 3e-4}),
    ("no moving average of the weights", {"ema": 0.0}),
    ("twice the epochs", {"epochs": 2}),
]


def choose_levers(rows: str | None, levers: list[tuple[str, dict[str, Any]]] = LEVERS) -> list[tuple[str, dict[str, Any]]]:
    """The rows `--levers 5,6` names, after the base row 0 (every row when `rows` is empty), so a
    short CPU budget can go to the levers in question instead of being spread over all of them."""
    if not rows:
        return levers
    try:
        picked = sorted({int(part) for part in rows.split(",") if part.strip()} - {0})
    except ValueError:
        raise ValueError(f"--levers takes row numbers separated by commas, not {rows!r}") from None
    if any(not 0 < i < len(levers) for i in picked):
        raise ValueError(f"--levers: the rows are numbered 0 to {len(levers) - 1}, got {rows!r}")
    return [levers[0], *(levers[i] for i in picked)]


def flip_tta_logits(model: SkinLesionNet, photos: torch.Tensor, device: torch.device) -> np.ndarray:
    """Per-photo logits averaged over the four flips of the inference view (flipping the
    stored photos commutes with resizing them, so the inference path is reused as it is)."""
    views = (photos, photos.flip(-1), photos.flip(-2), photos.flip(-1, -2))
    return np.mean([photo_logits_of(model, features_of(model, v, device), device) for v in views], axis=0)


def _summary(logits: np.ndarray, labels: np.ndarray, counts: np.ndarray) -> dict[str, float]:
    raw = classification_report(softmax(logits), labels)
    fit = fit_calibration(logits, labels, counts)
    cal = classification_report(softmax(logits / fit["temperature"] + fit["bias"]), labels)
    return {"balanced_accuracy": raw["balanced_accuracy"], "accuracy": raw["accuracy"], "macro_auc": raw["macro_auc"],
            "calibrated_balanced_accuracy": cal["balanced_accuracy"], "calibrated_accuracy": cal["accuracy"],
            "score": raw["balanced_accuracy"] + raw["macro_auc"]}


def run(base: TrainConfig, levers: list[tuple[str, dict[str, Any]]] = LEVERS, out: str | Path | None = None,
        budget_min: float | None = None) -> dict[str, Any]:
    """Greedy one-lever-at-a-time ablation; writes JSON (and returns it) after every row.

    An "epochs" override multiplies the base epochs. `budget_min` spreads a wall-clock
    budget over the rows (each row gets its share of what is left)."""
    start = time.time()
    device = select_device(base.device)
    ham = load_ham10000(base.data)
    train_t, val_t = training_tables(ham.table, base.split, base.limit)
    labels, val_labels = train_t.label.to_numpy(), val_t.label.to_numpy()
    counts = np.bincount(labels, minlength=len(CLASSES))
    banks: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
    rows: list[dict[str, Any]] = []
    best_cfg, best_score = base, -np.inf
    for i, (name, overrides) in enumerate(levers):
        changes = {k: (v * base.epochs if k == "epochs" else v) for k, v in overrides.items()}
        cfg = replace(best_cfg, **changes)
        if budget_min:
            left = budget_min - (time.time() - start) / 60
            weight = cfg.epochs / sum(max(1, o.get("epochs", 1)) * base.epochs for _, o in levers[i:])
            cfg = replace(cfg, time_budget_min=max(0.2, left * weight))
        size = cfg.data_config.input_size
        if size not in banks:
            banks[size] = (preload(list(train_t.path), size), preload(list(val_t.path), size))
        photos, val_photos = banks[size]
        seed_everything(cfg.seed)
        model = SkinLesionNet(cfg.backbone, cfg.image_size, pretrained=True, data_config=cfg.data_config).to(device)
        model = model.to(memory_format=torch.channels_last)
        stage1 = train_encoder(model, cfg, photos, labels, val_photos, val_labels, device)
        logits = photo_logits_of(model, features_of(model, val_photos, device), device)
        plain = _summary(logits, val_labels, counts)
        tta = _summary(flip_tta_logits(model, val_photos, device), val_labels, counts)
        kept = plain["score"] > best_score
        if kept:
            best_cfg, best_score = cfg, plain["score"]
        rows.append({"lever": name, "overrides": changes, "kept": kept, "val": plain, "val_flip_tta": tta,
                     "best_epoch": stage1["best_epoch"], "epochs_run": len(stage1["history"]),
                     "train_seconds": stage1["seconds"], "photos_per_second": stage1["photos_per_second"]})
        print(format_row(rows[-1]), flush=True)
        result = {"device": str(device), "rows": rows, "best": asdict(best_cfg),
                  "best_flags": flags(best_cfg), "seconds": round(time.time() - start, 1)}
        if out:
            Path(out).write_text(json.dumps(result, indent=2))
        del model
    return result


# What a lever can change: `flags` writes each of them, so the winning recipe is reproduced whole.
RECIPE_FIELDS = ("backbone", "image_size", "input_height", "freeze_blocks", "cached_views", "progressive",
                 "progressive_scale", "logit_adjust", "sampling_power", "lr", "batch_size", "mixup", "ema", "epochs")


def flags(cfg: TrainConfig) -> str:
    """The `skin-model train` options that reproduce the recipe's choices."""
    return " ".join(f"--{name.replace('_', '-')} {getattr(cfg, name)}" for name in RECIPE_FIELDS
                    if getattr(cfg, name) is not None)


def format_row(row: dict[str, Any]) -> str:
    v, t = row["val"], row["val_flip_tta"]
    return (f"| {row['lever']} | {'kept' if row['kept'] else 'dropped'} | {v['balanced_accuracy']:.3f} | "
            f"{v['accuracy']:.3f} | {v['macro_auc']:.3f} | {v['calibrated_balanced_accuracy']:.3f} | "
            f"{t['balanced_accuracy']:.3f} | {t['macro_auc']:.3f} | {row['train_seconds']:.0f} s |")


def format_table(result: dict[str, Any]) -> str:
    head = ("| lever (added to the best so far) | | val bal. acc | val acc | val macro AUC | val bal. acc "
            "(prior-corrected) | + flip TTA bal. acc | + flip TTA AUC | train time |\n"
            "|---|---|---|---|---|---|---|---|---|")
    return "\n".join([head, *(format_row(r) for r in result["rows"])])
