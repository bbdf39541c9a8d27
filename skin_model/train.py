"""Train the model on HAM10000 in two stages.

1. Fine-tune the ImageNet encoder and the per-photo head on single photos
   (class-rebalanced sampling, dermoscopy augmentations, mixed precision on CUDA).
2. With the encoder frozen, train the patient-context head and the LSTM on
   sequences drawn from each lesion's photos (augmented views, random order,
   length 1 to 8), then fit calibration on validation and evaluate on test.
"""

from __future__ import annotations

import copy
import math
import platform
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from . import checkpoint, trust
from .constants import BACKBONE, CLASSES, IMAGE_SIZE, MAX_SEQUENCE
from .data import Ham10000, load_ham10000, split_lesions, table_metadata, training_tables
from .devices import describe, select_device
from .evaluate import evaluate_heatmaps, evaluate_ood, evaluate_split, lesion_groups
from .metrics import classification_report
from .model import SkinLesionNet
from .predict import Predictor
from .presets import augment_batch, resize_batch


@dataclass
class TrainConfig:
    """The training recipe; the defaults are the CPU recipe of the shipped weights (bound it with
    `time_budget_min`: the learning-rate schedule then follows the clock)."""

    data: str | None = None
    out: str = "weights"
    backbone: str = BACKBONE
    image_size: int = IMAGE_SIZE
    epochs: int = 30
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.05
    freeze_blocks: int = 5
    label_smoothing: float = 0.1
    sampling_power: float = 0.5
    mixup: float = 0.0
    ema: float = 0.998
    views: int = 2
    sequence_steps: int = 2000
    seed: int = 0
    limit: int | None = None
    device: str | None = None
    time_budget_min: float | None = None
    heatmap_photos: int = 200
    init: str | None = None
    channels_last: bool = True
    cpu_bf16: bool = False
    split_seed: int | None = None
    teacher: str | None = None
    distil_weight: float = 0.5
    fit_trust: bool = True

    @property
    def split(self) -> int:
        """The seed of the lesion-grouped split (`--seed` unless `--split-seed` is given), so
        models of several seeds can share one split and be combined or distilled."""
        return self.seed if self.split_seed is None else self.split_seed


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def preload(paths: list[str], size: int = IMAGE_SIZE) -> torch.Tensor:
    """Decode every photo once into one uint8 (N, 3, H, W) tensor.

    All photos share the first photo's aspect ratio (HAM10000's 4:3; others are
    squashed, as inference squashes every photo to a square), with the long side
    at most twice the input size (the official 600x450 photos shrink, the 200x150
    copies stay as they are)."""
    with Image.open(paths[0]) as first:
        w0, h0 = first.size
    width = min(w0, 2 * size)
    height = max(1, round(width * h0 / w0))

    def decode(path: str) -> np.ndarray:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if img.size != (width, height):
                img = img.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=2.0)
            return np.asarray(img)

    with ThreadPoolExecutor(max_workers=min(16, max(1, len(paths) // 64))) as pool:
        arrays = list(tqdm(pool.map(decode, paths), total=len(paths), desc="decode", leave=False))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _freeze_early(model: SkinLesionNet, n_blocks: int) -> list[nn.Module]:
    if n_blocks <= 0:
        return []
    enc = model.encoder
    frozen = [enc._conv_stem, enc._bn0, *enc._blocks[:n_blocks]]
    for module in frozen:
        module.requires_grad_(False)
    return frozen


def _autocast(device: torch.device, cpu_bf16: bool = False) -> torch.autocast:
    """bfloat16 on CUDA; on a CPU only when asked (fast with AVX512-BF16, 9x slower without)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" or cpu_bf16)


def _to_device_batch(x: torch.Tensor, device: torch.device, channels_last: bool = True) -> torch.Tensor:
    """Channels-last by default on every device: on this project's 2-core CPU a training step of
    Lite0 at 176 px takes 87 ms a photo channels-last against 122 ms in NCHW."""
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.no_grad()
def features_of(model: SkinLesionNet, photos: torch.Tensor, device: torch.device, augment: bool = False,
                batch_size: int = 128, generator: torch.Generator | None = None) -> np.ndarray:
    """Pooled encoder features of preloaded photos: the inference view, or one random training view."""
    model.eval()
    out = []
    for start in range(0, len(photos), batch_size):
        chunk = photos[start:start + batch_size].to(device, non_blocking=True)
        x = augment_batch(chunk, model.image_size, generator) if augment else resize_batch(chunk, model.image_size)
        with _autocast(device):
            out.append(model.features(_to_device_batch(x, device)).float().cpu())
    return torch.cat(out).numpy()


def photo_logits_of(model: SkinLesionNet, feats: np.ndarray, device: torch.device) -> np.ndarray:
    with torch.no_grad():
        return model.photo_logits(torch.as_tensor(feats, device=device)).float().cpu().numpy()


class Schedule:
    """Warm-up then cosine decay over steps, or over wall-clock time when a budget is set
    (CPU training: the run ends on time, with a fully decayed learning rate)."""

    def __init__(self, lr: float, total_steps: int, budget_min: float | None, warmup: float = 0.05) -> None:
        self.lr, self.total, self.warmup = lr, max(1, total_steps), warmup
        self.budget = budget_min * 60 if budget_min else None
        self.start, self.steps, self.done = time.time(), 0, False

    def state_dict(self) -> dict[str, float]:
        return {"steps": self.steps, "elapsed": time.time() - self.start}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Continue where a saved run stopped: its steps, and its wall-clock time already spent."""
        self.steps, self.start = int(state["steps"]), time.time() - float(state["elapsed"])

    @property
    def progress(self) -> float:
        p = self.steps / self.total
        if self.budget:
            p = max(p, (time.time() - self.start) / self.budget)
        return min(p, 1.0)

    def step(self, opt: torch.optim.Optimizer) -> bool:
        """Set the next learning rate; True when training should stop."""
        self.steps += 1
        p = self.progress
        factor = p / self.warmup if p < self.warmup else 0.5 * (1 + math.cos(math.pi * (p - self.warmup) / (1 - self.warmup)))
        for group in opt.param_groups:
            group["lr"] = self.lr * max(factor, 0.01)
        self.done = p >= 1.0
        return self.done


def mix(x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """CutMix or mixup (half the time each) with a shuffled copy of the batch; returns
    the mixed photos, the permutation that gave each photo its partner and the share of the original."""
    perm = torch.randperm(len(x), device=x.device, generator=generator)
    lam = torch.rand(1, device=x.device, generator=generator).item()  # Beta(1, 1)
    if torch.rand(1, device=x.device, generator=generator).item() < 0.5:
        return lam * x + (1 - lam) * x[perm], perm, lam
    h, w = x.shape[-2:]
    ch, cw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
    top = int(torch.randint(0, h - ch + 1, (1,), generator=generator, device=x.device))
    left = int(torch.randint(0, w - cw + 1, (1,), generator=generator, device=x.device))
    x = x.clone()
    x[..., top:top + ch, left:left + cw] = x[perm][..., top:top + ch, left:left + cw]
    return x, perm, 1 - ch * cw / (h * w)


RESUME_FILE = "resume.pt"


def _rng_state(gen: torch.Generator) -> dict[str, Any]:
    """Every generator the run draws from, as tensors and plain values (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"generator": gen.get_state(), "torch": torch.get_rng_state(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(gen: torch.Generator, state: dict[str, Any]) -> None:
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        for index, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


def save_resume(path: Path, state: dict[str, Any]) -> None:
    """Write the epoch checkpoint atomically: a run killed while writing keeps the previous one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_resume(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / RESUME_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from: {path} (is this the --out folder of a run?)")
    return torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain values: no pickled code


def new_optimizer(model: SkinLesionNet, cfg: TrainConfig) -> tuple[list[nn.Module], torch.optim.Optimizer]:
    """Freeze the stem and first blocks, and an AdamW over what is left to train."""
    frozen = _freeze_early(model, cfg.freeze_blocks)
    params = [p for p in model.parameters() if p.requires_grad]
    return frozen, torch.optim.AdamW(params, lr=cfg.lr * 0.01, weight_decay=cfg.weight_decay)


def train_step(model: SkinLesionNet, opt: torch.optim.Optimizer, loss_fn: nn.Module, photos: torch.Tensor,
               y: torch.Tensor, cfg: TrainConfig, gen: torch.Generator, device: torch.device,
               soft: torch.Tensor | None = None) -> float:
    """One optimiser step on a batch of uint8 photos: augment, mix (if asked), forward, backward.

    `soft` holds a teacher's probabilities for the photos (distillation): the loss is then
    `distil_weight` of cross-entropy against them and the rest against the labels."""
    x = augment_batch(photos, model.image_size, gen)
    perm, lam = None, 1.0
    if cfg.mixup and torch.rand(1, device=device, generator=gen).item() < cfg.mixup:
        x, perm, lam = mix(x, gen)

    def loss_of(logits: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
        hard = loss_fn(logits, y if order is None else y[order])
        if soft is None:
            return hard
        target = soft if order is None else soft[order]
        distilled = -(target * logits.float().log_softmax(-1)).sum(-1).mean()
        return (1 - cfg.distil_weight) * hard + cfg.distil_weight * distilled

    with _autocast(device, cfg.cpu_bf16):
        logits = model.photo_logits(model.features(_to_device_batch(x, device, cfg.channels_last)))
        loss = loss_of(logits, None) if perm is None else lam * loss_of(logits, None) + (1 - lam) * loss_of(logits, perm)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def train_encoder(model: SkinLesionNet, cfg: TrainConfig, photos: torch.Tensor, labels: np.ndarray,
                  val_photos: torch.Tensor, val_labels: np.ndarray, device: torch.device,
                  checkpoint_to: Path | None = None, resume: dict[str, Any] | None = None,
                  provenance: dict[str, Any] | None = None, soft: torch.Tensor | None = None) -> dict[str, Any]:
    """Stage 1: fine-tune encoder + photo head on augmented batches drawn with class-rebalanced
    sampling; keep the epoch with the best validation balanced accuracy + macro AUC.

    With `cfg.ema` (a decay such as 0.99) an exponential moving average of the weights is
    what gets scored and kept: it smooths the last steps' noise at no training cost.
    `soft`: a teacher's probabilities for each training photo (see `train_step`).
    After every epoch the whole state (weights, optimiser, schedule, random generators,
    best epoch so far, and `provenance`, e.g. the warm start) goes to `checkpoint_to`;
    `resume` is such a state, and the run continues from it exactly as if it had never stopped."""
    frozen, opt = new_optimizer(model, cfg)
    counts = np.bincount(labels, minlength=len(CLASSES)).astype(np.float64)
    weights = torch.as_tensor(counts[labels] ** (cfg.sampling_power - 1.0), device=device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    bank = photos.to(device)
    y_all = torch.tensor(labels, device=device)
    soft_all = soft.to(device) if soft is not None else None
    steps_per_epoch = max(1, len(labels) // cfg.batch_size)
    schedule = Schedule(cfg.lr, cfg.epochs * steps_per_epoch, cfg.time_budget_min)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True) if cfg.ema else None
    scored = ema.module if ema is not None else model
    best: dict[str, Any] = {"score": -1.0}
    history: list[dict[str, Any]] = []
    seen, spent, first_epoch = 0, 0.0, 0
    if resume is not None:
        saved_on = resume.get("device_type", device.type)
        if saved_on != device.type:
            raise ValueError(f"this run was saved on {saved_on} and cannot continue exactly on {device.type}: resume it "
                             f"with SKIN_MODEL_DEVICE={saved_on}, or start a new run from its weights with --init")
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        if ema is not None:
            ema.load_state_dict(resume["ema"])
        schedule.load_state_dict(resume["schedule"])
        _set_rng_state(gen, resume["rng"])
        best, history, seen, spent = resume["best"], resume["history"], resume["seen"], resume["seconds"]
        first_epoch = resume["epoch"]
        schedule.done = resume["done"]
    start = time.time() - spent
    for epoch in range(first_epoch, cfg.epochs):
        if schedule.done:
            break
        model.train()
        for module in frozen:
            module.eval()
        order = torch.multinomial(weights, steps_per_epoch * cfg.batch_size, replacement=True, generator=gen)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", mininterval=5)
        total = 0.0
        for step in bar:
            idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            total += train_step(model, opt, loss_fn, bank[idx], y_all[idx], cfg, gen, device,
                                soft=soft_all[idx] if soft_all is not None else None)
            if ema is not None:
                ema.update_parameters(model)
            seen += len(idx)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{total / (step + 1):.3f}")
            if schedule.step(opt):
                break
        logits = photo_logits_of(scored, features_of(scored, val_photos, device), device)
        rep = classification_report(torch.as_tensor(logits).softmax(1).numpy(), val_labels)
        score = float(np.nan_to_num(rep["balanced_accuracy"] + rep["macro_auc"], nan=-0.5))
        history.append({"epoch": epoch + 1, "steps": schedule.steps, "loss": total / max(1, step + 1),
                        "val_balanced_accuracy": rep["balanced_accuracy"], "val_accuracy": rep["accuracy"],
                        "val_macro_auc": rep["macro_auc"], "seconds": round(time.time() - start, 1)})
        tqdm.write(f"epoch {epoch + 1}: loss {total / max(1, step + 1):.4f} val bal-acc "
                   f"{rep['balanced_accuracy']:.4f} acc {rep['accuracy']:.4f} auc {rep['macro_auc']:.4f} "
                   f"({time.time() - start:.0f} s)")
        if score > best["score"]:
            best = {"score": score, "epoch": epoch + 1, "state": copy.deepcopy(scored.state_dict())}
        if checkpoint_to is not None:
            save_resume(checkpoint_to, {
                "epoch": epoch + 1, "done": schedule.done, "config": asdict(cfg), "model": model.state_dict(),
                "optimizer": opt.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                "schedule": schedule.state_dict(), "rng": _rng_state(gen), "best": best, "history": history,
                "seen": seen, "seconds": time.time() - start, "provenance": provenance, "device_type": device.type})
    model.load_state_dict(best["state"])
    model.requires_grad_(True)
    elapsed = time.time() - start
    return {"history": history, "best_epoch": best["epoch"], "seconds": round(elapsed, 1),
            "photos_per_second": round(seen / max(elapsed, 1e-9), 1)}


def train_sequence(model: SkinLesionNet, cfg: TrainConfig, feats: np.ndarray, labels: np.ndarray,
                   meta: np.ndarray, groups: list[np.ndarray], device: torch.device) -> dict[str, Any]:
    """Stage 2: patient-context head and LSTM on frozen features of augmented views.

    `feats` is (views, photos, 1280); a sequence draws photos of one lesion in random
    order, each as a random view, so a lesion with one photo still yields sequences.
    """
    model.requires_grad_(False)
    heads = [model.meta_head, model.project, model.lstm, model.sequence_head]
    for h in heads:
        h.requires_grad_(True)
    opt = torch.optim.AdamW([p for h in heads for p in h.parameters()], lr=1e-3, weight_decay=1e-4)
    rng = np.random.default_rng(cfg.seed)
    lesion_labels = np.array([labels[g[0]] for g in groups])
    counts = np.bincount(lesion_labels, minlength=len(CLASSES)).astype(np.float64)
    p = counts[lesion_labels] ** (cfg.sampling_power - 1.0)
    p /= p.sum()
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    all_feats = torch.as_tensor(feats, device=device)
    meta_t = torch.as_tensor(meta, device=device)
    batch = 128
    total = 0.0
    model.train()
    bar = tqdm(range(cfg.sequence_steps), desc="sequence")
    for step in bar:
        chosen = rng.choice(len(groups), size=batch, p=p)
        lengths = rng.integers(1, MAX_SEQUENCE + 1, size=batch)
        lengths = np.minimum(lengths, np.array([max(2, 2 * len(groups[c])) for c in chosen]))
        t = int(lengths.max())
        idx = np.zeros((batch, t), dtype=np.int64)
        views = rng.integers(0, feats.shape[0], size=(batch, t))
        for b, c in enumerate(chosen):
            order = rng.permutation(groups[c])
            idx[b] = np.resize(order, t)
        f = all_feats[torch.as_tensor(views), torch.as_tensor(idx)]
        keep = torch.as_tensor(rng.random(batch) < 0.5, device=device)[:, None, None]
        m = meta_t[torch.as_tensor(idx)] * keep
        y = torch.as_tensor(lesion_labels[chosen], device=device)
        photo = model.photo_logits(f, m)
        seq = model.sequence_logits(f, photo, torch.as_tensor(lengths, device=device))
        valid = torch.arange(t, device=device)[None] < torch.as_tensor(lengths, device=device)[:, None]
        loss = loss_fn(seq, y) + loss_fn(photo[valid], y[:, None].expand(-1, t)[valid])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.item()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{total / (step + 1):.3f}")
    model.eval()
    model.requires_grad_(True)
    return {"steps": cfg.sequence_steps, "final_loss": total / max(1, cfg.sequence_steps)}


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
    return {"weights": str(weights), "sha256": card["sha256"], "name": card.get("name"), "tensors": len(taken)}


def split_description(seed: int) -> str:
    return f"lesion-grouped, stratified by dx, 70/15/15, seed {seed}"


def teacher_probabilities(teacher: str | Path, photos: torch.Tensor, split: int, fingerprint: str,
                          device: torch.device) -> tuple[torch.Tensor, dict[str, Any]]:
    """A trained model's (often an ensemble's) probabilities for every training photo, computed
    once on the inference view: the soft labels a single student learns from. The teacher must
    have been trained on the same split, or the student would learn from test photos' neighbours."""
    model, card = checkpoint.load(teacher, strict=False)
    if (card.get("data") or {}).get("metadata_md5") != fingerprint:
        raise ValueError(f"the teacher {teacher} was trained on another copy of the data (metadata md5 "
                         f"{(card.get('data') or {}).get('metadata_md5')}, here {fingerprint})")
    if (card.get("data") or {}).get("split") != split_description(split):
        raise ValueError(f"the teacher {teacher} was trained on another split "
                         f"({(card.get('data') or {}).get('split')}) than this run ({split_description(split)})")
    model.to(device)
    logits = photo_logits_of(model, features_of(model, photos, device), device)
    info = {"weights": str(teacher), "sha256": card["sha256"], "name": card.get("name"),
            "architecture": card.get("architecture"),
            "members": [{"backbone": model.backbone, "image_size": model.image_size}]
            + [{"backbone": m.backbone, "image_size": m.image_size} for m in model.members]}
    return torch.as_tensor(logits).softmax(-1), info


def run(cfg: TrainConfig, resume: str | Path | None = None) -> dict[str, Any]:
    """The whole recipe; writes weights and model card to `cfg.out` and returns the card.

    `resume` is the `--out` folder of an interrupted run: its saved configuration is used
    and stage 1 continues from its last finished epoch. With `cfg.teacher` the encoder also
    learns from that model's probabilities (distillation); with `fit_trust` off the run stops
    before calibration (`skin-model calibrate` or `combine` takes it from there)."""
    saved = load_resume(resume) if resume is not None else None
    if saved is not None:
        cfg = TrainConfig(**{**saved["config"], "out": str(resume)})
    start = time.time()
    seed_everything(cfg.seed)
    device = select_device(cfg.device)
    tqdm.write(f"training on {describe(device)}")
    ham = load_ham10000(cfg.data)
    train_t, val_t = training_tables(ham.table, cfg.split, cfg.limit)
    labels, val_labels = train_t.label.to_numpy(), val_t.label.to_numpy()
    photos, val_photos = preload(list(train_t.path), cfg.image_size), preload(list(val_t.path), cfg.image_size)
    soft, teacher = teacher_probabilities(cfg.teacher, photos, cfg.split, ham.fingerprint, device) if cfg.teacher else (None, None)

    model = SkinLesionNet(cfg.backbone, cfg.image_size, pretrained=saved is None and not cfg.init)
    if saved is not None:
        init = (saved.get("provenance") or {}).get("init")
    else:
        init = warm_start(model, cfg.init) if cfg.init else None
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    resume_path = Path(cfg.out) / RESUME_FILE
    stage1 = train_encoder(model, cfg, photos, labels, val_photos, val_labels, device, checkpoint_to=resume_path,
                           resume=saved, provenance={"init": init}, soft=soft)
    t1 = time.time() - start

    gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    views = [features_of(model, photos, device)]
    for _ in range(cfg.views):
        views.append(features_of(model, photos, device, augment=True, generator=gen))
    t_views = time.time() - start - t1
    stage2 = train_sequence(model, cfg, np.stack(views), labels, table_metadata(train_t),
                            lesion_groups(train_t), device)
    training = {"config": asdict(cfg), "stage1": stage1, "stage2": stage2, "hardware": hardware(),
                "device": describe(device), "torch": torch.__version__, "stage1_seconds": stage1["seconds"],
                "views_seconds": round(t_views, 1), "stage2_seconds": round(time.time() - start - t1 - t_views, 1),
                "seconds": round(time.time() - start + (saved["seconds"] if saved else 0.0), 1),
                "resumed": saved is not None, "init": init, "teacher": teacher}
    model = model.to(memory_format=torch.contiguous_format)
    # Written before the trust layer is fitted, so a run cut short still leaves usable
    # weights (`skin-model calibrate` finishes them); finish() overwrites both files.
    checkpoint.save(model, Path(cfg.out), {"name": "skin-model CNN-LSTM (not yet calibrated)", "training": training,
                                           "data": {"split": split_description(cfg.split),
                                                    "metadata_md5": ham.fingerprint}})
    resume_path.unlink(missing_ok=True)
    if not cfg.fit_trust:
        return checkpoint.read_card(cfg.out)
    model.to(device)
    return finish(model, ham, training, Path(cfg.out), device, seed=cfg.split, limit=cfg.limit,
                  heatmap_photos=cfg.heatmap_photos)


def finish(model: SkinLesionNet, ham: Ham10000, training: dict[str, Any], out: Path, device: torch.device,
           seed: int = 0, limit: int | None = None, heatmap_photos: int = 200,
           members: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Fit the trust layer on validation, evaluate on test, write weights and card
    (`members`: the card entries of an ensemble's further members, kept as they are)."""
    start = time.time()
    trust_card = trust.fit(model, ham, device, seed=seed, limit=limit)
    training = {**training, "trust_seconds": round(time.time() - start, 1), "trust_device": describe(device),
                "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    card = {"inconclusive_below": trust_card["inconclusive_below"], "ood": trust_card["ood"]}
    metrics = evaluate_split(model, ham, "test", device, seed=seed, limit=limit, card=card)
    metrics["ood"] = evaluate_ood(model, card, ham, "test", device, seed=seed, limit=limit)
    if heatmap_photos:
        metrics["heatmaps"] = evaluate_heatmaps(Predictor(model, card, device), ham, "test", seed=seed,
                                                limit=min(heatmap_photos, limit or heatmap_photos))
    train_t = ham.table.assign(split=split_lesions(ham.table, seed))
    counts = train_t.split.value_counts().to_dict()
    card = {
        "name": "skin-model CNN-LSTM",
        "architecture": f"{model.backbone} (ImageNet) at {model.image_size} px encoder -> per-photo head; LSTM(256) over the "
                        "time-ordered photos of one lesion -> sequence head (confidence-weighted mean of photo probabilities + LSTM "
                        "correction); optional patient context (age, sex, site) as an additive head"
                        + "".join(f"; photo logits averaged with an ensemble member ({m.backbone} at {m.image_size} px)"
                                  for m in model.members),
        "training": {**training, "calibration": trust_card["calibration"]},
        **card,
        "abstention": trust_card["abstention"],
        "data": {"dataset": "HAM10000", "metadata_md5": ham.fingerprint, "split": split_description(seed),
                 "train_photos": counts.get("train", 0), "val_photos": counts.get("val", 0),
                 "test_photos": metrics["n_photos"],
                 "citation": "Tschandl P., Rosendahl C., Kittler H. The HAM10000 dataset, a large collection of "
                             "multi-source dermatoscopic images of common pigmented skin lesions. Sci. Data 5, "
                             "180161 (2018). doi:10.7910/DVN/DBW86T",
                 "licence": "CC BY-NC 4.0 (academic, non-commercial use, with attribution)"},
        "metrics": metrics,
        "members": members or [],
    }
    checkpoint.save(model.cpu(), out, card)
    return checkpoint.read_card(out)
