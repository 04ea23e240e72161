"""Figure 12 on phantoms, with signal (`make figure12`): 6 fine-tune modes x {enhanced, not} x {all, male, female}
x 3 seeds from a source-pretrained backbone, mean ± sd over seeds beside the noise floor.

    python scripts/figure12_phantoms.py [--root outputs/figure12_phantoms] [--n 1000] [--size 64] [--epochs 12]

Every step is a `medal` command in `<root>` (MEDAL_ROOT=root), one torch thread per process:

1. `medal phantoms`: the labelled target set (default acquisition profile, `--n` images, seed 0).
2. Hand RoIs cut with the true masks (`medal.data.phantom.rois.true_mask_rois`: what a perfect segmentation
   writes, so the table measures enhancement and fine-tuning, not the segmenter) and their gold-standard RoIs.
3. In parallel: `medal enhance enhance=gan_l1` (pix2pix's L1 loss, the enhancer that beats pass-through:
   enhancement benchmark of docs/results.md) trained on (RoI, gold) pairs and run on every RoI; and
   `medal pretrain pretrain=supervised`: age + sex on a source phantom set rendered with another acquisition
   profile (conf/pretrain/supervised.yaml). Supervised source pretraining, not SSL on the target images,
   because that is the paper's situation (ImageNet weights: another domain and another task, no target image
   seen) and because its features were the better frozen features in scripts/bench_pretrain.py.
4. Per seed, two multiruns of `medal boneage -m experiment=figure12` (joblib launcher, `--jobs` processes):
   the five fixed modes, then PTL with `finetune.patience=1` and `finetune.max_epochs_per_stage` = epochs // 5,
   so that it reaches every stage (head, exit, middle, entry, stem) within the epochs; its per-epoch stage is
   logged (`ptl/stage`) and its transitions reported. Seeds vary initialisation of the head and the data
   order; the split (data.split.seed) and the backbone are the same in every run.
5. The Figure 12 table (mean ± sd over seeds, the noise floor and the mean predictor as rows, the paper's
   numbers beside), Figure 11's loss curves with PTL's stage changes, the ordering of the modes per column
   against the paper's, and each enhanced-minus-not difference against the seeds' spread:
   `<root>/figure12_phantoms.md|json`, `<root>/table.md|csv|tex`, `<root>/figure11.png`.

Resumable: every task keeps its own record (medal.resume) and a rerun of the same command returns finished
runs' metrics and continues an interrupted one from its last checkpoint, so a stopped run continues where it
stopped. Synthetic hands and a 0.37 M-parameter network: NOT the paper's RSNA result.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medal.atomic import write_text
from medal.models.stages import FINETUNE_MODES, FIXED_MODES, PACED_MODE
from medal.tables.folder_runs import RunResult, collect_runs
from medal.tables.make import write_outputs
from medal.tables.table import FIGURE12, FIGURE12_PAPER, Table, TableSpec, build_table

ENHANCER = "gan_l1"  # the enhanced column; "none" is the RoIs themselves
ENHANCEMENTS = (ENHANCER, "none")
COHORTS = ("all", "male", "female")
PTL_STAGES = 5  # head, exit, middle, entry, stem (medal.models.stages)
HEAD_ONLY = next(iter(FIXED_MODES))  # above_fc: what PTL equalled when it never left its first stage


def medal(args: list[str], root: Path, wait: bool = True) -> subprocess.Popen | None:
    """Run `medal ARGS` in `root` (MEDAL_ROOT=root, one torch thread); raise when it fails. The task itself
    decides what is already done (its medal.resume record), so a rerun repeats nothing finished."""
    env = {**os.environ, "MEDAL_ROOT": str(root), "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    print(f"== medal {' '.join(args)}", flush=True)
    proc = subprocess.Popen([sys.executable, "-m", "medal", *args], cwd=root, env=env)
    if not wait:
        return proc
    if proc.wait() != 0:
        raise SystemExit(f"medal {args[0]} failed (exit {proc.returncode}); rerun the same command to resume")
    return None


def wait_all(procs: dict[str, subprocess.Popen]) -> None:
    """Wait for every started task; name the ones that failed (the others' work is kept)."""
    failed = [name for name, proc in procs.items() if proc.wait() != 0]
    if failed:
        raise SystemExit(f"medal {', '.join(failed)} failed; rerun the same command to resume")


def read_metrics(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "metrics.json").read_text())


def ptl_cap(epochs: int) -> int:
    """Epochs PTL may stay in one stage: epochs // 5 lets it reach the fifth stage (stem) by epoch 4 * cap.

    Examples:
        >>> ptl_cap(12), ptl_cap(4), ptl_cap(20)
        (2, 1, 4)
    """
    return max(1, epochs // PTL_STAGES)


def boneage_sweep(common: list[str], seed: int, modes: Sequence[str], cohorts: Sequence[str], sweep: Path,
                  jobs: int, ptl: list[str]) -> list[str]:
    """`medal boneage -m experiment=figure12` arguments for one seed and a set of modes."""
    launcher = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"] if jobs > 1 else []
    return ["boneage", "-m", "experiment=figure12", *common, f"seed={seed}", f"finetune={','.join(modes)}",
            f"enhance={','.join(ENHANCEMENTS)}", f"cohort={','.join(cohorts)}", *ptl,
            f"hydra.sweep.dir={sweep}", *launcher]


# -- analysis of the finished runs ------------------------------------------------------------------------
def figure12_spec() -> TableSpec:
    """The Figure 12 preset with `gan_l1` as the enhanced column (the paper's numbers moved with it)."""
    published = {(mode, ENHANCER if enh == "gan" else enh, cohort): v
                 for (mode, enh, cohort), v in FIGURE12_PAPER.items()}
    return dataclasses.replace(
        FIGURE12, orders={**FIGURE12.orders, "enhance.name": ENHANCEMENTS},
        labels={**FIGURE12.labels, ENHANCER: "enhanced"}, published=published, decimals=2,
        title="Figure 12 on phantoms: test MAE (months), mean ± sd over seeds")


def ordering(values: dict[str, float]) -> list[str]:
    """Modes from best (lowest MAE) to worst.

    Examples:
        >>> ordering({"all": 9.1, "ptl": 7.7, "above_fc": 28.2})
        ['ptl', 'all', 'above_fc']
    """
    return sorted(values, key=lambda mode: values[mode])


def spearman(a: Sequence[str], b: Sequence[str]) -> float:
    """Spearman rank correlation of two orderings of the same items (1: identical, -1: reversed).

    Examples:
        >>> spearman(["a", "b", "c"], ["a", "b", "c"]), spearman(["a", "b", "c"], ["c", "b", "a"])
        (1.0, -1.0)
    """
    n = len(a)
    rank_b = {item: i for i, item in enumerate(b)}
    return 1.0 - 6.0 * sum((i - rank_b[item]) ** 2 for i, item in enumerate(a)) / (n * (n * n - 1))


def stage_transitions(run: RunResult) -> list[tuple[int, int]]:
    """(epoch, stage) at the first epoch and at every change of PTL's logged `ptl/stage`."""
    if run.history is None or "ptl/stage" not in run.history.columns:
        return []
    stages = run.history[["epoch", "ptl/stage"]].dropna().sort_values("epoch")
    out: list[tuple[int, int]] = []
    for epoch, stage in zip(stages["epoch"], stages["ptl/stage"], strict=True):
        if not out or out[-1][1] != int(stage):
            out.append((int(epoch), int(stage)))
    return out


def analyse(table: Table, runs: Sequence[RunResult]) -> dict[str, Any]:
    """Orderings per column against the paper's, enhanced-minus-not per mode and cohort, PTL against above FC,
    and PTL's stage transitions; every number read from the table's cells or the runs' logs."""
    columns = [c for c in table.column_values if all(table.cell(m, c).values for m in FINETUNE_MODES)]
    orders = {}
    for column in columns:
        ours = ordering({m: table.cell(m, column).mean for m in FINETUNE_MODES})
        paper_column = ("gan" if column[0] == ENHANCER else column[0], column[1])
        paper = ordering({m: FIGURE12_PAPER[(m, *paper_column)] for m in FINETUNE_MODES})
        orders[" / ".join(column)] = {"ours": ours, "paper": paper, "spearman": spearman(ours, paper)}
    diffs = []
    for mode in FINETUNE_MODES:
        for cohort in COHORTS:
            enhanced, plain = table.cell(mode, (ENHANCER, cohort)), table.cell(mode, ("none", cohort))
            if not (enhanced.values and plain.values):
                continue
            spreads = [c.std for c in (enhanced, plain) if c.std is not None]  # none with a single seed
            spread = max(spreads) if spreads else None
            diff = enhanced.mean - plain.mean
            diffs.append({"mode": mode, "cohort": cohort, "enhanced": enhanced.mean, "not_enhanced": plain.mean,
                          "difference": diff, "seed_sd": spread,
                          "beyond_spread": None if spread is None else abs(diff) > spread})
    ptl_vs_fc = []
    for column in table.column_values:
        ptl, fc = table.cell(PACED_MODE, column), table.cell(HEAD_ONLY, column)
        if ptl.values and fc.values:
            ptl_vs_fc.append({"column": " / ".join(column), "ptl": ptl.mean, "above_fc": fc.mean,
                              "difference": ptl.mean - fc.mean,
                              "seed_sd": max((c.std for c in (ptl, fc) if c.std is not None), default=None)})
    transitions = [{"seed": r.get("seed"), "enhance": r.get("enhance.name"), "cohort": r.get("cohort.name"),
                    "transitions": stage_transitions(r)}
                   for r in runs if r.ok and r.get("finetune.name") == PACED_MODE]
    return {"orderings": orders, "enhancement": diffs, "ptl_vs_above_fc": ptl_vs_fc, "ptl_stages": transitions}


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def report(table: Table, facts: dict[str, Any], settings: dict[str, Any], timings: dict[str, float]) -> str:
    """The markdown report: settings, the table, orderings, differences and PTL's stages."""
    lines = ["# Figure 12 on phantoms", "", f"Command: `{settings['command']}`", "",
             "Synthetic hands and a 0.37 M-parameter network on 2 CPU cores: **not** the paper's RSNA result "
             "(the `paper:` columns are).", "", "## Settings", ""]
    lines += [f"- {k}: {v}" for k, v in settings.items() if k != "command"]
    if timings:
        lines += ["", "| step | seconds |", "|---|---:|", *(f"| {k} | {v:.0f} |" for k, v in timings.items())]
    lines.append("")
    lines += ["## Table", "", table.to_markdown(), "", "## Ordering of the modes (best first)", "",
              "| column | phantoms | paper | Spearman |", "|---|---|---|---:|"]
    for column, o in facts["orderings"].items():
        lines.append(f"| {column} | {' < '.join(o['ours'])} | {' < '.join(o['paper'])} | {o['spearman']:.2f} |")
    lines += ["", "## Enhanced minus not enhanced (months; negative: enhancement helped)", "",
              "| mode | cohort | enhanced | not enhanced | difference | larger seed sd | beyond the spread |",
              "|---|---|---:|---:|---:|---:|---|"]
    for d in facts["enhancement"]:
        lines.append(f"| {d['mode']} | {d['cohort']} | {d['enhanced']:.2f} | {d['not_enhanced']:.2f} | "
                     f"{d['difference']:+.2f} | {_num(d['seed_sd'])} | "
                     f"{'n/a' if d['beyond_spread'] is None else 'yes' if d['beyond_spread'] else 'no'} |")
    lines += ["", "## PTL minus above FC (months)", "", "| column | PTL | above FC | difference | larger seed sd |",
              "|---|---:|---:|---:|---:|"]
    lines += [f"| {d['column']} | {d['ptl']:.2f} | {d['above_fc']:.2f} | {d['difference']:+.2f} | "
              f"{_num(d['seed_sd'])} |" for d in facts["ptl_vs_above_fc"]]
    lines += ["", "## PTL's stages (epoch: stage, 0 = head only ... 4 = stem too; from the logged `ptl/stage`)", ""]
    lines += [f"- seed {t['seed']}, {t['enhance']}, {t['cohort']}: "
              + ", ".join(f"{e}: {s}" for e, s in t["transitions"]) for t in facts["ptl_stages"]]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("outputs/figure12_phantoms"))
    parser.add_argument("--n", type=int, default=1000, help="labelled target phantoms (80/10/10 split)")
    parser.add_argument("--phantom-size", type=int, default=256, help="phantom image height (px)")
    parser.add_argument("--roi-size", type=int, default=128, help="RoI size (px)")
    parser.add_argument("--size", type=int, default=64, help="network input size (px)")
    parser.add_argument("--epochs", type=int, default=12, help="fine-tuning epochs per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cohorts", nargs="+", default=list(COHORTS), choices=COHORTS)
    parser.add_argument("--source-n", type=int, default=2000, help="source phantoms (another profile)")
    parser.add_argument("--pretrain-epochs", type=int, default=20)
    parser.add_argument("--gan-epochs", type=int, default=6)
    parser.add_argument("--gan-size", type=int, default=96, help="the enhancer's working size (px)")
    parser.add_argument("--jobs", type=int, default=2, help="parallel one-thread training processes")
    parser.add_argument("--table-only", action="store_true",
                        help="train nothing: tabulate the runs finished so far (a stopped or running sweep)")
    return parser.parse_args(argv)


def train_all(args: argparse.Namespace, root: Path) -> dict[str, float]:
    """Every `medal` task of the figure, in order; seconds per step."""
    target, work, runs_dir = root / "data" / "target", root / "work", root / "runs"
    timings: dict[str, float] = {}
    started = time.perf_counter()
    medal(["phantoms", f"out={target}", f"n={args.n}", "seed=0", f"image_size={args.phantom_size}",
           f"hydra.run.dir={runs_dir / 'phantoms'}"], root)
    from medal.data.phantom.rois import true_mask_rois

    true_mask_rois(target, work, args.roi_size, progress=False)
    timings["phantoms + RoIs"] = time.perf_counter() - started

    step = time.perf_counter()
    data = [f"data.root={target}", f"data.work_dir={work}", "trainer.enable_progress_bar=false"]
    procs = {
        "enhance": medal(["enhance", f"enhance={ENHANCER}", *data, f"enhance.image_size={args.gan_size}",
                          f"enhance.epochs={args.gan_epochs}", "enhance.generator.depth=3",
                          "enhance.generator.width=16", "enhance.discriminator.width=16", "enhance.batch_size=8",
                          f"hydra.run.dir={runs_dir / 'enhance'}"], root, wait=False),
        "pretrain": medal(["pretrain", "pretrain=supervised", "model=tiny", *data, f"data.images={work / 'roi'}",
                           f"data.image_size={args.size}", "trainer.precision=32-true",
                           f"pretrain.source.root={root / 'data' / 'source'}", f"pretrain.source.n={args.source_n}",
                           f"pretrain.source.image_size={args.phantom_size}",
                           f"trainer.max_epochs={args.pretrain_epochs}", f"hydra.run.dir={runs_dir / 'pretrain'}"],
                          root, wait=False),
    }
    wait_all(procs)
    medal(["enhance", "enhance=none", *data, f"enhance.image_size={args.gan_size}",  # pass-through, same pairs
           f"hydra.run.dir={runs_dir / 'enhance_none'}"], root)
    timings["enhancer + source pretraining (in parallel)"] = time.perf_counter() - step

    step = time.perf_counter()
    weights = runs_dir / "pretrain" / "backbone.safetensors"
    common = ["model=tiny", "model.sex_input=true", f"model.weights={weights}", *data,
              f"data.image_size={args.size}", f"trainer.max_epochs={args.epochs}", "trainer.precision=32-true",
              "scheduler.per=epoch", "logger=csv", "evaluation.plots=false", "evaluation.bootstrap=200"]
    ptl = ["finetune.patience=1", f"finetune.max_epochs_per_stage={ptl_cap(args.epochs)}"]
    for seed in args.seeds:  # seed slowest: a stopped run leaves whole seeds behind it
        sweeps = root / "sweeps" / f"seed{seed}"
        medal(boneage_sweep(common, seed, [PACED_MODE], args.cohorts, sweeps / "ptl", args.jobs, ptl), root)
        medal(boneage_sweep(common, seed, FIXED_MODES, args.cohorts, sweeps / "fixed", args.jobs, []), root)
    timings[f"{len(args.seeds) * len(FINETUNE_MODES) * 2 * len(args.cohorts)} bone age runs"] = \
        time.perf_counter() - step
    timings["total"] = time.perf_counter() - started
    return timings


def summarise(args: argparse.Namespace, root: Path, timings: dict[str, float]) -> str:
    """Table, Figure 11, analysis and report from whatever runs the sweeps hold; the report's text."""
    from medal.plotting import save_figure
    from medal.tables.curves import plot_loss_curves

    runs_dir = root / "runs"
    runs = [r for r in collect_runs(root / "sweeps") if r.get("seed") in args.seeds]  # the seeds asked for
    table = build_table(runs, figure12_spec(), compare=True)
    write_outputs(table, root)
    fig = plot_loss_curves(runs, where={"enhance.name": ENHANCER, "seed": args.seeds[0]})
    save_figure(fig, root / "figure11.png")
    facts = analyse(table, runs)
    enhancer, pretrain = read_metrics(runs_dir / "enhance"), read_metrics(runs_dir / "pretrain")
    passthrough = read_metrics(runs_dir / "enhance_none")
    finished = sum(r.ok for r in runs)
    settings = {
        "command": "python scripts/figure12_phantoms.py " + " ".join(sys.argv[1:]),
        "runs": f"{finished} finished of {len(args.seeds) * len(FINETUNE_MODES) * 2 * len(args.cohorts)}"
                + (" (`--table-only`: tabulated as the sweeps stood)" if args.table_only else ""),
        "target": f"{args.n} phantoms at {args.phantom_size} px (seed 0), RoIs cut with the true masks at "
                  f"{args.roi_size} px; network input {args.size} px; cohorts {', '.join(args.cohorts)}",
        "backbone": f"`model=tiny` (timm test_resnet), sex input, pretrained with `medal pretrain "
                    f"pretrain=supervised` (age + sex) on {args.source_n} source phantoms of another acquisition "
                    f"profile, {args.pretrain_epochs} epochs: source val MAE "
                    f"{pretrain.get('source/val_mae', math.nan):.1f} months, sex accuracy "
                    f"{pretrain.get('source/val_sex_accuracy', math.nan):.2f}; kNN probe on the target's RoIs "
                    f"{pretrain.get('probe/val_mae', math.nan):.1f} (before pretraining "
                    f"{pretrain.get('probe/val_mae_before', math.nan):.1f})",
        "enhancer": f"`enhance={ENHANCER}` at {args.gan_size} px, {args.gan_epochs} epochs (depth 3, width 16): "
                    f"held-out PSNR {enhancer['test/psnr']:.2f} dB, SSIM {enhancer['test/ssim']:.3f} against "
                    f"pass-through {passthrough['test/psnr']:.2f} dB, {passthrough['test/ssim']:.3f}",
        "fine-tuning": f"{args.epochs} epochs, RMSprop 1e-3 with inverse-time decay 0.05 per epoch, seeds "
                       f"{args.seeds}, one split; PTL: patience 1, at most {ptl_cap(args.epochs)} epochs per stage",
    }
    text = report(table, facts, settings, timings)
    write_text(root / "figure12_phantoms.md", text)
    write_text(root / "figure12_phantoms.json", json.dumps(
        {"settings": settings, "timings": timings, "facts": facts, "enhancer": enhancer, "passthrough": passthrough,
         "pretrain": pretrain,
         "cells": {f"{r}|{'|'.join(c)}": table.cell(r, c).values for r in table.row_values
                   for c in table.column_values}}, indent=1, default=str))
    return text


def main() -> None:
    args = parse_args()
    root = args.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    timings = {} if args.table_only else train_all(args, root)
    print(summarise(args, root, timings))


if __name__ == "__main__":
    main()
