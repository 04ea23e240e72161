"""End-to-end rows: `medal pipeline` at full sizes on a few hundred phantoms (a correctness smoke: it must finish,
paced transfer learning must visit every stage, CAM runs on the check's device, every metric must be finite), and
`medal predict` over the whole chain with the bundle that pipeline exported.

The pipeline is the task's own function on its own config (`conf/pipeline.yaml` with the check's stage overrides),
run in this process, in a fresh folder each time.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd

from medal.gpucheck.context import Context
from medal.gpucheck.record import Row
from medal.models.stages import STAGES
from medal.pipeline.plan import compose_task_config
from medal.pipeline.run import run_pipeline
from medal.tasks.runner import task_function

PTL_LOG = "boneage_all/csv/metrics.csv"  # where the bone age stage's CSV logger writes `ptl/stage`


def pipeline_overrides(ctx: Context, root: Path) -> list[str]:
    """The pipeline's config for the smoke: its own phantoms, the check's device and precision on every stage
    that trains, CAM on the same device, and the sizes' short schedules."""
    sizes = ctx.sizes
    stages = {**sizes.pipeline_stages}
    stages["cam"] = (*stages.get("cam", ()), f"cam.device={ctx.accelerator}")
    return [
        f"paths.root={root}", f"paths.output_dir={root / 'run'}", f"pipeline.dir={root / 'stages'}",
        f"data.root={root / 'phantoms'}",
        f"pipeline.phantoms={{n: {sizes.pipeline_phantoms}, seed: 0, image_size: {sizes.pipeline_phantom_size}}}",
        "pipeline.common='" + " ".join(ctx.trainer_overrides()) + "'",
        *[f"pipeline.stages.{task}='{' '.join(values)}'" for task, values in stages.items() if values],
    ]


def not_finite(metrics: dict[str, Any]) -> list[str]:
    """The keys of numeric metrics that are NaN or infinite.

    Examples:
        >>> not_finite({"a": 1.0, "b": float("nan"), "c": "text", "d": float("inf")})
        ['b', 'd']
    """
    return [k for k, v in metrics.items() if isinstance(v, int | float) and not math.isfinite(float(v))]


def gate_off(key: str, value: float) -> bool:
    """Whether `key` is export's OOD threshold at +inf: the smoke's few calibration images are too few for the
    false-reject rate, so the bundle's OOD gate is off (export logs it and gate.json says why) - not a failure.

    Examples:
        >>> gate_off("export/export/ood_threshold", float("inf")), gate_off("export/export/ood_threshold", float("nan"))
        (True, False)
    """
    return key.endswith("/ood_threshold") and value == math.inf


def ptl_stages_visited(stage_dir: Path) -> int:
    """How many PTL stages the bone age stage trained in (from `ptl/stage` in its CSV log)."""
    log = pd.read_csv(stage_dir / PTL_LOG)
    return int(log["ptl/stage"].dropna().max()) + 1


def pipeline_smoke(ctx: Context, deadline: float) -> Row:
    """Seconds of the whole pipeline; failed, naming what, unless every check of the module docstring holds."""
    root = ctx.work / "pipeline"
    shutil.rmtree(root, ignore_errors=True)  # the check's own folder: every run starts from nothing
    cfg = compose_task_config("pipeline", pipeline_overrides(ctx, root))
    started = time.perf_counter()
    metrics = run_pipeline(cfg)
    seconds = time.perf_counter() - started
    problems = []
    if metrics.get("pipeline/stopped"):
        problems.append("the pipeline stopped before its last stage")
    if bad := [k for k in not_finite(metrics) if not gate_off(k, metrics[k])]:
        problems.append(f"non-finite metrics: {', '.join(bad)}")
    visited = ptl_stages_visited(Path(cfg.pipeline.dir))
    if visited < len(STAGES):
        problems.append(f"PTL trained in {visited} of its {len(STAGES)} stages")
    ctx.facts["pipeline_dir"] = Path(cfg.pipeline.dir)
    keys = ("segment/test/dice", "enhance/test/psnr", "boneage_all/test/mae", "cam/cam/exact")
    detail = {"ptl_stages_visited": visited, **{k: metrics.get(k) for k in keys},
              **{k: v for k, v in metrics.items() if k.startswith("time/")}}
    note = (f"Dice {_fmt(metrics.get(keys[0]), 3)}, PSNR {_fmt(metrics.get(keys[1]), 1)} dB, "
            f"MAE {_fmt(metrics.get(keys[2]), 1)} months, PTL stages {visited}/{len(STAGES)}")
    return Row("", seconds, "s", status="failed" if problems else "ok", reason="; ".join(problems), note=note,
               detail=detail)


def _fmt(value: Any, digits: int) -> str:
    return "—" if value is None else f"{float(value):.{digits}f}"


def predict_rate(ctx: Context, deadline: float) -> Row:
    """Images/s of `medal predict` with the pipeline's exported bundle over the pipeline's phantoms."""
    stages = ctx.facts.get("pipeline_dir")
    bundles = sorted(Path(stages).rglob("bundle.json")) if stages else []
    if not bundles:
        raise RuntimeError("no exported bundle (bundle.json) in the pipeline's folder to predict with")
    images = ctx.work / "pipeline" / "phantoms"
    out = ctx.work / "runs" / "predict"
    shutil.rmtree(out, ignore_errors=True)
    cfg = compose_task_config("predict", [f"paths.output_root={ctx.work}", f"paths.output_dir={out}",
                                          f"bundle={bundles[0].parent}", f"input={images}"])
    started = time.perf_counter()
    metrics = task_function("predict")(cfg) or {}
    seconds = time.perf_counter() - started
    predicted = sum(len(pd.read_csv(p)) for p in out.rglob("predictions.csv"))
    if not predicted:
        raise RuntimeError(f"medal predict wrote no predictions.csv rows under {out}")
    return Row("", predicted / seconds, "img/s", note=f"{predicted} images", detail={"images": predicted, "seconds": seconds,
                                                         "bad_metrics": not_finite(dict(metrics))})
