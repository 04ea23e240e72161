"""Benchmark records: every figure is a ratio against a baseline measured in the same run.

Each benchmark script calls `write_bench(name, rows)`, which writes `outputs/bench/<name>.json` and
`outputs/bench/<name>.md`; `scripts/bench_summary.py` gathers them into `outputs/bench/summary.md`.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(os.environ.get("MEDAL_BENCH_DIR", "outputs/bench"))


@dataclass
class BenchRow:
    """One measured figure and the same-run baseline it is compared with (ratio = value / baseline)."""

    figure: str
    value: float
    unit: str
    baseline: str
    baseline_value: float
    higher_is_better: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        if self.baseline_value == 0:
            return float("nan")
        return self.value / self.baseline_value


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_bench(name: str, rows: list[BenchRow], notes: str = "", out_dir: Path | None = None) -> Path:
    """Write `<name>.json` and a markdown table `<name>.md`; return the JSON path."""
    out = out_dir or BENCH_DIR
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    payload = {
        "name": name,
        "machine": machine,
        "notes": notes,
        "rows": [{**asdict(r), "ratio": r.ratio} for r in rows],
    }
    path = out / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    (out / f"{name}.md").write_text(markdown_table(name, payload))
    return path


def markdown_table(name: str, payload: dict[str, Any]) -> str:
    """A benchmark's JSON as a markdown section."""
    lines = [f"## {name}", ""]
    if payload.get("notes"):
        lines += [payload["notes"], ""]
    lines += ["| figure | value | baseline (same run) | ratio |", "|---|---|---|---|"]
    for r in payload["rows"]:
        lines.append(
            f"| {r['figure']} | {r['value']:.4g} {r['unit']} | {r['baseline']}: {r['baseline_value']:.4g} {r['unit']} "
            f"| {r['ratio']:.2f}× |"
        )
    m = payload["machine"]
    lines += ["", f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['date']}.", ""]
    return "\n".join(lines)
