"""Benchmark: do the conformal intervals hold their coverage, marginally, per sex and per age band?

    python scripts/bench_coverage.py [--n 2400] [--size 128] [--image-size 64] [--epochs 30] [--draws 20]

1. Generates `n` phantoms (resumable; official layout: 70 % train, 5 % val, 25 % test) under `<root>/phantoms`.
2. Trains one bone age regressor on the whole radiographs with the CPU recipe (`experiment=boneage_cpu` at
   `--image-size` px; `data.split.calibration=0.3`): about 1,080 training images, 540 calibration, 600 test.
3. Exports its bundle (`medal export`: the chain's estimates on the calibration images) and predicts the test
   images once (`medal predict`). Each step is reused when its folder holds it finished.
4. Pools the calibration and test images (their estimates, sexes, references) and draws `--draws` random halves:
   one half calibrates, the other is scored, at 80, 90 and 95 % nominal coverage, by every method of
   `medal.predict.conformal.METHODS` (`sex` is today's), with the bundle's own age band edges and difficulty
   curve. Coverage is the mean over draws (its spread over draws in the JSON).

Goals (issue 23): marginal coverage within +-2 points of nominal; per sex and per band (5 bands of the estimated
age; bands of the true age reported too) within +-5 points. Widths are reported against `sex` in the same run.
Writes outputs/bench/coverage.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medal.bench import BenchRow, write_bench
from medal.boneage.experiment import run_boneage
from medal.bundle.export import run_export
from medal.data.phantom import generate_dataset
from medal.data.rsna import read_index
from medal.data.split import SPLIT_FILE, read_split
from medal.pipeline.plan import compose_task_config
from medal.predict.conformal import METHODS, IntervalTable, band_of
from medal.predict.rows import PREDICTIONS, read_rows
from medal.predict.run import run_predict
from medal.runs import write_metrics

log = logging.getLogger("medal.bench")

COVERAGES = (0.8, 0.9, 0.95)
GOALS = {"marginal": 0.02, "sex": 0.05, "band": 0.05}


def train_export_predict(root: Path, args: argparse.Namespace) -> tuple[dict, pd.DataFrame, dict[str, float]]:
    """The bundle's calibration table, the test predictions and how long each step took (0 when reused)."""
    took = {}
    data = [f"data.root={root / 'phantoms'}", f"data.work_dir={root / 'work'}", f"paths.root={Path.cwd()}"]
    started = time.perf_counter()
    run = root / "run"
    cfg = compose_task_config("boneage", [
        "experiment=boneage_cpu", *data, f"paths.output_dir={run}", "data.images=raw",
        f"data.image_size={args.image_size}", f"trainer.max_epochs={args.epochs}", "data.split.calibration=0.3",
        "trainer.enable_progress_bar=false", "evaluation.plots=false", "logger=csv"])
    metrics = run_boneage(cfg)
    write_metrics(run, metrics)
    took["train"] = time.perf_counter() - started
    started = time.perf_counter()
    export = compose_task_config("export", [f"export.regressors=['{run}']", f"paths.output_dir={root / 'export'}",
                                            f"paths.root={Path.cwd()}", "export.batch_size=64"])
    run_export(export)
    calibration = json.loads((root / "export" / "bundle" / "calibration.json").read_text())
    took["export"] = time.perf_counter() - started
    started = time.perf_counter()
    roles = read_split(run / SPLIT_FILE)
    index = read_index(root / "phantoms", strict=True)
    test = index[index["id"].isin(set(roles.index[roles == "test"]))]
    cases = root / "test.csv"
    test.assign(male=test["male"].astype(int))[["id", "path", "male", "boneage"]].to_csv(cases, index=False)
    predict = compose_task_config("predict", [f"bundle={root / 'export' / 'bundle'}", f"input={cases}",
                                              f"paths.output_dir={root / 'predict'}", f"paths.root={Path.cwd()}",
                                              "predict.cam=false", "predict.batch_size=64",
                                              "trainer.enable_progress_bar=false"])
    run_predict(predict)
    took["predict"] = time.perf_counter() - started
    rows = read_rows(root / "predict" / PREDICTIONS)
    log.info("trained (test MAE %.2f), calibrated on %d, predicted %d test images", metrics["test/mae"],
             calibration["images"], len(rows))
    return calibration, rows, {**took, "test_mae": metrics["test/mae"]}


def pool_of(calibration: dict, rows: pd.DataFrame) -> pd.DataFrame:
    """One table of every calibration and test image: estimate (no TTA, true sex), male, reference."""
    cases = calibration["cases"]
    cal = pd.DataFrame({"id": cases["id"], "estimate": cases["known"]["none"], "male": cases["male"],
                        "reference": cases["reference"], "source": "calibration"})
    ok = rows[rows["status"] == "ok"]
    test = pd.DataFrame({"id": ok["id"], "estimate": ok["boneage"].to_numpy(float),
                         "male": (ok["sex"] == "M").astype(float).to_numpy(), "reference": ok["reference"].to_numpy(float),
                         "source": "test"})
    return pd.concat([cal, test], ignore_index=True).dropna(subset=["estimate", "reference"])


def resample(pool: pd.DataFrame, settings: dict, draws: int, seed: int) -> dict:
    """Coverage and width of every method at every nominal coverage, over `draws` random calibration/test halves.

    Returns {method: {coverage: {"all", "male", "female", "band_est_k", "band_true_k", "width": [per draw]}}}.
    """
    edges = settings["edges"]
    rng = np.random.default_rng(seed)
    out: dict = {m: {c: {} for c in COVERAGES} for m in METHODS}
    n = len(pool)
    for _ in range(draws):
        order = rng.permutation(n)
        cal, test = pool.iloc[order[: n // 2]], pool.iloc[order[n // 2:]]
        male = test["male"].to_numpy()
        groups = np.where(male >= 0.5, "male", "female")
        est, ref = test["estimate"].to_numpy(), test["reference"].to_numpy()
        cells = {"all": np.ones(len(test), bool), "male": male >= 0.5, "female": male < 0.5}
        cells.update({f"band_est_{b}": band_of(est, edges) == b for b in range(len(edges) + 1)})
        cells.update({f"band_true_{b}": band_of(ref, edges) == b for b in range(len(edges) + 1)})
        for method in METHODS:
            table = IntervalTable(cal["male"].to_numpy(), cal["reference"].to_numpy(), cal["estimate"].to_numpy(),
                                  None, method, edges, settings["difficulty"], int(settings["min_cohort"]),
                                  int(settings["min_band"]))
            for coverage in COVERAGES:
                radius, _ = table.radius(est, groups, coverage)
                inside = np.abs(est - ref) <= radius
                record = out[method][coverage]
                for name, members in cells.items():
                    record.setdefault(name, []).append(float(inside[members].mean()) if members.any() else np.nan)
                record.setdefault("width", []).append(float(np.mean(2 * radius)))
                for b in range(len(edges) + 1):  # how the width follows the estimated age
                    members = cells[f"band_est_{b}"]
                    record.setdefault(f"width_est_{b}", []).append(float(np.mean(2 * radius[members]))
                                                                    if members.any() else np.nan)
    return out


def rows_of(results: dict) -> tuple[list[BenchRow], list[str]]:
    """Bench rows (coverage against nominal and against `sex`, widths against `sex`) and the goals missed."""
    rows, missed = [], []
    for coverage in COVERAGES:
        base = results["sex"][coverage]
        for method in METHODS:
            r = results[method][coverage]
            mean = {k: float(np.nanmean(v)) for k, v in r.items()}
            spread = {k: float(np.nanstd(v)) for k, v in r.items()}
            gap = {k: v - coverage for k, v in mean.items() if not k.startswith("width")}
            worst = {kind: max((k for k in gap if k.startswith(prefix)), key=lambda k: abs(gap[k]))
                     for kind, prefix in (("sex", ("male", "female")), ("band", "band_est_"),
                                          ("true band", "band_true_"))}
            for kind, limit in (("marginal", GOALS["marginal"]), ("sex", GOALS["sex"]), ("band", GOALS["band"])):
                key = "all" if kind == "marginal" else worst[kind]
                if abs(gap[key]) > limit:
                    missed.append(f"{method} at {coverage:.0%}: {key} {mean[key]:.3f} ({gap[key]:+.3f}, goal "
                                  f"+-{limit:.2f})")
            extra = {"nominal": coverage, "mean": mean, "sd_over_draws": spread}
            rows.append(BenchRow(f"coverage at {coverage:.0%}, {method}, all images (goal +-2 points)", mean["all"], "",
                                 "sex (today's)", float(np.nanmean(base["all"])), extra=extra))
            for kind in ("sex", "band", "true band"):
                key = worst[kind]
                rows.append(BenchRow(f"coverage at {coverage:.0%}, {method}, worst {kind} ({key}; goal +-5 points"
                                     f"{', reported only' if kind == 'true band' else ''})", mean[key], "",
                                     "sex (today's), same group", float(np.nanmean(base[key]))))
            rows.append(BenchRow(f"mean width at {coverage:.0%}, {method}", mean["width"], "months", "sex (today's)",
                                 float(np.nanmean(base["width"])), higher_is_better=False))
    return rows, missed


def group_table(results: dict, edges: list[float]) -> str:
    """Markdown: mean coverage of every group, method and nominal level."""
    names = ["all", "male", "female"] + [f"band_est_{b}" for b in range(len(edges) + 1)] + [
        f"band_true_{b}" for b in range(len(edges) + 1)] + ["width"] + [f"width_est_{b}" for b in (0, len(edges))]
    lines = ["| method | nominal | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
    for coverage in COVERAGES:
        for method in METHODS:
            r = results[method][coverage]
            cells = [f"{np.nanmean(r[k]):.1f} mo" if k.startswith("width") else f"{np.nanmean(r[k]):.3f}" for k in names]
            lines.append(f"| {method} | {coverage:.0%} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2400, help="phantoms (70/5/25 train/val/test)")
    parser.add_argument("--size", type=int, default=128, help="phantom size (px)")
    parser.add_argument("--image-size", type=int, default=64, help="the regressor's input (px)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--root", type=Path, default=Path("outputs/bench_coverage"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    root = args.root.resolve()
    started = time.perf_counter()
    generate_dataset(root / "phantoms", n=args.n, seed=0, image_size=args.size, workers=2, progress=False,
                     splits=(0.7, 0.05, 0.25))
    prepared = time.perf_counter() - started
    calibration, rows, took = train_export_predict(root, args)
    pool = pool_of(calibration, rows)
    started_draws = time.perf_counter()
    results = resample(pool, calibration["settings"], args.draws, seed=0)
    drawn = time.perf_counter() - started_draws
    bench_rows, missed = rows_of(results)
    edges = calibration["settings"]["edges"]
    notes = (f"{args.n} phantoms at {args.size} px; one regressor (`experiment=boneage_cpu`, whole radiographs at "
             f"{args.image_size} px, {args.epochs} epochs; test MAE {took['test_mae']:.2f} months); a pool of "
             f"{len(pool)} images ({calibration['images']} calibration + {len(rows)} test) drawn {args.draws} times "
             f"into halves (calibrate / score); age band edges {', '.join(f'{e:.0f}' for e in edges)} months "
             f"(quintiles of the training labels); min_band {calibration['settings']['min_band']}, min_cohort "
             f"{calibration['settings']['min_cohort']}. Data {prepared:.0f} s, training {took['train']:.0f} s, "
             f"export {took['export']:.0f} s, predict {took['predict']:.0f} s (0 s: reused from an earlier run), "
             f"draws {drawn:.1f} s; total {time.perf_counter() - started:.0f} s, {torch.get_num_threads()} torch "
             f"threads, load average {Path('/proc/loadavg').read_text().split()[0]} (shared cores). Goals missed: "
             + ("; ".join(missed) if missed else "none") + ".\n\nMean coverage per group (est = band of the estimated "
             "age, true = band of the true age, 0 youngest) and mean width (all; the youngest and the oldest band of the "
             "estimated age):\n\n" + group_table(results, edges))
    path = write_bench("coverage", bench_rows, notes)
    (path.parent / "coverage_draws.json").write_text(json.dumps(
        {m: {str(c): v for c, v in r.items()} for m, r in results.items()}))
    print(path.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
