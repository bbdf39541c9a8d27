"""Train the model on HAM10000 in two stages.

1. Fine-tune the ImageNet encoder and the per-photo head on single photos
   (class-rebalanced sampling, dermoscopy augmentations, mixed precision on CUDA).
2. With the encoder frozen, train the patient-context head and the LSTM on
   sequences drawn from each lesion's photos (augmented views, random order,
   length 1 to 8), then fit calibration on validation and evaluate on test.
"""

from __future__ import annotations

import copy
import platform
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from torchvision.transforms import v2
from tqdm import tqdm

from . import checkpoint, trust
from .constants import CLASSES, IMAGE_SIZE, MAX_SEQUENCE
from .data import Ham10000, load_ham10000, split_lesions, table_metadata
from .devices import describe, select_device
from .evaluate import evaluate_heatmaps, evaluate_ood, evaluate_split, lesion_groups
from .metrics import classification_report
from .model import SkinLesionNet
from .predict import Predictor
from .presets import eval_transform, train_transform


@dataclass
class TrainConfig:
    data: str | None = None
    out: str = "weights"
    epochs: int = 8
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    freeze_blocks: int = 5
    label_smoothing: float = 0.1
    sampling_power: float = 0.5
    views: int = 4
    sequence_steps: int = 2000
    seed: int = 0
    workers: int = 2
    limit: int | None = None
    device: str | None = None
    time_budget_min: float | None = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class PhotoSet(Dataset):
    """Preloaded uint8 photos with a transform; returns (tensor, label)."""

    def __init__(self, photos: list[torch.Tensor], labels: np.ndarray, transform: v2.Compose) -> None:
        self.photos, self.labels, self.transform = photos, labels, transform

    def __len__(self) -> int:
        return len(self.photos)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.photos[i]), int(self.labels[i])


def preload(paths: list[str], max_side: int = int(IMAGE_SIZE * 2.5)) -> list[torch.Tensor]:
    """Decode every photo once into memory (the official 600x450 ones shrunk first)."""
    out = []
    for p in tqdm(paths, desc="decode", leave=False):
        with Image.open(p) as img:
            img = img.convert("RGB")
            img.thumbnail((max_side, max_side))
            out.append(v2.functional.pil_to_tensor(img))
    return out


def _tensor_eval_transform() -> v2.Compose:
    pil = eval_transform()
    return v2.Compose([t for t in pil.transforms if not isinstance(t, v2.PILToTensor)])


def _freeze_early(model: SkinLesionNet, n_blocks: int) -> list[nn.Module]:
    enc = model.encoder
    frozen = [enc._conv_stem, enc._bn0, *enc._blocks[:n_blocks]]
    for module in frozen:
        module.requires_grad_(False)
    return frozen


@torch.no_grad()
def _features(model: SkinLesionNet, photos: list[torch.Tensor], transform: v2.Compose, device: torch.device,
              batch_size: int, workers: int) -> np.ndarray:
    model.eval()
    loader = DataLoader(PhotoSet(photos, np.zeros(len(photos)), transform), batch_size=batch_size * 2,
                        num_workers=workers)
    out = []
    for x, _ in loader:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out.append(model.features(x.to(device)).float().cpu())
    return torch.cat(out).numpy()


class Schedule:
    """Warm-up then cosine decay over steps, or over wall-clock time when a budget is set
    (CPU training: the run ends on time, with a fully decayed learning rate)."""

    def __init__(self, lr: float, total_steps: int, budget_min: float | None, warmup: float = 0.05) -> None:
        self.lr, self.total, self.warmup = lr, max(1, total_steps), warmup
        self.budget = budget_min * 60 if budget_min else None
        self.start, self.steps, self.done = time.time(), 0, False

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
        factor = p / self.warmup if p < self.warmup else 0.5 * (1 + np.cos(np.pi * (p - self.warmup) / (1 - self.warmup)))
        for group in opt.param_groups:
            group["lr"] = self.lr * max(factor, 0.01)
        self.done = p >= 1.0
        return self.done


def train_encoder(model: SkinLesionNet, cfg: TrainConfig, photos: list[torch.Tensor], labels: np.ndarray,
                  val_photos: list[torch.Tensor], val_labels: np.ndarray, device: torch.device) -> dict[str, Any]:
    """Stage 1: fine-tune encoder + photo head; keep the epoch with the best validation balanced accuracy."""
    frozen = _freeze_early(model, cfg.freeze_blocks)
    counts = np.bincount(labels, minlength=len(CLASSES)).astype(np.float64)
    weights = counts[labels] ** (cfg.sampling_power - 1.0)
    sampler = WeightedRandomSampler(torch.as_tensor(weights), num_samples=len(labels), replacement=True,
                                    generator=torch.Generator().manual_seed(cfg.seed))
    loader = DataLoader(PhotoSet(photos, labels, train_transform()), batch_size=cfg.batch_size, sampler=sampler,
                        num_workers=cfg.workers, drop_last=len(labels) > cfg.batch_size,
                        persistent_workers=cfg.workers > 0)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr * 0.01, weight_decay=cfg.weight_decay)
    schedule = Schedule(cfg.lr, cfg.epochs * len(loader), cfg.time_budget_min)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    best: dict[str, Any] = {"balanced_accuracy": -1.0}
    history = []
    for epoch in range(cfg.epochs):
        model.train()
        for module in frozen:
            module.eval()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}")
        total = 0.0
        for step, (x, y) in enumerate(bar, 1):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = loss_fn(model.photo_logits(model.features(x)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
            bar.set_postfix(loss=f"{total / step:.3f}")
            if schedule.step(opt):
                break
        feats = _features(model, val_photos, _tensor_eval_transform(), device, cfg.batch_size, cfg.workers)
        with torch.no_grad():
            logits = model.photo_logits(torch.as_tensor(feats, device=device)).float().cpu()
        rep = classification_report(logits.softmax(1).numpy(), val_labels)
        history.append({"epoch": epoch + 1, "steps": schedule.steps, "loss": total / max(1, len(loader)),
                        "val_balanced_accuracy": rep["balanced_accuracy"], "val_accuracy": rep["accuracy"]})
        tqdm.write(f"epoch {epoch + 1}: loss {total / max(1, len(loader)):.4f} val bal-acc "
                   f"{rep['balanced_accuracy']:.4f} acc {rep['accuracy']:.4f}")
        if rep["balanced_accuracy"] > best["balanced_accuracy"]:
            best = {"balanced_accuracy": rep["balanced_accuracy"], "epoch": epoch + 1,
                    "state": copy.deepcopy(model.state_dict())}
        if schedule.done:
            break
    model.load_state_dict(best.pop("state"))
    model.requires_grad_(True)
    return {"history": history, "best_epoch": best["epoch"]}


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


def run(cfg: TrainConfig) -> dict[str, Any]:
    """The whole recipe; writes weights and model card to `cfg.out` and returns the card."""
    start = time.time()
    seed_everything(cfg.seed)
    device = select_device(cfg.device)
    tqdm.write(f"training on {describe(device)}")
    ham = load_ham10000(cfg.data)
    table = ham.table.assign(split=split_lesions(ham.table, cfg.seed))
    if cfg.limit:
        table = table.sample(frac=1.0, random_state=cfg.seed).groupby("split").head(cfg.limit)
    train_t = table[table.split == "train"].reset_index(drop=True)
    val_t = table[table.split == "val"].reset_index(drop=True)
    labels, val_labels = train_t.label.to_numpy(), val_t.label.to_numpy()
    photos, val_photos = preload(list(train_t.path)), preload(list(val_t.path))

    model = SkinLesionNet(pretrained=True).to(device)
    stage1 = train_encoder(model, cfg, photos, labels, val_photos, val_labels, device)
    t1 = time.time() - start

    views = [_features(model, photos, _tensor_eval_transform(), device, cfg.batch_size, cfg.workers)]
    for _ in range(cfg.views):
        views.append(_features(model, photos, train_transform(), device, cfg.batch_size, cfg.workers))
    stage2 = train_sequence(model, cfg, np.stack(views), labels, table_metadata(train_t),
                            lesion_groups(train_t), device)
    training = {"config": asdict(cfg), "stage1": stage1, "stage2": stage2, "hardware": hardware(),
                "device": describe(device), "torch": torch.__version__, "stage1_seconds": round(t1, 1),
                "seconds": round(time.time() - start, 1)}
    return finish(model, ham, training, Path(cfg.out), device, seed=cfg.seed, limit=cfg.limit)


def finish(model: SkinLesionNet, ham: Ham10000, training: dict[str, Any], out: Path, device: torch.device,
           seed: int = 0, limit: int | None = None, heatmap_photos: int = 200) -> dict[str, Any]:
    """Fit the trust layer on validation, evaluate on test, write weights and card."""
    start = time.time()
    trust_card = trust.fit(model, ham, device, seed=seed, limit=limit)
    training = {**training, "trust_seconds": round(time.time() - start, 1),
                "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    card = {"inconclusive_below": trust_card["inconclusive_below"], "ood": trust_card["ood"]}
    metrics = evaluate_split(model, ham, "test", device, seed=seed, limit=limit, card=card)
    metrics["ood"] = evaluate_ood(model, card, ham, "test", device, seed=seed, limit=limit)
    metrics["heatmaps"] = evaluate_heatmaps(Predictor(model, card, device), ham, "test", seed=seed,
                                            limit=min(heatmap_photos, limit or heatmap_photos))
    train_t = ham.table.assign(split=split_lesions(ham.table, seed))
    counts = train_t.split.value_counts().to_dict()
    card = {
        "name": "skin-model CNN-LSTM",
        "architecture": "EfficientNet-Lite0 (ImageNet) encoder -> per-photo head; LSTM(256) over the "
                        "time-ordered photos of one lesion -> sequence head (mean of photo logits + LSTM "
                        "correction); optional patient context (age, sex, site) as an additive head",
        "training": {**training, "calibration": trust_card["calibration"]},
        **card,
        "abstention": trust_card["abstention"],
        "data": {"dataset": "HAM10000", "metadata_md5": ham.fingerprint, "split": "lesion-grouped, stratified by dx, "
                 f"70/15/15, seed {seed}", "train_photos": counts.get("train", 0), "val_photos": counts.get("val", 0),
                 "test_photos": metrics["n_photos"],
                 "citation": "Tschandl P., Rosendahl C., Kittler H. The HAM10000 dataset, a large collection of "
                             "multi-source dermatoscopic images of common pigmented skin lesions. Sci. Data 5, "
                             "180161 (2018). doi:10.7910/DVN/DBW86T",
                 "licence": "CC BY-NC 4.0 (academic, non-commercial use, with attribution)"},
        "metrics": metrics,
    }
    checkpoint.save(model.cpu(), out, card)
    return checkpoint.read_card(out)
