"""Collect finished runs from Hydra run folders: config, overrides, metrics and the logged history.

A run folder is any folder holding `.hydra/config.yaml`; a multirun folder holds one per job (`0/`, `1/`, ...).
`metrics.json` says ok/failed; a job folder without it never finished (killed, still running).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

import medal.config  # noqa: F401  (registers the resolvers that saved configs refer to)
from medal.errors import MedalError
from medal.runs import METRICS_FILE

log = logging.getLogger("medal.tables")

STATUS_OK, STATUS_FAILED, STATUS_INCOMPLETE = "ok", "failed", "incomplete"
HISTORY_CSV = Path("csv") / "metrics.csv"  # where conf/logger/csv.yaml puts Lightning's CSVLogger file


@dataclass
class RunResult:
    """One run, wherever it was stored: nested config, overrides, final metrics and per-epoch history."""

    name: str
    config: dict[str, Any]
    metrics: dict[str, float | None]
    status: str
    overrides: list[str] = field(default_factory=list)
    history: pd.DataFrame | None = None  # one row per epoch, columns = logged metric names
    extra: dict[str, Any] = field(default_factory=dict)  # source-specific facts (W&B group, id, images)
    folder: Path | None = None  # the Hydra run folder (its predictions.csv); None for runs read from W&B

    def get(self, key: str, default: Any = None) -> Any:
        """Dotted config lookup (`finetune.name`); `default` when any part is missing."""
        return config_value(self.config, key, default)

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK


def config_value(config: Mapping[str, Any], key: str, default: Any = None) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def plain_metrics(raw: Mapping[str, Any]) -> dict[str, float | None]:
    """Numeric metrics only (status/error strings dropped); NaN becomes None, i.e. 'not measured'."""
    out: dict[str, float | None] = {}
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int | float | type(None)):
            continue
        out[key] = None if value is None or not math.isfinite(value) else float(value)
    return out


def epoch_history(frame: pd.DataFrame) -> pd.DataFrame:
    """Collapse step-wise logger rows to one row per epoch (last logged value of each metric in that epoch)."""
    if "epoch" not in frame.columns or frame.empty:
        return pd.DataFrame()
    frame = frame.dropna(subset=["epoch"]).copy()
    frame["epoch"] = frame["epoch"].astype(int)
    values = frame.drop(columns=[c for c in ("step", "_step") if c in frame.columns])
    return values.groupby("epoch", sort=True).last().reset_index()


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise MedalError(f"{path}: cannot read ({err}); is this a Hydra run folder?") from None


_HYDRA_NODE = "__hydra__"


def resolve_leniently(config: dict[str, Any], hydra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Resolve the interpolations Hydra saved unresolved (`images: ${enhance.images_dir}`) where possible.

    `${hydra:x}` and `${launch_dir:}` are looked up in the run's own `.hydra/hydra.yaml` (`hydra`), not in
    whatever Hydra is live now or wherever the reader runs.
    Values that still cannot resolve (a missing env var) stay as written, so a table can group runs by any key
    without the reader failing on one it doesn't need.
    """
    text = yaml.safe_dump(config).replace("${hydra:", "${" + _HYDRA_NODE + ".")
    text = text.replace("${launch_dir:}", "${" + _HYDRA_NODE + ".runtime.cwd}")  # the run's, not the reader's
    root = OmegaConf.create({**yaml.safe_load(text), _HYDRA_NODE: hydra or {}})

    def walk(node: DictConfig | ListConfig) -> Any:
        keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
        out: dict | list = {} if isinstance(node, DictConfig) else []
        for key in keys:
            try:
                value = node[key]
            except Exception:  # noqa: BLE001 - any resolver error: keep the literal text
                value = node._get_node(key)._value()
            if isinstance(value, DictConfig | ListConfig):
                value = walk(value)
            elif isinstance(value, str):  # left unresolved: show it as the run wrote it
                value = value.replace("${" + _HYDRA_NODE + ".", "${hydra:")
            if isinstance(out, dict):
                out[key] = value
            else:
                out.append(value)
        return out

    resolved = walk(root)
    resolved.pop(_HYDRA_NODE)
    return resolved


def read_run(run_dir: str | Path) -> RunResult:
    """One Hydra run folder -> RunResult (status `incomplete` when it never wrote metrics.json)."""
    run_dir = Path(run_dir)
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    hydra = (_read_yaml(hydra_file) or {}).get("hydra") if hydra_file.exists() else None
    config = resolve_leniently(_read_yaml(run_dir / ".hydra" / "config.yaml") or {}, hydra)
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    overrides = [str(o) for o in (_read_yaml(overrides_file) or [])] if overrides_file.exists() else []
    metrics_file = run_dir / METRICS_FILE
    if metrics_file.exists():
        try:
            raw = json.loads(metrics_file.read_text())
        except json.JSONDecodeError as err:
            raise MedalError(f"{metrics_file}: not valid JSON ({err}); delete it and rerun the job") from None
        status = str(raw.get("status", STATUS_OK))
        metrics = plain_metrics(raw)
    else:
        status, metrics = STATUS_INCOMPLETE, {}
    history_file = run_dir / HISTORY_CSV
    history = epoch_history(pd.read_csv(history_file)) if history_file.exists() else None
    return RunResult(name=str(run_dir), config=config, metrics=metrics, status=status,
                     overrides=overrides, history=history, folder=run_dir)


def collect_runs(root: str | Path) -> list[RunResult]:
    """Every run folder under `root` (a multirun folder, a tree of them, or one run), in job order."""
    root = Path(root)
    if not root.is_dir():
        raise MedalError(f"table.source={root}: no such folder; pass a multirun folder (outputs/multiruns/...)")
    run_dirs = sorted({p.parent.parent for p in root.rglob(".hydra/config.yaml")}, key=_job_order)
    if not run_dirs:
        raise MedalError(f"{root}: no run folders (.hydra/config.yaml) found; pass a Hydra run or multirun folder")
    runs = [read_run(d) for d in run_dirs]
    incomplete = [r.name for r in runs if r.status == STATUS_INCOMPLETE]
    if incomplete:
        log.warning("%d run(s) without metrics.json (killed or still running): %s", len(incomplete),
                    ", ".join(incomplete))
    return runs


def _job_order(path: Path) -> tuple:
    """Sort job folders numerically (2 before 10)."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.parts)
