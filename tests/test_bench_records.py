"""Benchmark records keep the same-run baseline and the ratio."""

from __future__ import annotations

import json
from pathlib import Path

from medal.bench import BenchRow, write_bench


def test_write_bench_writes_json_and_markdown_with_ratios(tmp_path: Path) -> None:
    rows = [BenchRow("cached loader", 500.0, "img/s", "PNG decode", 20.0)]
    path = write_bench("loader", rows, notes="200 images", out_dir=tmp_path)
    payload = json.loads(path.read_text())
    assert payload["rows"][0]["ratio"] == 25.0 and payload["machine"]["cores"] >= 1
    md = (tmp_path / "loader.md").read_text()
    assert "| cached loader | 500 img/s | PNG decode: 20 img/s | 25.00× |" in md


def test_bench_summary_gathers_every_benchmark_with_the_machine(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    write_bench("loader", [BenchRow("cached loader", 500.0, "img/s", "PNG decode", 20.0)], out_dir=tmp_path)
    write_bench("phantoms", [BenchRow("2 workers", 3.0, "img/s", "1 worker", 2.0)], out_dir=tmp_path)
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_summary.py"
    subprocess.run([sys.executable, str(script)], check=True, capture_output=True,
                   env={**os.environ, "MEDAL_BENCH_DIR": str(tmp_path)})
    summary = (tmp_path / "summary.md").read_text()
    assert "## loader" in summary and "## phantoms" in summary and "25.00×" in summary and "1.50×" in summary
    assert "cores" in summary
