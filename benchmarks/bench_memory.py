"""Resident memory of the app after 20 analyses (photo + Grad-CAM each), driven
in-process with Streamlit's AppTest and the shipped weights; Streamlit Community
Cloud gives an app about 1 GB.

Writes benchmarks/results/memory.json and memory.md. Run:
    python benchmarks/bench_memory.py [--analyses 20]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path

from PIL import Image, ImageDraw
from streamlit.testing.v1 import AppTest

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--analyses", type=int, default=20)
    args = parser.parse_args()
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=300)
    at.run()
    start = rss_mb()
    t = time.perf_counter()
    for name, data in photos(args.analyses):
        at.file_uploader[0].set_value((name, data, "image/jpeg"))
        at.run()
        assert not at.exception, at.exception
    results = {"analyses": args.analyses, "rss_after_start_mb": round(start, 1), "rss_after_mb": round(rss_mb(), 1),
               "peak_rss_mb": round(peak_mb(), 1), "seconds": round(time.perf_counter() - t, 1),
               "date": time.strftime("%Y-%m-%d")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "memory.json").write_text(json.dumps(results, indent=2) + "\n")
    md = (f"| app resident memory after {args.analyses} analyses | {results['rss_after_mb']:.0f} MB "
          f"(peak {results['peak_rss_mb']:.0f} MB; {results['rss_after_start_mb']:.0f} MB after start) |\n")
    (RESULTS / "memory.md").write_text(md)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
