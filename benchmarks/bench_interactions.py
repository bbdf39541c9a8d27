"""Server time of every interaction a visitor makes, driven in-process with Streamlit's AppTest and the
shipped weights: the first page load (the model loaded), a new photo with its heatmap, the heatmap's
opacity, method and explained class on a photo already analysed, a three-photo sequence, and the
explorer's first load and a filter. Each figure is one rerun of the app script, from the widget's new
value to the page's last element (the browser's drawing is not included). Headless Chromium sessions
(bench_load.py's harness, each on a newly started server) add the browser's view: the first page, and
three photos from upload to the last chart drawn.

Issue #16's targets: interactions on an analysed photo <= 0.3 s, a new photo with its heatmap <= 0.5 s, a
three-photo sequence <= 1.2 s, explorer filters <= 0.5 s, first page load <= 3 s.

Writes benchmarks/results/interactions.json and interactions.md. Run:
    python benchmarks/bench_interactions.py [--repeats 5] [--browser-repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
TARGETS_S = {"first page load (model loaded)": 3.0, "new photo with its heatmap": 0.5,
             "heatmap opacity": 0.3, "heatmap method": 0.3, "explained class": 0.3,
             "three-photo sequence": 1.2, "explorer first load": None, "explorer filter": 0.5}


def ham_dir() -> Path:
    return Path(os.environ.get("HAM10000_DIR", ROOT.parent / "shared" / "ham10000"))


def photos(n: int, offset: int) -> list[tuple[str, bytes]]:
    files = sorted((ham_dir() / "images").glob("*.jpg"))[offset:offset + n]
    if len(files) < n:
        raise SystemExit(f"needs HAM10000 photos in {ham_dir() / 'images'}")
    return [(f.name, f.read_bytes()) for f in files]


def timed_run(at, change: Callable[[], object]) -> float:
    """Seconds of the rerun that follows `change` (a widget's new value)."""
    change()
    start = time.perf_counter()
    at.run()
    seconds = time.perf_counter() - start
    if at.exception:
        raise RuntimeError([e.value for e in at.exception])
    return seconds


def one_round(r: int) -> dict[str, float]:
    """Every interaction once, on photos of its own (the app caches analyses by content), from cold caches."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    st.cache_resource.clear()
    st.cache_data.clear()
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=300)
    (name, data), three = photos(1, 10 * r)[0], photos(3, 10 * r + 1)
    out = {"first page load (model loaded)": timed_run(at, lambda: None),
           "new photo with its heatmap": timed_run(at, lambda: at.file_uploader[0].set_value(
               [(name, data, "image/jpeg")])),
           "heatmap opacity": timed_run(at, lambda: at.slider(key="classify_opacity").set_value(0.7)),
           "heatmap method": timed_run(at, lambda: at.selectbox(key="classify_method").set_value("Grad-CAM++")),
           "explained class": timed_run(at, lambda: at.selectbox(key="classify_target").set_value("mel")),
           "three-photo sequence": timed_run(at, lambda: at.file_uploader[0].set_value(
               [(n, d, "image/jpeg") for n, d in three]))}
    explorer = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=300)
    explorer.run()
    explorer.switch_page("app_pages/explorer.py")
    out["explorer first load"] = timed_run(explorer, lambda: None)
    box = next(m for m in explorer.multiselect if m.label == "Diagnosis")
    out["explorer filter"] = timed_run(explorer, lambda: box.set_value(["mel"] if r % 2 == 0 else ["bcc"]))
    return out


def measure(repeats: int) -> dict[str, list[float]]:
    rounds = [one_round(r) for r in range(repeats)]
    return {name: [round_[name] for round_ in rounds] for name in TARGETS_S}


def browser_pass(repeats: int) -> dict[str, list[float]]:
    """Headless Chromium sessions, each against a freshly started `streamlit run` (bench_load.py's harness), so
    that every first page is the first after start: the page until it is ready for a photo (the model loaded),
    and three photos from upload to the last chart drawn, drawing included."""
    import sys
    import tempfile

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_load import run

    out: dict[str, list[float]] = {"first page ready": [], "three photos, upload to last chart drawn": []}
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="bench_interactions_") as work:
            session = run(1, 3, 600.0, Path(work))["per_session"][0]
        if not session["ok"]:
            raise RuntimeError(f"the browser pass failed: {session['reason']}")
        out["first page ready"].append(session["page_seconds"])
        out["three photos, upload to last chart drawn"].append(session["seconds"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--browser-repeats", type=int, default=3,
                        help="headless Chromium sessions, each on a new server (0: none)")
    args = parser.parse_args()
    os.environ.setdefault("HAM10000_DIR", str(ham_dir()))
    times = measure(args.repeats)
    browser = browser_pass(args.browser_repeats) if args.browser_repeats else {}
    import torch  # only now: the app itself never imports it, and the figures must not include it

    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"), "repeats": args.repeats,
        "seconds": {name: {"median": statistics.median(t), "max": max(t), "target": TARGETS_S[name]}
                    for name, t in times.items()},
        "browser_seconds": {name: {"median": statistics.median(t), "max": max(t), "runs": t}
                            for name, t in browser.items()},
        "browser_repeats": args.browser_repeats,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "interactions.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"Machine: {results['machine']} ({results['date']}); server time of one rerun (AppTest), shipped "
             f"weights, median and slowest of {args.repeats}", "", "| interaction | median | slowest | target |",
             "|---|---|---|---|"]
    for name, r in results["seconds"].items():
        target = f"<= {r['target']:g} s" if r["target"] else ""
        lines.append(f"| {name} | {r['median']:.2f} s | {r['max']:.2f} s | {target} |")
    if browser:
        lines += ["", f"In headless Chromium, {args.browser_repeats} sessions, each against a newly started `streamlit run` "
                  "(the browser's drawing included):", "", "| step | median | slowest | target |", "|---|---|---|---|"]
        lines += [f"| {name} | {statistics.median(t):.1f} s | {max(t):.1f} s | {'<= 3 s' if name == 'first page ready' else ''} |"
                  for name, t in browser.items()]
    (RESULTS / "interactions.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
