"""The run-directory contract: every task writes a flat `metrics.json` in its output dir."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from medal.atomic import write_json

METRICS_FILE = "metrics.json"


def _plain(value: Any) -> Any:
    """Turn tensors/numpy scalars into JSON numbers; NaN/inf become null (JSON has no NaN)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Reused(dict):
    """The metrics of work an earlier run finished in the same folder, returned as they were recorded.

    A task returns them in this type when it skips finished work (a rerun of a sweep in its old folder), so the
    task runner leaves that run's metrics.json (its time, its mtime) as the run that did the work wrote it.
    """


def write_metrics(out_dir: str | Path, metrics: dict[str, Any], status: str = "ok", error: str | None = None) -> Path:
    """Write `{"status": ..., "<split>/<metric>[_<cohort>]": number, ...}` atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {"status": status}
    if error is not None:
        payload["error"] = error
    payload.update({str(k): _plain(v) for k, v in metrics.items()})
    return write_json(out / METRICS_FILE, payload, indent=2, sort_keys=True)


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    """Read a run's metrics.json (raises FileNotFoundError when the run never wrote one)."""
    return json.loads((Path(run_dir) / METRICS_FILE).read_text())
