"""Figure 12 on phantoms, with signal (`make figure12`): 9 fine-tune modes (the five fixed ones and four readings of
PTL) x {enhanced, not} x {all, male, female} x 5 seeds from a source-pretrained backbone, mean ± sd over seeds beside
the noise floor, and which of the paper's orderings hold beyond chance (paired statistics, medal.stats).

    python scripts/figure12_phantoms.py [--root outputs/figure12_ptl] [--n 1000] [--size 64] [--epochs 12]

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
   the four PTL readings (`ptl`: the reference code's stage rates; `ptl_paper`: every stage at the base rate
   with one decay; `ptl_discriminative`: ULMFiT's lr / 2.6^depth; `ptl_restart`: the decay restarted at each
   unfreeze) with `finetune.patience=1` and `finetune.max_epochs_per_stage` = epochs // 5, so that each reaches
   every stage (head, exit, middle, entry, stem) within the epochs; then the five fixed modes. Every run trains
   the same `--epochs` (trainer.max_epochs: the one budget; the report shows the epochs each mode's runs
   logged), with the decay counted per epoch (`scheduler.per=epoch`). Seeds vary the head's initialisation and
   the data order; the split (data.split.seed) and the backbone are the same in every run.
5. The Figure 12 table (mean ± sd over seeds, the noise floor and the mean predictor as rows, the paper's
   numbers beside), Figure 11's loss curves with PTL's stage changes, the point orderings per column against
   the paper's, and the paper's orderings tested (PTL best; all layers < above entry < above middle < above exit
   < above FC in MAE; enhanced < not enhanced; each PTL reading against the reference one): each a paired
   difference per seed and per test image (a paired bootstrap over seeds and images from the runs'
   predictions.csv), Holm-corrected over all of them, and called `holds`, `reversed` or `not resolved`:
   `<root>/figure12_phantoms.md|json`, `<root>/table.md|csv|tex`, `<root>/comparisons.csv`, `<root>/figure11.png`.

Resumable: every task keeps its own record (medal.resume) and a rerun of the same command returns finished
runs' metrics and continues an interrupted one from its last checkpoint, so a stopped run continues where it
stopped (`--table-only` tabulates what has finished). Synthetic hands and a 0.37 M-parameter network: NOT the
paper's RSNA result.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medal.atomic import write_text
from medal.models.stages import FINETUNE_MODES, FIXED_MODES, PACED_MODE, PACED_MODES, STAGES
from medal.tables.folder_runs import RunResult, collect_runs
from medal.tables.make import write_outputs
from medal.tables.paired import Comparison, Pairing, fmt_p, with_holm
from medal.tables.table import FIGURE12, FIGURE12_PAPER, Table, TableSpec, build_table

ENHANCER = "gan_l1"  # the enhanced column; "none" is the RoIs themselves
ENHANCEMENTS = (ENHANCER, "none")
COHORTS = ("all", "male", "female")
PTL_STAGES = len(STAGES)  # head, exit, middle, entry, stem
PAPER_MODES = (*FIXED_MODES, PACED_MODE)  # the rows the paper has numbers for
SWEEPS = ("paced", "fixed")  # sweeps/seed<k>/<sweep>/<job>: the folders this script's runs live in
METRIC, ALPHA = "test/mae", 0.05
RESAMPLES = 20_000  # per-image bootstrap: p >= 1 / 20,001, so ~190 comparisons can pass Holm at 0.05
HOLDS, REVERSED, UNRESOLVED = "holds", "reversed", "not resolved"


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


def epochs_trained(run: RunResult) -> int | None:
    """Epochs a run logged (its budget as spent), from its per-epoch history."""
    if run.history is None or "epoch" not in run.history.columns or run.history.empty:
        return None
    return int(run.history["epoch"].nunique())


@dataclass(frozen=True)
class Claim:
    """One comparison the paper's orderings make: `lower` should have the lower MAE than `higher` (`expected`), or,
    for a PTL reading against the reference one, no direction is claimed (`expected` False)."""

    family: str
    lower: tuple[str, tuple[str, str]]
    higher: tuple[str, tuple[str, str]]
    expected: bool = True


def claims(table: Table) -> list[Claim]:
    """Every comparison of the paper's orderings that the table has both cells of: per column, each PTL reading
    against each fixed mode (PTL best) and the fixed modes' neighbours (more trained blocks, lower MAE); per mode
    and cohort, enhanced against not; and each new PTL reading against the reference code's `ptl`."""
    fixed = list(FIXED_MODES)  # above_fc ... all: more trained blocks along the list
    out = []
    for column in table.column_values:
        for mode in PACED_MODES:
            out += [Claim("PTL best", (mode, column), (f, column)) for f in fixed]
        present = [f for f in fixed if table.cell(f, column).values]  # neighbours among the modes that ran
        out += [Claim("more blocks trained, lower MAE", (present[i + 1], column), (present[i], column))
                for i in range(len(present) - 1)]
        out += [Claim("PTL readings", (mode, column), (PACED_MODE, column), expected=False)
                for mode in PACED_MODES[1:]]
    for mode in FINETUNE_MODES:
        out += [Claim("enhanced < not enhanced", (mode, (ENHANCER, c)), (mode, ("none", c))) for c in COHORTS]
    return [c for c in out if table.cell(*c.lower).values and table.cell(*c.higher).values]


def verdict(comparison: Comparison, expected: bool) -> str:
    """`holds` (beyond chance in the claimed direction), `reversed` (beyond chance, the other way) or
    `not resolved`; without a claimed direction, which side is lower (`lower`, `higher`) or `not resolved`."""
    if not comparison.holds(ALPHA):
        return UNRESOLVED
    lower = comparison.difference.mean < 0
    if not expected:
        return "lower" if lower else "higher"
    return HOLDS if lower else REVERSED


def tested_claims(table: Table, pairing: Pairing) -> list[dict[str, Any]]:
    """Each claim as lower - higher on test MAE (paired per seed and, where predictions.csv allow, per image),
    Holm-corrected over all of them, with its verdict."""
    found = claims(table)
    compared = with_holm([pairing.compare(table.cell(*c.lower).runs, table.cell(*c.higher).runs, METRIC, c.lower,
                                          c.higher) for c in found])
    rows = []
    for claim, comparison in zip(found, compared, strict=True):
        d = comparison.difference
        same_mode = claim.lower[0] == claim.higher[0]  # enhanced against not: one mode, two columns
        label = (f"{claim.lower[0]}: {claim.lower[1][0]} < {claim.higher[1][0]}" if same_mode
                 else f"{claim.lower[0]} < {claim.higher[0]}")
        rows.append({"family": claim.family, "claim": label, "lower": claim.lower[0], "higher": claim.higher[0],
                     "column": " / ".join(claim.lower[1]),
                     "other_column": None if claim.higher[1] == claim.lower[1] else " / ".join(claim.higher[1]),
                     "difference": None if d is None else d.mean, "low": None if d is None else d.low,
                     "high": None if d is None else d.high, "p": None if d is None else d.p,
                     "p_holm": comparison.p_holm, "paired_by": comparison.paired_by, "note": comparison.note,
                     "verdict": verdict(comparison, claim.expected)})
    return rows


def claim_summary(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per claim (family and pair of modes): in how many columns it holds, is reversed, is not resolved.

    Examples:
        >>> rows = [{"family": "f", "claim": "a < b", "verdict": v} for v in ("holds", "holds", "not resolved")]
        >>> claim_summary(rows)
        [{'family': 'f', 'claim': 'a < b', 'holds': 2, 'reversed': 0, 'not resolved': 1, 'lower': 0, 'higher': 0}]
    """
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        key = (row["family"], row["claim"])
        entry = out.setdefault(key, {"family": key[0], "claim": key[1], HOLDS: 0, REVERSED: 0, UNRESOLVED: 0,
                                     "lower": 0, "higher": 0})
        entry[row["verdict"]] += 1
    return list(out.values())


def ptl_best(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per PTL reading and column: does it beat every fixed mode beyond chance (the paper's claim), and which
    fixed modes beat it beyond chance (where PTL still loses)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for row in (r for r in rows if r["family"] == "PTL best"):
        entry = out.setdefault((row["lower"], row["column"]), {"mode": row["lower"], "column": row["column"],
                                                               "beats": [], "loses_to": [], "unresolved": []})
        key = {HOLDS: "beats", REVERSED: "loses_to", UNRESOLVED: "unresolved"}[row["verdict"]]
        entry[key].append(row["higher"])
    for entry in out.values():
        entry["best"] = len(entry["beats"]) == len(FIXED_MODES)
    return list(out.values())


def analyse(table: Table, runs: Sequence[RunResult], pairing: Pairing | None = None) -> dict[str, Any]:
    """Point orderings per column against the paper's, the paper's orderings tested with paired statistics,
    PTL's stage transitions and the epochs every mode spent; every number read from the table's cells (and their
    runs' predictions) or the runs' logs."""
    pairing = pairing or Pairing()
    orders = {}
    for column in table.column_values:
        if not all(table.cell(m, column).values for m in PAPER_MODES):
            continue
        ours = ordering({m: table.cell(m, column).mean for m in FINETUNE_MODES if table.cell(m, column).values})
        paper_column = ("gan" if column[0] == ENHANCER else column[0], column[1])
        paper = ordering({m: FIGURE12_PAPER[(m, *paper_column)] for m in PAPER_MODES})
        orders[" / ".join(column)] = {"ours": ours, "paper": paper,
                                      "spearman": spearman([m for m in ours if m in PAPER_MODES], paper)}
    tested = tested_claims(table, pairing)
    transitions = [{"mode": r.get("finetune.name"), "seed": r.get("seed"), "enhance": r.get("enhance.name"),
                    "cohort": r.get("cohort.name"), "transitions": stage_transitions(r)}
                   for r in runs if r.ok and r.get("finetune.name") in PACED_MODES]
    budget: dict[str, list[int]] = {}
    for run in runs:
        if run.ok and (epochs := epochs_trained(run)) is not None:
            budget.setdefault(str(run.get("finetune.name")), []).append(epochs)
    return {"orderings": orders, "claims": tested, "summary": claim_summary(tested), "ptl_best": ptl_best(tested),
            "ptl_stages": transitions,
            "epochs_trained": {m: sorted(set(v)) for m, v in budget.items()}}


def report(table: Table, facts: dict[str, Any], settings: dict[str, Any], timings: dict[str, float]) -> str:
    """The markdown report: settings, the table, which orderings hold, the comparisons, PTL's stages."""
    lines = ["# Figure 12 on phantoms", "", f"Command: `{settings['command']}`", "",
             "Synthetic hands and a 0.37 M-parameter network on 2 CPU cores: **not** the paper's RSNA result "
             "(the `paper:` columns are).", "", "## Settings", ""]
    lines += [f"- {k}: {v}" for k, v in settings.items() if k != "command"]
    budget = facts["epochs_trained"]
    lines.append("- epochs each mode's runs logged (the budget as spent): " + "; ".join(
        f"{m} {'/'.join(map(str, budget[m]))}" for m in FINETUNE_MODES if m in budget))
    if timings:
        lines += ["", "| step | seconds |", "|---|---:|", *(f"| {k} | {v:.0f} |" for k, v in timings.items())]
    n = sum(r["p_holm"] is not None for r in facts["claims"])
    how = sorted({r["paired_by"].split(" (")[0] + (" x test images, paired bootstrap" if "images" in r["paired_by"]
                                                     else ", sign-flip test") for r in facts["claims"]
                  if r["p_holm"] is not None})
    lines += ["", "## Table", "", table.to_markdown(), "", "## Which of the paper's orderings hold beyond chance", "",
              f"Each claim is a paired difference of test MAE (lower minus higher, months), paired by "
              f"{'; '.join(how) or 'nothing'}; Holm-corrected over all {n} comparisons at {ALPHA}. `holds`: "
              "beyond chance in the paper's direction; `reversed`: beyond chance the other way; `not resolved`: "
              "neither. Counts are columns (enhancement x cohort), or cohorts for enhancement.", "",
              "| claim | comparison | holds | reversed | not resolved |", "|---|---|---:|---:|---:|"]
    for entry in facts["summary"]:
        if entry["family"] == "PTL readings":
            continue
        lines.append(f"| {entry['family']} | {entry['claim']} | {entry[HOLDS]} | {entry[REVERSED]} | "
                     f"{entry[UNRESOLVED]} |")
    lines += ["", "**PTL best?** Per PTL reading and column: the fixed modes it beats beyond chance, and those that "
              "beat it (where PTL still loses).", "", "| PTL reading | column | best (beats all five) | beats | "
              "loses to | not resolved |", "|---|---|---|---|---|---|"]
    for e in facts["ptl_best"]:
        lines.append(f"| {e['mode']} | {e['column']} | {'yes' if e['best'] else 'no'} | {', '.join(e['beats']) or '–'}"
                     f" | {', '.join(e['loses_to']) or '–'} | {', '.join(e['unresolved']) or '–'} |")
    readings = [e for e in facts["summary"] if e["family"] == "PTL readings"]
    if readings:
        lines += ["", "**The PTL readings against the reference code's `ptl`** (columns where the reading's MAE is "
                  "lower / higher beyond chance / not resolved):", ""]
        lines += [f"- {e['claim'].split(' < ')[0]}: lower in {e['lower']}, higher in {e['higher']}, not resolved "
                  f"in {e[UNRESOLVED]}" for e in readings]
    lines += ["", "### Every comparison", "", "| claim | column | lower − higher | 95% CI | p | p (Holm) | verdict | "
              "paired by |", "|---|---|---:|---|---:|---:|---|---|"]
    for r in facts["claims"]:
        column = r["column"] if r["other_column"] is None else f"{r['column']} vs {r['other_column']}"
        if r["difference"] is None:
            lines.append(f"| {r['claim']} | {column} | – | – | – | – | no test: {r['note']} | – |")
            continue
        lines.append(f"| {r['claim']} | {column} | {r['difference']:+.2f} | "
                     f"[{r['low']:+.2f}, {r['high']:+.2f}] | {fmt_p(r['p'])} | {fmt_p(r['p_holm'])} | "
                     f"{r['verdict']} | {r['paired_by']} |")
    lines += ["", "## Point orderings of the modes (best first; Spearman over the paper's six rows)", "",
              "| column | phantoms | paper | Spearman |", "|---|---|---|---:|"]
    for column, o in facts["orderings"].items():
        lines.append(f"| {column} | {' < '.join(o['ours'])} | {' < '.join(o['paper'])} | {o['spearman']:.2f} |")
    lines += ["", "## PTL's stages (epoch: stage, 0 = head only ... 4 = stem too; from the logged `ptl/stage`)", ""]
    lines += [f"- {t['mode']}, seed {t['seed']}, {t['enhance']}, {t['cohort']}: "
              + ", ".join(f"{e}: {s}" for e, s in t["transitions"]) for t in facts["ptl_stages"]]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("outputs/figure12_ptl"))
    parser.add_argument("--n", type=int, default=1000, help="labelled target phantoms (80/10/10 split)")
    parser.add_argument("--phantom-size", type=int, default=256, help="phantom image height (px)")
    parser.add_argument("--roi-size", type=int, default=128, help="RoI size (px)")
    parser.add_argument("--size", type=int, default=64, help="network input size (px)")
    parser.add_argument("--epochs", type=int, default=12, help="fine-tuning epochs per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--cohorts", nargs="+", default=list(COHORTS), choices=COHORTS)
    parser.add_argument("--modes", nargs="+", default=list(FINETUNE_MODES), choices=FINETUNE_MODES,
                        help="fine-tune modes to run (default: all nine; fewer for a quick slice)")
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
    paced, fixed = ([m for m in modes if m in args.modes] for modes in (PACED_MODES, FIXED_MODES))
    for seed in args.seeds:  # seed slowest: a stopped run leaves whole seeds behind it
        sweeps = root / "sweeps" / f"seed{seed}"
        if paced:
            medal(boneage_sweep(common, seed, paced, args.cohorts, sweeps / SWEEPS[0], args.jobs, ptl), root)
        if fixed:
            medal(boneage_sweep(common, seed, fixed, args.cohorts, sweeps / SWEEPS[1], args.jobs, []), root)
    timings[f"{expected_runs(args)} bone age runs"] = time.perf_counter() - step
    timings["total"] = time.perf_counter() - started
    return timings


def expected_runs(args: argparse.Namespace) -> int:
    return len(args.seeds) * len(args.modes) * len(ENHANCEMENTS) * len(args.cohorts)


def sweep_runs(root: Path, seeds: Sequence[int]) -> list[RunResult]:
    """The bone age runs of this script's sweeps (`sweeps/seed<k>/{paced,fixed}/<job>`) for `seeds`; a folder of
    another layout under `sweeps/` (an earlier version's `ptl/`) is left out, so it cannot pair twice."""
    folder = root / "sweeps"
    if not folder.is_dir():
        raise SystemExit(f"{folder}: no sweeps yet; run without --table-only first")
    return [r for r in collect_runs(folder)
            if r.folder is not None and r.folder.parent.name in SWEEPS and r.get("seed") in seeds]


def summarise(args: argparse.Namespace, root: Path, timings: dict[str, float]) -> str:
    """Table, Figure 11, analysis and report from whatever runs the sweeps hold; the report's text."""
    from medal.plotting import save_figure
    from medal.tables.curves import plot_loss_curves

    runs_dir = root / "runs"
    runs = sweep_runs(root, args.seeds)
    table = build_table(runs, figure12_spec(), compare=True)
    write_outputs(table, root)
    fig = plot_loss_curves(runs, where={"enhance.name": ENHANCER, "seed": args.seeds[0]})
    save_figure(fig, root / "figure11.png")
    facts = analyse(table, runs, Pairing(resamples=RESAMPLES))
    write_claims_csv(facts["claims"], root / "comparisons.csv")
    enhancer, pretrain = read_metrics(runs_dir / "enhance"), read_metrics(runs_dir / "pretrain")
    passthrough = read_metrics(runs_dir / "enhance_none")
    finished = sum(r.ok for r in runs)
    settings = {
        "command": "python scripts/figure12_phantoms.py " + " ".join(sys.argv[1:]),
        "runs": f"{finished} finished of {expected_runs(args)}"
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
        "fine-tuning": f"{args.epochs} epochs for every mode (trainer.max_epochs), RMSprop 1e-3 with inverse-time "
                       f"decay 0.05 per epoch, seeds {args.seeds}, one split; modes {', '.join(args.modes)}; every "
                       f"PTL reading: patience 1, at most {ptl_cap(args.epochs)} epochs per stage",
    }
    text = report(table, facts, settings, timings)
    write_text(root / "figure12_phantoms.md", text)
    write_text(root / "figure12_phantoms.json", json.dumps(
        {"settings": settings, "timings": timings, "facts": facts, "enhancer": enhancer, "passthrough": passthrough,
         "pretrain": pretrain,
         "cells": {f"{r}|{'|'.join(c)}": table.cell(r, c).values for r in table.row_values
                   for c in table.column_values}}, indent=1, default=str))
    return text


def write_claims_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Every tested claim at full precision (the report's last table)."""
    keys = ["family", "claim", "lower", "higher", "column", "other_column", "difference", "low", "high", "p", "p_holm",
            "verdict", "paired_by", "note"]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: row[k] for k in keys} for row in rows)
    write_text(path, out.getvalue())


def main() -> None:
    args = parse_args()
    root = args.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    timings = {} if args.table_only else train_all(args, root)
    print(summarise(args, root, timings))


if __name__ == "__main__":
    main()
