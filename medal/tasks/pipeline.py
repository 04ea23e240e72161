"""`medal pipeline`: check-data -> segmentation -> enhancement -> bone age -> CAM -> report, resumably.

Every stage runs a task's own config (`conf/<task>.yaml`), composed here with the pipeline's data set,
seed, `pipeline.common` and `pipeline.stages.<task>` overrides, into a stable folder
`<pipeline.dir>/<stage>/`, so a rerun finds finished stages there and skips them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from medal.config import CONF_DIR
from medal.errors import MedalError
from medal.pipeline.report_builder import build_report
from medal.pipeline.stages import Stage, StageResult, StopPipeline, run_stages
from medal.runs import write_metrics
from medal.tasks.runner import hydra_task, task_function

log = logging.getLogger("medal.pipeline")


def compose_task_config(task_config: str, overrides: list[str]) -> DictConfig:
    """Compose `conf/<task_config>.yaml` with `overrides`, inside a running Hydra app or outside one."""
    if GlobalHydra.instance().is_initialized():
        return compose(config_name=task_config, overrides=overrides)
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        return compose(config_name=task_config, overrides=overrides)


def _applies(cfg: DictConfig, override: str) -> bool:
    """Whether `key=value` names a key or config group present in `cfg` (`+`/`~` prefixes stripped)."""
    key = override.split("=", 1)[0].lstrip("+~")
    return OmegaConf.select(cfg, key, default=_MISSING) is not _MISSING


_MISSING = object()


def _data_choice(cfg: DictConfig) -> str:
    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get("data")
        if choice:
            return str(choice)
    return "rsna" if cfg.data.name == "rsna" else "phantom"


def stop_for_oracle(task_cfg: DictConfig, metrics: dict[str, Any]) -> None:
    """The folder oracle waits for a person's masks: stop the pipeline with where to put them."""
    if metrics.get("al/waiting"):
        rounds = sorted(Path(task_cfg.al.dir).glob("round_*"))
        where = rounds[-1] if rounds else Path(task_cfg.al.dir)
        raise StopPipeline(f"the folder oracle waits for {int(metrics['al/waiting'])} hand masks: save each as "
                           f"<id>_bin.png (white hand on black, the image's size) in {where}, then rerun this command")


def best_checkpoint(run_dir: Path) -> Path:
    """The best-by-val-MAE checkpoint a `medal boneage` run kept (`checkpoints/best-*.ckpt`)."""
    found = sorted((run_dir / "checkpoints").glob("best-*.ckpt"))
    if not found:
        raise MedalError(f"{run_dir}/checkpoints: no best-*.ckpt; rerun the bone age stage "
                         f"(pipeline.force=[{run_dir.name}])")
    return found[-1]


class StageBuilder:
    """Makes the pipeline's stages from its config: one task call each, in a folder of its own."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.root = Path(cfg.pipeline.dir)

    def stage_dir(self, name: str) -> Path:
        return self.root / name

    def shared_overrides(self) -> list[str]:
        data = self.cfg.data
        return [f"data={_data_choice(self.cfg)}", f"data.name={data.name}", f"data.root={data.root}",
                f"data.work_dir={data.work_dir}", f"data.strict={data.strict}", f"++seed={self.cfg.seed}",
                f"paths.root={self.cfg.paths.root}"]

    def task_stage(self, name: str, task: str, task_config: str,
                   extra: list[str] | Callable[[], list[str]] | None = None,
                   keys: tuple[str, ...] = (), uses_data: bool = True,
                   check: Callable[[DictConfig, dict[str, Any]], None] | None = None) -> Stage:
        """A stage that runs task `task` with the pipeline's overrides plus `extra`, in its own folder.

        `pipeline.common` and `pipeline.stages.<task>` overrides are applied where the task's config has
        their key, so e.g. GAN settings don't break the CLAHE stage and `trainer=gpu` skips check-data.
        """
        pipe = self.cfg.pipeline

        def run(cfg: DictConfig) -> dict[str, Any]:
            out = self.stage_dir(name)
            shared = self.shared_overrides() if uses_data else [f"paths.root={self.cfg.paths.root}"]
            fixed = [*shared, *((extra() if callable(extra) else extra) or []), f"paths.output_dir={out}"]
            base = compose_task_config(task_config, fixed)
            optional = [o for o in [*pipe.common, *pipe.stages.get(task, [])] if _applies(base, o)]
            task_cfg = compose_task_config(task_config, [*fixed[:-1], *optional, fixed[-1]])
            metrics = dict(task_function(task)(task_cfg) or {})
            write_metrics(out, metrics)
            if check:
                check(task_cfg, metrics)
            return metrics

        return Stage(name, run, ("data", "seed", "pipeline.common", f"pipeline.stages.{task}", *keys),
                     dir=self.stage_dir(name))

    def stages(self) -> list[Stage]:
        pipe = self.cfg.pipeline
        stages: list[Stage] = []
        if pipe.phantoms:
            p = pipe.phantoms
            stages.append(self.task_stage(
                "phantoms", "phantoms", "phantoms",
                [f"out={self.cfg.data.root}", f"n={p.n}", f"seed={p.seed}", f"image_size={p.image_size}"],
                keys=("pipeline.phantoms",), uses_data=False))
        stages.append(self.task_stage("check_data", "check-data", "check_data"))
        stages.append(self.task_stage("segment", "segment", "segment", check=stop_for_oracle))
        stages.append(self.task_stage("enhance", "enhance", "enhance", [f"enhance={pipe.enhance}"],
                                      keys=("pipeline.enhance",)))
        for baseline in ("clahe", "none"):  # the report compares the enhancer with both on the same pairs
            if pipe.enhance != baseline:
                stages.append(self.task_stage(f"enhance_{baseline}", "enhance", "enhance", [f"enhance={baseline}"]))
        for cohort in pipe.cohorts:
            stages.append(self.task_stage(f"boneage_{cohort}", "boneage", "boneage",
                                          [f"enhance={pipe.enhance}", f"cohort={cohort}"],
                                          keys=("pipeline.enhance",)))
        if pipe.cam_cohort:
            if pipe.cam_cohort not in pipe.cohorts:
                raise MedalError(f"pipeline.cam_cohort={pipe.cam_cohort} is not in pipeline.cohorts="
                                 f"{list(pipe.cohorts)}; add it there or set pipeline.cam_cohort=null")
            run_dir = self.stage_dir(f"boneage_{pipe.cam_cohort}")
            stages.append(self.task_stage(
                "cam", "cam", "cam",
                lambda: [f"ckpt={best_checkpoint(run_dir)}", f"enhance={pipe.enhance}", f"cohort={pipe.cam_cohort}"],
                keys=("pipeline.enhance", "pipeline.cam_cohort")))
        return stages


def run(cfg: DictConfig) -> dict[str, float]:
    """Run every stage not yet done, then write report.md/report.html into the run dir."""
    builder = StageBuilder(cfg)
    results: list[StageResult] = run_stages(builder.stages(), cfg, builder.root / "state", cfg.pipeline.force)
    for r in results:
        log.info("%-14s %-8s %7.1f s", r.name, r.status, r.seconds)
    out_dir = Path(cfg.paths.output_dir)
    stopped = [r for r in results if r.status == "stopped"]
    if stopped:
        log.warning("pipeline stopped at stage %s: %s", stopped[0].name, stopped[0].message)
        log.warning("run the same command again once that is done; finished stages will be skipped")
        return {"pipeline/stopped": 1.0, "pipeline/stages_done": float(len(results) - 1)}
    md, html = build_report(cfg, builder, results, out_dir)
    log.info("report: %s", html)
    metrics: dict[str, float] = {"pipeline/stopped": 0.0}
    for r in results:
        metrics[f"time/{r.name}_s"] = r.seconds
        for key, value in r.metrics.items():
            if isinstance(value, int | float):
                metrics[f"{r.name}/{key}"] = float(value)
    return metrics


main = hydra_task("pipeline")(run)
