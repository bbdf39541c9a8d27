"""The whole training recipe (`skin-model train`): the two stages of `stages.py`, optionally
warm-started (`--init`) or distilled from a teacher (`--teacher`), then the trust layer fitted
on validation (`fit_trust`), the test figures measured, and weights plus model card written."""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from skin_model.data import preprocess
from skin_model.data.ham10000 import (
    Ham10000,
    lesion_groups,
    load_ham10000,
    split_lesions,
    training_tables,
)
from skin_model.devices import describe, select_device
from skin_model.evaluation.evaluate import card_metrics
from skin_model.model import checkpoint
from skin_model.model.card import DatasetInfo, MemberCard, ModelCard, TrustSettings
from skin_model.model.network import SkinLesionNet
from skin_model.training import fit_trust as trust
from skin_model.training.config import TrainConfig, split_description
from skin_model.training.stages import (
    RESUME_FILE,
    features_of,
    load_resume,
    photo_logits_of,
    preload,
    seed_everything,
    train_encoder,
    train_sequence,
)
from skin_model.training.teacher import ViewTeacher


def hardware() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA), {platform.processor() or platform.machine()}"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def warm_start(model: SkinLesionNet, weights: str | Path) -> dict[str, Any]:
    """Start from trained weights (verified by checksum) instead of ImageNet: every tensor of
    the main model whose name and shape match is copied (ensemble members are not; the input
    size may differ). Returns what the card records about it."""
    trained, card = checkpoint.load(weights, strict=False)
    if trained.backbone != model.backbone:
        raise ValueError(f"--init weights use {trained.backbone}, this run trains {model.backbone}")
    own = model.state_dict()
    taken = {k: v for k, v in trained.state_dict().items()
             if not k.startswith("members.") and k in own and own[k].shape == v.shape}
    model.load_state_dict(taken, strict=False)
    return {"weights": str(weights), "sha256": card.sha256, "name": card.name, "tensors": len(taken)}


def load_teacher(teacher: str | Path, split: int, fingerprint: str) -> tuple[SkinLesionNet, dict[str, Any]]:
    """A distillation teacher and what the card records of it. The teacher must have been trained
    on the same split, or the student would learn from test photos' neighbours."""
    model, card = checkpoint.load(teacher, strict=False)
    if card.data.metadata_md5 != fingerprint:
        raise ValueError(f"the teacher {teacher} was trained on another copy of the data (metadata md5 "
                         f"{card.data.metadata_md5}, here {fingerprint})")
    if card.data.split != split_description(split):
        raise ValueError(f"the teacher {teacher} was trained on another split "
                         f"({card.data.split}) than this run ({split_description(split)})")
    info = {"weights": str(teacher), "sha256": card.sha256, "name": card.name, "architecture": card.architecture,
            "members": [{"backbone": m.backbone, "image_size": m.data_config.image_size,
                         "input_height": m.data_config.input_height} for m in (model, *model.members)]}
    return model, info


def teacher_probabilities(teacher: str | Path, photos: torch.Tensor, split: int, fingerprint: str,
                          device: torch.device) -> tuple[torch.Tensor, dict[str, Any]]:
    """A trained model's (often an ensemble's) probabilities for every training photo, computed
    once on the inference view: the soft labels a single student learns from."""
    model, info = load_teacher(teacher, split, fingerprint)
    model.to(device)
    logits = photo_logits_of(model, features_of(model, photos, device), device)
    return torch.as_tensor(logits).softmax(-1), info


def view_teacher(teacher: str | Path, split: int, fingerprint: str,
                 saved: dict[str, Any] | None) -> tuple[ViewTeacher, dict[str, Any]]:
    """A teacher that labels each training view (`--distil-same-view`); a resumed run must find
    the very teacher it started with."""
    model, info = load_teacher(teacher, split, fingerprint)
    if saved is not None and saved["sha256"] != info["sha256"]:
        raise ValueError(f"the teacher {teacher} changed since this run started (sha256 {info['sha256']}, "
                         f"was {saved['sha256']})")
    labeller = ViewTeacher(model)
    return labeller, {**info, **labeller.describe()}


def run(cfg: TrainConfig, resume: str | Path | None = None) -> ModelCard:
    """The whole recipe; writes weights and model card to `cfg.out` and returns the card.

    `resume` is the `--out` folder of an interrupted run: its saved configuration is used
    and stage 1 continues from its last finished epoch. With `cfg.teacher` the encoder also
    learns from that model's probabilities (distillation); with `fit_trust` off the run stops
    before calibration (`skin-model calibrate` or `combine` takes it from there)."""
    saved = load_resume(resume) if resume is not None else None
    if saved is not None:
        cfg = TrainConfig(**{**saved["config"], "out": str(resume)})
    if cfg.distil_same_view and not cfg.teacher:
        raise ValueError("--distil-same-view needs a --teacher to label the views")
    start = time.time()
    seed_everything(cfg.seed)
    device = select_device(cfg.device)
    tqdm.write(f"training on {describe(device)}")
    ham = load_ham10000(cfg.data)
    train_t, val_t = training_tables(ham.table, cfg.split, cfg.limit)
    labels, val_labels = train_t.label.to_numpy(), val_t.label.to_numpy()
    size = cfg.data_config.input_size
    photos, val_photos = preload(list(train_t.path), size), preload(list(val_t.path), size)
    carried = (saved or {}).get("provenance") or {}
    labeller = None
    if cfg.teacher and cfg.distil_same_view:
        soft = None
        labeller, teacher = view_teacher(cfg.teacher, cfg.split, ham.fingerprint, carried.get("teacher"))
    elif cfg.teacher and carried.get("soft") is not None:
        # A resumed distillation keeps the soft labels it started with: computing them again
        # costs a teacher forward over every training photo (about 15 CPU minutes for a pair).
        soft, teacher = carried["soft"], carried["teacher"]
    elif cfg.teacher:
        soft, teacher = teacher_probabilities(cfg.teacher, photos, cfg.split, ham.fingerprint, device)
    else:
        soft, teacher = None, None

    model = SkinLesionNet(cfg.backbone, cfg.image_size, pretrained=saved is None and not cfg.init,
                          data_config=cfg.data_config)
    if saved is not None:
        init = carried.get("init")
    else:
        init = warm_start(model, cfg.init) if cfg.init else None
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    resume_path = Path(cfg.out) / RESUME_FILE
    stage1 = train_encoder(model, cfg, photos, labels, val_photos, val_labels, device, checkpoint_to=resume_path,
                           resume=saved, provenance={"init": init, "teacher": teacher, "soft": soft}, soft=soft,
                           teacher=labeller)
    t1 = time.time() - start

    gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    views = [features_of(model, photos, device)]
    for _ in range(cfg.views):
        views.append(features_of(model, photos, device, augment=True, generator=gen))
    t_views = time.time() - start - t1
    stage2 = train_sequence(model, cfg, np.stack(views), labels, preprocess.table_metadata(train_t),
                            lesion_groups(train_t), device)
    training = {"config": asdict(cfg), "stage1": stage1, "stage2": stage2, "hardware": hardware(),
                "device": describe(device), "torch": torch.__version__, "stage1_seconds": stage1["seconds"],
                "views_seconds": round(t_views, 1), "stage2_seconds": round(time.time() - start - t1 - t_views, 1),
                "seconds": round(time.time() - start + (saved["seconds"] if saved else 0.0), 1),
                "resumed": saved is not None, "init": init, "teacher": teacher}
    model = model.to(memory_format=torch.contiguous_format)
    # Written before the trust layer is fitted, so a run cut short still leaves usable
    # weights (`skin-model calibrate` finishes them); finish() overwrites both files.
    checkpoint.save(model, Path(cfg.out), ModelCard(name="skin-model CNN-LSTM (not yet calibrated)", training=training,
                                                    data=DatasetInfo(split=split_description(cfg.split),
                                                                     metadata_md5=ham.fingerprint)))
    resume_path.unlink(missing_ok=True)
    if not cfg.fit_trust:
        return checkpoint.read_card(cfg.out)
    model.to(device)
    return finish(model, ham, training, Path(cfg.out), device, seed=cfg.split, limit=cfg.limit,
                  heatmap_photos=cfg.heatmap_photos)


def finish(model: SkinLesionNet, ham: Ham10000, training: dict[str, Any], out: Path, device: torch.device,
           seed: int = 0, limit: int | None = None, heatmap_photos: int = 200,
           members: tuple[MemberCard, ...] = ()) -> ModelCard:
    """Fit the trust layer on validation, evaluate on test, write weights and card
    (`members`: the card entries of an ensemble's further members, kept as they are)."""
    start = time.time()
    trust_card = trust.fit(model, ham, seed=seed, limit=limit)
    training = {**training, "trust_seconds": round(time.time() - start, 1), "trust_device": describe(device),
                "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    trust_settings = TrustSettings(inconclusive_below=trust_card["inconclusive_below"], ood=trust_card["ood"],
                                   abstention=trust_card["abstention"], triage=trust_card["triage"])
    card = ModelCard(trust=trust_settings, members=members)
    metrics = card_metrics(model, ham, card, seed=seed, limit=limit, heatmap_photos=heatmap_photos)
    counts = ham.table.assign(split=split_lesions(ham.table, seed)).split.value_counts().to_dict()
    card = replace(
        card,
        name="skin-model CNN-LSTM",
        architecture=f"{model.backbone} (ImageNet) at {model.data_config.describe()} encoder"
                     + (", each photo colour-normalised (Shades of Gray)" if model.data_config.colour_constancy else "")
                     + " -> per-photo head; LSTM(256) over the time-ordered photos of one lesion -> sequence head "
                     "(confidence-weighted mean of photo probabilities + LSTM correction); optional patient context "
                     "(age, sex, site) as an additive head"
                     + "".join(f"; photo logits averaged with an ensemble member ({m.backbone} at {m.data_config.describe()})"
                               for m in model.members),
        training={**training, "calibration": trust_card["calibration"],
                  "triage_validation": trust_card["triage_validation"]},
        data=DatasetInfo(metadata_md5=ham.fingerprint, split=split_description(seed),
                         train_photos=counts.get("train", 0), val_photos=counts.get("val", 0),
                         test_photos=metrics["n_photos"],
                         citation="Tschandl P., Rosendahl C., Kittler H. The HAM10000 dataset, a large collection of "
                                  "multi-source dermatoscopic images of common pigmented skin lesions. Sci. Data 5, "
                                  "180161 (2018). doi:10.7910/DVN/DBW86T",
                         licence="CC BY-NC 4.0 (academic, non-commercial use, with attribution)"),
        metrics=metrics,
    )
    return checkpoint.save(model.cpu(), out, card)
