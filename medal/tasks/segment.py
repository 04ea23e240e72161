"""`medal segment`: coarse masks -> active-learning rounds -> full-size masks, hand RoIs and boxes.

Phases (each skipped when its outputs are complete): coarse Otsu masks and polarity; working-resolution
arrays (image cache); the round loop (committee or the U-Net baseline) with its oracle; final inference
over every image into `${data.work_dir}/{masks,roi,roi_gold}` (contract 5).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image

from medal.active.loop import ActiveLearner, ALConfig, QueryContext
from medal.active.oracles import FolderOracle, SimulatedOracle
from medal.active.pool import ActivePool
from medal.config import to_plain
from medal.data.images import read_image, resize
from medal.data.rsna import read_index
from medal.errors import MedalError
from medal.hardware import inference_device, use_bf16
from medal.loggers import build_loggers, log_figure
from medal.segment import figures
from medal.segment.baseline import baseline_schedule
from medal.segment.committee import Committee
from medal.segment.infer import FinalOutputs, binarise, held_out_scores, mean_probs, member_probs, write_final
from medal.segment.phases import (
    CoarseOptions,
    coarse_phase,
    load_seg_data,
    mask_scores,
    read_stamp,
    with_masks,
    write_stamp,
)
from medal.segment.train import fit_committee
from medal.tasks.runner import hydra_task

log = logging.getLogger("medal.segment")
MODELS = ("committee", "unet_random")


def run_segment(cfg: DictConfig) -> dict[str, float]:
    seg, al = cfg.segment, cfg.al
    if seg.model not in MODELS:
        raise MedalError(f"segment.model={seg.model!r}: use one of {', '.join(MODELS)}")
    work_dir = Path(cfg.data.work_dir)
    out_dir = Path(cfg.paths.output_dir)
    index = read_index(cfg.data.root, strict=cfg.data.strict)
    coarse = coarse_phase(index, work_dir, CoarseOptions(**to_plain(seg.coarse)), seg.workers)
    inverted = dict(zip(coarse["id"], coarse["inverted"].astype(bool), strict=True))
    eval_dir = Path(seg.eval_masks_dir) if seg.eval_masks_dir else None
    test_ids = with_masks(list(index.loc[index["split"] == "test", "id"]), eval_dir)
    metrics: dict[str, float] = {}
    if test_ids:
        metrics.update({f"coarse/test_{k}": v for k, v in mask_scores(work_dir / "coarse", eval_dir, test_ids).items()})

    data = load_seg_data(index, work_dir, seg.image_size, inverted if seg.normalise_polarity else None, eval_dir,
                         seg.workers)
    paths = dict(zip(index["id"], index["path"], strict=True))
    device = inference_device(str(cfg.trainer.accelerator))
    fast = use_bf16(al.fast_scoring, device)
    al_cfg = ALConfig(initial=al.initial, per_round=al.per_round, budget=al.budget, patience=al.patience,
                      min_delta=al.min_delta, reset_weights=al.reset_weights, strategy=cfg.strategy.name,
                      seed=cfg.seed, score_batch_size=al.score_batch_size, fast_scoring=fast,
                      device=device)
    steps = int(seg.steps_per_round)
    if seg.model == "unet_random":
        al_cfg, steps = baseline_schedule(al_cfg, steps)
        arch, net, size = "unet", to_plain(seg.unet), 1
    else:
        arch, net, size = "fc_densenet", to_plain(seg.net), int(al.committee_size)
    augment = to_plain(seg.augment) if seg.augment.enabled else None

    def make_committee() -> Committee:
        return Committee(net=net, size=size, seed=cfg.seed, lr=seg.lr, weight_decay=seg.weight_decay,
                         augment=augment, channels_last=seg.channels_last, arch=arch)

    loggers = build_loggers(cfg)

    def fit(committee: Committee, images, masks, val_images, val_masks) -> dict[str, float]:
        def make_trainer():
            return instantiate(cfg.trainer, max_epochs=1, logger=False, enable_checkpointing=False)

        return fit_committee(committee, images, masks, val_images, val_masks, steps, seg.batch_size, make_trainer)

    def full_image(image_id: str) -> np.ndarray:
        image = read_image(paths[image_id])
        return 1.0 - image if seg.normalise_polarity and inverted[image_id] else image

    def shape_of(image_id: str) -> tuple[int, int]:
        with Image.open(paths[image_id]) as img:
            return img.size[1], img.size[0]

    def start_mask(image_id: str) -> np.ndarray:
        if learner.pool.round == 0 or learner.committee is None:
            return read_image(work_dir / "coarse" / f"{image_id}.png") > 0.5
        prob = mean_probs(learner.committee, data.images[[data.rows[image_id]]], fast=fast)[0]
        return binarise(np.clip(resize(prob, shape_of(image_id)), 0, 1))

    def on_query(pool: ActivePool, committee: Committee, ids: list[str]) -> None:
        if not seg.figures or not ids:
            return
        shown = ids[:8]
        rows = [data.rows[i] for i in shown]
        probs = member_probs(committee, data.images[rows], fast=fast)
        masks = np.stack([np.stack([binarise(p, postprocess=False) for p in member]) for member in probs])
        round_scores = pool.scores.get(pool.round, {})
        png = figures.query_grid(data.images[rows], masks, shown, out_dir / "figures" / f"queried_round_{pool.round:02d}.png",
                                 title=f"round {pool.round}: queried by {al_cfg.strategy}",
                                 scores=[round_scores[i] for i in shown] if round_scores else None)
        log_figure(loggers, "segment/queried", png, step=pool.round)

    def on_round(pool: ActivePool) -> None:
        record = pool.history[-1]
        for logger in loggers:  # one point per round, at its labelled count: the learning curve
            logger.log_metrics({k: v for k, v in record.items() if "/" in k}, step=int(record["labelled"]))
            logger.save()

    if cfg.oracle.name == "simulated":
        oracle = SimulatedOracle(cfg.oracle.masks_dir)
    elif cfg.oracle.name == "folder":
        oracle = FolderOracle(al.dir)
    else:
        raise MedalError(f"oracle={cfg.oracle.name!r}: use simulated or folder")
    settings = {"model": seg.model, "arch": arch, "net": net, "size": size, "image_size": int(seg.image_size),
                "steps": steps, "batch_size": int(seg.batch_size), "lr": float(seg.lr),
                "weight_decay": float(seg.weight_decay), "augment": augment, "initial": al_cfg.initial,
                "reset_weights": al_cfg.reset_weights, "strategy": al_cfg.strategy, "seed": al_cfg.seed}
    learner = ActiveLearner(data, oracle, QueryContext(shape_of, full_image, start_mask), make_committee, fit,
                            al_cfg, al.dir, val_limit=al.val_limit, on_query=on_query, on_round=on_round,
                            settings=settings)
    result = learner.run()
    pool = result.pool
    metrics["al/labelled"] = float(len(pool.labelled))
    metrics["al/rounds"] = float(len(pool.history))
    if result.waiting:
        log.warning("%s", result.waiting)
        metrics["al/waiting"] = float(len(pool.pending))
        return metrics
    last = pool.history[-1] if pool.history else {}
    metrics.update({k: float(v) for k, v in last.items() if k.startswith("val/")})
    metrics.update({f"{k}_lowres": float(v) for k, v in last.items() if k.startswith("test/")})
    if seg.figures and pool.history:
        curve = [(h["labelled"], h["val/dice"], 0.0) for h in pool.history if "val/dice" in h]
        if curve:
            png = figures.learning_curve({f"{seg.model} ({al_cfg.strategy})": curve}, out_dir / "figures" / "learning_curve.png",
                                         metric="val Dice (committee mean)")
            log_figure(loggers, "segment/learning_curve", png)

    if seg.write_outputs:
        outputs = FinalOutputs(work_dir, int(seg.roi.size), float(seg.roi.margin), bool(seg.postprocess))
        stamp = {"al_dir": str(al.dir), "labelled": len(pool.labelled), "images": len(data.ids),
                 "roi": [int(seg.roi.size), float(seg.roi.margin)], "postprocess": bool(seg.postprocess)}
        stamp_path = outputs.roi / "stamp.json"
        if read_stamp(stamp_path) == stamp and (outputs.roi / "boxes.csv").is_file():
            log.info("final masks and RoIs: reusing %s", outputs.roi)
        else:
            probs = mean_probs(result.committee, data.images, al.score_batch_size, fast)
            gold = Path(seg.gold_dir) if seg.gold_dir and Path(seg.gold_dir).is_dir() else None
            write_final(outputs, data.ids, [paths[i] for i in data.ids], probs, inverted, gold)
            write_stamp(stamp_path, stamp)
        if test_ids:
            metrics.update({f"test/{k}": v for k, v in mask_scores(outputs.masks, eval_dir, test_ids).items()})
    elif test_ids:  # comparison runs (experiment=al_strategies) write nothing but report the same full-size scores
        rows = [data.rows[i] for i in test_ids]
        scores = held_out_scores(result.committee, data.images[rows], test_ids, eval_dir, bool(seg.postprocess),
                                 al.score_batch_size, fast)
        metrics.update({f"test/{k}": v for k, v in scores.items()})
    return metrics


@hydra_task("segment")
def main(cfg: DictConfig) -> dict[str, float]:
    """Coarse masks, active-learning hand segmentation and RoI crops (see conf/segment.yaml)."""
    return run_segment(cfg)
