"""Planted Figure 12 runs for the report tests: what `medal boneage -m experiment=figure12 finetune=above_fc,...,ptl`
(the sweep narrowed to the paper's six rows, 36 jobs) leaves on disk. The figure12 preset also expects the three
other PTL readings' rows, which these folders leave missing."""

from __future__ import annotations

import itertools
from pathlib import Path

import pandas as pd
import yaml

from medal.models.stages import FINETUNE_MODES, FIXED_MODES, PACED_MODE
from medal.runs import write_metrics

MODES = (*FIXED_MODES, PACED_MODE)  # the paper's Figure 12 rows
ENHANCE = ("gan", "none")
COHORTS = ("all", "male", "female")
STAGE_EPOCHS = {"all": (2, 4), "male": (1, 3), "female": (3, 5)}  # where PTL moved on, per cohort
GRID = list(itertools.product(MODES, ENHANCE, COHORTS))  # the sweep's job order (finetune slowest)


def planted_mae(mode: str, enhance: str, cohort: str) -> float:
    """A distinct, non-round value per cell, so a cell read from the wrong run shows."""
    return round(30.0 - 4.0 * FINETUNE_MODES.index(mode) + 0.5 * ENHANCE.index(enhance) + 0.1 * COHORTS.index(cohort)
                 + 0.0123, 4)


def history(mode: str, epochs: int = 6, stage_epochs: tuple[int, ...] = (2, 4)) -> pd.DataFrame:
    """Lightning-CSVLogger-style rows: loss and stage on separate rows per epoch, as `log(on_epoch=True)` does."""
    rows = []
    for epoch in range(epochs):
        rows.append({"epoch": epoch, "step": 10 * epoch + 9, "train/loss": 1.0 / (epoch + 1) + FINETUNE_MODES.index(mode)})
        if mode == "ptl":
            rows.append({"epoch": epoch, "step": 10 * epoch + 9,
                         "ptl/stage": float(sum(epoch >= s for s in stage_epochs))})
    return pd.DataFrame(rows)


def config(mode: str, enhance: str, cohort: str) -> dict:
    return {"task_name": "boneage", "seed": 0, "experiment_name": "figure12", "finetune": {"name": mode},
            "enhance": {"name": enhance}, "cohort": {"name": cohort}, "model": {"name": "tiny"}}


def write_job(job_dir: Path, mode: str, enhance: str, cohort: str, failed: bool = False) -> None:
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config(mode, enhance, cohort)))
    overrides = [f"finetune={mode}", f"enhance={enhance}", f"cohort={cohort}", "model=tiny"]
    (job_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if failed:
        write_metrics(job_dir, {}, status="failed", error="RuntimeError: planted failure")
        return
    mae = planted_mae(mode, enhance, cohort)
    write_metrics(job_dir, {"test/mae": mae, "test/mae_male": mae + 1, "test/mae_female": mae + 2,
                            "val/mae": mae - 1})
    (job_dir / "csv").mkdir()
    history(mode, stage_epochs=STAGE_EPOCHS[cohort]).to_csv(job_dir / "csv" / "metrics.csv", index=False)


def write_multirun(root: Path, failed: set[int] = frozenset(), missing: set[int] = frozenset(),
                   modes: tuple[str, ...] = MODES) -> Path:
    """A multirun folder with one job per grid cell of `modes` (the paper's six rows, or every `finetune=` mode);
    `failed` jobs failed, `missing` jobs never ran."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    grid = GRID if modes == MODES else list(itertools.product(modes, ENHANCE, COHORTS))
    for num, (mode, enhance, cohort) in enumerate(grid):
        if num not in missing:
            write_job(root / str(num), mode, enhance, cohort, failed=num in failed)
    return root
