"""GPU figures: prediction throughput (photos per second, preprocessing included) and
the training time of the weights, read from their model card.

    python benchmarks/bench_gpu.py [--weights DIR] [--out DIR]

Needs only the skin_model package and a CUDA device (no Streamlit, no Grad-CAM), so
it runs on a bare training machine right after `skin-model train`. Writes gpu.json
and gpu.md to --out (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from skin_model.predict import load_predictor

RESULTS = Path(__file__).resolve().parent / "results"


def sample_photo(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (150, 200, 3), dtype=np.uint8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights", help="weights folder (default: shipped)")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--photos", type=int, default=2048)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: nothing to measure")
    predictor = load_predictor(args.weights, device="cuda")
    photos = [sample_photo(i % 64) for i in range(args.photos)]
    predictor.predict_each(photos[:256], batch_size=256)
    rates = {}
    for batch in (32, 256):
        torch.cuda.synchronize()
        start = time.perf_counter()
        predictor.predict_each(photos, batch_size=batch)
        torch.cuda.synchronize()
        rates[batch] = args.photos / (time.perf_counter() - start)
    training = predictor.card.training
    results = {
        "device": torch.cuda.get_device_name(0), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
        "photos_per_second": {str(k): round(v, 1) for k, v in rates.items()},
        "training": {"hardware": training.get("hardware"), "seconds": training.get("seconds"),
                     "stage1_photos_per_second": training.get("stage1", {}).get("photos_per_second")},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"GPU: {results['device']}, torch {results['torch']} ({results['date']})", "", "| measure | value |",
             "|---|---|"]
    for batch, rate in rates.items():
        lines.append(f"| prediction throughput, batch {batch} (decode + preprocessing included) | {rate:.0f} photos/s |")
    t = results["training"]
    if t["seconds"]:
        lines.append(f"| training of these weights ({t['hardware']}) | {t['seconds'] / 60:.1f} min |")
    if t["stage1_photos_per_second"]:
        lines.append(f"| training throughput, stage 1 | {t['stage1_photos_per_second']:.0f} photos/s |")
    (out / "gpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
