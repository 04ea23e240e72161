"""The active-learning round loop (paper Algorithm 1), resumable at every step.

Each pass of the loop does the next thing the saved state says is missing: import pending answers,
train the model on the labelled set, evaluate it (closing the round), check the stopping rule,
score the unlabelled pool and query. Decisions are derived from the saved pool state and the model
checkpoint (stamped with the labelled count it was trained on), so a rerun after a crash or a stop for
a human oracle repeats no finished step, loses no label and never queries an image twice.

The loop knows the model only as `medal.active.model.SegModel`, the strategy as
`medal.active.scoring.Strategy` and the oracle as `medal.active.oracles.Oracle`; what segmentation means
(networks, metrics, files) is the caller's (`medal.segment.experiment.build_learner`).

The folder (`al.dir`: pool.json, model.pt, labels/, round_XX/) belongs to the settings that made it: a
`medal.resume.Marker` with policy `refuse` records them, and a rerun under other settings is refused in
one line naming the first one that differs, so a person's labels never end up in two experiments' curve.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from medal.active.model import ImageSource, Rows, SegModel
from medal.active.oracles import Oracle, OracleWaiting, QueryContext, edit_effort
from medal.active.pool import ActivePool
from medal.active.scoring import Candidates, Strategy, one_of, select
from medal.active.strategies import score_spread
from medal.atomic import atomic_path
from medal.data.images import read_image, resize, write_png
from medal.errors import MedalError
from medal.resume import Marker

log = logging.getLogger("medal.active")

CHECKPOINT = "committee.pt"  # the latest trained model's weights and the labelled count they were fitted on
POOL_STATE = "pool.json"
MEMBER_INIT = ("shared", "independent")
MEMBER_DATA = ("bootstrap", "shared")


@dataclass(frozen=True)
class ALConfig:
    """`al.*` (conf/segment.yaml is where the values live) and the run's seed.

    The loop reads the schedule, the stopping rule and the scoring batch; `committee_size`, `val_limit` and
    `fast_scoring` and the members' `member_init` / `member_data` are read by the segmentation builder, but belong
    to this node, so a misspelt key in it is refused rather than ignored.
    """

    dir: str  # pool.json, the model checkpoint, labels/, round_XX/ (the folder oracle's)
    initial: int  # labels drawn at random before the first round
    per_round: int  # queried per round
    budget: int  # stop at this many labels
    patience: int  # or after this many rounds without val Dice improving by more than min_delta
    min_delta: float
    reset_weights: bool  # true: every round trains a fresh model; false: continue from the last round's
    committee_size: int
    member_init: str  # shared: every member starts from the same weights; independent: from seeds seed+k
    member_data: str  # bootstrap: each member trains on its own resample of the labelled set; shared: one
    val_limit: int | None  # validation images (with masks) for the stopping rule; null = all
    score_batch_size: int  # images per forward pass while scoring and predicting
    fast_scoring: bool | str  # bf16 autocast while scoring: true, false or auto
    seed: int

    def __post_init__(self) -> None:
        if self.initial < 1 or self.per_round < 1 or self.budget < self.initial:
            raise MedalError(
                f"al.initial={self.initial}, al.per_round={self.per_round}, al.budget={self.budget}: "
                "need initial >= 1, per_round >= 1 and budget >= initial"
            )
        if self.patience < 1:
            raise MedalError(f"al.patience={self.patience}: must be >= 1")
        if self.score_batch_size < 1:
            raise MedalError(f"al.score_batch_size={self.score_batch_size}: must be >= 1")
        one_of("al.member_init", self.member_init, MEMBER_INIT)
        one_of("al.member_data", self.member_data, MEMBER_DATA)


class PoolData(Protocol):
    """The images the loop draws from: every image at working resolution, row `rows[id]` of `images` (read on
    demand: the loop reads the labelled set whole and hands the pool to the strategy as `Rows`)."""

    ids: list[str]
    rows: dict[str, int]
    images: ImageSource  # (N, S, S) float32 in [0, 1]

    @property
    def size(self) -> int: ...

    def where(self, split: str, with_masks: bool = False, limit: int | None = None) -> np.ndarray: ...


@dataclass(frozen=True)
class RoundHooks:
    """Figures and loggers: called after a query and after a round; they never change the state."""

    on_query: Callable[[ActivePool, SegModel, list[str]], None] | None = None
    on_round: Callable[[ActivePool], None] | None = None


@dataclass
class LoopResult:
    model: SegModel
    pool: ActivePool
    waiting: str | None = None  # the human oracle's instructions when the loop stopped for answers


def lowres(mask: np.ndarray, size: int) -> np.ndarray:
    """A full-size boolean mask stretched to size x size, as the image cache stretches images."""
    return resize(mask.astype(np.float32), (size, size)) > 0.5


class ActiveLearner:
    """Runs Algorithm 1 over `data`'s train split, persisting to `cfg.dir`.

    `make_model` gives a fresh, untrained model (the first round, and every round with `reset_weights`);
    `evaluate(model)` returns the round's held-out metrics (`val/dice` drives the stopping rule); `settings`
    are what the folder's results depend on (refused when they change, see the module docstring).
    """

    def __init__(
        self,
        data: PoolData,
        make_model: Callable[[], SegModel],
        strategy: Strategy,
        oracle: Oracle,
        ctx: QueryContext,
        cfg: ALConfig,
        evaluate: Callable[[SegModel], dict[str, float]],
        settings: Mapping[str, Any],
        hooks: RoundHooks = RoundHooks(),
    ) -> None:
        self.data, self.make_model, self.strategy, self.oracle = data, make_model, strategy, oracle
        self.ctx, self.cfg, self.evaluate, self.hooks = ctx, cfg, evaluate, hooks
        self.dir = Path(cfg.dir)
        self.settings = dict(settings)
        self.marker = Marker.in_folder(self.dir, "al", policy="refuse", what="an active-learning run")
        if self.marker.read() is None and (self.dir / POOL_STATE).is_file():
            raise MedalError(f"al.dir={self.dir} holds a pool.json without a record of the settings that made it "
                             "(an older medal); finish it with that version, or set al.dir to a new folder")
        self.marker.begin(self.settings)  # refuses other settings, before anything is read or written
        self.pool = ActivePool.open([data.ids[i] for i in data.where("train")], self.dir / POOL_STATE)
        self.model: SegModel | None = None  # the latest trained model (oracles start from its masks)
        self.labels: dict[str, np.ndarray] = {}  # id -> low-res training mask
        for image_id, path in self.pool.answers.items():
            self.labels[image_id] = lowres(read_image(path) > 0.5, data.size)

    @property
    def checkpoint(self) -> Path:
        return self.dir / CHECKPOINT

    def _load_model(self) -> tuple[SegModel, int]:
        model = self.make_model()
        if not self.checkpoint.is_file():
            return model, -1
        saved = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["state_dict"])
        return model, int(saved["labelled"])

    def _save_model(self, model: SegModel) -> None:
        with atomic_path(self.checkpoint) as tmp:
            torch.save({"state_dict": model.state_dict(), "labelled": len(self.pool.labelled)}, tmp)

    def _import_answers(self) -> None:
        """Store every pending answer, with how far it is from the proposal a person would have been shown (the
        folder oracle's `<id>_start.png`: the coarse mask in round 0, the latest model's after). The pool is
        saved once, after the last answer: the masks are on disk before, and until then the answers are still
        pending, so a crash in between imports them again (pool.json of a 100,000-image pool is megabytes)."""
        answers = self.oracle.answer(self.pool.round, list(self.pool.pending), self.ctx)
        for image_id in list(self.pool.pending):
            mask = answers[image_id]
            path = write_png(self.dir / "labels" / f"{image_id}.png", mask)
            self.labels[image_id] = lowres(mask, self.data.size)
            proposal = self.ctx.start_mask_of(image_id)
            self.pool.label(image_id, path, edit_effort(proposal, mask) if proposal is not None else None, save=False)
        self.pool.save()

    def _train(self, model: SegModel) -> dict[str, float]:
        ids = sorted(self.pool.labelled, key=self.data.rows.__getitem__)
        images = np.asarray(self.data.images[[self.data.rows[i] for i in ids]], dtype=np.float32)  # <= al.budget
        masks = np.stack([self.labels[i] for i in ids]).astype(np.float32)
        log.info("round %d: training on %d labelled images", self.pool.round, len(ids))
        return model.fit(images, masks)

    def _query(self, model: SegModel) -> None:
        """Score the unlabelled pool, take the top k; the scores' spread (`query/cv`, `query/top_k_over_median`)
        joins the round's history record, so a score that cannot tell images apart shows. The candidates are
        `Rows` of the data's images: the strategy reads them `al.score_batch_size` at a time."""
        free = self.pool.unlabelled
        k = min(self.cfg.per_round, self.cfg.budget - len(self.pool.labelled), len(free))
        images = Rows(self.data.images, np.array([self.data.rows[i] for i in free], dtype=np.int64))
        labelled = Rows(self.data.images, np.array(sorted(self.data.rows[i] for i in self.pool.labelled),
                                                    dtype=np.int64))
        generator = torch.Generator().manual_seed(self.cfg.seed * 1000 + self.pool.round)
        candidates = Candidates(free, images, self.cfg.score_batch_size, labelled, k, self.pool.round)
        scores = self.strategy.score(model, candidates, generator)
        chosen = [free[j] for j in select(scores, k)]
        spread = {f"query/{name}": value for name, value in score_spread(scores, k).items()}
        log.info("round %d: querying %d images (%s; score cv %.3g, top-k / median %.3g)", self.pool.round,
                 len(chosen), self.strategy.name, spread["query/cv"], spread["query/top_k_over_median"])
        self.pool.query(chosen, dict(zip(free, scores.tolist(), strict=True)), spread)
        if self.hooks.on_query is not None:
            self.hooks.on_query(self.pool, model, chosen)

    def _draw_initial(self) -> None:
        free = self.pool.unlabelled
        if len(free) < self.cfg.initial:
            raise MedalError(f"al.initial={self.cfg.initial}: the train split has only {len(free)} images")
        rng = np.random.default_rng(self.cfg.seed)
        self.pool.query([free[j] for j in sorted(rng.choice(len(free), self.cfg.initial, replace=False))])

    def run(self) -> LoopResult:
        cfg, pool = self.cfg, self.pool
        model, trained_for = self._load_model()
        self.model = model
        while pool.stopped is None:
            if pool.pending:
                try:
                    self._import_answers()
                except OracleWaiting as waiting:
                    return LoopResult(model, pool, waiting=str(waiting))
                continue
            n = len(pool.labelled)
            if n == 0:
                self._draw_initial()
                continue
            if not (pool.history and pool.history[-1]["labelled"] == n):
                fit_metrics: dict[str, float] = {}
                if trained_for != n:
                    if cfg.reset_weights:
                        model = self.model = self.make_model()
                    fit_metrics = self._train(model)
                    self._save_model(model)
                    trained_for = n
                metrics = {**fit_metrics, **self.evaluate(model)}
                pool.end_round(metrics, cfg.min_delta)
                log.info("round %d: %d labelled, %s", pool.round - 1, n,
                         ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
                if self.hooks.on_round is not None:
                    self.hooks.on_round(pool)
            reason = pool.stop_reason(cfg.budget, cfg.patience)
            if reason is not None:
                pool.finish(reason)
            else:
                self._query(model)
        if trained_for != len(pool.labelled):
            model, _ = self._load_model()
        self.model = model
        self.marker.finish(self.settings, stopped=pool.stopped, labelled=len(pool.labelled))
        return LoopResult(model, pool)
