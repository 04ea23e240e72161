"""`medal pipeline`: check-data -> segmentation -> enhancement -> bone age -> CAM -> report, resumably.

The plan (`plan.py`) says which stages run and composes each one's task config; `stages.py` runs them,
skipping finished ones; `report_builder.py` writes the report from their results.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

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
    _, html = build_report(cfg, results, Path(cfg.paths.output_dir))
    log.info("report: %s", html)
    metrics: dict[str, float] = {"pipeline/stopped": 0.0}
    for r in results:
        metrics[f"time/{r.name}_s"] = r.seconds
        for key, value in r.metrics.items():
            if isinstance(value, int | float):
                metrics[f"{r.name}/{key}"] = float(value)
    return metrics
