"""The two training stages and what they share: preloading photos, freezing early blocks, the
clock-bound schedule, one training step (soft targets, mixup), resumable epoch checkpoints.

1. `train_encoder`: fine-tune the ImageNet encoder and the per-photo head on single photos
   (class-rebalanced sampling, dermoscopy augmentations, EMA, channels-last on the CPU; optionally
   progressive resizing and a logit-adjusted loss).
2. `train_sequence`: with the encoder frozen, train the patient-context head and the LSTM on
   sequences drawn from each lesion's photos (augmented views, random order, length 1 to 8).
"""

from __future__ import annotations

import copy
import math
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from skin_model import engine
from skin_model.constants import CLASSES, IMAGE_SIZE, MALIGNANT, MAX_SEQUENCE
from skin_model.data.transforms import augment_batch
from skin_model.metrics import auc_ovr, classification_report
from skin_model.model.backbones import early_layers
from skin_model.model.network import SkinLesionNet
from skin_model.training.config import TrainConfig
from skin_model.training.teacher import ViewTeacher
from skin_model.trust import triage


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def preload(paths: list[str], size: int | tuple[int, int] = IMAGE_SIZE) -> torch.Tensor:
    """Decode every photo once into one uint8 (N, 3, H, W) tensor.

    All photos share the first photo's aspect ratio (HAM10000's 4:3; others are
    squashed, as inference squashes every photo to the input's shape), with the width
    at most twice the input's longer side (the official 600x450 photos shrink, the
    200x150 copies stay as they are). `size`: a square's side or (height, width)."""
    with Image.open(paths[0]) as first:
        w0, h0 = first.size
    width = min(w0, 2 * (size if isinstance(size, int) else max(size)))
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
    frozen = early_layers(model.backbone, model.encoder, n_blocks)
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
    """Pooled encoder features of preloaded photos: the inference view (through the engine, as
    the predictor sees a photo), or one random training view."""
    model.eval()
    if not augment:
        return engine.encode(model, photos, batch_size=batch_size, channels_last=True).features.cpu().numpy()
    out = []
    for start in range(0, len(photos), batch_size):
        chunk = photos[start:start + batch_size].to(device, non_blocking=True)
        x = augment_batch(chunk, model.data_config.input_size, generator,
                          colour_constancy=model.data_config.colour_constancy)
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


class LogitAdjustedLoss(nn.Module):
    """Cross-entropy on `logits + tau * log(prior)` (Menon et al., "Long-tail learning via logit
    adjustment", ICLR 2021), `prior` being the class frequencies of the batches as sampled.

    A rare class's photos must then beat the others by a margin that grows with its rarity, which
    pushes its boundary outwards during training rather than only shifting the bias afterwards (the
    calibration's prior correction does that). With tau = 0 it is the plain cross-entropy."""

    def __init__(self, prior: np.ndarray, tau: float, label_smoothing: float = 0.0) -> None:
        super().__init__()
        prior = np.maximum(np.asarray(prior, dtype=np.float64), 1e-12)
        self.register_buffer("offset", torch.as_tensor(tau * np.log(prior / prior.sum()), dtype=torch.float32))
        self.ce = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.ce(logits.float() + self.offset, target)


def malignant_auc(probs: np.ndarray, labels: np.ndarray) -> float:
    """AUC of the summed malignant probability (akiec + bcc + mel) against benign: the ranking the
    triage flag thresholds."""
    return auc_ovr(triage.is_malignant(labels, CLASSES, MALIGNANT),
                   triage.malignant_probability(probs, CLASSES, MALIGNANT))


def selection_score(select: str, report: dict[str, Any]) -> float:
    """The validation score stage 1 keeps its best epoch by (`TrainConfig.select`); NaN (a class
    absent from a tiny validation split) counts as a poor score rather than poisoning the comparison."""
    if select == "triage":
        score = report["malignant_auc"]
    else:
        score = report["balanced_accuracy"] + report["macro_auc"]
    return float(np.nan_to_num(score, nan=-0.5))


_MALIGNANT_MASK = torch.tensor([name in MALIGNANT for name in CLASSES])


def malignant_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of malignant (akiec + bcc + mel) against benign, on the summed class
    probabilities: the very score the triage thresholds. Cross-entropy over seven classes charges
    calling a melanoma a basal cell carcinoma as much as calling it a nevus; this term charges only
    the mistakes that cross the triage's line, computed in log space so it never takes log(0)."""
    logits = logits.float()
    mask = _MALIGNANT_MASK.to(logits.device)
    total = logits.logsumexp(-1)
    log_malignant = logits.masked_fill(~mask, -math.inf).logsumexp(-1) - total
    log_benign = logits.masked_fill(mask, -math.inf).logsumexp(-1) - total
    is_malignant = mask[target]
    return -torch.where(is_malignant, log_malignant, log_benign).mean()


def input_size_at(cfg: TrainConfig, progress: float) -> tuple[int, int]:
    """The training input's (height, width) at this point of stage 1 (0 to 1): with progressive
    resizing the first `cfg.progressive` of the run is at `cfg.progressive_scale` of the size (in
    multiples of 8), so early epochs are cheap, and the last ones train at the size inference uses."""
    height, width = cfg.data_config.input_size
    if progress >= cfg.progressive:
        return height, width
    return (max(32, round(height * cfg.progressive_scale / 8) * 8),
            max(32, round(width * cfg.progressive_scale / 8) * 8))


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


@torch.no_grad()
def cache_prefix(model: SkinLesionNet, photos: torch.Tensor, n_blocks: int, views: int, seed: int,
                 device: torch.device, batch_size: int = 64) -> torch.Tensor:
    """The frozen stem and first `n_blocks` blocks run once on `views` augmented views of every
    photo: a float16 (views, N, C, h, w) tensor that stage 1 then trains the rest of the network on.

    The views come from their own generator seeded by `seed`, so a resumed run rebuilds the same cache."""
    gen = torch.Generator(device=device).manual_seed(seed + 7919)
    was_training = model.training
    model.eval()
    cache: torch.Tensor | None = None
    for view in tqdm(range(views), desc="cache frozen prefix", leave=False):
        for start in range(0, len(photos), batch_size):
            x = augment_batch(photos[start:start + batch_size].to(device), model.data_config.input_size, gen,
                              colour_constancy=model.data_config.colour_constancy)
            out = model.prefix(_to_device_batch(x, device), n_blocks).to(torch.float16).cpu()
            if cache is None:
                cache = torch.empty((views, len(photos), *out.shape[1:]), dtype=torch.float16)
            cache[view, start:start + len(out)] = out
    model.train(was_training)
    if cache is None:
        raise ValueError("no photos to cache")
    return cache


def train_step(model: SkinLesionNet, opt: torch.optim.Optimizer, loss_fn: nn.Module, photos: torch.Tensor,
               y: torch.Tensor, cfg: TrainConfig, gen: torch.Generator, device: torch.device,
               soft: torch.Tensor | None = None, prefix_blocks: int = 0,
               size: tuple[int, int] | None = None, teacher: ViewTeacher | None = None) -> float:
    """One optimiser step on a batch of uint8 photos: augment (to `size`, by default the model's
    input), mix (if asked), forward, backward.

    `soft` holds a teacher's probabilities for the photos (distillation): the loss is then
    `distil_weight` of cross-entropy against them and the rest against the labels. With
    `malignant_weight` that much of `malignant_loss` against the labels is added. A `teacher`
    gives them instead for the very view this step draws (consistent distillation).
    With `prefix_blocks` > 0 `photos` are `cache_prefix` outputs of already augmented views, and only
    the network after that prefix runs."""
    if prefix_blocks:
        x = photos.to(device).float()
    else:
        drawn_from = gen.get_state() if teacher is not None else None
        x = augment_batch(photos, size or model.data_config.input_size, gen,
                          colour_constancy=model.data_config.colour_constancy)
        if teacher is not None:
            soft = teacher.probabilities(photos, drawn_from)
    perm, lam = None, 1.0
    if cfg.mixup and torch.rand(1, device=device, generator=gen).item() < cfg.mixup:
        x, perm, lam = mix(x, gen)

    def loss_of(logits: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
        labels = y if order is None else y[order]
        hard = loss_fn(logits, labels)
        triage = cfg.malignant_weight * malignant_loss(logits, labels) if cfg.malignant_weight else 0.0
        if soft is None:
            return hard + triage
        target = soft if order is None else soft[order]
        distilled = -(target * logits.float().log_softmax(-1)).sum(-1).mean()
        return (1 - cfg.distil_weight) * hard + cfg.distil_weight * distilled + triage

    with _autocast(device, cfg.cpu_bf16):
        x = _to_device_batch(x, device, cfg.channels_last)
        feats = model.features_from_prefix(x, prefix_blocks) if prefix_blocks else model.features(x)
        logits = model.photo_logits(feats)
        loss = loss_of(logits, None) if perm is None else lam * loss_of(logits, None) + (1 - lam) * loss_of(logits, perm)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def train_encoder(model: SkinLesionNet, cfg: TrainConfig, photos: torch.Tensor, labels: np.ndarray,
                  val_photos: torch.Tensor, val_labels: np.ndarray, device: torch.device,
                  checkpoint_to: Path | None = None, resume: dict[str, Any] | None = None,
                  provenance: dict[str, Any] | None = None, soft: torch.Tensor | None = None,
                  teacher: ViewTeacher | None = None) -> dict[str, Any]:
    """Stage 1: fine-tune encoder + photo head on augmented batches drawn with class-rebalanced
    sampling; keep the epoch with the best validation balanced accuracy + macro AUC.

    With `cfg.ema` (a decay such as 0.99) an exponential moving average of the weights is
    what gets scored and kept: it smooths the last steps' noise at no training cost.
    `soft`: a teacher's probabilities for each training photo, or `teacher`: one that labels each
    training view (see `train_step`).
    After every epoch the whole state (weights, optimiser, schedule, random generators,
    best epoch so far, and `provenance`: the warm start, a teacher and its soft labels) goes
    to `checkpoint_to`;
    `resume` is such a state, and the run continues from it exactly as if it had never stopped.
    With `cfg.cached_views` the steps draw a photo and one of its cached views (`cache_prefix`);
    with `cfg.progressive` the input size follows `input_size_at`."""
    if cfg.cached_views and cfg.freeze_blocks < 1:
        raise ValueError("a cached prefix needs frozen blocks to cache: give --freeze-blocks 1 or more")
    if cfg.cached_views and teacher is not None:
        raise ValueError("a teacher that labels each view needs the photos, not a cached prefix: drop --cached-views")
    if cfg.cached_views and cfg.progressive:
        raise ValueError("a cached prefix holds views of one size: it cannot be combined with --progressive")
    if not 0.0 <= cfg.progressive <= 1.0 or not 0.0 < cfg.progressive_scale <= 1.0:
        raise ValueError("--progressive is a share of the run (0 to 1) and --progressive-scale a scale in (0, 1]")
    frozen, opt = new_optimizer(model, cfg)
    counts = np.bincount(labels, minlength=len(CLASSES)).astype(np.float64)
    weights = torch.as_tensor(counts[labels] ** (cfg.sampling_power - 1.0), device=device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    y_all = torch.tensor(labels, device=device)
    soft_all = soft.to(device) if soft is not None else None
    # The cache is built before the schedule starts its clock: the budget is for training steps.
    prefix_blocks, cache_start = (cfg.freeze_blocks if cfg.cached_views else 0), time.time()
    bank = (cache_prefix(model, photos, prefix_blocks, cfg.cached_views, cfg.seed, device) if prefix_blocks
            else photos.to(device))
    cache_seconds = round(time.time() - cache_start, 1)
    steps_per_epoch = max(1, len(labels) // cfg.batch_size)
    schedule = Schedule(cfg.lr, cfg.epochs * steps_per_epoch, cfg.time_budget_min)
    # The batches draw class c with frequency counts[c] ** sampling_power (normalised).
    loss_fn = LogitAdjustedLoss(counts ** cfg.sampling_power, cfg.logit_adjust, cfg.label_smoothing).to(device)
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
            if prefix_blocks:
                batch = bank[torch.randint(0, len(bank), (len(idx),), generator=gen, device=device).cpu(), idx.cpu()]
            else:
                batch = bank[idx]
            total += train_step(model, opt, loss_fn, batch, y_all[idx], cfg, gen, device,
                                soft=soft_all[idx] if soft_all is not None else None, prefix_blocks=prefix_blocks,
                                size=input_size_at(cfg, schedule.progress), teacher=teacher)
            if ema is not None:
                ema.update_parameters(model)
            seen += len(idx)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{total / (step + 1):.3f}")
            if schedule.step(opt):
                break
        logits = photo_logits_of(scored, features_of(scored, val_photos, device), device)
        probs = torch.as_tensor(logits).softmax(1).numpy()
        rep = classification_report(probs, val_labels)
        rep["malignant_auc"] = malignant_auc(probs, val_labels)
        score = selection_score(cfg.select, rep)
        history.append({"epoch": epoch + 1, "steps": schedule.steps, "loss": total / max(1, step + 1),
                        "val_balanced_accuracy": rep["balanced_accuracy"], "val_accuracy": rep["accuracy"],
                        "val_macro_auc": rep["macro_auc"], "val_malignant_auc": rep["malignant_auc"],
                        "seconds": round(time.time() - start, 1)})
        tqdm.write(f"epoch {epoch + 1}: loss {total / max(1, step + 1):.4f} val bal-acc "
                   f"{rep['balanced_accuracy']:.4f} acc {rep['accuracy']:.4f} auc {rep['macro_auc']:.4f} "
                   f"malignant auc {rep['malignant_auc']:.4f} ({time.time() - start:.0f} s)")
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
            "photos_per_second": round(seen / max(elapsed, 1e-9), 1), "cache_seconds": cache_seconds}


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
