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
