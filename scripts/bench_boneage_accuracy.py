"""Benchmark: how close the CPU bone-age recipe gets to the phantoms' noise floor, and where its CAM looks.

    python scripts/bench_boneage_accuracy.py [--n 2000] [--size 256] [--experiment boneage_cpu] [--gold]

1. Generates `n` phantoms (resumable) under `<root>/phantoms` (default root outputs/bench_boneage_accuracy).
2. Cuts their hand RoIs with the true masks (`medal.data.phantom.rois`: what a perfect segmentation writes,
   so this measures the regressor alone) and the gold-standard RoIs with the same boxes.
3. Runs the real task body (`medal boneage experiment=<recipe>`, `run_boneage`) on the RoIs; a finished run
   with the same settings is reused. Its metrics hold the test MAE by sex, the train-mean predictor and the
   noise floor (`test/mae_floor`: the best reader of each hand's anatomy, `medal.data.phantom.floor`).
4. Runs `medal cam` (`run_cam`) on its best checkpoint: the share of positive CAM mass on the hand, the bones
   and the ossification centres, against their share of the image.
5. With `--gold`, trains the same recipe on the gold-standard RoIs too: a perfect enhancer's images, the most
   any enhancement could change the MAE by.
Writes outputs/bench/boneage_accuracy.{json,md}. Goal (issue 12): test MAE <= 2x the floor.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from medal.bench import BenchRow, write_bench
from medal.boneage.cam_experiment import run_cam
from medal.boneage.experiment import run_boneage, run_marker, run_settings
from medal.data.phantom import generate_dataset
from medal.data.phantom.rois import true_mask_rois
from medal.pipeline.plan import compose_task_config
from medal.runs import write_metrics

log = logging.getLogger("medal.bench")


def train(root: Path, name: str, images: Path, experiment: str, extra: list[str]) -> tuple[dict[str, float], Path, str]:
    """One `medal boneage` run of the recipe on `images`: its metrics, run folder and how long it took.

    A finished run of the same settings in the folder is returned as it is (`run_boneage`'s record), and
    said so: its time was spent by an earlier invocation.
    """
    out = root / "runs" / name
    cfg = compose_task_config("boneage", [
        f"experiment={experiment}", f"paths.root={Path.cwd()}", f"paths.output_dir={out}",
        f"data.root={root / 'phantoms'}", f"data.work_dir={root / 'work'}", f"data.images={images}",
        "trainer.enable_progress_bar=false", "logger=csv", *extra])
    record = run_marker(out).read()
    reused = bool(record and record.get("metrics") and record.get("parts") == run_settings(cfg))
    started = time.perf_counter()
    metrics = run_boneage(cfg)
    write_metrics(out, metrics)
    took = "reused from an earlier run" if reused else f"{time.perf_counter() - started:.0f} s"
    log.info("%s: test MAE %.2f (floor %.2f, mean predictor %.2f), %s", name, metrics["test/mae"],
             metrics["test/mae_floor"], metrics["test/mae_mean_predictor"], took)
    return metrics, out, took


def cam(root: Path, run: Path) -> dict[str, float]:
    """`medal cam` on the run's best checkpoint (its test split, its images and size)."""
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    cfg = compose_task_config("cam", [f"ckpt={best}", f"paths.root={Path.cwd()}", f"paths.output_dir={root / 'cam'}",
                               "cam.max_overlays=8", "cam.device=cpu"])
    return run_cam(cfg)


def accuracy_rows(name: str, m: dict[str, float]) -> list[BenchRow]:
    """Test MAE against the floor (goal: ratio <= 2) and against the mean predictor, all and by sex."""
    rows = []
    for suffix, who in (("", "all"), ("_male", "male"), ("_female", "female")):
        extra = {"rmse": m[f"test/rmse{suffix}"], "bias": m[f"test/bias{suffix}"], "n": m[f"test/n{suffix}"],
                 "mean_predictor": m[f"test/mae_mean_predictor{suffix}"]}
        rows.append(BenchRow(f"test MAE {who}, {name} (goal <= 2x floor)", m[f"test/mae{suffix}"], "months",
                             "noise floor", m[f"test/mae_floor{suffix}"], higher_is_better=False, extra=extra))
    rows.append(BenchRow(f"test MAE all, {name}, against always answering the training mean", m["test/mae"],
                         "months", "mean predictor", m["test/mae_mean_predictor"], higher_is_better=False,
                         extra={"ci95": [m["test/mae_ci_low"], m["test/mae_ci_high"]], "val_mae": m["val/mae"],
                                "epochs": m["train/epochs"]}))
    return rows


def cam_rows(c: dict[str, float]) -> list[BenchRow]:
    """Share of positive CAM mass in each region against the region's share of the image."""
    return [BenchRow(f"share of positive CAM mass on the {label}", c[f"cam/{key}_fraction"], "",
                     f"area share of the {label}", c[f"cam/{key}_area"],
                     extra={"images": c["cam/n_male"] + c["cam/n_female"],
                            "region_itself_at_cam_grid": c.get(f"cam/{key}_grid"),
                            "on_or_within_one_cell": c.get(f"cam/{key}_near")})
            for key, label in (("hand", "hand"), ("bone", "bones"), ("centre", "ossification centres"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="phantoms (80/10/10 train/val/test)")
    parser.add_argument("--size", type=int, default=256, help="phantom and RoI size (px)")
    parser.add_argument("--experiment", default="boneage_cpu", help="the recipe: conf/experiment/<name>.yaml")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--gold", action="store_true", help="also train on the gold-standard RoIs")
    parser.add_argument("--root", type=Path, default=Path("outputs/bench_boneage_accuracy"))
    parser.add_argument("overrides", nargs="*", help="extra `medal boneage` overrides, e.g. trainer.max_epochs=5")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    root = args.root.resolve()

    started = time.perf_counter()
    generate_dataset(root / "phantoms", n=args.n, seed=0, image_size=args.size, workers=2, progress=False)
    roi = true_mask_rois(root / "phantoms", root / "work", args.size, progress=False)
    prepared = time.perf_counter() - started
    metrics, run, took = train(root, "roi", roi, args.experiment, args.overrides)
    cam_metrics = cam(root, run)
    rows = accuracy_rows("true-mask RoIs", metrics) + cam_rows(cam_metrics)
    gold_note = ""
    if args.gold:
        gold, _, gold_took = train(root, "roi_gold", root / "work" / "roi_gold", args.experiment, args.overrides)
        rows.append(BenchRow("test MAE all on gold-standard RoIs (a perfect enhancer)", gold["test/mae"], "months",
                             "true-mask RoIs", metrics["test/mae"], higher_is_better=False,
                             extra={"floor": gold["test/mae_floor"], "male": gold["test/mae_male"],
                                    "female": gold["test/mae_female"]}))
        gold_note = (" `--gold`: the same recipe trained and tested on the gold-standard RoIs as well "
                     f"(training + test {gold_took}).")
    ratio = metrics["test/mae"] / metrics["test/mae_floor"]
    notes = (f"{args.n} phantoms at {args.size} px (seed 0; {int(metrics['test/n'])} test images), hand RoIs cut with "
             f"the true masks; recipe `experiment={args.experiment}` {' '.join(args.overrides)}; "
             f"{torch.get_num_threads()} torch threads. Test MAE {metrics['test/mae']:.2f} months = {ratio:.2f}x the "
             f"noise floor {metrics['test/mae_floor']:.2f} (goal <= 2x); mean predictor "
             f"{metrics['test/mae_mean_predictor']:.2f}. Data {prepared:.0f} s, training + test {took}, "
             f"total {time.perf_counter() - started:.0f} s; load average at the end "
             f"{Path('/proc/loadavg').read_text().split()[0]} (other jobs share the cores).{gold_note}")
    path = write_bench("boneage_accuracy", rows, notes)
    print(path.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
