"""medal's own record of a W&B run, kept inside the W&B run folder, so `medal table` reads offline runs
without W&B's private log format.

An offline W&B run keeps what was logged only in its transaction log (`run-<id>.wandb`: wandb's internal
protobuf in a LevelDB-style block format, no public reader in the SDK). medal's W&B logger
(`medal.loggers.RecordingWandbLogger`) therefore also writes what it sends, as plain files in the run's
files folder (`<W&B run folder>/files/medal/`, which W&B uploads with the run):

    run.json        {"schema", "id", "project", "group", "tags", "config"}    rewritten when the config is logged
    history.jsonl   one JSON object per logged row of scalars                  appended as the run goes
    summary.json    {"schema", "status", "metrics"}                            written when the task ends
    images/<key>/   the last image logged under each key (`figures/figure11` -> images/figures/figure11/)

JSON files are written atomically; a history line cut off by a kill is the run's end, never an error. A run
with no summary.json did not finish (killed, still running). `read_record` refuses, in one line naming the
file, a record of another schema or one that is damaged.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medal.atomic import write_json
from medal.errors import MedalError

SCHEMA = 1
RECORD_DIR = Path("files") / "medal"  # inside a W&B run folder (`wandb/offline-run-*` or `wandb/run-*`)
RUN_FILE, HISTORY_FILE, SUMMARY_FILE, IMAGES_DIR = "run.json", "history.jsonl", "summary.json", "images"


@dataclass(frozen=True)
class WandbRecord:
    """What medal logged to one W&B run. `status` is None when the run never finished (no summary.json)."""

    run_dir: Path
    id: str
    project: str
    group: str
    tags: list[str]
    config: dict[str, Any]
    history: list[dict[str, Any]]
    status: str | None
    metrics: dict[str, Any]
    images: dict[str, list[Path]] = field(default_factory=dict)


def record_dir(files_dir: str | Path) -> Path:
    """The record's folder, from a W&B run's files folder (`wandb.run.dir`)."""
    return Path(files_dir) / RECORD_DIR.name


def write_run(files_dir: str | Path, run_id: str, project: str, group: str, tags: Iterable[str],
              config: Mapping[str, Any]) -> None:
    """(Re)write run.json; `config` is merged into what an earlier call recorded (as W&B's config.update does)."""
    path = record_dir(files_dir) / RUN_FILE
    merged = dict(_load(path)["config"]) if path.is_file() else {}
    merged.update(_json_ready(config))
    write_json(path, {"schema": SCHEMA, "id": run_id, "project": project, "group": group, "tags": list(tags),
                      "config": merged}, indent=1, sort_keys=True)


def append_history(files_dir: str | Path, metrics: Mapping[str, Any], step: int | None = None) -> None:
    """Append one row of the scalars in `metrics` (with `trainer/global_step`, as W&B gets it); values that are
    not numbers (images) are not history, and a call with no scalar writes no row."""
    scalars = {str(k): v for k, v in _json_ready(metrics).items()
               if isinstance(v, int | float) and not isinstance(v, bool)}
    if not scalars:
        return
    if step is not None:
        scalars["trainer/global_step"] = int(step)
    path = record_dir(files_dir) / HISTORY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(scalars, sort_keys=True) + "\n")


def write_summary(files_dir: str | Path, status: str, metrics: Mapping[str, Any]) -> None:
    """The run's final status and metrics (the same numbers as its metrics.json)."""
    write_json(record_dir(files_dir) / SUMMARY_FILE, {"schema": SCHEMA, "status": status,
                                                      "metrics": _json_ready(metrics)}, indent=1, sort_keys=True)


def keep_image(files_dir: str | Path, key: str, files: Iterable[str | Path]) -> None:
    """Copy the image files logged under `key` into the record, replacing those logged under it before."""
    folder = record_dir(files_dir) / IMAGES_DIR / key
    if folder.is_dir():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for file in files:
        shutil.copy2(file, folder / Path(file).name)


def read_record(run_dir: str | Path) -> WandbRecord:
    """The record of one W&B run folder; one-line MedalError for a missing, damaged or other-schema record."""
    run_dir = Path(run_dir)
    folder = run_dir / RECORD_DIR
    run_file = folder / RUN_FILE
    if not run_file.is_file():
        raise MedalError(f"{run_dir}: a W&B run without medal's record ({RECORD_DIR / RUN_FILE}): it was not logged "
                         "by medal's W&B logger (or by a medal older than the record); build the table from the "
                         "run folders instead (table.source=DIR)")
    run = _load(run_file)
    summary_file = folder / SUMMARY_FILE
    summary = _load(summary_file) if summary_file.is_file() else None
    images_root = folder / IMAGES_DIR
    images = {str(d.relative_to(images_root)): sorted(p for p in d.iterdir() if p.is_file())
              for d in sorted(images_root.rglob("*")) if d.is_dir() and any(p.is_file() for p in d.iterdir())}
    return WandbRecord(
        run_dir=run_dir, id=str(run["id"]), project=str(run["project"]), group=str(run["group"] or ""),
        tags=[str(t) for t in run["tags"]], config=dict(run["config"]), history=_history(folder / HISTORY_FILE),
        status=None if summary is None else str(summary["status"]),
        metrics={} if summary is None else dict(summary["metrics"]), images=images)


def _load(path: Path) -> dict[str, Any]:
    """A record JSON file of this schema."""
    try:
        payload = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MedalError(f"{path}: damaged medal W&B record ({err}); rebuild the table from the run folders "
                         "(table.source=DIR) or rerun that job") from None
    schema = payload.get("schema") if isinstance(payload, dict) else None
    if schema != SCHEMA:
        raise MedalError(f"{path}: medal W&B record schema {schema!r}, but this medal reads schema {SCHEMA}: read it "
                         "with the medal version that wrote it, or build the table from the run folders")
    return payload


def _history(path: Path) -> list[dict[str, Any]]:
    """The logged rows; a last line without its newline (the run was killed while writing it) ends the history."""
    if not path.is_file():
        return []
    *complete, _cut_off = path.read_bytes().split(b"\n")  # after a final newline the last piece is empty
    rows = []
    for number, line in enumerate(complete, start=1):
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise MedalError(f"{path}:{number}: damaged medal W&B history row ({err}); rebuild the table from "
                             "the run folders (table.source=DIR) or rerun that job") from None
        if not isinstance(row, dict):
            raise MedalError(f"{path}:{number}: a history row must be a JSON object; rebuild the table from the run "
                             "folders (table.source=DIR) or rerun that job")
        rows.append(row)
    return rows


def _json_ready(values: Mapping[str, Any]) -> dict[str, Any]:
    """Plain JSON values (tensors and numpy scalars to numbers, other objects to their text; NaN kept as NaN)."""
    def plain(value: Any) -> Any:
        if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
            return value.item()
        return str(value)

    return json.loads(json.dumps(dict(values), default=plain))
