"""One segmentation run (`medal segment`): coarse masks -> active-learning rounds -> full-size masks and RoIs.

- `configure(cfg)` reads every key the run uses, once, before any work: the options dataclasses and the
  `segmenter=`, `strategy=` and `oracle=` choices, built from their `_target_` (a typo fails in one line).
- `build_learner(setup, data)` turns them into the round loop (`medal.active.loop.ActiveLearner`); the
  benchmark (scripts/bench_segmentation.py) runs the same builder, and the GPU check (medal/gpucheck) makes its
  committee with the same `build_training` and `build_model`.
- `write_outputs` writes the final masks, RoIs and boxes under `data.work_dir` (reused while nothing they
  depend on changed: a `medal.resume.Marker`).
- `run_segment(cfg)` is the task: the phases in order, their metrics, the figures.

Metrics: `coarse/test_{dice,iou}` (Otsu baseline, full size), `al/labelled`, `al/rounds` (`al/waiting` while
the folder oracle waits), the last round's `val/*` and `test/*_lowres` (working resolution), and
`test/{dice,iou}` of the final full-size masks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from medal.active.loop import ActiveLearner, ALConfig, LoopResult, RoundHooks
from medal.active.model import Rows, SegModel
from medal.active.oracles import Oracle, QueryContext
from medal.active.pool import ActivePool
from medal.active.scoring import Baseline, Strategy
from medal.config import build_from, options_from, to_plain
from medal.data.augment import AugmentOptions
from medal.data.images import read_image, resize
from medal.data.rsna import read_index
from medal.errors import MedalError
from medal.hardware import inference_device, use_bf16
from medal.loggers import build_loggers, log_figure
from medal.preprocess.masks import binarise
from medal.resume import Marker, fingerprint
from medal.segment import figures
from medal.segment.coarse_phase import COARSE_DIR, CoarseOptions, coarse_phase
from medal.segment.data import SegData, load_seg_data, with_masks
from medal.segment.evaluate import held_out_scores, mean_prob_maps, mean_probs, split_scores
from medal.segment.infer import FinalOutputs, write_final
from medal.segment.metrics import mask_scores
from medal.segment.model import CommitteeModel
from medal.segment.segmenter import Segmenter
from medal.segment.train import RoundTraining, TrainerFactory

log = logging.getLogger("medal.segment")

FIGURES_DIR = "figures"
LEARNING_CURVE = "learning_curve.png"
QUERY_FIGURES = "queried_round_{round:02d}.png"
#: Outputs by name, in the run folder (what the pipeline report shows).
ARTIFACTS = {"learning_curve": f"{FIGURES_DIR}/{LEARNING_CURVE}",
             "queried": f"{FIGURES_DIR}/{QUERY_FIGURES.replace('{round:02d}', '*')}"}
QUERY_FIGURE_ROWS = 8  # queried images shown per round


@dataclass(frozen=True)
class RoiOptions:
    """`segment.roi`: side of the square RoI and the margin around the hand box (of its longer side)."""

    size: int
    margin: float


@dataclass(frozen=True)
class SegmentOptions:
    """`segment.*` (conf/segment.yaml holds the values and says what each means)."""

    image_size: int
    normalise_polarity: bool
    steps_per_round: int
    batch_size: int
    lr: float
    weight_decay: float
    channels_last: bool
    net: dict[str, Any]  # read through segmenter=committee (`segmenter.net`)
    unet: dict[str, Any]  # read through segmenter=unet_random
    augment: dict[str, Any]  # medal.data.augment.AugmentOptions' keys
    coarse: CoarseOptions
    roi: RoiOptions
    postprocess: bool
    eval_masks_dir: str | None
    gold_dir: str | None
    write_outputs: bool
    figures: bool
    workers: int | None


def segment_options(node: Any) -> SegmentOptions:
    """`SegmentOptions` from `cfg.segment`, naming any unknown or missing key (nested ones too)."""
    values = dict(to_plain(node))
    nested = {"coarse": CoarseOptions, "roi": RoiOptions}
    for key, cls in nested.items():
        if key in values:
            values[key] = options_from(cls, values[key], f"segment.{key}")
    if "augment" in values:
        options_from(AugmentOptions, values["augment"], "segment.augment")  # checked now, built per committee
    return options_from(SegmentOptions, values, "segment")


@dataclass(frozen=True)
class SegmentSetup:
    """Everything a segmentation run reads from its config, validated (see `configure`)."""

    segment: SegmentOptions
    al: ALConfig
    segmenter: Segmenter
    strategy: Strategy
    oracle: Oracle
    work_dir: Path
    device: str  # where the model scores, evaluates and predicts between fits
    fast: bool  # bf16 autocast while scoring and predicting
    make_trainer: TrainerFactory


def _group(node: Any, key: str, method: str) -> Any:
    """A `strategy=` / `oracle=` choice, built; refused in one line when its class lacks `method`."""
    built = build_from(node, key)
    if not callable(getattr(built, method, None)):
        raise MedalError(f"{key}._target_={node._target_}: has no {method}() method, so it is not a {key}")
    return built


def configure(cfg: DictConfig) -> SegmentSetup:
    """Read and check every key of a composed `segment` config before any work is done."""
    device = inference_device(str(cfg.trainer.accelerator))
    al = options_from(ALConfig, cfg.al, "al", seed=int(cfg.seed))
    segmenter = build_from(cfg.segmenter, "segmenter")
    if not isinstance(segmenter, Segmenter):
        raise MedalError(f"segmenter._target_={cfg.segmenter._target_}: not a medal.segment.segmenter.Segmenter")
    strategy = _group(cfg.strategy, "strategy", "score")
    if isinstance(strategy, Baseline) and segmenter.queries:
        raise MedalError(f"strategy={strategy.name} is the paper's no-AL baseline and selects segmenter=unet_random; "
                         f"drop segmenter={segmenter.name}, or choose another strategy")
    trainer = cfg.trainer

    def make_trainer():
        return instantiate(trainer, max_epochs=1, logger=False, enable_checkpointing=False)

    return SegmentSetup(segment=segment_options(cfg.segment), al=al, segmenter=segmenter, strategy=strategy,
                        oracle=_group(cfg.oracle, "oracle", "answer"), work_dir=Path(cfg.data.work_dir),
                        device=device, fast=use_bf16(al.fast_scoring, device), make_trainer=make_trainer)


def run_settings(setup: SegmentSetup, al: ALConfig, steps: int) -> dict[str, Any]:
    """What an AL folder's results depend on, keyed like the config so a refusal names the key that changed.
    Budget, patience and the oracle are left out: they decide when a run stops or who answers, not what it
    learns; the strategy too for a segmenter that never queries."""
    seg = setup.segment
    return {
        "segmenter": {"class": type(setup.segmenter).__name__, **asdict(setup.segmenter)},
        "strategy": asdict(setup.strategy) if setup.segmenter.queries else None,
        "segment": {"image_size": seg.image_size, "steps_per_round": seg.steps_per_round,
                    "batch_size": seg.batch_size, "lr": seg.lr, "weight_decay": seg.weight_decay,
                    "augment": seg.augment},
        "al": {"initial": setup.al.initial, "reset_weights": setup.al.reset_weights,
               "member_init": setup.al.member_init, "member_data": setup.al.member_data},
        "schedule": {"initial": al.initial, "steps": steps},
        "seed": setup.al.seed,
    }


def build_training(setup: SegmentSetup, steps: int, val_images: np.ndarray, val_masks: np.ndarray) -> RoundTraining:
    """How each round of a configured run trains: `steps` batches of `segment.batch_size` from `setup.make_trainer`,
    validated on images and masks (V, S, S) (V may be 0), each member on its own draws with
    `al.member_data=bootstrap`. The one place a `RoundTraining` is made from a config (the GPU check too)."""
    seg, al = setup.segment, setup.al
    return RoundTraining(steps, seg.batch_size, setup.make_trainer, val_images, val_masks,
                         bootstrap=al.member_data == "bootstrap", seed=al.seed)


def build_model(setup: SegmentSetup, training: RoundTraining) -> CommitteeModel:
    """A fresh, untrained model of a configured run (the segmenter's `build` with every key it reads), which
    trains as `training` says. The one place the round loop's model is made from a config (the GPU check too)."""
    seg, al = setup.segment, setup.al
    return setup.segmenter.build(seed=al.seed, lr=seg.lr, weight_decay=seg.weight_decay, augment=seg.augment,
                                 channels_last=seg.channels_last, shared_init=al.member_init == "shared",
                                 training=training, device=setup.device, fast=setup.fast,
                                 batch_size=al.score_batch_size)


def build_learner(setup: SegmentSetup, data: SegData, hooks: RoundHooks = RoundHooks()) -> ActiveLearner:
    """The round loop of a configured run over `data`: model factory, strategy, oracle, evaluation, folder."""
    seg, al = setup.segment, setup.al
    schedule, steps = setup.segmenter.schedule(al, seg.steps_per_round)
    val_idx = data.where("val", with_masks=True, limit=al.val_limit)
    test_idx = data.where("test", with_masks=True)
    val_masks = (np.asarray(data.eval_masks[val_idx], dtype=np.float32) if data.eval_masks is not None
                 else np.zeros((0, data.size, data.size), np.float32))
    training = build_training(setup, steps, np.asarray(data.images[val_idx], dtype=np.float32), val_masks)

    def make_model() -> SegModel:
        return build_model(setup, training)

    def evaluate(model: SegModel) -> dict[str, float]:
        return {**split_scores(model, data, val_idx, "val", al.score_batch_size),
                **split_scores(model, data, test_idx, "test", al.score_batch_size)}

    def start_mask(image_id: str) -> np.ndarray:
        """The folder oracle's starting mask: the coarse one first, then the latest model's at full size."""
        if learner.pool.round == 0 or learner.model is None:
            return read_image(setup.work_dir / COARSE_DIR / f"{image_id}.png") > 0.5
        prob = mean_probs(learner.model, data.images[[data.rows[image_id]]], 1)[0]
        return binarise(np.clip(resize(prob, data.full_shape(image_id)), 0, 1), postprocess=True)

    def disagreement(image_id: str) -> np.ndarray | None:
        """Where the latest model's members disagree, at full size: twice the per-pixel standard deviation of their
        foreground probabilities (1 = two members split 0/1); None before the first model or for a single net."""
        if learner.pool.round == 0 or learner.model is None:
            return None
        probs = learner.model.predict_probs(data.images[[data.rows[image_id]]])[:, 0].numpy()  # (M, S, S)
        if probs.shape[0] < 2:
            return None
        return np.clip(resize(2.0 * probs.std(0), data.full_shape(image_id)), 0, 1)

    ctx = QueryContext(data.full_shape, data.full_image, start_mask, disagreement)
    learner = ActiveLearner(data, make_model, setup.strategy, setup.oracle, ctx, schedule, evaluate,
                            run_settings(setup, al, steps), hooks)
    return learner


def round_hooks(setup: SegmentSetup, data: SegData, out_dir: Path, loggers: list[Any]) -> RoundHooks:
    """Query figures (paper Figure 8: each member's mask on the queried images) and one logged point per round
    at its labelled count (the learning curve)."""

    def log_record(pool: ActivePool, keep: Callable[[str], bool]) -> None:
        record = pool.history[-1]
        for logger in loggers:
            logger.log_metrics({k: v for k, v in record.items() if keep(k)}, step=int(record["labelled"]))
            logger.save()

    def on_query(pool: ActivePool, model: SegModel, ids: list[str]) -> None:
        if pool.history:  # the scores' spread (query/*) joined the scoring round's record
            log_record(pool, lambda key: key.startswith("query/"))
        if not setup.segment.figures or not ids:
            return
        shown = ids[:QUERY_FIGURE_ROWS]
        images = data.images[[data.rows[i] for i in shown]]
        probs = model.predict_probs(images).numpy()
        masks = np.stack([np.stack([binarise(p, postprocess=False) for p in member]) for member in probs])
        round_scores = pool.scores.get(pool.round)
        png = figures.query_grid(images, masks, shown, out_dir / FIGURES_DIR / QUERY_FIGURES.format(round=pool.round),
                                 title=f"round {pool.round}: queried by {setup.strategy.name}",
                                 scores=[round_scores[i] for i in shown] if round_scores else None)
        log_figure(loggers, "segment/queried", png, step=pool.round)

    def on_round(pool: ActivePool) -> None:
        log_record(pool, lambda key: "/" in key)

    return RoundHooks(on_query=on_query, on_round=on_round)


def loop_metrics(result: LoopResult) -> dict[str, float]:
    """`al/*`, and the last round's `val/*` and `test/*_lowres` (working resolution)."""
    pool = result.pool
    metrics = {"al/labelled": float(len(pool.labelled)), "al/rounds": float(len(pool.history))}
    if result.waiting:
        metrics["al/waiting"] = float(len(pool.pending))
        return metrics
    last = pool.history[-1] if pool.history else {}
    metrics.update({k: float(v) for k, v in last.items() if k.startswith("val/")})
    metrics.update({f"{k}_lowres": float(v) for k, v in last.items() if k.startswith("test/")})
    return metrics


def write_outputs(setup: SegmentSetup, learner: ActiveLearner, data: SegData) -> FinalOutputs:
    """Full-size masks, RoIs (+ boxes.csv) and gold crops of every image under `data.work_dir`.

    A `rebuild` marker in `roi/.medal/` records what they were made from (the AL run's settings and labelled
    count, the images, the RoI options): a rerun with the same reuses them; anything else deletes masks/, roi/
    and roi_gold/ and writes them again, so no file of an older model survives beside the new ones.
    """
    seg = setup.segment
    outputs = FinalOutputs(setup.work_dir, seg.roi.size, seg.roi.margin, seg.postprocess)
    gold = Path(seg.gold_dir) if seg.gold_dir and Path(seg.gold_dir).is_dir() else None
    marker = Marker.in_folder(outputs.roi, "final", policy="rebuild",
                              outputs=[outputs.masks, outputs.roi, outputs.roi_gold], what="final masks and RoIs")
    parts = {"al_dir": str(learner.dir), "model": fingerprint(learner.settings),
             "labelled": len(learner.pool.labelled), "ids": fingerprint(data.ids), "roi": asdict(seg.roi),
             "postprocess": seg.postprocess, "gold_dir": str(gold) if gold else None,
             # how the committee saw the images (a model bundle rebuilds the chain from this record)
             "inference": {"image_size": seg.image_size, "normalise_polarity": seg.normalise_polarity,
                           "channels_last": seg.channels_last, "batch_size": setup.al.score_batch_size,
                           "fast_scoring": setup.al.fast_scoring}}
    if marker.begin(parts) == "done":
        log.info("final masks and RoIs: reusing %s", outputs.roi)
        return outputs
    if learner.model is None:
        raise MedalError(f"al.dir={learner.dir}: no trained model to write the final masks with")
    probs = mean_prob_maps(learner.model, data.images, setup.al.score_batch_size)  # a batch at a time
    write_final(outputs, data.ids, data.paths, probs, dict(zip(data.ids, data.inverted.tolist(), strict=True)), gold)
    marker.finish(parts, images=len(data.ids))
    return outputs


def run_segment(cfg: DictConfig) -> dict[str, float]:
    """Coarse masks, the active-learning rounds, the final masks and RoIs; returns the metrics."""
    setup = configure(cfg)
    seg = setup.segment
    out_dir = Path(cfg.paths.output_dir)
    index = read_index(cfg.data.root, strict=cfg.data.strict)
    coarse = coarse_phase(index, setup.work_dir, seg.coarse, seg.workers)
    eval_dir = Path(seg.eval_masks_dir) if seg.eval_masks_dir else None
    test_ids = with_masks(list(index.loc[index["split"] == "test", "id"]), eval_dir)
    metrics: dict[str, float] = {}
    if test_ids:
        scores = mask_scores(setup.work_dir / COARSE_DIR, eval_dir, test_ids)
        metrics.update({f"coarse/test_{k}": v for k, v in scores.items()})

    inverted = dict(zip(coarse["id"], coarse["inverted"].astype(bool), strict=True))
    data = load_seg_data(index, setup.work_dir, seg.image_size, inverted, seg.normalise_polarity, eval_dir,
                         seg.workers)
    loggers = build_loggers(cfg)
    learner = build_learner(setup, data, round_hooks(setup, data, out_dir, loggers))
    result = learner.run()
    metrics.update(loop_metrics(result))
    if result.waiting:
        log.warning("%s", result.waiting)
        return metrics
    _learning_curve(setup, result.pool, out_dir, loggers)

    if seg.write_outputs:
        outputs = write_outputs(setup, learner, data)
        if test_ids:
            metrics.update({f"test/{k}": v for k, v in mask_scores(outputs.masks, eval_dir, test_ids).items()})
    elif test_ids:  # comparison runs (experiment=al_strategies) write nothing but report the same full-size scores
        rows = np.array([data.rows[i] for i in test_ids], dtype=np.int64)
        scores = held_out_scores(result.model, Rows(data.images, rows), test_ids, eval_dir, seg.postprocess,
                                 setup.al.score_batch_size)
        metrics.update({f"test/{k}": v for k, v in scores.items()})
    return metrics


def _learning_curve(setup: SegmentSetup, pool: ActivePool, out_dir: Path, loggers: list[Any]) -> None:
    curve = [(h["labelled"], h["val/dice"], 0.0) for h in pool.history if "val/dice" in h]
    if not setup.segment.figures or not curve:
        return
    name = setup.segmenter.name
    label = f"{name} ({setup.strategy.name})" if setup.segmenter.queries else name
    png = figures.learning_curve({label: curve}, out_dir / FIGURES_DIR / LEARNING_CURVE,
                                 metric="val Dice (committee mean)")
    log_figure(loggers, "segment/learning_curve", png)

