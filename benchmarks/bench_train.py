"""Training throughput on this machine: stage 1 (one optimiser step of the encoder, augmentation
included) for the shipped recipe and its variants, the feature pass that feeds stage 2, and
stage 2's sequence steps.

Each variant runs the same `train_step` that `skin-model train` runs, on HAM10000 photos when
the data is present (synthetic lesions otherwise), so the figures say how many epochs a CPU
budget buys. Writes benchmarks/results/train.json and train.md. Run:
    python benchmarks/bench_train.py [--steps 6] [--batch-size 32] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from skin_model.constants import CLASSES
from skin_model.model.network import SkinLesionNet
from skin_model.training.config import TrainConfig
from skin_model.training.stages import cache_prefix, features_of, new_optimizer, train_sequence, train_step

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
TRAIN_PHOTOS = 7020  # photos in the lesion-grouped training split (seed 0): one epoch

# The recipe of the shipped weights (the training defaults), then one change per row.
BASE = TrainConfig()
VARIANTS: list[tuple[str, dict]] = [
    ("shipped recipe: 160 px, stem + 5 blocks frozen, channels-last", {}),
    ("NCHW memory layout", {"channels_last": False}),
    ("all blocks trained", {"freeze_blocks": 0}),
    ("stem + 3 blocks frozen", {"freeze_blocks": 3}),
    ("stem + 8 blocks frozen", {"freeze_blocks": 8}),
    ("128 px", {"image_size": 128}),
    ("192 px", {"image_size": 192}),
    ("224 px", {"image_size": 224}),
    ("200x150, the photos' own size (no squashing)", {"image_size": 200, "input_height": 150}),
    ("200x150, stem + 8 blocks frozen", {"image_size": 200, "input_height": 150, "freeze_blocks": 8}),
    ("200x150, stem + 8 blocks frozen, trained on their cached output",
     {"image_size": 200, "input_height": 150, "freeze_blocks": 8, "cached_views": 1}),
    ("bfloat16 autocast on the CPU", {"cpu_bf16": True}),
]


def photo_bank(n: int, seed: int = 0) -> torch.Tensor:
    """uint8 (n, 3, 150, 200) photos: HAM10000's when present, else synthetic lesions."""
    shared = Path(os.environ.get("HAM10000_DIR", ROOT.parent / "shared" / "ham10000")) / "images"
    files = sorted(shared.glob("*.jpg"))[:n] if shared.is_dir() else []
    rng = np.random.default_rng(seed)
    arrays = []
    for i in range(n):
        if files:
            with Image.open(files[i % len(files)]) as img:
                photo = img.convert("RGB").resize((200, 150))
        else:
            photo = Image.new("RGB", (200, 150), (205, 160, 140))
            x, y = rng.integers(30, 110), rng.integers(20, 60)
            ImageDraw.Draw(photo).ellipse((x, y, x + 70, y + 60), fill=(90, 55, 40))
        arrays.append(np.asarray(photo))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def stage1_step(cfg: TrainConfig, bank: torch.Tensor, steps: int, warmup: int = 2) -> dict[str, float]:
    """Median time of `steps` training steps (after `warmup`), per photo. With `cached_views` the
    steps run on the cached output of the frozen prefix, and the time to cache one view is given too."""
    torch.manual_seed(0)
    device = torch.device("cpu")
    model = SkinLesionNet(cfg.backbone, cfg.image_size, pretrained=True, data_config=cfg.data_config)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    extra, prefix_blocks = {}, cfg.freeze_blocks if cfg.cached_views else 0
    if prefix_blocks:
        start = time.perf_counter()
        bank = cache_prefix(model, bank, prefix_blocks, 1, 0, device)[0]
        extra = {"cache_ms_per_view": round((time.perf_counter() - start) / len(bank) * 1000, 2)}
    frozen, opt = new_optimizer(model, cfg)
    model.train()
    for module in frozen:
        module.eval()
    gen = torch.Generator().manual_seed(0)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    times = []
    for i in range(warmup + steps):
        idx = torch.randint(0, len(bank), (cfg.batch_size,), generator=gen)
        y = torch.randint(0, len(CLASSES), (cfg.batch_size,), generator=gen)
        start = time.perf_counter()
        train_step(model, opt, loss_fn, bank[idx], y, cfg, gen, device, prefix_blocks=prefix_blocks)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    ms = statistics.median(times) / cfg.batch_size * 1000
    return {"ms_per_photo": round(ms, 2), "photos_per_second": round(1000 / ms, 1),
            "epoch_minutes": round(TRAIN_PHOTOS * ms / 60000, 2), **extra}


def feature_pass(cfg: TrainConfig, bank: torch.Tensor) -> dict[str, float]:
    """The inference-view feature pass (validation scoring each epoch, stage 2's views)."""
    model = SkinLesionNet(cfg.backbone, cfg.image_size, pretrained=True, data_config=cfg.data_config).to(memory_format=torch.channels_last)
    features_of(model, bank[:8], torch.device("cpu"))
    start = time.perf_counter()
    features_of(model, bank, torch.device("cpu"))
    ms = (time.perf_counter() - start) / len(bank) * 1000
    return {"ms_per_photo": round(ms, 2), "photos_per_second": round(1000 / ms, 1)}


def sequence_steps(cfg: TrainConfig, steps: int) -> dict[str, float]:
    """Stage 2 on random features: steps per second of the context head and LSTM."""
    rng = np.random.default_rng(0)
    n = 400
    feats = rng.standard_normal((2, n, 1280)).astype(np.float32)
    labels = np.arange(n) % len(CLASSES)
    groups = [np.arange(i, min(i + 2, n)) for i in range(0, n, 2)]
    model = SkinLesionNet(cfg.backbone, cfg.image_size, pretrained=False)
    meta = np.zeros((n, model.meta_head[0].in_features), dtype=np.float32)
    start = time.perf_counter()
    train_sequence(model, replace(cfg, sequence_steps=steps), feats, labels, meta, groups, torch.device("cpu"))
    return {"steps_per_second": round(steps / (time.perf_counter() - start), 1)}


def run(steps: int, batch_size: int, variants: list[tuple[str, dict]], bank_size: int = 96,
        sequence: int = 50) -> dict:
    base = replace(BASE, batch_size=batch_size)
    bank = photo_bank(bank_size)
    rows = []
    for name, changes in variants:
        row = {"variant": name, "changes": changes, **stage1_step(replace(base, **changes), bank, steps)}
        rows.append(row)
        print(f"{name}: {row['ms_per_photo']} ms a photo, {row['epoch_minutes']} min an epoch", flush=True)
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}",
        "date": time.strftime("%Y-%m-%d"), "batch_size": batch_size, "steps": steps,
        "stage1": rows, "features": feature_pass(base, bank), "stage2": sequence_steps(base, sequence),
    }


def to_markdown(result: dict) -> str:
    lines = [f"Machine: {result['machine']} ({result['date']}), batch {result['batch_size']}, "
             f"median of {result['steps']} steps", "",
             "| stage 1 variant | ms a photo per step | photos/s | minutes an epoch (7,020 photos) |",
             "|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['ms_per_photo']} | {r['photos_per_second']} | {r['epoch_minutes']} |"
              for r in result["stage1"]]
    f, s = result["features"], result["stage2"]
    lines += [f"\nCaching the frozen prefix ({r['variant']}): {r['cache_ms_per_view']} ms a photo per view, "
              f"{round(TRAIN_PHOTOS * r['cache_ms_per_view'] / 60000, 2)} minutes per view of every training photo."
              for r in result["stage1"] if "cache_ms_per_view" in r]
    lines += ["", f"Feature pass (inference view, shipped recipe): {f['ms_per_photo']} ms a photo "
              f"({f['photos_per_second']} photos/s). Stage 2 (context head + LSTM): {s['steps_per_second']} "
              "steps/s of 128 sequences."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="three variants, few steps (a smoke run)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    quick = [*VARIANTS[:2], *(v for v in VARIANTS if "cached_views" in v[1])]
    variants = quick if args.quick else VARIANTS
    steps, batch = (1, 4) if args.quick else (args.steps, args.batch_size)
    result = run(steps, batch, variants, bank_size=8 if args.quick else 96, sequence=3 if args.quick else 50)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "train.md").write_text(to_markdown(result))
    print(to_markdown(result))


if __name__ == "__main__":
    main()
