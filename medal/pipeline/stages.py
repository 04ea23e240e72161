"""Resumable stages: a stage is skipped when it finished before with the same configuration.

Each stage's record is a `medal.resume.Marker` at `<state_dir>/<stage>.json` (its parts, fingerprint,
metrics and seconds). The marker decides what a rerun does:

- `done` (finished with the same fingerprint): the stage is skipped and its recorded metrics returned;
- `resume` (an attempt with the same fingerprint started and never finished: a crash, a kill, a
  `StopPipeline`): the stage runs again in its folder, which is kept, so its task resumes (checkpoints,
  an active-learning pool);
- `fresh` (a new configuration, no record, or `force`): the stage's folder (`Stage.dir`) is emptied first,
  so the task can neither resume the old configuration's checkpoints nor return its finished results.

The record is written last and atomically (`Marker.finish`), so a crash never leaves a record that claims
a finished stage. Fingerprints chain: each stage's parts include the previous stage's fingerprint, so
changing an early stage's config redoes everything after it. A stage's parts hold the pipeline keys that
define it and, where the stage gives them (`Stage.settings`), the task config it composes: so an edit of a
config file (`conf/experiment/boneage_cpu.yaml`) redoes the stages that use it, not only a changed override.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medal.errors import MedalError
from medal.resume import Marker, fingerprint

log = logging.getLogger("medal.pipeline")

StageFn = Callable[[DictConfig], dict[str, Any]]


class StopPipeline(Exception):
    """A stage needs something from a person (e.g. oracle answers); the pipeline stops cleanly here."""


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline.

    `keys` are the config subtrees whose values define its fingerprint, and `settings` (when given) returns
    the rest of what does: the composed task config, as plain data; `dir` is the stage's own output folder
    (emptied when a new config redoes the stage); `artifacts` names the files the stage's task declares it
    writes there (name -> path or glob pattern relative to `dir`), for whoever reads them.
    """

    name: str
    run: StageFn
    keys: tuple[str, ...] = ()
    dir: Path | None = None
    artifacts: Mapping[str, str] = field(default_factory=dict)
    settings: Callable[[], Any] | None = None


@dataclass
class StageResult:
    """What a stage left: its status, time, metrics, and where its outputs are (`dir`, `artifacts`)."""

    name: str
    status: str  # "done" | "skipped" | "stopped"
    seconds: float
    metrics: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    dir: Path | None = None
    artifacts: Mapping[str, str] = field(default_factory=dict)

    def files(self, artifact: str) -> list[Path]:
        """The existing files of one declared artefact, sorted (a glob pattern may match several).

        Raises:
            MedalError: the stage's task declares no artefact of that name (a renamed artefact must fail,
                not vanish from the report).
        """
        if artifact not in self.artifacts:
            raise MedalError(f"stage {self.name}: its task declares no artefact {artifact!r}; "
                             f"it declares {sorted(self.artifacts)}")
        if self.dir is None:
            return []
        return sorted(p for p in self.dir.glob(self.artifacts[artifact]) if p.is_file())


def stage_parts(cfg: DictConfig, keys: Iterable[str], upstream: str, settings: Any = None) -> dict[str, Any]:
    """What a stage's result depends on: the config subtrees `keys`, the task's own settings (when known) and
    the previous stage's fingerprint."""
    parts = {"upstream": upstream, "config": {key: OmegaConf.select(cfg, key) for key in keys}}
    if settings is not None:
        parts["settings"] = settings
    return parts


def stage_marker(state_dir: Path, stage: Stage) -> Marker:
    """The stage's record; it owns the stage folder outright, so a folder without a record is cleared too."""
    outputs = [stage.dir] if stage.dir is not None else []
    return Marker(state_dir / f"{stage.name}.json", "rebuild", outputs, what=f"stage {stage.name}",
                  clear_unrecorded=True)


def read_record(state_dir: Path, name: str) -> dict[str, Any] | None:
    """The record of stage `name` when it finished, else None (never run, crashed, or stopped)."""
    record = Marker(state_dir / f"{name}.json").read()
    return record if record is not None and record.get("finished") else None


def run_stages(stages: list[Stage], cfg: DictConfig, state_dir: Path, force: Iterable[str] = ()) -> list[StageResult]:
    """Run `stages` in order, skipping finished ones; stop early (cleanly) on StopPipeline."""
    names = [s.name for s in stages]
    forced = set(force)
    unknown = forced - set(names)
    if unknown:
        raise MedalError(f"pipeline.force: unknown stage(s) {sorted(unknown)}; choose from {names}")
    results: list[StageResult] = []
    upstream = ""
    for stage in stages:
        parts = stage_parts(cfg, stage.keys, upstream, stage.settings() if stage.settings else None)
        upstream = fingerprint(parts)
        marker = stage_marker(state_dir, stage)
        where = {"dir": stage.dir, "artifacts": stage.artifacts}
        if marker.begin(parts, force=stage.name in forced) == "done":
            log.info("stage %-12s skipped (done, config unchanged; pipeline.force=[%s] redoes it)",
                     stage.name, stage.name)
            results.append(StageResult(stage.name, "skipped", 0.0, dict(marker.read()["metrics"]), **where))
            continue
        started = time.perf_counter()
        try:
            metrics = dict(stage.run(cfg) or {})
        except StopPipeline as stop:
            seconds = time.perf_counter() - started
            log.warning("stage %-12s stopped: %s", stage.name, stop)
            results.append(StageResult(stage.name, "stopped", seconds, message=str(stop), **where))
            return results
        seconds = time.perf_counter() - started
        marker.finish(parts, metrics=metrics, seconds=seconds)
        log.info("stage %-12s done in %6.1f s", stage.name, seconds)
        results.append(StageResult(stage.name, "done", seconds, metrics, **where))
    return results
