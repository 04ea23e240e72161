"""Active-learning benchmark on phantoms: does choosing what to label pay off, and how fast is scoring?

Generates phantoms once (outputs/data/bench_segmentation_n<N>_<size>px), then for each strategy (qbc,
random, entropy) and seed runs the round loop with the simulated oracle from `--initial` to `--budget`
labels, recording held-out Dice/IoU after every round; adds the paper's U-Net-on-random-labels
baseline (same label count, same total steps) and the coarse Otsu baseline. The final committees are
scored at full size too (probability upsampled, Otsu, as `medal segment` writes its masks). Last, pool
scoring throughput: bf16 autocast + channels_last vs fp32, same committee, same images, same run.

    python scripts/bench_segmentation.py                 # tiny nets, 2 CPU cores (`make bench`)
    python scripts/bench_segmentation.py --seeds 0 --budget 24   # a quick look
    python scripts/bench_segmentation.py --device cuda --net paper --n 400 --raw-size 256 --size 128 \
        --initial 20 --per-round 20 --budget 100 --steps 200 --workers 4    # the paper's 192-map nets, one GPU
Writes outputs/bench/<name>.{json,md} and <name>_curve.png (name: segmentation, or segmentation_cuda).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from medal.active.loop import ActiveLearner, ALConfig, QueryContext, SegData
from medal.active.oracles import SimulatedOracle
from medal.bench import BENCH_DIR, BenchRow, write_bench
from medal.data.images import read_image
from medal.data.phantom import generate_dataset
from medal.data.rsna import read_index
from medal.segment.baseline import baseline_schedule
from medal.segment.committee import Committee
from medal.segment.figures import learning_curve
from medal.segment.infer import held_out_scores, score_pool
from medal.segment.phases import CoarseOptions, coarse_phase, load_seg_data, mask_scores
from medal.segment.train import fit_committee, quiet_trainer

log = logging.getLogger("medal.bench")
STRATEGIES = ("qbc", "random", "entropy")


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="phantoms (80/10/10 train/val/test)")
    ap.add_argument("--raw-size", type=int, default=128, help="phantom image size (full size)")
    ap.add_argument("--size", type=int, default=64, help="working resolution")
    ap.add_argument("--initial", type=int, default=8)
    ap.add_argument("--per-round", type=int, default=8)
    ap.add_argument("--budget", type=int, default=32)
    ap.add_argument("--steps", type=int, default=60, help="optimiser steps per round")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--workers", type=int, default=2, help="runs in parallel (one torch thread each)")
    ap.add_argument("--root", type=Path, default=Path("outputs"))
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--net", choices=tuple(NETS), default="tiny", help="FC-DenseNet and U-Net sizes")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--name", default=None, help="bench name (default: segmentation[_cuda])")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device on this machine; run without it for the CPU benchmark")
    args.name = args.name or ("segmentation" if args.device == "cpu" else f"segmentation_{args.device}")
    return args


NETS = {  # (FC-DenseNet member, U-Net baseline)
    "tiny": (dict(first_conv=8, growth=4, down_layers=(2, 2, 2), bottleneck_layers=4, dropout=0.0, feature="flatten"),
             dict(depth=3, width=8)),
    "paper": (dict(first_conv=48, growth=16, down_layers=(4, 5, 7), bottleneck_layers=12, dropout=0.2,
                   feature="flatten"),  # conf/segment.yaml's defaults: 192 maps at the bottleneck
              dict(depth=4, width=32)),
}


def run_job(job: tuple[str, int, SegData, Path, Path, argparse.Namespace]) -> dict:
    """One strategy x seed (or the U-Net baseline): the whole round loop from scratch."""
    name, seed, data, masks_dir, al_dir, args = job
    done = al_dir / "result.json"
    settings = {k: v for k, v in vars(args).items() if k not in {"seeds", "workers", "root", "name"}}
    if done.is_file() and json.loads(done.read_text())["settings"] == settings:
        return json.loads(done.read_text())  # finished by an earlier run with the same settings
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    shutil.rmtree(al_dir, ignore_errors=True)
    gpu = args.device != "cpu"  # bf16 pays on GPUs; this CPU has no native bf16 (medal.hardware)
    al = ALConfig(initial=args.initial, per_round=args.per_round, budget=args.budget, patience=99,
                  strategy=name if name in STRATEGIES else "random", seed=seed, fast_scoring=gpu, device=args.device)
    fc_densenet, unet = NETS[args.net]
    steps, arch, net, size = args.steps, "fc_densenet", fc_densenet, 3
    if name == "unet_random":
        al, steps = baseline_schedule(al, args.steps)
        arch, net, size = "unet", unet, 1

    def make() -> Committee:
        return Committee(net=net, size=size, seed=seed, lr=args.lr, augment=dict(rotation=10, scale=(0.9, 1.1),
                         shear=5, padding="zeros"), channels_last=True, arch=arch)

    def trainer():
        return quiet_trainer("gpu" if gpu else "cpu", "bf16-mixed" if gpu else "32-true")

    def fit(c, x, y, vx, vy):
        return fit_committee(c, x, y, vx, vy, steps, args.batch_size, trainer)

    ctx = QueryContext(lambda i: read_image(masks_dir / f"{i}.png").shape, lambda i: None, lambda i: None)
    started = time.perf_counter()
    learner = ActiveLearner(data, SimulatedOracle(masks_dir), ctx, make, fit, al, al_dir)
    result = learner.run()
    rows = learner.test_idx  # final masks made as `medal segment` makes them: mean probability upsampled, Otsu
    scores = held_out_scores(result.committee, data.images[rows], [data.ids[r] for r in rows], masks_dir, fast=gpu)
    final = {"test/dice_full": scores["dice"], "test/iou_full": scores["iou"]}
    out = {"name": name, "seed": seed, "history": result.pool.history, "final": final,
           "seconds": time.perf_counter() - started, "settings": settings}
    done.write_text(json.dumps(out))
    return out


def scoring_throughput(data: SegData, net: dict, device: str, repeats: int = 2) -> dict[str, float]:
    """Pool-scoring images/s of the same committee: fp32 contiguous vs channels_last, with and without bf16."""
    rows = data.where("train")
    images = data.images[rows]
    out = {}
    for label, fast, channels_last in (("fp32", False, False), ("fp32_channels_last", False, True),
                                       ("bf16_channels_last", True, True)):
        committee = Committee(net=net, size=3, seed=0, channels_last=channels_last).to(device)
        score_pool(committee, images[:16], "qbc", fast=fast)  # warm-up
        best = 0.0
        for _ in range(repeats):
            t = time.perf_counter()
            score_pool(committee, images, "qbc", batch_size=16, fast=fast)
            if device == "cuda":
                torch.cuda.synchronize()
            best = max(best, len(images) / (time.perf_counter() - t))
        out[label] = best
    return out


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    args = parse()
    started = time.perf_counter()
    tag = f"bench_segmentation_n{args.n}_{args.raw_size}px"
    root = args.root / "data" / tag
    generate_dataset(root, n=args.n, seed=0, image_size=args.raw_size, workers=args.workers, progress=False)
    work = args.root / "work" / tag
    index = read_index(root)
    masks_dir = root / "masks"
    coarse = coarse_phase(index, work, CoarseOptions(work_size=args.raw_size), workers=args.workers)
    test_ids = list(index.loc[index["split"] == "test", "id"])
    coarse_scores = mask_scores(work / "coarse", masks_dir, test_ids)
    inverted = dict(zip(coarse["id"], coarse["inverted"].astype(bool), strict=True))
    data = load_seg_data(index, work, args.size, inverted, masks_dir, workers=args.workers)
    torch.set_num_threads(1)
    throughput = scoring_throughput(data, NETS[args.net][0], args.device)

    names = [*STRATEGIES, "unet_random"]
    jobs = [(name, seed, data, masks_dir, work / "al" / f"{name}_seed{seed}", args) for seed in args.seeds for name in names]
    context = multiprocessing.get_context("spawn" if args.device == "cuda" else None)  # CUDA cannot fork
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=context) as pool:
        results = list(pool.map(run_job, jobs))

    curves: dict[str, list[tuple[float, float, float]]] = {}  # (labelled, mean, sd over seeds) of test Dice
    iou_curves: dict[str, list[tuple[float, float, float]]] = {}
    finals: dict[str, dict[str, np.ndarray]] = {}
    for name in names:
        runs = [r for r in results if r["name"] == name]
        for key, out in (("test/dice", curves), ("test/iou", iou_curves)):
            by_count: dict[float, list[float]] = {}
            for r in runs:
                for h in r["history"]:
                    by_count.setdefault(h["labelled"], []).append(h[key])
            out[name] = [(k, float(np.mean(v)), float(np.std(v))) for k, v in sorted(by_count.items())]
        finals[name] = {k: np.array([r["final"][k] for r in runs]) for k in ("test/dice_full", "test/iou_full")}
        finals[name]["seconds"] = np.array([r["seconds"] for r in runs])

    png = learning_curve({k: v for k, v in curves.items() if k != "unet_random"}, BENCH_DIR / f"{args.name}_curve.png",
                         metric=f"held-out Dice ({args.size} px, committee mean)",
                         references={"U-Net, random labels (final)": curves["unet_random"][-1][1],
                                     "coarse Otsu (full size)": coarse_scores["dice"]})

    def stat(name: str, key: str) -> str:
        v = finals[name][key]
        return f"{v.mean():.4f} ± {v.std():.4f}"

    rows = []
    rand = finals["random"]["test/dice_full"].mean()
    for name in names:
        dice = finals[name]["test/dice_full"]
        iou = finals[name]["test/iou_full"]
        rows.append(BenchRow(
            figure=f"{name}: held-out Dice at {args.budget} labels (full size, mean of {len(dice)} seeds)",
            value=float(dice.mean()), unit="Dice", baseline="random queries, same budget", baseline_value=float(rand),
            extra={"dice_sd": float(dice.std()), "iou_mean": float(iou.mean()), "iou_sd": float(iou.std()),
                   "curve": curves[name], "iou_curve": iou_curves[name], "seconds_mean": float(finals[name]["seconds"].mean())}))
    rows.append(BenchRow(figure=f"qbc committee vs coarse Otsu: held-out Dice at {args.budget} labels",
                         value=float(finals["qbc"]["test/dice_full"].mean()), unit="Dice",
                         baseline="coarse Otsu + largest component", baseline_value=coarse_scores["dice"],
                         extra={"coarse_iou": coarse_scores["iou"]}))
    for label, what in (("fp32_channels_last", "fp32 + channels_last"), ("bf16_channels_last", "bf16 autocast + "
                                                                                     "channels_last")):
        rows.append(BenchRow(figure=f"pool scoring throughput, {what} (3 members, qbc, {args.device})",
                             value=throughput[label], unit="img/s", baseline="fp32, contiguous",
                             baseline_value=throughput["fp32"]))
    table = "\n".join(
        f"| {name} | {stat(name, 'test/dice_full')} | {stat(name, 'test/iou_full')} | "
        + " ".join(f"{int(k)}:{m:.3f}" for k, m, _ in curves[name]) + " | "
        + " ".join(f"{int(k)}:{m:.3f}" for k, m, _ in iou_curves[name]) + " |"
        for name in names
    )
    notes = (
        f"Phantoms: n={args.n} at {args.raw_size} px (train {len(data.where('train'))}, val "
        f"{len(data.where('val'))}, test {len(test_ids)}); working size {args.size} px; {args.initial} initial labels, "
        f"+{args.per_round} per round, budget {args.budget}; {args.steps} steps/round, batch {args.batch_size}; "
        f"lr {args.lr}; device {args.device}; 3-member FC-DenseNet committee {NETS[args.net][0]}; "
        f"U-Net {NETS[args.net][1]} on {args.budget} random labels with the same total steps. "
        f"Seeds {args.seeds}. The {len(results)} runs took {sum(r['seconds'] for r in results):.0f} s of compute "
        f"({args.workers} at a time; runs finished earlier with the same settings are reused); this invocation "
        f"{time.perf_counter() - started:.0f} s.\n\n"
        "| model | held-out Dice (full size) | IoU | Dice by labelled count (working size) | IoU by labelled count "
        "|\n|---|---|---|---|---|\n"
        f"{table}\n| coarse Otsu | {coarse_scores['dice']:.4f} | {coarse_scores['iou']:.4f} | - | - |\n\n"
        f"Learning curve: {png}."
    )
    path = write_bench(args.name, rows, notes)
    print((path.with_suffix(".md")).read_text())


if __name__ == "__main__":
    main()
