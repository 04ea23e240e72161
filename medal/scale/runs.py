"""Thousands of finished runs for `medal table`, copied from one real run: run folders and offline W&B runs.

`seed_run` trains one small `medal boneage` run (`model=tiny`, two epochs, `logger=[csv,wandb]` offline), so the
copies hold exactly what a run writes: `.hydra/`, `metrics.json`, `csv/metrics.csv` and `wandb/offline-run-*/`.
`run_folders` lays out n copies as a multirun folder (`<out>/<job>/`), each with its config moved to another cell
of Figure 12 (fine-tune mode x enhancement x cohort, then seeds) and its test MAE perturbed. `wandb_runs` copies
the W&B run folder n times with medal's record in it (what `table.source=wandb_offline` reads) rewritten with a new
run id and the same moves.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from medal.atomic import write_json
from medal.models.stages import FINETUNE_MODES

DONE = ".medal/scale_runs.json"
CELLS = [(mode, enhance, cohort) for cohort in ("all", "male", "female") for enhance in ("gan", "none")
         for mode in FINETUNE_MODES]


def cell(k: int) -> tuple[str, str, str, int]:
    """(fine-tune mode, enhancement, cohort, seed) of copy k: Figure 12's 54 cells (every `finetune=` mode), then the
    next seed.

    Examples:
        >>> cell(0), cell(55)
        (('above_fc', 'gan', 'all', 0), ('above_exit', 'gan', 'all', 1))
    """
    mode, enhance, cohort = CELLS[k % len(CELLS)]
    return mode, enhance, cohort, k // len(CELLS)


def seed_run(out: Path, base: Path, quick: bool) -> Path:
    """One finished `medal boneage` run (tiny model, 2 epochs, csv + offline W&B loggers) on the phantoms `base`."""
    if (out / "metrics.json").is_file() and any(out.glob("wandb/offline-run-*/files/medal/run.json")):
        return out
    shutil.rmtree(out, ignore_errors=True)
    args = ["boneage", f"data.root={base}", f"data.work_dir={out.parent / 'work' / 'seed_run'}", "data.images=raw",
            "model=tiny", "data.image_size=64", "finetune=ptl", "trainer.max_epochs=2", "evaluation.bootstrap=50",
            "evaluation.plots=false", "logger=[csv,wandb]", "+experiment_name=figure12", f"hydra.run.dir={out}",
            "trainer.enable_progress_bar=false"]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "MEDAL_ROOT": str(out.parent)}
    print(f"[fixture] one real bone age run (tiny, csv + offline W&B) -> {out}", flush=True)
    subprocess.run([sys.executable, "-m", "medal", *args], env=env, check=True)
    return out


def _done(out: Path, spec: dict) -> bool:
    path = out / DONE
    return path.is_file() and json.loads(path.read_text()) == spec


def _move_config(config: dict, k: int) -> dict:
    mode, enhance, cohort, seed = cell(k)
    config = json.loads(json.dumps(config))
    config.setdefault("finetune", {})["name"] = mode
    config.setdefault("enhance", {})["name"] = enhance
    config.setdefault("cohort", {})["name"] = cohort
    config["seed"] = seed
    return config


def _mae(value: float, k: int) -> float:
    return float(value * (1.0 + 0.05 * np.sin(k)))


def run_folders(seed: Path, out: Path, n: int) -> Path:
    """`out/<k>/` for k < n: copies of the run folder `seed` in Figure 12's cells (config and test MAE moved; the
    per-epoch history shared as a hard link). Reused when complete."""
    spec = {"seed": str(seed.resolve()), "n": int(n), "version": 1}
    if _done(out, spec):
        return out
    print(f"[fixture] {n} run folders -> {out}", flush=True)
    config = yaml.safe_load((seed / ".hydra" / "config.yaml").read_text())
    metrics = json.loads((seed / "metrics.json").read_text())
    for k in range(n):
        job = out / str(k)
        (job / ".hydra").mkdir(parents=True, exist_ok=True)
        (job / "csv").mkdir(exist_ok=True)
        (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(_move_config(config, k), sort_keys=False))
        for name in ("hydra.yaml", "overrides.yaml"):
            if (seed / ".hydra" / name).is_file():
                shutil.copyfile(seed / ".hydra" / name, job / ".hydra" / name)
        moved = {key: (_mae(v, k) if key.startswith("test/mae") and isinstance(v, float) else v)
                 for key, v in metrics.items()}
        (job / "metrics.json").write_text(json.dumps(moved))
        history = job / "csv" / "metrics.csv"
        if not history.exists():
            os.link(seed / "csv" / "metrics.csv", history)
    write_json(out / DONE, spec)
    return out


def wandb_runs(seed: Path, out: Path, n: int) -> Path:
    """`out/<k>/wandb/offline-run-<time>-<id>/` for k < n: the seed run's W&B folder with medal's record in it
    (`medal.wandb_record`) rewritten: a new run id, Figure 12's cells, the test MAE moved; the history and W&B's own
    log shared as hard links. Reused when complete."""
    from medal.wandb_record import RECORD_DIR, RUN_FILE, SUMMARY_FILE

    spec = {"seed": str(seed.resolve()), "n": int(n), "version": 2}
    if _done(out, spec):
        return out
    print(f"[fixture] {n} offline W&B runs -> {out}", flush=True)
    source = next(seed.glob("wandb/offline-run-*"))
    run = json.loads((source / RECORD_DIR / RUN_FILE).read_text())
    summary = json.loads((source / RECORD_DIR / SUMMARY_FILE).read_text())
    stamp = source.name.split("-")[2]
    files = [p for p in source.rglob("*") if p.is_file() and p.name not in (RUN_FILE, SUMMARY_FILE)]
    for k in range(n):
        run_id = f"s{k:07d}"
        target = out / str(k) / "wandb" / f"offline-run-{stamp}-{run_id}"
        if target.is_dir():
            continue
        for path in files:
            rel = path.relative_to(source)
            if rel.parent == Path(".") and rel.name.startswith("run-") and rel.suffix == ".wandb":
                rel = Path(f"run-{run_id}.wandb")  # W&B names its log by the run id
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target / rel)
        write_json(target / RECORD_DIR / RUN_FILE, {**run, "id": run_id, "config": _move_config(run["config"], k)})
        metrics = {key: (_mae(v, k) if key.startswith("test/mae") and isinstance(v, float) else v)
                   for key, v in summary["metrics"].items()}
        write_json(target / RECORD_DIR / SUMMARY_FILE, {**summary, "metrics": metrics})
    write_json(out / DONE, spec)
    return out
