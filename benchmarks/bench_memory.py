"""Resident memory of the app after 20 analyses (photo + Grad-CAM each), driven in-process with
Streamlit's AppTest and the shipped weights, and of the serving engine alone (ONNX Runtime, the
CLI's path: 20 predictions without heatmaps, in a fresh process that never imports torch).
Streamlit Community Cloud's smallest tier gives an app about 690 MB.

The torch build matters: the default Linux wheel's import alone is about 450 MB of resident memory
(its CUDA libraries load with it), the CPU build's (Streamlit Cloud's) about 225 MB. Run it in each.

Writes benchmarks/results/memory[-SUFFIX].json and .md. Run:
    python benchmarks/bench_memory.py [--analyses 20] [--suffix cpu-build]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def photos(n: int) -> list[tuple[str, bytes]]:
    shared = Path(os.environ.get("HAM10000_DIR", ROOT.parent / "shared" / "ham10000")) / "images"
    files = sorted(shared.glob("*.jpg"))[:n] if shared.is_dir() else []
    if files:
        return [(f.name, f.read_bytes()) for f in files]
    out = []
    for i in range(n):
        img = Image.new("RGB", (200, 150), (205, 160, 140))
        ImageDraw.Draw(img).ellipse((50 + i, 40, 140, 110), fill=(90, 55, 40))
        buf = io.BytesIO()
        img.save(buf, "JPEG")
        out.append((f"synthetic_{i}.jpg", buf.getvalue()))
    return out


SERVING_ONLY = """
import json, sys
from pathlib import Path
sys.path.insert(0, {root!r})
sys.path.insert(0, {bench!r})
from bench_memory import photos, rss_mb, peak_mb
from skin_model.predict import load_predictor
predictor = load_predictor(engine="onnx")
for name, data in photos({n}):
    predictor.predict([data]).decision(0)
print(json.dumps({{"rss_mb": rss_mb(), "peak_mb": peak_mb(), "torch": "torch" in sys.modules}}))
"""


def serving_only(n: int) -> dict:
    """The ONNX Runtime predictor alone after n predictions, in a fresh process."""
    code = SERVING_ONLY.format(root=str(ROOT), bench=str(ROOT / "benchmarks"), n=n)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def torch_build() -> str:
    """The installed torch's version with its build tag (+cu130, +cpu), read from its version file: importing
    torch here would add its memory to the figure being measured."""
    import importlib.util
    import re

    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return "not installed"
    found = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", (Path(spec.origin).parent / "version.py").read_text())
    return found.group(1) if found else "unknown"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--analyses", type=int, default=20)
    parser.add_argument("--suffix", default="", help="results file suffix, e.g. cpu-build")
    args = parser.parse_args()
    serving = serving_only(args.analyses)
    from streamlit.testing.v1 import AppTest  # here: the serving-only process imports this module too

    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=300)
    at.run()
    start = rss_mb()
    t = time.perf_counter()
    for name, data in photos(args.analyses):
        at.file_uploader[0].set_value((name, data, "image/jpeg"))
        at.run()
        assert not at.exception, at.exception
    after, peak = rss_mb(), peak_mb()
    results = {"analyses": args.analyses, "torch": torch_build(), "torch_loaded": "torch" in sys.modules,
               "rss_after_start_mb": round(start, 1), "rss_after_mb": round(after, 1), "peak_rss_mb": round(peak, 1),
               "seconds": round(time.perf_counter() - t, 1), "serving_only": serving,
               "date": time.strftime("%Y-%m-%d")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"memory-{args.suffix}" if args.suffix else "memory"
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    md = (f"| app resident memory after {args.analyses} analyses with Grad-CAM (torch {results['torch']}) | "
          f"{results['rss_after_mb']:.0f} MB (peak {results['peak_rss_mb']:.0f} MB; "
          f"{results['rss_after_start_mb']:.0f} MB after start) |\n"
          f"| serving engine alone (ONNX Runtime, no torch) after {args.analyses} predictions | "
          f"{serving['rss_mb']:.0f} MB (peak {serving['peak_mb']:.0f} MB) |\n")
    (RESULTS / f"{name}.md").write_text(md)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
