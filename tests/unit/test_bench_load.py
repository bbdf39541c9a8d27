"""The pure helpers of benchmarks/bench_load.py: the summary it reports, the photos it gives each
browser, and the memory it reads from /proc (no browser or server is started here)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_load", REPO / "benchmarks" / "bench_load.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_percentile_interpolates_between_ranks(bench) -> None:
    values = [4.0, 1.0, 3.0, 2.0]  # unsorted on purpose
    assert bench.percentile(values, 50) == pytest.approx(2.5)
    assert bench.percentile(values, 95) == pytest.approx(3.85)
    assert bench.percentile(values, 0) == 1.0 and bench.percentile(values, 100) == 4.0
    assert bench.percentile([7.0], 95) == 7.0
    assert bench.percentile([], 50) is None
    with pytest.raises(ValueError):
        bench.percentile(values, 101)


def test_summary_times_only_the_sessions_that_got_a_result(bench) -> None:
    results = [bench.SessionResult(0, ["a.jpg"], ok=True, seconds=2.0),
               bench.SessionResult(1, ["b.jpg"], ok=True, seconds=4.0),
               bench.SessionResult(2, ["c.jpg"], ok=False, reason="TimeoutError: no result", seconds=None),
               bench.SessionResult(3, ["d.jpg"], ok=True, seconds=10.0)]
    summary = bench.summarise(results)
    assert summary == {"sessions": 4, "failures": 1, "median_s": 4.0, "p95_s": 9.4, "max_s": 10.0}
    none = bench.summarise([bench.SessionResult(0, ["a.jpg"], reason="boom")])
    assert none["failures"] == 1 and none["median_s"] is None and none["p95_s"] is None


def test_each_session_gets_its_own_dataset_photos(bench, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for i in range(8):
        Image.new("RGB", (20, 20), (i * 30, 0, 0)).save(images / f"ISIC_{i:07d}.jpg")
    photos, source = bench.session_photos(2, 3, images, tmp_path / "out")
    assert source.startswith("HAM10000")
    names = [[p.name for p in session] for session in photos]
    assert names == [["ISIC_0000000.jpg", "ISIC_0000001.jpg", "ISIC_0000002.jpg"],
                     ["ISIC_0000003.jpg", "ISIC_0000004.jpg", "ISIC_0000005.jpg"]]
    assert all(p.parent == tmp_path / "out" / f"session-{s}" and p.read_bytes() == (images / p.name).read_bytes()
               for s, session in enumerate(photos) for p in session)


def test_without_the_dataset_every_photo_is_a_different_synthetic_jpeg(bench, tmp_path: Path) -> None:
    photos, source = bench.session_photos(3, 3, tmp_path / "absent", tmp_path / "out")
    assert source == "synthetic JPEGs"
    flat = [p for session in photos for p in session]
    assert len(flat) == 9 and len({p.read_bytes() for p in flat}) == 9  # no session hits another's cache
    assert len({p.name for p in flat}) == 9
    with Image.open(flat[0]) as img:
        assert img.format == "JPEG" and img.size == (200, 150)


def test_memory_is_read_from_proc(bench) -> None:
    if not Path("/proc/self/status").is_file():
        pytest.skip("needs Linux /proc")
    own = bench.process_memory(os.getpid())
    assert own is not None and 0 < own["rss_mb"] <= own["hwm_mb"]
    child = subprocess.Popen([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(30)"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "up"  # running Python, not half-way through its exec
        assert child.pid in bench.descendants(os.getpid())
        memory = bench.server_memory(os.getpid())
        assert memory["rss_mb"] > 0 and memory["children"] >= 1 and memory["children_rss_mb"] > 0
    finally:
        child.kill()
        child.communicate()
    assert bench.process_memory(2**22 + 1) is None  # above the kernel's pid limit: never a process
