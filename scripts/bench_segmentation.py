"""Active-learning benchmark on phantoms with a yardstick: can it tell query strategies apart, and do they differ?

A phantom pool whose difficulty is uneven the way real archives are (`--hard` of the acquisitions are hard: low
contrast, wide collimator frames, a white background behind a frame, strong rotation, small hands; see
medal.data.phantom.acquisition.HARD_KINDS) is generated once. Every arm runs the task's own round loop
(conf/segment.yaml with the sizes below, `medal.segment.experiment.build_learner`, simulated oracle) from
`--initial` to `--budget` labels for every seed: the strategies of conf/strategy/, the paper's U-Net on random
labels, and an **oracle upper bound** that queries the pool images the current committee segments worst (it reads
the ground truth, so it exists only here). The benchmark is trustworthy only if that yardstick beats random by more
than the spread over seeds: otherwise the pool or the budget leaves nothing for a strategy to find. Its primary
measure is the worst-decile Dice (the hard cases are what annotation should fix): querying the worst-segmented
images buys hard cases, not typical ones, so on the mean Dice it need not win at all.

Every arm is measured against `--baseline`, by default the foreground-aware random (`random_stratified`: the
stronger random of nnActive; plain `random` runs beside it). Reported per arm, over seeds (mean and 95% CI):
held-out Dice and worst-decile Dice after every round (the learning curve: several budgets), at full size at the
end, their area under the learning curve (mean over the query rounds) with the paired difference from the
baseline (per seed: 95% t interval, exact sign-flip p, Holm-corrected over every arm and both measures: the
statistics of `medal table`, medal.stats), the labels each arm needs to reach the baseline's worst-decile Dice at
the full budget (the annotation saved; the goal is half), labels needed to reach `--target` Dice, the editing
effort a person would face (Dice between the proposal the folder oracle would export as `<id>_start.png` and the
truth, and the share of pixels changed, per round), the share of hard acquisitions among the queried images, and
the spread of the strategy's scores (a degenerate score has cv ~0). Then a diagnostic of the random baselines'
strata on one committee trained on the first seed's initial labels: how much of the pool's per-image Dice each
stratification captures (eta squared) and the hard share each allocation draws. Last, pool-scoring throughput.

    python scripts/bench_segmentation.py                          # the CPU benchmark of `make bench` (2 cores)
    python scripts/bench_segmentation.py --seeds 0 1 --arms qbc --budget 24   # a quick look
    python scripts/bench_segmentation.py --seeds 0 1 2 3 4 --arms qbc_paper entropy_power bald_mc hybrid \
        vote_entropy unet_random   # the other strategies
    python scripts/bench_segmentation.py --baseline random_acquisition   # the same runs against another random
    python scripts/bench_segmentation.py --device cuda --net paper --n 600 --raw-size 256 --size 128 \
        --initial 20 --per-round 20 --budget 120 --steps 200 --workers 4    # the paper's 192-map nets, one GPU
Writes outputs/bench/<name>.{json,md}, <name>_curve.png and <name>_worst_curve.png (name: segmentation, or
segmentation_cuda).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from medal.active import compare, strategies
from medal.active.loop import lowres
from medal.active.model import Rows, SegModel
from medal.active.scoring import QBC, Candidates, distance_distortion
from medal.active.stratified import allocate, eta_squared, foreground_share
from medal.bench import BENCH_DIR, BenchRow, write_bench
from medal.config import CONF_DIR
from medal.data.images import read_image
from medal.data.phantom import generate_dataset
from medal.data.rsna import read_index
from medal.resume import Marker
from medal.segment.coarse_phase import coarse_phase
from medal.segment.data import SegData, load_seg_data
from medal.segment.evaluate import held_out_scores, per_image_dice
from medal.segment.experiment import build_learner, configure
from medal.segment.figures import learning_curve
from medal.segment.metrics import mask_scores
from medal.stats import holm, mean_ci, paired_units

log = logging.getLogger("medal.bench")
ORACLE, RANDOM, BASELINE = "oracle", "random", "unet_random"
STRATIFIED = "random_stratified"  # the foreground-aware random: the default baseline
RANDOMS = ("random", "random_stratified", "random_acquisition")  # the random baselines (no model uncertainty)
ARMS = ("oracle", "random", "random_stratified", "random_acquisition", "qbc", "qbc_paper", "entropy", "entropy_power",
        "entropy_power_stratified", "bald", "bald_mc", "vote_entropy", "coreset", "coreset_full", "hybrid", "unet_random")
# Arms that are a strategy with other options: core-set on the members' full flattened bottleneck, to check that its
# default compact descriptor (a sparse random projection, `strategy.descriptor=projected`) selects no worse.
VARIANTS = {"coreset_full": ["strategy=coreset", "strategy.descriptor=full"]}
# 10 arms x 10 seeds = 100 runs, about 1.7 h on two idle cores; the other strategies run when named in --arms. Ten
# seeds, not five: with five, random's spread over seeds hid the yardstick (docs/experiments.md, "Calibrating the
# yardstick").
DEFAULT_ARMS = ("oracle", "random", "random_stratified", "random_acquisition", "qbc", "entropy",
                "entropy_power_stratified", "bald", "coreset", "coreset_full")
CURVE_ARMS = ("oracle", "random", "random_stratified", "random_acquisition", "qbc", "entropy",
              "entropy_power_stratified", "bald", "coreset", "coreset_full")  # drawn in the figures
DICE, WORST = "test/dice", "test/dice_worst_decile"
DISTORTION_SAMPLE = 64  # pool images whose pairwise distances measure the projection's distortion
NETS = {  # overrides of conf/segment.yaml: (FC-DenseNet member, U-Net baseline); "paper" keeps its defaults
    "tiny": (["segment.net.first_conv=8", "segment.net.growth=4", "segment.net.down_layers=[2,2,2]",
              "segment.net.bottleneck_layers=4", "segment.net.dropout=0.1"],  # dropout: bald_mc samples it
             ["segment.unet.depth=3", "segment.unet.width=8"]),
    "paper": ([], []),  # 3 down / 3 up blocks, 192 maps at the bottleneck; U-Net depth 4, width 32
}


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="phantoms")
    ap.add_argument("--splits", type=float, nargs=3, default=[0.65, 0.05, 0.3], help="train (the pool) / val / test")
    ap.add_argument("--hard", type=float, default=0.25, help="share of hard acquisitions (phantoms' nuisance.hard_p)")
    ap.add_argument("--raw-size", type=int, default=128, help="phantom image size (full size)")
    ap.add_argument("--size", type=int, default=64, help="working resolution")
    ap.add_argument("--initial", type=int, default=8)
    ap.add_argument("--per-round", type=int, default=8)
    ap.add_argument("--budget", type=int, default=40)
    ap.add_argument("--steps", type=int, default=50, help="optimiser steps per round")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    ap.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), choices=ARMS, metavar="ARM",
                    help=f"what to run (default: {', '.join(DEFAULT_ARMS)}; also: "
                         f"{', '.join(a for a in ARMS if a not in DEFAULT_ARMS)}); the baseline, random and oracle "
                         "always run")
    ap.add_argument("--baseline", default=STRATIFIED, choices=[a for a in ARMS if a not in (ORACLE, BASELINE)],
                    help="the arm every other is compared with, paired by seed (default: the foreground-aware "
                         "random_stratified)")
    ap.add_argument("--target", type=float, default=0.9, help="held-out Dice target for labels-to-reach")
    ap.add_argument("--workers", type=int, default=2, help="runs in parallel (one torch thread each)")
    ap.add_argument("--root", type=Path, default=Path("outputs"))
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--net", choices=tuple(NETS), default="tiny", help="FC-DenseNet and U-Net sizes")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--name", default=None, help="bench name (default: segmentation[_cuda])")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device on this machine; run without it for the CPU benchmark")
    args.arms = [a for a in ARMS if a in {*args.arms, ORACLE, RANDOM, args.baseline}]
    args.name = args.name or ("segmentation" if args.device == "cpu" else f"segmentation_{args.device}")
    return args


@dataclass(frozen=True)
class WorstSegmented:
    """The yardstick (benchmark only): scores each pool image by 1 - Dice of the committee's mean mask against
    the ground truth `<masks_dir>/<id>.png` at working resolution, so the images it segments worst are queried.
    No real strategy can do this; it shows what choosing well is worth on this pool."""

    name: str
    masks_dir: str

    def score(self, model: SegModel, candidates: Candidates, generator: torch.Generator) -> torch.Tensor:
        size = candidates.images.shape[-1]
        truth = np.stack([lowres(read_image(Path(self.masks_dir) / f"{i}.png") > 0.5, size) for i in candidates.ids])
        dice, _ = per_image_dice(model, candidates.images, truth, candidates.chunk)
        return 1.0 - dice


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


def arm_overrides(arm: str) -> list[str]:
    """The config choice of an arm; the oracle runs as `strategy=random` with its strategy swapped in run_job."""
    return VARIANTS.get(arm, [f"strategy={RANDOM if arm == ORACLE else arm}"])


def run_job(job: tuple[str, int, SegData, Path, DictConfig, dict]) -> dict:
    """One arm x seed: the task's round loop from scratch (`build_learner`), then the final masks at full size.

    A job finished earlier with the same settings is reused (a `rebuild` marker beside its AL folder); any other
    starts from an empty folder, so its seconds are one uninterrupted run."""
    arm, seed, data, masks_dir, cfg, settings = job
    marker = Marker.in_folder(cfg.al.dir, "bench", policy="rebuild", outputs=[cfg.al.dir], what="benchmark job")
    if marker.status(settings) == "done":
        return marker.read()["result"]
    marker.begin(settings, force=True)
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    started = time.perf_counter()
    setup = configure(cfg)
    if arm == ORACLE:
        setup = dataclasses.replace(setup, strategy=WorstSegmented(ORACLE, str(masks_dir)))
    result = build_learner(setup, data).run()
    rows = data.where("test", with_masks=True)  # final masks made as `medal segment` makes them
    final = held_out_scores(result.model, Rows(data.images, rows), [data.ids[r] for r in rows], masks_dir,
                            setup.segment.postprocess, setup.al.score_batch_size)
    out = {"arm": arm, "seed": seed, "history": result.pool.history, "final": final,
           "queried": {i: r for i, r in result.pool.labelled.items()}, "seconds": time.perf_counter() - started}
    if getattr(setup.strategy, "descriptor", None) == "projected":  # the projection's distortion on trained features
        sample = Rows(data.images, data.where("train")[:DISTORTION_SAMPLE])
        out["distortion"] = distance_distortion(result.model, sample, setup.al.score_batch_size, setup.strategy.dim)
    marker.finish(settings, result=out)
    return out


def scoring_throughput(data: SegData, cfg: DictConfig, device: str, repeats: int = 2) -> dict[str, float]:
    """Pool-scoring images/s of the same committee: fp32 contiguous vs channels_last, with and without bf16."""
    rows = data.where("train")
    images = Rows(data.images, rows)
    qbc, gen = QBC("qbc", "probs", 16), torch.Generator().manual_seed(0)

    def candidates(n: int) -> Candidates:
        return Candidates([data.ids[r] for r in rows[:n]], Rows(data.images, rows[:n]), 16, images[:0], 8, 1)

    out = {}
    for label, fast, channels_last in (("fp32", False, False), ("fp32_channels_last", False, True),
                                       ("bf16_channels_last", True, True)):
        setup = configure(cfg)
        model = setup.segmenter.build(seed=0, lr=setup.segment.lr, weight_decay=setup.segment.weight_decay,
                                      augment=setup.segment.augment, channels_last=channels_last, shared_init=False,
                                      training=None, device=device, fast=fast, batch_size=16)  # never fitted
        qbc.score(model, candidates(16), gen)  # warm-up
        best = 0.0
        for _ in range(repeats):
            t = time.perf_counter()
            qbc.score(model, candidates(len(rows)), gen)
            if device == "cuda":
                torch.cuda.synchronize()
            best = max(best, len(rows) / (time.perf_counter() - t))
        out[label] = best
    return out


def mean_over(histories: list[list[dict]], key: str, skip_first: bool) -> float:
    """Mean of `key` over every seed's rounds that have it (without round 0, the shared random draw, when
    `skip_first`); nan when none has it."""
    values = [h[key] for history in histories for h in history[int(skip_first):] if key in h]
    return float(np.mean(values)) if values else float("nan")


def summarise(arm: str, runs: list[dict], hard: set[str], target: float, reach: float | None) -> dict:
    """One arm's numbers over seeds (runs in seed order). The U-Net baseline has one round (every label at once),
    so it has a final score but no learning curve to compare. `reach`: the baseline's worst-decile Dice at the
    full budget (None while summarising the baseline itself), whose labels-to-reach measure the annotation saved."""
    histories = [r["history"] for r in runs]
    final = {k: [r["final"][k] for r in runs] for k in ("dice", "iou", "dice_worst_decile")}
    out = {
        "curve": compare.curve(histories, DICE), "worst_curve": compare.curve(histories, WORST),
        "final": {k: mean_ci(v) for k, v in final.items()},
        "edit_dice": mean_over(histories, "oracle/edit_dice", skip_first=True),
        "changed_share": mean_over(histories, "oracle/changed_share", skip_first=True),
        "query_cv": mean_over(histories, "query/cv", skip_first=False),
        "seconds": float(np.mean([r["seconds"] for r in runs])),
    }
    distortions = [r["distortion"] for r in runs if "distortion" in r]
    if distortions:
        out["distortion"] = {k: float(np.mean([d[k] for d in distortions])) for k in distortions[0]}
        out["distortion"].update(ratio_min=min(d["ratio_min"] for d in distortions),
                                 ratio_max=max(d["ratio_max"] for d in distortions))
    if arm == BASELINE:
        return out
    to_target = [compare.labels_to_reach(h, DICE, target) for h in histories]
    out.update(labels_to_target=float(np.median(to_target)), reached=int(np.isfinite(to_target).sum()),
               hard_share=float(np.nanmean([np.mean([i in hard for i, r in run["queried"].items() if r > 0])
                                            for run in runs])))
    for key, metric in (("auc", DICE), ("worst_auc", WORST)):
        values = [compare.area_under_curve(h, metric) for h in histories]
        out[key], out[f"{key}_values"] = mean_ci(values), values
    if reach is not None:
        per_seed = [compare.labels_at(h, WORST, reach) for h in histories]
        mean_curve = [{"labelled": n, WORST: m} for n, m, _ in out["worst_curve"]]
        out["labels_to_baseline"] = {"target": reach, "mean_curve": compare.labels_at(mean_curve, WORST, reach),
                                     "median": float(np.median(per_seed)), "reached": int(np.isfinite(per_seed).sum())}
    return out


def compare_arms(summary: dict[str, dict], baseline: str, alpha: float = 0.05) -> int:
    """Every arm's Dice AUC and worst-decile Dice AUC against the baseline's, paired by seed (medal.stats:
    mean difference, 95% t interval, exact sign-flip p), Holm-corrected over all of them together; stored as
    `vs_baseline_<key>` in each arm's summary. Returns the size of the family."""
    tests = [(arm, key, paired_units(s[f"{key}_values"], summary[baseline][f"{key}_values"]))
             for arm, s in summary.items() if arm not in (baseline, BASELINE) and len(s["auc_values"]) >= 2
             for key in ("auc", "worst_auc")]
    for (arm, key, d), p in zip(tests, holm([d.p for _, _, d in tests]), strict=True):
        summary[arm][f"vs_baseline_{key}"] = {**dataclasses.asdict(d), "se": d.se, "p_holm": p, "holds": p < alpha}
    return len(tests)


def strata_check(args: argparse.Namespace, root: Path, work: Path, data: SegData, masks_dir: Path,
                 hard: set[str]) -> dict:
    """What the random baselines' strata capture, on one committee trained on the first seed's initial labels
    (the model the first query round consults): per pool image its Dice (the difficulty a query can fix) and
    whether its acquisition is hard; per stratification (random_stratified's predicted-size quantiles,
    random_acquisition's clusters of image statistics) the share of the Dice's and of the hard flag's variance
    between strata (eta squared), the hard share per stratum, and the hard share a batch of its allocation
    draws on average. Reused while the settings stay (a `rebuild` marker beside its AL folder)."""
    seed = args.seeds[0]
    overrides = ["strategy=random", f"seed={seed}", f"al.dir={work / 'al' / f'strata_check_seed{seed}'}",
                 f"al.budget={args.initial}"]
    cfg = bench_config(args, root, work, overrides)
    settings = {k: v for k, v in vars(args).items() if k not in {"seeds", "workers", "root", "name", "arms",
                                                                    "target", "baseline"}}
    settings.update(seed=seed, config=OmegaConf.to_container(cfg.segment))
    marker = Marker.in_folder(cfg.al.dir, "strata_check", policy="rebuild", outputs=[cfg.al.dir],
                              what="strata diagnostic")
    if marker.status(settings) == "done":
        return marker.read()["result"]
    marker.begin(settings, force=True)
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    result = build_learner(configure(cfg), data).run()
    pool = [r for r in data.where("train") if data.ids[r] not in result.pool.labelled]
    ids, images = [data.ids[r] for r in pool], data.images[pool]
    truth = np.stack([lowres(read_image(masks_dir / f"{i}.png") > 0.5, images.shape[-1]) for i in ids])
    dice = per_image_dice(result.model, images, truth, 16)[0].numpy()
    is_hard = np.array([i in hard for i in ids], dtype=float)
    candidates = Candidates(ids, images, 16, images[:0], args.per_round, 1)
    gen = torch.Generator().manual_seed(seed)
    schemes = {}
    for name in (STRATIFIED, "random_acquisition"):
        strategy = configure(bench_config(args, root, work, [f"strategy={name}"])).strategy
        if name == STRATIFIED:
            strata = strategies.quantile_strata(foreground_share(result.model, candidates), strategy.strata)
            allocation = "proportional"
        else:
            strata, allocation = strategy.strata_of(images, gen), strategy.allocation
        labels = strata.numpy()
        groups = np.unique(labels)
        sizes = [int((labels == g).sum()) for g in groups]
        draws = np.mean([allocate(sizes, args.per_round, allocation, gen) for _ in range(200)], axis=0)
        hard_by = [float(is_hard[labels == g].mean()) for g in groups]
        schemes[name] = {"strata": len(groups), "sizes": sizes, "allocation": allocation,
                         "eta2_dice": eta_squared(dice, labels), "eta2_hard": eta_squared(is_hard, labels),
                         "hard_share_by_stratum": hard_by, "dice_by_stratum": [float(dice[labels == g].mean())
                                                                                for g in groups],
                         "expected_hard_share": float(np.dot(draws, hard_by) / max(args.per_round, 1))}
    out = {"seed": seed, "pool": len(ids), "labelled": len(result.pool.labelled), "pool_hard_share": is_hard.mean(),
           "dice_hard": float(dice[is_hard == 1].mean()) if is_hard.any() else math.nan,
           "dice_ordinary": float(dice[is_hard == 0].mean()), "schemes": schemes}
    marker.finish(settings, result=out)
    return out


def fmt(mean_ci: tuple[float, float] | list[float] | None, digits: int = 4) -> str:
    return "–" if mean_ci is None else f"{mean_ci[0]:.{digits}f} ± {mean_ci[1]:.{digits}f}"


def delta(d: dict | None) -> str:
    """A paired difference as `+mean [low, high]; p, Holm p`, flagged when it holds after Holm's correction."""
    if d is None:
        return "–"
    return (f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]; p={d['p']:.3g}, Holm {d['p_holm']:.3g}"
            f"{' **holds**' if d['holds'] else ''}")


def reach_text(s: dict, budget: int) -> str:
    """Labels to reach the baseline's worst-decile Dice at the full budget: the mean curve's crossing
    (interpolated), its share of the budget, and the median over seeds (seeds reaching it)."""
    r = s.get("labels_to_baseline")
    if r is None:
        return "–"
    curve = "not reached" if not math.isfinite(r["mean_curve"]) else f"{r['mean_curve']:.1f} ({r['mean_curve'] / budget:.0%})"
    seeds = "not reached" if not math.isfinite(r["median"]) else f"{r['median']:.1f}"
    return f"{curve}; {seeds} ({r['reached']} seeds)"


def table(args: argparse.Namespace, summary: dict[str, dict]) -> str:
    base = args.baseline
    head = ("| arm | Dice, full size | worst-decile Dice, full size | Dice AUC (working size) | Δ Dice AUC vs "
            f"{base} [95% CI]; p, Holm p | worst-decile AUC | Δ worst AUC vs {base} | labels to {base}'s "
            f"worst-decile Dice at {args.budget} (mean curve, share of budget; median over seeds) | labels to Dice ≥ "
            f"{args.target} (median; seeds) | edit Dice of proposals | pixels changed | hard share of queries | "
            "score cv | s / run |\n" + "|---" * 14 + "|")
    lines = [head]
    for arm, s in summary.items():
        reach = ("–" if "labels_to_target" not in s else
                 f"{s['labels_to_target']:.0f}" if math.isfinite(s["labels_to_target"]) else "not reached")
        seeds = f" ({s['reached']}/{len(args.seeds)})" if "reached" in s else ""
        lines.append(
            f"| {arm} | {fmt(s['final']['dice'])} | {fmt(s['final']['dice_worst_decile'])} | {fmt(s.get('auc'))} | "
            f"{delta(s.get('vs_baseline_auc'))} | {fmt(s.get('worst_auc'))} | {delta(s.get('vs_baseline_worst_auc'))} "
            f"| {reach_text(s, args.budget)} | {reach}{seeds} | {s['edit_dice']:.3f} | {100 * s['changed_share']:.2f}% | "
            f"{s.get('hard_share', float('nan')):.2f} | {s['query_cv']:.3f} | {s['seconds']:.0f} |")
    return "\n".join(lines)


def strata_table(check: dict) -> str:
    lines = [f"Strata diagnostic (seed {check['seed']}, a committee trained on its {check['labelled']} initial "
             f"labels, the {check['pool']} pool images it would score; pool hard share {check['pool_hard_share']:.2f}; "
             f"per-image Dice {check['dice_ordinary']:.3f} on ordinary acquisitions, {check['dice_hard']:.3f} on hard "
             "ones):", "",
             "| baseline | strata (sizes) | allocation | η² of per-image Dice | η² of the hard flag | hard share by "
             "stratum | expected hard share of a batch |", "|---|---|---|---:|---:|---|---:|"]
    for name, c in check["schemes"].items():
        lines.append(f"| {name} | {c['strata']} ({', '.join(map(str, c['sizes']))}) | {c['allocation']} | "
                     f"{c['eta2_dice']:.3f} | {c['eta2_hard']:.3f} | "
                     f"{', '.join(f'{h:.2f}' for h in c['hard_share_by_stratum'])} | {c['expected_hard_share']:.2f} |")
    return "\n".join(lines)


def descriptor_check(summary: dict[str, dict], runs_of: Any) -> str:
    """The compact descriptor against the full one (coreset vs coreset_full, paired by seed): the difference
    full - compact on each measure, and whether the full one wins beyond the seed spread (the compact one then
    selects worse); the projection's distortion on the trained committees' features."""
    if "coreset" not in summary or "coreset_full" not in summary:
        return ""
    compact, full = runs_of("coreset"), runs_of("coreset_full")
    measures = {"worst-decile Dice AUC": lambda r: compare.area_under_curve(r["history"], WORST),
                "Dice AUC": lambda r: compare.area_under_curve(r["history"], DICE),
                "worst-decile Dice, full size": lambda r: r["final"]["dice_worst_decile"],
                "Dice, full size": lambda r: r["final"]["dice"]}
    lines = []
    for what, value in measures.items():
        a, b = [value(r) for r in full], [value(r) for r in compact]
        if len(a) < 2:
            lines.append(f"{what}: full {np.mean(a):.4f}, compact {np.mean(b):.4f} (one seed: no spread)")
            continue
        d = paired_units(a, b)
        lines.append(f"{what}: full - compact {d.mean:+.4f} (95% CI {d.low:+.4f} to {d.high:+.4f}, sign-flip "
                     f"p={d.p:.3f}; compact's sd over seeds {np.std(b, ddof=1):.4f}): the full descriptor "
                     f"{'beats' if d.low > 0 else 'loses to' if d.high < 0 else 'does not differ beyond chance from'} "
                     "the compact one")
    dist = summary["coreset"].get("distortion")
    if dist:
        lines.append(f"projection distortion on the trained committees' features ({dist['pairs']:.0f} pairs of "
                     f"{DISTORTION_SAMPLE} pool images, {dist['dim_in']:.0f} -> {dist['dim']:.0f} values a member): "
                     f"distance ratio mean {dist['ratio_mean']:.4f}, sd {dist['ratio_sd']:.4f}, "
                     f"range {dist['ratio_min']:.3f}-{dist['ratio_max']:.3f}")
    return ("**Compact vs full descriptor** (coreset: sparse random projection, the default; coreset_full: the "
            "flattened bottleneck; paired by seed). " + "; ".join(lines) + ".\n\n")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    args = parse()
    started = time.perf_counter()
    tag = f"bench_segmentation_n{args.n}_{args.raw_size}px_hard{args.hard}"
    root = args.root / "data" / tag
    meta = generate_dataset(root, n=args.n, seed=0, image_size=args.raw_size, workers=args.workers, progress=False,
                            splits=tuple(args.splits), nuisance={"hard_p": args.hard})
    hard = set(meta.loc[meta["hard"].fillna("").astype(str) != "", "id"].astype(str))
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

    settings = {k: v for k, v in vars(args).items() if k not in {"seeds", "workers", "root", "name", "arms", "target",
                                                                    "baseline"}}

    def job(arm: str, seed: int) -> tuple:
        cfg = bench_config(args, root, work, [*arm_overrides(arm), f"seed={seed}",
                                              f"al.dir={work / 'al' / f'{arm}_seed{seed}'}"])
        return arm, seed, data, masks_dir, cfg, {**settings, "arm": arm, "config": OmegaConf.to_container(cfg.segment),
                                                 "strategy": OmegaConf.to_container(cfg.strategy)}

    jobs = [job(arm, seed) for seed in args.seeds for arm in args.arms]
    context = multiprocessing.get_context("spawn" if args.device == "cuda" else None)  # CUDA cannot fork
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=context) as pool:
        results = list(pool.map(run_job, jobs))
    wall = time.perf_counter() - started

    def runs_of(arm: str) -> list[dict]:
        return sorted((r for r in results if r["arm"] == arm), key=lambda r: r["seed"])

    reference = summarise(args.baseline, runs_of(args.baseline), hard, args.target, None)
    reach = reference["worst_curve"][-1][1]  # the baseline's mean worst-decile Dice at the full budget
    summary = {arm: summarise(arm, runs_of(arm), hard, args.target, reach) for arm in args.arms}
    family = compare_arms(summary, args.baseline)
    check = strata_check(args, root, work, data, masks_dir, hard)
    shown = [a for a in CURVE_ARMS if a in summary]
    png = learning_curve({a: summary[a]["curve"] for a in shown}, BENCH_DIR / f"{args.name}_curve.png",
                         metric=f"held-out Dice ({args.size} px), mean and 95% CI over {len(args.seeds)} seeds",
                         references={"coarse Otsu (full size)": coarse_scores["dice"]})
    worst_png = learning_curve({a: summary[a]["worst_curve"] for a in shown}, BENCH_DIR / f"{args.name}_worst_curve.png",
                               metric="held-out worst-decile Dice, mean and 95% CI")

    rows = []
    base_dice = summary[args.baseline]["final"]["dice"][0]
    for arm, s in summary.items():
        rows.append(BenchRow(
            figure=f"{arm}: held-out Dice at {args.budget} labels (full size, mean of {len(args.seeds)} seeds)",
            value=s["final"]["dice"][0], unit="Dice", baseline=f"{args.baseline} queries, same budget",
            baseline_value=base_dice, extra=s))
    yards = {key: summary[ORACLE].get(f"vs_baseline_{key}") for key in ("auc", "worst_auc")}
    for key, what in (("auc", "Dice"), ("worst_auc", "worst-decile Dice")):
        rows.append(BenchRow(figure=f"yardstick: oracle upper bound vs {args.baseline}, {what} AUC over the query "
                                    "rounds", value=summary[ORACLE][key][0], unit="Dice",
                             baseline=f"{args.baseline} queries", baseline_value=summary[args.baseline][key][0],
                             extra={"paired": yards[key]}))
    rows.append(BenchRow(figure="strata diagnostic: eta squared of per-image Dice, random_acquisition's strata",
                         value=check["schemes"]["random_acquisition"]["eta2_dice"], unit="eta2",
                         baseline="random_stratified's strata (predicted hand size)",
                         baseline_value=check["schemes"][STRATIFIED]["eta2_dice"], extra=check))
    for label, what in (("fp32_channels_last", "fp32 + channels_last"), ("bf16_channels_last", "bf16 autocast + "
                                                                                     "channels_last")):
        rows.append(BenchRow(figure=f"pool scoring throughput, {what} (3 members, qbc, {args.device})",
                             value=throughput[label], unit="img/s", baseline="fp32, contiguous",
                             baseline_value=throughput["fp32"]))
    counts = meta.groupby("split")["hard"].apply(lambda h: int((h.fillna("").astype(str) != "").sum()))
    sizes = meta["split"].value_counts()

    def verdict(key: str, what: str) -> str:
        d = yards[key]
        if d is None:
            return f"{what}: needs >= 2 seeds"
        spread = np.std(summary[args.baseline][f"{key}_values"], ddof=1)
        beats = d["holds"] and d["mean"] > 0
        return (f"{what}: the oracle {'beats' if beats else 'does NOT beat'} {args.baseline} beyond chance "
                f"(paired difference {d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}], p={d['p']:.3g}, Holm "
                f"{d['p_holm']:.3g}; {args.baseline}'s sd over seeds {spread:.4f})")

    def winners(key: str) -> str:
        better = [a for a, s in summary.items() if (d := s.get(f"vs_baseline_{key}")) and d["holds"] and d["mean"] > 0]
        worse = [a for a, s in summary.items() if (d := s.get(f"vs_baseline_{key}")) and d["holds"] and d["mean"] < 0]
        return (f"above {args.baseline} beyond chance: {', '.join(better) or 'none'}; below it: "
                f"{', '.join(worse) or 'none'}")
    notes = (
        f"Phantoms: n={args.n} at {args.raw_size} px, {args.hard:.0%} hard acquisitions (pool {sizes['train']} with "
        f"{counts['train']} hard, val {sizes['val']}, test {sizes['test']} with {counts['test']} hard); working size "
        f"{args.size} px; {args.initial} initial labels, +{args.per_round} per round, budget {args.budget}; "
        f"{args.steps} steps/round, batch {args.batch_size}; lr {args.lr}; device {args.device}; 3-member FC-DenseNet "
        f"committee {dict(base.segment.net)}; U-Net {dict(base.segment.unet)} on {args.budget} random labels with "
        "the same total steps (conf/segment.yaml with these overrides, run through "
        f"medal.segment.experiment.build_learner). Seeds {args.seeds}. The {len(results)} runs took "
        f"{sum(r['seconds'] for r in results):.0f} s of compute ({args.workers} at a time; runs finished earlier "
        f"with the same settings are reused); this invocation took {wall:.0f} s ({wall / 60:.1f} min) wall-clock.\n\n"
        f"**Yardstick** (oracle upper bound vs {args.baseline}, area under the learning curve). "
        f"{verdict('worst_auc', 'Worst-decile Dice (primary)')}. {verdict('auc', 'Mean Dice')}.\n\n"
        f"**Against {args.baseline}** (Holm over the {family} comparisons: every arm, both measures). Worst-decile "
        f"Dice AUC: {winners('worst_auc')}. Dice AUC: {winners('auc')}.\n\n"
        f"{descriptor_check(summary, runs_of)}"
        f"AUC = mean held-out Dice over the query rounds (the learning curve as one number); Δ vs {args.baseline} is "
        "paired by seed (same initial draw and initialisation): mean, 95% t interval, exact two-sided sign-flip p "
        f"(with {len(args.seeds)} seeds it cannot go below {2 / 2 ** len(args.seeds):.3g}), Holm-adjusted over the "
        "family; **holds** = Holm p < 0.05. Labels to the baseline's worst-decile Dice: where the arm's mean "
        f"worst-decile curve reaches {reach:.4f} ({args.baseline} at {args.budget} labels, working size), "
        "interpolated between rounds, and the median of the seeds' own crossings (a seed that never reaches it "
        "counts as not reached; the baseline itself reaches its own mean in about half its seeds). Edit Dice / "
        "pixels changed: the proposal a person would be shown "
        "(the folder oracle's <id>_start.png) against the truth, mean over the query rounds. Hard share: hard "
        f"acquisitions among the queried images (the pool has {counts['train'] / sizes['train']:.2f}). Score cv: "
        "coefficient of variation of the strategy's pool scores (random ~0.58, a degenerate score ~0).\n\n"
        f"{table(args, summary)}\n| coarse Otsu | {coarse_scores['dice']:.4f} | "
        f"{coarse_scores['dice_worst_decile']:.4f} | – | – | – | – | – | – | – | – | – | – | – |\n\n"
        f"{strata_table(check)}\n\nLearning curves: {png}, {worst_png}."
    )
    path = write_bench(args.name, rows, notes)
    print(path.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
