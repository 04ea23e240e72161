"""`medal pipeline`: check-data -> segmentation -> enhancement -> bone age -> CAM -> report, resumably.

The plan (`plan.py`) says which stages run and composes each one's task config; `stages.py` runs them,
skipping finished ones; `report_builder.py` writes the report from their results. With `pipeline.cv.folds=K`
each cohort's K fold stages are pooled here (`medal.boneage.cv.pool_runs`, beside them: where their last fold
pooled them already, that record is kept) and reported out of fold.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from medal.boneage.cv import Pooled, pool_runs
from medal.pipeline.plan import StageBuilder
from medal.pipeline.report_builder import build_report
from medal.pipeline.stages import run_stages

log = logging.getLogger("medal.pipeline")


def run_pipeline(cfg: DictConfig) -> dict[str, float]:
    """Run every stage not yet done, then write report.md/report.html into the run dir."""
    builder = StageBuilder(cfg)
    results = run_stages(builder.stages(), cfg, builder.root / "state", cfg.pipeline.force)
    for r in results:
        log.info("%-14s %-8s %7.1f s", r.name, r.status, r.seconds)
    stopped = [r for r in results if r.status == "stopped"]
    if stopped:
        log.warning("pipeline stopped at stage %s: %s", stopped[0].name, stopped[0].message)
        log.warning("run the same command again once that is done; finished stages will be skipped")
        return {"pipeline/stopped": 1.0, "pipeline/stages_done": float(len(results) - 1)}
    pools = pooled_folds(builder)
    _, html = build_report(cfg, results, Path(cfg.paths.output_dir), pools)
    log.info("report: %s", html)
    metrics: dict[str, float] = {"pipeline/stopped": 0.0}
    for r in results:
        metrics[f"time/{r.name}_s"] = r.seconds
        for key, value in r.metrics.items():
            if isinstance(value, int | float):
                metrics[f"{r.name}/{key}"] = float(value)
    for cohort, pooled in pools.items():
        metrics |= {f"boneage_{cohort}_cv/{key}": float(value) for key, value in pooled.metrics.items()
                    if isinstance(value, int | float)}
    return metrics


def pooled_folds(builder: StageBuilder) -> dict[str, Pooled]:
    """Each cohort's pooled cross-validation (none without `pipeline.cv.folds`), its fold stages all finished."""
    return {cohort: pool_runs(dirs) for cohort, dirs in builder.fold_stage_dirs().items()}
