"""Train a small bone age run, export its bundle and predict with it, as the tasks do (composed configs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpers.hydra_compose import compose_task

#: A regressor on whole radiographs (no segmentation or enhancement in its chain): seconds on a CPU.
RAW_BONEAGE = ["model=tiny", "data.images=raw", "data.image_size=32", "data.augment.enabled=false", "finetune=all",
               "scheduler=null", "optimizer.lr=0.01", "trainer.max_epochs=2", "trainer.enable_progress_bar=false",
               "trainer.precision=32-true", "evaluation.bootstrap=50", "evaluation.plots=false"]


def train_regressor(data_root: Path, root: Path, *extra: str) -> Path:
    """A finished `medal boneage` run on `data_root` (whole radiographs); returns its folder."""
    from medal.boneage.experiment import run_boneage

    run_boneage(compose_task("boneage", [*RAW_BONEAGE, f"data.root={data_root}", *extra], root))
    return root / "run"


def export(runs: list[Path], root: Path, *extra: str) -> tuple[Path, dict[str, float]]:
    """`medal export` of `runs`; returns the bundle folder and the metrics."""
    from medal.bundle.export import run_export

    listed = ",".join(f"'{r}'" for r in runs)
    metrics = run_export(compose_task("export", [f"export.regressors=[{listed}]", *extra], root))
    return root / "run" / "bundle", metrics


def predict(bundle: Path, source: Path, root: Path, out: Path, *extra: str) -> dict[str, Any]:
    """`medal predict` of `source` with `bundle` into `out`."""
    from medal.predict.run import run_predict

    cfg = compose_task("predict", [f"bundle={bundle}", f"input={source}", f"paths.output_dir={out}",
                                   "trainer.enable_progress_bar=false", *extra], root)
    return run_predict(cfg)
