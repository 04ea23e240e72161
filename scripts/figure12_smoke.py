"""Figure 12 smoke run (`make figure12-smoke`): the whole 54-run multirun on phantoms (the paper's six rows and
three more readings of PTL), tiny.

phantoms -> segmentation (active learning, tiny) -> GAN enhancer (tiny) -> `medal boneage -m experiment=figure12`
with `model=tiny`, 64 px and 2 epochs, logged to CSV and offline W&B -> `medal table` from the multirun folder
AND from the offline W&B runs; the two tables must be identical. Writes `<root>/figure12_smoke.md` (timings,
table, caption). Every step resumes, so a rerun after a failure redoes only what is missing.

    python scripts/figure12_smoke.py [--root outputs/figure12_smoke] [--n 96] [--epochs 2] [--jobs 1]

This is a plumbing check on synthetic hands with a 0.37 M-parameter model, NOT the paper's RSNA result.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from medal.models.stages import FINETUNE_MODES
from medal.tables.table import FIGURE12_PAPER

ROOT = Path(__file__).resolve().parents[1]


def tiny(task: str, n: int = 96, epochs: int = 2) -> list[str]:
    """Overrides that make a task CPU-small (also used by the experiments' slow test)."""
    return {
        "phantoms": [f"n={n}", "seed=0", "image_size=128"],
        "segment": ["segment.image_size=64", "segment.steps_per_round=20", "segment.batch_size=4",
                    "segment.net.first_conv=8", "segment.net.growth=4", "segment.net.down_layers=[1,1,1]",
                    "segment.net.bottleneck_layers=2", "segment.roi.size=64", "segment.figures=false",
                    f"al.initial={n // 4}", f"al.per_round={n // 8}", f"al.budget={n // 2}", "al.val_limit=16"],
        "enhance": ["enhance.image_size=64", f"enhance.epochs={epochs}", "enhance.generator.depth=2",
                    "enhance.generator.width=8", "enhance.discriminator.width=8", "enhance.batch_size=8"],
        "boneage": ["model=tiny", "data.image_size=64", f"trainer.max_epochs={epochs}", "evaluation.bootstrap=100",
                    "evaluation.plots=false"],
    }[task]


def steps(root: Path, n: int, epochs: int, jobs: int) -> list[tuple[str, list[str]]]:
    """(name, `medal` arguments) of every step; paths all under `root` (MEDAL_ROOT)."""
    sweep = root / "sweep"
    launcher = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"] if jobs > 1 else []
    return [
        ("phantoms", ["phantoms", *tiny("phantoms", n, epochs)]),
        ("segment", ["segment", *tiny("segment", n, epochs)]),
        ("enhance", ["enhance", "enhance=gan", *tiny("enhance", n, epochs)]),
        ("figure12", ["boneage", "-m", "experiment=figure12", *tiny("boneage", n, epochs), "logger=[csv,wandb]",
                      f"hydra.sweep.dir={sweep}", *launcher]),
        ("table (folder)", ["table", f"table.source={sweep}", "table.compare=paper",
                            f"hydra.run.dir={root / 'table_folder'}"]),
        ("table (W&B offline)", ["table", "table.source=wandb_offline", f"table.dir={sweep}",
                                 "table.group=figure12", "table.compare=paper", f"hydra.run.dir={root / 'table_wandb'}"]),
    ]


def medal(args: list[str], root: Path) -> float:
    """Run `medal ARGS` with MEDAL_ROOT=root and W&B offline; seconds taken (raises on failure)."""
    env = {**os.environ, "MEDAL_ROOT": str(root), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    print(f"== medal {' '.join(args)}", flush=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "medal", *args], cwd=root, env=env, check=True)
    return time.perf_counter() - started


def check_cells(table_dir: Path) -> str:
    """The markdown table of a `medal table` run folder, once its own cell counts (metrics.json) say every Figure 12
    cell has a value; exits naming the folder otherwise. The counts, not a search of the markdown: there "—" also
    marks the paper column's cells of the noise-floor and mean-predictor rows, which the paper does not have."""
    counts = json.loads((table_dir / "metrics.json").read_text())
    ok, failed, missing = (counts[f"table/cells_{state}"] for state in ("ok", "failed", "missing"))
    cells = len(FINETUNE_MODES) * len({key[1:] for key in FIGURE12_PAPER})  # every mode's (enhancer, cohort) cells
    if (ok, failed, missing) != (cells, 0, 0):
        raise SystemExit(f"not every Figure 12 cell has a value ({ok} filled, {failed} failed, {missing} missing of "
                         f"{cells}): see {table_dir / 'table.md'}")
    return (table_dir / "table.md").read_text()


def run_smoke(root: Path, n: int = 96, epochs: int = 2, jobs: int = 1) -> dict[str, float]:
    """Run every step, check both tables agree and have 54 filled cells; return seconds per step."""
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    timings = {name: medal(args, root) for name, args in steps(root, n, epochs, jobs)}
    folder, wandb = (root / d / "table.csv" for d in ("table_folder", "table_wandb"))
    if folder.read_text() != wandb.read_text():
        raise SystemExit(f"tables differ: {folder} vs {wandb}")
    table = check_cells(root / "table_folder")
    lines = ["# Figure 12 smoke run", "",
             f"Phantoms (n={n}, 128 px), `model=tiny` at 64 px, {epochs} epochs per run, 54 runs; the same table",
             "was rebuilt from the multirun folder and from the offline W&B runs (identical). A plumbing check on",
             "synthetic hands with a tiny model — not the paper's RSNA result (the `paper:` columns are).", "",
             "| step | seconds |", "|---|---:|", *(f"| {k} | {v:.0f} |" for k, v in timings.items()), "", table]
    (root / "figure12_smoke.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT / "outputs" / "figure12_smoke")
    parser.add_argument("--n", type=int, default=96, help="phantom images")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=1, help="parallel runs (joblib launcher) when > 1")
    args = parser.parse_args()
    run_smoke(args.root, args.n, args.epochs, args.jobs)


if __name__ == "__main__":
    main()
