"""Resumable stages: a stage is skipped when it finished before with the same configuration.

Each stage's record lives in `<state_dir>/<stage>.json`: its config fingerprint, its metrics and how
long it took. A stage is redone when its fingerprint changed, when it never finished (a crash leaves
no record, because the record is written last and atomically), or when `force` names it. Fingerprints
chain: each includes the previous stage's, so changing an early stage's config redoes what follows.

A stage may own a folder (`Stage.dir`) that its task resumes from (checkpoints, a finished run's
metrics). `<state_dir>/<stage>.started` holds the fingerprint of the attempt under way, so a rerun tells
a crashed attempt of the same config (keep the folder: resume) from a new config or `force` (empty the
folder first: the old config's checkpoints and results must not be resumed or returned as this one's).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medal.atomic import write_json
from medal.config import to_plain
from medal.errors import MedalError

log = logging.getLogger("medal.pipeline")

StageFn = Callable[[DictConfig], dict[str, Any]]


class StopPipeline(Exception):
    """A stage needs something from a person (e.g. oracle answers); the pipeline stops cleanly here."""


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline; `keys` are the config subtrees whose values define its fingerprint."""

    name: str
    run: StageFn
    keys: tuple[str, ...] = ()
    dir: Path | None = None  # the stage's own output folder, emptied when a new config redoes the stage


@dataclass
class StageResult:
    name: str
    status: str  # "done" | "skipped" | "stopped"
    seconds: float
    metrics: dict[str, Any] = field(default_factory=dict)
    message: str = ""


def fingerprint(cfg: DictConfig, keys: Iterable[str], upstream: str = "") -> str:
    """Hash of the resolved config subtrees a stage depends on, chained to the stage before it."""
    parts = {key: to_plain(OmegaConf.select(cfg, key)) for key in keys}
    text = json.dumps({"upstream": upstream, "config": parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _record_path(state_dir: Path, name: str) -> Path:
    return state_dir / f"{name}.json"


def read_record(state_dir: Path, name: str) -> dict[str, Any] | None:
    path = _record_path(state_dir, name)
    return json.loads(path.read_text()) if path.is_file() else None


def _write_record(state_dir: Path, name: str, record: dict[str, Any]) -> None:
    write_json(_record_path(state_dir, name), record, indent=2, default=str)


def _prepare_dir(stage: Stage, state_dir: Path, fp: str, forced: bool) -> None:
    """Empty the stage's folder unless this is the same config's attempt resuming; mark the attempt."""
    marker = state_dir / f"{stage.name}.started"
    resuming = not forced and marker.is_file() and marker.read_text().strip() == fp
    if stage.dir is not None and stage.dir.exists() and not resuming:
        log.info("stage %-12s: new configuration or forced: clearing %s", stage.name, stage.dir)
        shutil.rmtree(stage.dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(fp)


def run_stages(stages: list[Stage], cfg: DictConfig, state_dir: Path, force: Iterable[str] = ()) -> list[StageResult]:
    """Run `stages` in order, skipping finished ones; stop early (cleanly) on StopPipeline."""
    names = [s.name for s in stages]
    forced = set(force)
    unknown = forced - set(names)
    if unknown:
        raise MedalError(f"pipeline.force: unknown stage(s) {sorted(unknown)}; choose from {names}")
    results: list[StageResult] = []
    fp = ""
    for stage in stages:
        fp = fingerprint(cfg, stage.keys, upstream=fp)
        record = read_record(state_dir, stage.name)
        done_before = record is not None and record.get("fingerprint") == fp
        if done_before and stage.name not in forced:
            log.info("stage %-12s skipped (done, config unchanged; pipeline.force=[%s] redoes it)",
                     stage.name, stage.name)
            results.append(StageResult(stage.name, "skipped", 0.0, record.get("metrics", {})))
            continue
        _prepare_dir(stage, state_dir, fp, forced=stage.name in forced)
        started = time.perf_counter()
        try:
            metrics = dict(stage.run(cfg) or {})
        except StopPipeline as stop:
            seconds = time.perf_counter() - started
            log.warning("stage %-12s stopped: %s", stage.name, stop)
            results.append(StageResult(stage.name, "stopped", seconds, message=str(stop)))
            return results
        seconds = time.perf_counter() - started
        _write_record(state_dir, stage.name, {"fingerprint": fp, "metrics": metrics, "seconds": seconds})
        log.info("stage %-12s done in %6.1f s", stage.name, seconds)
        results.append(StageResult(stage.name, "done", seconds, metrics))
    return results
