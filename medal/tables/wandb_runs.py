"""Collect runs from W&B: online through `wandb.Api()`, or from the run folders W&B wrote on disk.

wandb >= 0.19 writes an offline run only as its transaction log `run-<id>.wandb` (no config.yaml or
wandb-summary.json until it is synced). That file is a LevelDB-style log of `wandb.proto` `Record`s
(header `:W&B` + magic + version, 32 KiB blocks, 7-byte chunk headers); replaying its run/config/summary/
history/exit records gives the same config, summary metrics, history and exit code the server would show.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Iterator, Mapping
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

log = logging.getLogger("medal.tables")

_HEADER = b":W&B"
_HEADER_LEN = 7  # ident (4) + magic 0xBEE1 (2) + version (1)
_BLOCK = 32 * 1024
_CHUNK_HEADER = struct.Struct("<IHB")  # crc32, length, type
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
_STATE_STATUS = {"finished": STATUS_OK, "failed": STATUS_FAILED, "crashed": STATUS_FAILED, "killed": STATUS_FAILED}


def datastore_records(path: str | Path) -> Iterator[bytes]:
    """Raw serialized `Record`s of a `.wandb` file; a truncated tail (run still writing/killed) ends the scan."""
    data = Path(path).read_bytes()
    if not data.startswith(_HEADER):
        raise MedalError(f"{path}: not a W&B run log (no ':W&B' header); point table.dir at W&B run folders")
    pos, pending = _HEADER_LEN, b""
    while pos + _CHUNK_HEADER.size <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK_HEADER.size:  # block trailer padding
            pos += left
            continue
        _, length, kind = _CHUNK_HEADER.unpack_from(data, pos)
        start, pos = pos + _CHUNK_HEADER.size, pos + _CHUNK_HEADER.size + length
        if pos > len(data):
            break
        chunk = data[start:pos]
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk
            pending = b""
        else:  # zero padding at the end of a block
            pos += _BLOCK - pos % _BLOCK if pos % _BLOCK else 0


def _item_path(item: Any) -> list[str]:
    return list(item.nested_key) if item.nested_key else [item.key]


def _apply(target: dict[str, Any], record: Any) -> None:
    """Apply a Config/Summary record (updates with JSON values, removals) to a nested dict."""
    for item in record.update:
        *parents, leaf = _item_path(item)
        node = target
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = json.loads(item.value_json)
    for item in record.remove:
        *parents, leaf = _item_path(item)
        node = target
        for part in parents:
            node = node.get(part, {})
        node.pop(leaf, None)


def read_disk_run(run_dir: str | Path) -> RunResult:
    """One W&B run folder (`wandb/offline-run-*` or `wandb/run-*`) -> RunResult."""
    require(WANDB, "table.source=wandb_offline")
    from wandb.proto import wandb_internal_pb2 as pb

    run_dir = Path(run_dir)
    logs = sorted(run_dir.glob("run-*.wandb"))
    if not logs:
        raise MedalError(f"{run_dir}: no run-*.wandb file; is this a W&B run folder?")
    config: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    meta: dict[str, Any] = {"exit_code": None, "tags": [], "group": "", "project": "", "id": run_dir.name}
    for raw in datastore_records(logs[0]):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            meta.update(id=run.run_id, project=run.project, group=run.run_group, tags=list(run.tags))
            _apply(config, run.config)
            _apply(summary, run.summary)
        elif kind == "config":
            _apply(config, record.config)
        elif kind == "summary":
            _apply(summary, record.summary)
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                path = _item_path(item)
                if len(path) == 1:  # nested keys are media descriptors, not scalars
                    row[path[0]] = json.loads(item.value_json)
            rows.append(row)
        elif kind == "exit":
            meta["exit_code"] = record.exit.exit_code
    status = _disk_status(summary, meta["exit_code"])
    images = {key: paths for key, value in summary.items() if (paths := _image_files(run_dir, value))}
    result = _result(str(run_dir), config, summary, status, meta["tags"], pd.DataFrame(rows))
    result.extra = {"group": meta["group"], "project": meta["project"], "id": meta["id"], "images": images}
    return result


def _image_files(run_dir: Path, value: Any) -> list[Path]:
    """Files of a summary entry that is an image (`wandb.Image`) or an image list (`log_image`)."""
    if not isinstance(value, Mapping):
        return []
    if value.get("_type") == "image-file" and "path" in value:
        return [run_dir / "files" / value["path"]]
    if value.get("_type") == "images/separated":
        return [run_dir / "files" / name for name in value.get("filenames", [])]
    return []


def _disk_status(summary: Mapping[str, Any], exit_code: int | None) -> str:
    if isinstance(summary.get("status"), str):  # written by medal.loggers.summarize_run
        return summary["status"]
    if exit_code is None:
        return STATUS_INCOMPLETE
    return STATUS_OK if exit_code == 0 else STATUS_FAILED


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
    run_dirs = sorted({p.parent.resolve() for p in root.rglob("run-*.wandb")})
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
