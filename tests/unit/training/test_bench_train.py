"""benchmarks/bench_train.py runs on tiny data and writes what the README quotes (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_training_benchmark_writes_its_tables(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_train.py"), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "train.json").read_text())
    variants = [row["variant"] for row in result["stage1"]]
    assert variants[0].startswith("shipped recipe") and "NCHW memory layout" in variants
    for row in result["stage1"]:
        assert row["ms_per_photo"] > 0 and row["epoch_minutes"] > 0
    cached = [row for row in result["stage1"] if row["changes"].get("cached_views")]
    assert cached and all(row["cache_ms_per_view"] > 0 for row in cached)
    assert result["features"]["photos_per_second"] > 0 and result["stage2"]["steps_per_second"] > 0
    table = (tmp_path / "train.md").read_text()
    assert table.count("\n| ") == len(variants) + 1 and "minutes an epoch" in table
    assert "Caching the frozen prefix" in table
