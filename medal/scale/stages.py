"""The stages of the scale benchmark: each is medal's own code, run on a data set of n images, in its own process.

Every function takes a `Ctx` (its size, fixtures and scratch folder), builds what `medal <task>` builds, calls
`ctx.begin()` where the measured work starts and returns `ctx.report(...)`. Three kinds of shortcut are taken, each
said in the stage's `how` and in its report:

- *stand-in networks*: the active-learning stages score with `ShapeCommittee` (the committee's exact output shapes,
  no network) and add the real networks' seconds per image, measured at the paper's widths by `unit_committee`;
- *prefixes*: where every image costs the same network time (the GAN over every RoI, the final masks, a bone age
  epoch) the work for all n is set up as the task sets it up (listing, resume records, arrays over the pool) and a
  prefix of images is computed; `projected_s` adds the rest at the measured rate;
- *tiny regressor*: export and predict's chain use `model=tiny` at 299 px; the Xception forward they would add
  per image is `unit` time, added in `projected_s` where it applies.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medal.scale.context import Ctx

log = logging.getLogger("medal.scale")

#: the sizes every stage is measured at (training images), and the archive stages' larger ones
SIZES = (500, 2000, 12_611)
ARCHIVE = (500, 2000, 12_611, 50_000, 100_000)
SEG_SIZES = SIZES
SEG_ARCHIVE = ARCHIVE  # pool scoring and selection: every strategy, core-set and hybrid included
QUICK = (24, 48, 96)
QUICK_ARCHIVE = (24, 48, 96, 192)
BASE, BASE_SIZE = 500, 1280  # distinct phantoms and their nominal height (px): RSNA-like radiographs
QUICK_BASE, QUICK_BASE_SIZE = 32, 256
K_MASKS, K_GAN, K_BATCHES = 64, 8, 2  # prefixes: final masks written, RoIs enhanced, bone age training batches
POOL_HOW = {"coreset": "; k-centre greedy on the projected bottleneck, dim 512",
            "hybrid": "; entropy shortlist of 3k, k-centre greedy on its projected bottleneck"}
STRATEGIES = ("qbc", "qbc_paper", "entropy", "entropy_power", "bald", "bald_mc", "vote_entropy", "coreset",
              "hybrid", "random_stratified")
TABLE_SIZES, QUICK_TABLE = (200, 1000, 5000), (6, 12, 24)
MERGE_SIZES = (500, 2000, 12_611, 50_000)  # 100,000 shards' pictures copied would be ~10 GB of this shared disk
GAN_SIZE = 512  # px: the RoIs' own size (segment.roi.size), as the paper's enhancer sees them


@dataclass(frozen=True)
class Stage:
    name: str
    fn: Callable[[Ctx], dict[str, Any]]
    sizes: tuple[int, ...]
    quick: tuple[int, ...]
    needs: tuple[str, ...]  # fixtures: base, layout, raw_layout, rois, archive, runs, wandb, and stage names
    items: str  # what n counts
    owner: str  # whose code it measures: "" (this benchmark's fixes apply) or the branch that fixes it
    how: str  # one line for the report: what runs, and any shortcut


# -- helpers --------------------------------------------------------------------------------------------------

def small(ctx: Ctx) -> int:
    """The smallest layout's size: where the `unit_*` stages, which need no data, point their configs."""
    return (QUICK if ctx.quick else SIZES)[0]


def _seg_cfg(ctx: Ctx, strategy: str = "qbc", extra: list[str] | None = None, n: int | None = None):
    overrides = [*ctx.data_overrides(n), f"strategy={strategy}", "oracle=simulated", "segment.figures=false"]
    if ctx.quick:
        overrides += ["segment.image_size=64", "segment.net.first_conv=8", "segment.net.growth=4",
                      "segment.net.down_layers=[1,1,1]", "segment.net.bottleneck_layers=2", "al.initial=8"]
    return ctx.compose("segment", overrides + (extra or []))


def _seg_data(ctx: Ctx, cfg) -> Any:
    """`load_seg_data` as `run_segment` calls it; polarity from the phantoms' own record (the coarse phase's
    answer on these images), so the coarse phase is not timed here."""
    from medal.data.rsna import read_index
    from medal.scale.fixtures import layout_table
    from medal.segment.data import load_seg_data

    index = read_index(cfg.data.root, strict=True)
    table = layout_table(Path(cfg.data.root))
    inverted = dict(zip(table["id"], table["inverted"].astype(bool), strict=True))
    seg = cfg.segment
    return load_seg_data(index, Path(cfg.data.work_dir), int(seg.image_size), inverted, bool(seg.normalise_polarity),
                         Path(seg.eval_masks_dir), seg.workers)


def seed_seg_cache(ctx: Ctx) -> None:
    """The working-size caches of the layout of n's images and held-out masks, as `load_seg_data` finds them,
    seeded from the base phantoms' own caches (`medal.scale.fixtures.seeded_cache`): the pool stages measure
    scoring and selection, not the cache's build (stage `seg_data` measures that, up to 12,611)."""
    from medal.data.rsna import read_index
    from medal.scale.fixtures import layout_table, seeded_cache
    from medal.segment.data import with_masks

    cfg = _seg_cfg(ctx)
    index = read_index(cfg.data.root, strict=True)
    source = layout_table(Path(cfg.data.root)).set_index("id")["source_id"]
    ids, size = [str(i) for i in index["id"]], int(cfg.segment.image_size)
    base_work = ctx.fixtures / "work" / "base"
    seeded_cache(ctx.base(), base_work, ctx.work(), ids, [str(p) for p in index["path"]], source.loc[ids].tolist(),
                 size, "stretch")
    masks = Path(cfg.segment.eval_masks_dir)
    held = with_masks(ids, masks)
    seeded_cache(ctx.base(), base_work, ctx.work(), held, [str(masks / f"{i}.png") for i in held],
                 source.loc[held].tolist(), size, "stretch", folder="masks")


def drop_caches(work: Path, size: int, fit: str) -> int:
    """Delete the image caches of (size, fit) under `work`/cache (a stage that measures a cache build must find
    none, also when rerun with --force); returns how many."""
    dropped = 0
    for meta in (Path(work) / "cache").glob("*.json"):
        record = json.loads(meta.read_text())
        if record.get("size") == size and record.get("fit") == fit:
            meta.with_suffix(".npy").unlink(missing_ok=True)
            meta.unlink()
            dropped += 1
    return dropped


def _standin(cfg) -> Any:
    from medal.scale.standin import ShapeCommittee, feature_dim

    size = int(cfg.segment.image_size)
    return ShapeCommittee(int(cfg.al.committee_size), size, feature_dim(cfg.segment.net, size))


def _unit(ctx: Ctx, stage: str, key: str) -> float | None:
    """A figure another stage reported (its largest measured n; None until it has run)."""
    found = sorted((ctx.root / "results" / stage).glob("n*.json"), key=lambda p: int(p.stem[1:]))
    for path in reversed(found):
        value = json.loads(path.read_text()).get("report", {}).get(key)
        if value is not None:
            return float(value)
    return None


def _network_seconds(ctx: Ctx, seen: dict[str, int]) -> tuple[float, str]:
    """Seconds the real committee would add for the images the stand-in answered, and the rule."""
    costs = {kind: _unit(ctx, "unit_committee", f"{kind}_s") for kind in seen}
    missing = [k for k, v in seen.items() if v and costs[k] is None]
    if missing:
        return 0.0, f"(real committee not added: run stage unit_committee first for {', '.join(missing)})"
    extra = sum(seen[k] * (costs[k] or 0.0) for k in seen)
    parts = ", ".join(f"{v} x {k} at {costs[k]:.3g} s" for k, v in seen.items() if v)
    return extra, f"+ the real committee's time: {parts or 'none'}"


# -- data -----------------------------------------------------------------------------------------------------

def phantoms(ctx: Ctx) -> dict[str, Any]:
    from medal.data.phantom import generate_dataset

    out = ctx.out / "phantoms"
    size = QUICK_BASE_SIZE if ctx.quick else BASE_SIZE
    ctx.disk(ctx.out)
    ctx.begin()
    generate_dataset(out, n=ctx.n, seed=0, image_size=size, workers=2, progress=False)
    report = ctx.report(ctx.n, notes=f"{size} px nominal height, 2 worker processes, PNGs written")
    shutil.rmtree(out)  # gigabytes of scratch: measured, then gone
    return report


def check_data(ctx: Ctx) -> dict[str, Any]:
    from medal.data.check_experiment import run_check_data

    cfg = ctx.compose("check_data", ["data=rsna", f"data.root={ctx.layout(extras=False)}"])
    ctx.begin()
    metrics = run_check_data(cfg)
    return ctx.report(int(metrics["data/images_checked"]), notes="every PNG's chunk CRCs (the default check)")


def _boneage_cfg(ctx: Ctx, run: Path | None = None, extra: list[str] | None = None):
    model = ["model=tiny", "data.image_size=64"] if ctx.quick else ["model=xception"]
    return ctx.compose("boneage", [*ctx.data_overrides(), "data.images=raw", *model, "finetune=all",
                                   "data.cache_workers=2", "logger=[]", "trainer.enable_progress_bar=false",
                                   *(extra or [])], run=run)


def cache(ctx: Ctx) -> dict[str, Any]:
    """The bone age DataModule's first `prepare_data`: index, split, and the image cache built from the PNGs."""
    from medal.data.datamodule import build_boneage_datamodule

    cfg = _boneage_cfg(ctx)
    drop_caches(ctx.work(), int(cfg.data.image_size), str(cfg.data.fit))
    ctx.disk(ctx.work() / "cache")
    datamodule = build_boneage_datamodule(cfg)
    ctx.begin()
    datamodule.prepare_data()
    rows = sum(len(f) for f in datamodule.frames.values())
    return ctx.report(rows, notes=f"{cfg.data.image_size} px, fit {cfg.data.fit}, 2 processes; float16 memmap")


def datamodule(ctx: Ctx) -> dict[str, Any]:
    """Setting up the DataModule on a built cache, then training batches (sampler, memmap, augmentation)."""
    import torch

    from medal.data.augment import augment
    from medal.data.datamodule import build_boneage_datamodule

    cfg = _boneage_cfg(ctx)
    ctx.begin()
    dm = build_boneage_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    setup_s = ctx.seconds()
    seen, started, batches = 0, time.perf_counter(), 0
    for batch in dm.train_dataloader():
        image = batch["image"]
        if dm.augmentation is not None:
            image = augment(dm.augmentation, image)
        seen += len(image)
        batches += 1
        if batches >= 20:
            break
    rate = seen / (time.perf_counter() - started)
    n_train = len(dm.frames["train"])
    del torch
    return ctx.report(n_train, projected_s=setup_s + n_train / rate,
                      prefix=f"{batches} batches of {dm.batch_size} timed ({rate:.1f} img/s, augmentation on the "
                             f"CPU); the epoch = set-up {setup_s:.1f} s + {n_train} images at that rate",
                      setup_s=setup_s, images_per_s=rate)


# -- segmentation (medal/segment, medal/active) ------------------------------------------------------------------

def seg_data(ctx: Ctx) -> dict[str, Any]:
    """`load_seg_data`: the working-size caches of the images and held-out masks (float16 memmaps built from the
    PNGs), then one scoring chunk read from them as the loop reads it; nothing else is held in memory."""
    cfg = _seg_cfg(ctx)
    drop_caches(ctx.work(), int(cfg.segment.image_size), "stretch")
    ctx.disk(ctx.work() / "cache")
    ctx.begin()
    data = _seg_data(ctx, cfg)
    chunk = data.images[: int(cfg.al.score_batch_size)]
    return ctx.report(len(data.ids), notes=f"{cfg.segment.image_size} px images and held-out masks, float16 memmaps",
                      images_bytes=int(np.prod(data.images.shape)) * 4, chunk_bytes=int(chunk.nbytes))


def _labelled_learner(ctx: Ctx, cfg, data: Any, model: Any) -> Any:
    """An `ActiveLearner` after round 0: `al.initial` images labelled (the pool state as the loop leaves it)."""
    from medal.active.loop import ActiveLearner
    from medal.segment.experiment import configure

    setup = configure(cfg)
    learner = ActiveLearner(data, lambda: model, setup.strategy, oracle=None, ctx=None, cfg=setup.al,
                            evaluate=lambda m: {}, settings={"benchmark": ctx.stage})
    pool = learner.pool
    first = pool.unlabelled[: setup.al.initial]
    pool.query(first)
    for image_id in first:
        pool.label(image_id, "benchmark")
    pool.end_round({}, setup.al.min_delta)
    return learner


def pool_scoring(strategy: str) -> Callable[[Ctx], dict[str, Any]]:
    def run(ctx: Ctx) -> dict[str, Any]:
        """One round's query (`ActiveLearner._query`): the pool's candidates, the strategy's scores, the top k."""
        cfg = _seg_cfg(ctx, strategy, [f"al.dir={ctx.out / 'al'}"])
        data = _seg_data(ctx, cfg)
        model = _standin(cfg)
        learner = _labelled_learner(ctx, cfg, data, model)
        free = len(learner.pool.unlabelled)
        ctx.begin()
        learner._query(model)
        network, rule = _network_seconds(ctx, model.seen)
        seconds = ctx.seconds()
        return ctx.report(free, projected_s=seconds + network, prefix=f"stand-in committee {rule}",
                          seen=model.seen, queried=len(learner.pool.pending), feature_dim=model.dim)

    return run


def committee_masks(ctx: Ctx) -> dict[str, Any]:
    """The final pass (`write_outputs`): the committee-mean probability of every image streamed a chunk at a time
    into full-size masks, RoIs and gold crops (the first `K_MASKS` images written, the rest of the stream read and
    predicted; their writing projected at the measured rate)."""
    from itertools import islice

    from medal.segment.evaluate import mean_prob_maps
    from medal.segment.infer import FinalOutputs, write_final

    cfg = _seg_cfg(ctx)
    data = _seg_data(ctx, cfg)
    model = _standin(cfg)
    seg = cfg.segment
    out = FinalOutputs(ctx.out / "final", int(seg.roi.size), float(seg.roi.margin), bool(seg.postprocess))
    inverted = dict(zip(data.ids, data.inverted.tolist(), strict=True))
    ctx.disk(ctx.out / "final")
    ctx.begin()
    probs = mean_prob_maps(model, data.images, int(cfg.al.score_batch_size))  # as write_outputs streams them
    k = min(K_MASKS, len(data.ids))
    write_final(out, data.ids[:k], data.paths[:k], islice(probs, k), inverted, Path(seg.gold_dir))
    written = ctx.seconds()
    per_image = written / k
    rest = sum(1 for _ in probs)  # the other images' maps, predicted and dropped as the real pass drops them
    network, rule = _network_seconds(ctx, model.seen)
    n = len(data.ids)
    report = ctx.report(n, projected_s=ctx.seconds() + (n - k) * per_image + network,
                        prefix=f"{k} of {n} images written ({per_image:.3f} s each, their maps included), the other "
                               f"{rest} maps predicted, their writing projected; stand-in committee {rule}",
                        write_s_per_image=per_image)
    report["disk_bytes"] = int(report["disk_bytes"] * n / k)  # projected to every image
    return report


def unit_committee(ctx: Ctx) -> dict[str, Any]:
    """Seconds per image of the real committee (three 192-map FC-DenseNets at 256 px, random weights) for each kind
    of call the strategies make; the peak is a scoring chunk's (`al.score_batch_size` images)."""
    from medal.segment.experiment import configure
    from medal.segment.train import RoundTraining

    cfg = _seg_cfg(ctx, "bald_mc", n=small(ctx))
    setup = configure(cfg)
    seg, al = setup.segment, setup.al
    empty = np.zeros((0, seg.image_size, seg.image_size), np.float32)
    model = setup.segmenter.build(seed=al.seed, lr=seg.lr, weight_decay=seg.weight_decay, augment=seg.augment,
                                  channels_last=seg.channels_last, shared_init=False,
                                  training=RoundTraining(1, 1, lambda: None, empty, empty, bootstrap=False, seed=0),
                                  device=setup.device, fast=setup.fast, batch_size=al.score_batch_size)
    chunk = int(al.score_batch_size)
    images = np.random.default_rng(0).random((chunk, seg.image_size, seg.image_size), dtype=np.float32)
    model.predict_probs(images[:1])  # warm-up
    ctx.begin()
    costs: dict[str, float] = {}
    started = time.perf_counter()
    model.predict_probs(images)
    costs["probs_s"] = (time.perf_counter() - started) / chunk
    started = time.perf_counter()
    model.features(images[:2])
    costs["features_s"] = (time.perf_counter() - started) / 2
    samples = int(cfg.strategy.samples)
    started = time.perf_counter()
    model.mc_probs(images[:2], samples, 0)
    costs["mc_s"] = (time.perf_counter() - started) / (2 * samples)  # per image and dropout sample
    return ctx.report(chunk + 2 + 2, **costs, notes=f"{model.members} members, {seg.image_size} px, chunk {chunk}; "
                      "mc_s is per image and dropout sample of one member")


# -- enhancement ------------------------------------------------------------------------------------------------

def _gan_cfg(ctx: Ctx, n: int | None = None):
    size = 64 if ctx.quick else GAN_SIZE
    extra = ["enhance.generator.depth=2", "enhance.generator.width=8", "enhance.discriminator.width=8"] if ctx.quick \
        else []
    return ctx.compose("enhance", [*ctx.data_overrides(n), "enhance=gan", f"enhance.image_size={size}", *extra,
                                   "trainer.enable_progress_bar=false", "logger=[]"])


def unit_gan(ctx: Ctx) -> dict[str, Any]:
    """One GAN training step (a D step, then a G step) at the paper's widths, fed random pairs at `GAN_SIZE`."""
    from hydra.utils import instantiate
    from torch.utils.data import DataLoader

    from medal.enhance.train import build_enhancer
    from medal.gpucheck.enhance_rows import RandomPairs
    from medal.gpucheck.timing import StepTimer

    cfg = _gan_cfg(ctx, n=small(ctx))
    method = cfg.enhance
    batch = int(method.batch_size)
    timer = StepTimer(float("inf"), lambda b: len(b["input"]), min_steps=2)
    trainer = instantiate(cfg.trainer, max_epochs=1, limit_train_batches=2, limit_val_batches=0,
                          num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                          enable_model_summary=False, callbacks=[timer])
    loader = DataLoader(RandomPairs(batch * 2, int(method.image_size)), batch_size=batch)
    module = build_enhancer(method)
    ctx.begin()
    trainer.fit(module, train_dataloaders=loader)
    step = timer.step_seconds(1)
    return ctx.report(batch * timer.steps, step_s=step, image_s=step / batch,
                      notes=f"batch {batch} at {method.image_size} px; the second step timed")


def gan_inference(ctx: Ctx) -> dict[str, Any]:
    """`enhance_folder` over the RoIs of n images: listing, the resume record's stamps of every RoI, then the
    generator (paper widths, random weights) on a prefix; the others are in place as a killed run leaves them."""
    import torch

    from medal.data.cache import file_stamp
    from medal.enhance.pairs import list_images
    from medal.enhance.run import MARKER, enhance_folder, generator_method
    from medal.enhance.train import build_enhancer
    from medal.resume import Marker, fingerprint

    cfg = _gan_cfg(ctx)
    method = cfg.enhance
    rois = ctx.fixtures / "rois" / f"n{ctx.n}"
    out = ctx.out / "enhanced"
    generator = build_enhancer(method).generator
    enhance = generator_method(generator, False, bool(method.inference.channels_last))
    settings = {"method": "gan", "generator": "random weights (benchmark)", "bf16": False}
    inputs = list_images(rois)
    ids = list(inputs)
    k = min(K_GAN, len(ids))
    parts = {**settings, "image_size": int(method.image_size),
             "inputs": fingerprint([file_stamp(p) for p in inputs.values()])}
    Marker.in_folder(out, MARKER, policy="rebuild").begin(parts)  # a run that stopped after n - k images
    out.mkdir(parents=True, exist_ok=True)
    done_file = rois / f"{ids[0]}.png"
    for image_id in ids[k:]:
        os.link(done_file, out / f"{image_id}.png")
    ctx.disk(out)
    ctx.begin()
    metrics = enhance_folder(enhance, rois, out, int(method.image_size), settings,
                             batch_size=int(method.inference.batch_size), num_workers=0)
    seconds = ctx.seconds()
    per_image = 1.0 / metrics["enhance/images_per_s"]
    n = len(ids)
    del torch
    report = ctx.report(n, projected_s=seconds + (n - k) * per_image,
                        prefix=f"{k} of {n} RoIs enhanced ({per_image:.2f} s each), the rest projected",
                        written=metrics["enhance/written"])
    report["disk_bytes"] = int(report["disk_bytes"] * n / k)
    return report


# -- bone age ---------------------------------------------------------------------------------------------------

def boneage_epoch(ctx: Ctx) -> dict[str, Any]:
    """`run_boneage`'s training on n images (Xception at 299 px, random weights): DataModule, model, a fit of a
    prefix of batches and one validation batch; writes the run's checkpoint and record (CAM reads them)."""
    from hydra.utils import instantiate

    from medal.boneage.experiment import build_finetune_callback, build_module, run_marker, run_settings
    from medal.callbacks.checkpoints import best_and_last
    from medal.data.datamodule import build_boneage_datamodule
    from medal.gpucheck.timing import StepTimer

    run = ctx.fixtures / "boneage" / f"n{ctx.n}"
    shutil.rmtree(run, ignore_errors=True)
    cfg = _boneage_cfg(ctx, run=run, extra=["evaluation.plots=false"])
    timer = StepTimer(float("inf"), lambda b: len(b["boneage"]), min_steps=K_BATCHES)
    ctx.begin()
    dm = build_boneage_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    module = build_module(cfg, dm.frames["train"]["boneage"].to_numpy())
    checkpoint, latest = best_and_last(run / "checkpoints", str(cfg.checkpoint.monitor), str(cfg.checkpoint.mode))
    trainer = instantiate(cfg.trainer, max_epochs=1, limit_train_batches=K_BATCHES, limit_val_batches=1,
                          num_sanity_val_steps=0, logger=False, enable_model_summary=False,
                          callbacks=[build_finetune_callback(cfg.finetune), checkpoint, latest, timer])
    setup_s = ctx.seconds()
    trainer.fit(module, datamodule=dm)
    seconds = ctx.seconds()
    train_s = timer.step_seconds(1) / dm.batch_size
    fit_s = seconds - setup_s
    val_s = max(fit_s - sum(np.diff(timer.marks)), 0.0) / dm.batch_size  # the one validation batch
    marker = run_marker(run)
    marker.begin(run_settings(cfg))
    marker.finish(run_settings(cfg), metrics={})
    n_train, n_val = len(dm.frames["train"]), len(dm.frames["val"])
    return ctx.report(n_train, projected_s=setup_s + n_train * train_s + n_val * val_s,
                      prefix=f"{K_BATCHES} training batches of {dm.batch_size} and 1 validation batch timed; the "
                             f"epoch = set-up {setup_s:.1f} s + {n_train} x {train_s:.2f} s + {n_val} x {val_s:.2f} s",
                      setup_s=setup_s, train_s_per_image=train_s, val_s_per_image=val_s,
                      images_per_s=1.0 / train_s)


def cam(ctx: Ctx) -> dict[str, Any]:
    """`medal cam` on the test split of the bone age run of n images (Xception, random weights)."""
    from medal.boneage.cam_experiment import run_cam

    run = ctx.fixtures / "boneage" / f"n{ctx.n}"
    ckpt = sorted((run / "checkpoints").glob("best-*.ckpt"))[0]
    cfg = ctx.compose("cam", [f"ckpt={ckpt}", "logger=[]"])
    ctx.disk(ctx.out)
    ctx.begin()
    metrics = run_cam(cfg)
    return ctx.report(int(metrics["cam/n_male"] + metrics["cam/n_female"]), notes="exact CAM (GAP + linear head)")


def tiny_run(ctx: Ctx, n: int) -> Path:
    """A finished bone age run of `model=tiny` at 299 px on the layout of n (export and predict's regressor)."""
    from hydra.utils import instantiate

    from medal.boneage.experiment import build_finetune_callback, build_module, run_marker, run_settings
    from medal.callbacks.checkpoints import best_and_last
    from medal.data.datamodule import build_boneage_datamodule

    run = ctx.fixtures / "tiny_run" / f"n{n}"
    marker = run_marker(run)
    record = marker.read()
    if record and record.get("finished"):
        return run
    shutil.rmtree(run, ignore_errors=True)
    size = "data.image_size=64" if ctx.quick else "data.image_size=299"
    cfg = ctx.compose("boneage", [*ctx.data_overrides(n), "data.images=raw", "model=tiny", size, "finetune=all",
                                  "data.cache_workers=2", "logger=[]", "trainer.enable_progress_bar=false"], run=run)
    dm = build_boneage_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    module = build_module(cfg, dm.frames["train"]["boneage"].to_numpy())
    checkpoint, latest = best_and_last(run / "checkpoints", str(cfg.checkpoint.monitor), str(cfg.checkpoint.mode))
    trainer = instantiate(cfg.trainer, max_epochs=1, limit_train_batches=4, limit_val_batches=2,
                          num_sanity_val_steps=0, logger=False, enable_model_summary=False,
                          callbacks=[build_finetune_callback(cfg.finetune), checkpoint, latest])
    trainer.fit(module, datamodule=dm)
    marker.begin(run_settings(cfg))
    marker.finish(run_settings(cfg), metrics={})
    return run


def export(ctx: Ctx) -> dict[str, Any]:
    """`medal export` of a bone age run on n images: weights, and the chain over its validation split for the
    conformal calibration (regressor `model=tiny` at 299 px; Xception's forward added in `projected_s`)."""
    from medal.bundle.export import run_export

    run = tiny_run(ctx, ctx.n)
    bundle = ctx.fixtures / "bundle" / f"n{ctx.n}"
    shutil.rmtree(bundle, ignore_errors=True)
    cfg = ctx.compose("export", [f"export.regressors=[{run}]", f"export.out={bundle}"])
    ctx.disk(bundle)
    ctx.begin()
    metrics = run_export(cfg)
    seconds = ctx.seconds()
    images = int(metrics["export/calibration_images"])
    xception = _unit(ctx, "boneage_epoch", "val_s_per_image")
    extra, rule = (images * 2 * xception, f"+ {images} x 2 (TTA none, flip) x Xception's {xception:.2f} s") \
        if xception else (0.0, "(Xception's forward not added: no bone age epoch measured yet)")
    return ctx.report(images, projected_s=seconds + extra, prefix=f"tiny regressor timed {rule}")


# -- prediction -------------------------------------------------------------------------------------------------

def predict_chain(ctx: Ctx) -> dict[str, Any]:
    """`medal predict` on n images of an archive folder with the bundle of the 2,000-image run (or the smallest
    there is): the whole chain per image (decode, regressor at 299 px, CAM, thumbnails, rows)."""
    from medal.predict.run import run_predict

    bundle = _any_bundle(ctx)
    archive = ctx.fixtures / "archive" / f"n{ctx.n}"
    cfg = ctx.compose("predict", [f"bundle={bundle}", f"input={archive}", "trainer.enable_progress_bar=false"])
    ctx.disk(ctx.out)
    ctx.begin()
    metrics = run_predict(cfg)
    return ctx.report(int(metrics["predict/images"]), images_per_s=metrics["predict/images_per_s"],
                      notes=f"bundle {bundle.name}: raw chain, regressor model=tiny at 299 px")


def _any_bundle(ctx: Ctx) -> Path:
    found = sorted((ctx.fixtures / "bundle").glob("n*/bundle.json"), key=lambda p: int(p.parent.name[1:]))
    if not found:
        raise RuntimeError("no bundle yet: run stage export first")
    return found[0].parent


def synthetic_rows(ids: list[str], paths: list[str], seed: int = 0) -> pd.DataFrame:
    """predictions.csv rows (`medal.predict.rows.COLUMNS`) for `ids` as a finished chain writes them: estimates,
    intervals, a few flags and failures, picture paths (what the archive-level steps read back)."""
    from medal.predict.rows import COLUMNS, NUMERIC
    from medal.predict.run import _picture_path

    rng = np.random.default_rng(seed)
    n = len(ids)
    age = rng.uniform(1, 228, n)
    status = np.where(rng.random(n) < 0.01, "no_hand", "ok")
    ok = status == "ok"
    frame = pd.DataFrame({
        "id": ids, "sex": np.where(rng.random(n) < 0.5, "M", "F"), "sex_source": "csv",
        "boneage": np.where(ok, age, np.nan), "low": np.where(ok, age - 15, np.nan),
        "high": np.where(ok, age + 15, np.nan), "spread": np.where(ok, rng.uniform(0, 3, n), np.nan),
        "seg_confidence": np.where(ok, rng.uniform(0.8, 1, n), np.nan),
        "mask_fraction": np.where(ok, rng.uniform(0.2, 0.5, n), np.nan),
        "flag": np.where(ok & (rng.random(n) < 0.02), "mask_fraction", ""),
        "status": status, "message": np.where(ok, "", "no hand found"), "calibration": "all", "path": paths,
        "reference": np.nan, "overlay": [_picture_path("overlays", i) for i in ids],
        "thumb": [_picture_path("thumbs", i) for i in ids]})
    for column in COLUMNS:  # the rest as a chain leaves them without chronological ages
        if column not in frame:
            frame[column] = np.nan if column in NUMERIC else ""
    return frame[COLUMNS]


def predict_archive(ctx: Ctx) -> dict[str, Any]:
    """`medal predict` over an archive folder of n images in a run folder whose predictions.csv already holds
    every row (a killed run whose chain had finished): listing the folder, the shard, the resume record, reading
    the rows back, predictions.csv in input order, the metrics and the page. The chain's own time per image is
    stage predict_chain's, reported beside it (`chain_s`), not added: its cost is linear by construction and
    would hide what the archive-level steps cost."""
    from medal.predict.inputs import read_inputs
    from medal.predict.rows import COLUMNS, PREDICTIONS
    from medal.predict.run import run_predict

    bundle = _any_bundle(ctx)
    archive = ctx.fixtures / "archive" / f"n{ctx.n}"
    run = ctx.out / "run"
    frame = read_inputs(str(archive))
    rows = synthetic_rows(frame["id"].tolist(), frame["path"].tolist())
    run.mkdir(parents=True, exist_ok=True)
    rows[COLUMNS].to_csv(run / PREDICTIONS, index=False, float_format="%.6f")
    del frame, rows
    cfg = ctx.compose("predict", [f"bundle={bundle}", f"input={archive}", "trainer.enable_progress_bar=false"],
                      run=run)
    ctx.disk(run)
    ctx.begin()
    metrics = run_predict(cfg)
    chain = _unit(ctx, "predict_chain", "images_per_s")
    return ctx.report(int(metrics["predict/images"]), page_bytes=(run / "predictions.html").stat().st_size,
                      chain_s=ctx.n / chain if chain else None,
                      notes="the archive-level steps alone; the chain's own time is n / predict_chain's rate "
                            "(chain_s)")


SHARDS = 4


def _shards(ctx: Ctx, parts: Path, ids: list[str], paths: list[str]) -> None:
    """`parts/<k>/` for k < SHARDS: finished `medal predict` run folders of one multirun, each with its shard's rows
    and a thumbnail and overlay per row (hard links to one real 192-px picture, so the disk holds one)."""
    from medal.predict.inputs import shard_of
    from medal.predict.rows import COLUMNS, PREDICTIONS
    from medal.predict.run import MARKER
    from medal.resume import Marker

    picture = parts / "picture.png"
    picture.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    from PIL import Image

    Image.fromarray((rng.random((192, 150, 3)) * 255).astype(np.uint8)).save(picture)
    rows = synthetic_rows(ids, paths)
    shard = np.array([shard_of(i, SHARDS) for i in ids])
    options = {"tta": "none", "sex": "input", "coverage": 0.9, "bf16": "as_trained", "cam": True, "interval": "bundle",
               "num_shards": SHARDS}
    for k in range(SHARDS):
        folder = parts / str(k)
        mine = rows[shard == k]
        folder.mkdir(parents=True)
        mine[COLUMNS].to_csv(folder / PREDICTIONS, index=False, float_format="%.6f")
        for rel in [*mine["thumb"], *mine["overlay"]]:
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            os.link(picture, folder / rel)
        settings = {"bundle": "benchmark", "source": "archive", "input": "benchmark", "options": {**options, "shard": k}}
        marker = Marker.in_folder(folder, MARKER, policy="refuse", what="predictions")
        marker.begin(settings)
        marker.finish(settings, metrics={"predict/calibration_images": 100.0})


def predict_merge(ctx: Ctx) -> dict[str, Any]:
    """`medal predict predict.merge=true` over the 4 finished shards of an archive of n images: their rows, their
    thumbnails and CAM overlays (2n pictures) gathered into one run folder, predictions.csv and the page."""
    from medal.predict.inputs import read_inputs
    from medal.predict.run import run_predict

    archive = ctx.fixtures / "archive" / f"n{ctx.n}"
    frame = read_inputs(str(archive))
    _shards(ctx, ctx.out / "parts", frame["id"].tolist(), frame["path"].tolist())
    del frame
    run = ctx.out / "merged"
    cfg = ctx.compose("predict", ["bundle=unused", f"input={archive}", "predict.merge=true",
                                  f"predict.parts={ctx.out / 'parts'}"], run=run)
    ctx.disk(run)
    ctx.begin()
    metrics = run_predict(cfg)
    return ctx.report(int(metrics["predict/images"]), shards=SHARDS,
                      notes=f"{SHARDS} shards; every picture a 192-px PNG of "
                            f"{(ctx.out / 'parts' / 'picture.png').stat().st_size / 1024:.0f} KiB")


# -- report, annotate, tables -----------------------------------------------------------------------------------

def report(ctx: Ctx) -> dict[str, Any]:
    """The pipeline report (`build_report`) of a pipeline on the layout of n: its data section reads the index;
    the other sections are the stages' figures and metrics, whose size does not grow with n."""
    from medal.pipeline.report_builder import build_report

    cfg = ctx.compose("pipeline", [*ctx.data_overrides(), f"pipeline.dir={ctx.out / 'pipeline'}"])
    ctx.disk(ctx.out)
    ctx.begin()
    build_report(cfg, [], ctx.out / "report")
    return ctx.report(ctx.n, notes="data section and configuration (no stage results)")


def _page_client(ctx: Ctx, annotator: Any) -> Any:
    """Starlette's TestClient talking as the annotator's page does: at the bound address, with its Origin, holding
    the cookie from one visit of the printed address (`medal annotate` serves the same app through uvicorn)."""
    from starlette.testclient import TestClient

    from medal.annotate.access import launch_access
    from medal.annotate.app import build_app

    cfg = ctx.compose("annotate", [])
    access = launch_access("127.0.0.1", int(cfg.annotate.port), int(cfg.annotate.max_upload_mib), {})
    base = access.url(with_token=False).rstrip("/")
    client = TestClient(build_app(annotator, access), base_url=base, headers={"Origin": base})
    assert client.get(access.url()).status_code == 200
    return client


def annotate_masks(ctx: Ctx) -> dict[str, Any]:
    """`medal annotate` (masks mode) on round 3 of an active-learning run over a pool of n: open the round, the
    page, its state and one image, through the app (Starlette's TestClient)."""
    from medal.annotate.app import Annotator
    from medal.annotate.rounds import open_round

    round_dir = _mask_round(ctx)
    ctx.begin()
    rnd = open_round(round_dir)
    client = _page_client(ctx, Annotator("masks", masks=rnd))
    page = client.get("/")
    state = client.get("/api/state")
    image = client.get(f"/masks/{rnd.ids[0]}/image.png")
    assert page.status_code == state.status_code == image.status_code == 200, (page, state, image)
    return ctx.report(rnd.pool_size, state_bytes=len(state.content), queried=len(rnd.ids))


def _mask_round(ctx: Ctx) -> Path:
    """An AL folder as the folder oracle leaves it after 3 rounds over a pool of n: pool.json with every round's
    scores, al.json, and round_03/ with its queried images (100, the paper's), proposals and disagreement maps."""
    from medal.active.oracles import DISAGREEMENT_SUFFIX, MANIFEST, START_SUFFIX
    from medal.atomic import write_json

    al = ctx.out / "al" / "committee_qbc_seed0"
    round_dir = al / "round_03"
    round_dir.mkdir(parents=True)
    table = _layout_ids(ctx)
    ids = table["id"].tolist()
    per = min(100, len(ids) // 4)  # 100 per round, as the paper's
    rng = np.random.default_rng(0)
    labelled, queried = ids[: 3 * per], ids[3 * per: 4 * per]
    scores = {str(r): {i: float(s) for i, s in zip(ids[per * r:], rng.random(len(ids)), strict=False)}
              for r in range(1, 4)}
    write_json(al / "pool.json", {"version": 1, "ids": ids, "round": 3, "labelled": {i: 0 for i in labelled},
                                  "pending": queried, "answers": {}, "scores": scores, "history": [], "edits": {}})
    write_json(al / ".medal" / "al.json", {"parts": {"strategy": {"name": "qbc"}}, "finished": False})
    base = ctx.layout()
    shapes = {}
    for row in table.iloc[3 * per: 4 * per].itertuples(index=False):
        os.link(base / row.path, round_dir / f"{row.id}.png")
        os.link(base / "masks" / f"{row.id}.png", round_dir / f"{row.id}{START_SUFFIX}")
        os.link(base / "masks" / f"{row.id}.png", round_dir / f"{row.id}{DISAGREEMENT_SUFFIX}")
        shapes[row.id] = [int(row.height), int(row.width)]
    write_json(round_dir / MANIFEST, {"round": 3, "ids": queried, "shapes": shapes})
    return round_dir


def _layout_ids(ctx: Ctx) -> pd.DataFrame:
    from medal.scale.fixtures import layout_table

    table = layout_table(ctx.layout())
    return table[table["split"] == "train"].reset_index(drop=True)


def annotate_gold(ctx: Ctx) -> dict[str, Any]:
    """`medal annotate annotate.mode=gold annotate.gold.count=500` on a data set of n: the request chosen over
    every training and validation RoI, then the page, its state and one RoI, through the app."""
    from medal.annotate.serve import open_annotator

    rois = ctx.fixtures / "rois" / f"n{ctx.n}"
    cfg = ctx.compose("annotate", [*ctx.data_overrides(), "annotate.mode=gold", "annotate.gold.count=500",
                                   f"annotate.gold.request_dir={ctx.out / 'gold_request'}",
                                   f"annotate.gold.input_dir={rois}", f"annotate.gold.gold_dir={ctx.out / 'gold'}"])
    ctx.begin()
    annotator = open_annotator(cfg)
    client = _page_client(ctx, annotator)
    page = client.get("/")
    state = client.get("/api/state")
    first = annotator.gold.ids[0]
    image = client.get(f"/gold/{first}/roi.png")
    assert page.status_code == state.status_code == image.status_code == 200, (page, state, image)
    return ctx.report(ctx.n, state_bytes=len(state.content), requested=len(annotator.gold.ids))


def table_folder(ctx: Ctx) -> dict[str, Any]:
    """`medal table` over n run folders (copies of one real bone age run; Figure 12's preset, curves on)."""
    from medal.tables.make import make_table

    runs = ctx.fixtures / "runs" / f"n{ctx.n}"
    cfg = ctx.compose("table", [f"table.source={runs}", "table.compare=paper"])
    ctx.disk(ctx.out)
    ctx.begin()
    metrics = make_table(cfg)
    return ctx.report(int(metrics["table/runs"]))


def table_wandb(ctx: Ctx) -> dict[str, Any]:
    """`medal table table.source=wandb_offline` over n offline W&B runs (copies of one real run, ids rewritten)."""
    from medal.tables.make import make_table

    runs = ctx.fixtures / "wandb" / f"n{ctx.n}"
    cfg = ctx.compose("table", ["table.source=wandb_offline", f"table.dir={runs}", "table.compare=paper"])
    ctx.disk(ctx.out)
    ctx.begin()
    metrics = make_table(cfg)
    return ctx.report(int(metrics["table/runs"]))


def _stages() -> dict[str, Stage]:
    s = [
        Stage("phantoms", phantoms, (200, 500, 2000), (8, 16, 32), (), "images", "",
              "`generate_dataset` at 1,280 px (2 processes), PNGs written then deleted"),
        Stage("check_data", check_data, ARCHIVE, QUICK_ARCHIVE, ("raw_layout",), "images (all splits)", "",
              "`medal check-data` on an RSNA layout of n training images (+ validation and test)"),
        Stage("cache", cache, SIZES, QUICK, ("layout",), "images (all splits)", "",
              "the bone age DataModule's `prepare_data`: index, split, image cache at 299 px from the PNGs"),
        Stage("datamodule", datamodule, SIZES, QUICK, ("layout", "cache"), "training images", "",
              "DataModule set-up on the built cache, then 20 training batches (sampler, memmap, augmentation)"),
        Stage("seg_data", seg_data, SEG_SIZES, QUICK, ("layout",), "images (all splits)", "",
              "`load_seg_data`: working-size float16 memmaps of images and masks built from the PNGs, read on demand"),
        Stage("unit_committee", unit_committee, (1,), (1,), ("small_layout",), "one chunk", "",
              "the real committee (3 x FC-DenseNet, 192-map bottleneck, 256 px, random weights): s per image"),
        *[Stage(f"pool_{name}", pool_scoring(name), SEG_ARCHIVE, QUICK_ARCHIVE, ("layout", "seg_cache"),
                "pool images", "", f"one query of strategy={name} (`ActiveLearner._query` on Rows of the memmap, "
                f"stand-in committee{POOL_HOW.get(name, '')})")
          for name in STRATEGIES],
        Stage("committee_masks", committee_masks, SEG_SIZES, QUICK, ("layout", "seg_cache"), "images", "",
              "final pass: committee-mean maps streamed into full-size masks, RoIs, gold crops (prefix written)"),
        Stage("unit_gan", unit_gan, (1,), (1,), ("small_layout",), "one batch", "",
              "one GAN training step (D then G) at 512 px, paper widths"),
        Stage("gan_inference", gan_inference, SIZES, QUICK, ("layout", "rois"), "RoIs", "",
              "`enhance_folder` over n RoIs at 512 px: listing, resume stamps, the generator on a prefix"),
        Stage("boneage_epoch", boneage_epoch, SIZES, QUICK, ("layout", "cache"), "training images", "",
              "a bone age epoch (Xception 299 px, random weights): set-up + 2 batches + 1 validation batch"),
        Stage("cam", cam, SIZES, QUICK, ("layout", "boneage_epoch"), "test images", "",
              "`medal cam` on the run's test split (Xception 299 px)"),
        Stage("export", export, SIZES, QUICK, ("layout",), "validation images", "",
              "`medal export`: weights + calibration chain over the validation split (tiny regressor, 299 px)"),
        Stage("predict_chain", predict_chain, (64,), (8,), ("archive", "export"), "images", "gpuci",
              "`medal predict` on 64 images: the whole raw chain per image (tiny regressor, 299 px)"),
        Stage("predict_archive", predict_archive, ARCHIVE, QUICK_ARCHIVE, ("archive", "export"), "images", "",
              "`medal predict` over an archive folder whose rows are all written: listing, resume, rows, page"),
        Stage("predict_merge", predict_merge, MERGE_SIZES, QUICK_ARCHIVE, ("archive",), "images", "",
              "`medal predict predict.merge=true` of 4 finished shards of n rows and 2n pictures"),
        Stage("report", report, SIZES, QUICK, ("layout",), "training images", "",
              "the pipeline report's build (data section from the index)"),
        Stage("annotate_masks", annotate_masks, SIZES, QUICK, ("layout",), "pool images", "",
              "`medal annotate` masks mode: round 3 of a pool of n, page + state + one image"),
        Stage("annotate_gold", annotate_gold, SIZES, QUICK, ("layout", "rois"), "training images", "",
              "`medal annotate` gold mode: a 500-RoI request over n, page + state + one RoI"),
        Stage("table_folder", table_folder, TABLE_SIZES, QUICK_TABLE, ("runs",), "run folders", "",
              "`medal table` over n run folders (copies of one real run), Figure 12 + curves"),
        Stage("table_wandb", table_wandb, TABLE_SIZES, QUICK_TABLE, ("wandb",), "offline W&B runs", "",
              "`medal table table.source=wandb_offline` over n offline W&B runs (copies of one real run)"),
    ]
    return {stage.name: stage for stage in s}


STAGES = _stages()
