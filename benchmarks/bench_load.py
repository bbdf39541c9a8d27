"""Load on one app server: N headless Chromium sessions at once (default 10) against ONE
`streamlit run streamlit_app.py` (shipped weights, default environment), each opening the
Classify page, uploading its own photos at the same moment as the others, and waiting until
every photo's verdict is shown. It answers what one Streamlit Community Cloud process does when
several people use it together: how many get a result, how long they wait, how much memory
the server holds.

A session counts as a success when the page shows a subheader and at least one verdict per
uploaded photo, every chart drawn (no loading placeholder left) and the report section (the last
thing the page draws), with no run in progress and no Streamlit exception; its time is from the
upload to that moment (polled every 0.25 s, every 0.05 s for a single session; the browsers' own
drawing, on the same CPU, is included). Photos: HAM10000 (`$HAM10000_DIR` or ../shared/ham10000, images/*.jpg), different ones
per session so that the app's result cache never answers for another session; synthetic JPEGs
when the folder is absent. Exits with 1 when a session failed (the files are written all the same).

Writes benchmarks/results/load.json and load.md. Run:
    python benchmarks/bench_load.py [--sessions 10] [--photos 3] [--timeout 600] [--out DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw
from selenium import webdriver
from selenium.common.exceptions import TimeoutException as SeleniumTimeout
from selenium.webdriver.chrome.service import Service

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SERVER_STARTUP_TIMEOUT = 180.0  # importing torch on a busy CPU
POLL_SECONDS = 0.25  # ten browsers read that often leave the server its CPU
POLL_SECONDS_ALONE = 0.05  # one browser alone is read finely: a coarse poll adds up to its interval to each time
SCRIPT_TIMEOUT = 120  # seconds one read of the page may take in a browser starved of CPU

# What the page shows, read in one round trip per poll (each webdriver call costs CPU that the server
# under test shares on a small machine).
PAGE_STATE_JS = r"""
const main = document.querySelector('[data-testid="stMain"]');
if (!main) return null;
const exception = document.querySelector('[data-testid="stException"]');
const alerts = Array.from(main.querySelectorAll('[data-testid="stAlert"]')).map(a => a.innerText.trim());
const sidebar = document.querySelector('[data-testid="stSidebar"]');
return {
  exception: exception ? exception.innerText.slice(0, 500) : null,
  busy: document.querySelectorAll('[data-testid="stStatusWidget"], [data-stale="true"]').length > 0,
  uploader: main.querySelectorAll('input[type=file]').length > 0,
  waiting_for_photo: main.innerText.includes('Upload a photo to start'),
  headers: Array.from(main.querySelectorAll('h3')).map(h => h.innerText.trim()),
  verdicts: alerts.map(a => a.split('\n')[0].slice(0, 160)),
  not_analysed: alerts.filter(a => a.startsWith('Not analysed')),
  placeholders: main.querySelectorAll('[data-testid="stSkeleton"]').length,
  plots_sent: main.querySelectorAll('[data-testid="stPlotlyChart"]').length,
  plots_drawn: Array.from(main.querySelectorAll('.js-plotly-plot')).filter(p => p.data).length,
  charts: Array.from(main.querySelectorAll('[class*="st-key-chart_"] .js-plotly-plot')).filter(p => p.data).length,
  report: main.querySelector('.st-key-classify_pdf') !== null || main.innerText.includes('No report to download'),
  sidebar: sidebar ? sidebar.innerText : '',
};
"""


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation between ranks, as numpy's default, so
    that a p95 of a few sessions is not just the slowest one; None for no values."""
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0-100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class SessionResult:
    """One browser session: whether it saw its result, why not, and how long it waited."""

    session: int
    photos: list[str]
    ok: bool = False
    reason: str | None = None
    page_seconds: float | None = None  # opening the page until it is ready for a photo
    seconds: float | None = None  # upload to result
    charts: int | None = None  # per-photo probability charts drawn (a photo the app refuses has none)
    verdicts: list[str] = field(default_factory=list)  # the headlines the page shows (the sequence's included)
    device: str | None = None  # what the app's sidebar says the model runs on


def summarise(results: Sequence[SessionResult]) -> dict[str, float | int | None]:
    """Sessions, failures and the median / p95 / slowest time to result of the successful sessions
    (a failed session has no time to result; counting its timeout would hide the failure)."""
    times = [r.seconds for r in results if r.ok and r.seconds is not None]
    return {"sessions": len(results), "failures": sum(not r.ok for r in results),
            "median_s": _round(percentile(times, 50)), "p95_s": _round(percentile(times, 95)),
            "max_s": _round(max(times, default=None))}


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def process_memory(pid: int) -> dict[str, float] | None:
    """VmRSS and VmHWM of one process in MB, from /proc; None once it is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    fields = {line.split(":")[0]: line.split()[1:] for line in lines if line.startswith(("VmRSS:", "VmHWM:"))}
    return {"rss_mb": int(fields["VmRSS"][0]) / 1024, "hwm_mb": int(fields["VmHWM"][0]) / 1024} if fields else None


def descendants(pid: int) -> list[int]:
    """Every child process of `pid`, their children included (from /proc/PID/task/*/children)."""
    found: list[int] = []
    stack = [pid]
    while stack:
        parent = stack.pop()
        for children in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                kids = [int(k) for k in children.read_text().split()]
            except OSError:
                continue
            found.extend(kids)
            stack.extend(kids)
    return found


def server_memory(pid: int) -> dict[str, float | int | None]:
    """The server's own resident memory and peak, plus the sum over its child processes (a model
    loader or a worker the app might start would not show in the server's own figures)."""
    own = process_memory(pid)
    children = [m for m in map(process_memory, descendants(pid)) if m is not None]
    return {"rss_mb": _round(own["rss_mb"], 1) if own else None, "hwm_mb": _round(own["hwm_mb"], 1) if own else None,
            "children": len(children), "children_rss_mb": _round(sum(c["rss_mb"] for c in children), 1),
            "children_hwm_mb": _round(sum(c["hwm_mb"] for c in children), 1)}


def _synthetic_jpeg(index: int) -> bytes:
    """A lesion-like JPEG, different for every index (as bench_memory.py's photos)."""
    img = Image.new("RGB", (200, 150), (205, 160, 140))
    dx, dy = index % 30, (index // 30) % 20
    ImageDraw.Draw(img).ellipse((40 + dx, 30 + dy, 140 + dx // 2, 110), fill=(90, 55, 40))
    buf = io.BytesIO()
    img.save(buf, "JPEG")
    return buf.getvalue()


def session_photos(sessions: int, per_session: int, images: Path, out: Path) -> tuple[list[list[Path]], str]:
    """Write each session's photos under `out/session-I/` for its browser to upload: HAM10000 photos
    from `images` (different ones per session while the folder has enough), else synthetic JPEGs.
    Returns the paths per session and where the photos came from."""
    files = sorted(images.glob("*.jpg")) if images.is_dir() else []
    paths: list[list[Path]] = []
    for s in range(sessions):
        folder = out / f"session-{s}"
        folder.mkdir(parents=True, exist_ok=True)
        mine = []
        for k in range(per_session):
            index = s * per_session + k
            if files:
                source = files[index % len(files)]
                mine.append(Path(shutil.copyfile(source, folder / source.name)))
            else:
                target = folder / f"synthetic_{index}.jpg"
                target.write_bytes(_synthetic_jpeg(index))
                mine.append(target)
        paths.append(mine)
    return paths, f"HAM10000 ({images})" if files else "synthetic JPEGs"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=5) as response:
            return response.read().strip() == b"ok"
    except OSError:
        return False


@dataclass
class Server:
    """A running `streamlit run streamlit_app.py`: its process and address."""

    process: subprocess.Popen
    url: str
    log: Path
    started_s: float = 0.0

    def log_tail(self) -> str:
        """The end of the server's output, to explain a failure."""
        return self.log.read_text(errors="replace")[-3000:]


@contextmanager
def streamlit_server(log: Path) -> Iterator[Server]:
    """The app as users get it (as tests/e2e/conftest.py's StreamlitServer starts it), on a free port
    of 127.0.0.1; only the weights override is dropped so that the shipped weights are measured."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "SKIN_MODEL_WEIGHTS"}
    env["STREAMLIT_BROWSER_GATHER_USAGE_STATS"] = "false"
    start = time.perf_counter()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
             "--server.fileWatcherType", "none"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(process, f"http://127.0.0.1:{port}", log)
    try:
        while not _healthy(server.url):
            if process.poll() is not None:
                raise RuntimeError(f"streamlit exited with {process.returncode}:\n{server.log_tail()}")
            if time.perf_counter() - start > SERVER_STARTUP_TIMEOUT:
                raise RuntimeError(f"streamlit did not answer within {SERVER_STARTUP_TIMEOUT:.0f} s:\n"
                                   f"{server.log_tail()}")
            time.sleep(0.5)
        server.started_s = time.perf_counter() - start
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=20)


def chromium(profile: Path) -> webdriver.Chrome:
    """A headless Chromium with its own profile (a separate user), as the e2e tests drive it."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", f"--user-data-dir={profile}", "--window-size=1400,2000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_script_timeout(SCRIPT_TIMEOUT)
    return driver


def _wait(driver: webdriver.Chrome, done: Callable[[dict], bool], timeout: float, what: str,
          poll: float = POLL_SECONDS) -> dict:
    """Poll the page until `done(state)`; a Streamlit exception or the timeout ends the wait with why."""
    deadline = time.perf_counter() + timeout
    state: dict | None = None
    while time.perf_counter() < deadline:
        try:
            state = driver.execute_script(PAGE_STATE_JS)
        except SeleniumTimeout:  # the browser itself is starved of CPU (ten of them on two cores): ask again
            continue
        if state and state["exception"]:
            raise RuntimeError(f"Streamlit exception while waiting for {what}: {state['exception']}")
        if state and done(state):
            return state
        time.sleep(poll)
    last = {k: state[k] for k in ("busy", "headers", "verdicts", "placeholders", "plots_sent", "plots_drawn",
                                 "report")} if state else None
    raise TimeoutError(f"no {what} within {timeout:.0f} s (last state: {last})")


def _page_ready(state: dict) -> bool:
    """The Classify page waits for a photo and the model is loaded; a model that failed to load fails
    the session at once instead of at the timeout."""
    if "could not be loaded" in state["sidebar"]:
        raise RuntimeError(next(line for line in state["sidebar"].splitlines() if "could not be loaded" in line))
    return state["uploader"] and state["waiting_for_photo"] and not state["busy"] and "Model runs on" in state["sidebar"]


def _result_shown(names: list[str]) -> Callable[[dict], bool]:
    """The condition of a session's result: every photo's subheader and verdict, the report section,
    every chart drawn (Streamlit shows a placeholder while it loads Plotly, then Plotly draws), no
    run in progress; a photo the app could not read fails the session at once."""
    def done(state: dict) -> bool:
        if state["not_analysed"]:
            raise RuntimeError("; ".join(state["not_analysed"]))
        return (not state["busy"] and all(n in state["headers"] for n in names)
                and len(state["verdicts"]) >= len(names) and state["report"]
                and not state["placeholders"] and state["plots_drawn"] == state["plots_sent"])
    return done


def _why(exc: BaseException) -> str:
    message = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0]}" if message else type(exc).__name__


def run_session(result: SessionResult, url: str, profile: Path, photos: list[Path], barrier: threading.Barrier,
                timeout: float, poll: float = POLL_SECONDS) -> None:
    """One user: open the Classify page, upload together with the others, wait for the result. Fills
    `result`; a session that fails before the upload still meets the others at the barrier, so one
    broken browser does not stop the rest."""
    driver = None
    try:
        try:
            driver = chromium(profile)
            start = time.perf_counter()  # from the page's request: the browser's own start is not the app's
            driver.get(url)
            state = _wait(driver, _page_ready, timeout, "Classify page ready for a photo", poll)
            result.page_seconds = round(time.perf_counter() - start, 2)
            device = re.search(r"Model runs on:\s*(.+)", state["sidebar"])
            result.device = device.group(1).strip() if device else None
        except Exception as exc:  # this session's failure; it still meets the others at the barrier
            result.reason = _why(exc)
        try:
            barrier.wait(timeout=timeout)
        except threading.BrokenBarrierError:
            result.reason = result.reason or "the sessions were not all ready within the timeout"
        if result.reason:
            return
        start = time.perf_counter()
        driver.find_element("css selector", "input[type=file]").send_keys("\n".join(map(str, photos)))
        state = _wait(driver, _result_shown([p.name for p in photos]), timeout, "result", poll)
        result.seconds = round(time.perf_counter() - start, 2)
        result.charts, result.verdicts = state["charts"], state["verdicts"]
        result.ok = True
    except Exception as exc:  # any failure is this session's result, reported with the others
        result.reason = _why(exc)
    finally:
        if driver is not None:
            driver.quit()


def machine() -> str:
    """Processor, cores and torch version, as bench_latency.py writes them. Called after the sessions:
    importing torch here would take CPU from the server under test."""
    import torch

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"


def run(sessions: int, per_session: int, timeout: float, work: Path) -> dict:
    """Start the server, run the sessions at once, and return every figure of the benchmark."""
    images = Path(os.environ.get("HAM10000_DIR", ROOT.parent / "shared" / "ham10000")) / "images"
    photos, source = session_photos(sessions, per_session, images, work / "photos")
    results = [SessionResult(session=i, photos=[p.name for p in photos[i]]) for i in range(sessions)]
    memory: dict[str, dict] = {}
    with streamlit_server(work / "streamlit.log") as server:
        pid = server.process.pid
        memory["before_sessions"] = server_memory(pid)
        barrier = threading.Barrier(sessions, action=lambda: memory.__setitem__("pages_open", server_memory(pid)))
        threads = [threading.Thread(target=run_session, daemon=True,
                                    args=(results[i], server.url, work / f"profile-{i}", photos[i], barrier, timeout,
                                          POLL_SECONDS if sessions > 1 else POLL_SECONDS_ALONE))
                   for i in range(sessions)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=3 * timeout)
        for t, r in zip(threads, results):
            if t.is_alive():
                r.ok, r.reason = False, "the session hung (its thread did not end)"
        memory["after_sessions"] = server_memory(pid)
        alive = server.process.poll() is None
        log_tail = "" if alive and all(r.ok for r in results) else server.log_tail()
    devices = sorted({r.device for r in results if r.device})
    return {
        **summarise(results), "photos_per_session": per_session, "photo_source": source,
        "photos_charted": sum(r.charts or 0 for r in results),
        "timeout_s": timeout, "server_start_to_healthy_s": round(server.started_s, 1), "server_alive": alive,
        "server_memory": memory, "model_device": ", ".join(devices) or None,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"), "per_session": [asdict(r) for r in results],
        **({"server_log_tail": log_tail} if log_tail else {}),
    }


def _mb(memory: dict | None, key: str) -> str:
    return f"{memory[key]:.0f} MB" if memory and memory.get(key) is not None else "n/a"


def to_markdown(result: dict) -> str:
    """The table for the README, in the style of the other files of benchmarks/results/."""
    def seconds(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1f} s"

    mem = result["server_memory"]
    before, opened, after = mem.get("before_sessions"), mem.get("pages_open"), mem.get("after_sessions")
    children = (f"; child processes {_mb(before, 'children_rss_mb')} before, {_mb(after, 'children_rss_mb')} after "
                f"(peak {_mb(after, 'children_hwm_mb')})") if (after or {}).get("children") else ""
    n, k = result["sessions"], result["photos_per_session"]
    lines = [
        f"Machine: {result['machine']}, model on {result['model_device'] or 'n/a'} ({result['date']}); "
        f"{n} headless Chromium sessions against one `streamlit run`, {k} photos each ({result['photo_source']})",
        "",
        "| measure | value |",
        "|---|---|",
        f"| sessions without a result ({n} at once, {k} photos each) | {result['failures']} of {n} |",
        f"| photos answered with probabilities (the app refuses photos unlike a dermatoscopic one) | "
        f"{result['photos_charted']} of {n * k} |",
        f"| time from upload to result | median {seconds(result['median_s'])}, p95 {seconds(result['p95_s'])} |",
        f"| server resident memory before / with pages open / after the sessions | {_mb(before, 'rss_mb')} / "
        f"{_mb(opened, 'rss_mb')} / {_mb(after, 'rss_mb')} (peak {_mb(after, 'hwm_mb')}){children} |",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--photos", type=int, default=3, help="photos each session uploads at once")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds a session may wait for the page, "
                        "and again for its result")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.sessions < 1 or args.photos < 1:
        parser.error("--sessions and --photos must be at least 1")
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        sys.exit(f"needs {CHROMIUM} and {CHROMEDRIVER} (Debian packages chromium and chromium-driver)")
    with tempfile.TemporaryDirectory(prefix="bench_load_") as work:
        result = run(args.sessions, args.photos, args.timeout, Path(work))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "load.json").write_text(json.dumps(result, indent=2) + "\n")
    table = to_markdown(result)
    (args.out / "load.md").write_text(table)
    for r in result["per_session"]:
        outcome = (f"{r['seconds']:.1f} s, probability charts for {r['charts']} of {len(r['photos'])} photos"
                   if r["ok"] else f"FAILED: {r['reason']}")
        print(f"session {r['session']} ({', '.join(r['photos'])}): {outcome}")
    print(table, end="")
    if result.get("server_log_tail"):
        print("server log (end):\n" + result["server_log_tail"], file=sys.stderr)
    sys.exit(1 if result["failures"] else 0)


if __name__ == "__main__":
    main()
