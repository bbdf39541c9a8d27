"""CPU latency of the shipped model on both engines (torch, "before"; ONNX Runtime, "after"), against
a ResNet-50 forward measured in the same run: one photo end to end (JPEG bytes in, decision out), the
same with its Grad-CAM, a profile of where one photo's time goes, batch scoring of a folder with
`skin-model predict FOLDER --csv` (a fresh process, start-up included), and the app's start.

Writes benchmarks/results/latency.json and latency.md. Run:
    python benchmarks/bench_latency.py [--weights DIR] [--repeats 30] [--folder-photos 1000] [--no-app]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
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


def jpeg_bytes(photo: Image.Image) -> bytes:
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def resnet50_forward(repeats: int) -> dict[str, float]:
    """The yardstick: torchvision's ResNet-50 (random weights: the time is the same) on one 224 px
    photo, torch eager, no gradients, the threads everything else here uses."""
    from torchvision.models import resnet50

    net = resnet50(weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        return timed(lambda: net(x), repeats)


def profile(predictor, data: bytes, repeats: int) -> dict[str, float]:
    """Median milliseconds of each step of one photo, called one by one as the predictor calls them. The
    heatmap on torch is pytorch-grad-cam's forward and backward (how the app drew it before the heatmap
    graph); on ONNX Runtime, the heatmap graph's forward and pytorch-grad-cam's formulas on its arrays."""
    from skin_model.data.preprocess import encode_metadata, pixels
    from skin_model.explain.methods import heatmap
    from skin_model.io.images import load_image
    from skin_model.trust import ood

    photo = load_image(data)
    x, meta = pixels([photo], predictor.card.data_config), encode_metadata()[None]
    scores = predictor.engine.score(x, meta)
    steps = {
        "decode": lambda: load_image(data),
        "preprocess": lambda: pixels([photo], predictor.card.data_config),
        "network, calibration and OOD distances": lambda: predictor.engine.score(x, meta),
        "quality checks": lambda: ood.quality(photo),
        "decision": lambda: predictor._prediction(scores, [ood.quality(photo)], None).decision(0),
    }
    if predictor.engine.name == "ONNX Runtime":
        cam = predictor.engine.score(x, meta, heatmaps=True)
        height, width = predictor.card.data_config.input_size
        steps["heatmap: network with Grad-CAM's activations and gradients"] = lambda: predictor.engine.score(
            x, meta, heatmaps=True)
        steps["heatmap: the map from them"] = lambda: heatmap("Grad-CAM", cam.cam_activations[0],
                                                              cam.cam_gradients[0, 4], (width, height))
    else:
        steps["heatmap: pytorch-grad-cam forward and backward"] = lambda: predictor.explainer.explain(
            [photo], meta, ["mel"], "Grad-CAM")
    return {name: timed(fn, repeats)["median_ms"] for name, fn in steps.items()}


def folder_throughput(weights: str | None, engine: str, n: int) -> dict[str, float]:
    """`skin-model predict FOLDER --csv` over n HAM10000 JPEGs (200x150), timed from the command's
    start to its exit: photos per second end to end."""
    shared = Path(os.environ.get("HAM10000_DIR", ROOT.parent / "shared" / "ham10000")) / "images"
    files = sorted(shared.glob("*.jpg"))[:n] if shared.is_dir() else []
    if not files:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for f in files:
            (folder / f.name).symlink_to(f)
        command = [sys.executable, "-m", "skin_model", "predict", str(folder), "--csv", str(Path(tmp) / "out.csv"),
                   "--engine", engine, *(["--weights", weights] if weights else [])]
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
        seconds = time.perf_counter() - start
    return {"photos": len(files), "seconds": seconds, "photos_per_second": len(files) / seconds}


def before(predictor, data: bytes) -> None:
    """How the app analysed a photo before the heatmap graph: decode, then pytorch-grad-cam's forward and
    backward on the torch network, whose forward also gave the prediction."""
    from skin_model.io.images import load_image

    predictor.explainer.explain([load_image(data)])


def measure(predictor, data: bytes, args: argparse.Namespace) -> dict:
    """One engine's figures: one photo, one photo with Grad-CAM, the profile, a folder."""
    onnx = predictor.engine.name == "ONNX Runtime"
    with_cam = (lambda: predictor.analyse([data]).prediction.decision(0)) if onnx else (lambda: before(predictor, data))
    with_cam()  # loads what the heatmaps need
    return {"engine": predictor.device_name,
            "one_photo": timed(lambda: predictor.predict([data]).decision(0), args.repeats),
            "one_photo_plus_gradcam": timed(with_cam, args.repeats),
            "profile_ms": profile(predictor, data, args.repeats),
            "folder": folder_throughput(args.weights, "onnx" if onnx else "torch", args.folder_photos)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--folder-photos", type=int, default=1000)
    parser.add_argument("--no-app", action="store_true")
    args = parser.parse_args()

    data = jpeg_bytes(sample_photo())
    results: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
                   f"{torch.__version__}, {torch.get_num_threads()} threads",
        "date": time.strftime("%Y-%m-%d"),
        "resnet50_forward": resnet50_forward(args.repeats),
    }
    for engine in ("torch", "onnx"):
        results[engine] = measure(load_predictor(args.weights, device="cpu", engine=engine), data, args)
    resnet = results["resnet50_forward"]["median_ms"]
    for engine in ("torch", "onnx"):
        r = results[engine]
        r["one_photo_vs_resnet50"] = r["one_photo"]["median_ms"] / resnet
        r["gradcam_vs_resnet50"] = r["one_photo_plus_gradcam"]["median_ms"] / resnet
    card = load_predictor(args.weights).card
    results["shipped_training"] = {k: card.training.get(k) for k in ("hardware", "seconds")}
    if not args.no_app:
        results["app_start_to_healthy_s"] = app_start_seconds()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latency.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"Machine: {results['machine']} ({results['date']}); medians of {args.repeats} runs", "",
             f"ResNet-50 forward (torch eager, 224 px, one photo): {resnet:.1f} ms", "",
             "| measure | torch (before) | ONNX Runtime (after) |", "|---|---|---|"]
    t, o = results["torch"], results["onnx"]
    lines.append(f"| one photo end to end (JPEG in, decision out) | {t['one_photo']['median_ms']:.1f} ms "
                 f"({t['one_photo_vs_resnet50']:.2f}x ResNet-50) | {o['one_photo']['median_ms']:.1f} ms "
                 f"({o['one_photo_vs_resnet50']:.2f}x) |")
    lines.append(f"| one photo with its Grad-CAM (torch: pytorch-grad-cam, as before) | "
                 f"{t['one_photo_plus_gradcam']['median_ms']:.1f} ms "
                 f"({t['gradcam_vs_resnet50']:.2f}x) | {o['one_photo_plus_gradcam']['median_ms']:.1f} ms "
                 f"({o['gradcam_vs_resnet50']:.2f}x) |")
    if t["folder"] and o["folder"]:
        lines.append(f"| `skin-model predict FOLDER --csv`, {o['folder']['photos']} JPEGs, start-up included | "
                     f"{t['folder']['photos_per_second']:.0f} photos/s | {o['folder']['photos_per_second']:.0f} "
                     "photos/s |")
    for step in {**t["profile_ms"], **o["profile_ms"]}:
        cells = [f"{r['profile_ms'][step]:.2f} ms" if step in r["profile_ms"] else "" for r in (t, o)]
        lines.append(f"| profile: {step} | {cells[0]} | {cells[1]} |")
    if "app_start_to_healthy_s" in results:
        lines.append(f"| app start to healthy | | {results['app_start_to_healthy_s']:.1f} s |")
    train = results["shipped_training"]
    if train.get("seconds"):
        lines.append(f"| training of the shipped weights ({train['hardware']}) | {train['seconds'] / 60:.0f} min | |")
    (RESULTS / "latency.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
