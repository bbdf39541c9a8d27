"""CPU latency of the shipped model: one photo, a batch of 32, one photo plus its
Grad-CAM, and the app's time from start to a healthy server.

Writes benchmarks/results/latency.json and latency.md. Run:
    python benchmarks/bench_latency.py [--weights DIR] [--repeats 30] [--no-app]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from skin_model import load_predictor

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def sample_photo(seed: int = 0) -> Image.Image:
    """A HAM10000 photo when the data is present, else a synthetic lesion."""
    shared = Path(os.environ.get("HAM10000_DIR", ROOT.parent / "shared" / "ham10000")) / "images"
    files = sorted(shared.glob("*.jpg"))[: 64] if shared.is_dir() else []
    if files:
        return Image.open(files[seed % len(files)]).convert("RGB")
    img = Image.new("RGB", (200, 150), (205, 160, 140))
    ImageDraw.Draw(img).ellipse((60 + seed % 20, 40, 140, 110), fill=(90, 55, 40))
    return img


def timed(fn, repeats: int, warmup: int = 3) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return {"median_ms": statistics.median(times), "p90_ms": sorted(times)[int(0.9 * (len(times) - 1))],
            "min_ms": min(times), "repeats": repeats}


def app_start_seconds(timeout: float = 60.0) -> float:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "streamlit_app.py"),
                             "--server.port", str(port), "--server.address", "127.0.0.1",
                             "--server.headless", "true"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - start < timeout:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1) as r:
                    if r.read().strip() == b"ok":
                        return time.perf_counter() - start
            except OSError:
                time.sleep(0.1)
        return float("nan")
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--no-app", action="store_true")
    args = parser.parse_args()

    predictor = load_predictor(args.weights, device="cpu")
    photo = sample_photo()
    batch = [sample_photo(i) for i in range(32)]
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
                   f"{torch.__version__}, {torch.get_num_threads()} threads",
        "date": time.strftime("%Y-%m-%d"),
        "one_photo": timed(lambda: predictor.predict([photo]), args.repeats),
        "batch_32_photos": timed(lambda: predictor.predict_each(batch), max(3, args.repeats // 10)),
        "one_photo_plus_gradcam": timed(lambda: predictor.analyse([photo]), args.repeats),  # one forward
    }
    if torch.cuda.is_available():
        gpu = load_predictor(args.weights, device="cuda")
        big = batch * 8
        gpu.predict_each(big, batch_size=256)
        torch.cuda.synchronize()
        start = time.perf_counter()
        gpu.predict_each(big, batch_size=256)
        torch.cuda.synchronize()
        results["gpu"] = {"device": torch.cuda.get_device_name(0),
                          "photos_per_second": len(big) / (time.perf_counter() - start)}
    results["shipped_training"] = {k: predictor.card.training.get(k) for k in ("hardware", "seconds")}
    if not args.no_app:
        results["app_start_to_healthy_s"] = app_start_seconds()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latency.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"Machine: {results['machine']} ({results['date']})", "", "| measure | median | p90 |", "|---|---|---|"]
    for key in ("one_photo", "batch_32_photos", "one_photo_plus_gradcam"):
        r = results[key]
        lines.append(f"| {key.replace('_', ' ')} (CPU) | {r['median_ms']:.0f} ms | {r['p90_ms']:.0f} ms |")
    if "app_start_to_healthy_s" in results:
        lines.append(f"| app start to healthy | {results['app_start_to_healthy_s']:.1f} s | |")
    if "gpu" in results:
        lines.append(f"| GPU throughput ({results['gpu']['device']}) | {results['gpu']['photos_per_second']:.0f} photos/s | |")
    train = results["shipped_training"]
    if train.get("seconds"):
        lines.append(f"| training of the shipped weights ({train['hardware']}) | {train['seconds'] / 60:.0f} min | |")
    (RESULTS / "latency.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
