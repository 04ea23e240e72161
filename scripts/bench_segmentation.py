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
import logging
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from medal.active.scoring import QBC, Candidates
from medal.bench import BENCH_DIR, BenchRow, write_bench
from medal.config import CONF_DIR
from medal.data.phantom import generate_dataset
from medal.data.rsna import read_index
from medal.resume import Marker
from medal.segment.coarse_phase import coarse_phase
from medal.segment.data import SegData, load_seg_data
from medal.segment.evaluate import held_out_scores
from medal.segment.experiment import build_learner, configure
from medal.segment.figures import learning_curve
from medal.segment.metrics import mask_scores

log = logging.getLogger("medal.bench")
STRATEGIES = ("qbc", "random", "entropy")
BASELINE = "unet_random"  # the segmenter=unet_random baseline, listed beside the strategies


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


NETS = {  # overrides of conf/segment.yaml: (FC-DenseNet member, U-Net baseline); "paper" keeps its defaults
    "tiny": (["segment.net.first_conv=8", "segment.net.growth=4", "segment.net.down_layers=[2,2,2]",
              "segment.net.bottleneck_layers=4", "segment.net.dropout=0.0"],
             ["segment.unet.depth=3", "segment.unet.width=8"]),
    "paper": ([], []),  # 3 down / 3 up blocks, 192 maps at the bottleneck; U-Net depth 4, width 32
}


def bench_config(args: argparse.Namespace, root: Path, work: Path, overrides: list[str]) -> DictConfig:
    """conf/segment.yaml with the benchmark's sizes (the task's config, so the bench runs what the task runs),
    resolved to plain values so a worker process needs no Hydra."""
    gpu = args.device != "cpu"  # bf16 pays on GPUs; this CPU has no native bf16 (medal.hardware)
    fc_densenet, unet = NETS[args.net]
    settings = [
        f"paths.output_root={args.root}", f"paths.output_dir={work / 'runs'}", f"data.root={root}",
        f"data.work_dir={work}", f"segment.image_size={args.size}", f"segment.steps_per_round={args.steps}",
        f"segment.batch_size={args.batch_size}", f"segment.lr={args.lr}", "segment.augment.rotation=10",
        "segment.augment.p=0.9", f"segment.coarse.work_size={args.raw_size}", "segment.figures=false",
        f"al.initial={args.initial}", f"al.per_round={args.per_round}", f"al.budget={args.budget}", "al.patience=99",
        f"al.fast_scoring={gpu}", f"trainer.accelerator={'gpu' if gpu else 'cpu'}",
        f"trainer.precision={'bf16-mixed' if gpu else '32-true'}", "trainer.enable_progress_bar=false",
        *fc_densenet, *unet, *overrides,
    ]
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose(config_name="segment", overrides=settings)
    return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))


def run_job(job: tuple[str, int, SegData, Path, DictConfig, dict]) -> dict:
    """One strategy x seed (or the U-Net baseline): the task's round loop from scratch (`build_learner`).

    A job finished earlier with the same settings is reused (a `rebuild` marker beside its AL folder); any other
    starts from an empty folder, so its seconds are one uninterrupted run."""
    name, seed, data, masks_dir, cfg, settings = job
    marker = Marker.in_folder(cfg.al.dir, "bench", policy="rebuild", outputs=[cfg.al.dir], what="benchmark job")
    if marker.status(settings) == "done":
        return marker.read()["result"]
    marker.begin(settings, force=True)
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    started = time.perf_counter()
    setup = configure(cfg)
    result = build_learner(setup, data).run()
    rows = data.where("test", with_masks=True)  # final masks made as `medal segment` makes them
    scores = held_out_scores(result.model, data.images[rows], [data.ids[r] for r in rows], masks_dir,
                             setup.segment.postprocess, setup.al.score_batch_size)
    final = {"test/dice_full": scores["dice"], "test/iou_full": scores["iou"]}
    out = {"name": name, "seed": seed, "history": result.pool.history, "final": final,
           "seconds": time.perf_counter() - started}
    marker.finish(settings, result=out)
    return out


def scoring_throughput(data: SegData, cfg: DictConfig, device: str, repeats: int = 2) -> dict[str, float]:
    """Pool-scoring images/s of the same committee: fp32 contiguous vs channels_last, with and without bf16."""
    rows = data.where("train")
    candidates = Candidates([data.ids[r] for r in rows], data.images[rows], 16)
    qbc, gen = QBC(name="qbc"), torch.Generator().manual_seed(0)
    out = {}
    for label, fast, channels_last in (("fp32", False, False), ("fp32_channels_last", False, True),
                                       ("bf16_channels_last", True, True)):
        setup = configure(cfg)
        model = setup.segmenter.build(seed=0, lr=setup.segment.lr, weight_decay=setup.segment.weight_decay,
                                      augment=setup.segment.augment, channels_last=channels_last,
                                      training=None, device=device, fast=fast, batch_size=16)  # never fitted
        qbc.score(model, Candidates(candidates.ids[:16], candidates.images[:16], 16), gen)  # warm-up
        best = 0.0
        for _ in range(repeats):
            t = time.perf_counter()
            qbc.score(model, candidates, gen)
            if device == "cuda":
                torch.cuda.synchronize()
            best = max(best, len(candidates.ids) / (time.perf_counter() - t))
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
    base = bench_config(args, root, work, [])
    seg = configure(base).segment
    index = read_index(root)
    masks_dir = root / "masks"
    coarse = coarse_phase(index, work, seg.coarse, workers=args.workers)
    test_ids = list(index.loc[index["split"] == "test", "id"])
    coarse_scores = mask_scores(work / "coarse", masks_dir, test_ids)
    inverted = dict(zip(coarse["id"], coarse["inverted"].astype(bool), strict=True))
    data = load_seg_data(index, work, args.size, inverted, seg.normalise_polarity, masks_dir, workers=args.workers)
    torch.set_num_threads(1)
    throughput = scoring_throughput(data, base, args.device)

    names = [*STRATEGIES, BASELINE]
    settings = {k: v for k, v in vars(args).items() if k not in {"seeds", "workers", "root", "name"}}

    def job(name: str, seed: int) -> tuple:
        choice = f"segmenter={BASELINE}" if name == BASELINE else f"strategy={name}"
        cfg = bench_config(args, root, work, [choice, f"seed={seed}", f"al.dir={work / 'al' / f'{name}_seed{seed}'}"])
        return name, seed, data, masks_dir, cfg, {**settings, "config": OmegaConf.to_container(cfg.segment)}

    jobs = [job(name, seed) for seed in args.seeds for name in names]
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

    png = learning_curve({k: v for k, v in curves.items() if k != BASELINE}, BENCH_DIR / f"{args.name}_curve.png",
                         metric=f"held-out Dice ({args.size} px, committee mean)",
                         references={"U-Net, random labels (final)": curves[BASELINE][-1][1],
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
        f"lr {args.lr}; device {args.device}; 3-member FC-DenseNet committee {dict(base.segment.net)}; "
        f"U-Net {dict(base.segment.unet)} on {args.budget} random labels with the same total steps "
        "(conf/segment.yaml with these overrides, run through medal.segment.experiment.build_learner). "
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
