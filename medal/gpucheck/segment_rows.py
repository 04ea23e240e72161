"""Segmentation rows: the paper-size committee (three 192-map FC-DenseNets at 256 px) scoring the pool, and the
time of one active-learning round's training.

The committee is what `medal segment` builds, through the same functions (`configure`, `build_training`,
`build_model`), on the check's device and precision; the round's trainer is the task's own (`trainer=`) plus the
step timer. Scoring goes through the configured strategy (`strategy=qbc`: the members' bottleneck features, pairwise sine) in chunks of
`al.score_batch_size`, as the round loop calls it. Image content does not change the cost, so the images are
random.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from medal.active.scoring import Candidates
from medal.gpucheck.context import Context
from medal.gpucheck.record import Row
from medal.gpucheck.sizes import POOL_GOAL_S, POOL_IMAGES
from medal.gpucheck.timing import StepTimer
from medal.segment.experiment import SegmentSetup, build_model, build_training, configure

SCORE_SLICE = 256  # images per scoring call, so the deadline is checked while the pool is scored


def _setup(ctx: Context, run: str) -> tuple[DictConfig, SegmentSetup]:
    cfg = ctx.compose("segment", run, [f"data.root={ctx.phantoms}", f"segment.image_size={ctx.sizes.segment_size}",
                                       *ctx.sizes.segment_overrides])
    return cfg, configure(cfg)


def _images(n: int, size: int) -> np.ndarray:
    return np.random.default_rng(0).random((n, size, size), dtype=np.float32)


def pool_scoring(ctx: Context, deadline: float) -> Row:
    """Seconds to score the RSNA training pool (12,611 images), extrapolated from the rate measured in chunks of
    `al.score_batch_size`; for comparison, the rate in chunks four times larger and that of the members'
    features alone (device work and the copy back, without the strategy's arithmetic)."""
    _, setup = _setup(ctx, "pool_scoring")
    size, chunk = setup.segment.image_size, setup.al.score_batch_size
    empty = np.zeros((0, size, size), np.float32)
    model = build_model(setup, build_training(setup, 1, empty, empty))  # scores untrained: weights don't change cost
    images = _images(ctx.sizes.pool_images, size)
    labelled = _images(setup.al.initial, size)  # round 1's labelled set (diversity strategies measure distance to it)
    generator = torch.Generator().manual_seed(0)

    def score(part: np.ndarray, rows: int) -> torch.Tensor:  # as the round loop scores round 1's pool
        model.batch_size = rows
        candidates = Candidates(ids=[str(i) for i in range(len(part))], images=part, chunk=rows, labelled=labelled,
                                k=min(setup.al.per_round, len(part)), round_no=1)
        return setup.strategy.score(model, candidates, generator)

    for rows in (chunk, 4 * chunk):  # warm-up: cuDNN picks its algorithms for each batch shape
        score(images[:rows], rows)
    now = time.perf_counter()
    thirds = [now + (deadline - now) * k / 3 for k in (1, 2, 3)]
    rates = {rows: _rate(lambda part, r=rows: score(part, r), images, end) for rows, end in ((chunk, thirds[0]),
                                                                                          (4 * chunk, thirds[1]))}
    model.batch_size = chunk
    features = _rate(model.features, images, thirds[2])
    dim = int(model.features(images[:1]).shape[-1])
    note = (f"{rates[chunk]:.0f} img/s in chunks of {chunk} (al.score_batch_size), {rates[4 * chunk]:.0f} in chunks "
            f"of {4 * chunk}; features alone {features:.0f} img/s; {model.members} members, D={dim}")
    detail: dict[str, Any] = {"img_s_by_chunk": rates, "members": model.members, "image_size": size,
                              "bf16": setup.fast, "strategy": setup.strategy.name, "features_only_img_s": features,
                              "feature_dim": dim}
    return Row("", POOL_IMAGES / rates[chunk], "s", goal=POOL_GOAL_S, lower_is_better=True, note=note, detail=detail)


def _rate(fn: Any, images: np.ndarray, deadline: float) -> float:
    """Images/s of `fn` over slices of `images` until all are done or the deadline passes (at least one slice;
    `fn` returns CPU tensors, so the device's work is finished when it returns)."""
    done, started = 0, time.perf_counter()
    for start in range(0, len(images), SCORE_SLICE):
        fn(images[start:start + SCORE_SLICE])
        done += len(images[start:start + SCORE_SLICE])
        if time.perf_counter() > deadline:
            break
    return done / (time.perf_counter() - started)


def round_training(ctx: Context, deadline: float) -> Row:
    """Seconds of one round's training (`segment.steps_per_round` steps of `segment.batch_size`, every member),
    measured, or extrapolated from the median step when the time box ends the round first."""
    cfg, setup = _setup(ctx, "round_training")
    timer = StepTimer(deadline, lambda batch: len(batch[0]), min_steps=ctx.sizes.warmup_steps + 2)
    size, seg = setup.segment.image_size, setup.segment

    def make_trainer():  # `setup.make_trainer`'s, quiet and with the step timer
        return instantiate(cfg.trainer, max_epochs=1, logger=False, enable_checkpointing=False,
                           enable_model_summary=False, callbacks=[timer])

    empty = np.zeros((0, size, size), np.float32)
    timed = replace(setup, make_trainer=make_trainer)
    model = build_model(timed, build_training(timed, seg.steps_per_round, empty, empty))
    images = _images(max(seg.batch_size * 4, 32), size)
    started = time.perf_counter()
    model.fit(images, (images > 0.5).astype(np.float32))
    wall = time.perf_counter() - started
    warmup = ctx.sizes.warmup_steps
    step_s = timer.step_seconds(warmup)
    complete = timer.steps >= seg.steps_per_round
    seconds = wall if complete else seg.steps_per_round * step_s
    note = (f"{seg.steps_per_round} steps x batch {seg.batch_size} x {model.members} members at {size} px; "
            + (f"extrapolated from {timer.steps} steps" if not complete else "measured"))
    return Row("", seconds, "s", note=note, detail={"steps_per_round": seg.steps_per_round, "steps_timed": timer.steps,
                                         "batch_size": seg.batch_size, "median_step_s": step_s,
                                         "members": model.members, "image_size": size,
                                         "extrapolated": not complete, "train_img_s": timer.rate(warmup)})
