"""Planted bone age run folders for the paired-statistics tests: each run's metrics.json and predictions.csv agree
(test/mae is the mean of the planted per-image errors), so a table can pair them per seed and per test image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from medal.runs import write_metrics

IMAGES = 60  # test images every planted run scored


def truth(images: int = IMAGES) -> pd.DataFrame:
    """The shared test set: ids, sexes (alternating) and bone ages."""
    ids = [f"img{i:03d}" for i in range(images)]
    return pd.DataFrame({"id": ids, "sex": ["M" if i % 2 else "F" for i in range(images)],
                         "true": np.linspace(20.0, 200.0, images)})


def write_run(job_dir: Path, row: str, seed: int, errors: np.ndarray, cohort: str = "all",
              predictions: bool = True, ids: pd.DataFrame | None = None, enhance: str = "none") -> Path:
    """One finished run of fine-tune mode `row`: absolute errors `errors` (one per test image, months), predictions
    above the truth by them; `predictions=False` leaves no predictions.csv (as a W&B source would)."""
    frame = truth(len(errors)) if ids is None else ids
    (job_dir / ".hydra").mkdir(parents=True)
    config = {"task_name": "boneage", "seed": seed, "finetune": {"name": row}, "cohort": {"name": cohort},
              "enhance": {"name": enhance}}
    (job_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    predicted = frame["true"].to_numpy() + np.asarray(errors, dtype=np.float64)
    male = (frame["sex"] == "M").to_numpy()
    write_metrics(job_dir, {"test/mae": float(np.mean(errors)), "test/mae_male": float(np.mean(errors[male])),
                            "test/mae_female": float(np.mean(errors[~male]))})
    if predictions:
        pd.DataFrame({"id": frame["id"], "sex": frame["sex"], "true": frame["true"], "predicted": predicted,
                      "split": "test"}).to_csv(job_dir / "predictions.csv", index=False)
    return job_dir


def write_rows(root: Path, rows: dict[str, np.ndarray], predictions: bool = True) -> Path:
    """A multirun: `rows[name]` is (seeds, images) of absolute errors; job folders numbered in order."""
    job = 0
    for name, errors in rows.items():
        for seed, per_image in enumerate(errors):
            write_run(root / str(job), name, seed, per_image, predictions=predictions)
            job += 1
    return root
