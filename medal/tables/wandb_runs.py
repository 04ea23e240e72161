"""Collect runs from W&B: online through `wandb.Api()`, or from the run folders W&B wrote on disk.

An offline run is read from medal's own record inside its W&B run folder (`medal/wandb_record.py`: the
config, history, summary and figures medal's W&B logger sent), never from W&B's private transaction log
(`run-<id>.wandb`), whose format has no public reader. A W&B run folder without the record (logged by
something else) is refused in one line.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from medal.errors import MedalError
from medal.extras import WANDB, require
from medal.tables.folder_runs import (
    STATUS_FAILED,
    STATUS_INCOMPLETE,
    STATUS_OK,
    RunResult,
    epoch_history,
    plain_metrics,
)
from medal.wandb_record import read_record

log = logging.getLogger("medal.tables")

_STATE_STATUS = {"finished": STATUS_OK, "failed": STATUS_FAILED, "crashed": STATUS_FAILED, "killed": STATUS_FAILED}


def read_disk_run(run_dir: str | Path) -> RunResult:
    """One W&B run folder (`wandb/offline-run-*` or `wandb/run-*`) -> RunResult, from medal's record in it."""
    record = read_record(run_dir)
    status = record.status or STATUS_INCOMPLETE  # no summary: killed or still running
    result = _result(str(record.run_dir), record.config, record.metrics, status, record.tags,
                     pd.DataFrame(record.history))
    result.extra = {"group": record.group, "project": record.project, "id": record.id, "images": record.images}
    return result


def _result(name: str, config: Mapping[str, Any], summary: Mapping[str, Any], status: str,
            tags: list[str], history: pd.DataFrame | None) -> RunResult:
    public = {k: v for k, v in summary.items() if not k.startswith("_")}
    return RunResult(
        name=name,
        config={k: v for k, v in config.items() if not k.startswith("_")},
        metrics=plain_metrics(public),
        status=status,
        overrides=list(tags),
        history=epoch_history(history) if history is not None else None,
    )


def collect_disk_runs(root: str | Path, group: str | None = None, project: str | None = None) -> list[RunResult]:
    """Every W&B run folder under `root` (e.g. a multirun folder), optionally only one project/group."""
    root = Path(root)
    if not root.is_dir():
        raise MedalError(f"table.dir={root}: no such folder; pass the folder holding the runs' wandb/ folders")
    run_dirs = sorted({p.parent.resolve() for p in root.rglob("run-*.wandb")})  # W&B's own name for its run log
    runs = [read_disk_run(d) for d in run_dirs]
    runs = [r for r in runs if (group is None or r.extra["group"] == group)
            and (project is None or r.extra["project"] == project)]
    if not runs:
        raise MedalError(f"{root}: no W&B runs (run-*.wandb) found" + (f" in group {group!r}" if group else "")
                         + "; did the runs use logger=wandb (or [csv,wandb])?")
    return runs


def collect_online_runs(project: str, entity: str | None = None, group: str | None = None,
                        with_history: bool = True, api: Any = None) -> list[RunResult]:
    """Runs of a W&B project (optionally one group) through the public API; needs network and an API key."""
    if api is None:
        require(WANDB, "table.source=wandb")
        import wandb

        api = wandb.Api()
    path = f"{entity}/{project}" if entity else project
    runs = []
    for run in api.runs(path, filters={"group": group} if group else None):
        summary = dict(run.summary_metrics)
        status = summary.get("status") if isinstance(summary.get("status"), str) else \
            _STATE_STATUS.get(run.state, STATUS_INCOMPLETE)
        history = pd.DataFrame(list(run.scan_history())) if with_history else None
        result = _result(f"{path}/{run.id}", run.config, summary, status, list(run.tags), history)
        result.extra = {"group": run.group, "project": project, "id": run.id, "images": {}}
        runs.append(result)
    if not runs:
        raise MedalError(f"W&B project {path!r}" + (f" group {group!r}" if group else "") + " has no runs")
    return runs
