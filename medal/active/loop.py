"""The active-learning round loop (paper Algorithm 1), resumable at every step.

Each pass of the loop does the next thing the saved state says is missing: import pending answers,
train the committee on the labelled set, evaluate it (closing the round), check the stopping rules,
score the unlabelled pool and query. Decisions are derived from the saved pool state and the committee
checkpoint (stamped with the labelled count it was trained on), so a rerun after a crash or a stop for
a human oracle repeats no finished step, loses no label and never queries an image twice.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from medal.active.oracles import OracleWaiting
from medal.active.pool import ActivePool
from medal.atomic import atomic_path, write_json
from medal.data.images import read_image, resize, write_png
from medal.errors import MedalError
from medal.segment.committee import Committee
from medal.segment.infer import mean_probs, score_pool
from medal.segment.losses import dice_iou

log = logging.getLogger("medal.active")


@dataclass(frozen=True)
class ALConfig:
    """`al.*`: the round schedule and stopping rules."""

    initial: int = 100
    per_round: int = 100
    budget: int = 400
    patience: int = 2
    min_delta: float = 0.0
    reset_weights: bool = False
    strategy: str = "qbc"
    seed: int = 0
    score_batch_size: int = 16
    fast_scoring: bool = True  # bf16 autocast for pool scoring
    device: str = "cpu"  # where the committee scores, evaluates and predicts between fits

    def __post_init__(self) -> None:
        if self.initial < 1 or self.per_round < 1 or self.budget < self.initial:
            raise MedalError(
                f"al.initial={self.initial}, al.per_round={self.per_round}, al.budget={self.budget}: "
                "need initial >= 1, per_round >= 1 and budget >= initial"
            )
        if self.patience < 1:
            raise MedalError(f"al.patience={self.patience}: must be >= 1")


@dataclass
class SegData:
    """Every image at working resolution, polarity-normalised; held-out masks where the data set has them."""

    ids: list[str]
    split: np.ndarray  # (N,) 'train' | 'val' | 'test'
    images: np.ndarray  # (N, S, S) float in [0, 1]
    eval_masks: np.ndarray | None = None  # (N, S, S) bool, for val/test Dice only (never for training)
    has_eval: np.ndarray | None = None  # (N,) bool: row has a held-out mask
    rows: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.rows = {image_id: i for i, image_id in enumerate(self.ids)}

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    def where(self, split: str, with_masks: bool = False, limit: int | None = None) -> np.ndarray:
        idx = np.flatnonzero(self.split == split)
        if with_masks:
            idx = idx[self.has_eval[idx]] if self.has_eval is not None else idx[:0]
        return idx[:limit] if limit else idx


class Oracle(Protocol):
    def answer(self, round_no: int, ids: Sequence[str], ctx: QueryContext) -> dict[str, np.ndarray]: ...


@dataclass
class QueryContext:
    """What an oracle may need about the queried images: full size, the image, a starting mask."""

    shape_of: Callable[[str], tuple[int, int]]
    image_of: Callable[[str], np.ndarray]
    start_mask_of: Callable[[str], np.ndarray | None]


FitFn = Callable[[Committee, np.ndarray, np.ndarray, np.ndarray, np.ndarray], dict[str, float]]


@dataclass
class LoopResult:
    committee: Committee
    pool: ActivePool
    waiting: str | None = None  # the human oracle's instructions when the loop stopped for answers


def lowres(mask: np.ndarray, size: int) -> np.ndarray:
    """A full-size boolean mask stretched to size x size, as the image cache stretches images."""
    return resize(mask.astype(np.float32), (size, size)) > 0.5


def evaluate(committee: Committee, data: SegData, idx: np.ndarray, prefix: str, fast: bool) -> dict[str, float]:
    """Dice and IoU of the committee mean (Otsu-binarised) on rows `idx` at working resolution."""
    if len(idx) == 0 or data.eval_masks is None:
        return {}
    probs = torch.from_numpy(mean_probs(committee, data.images[idx], fast=fast))[:, None]
    gold = torch.from_numpy(np.asarray(data.eval_masks[idx], dtype=np.float32))[:, None]
    dice, iou = dice_iou(probs, gold)
    return {f"{prefix}/dice": float(dice.mean()), f"{prefix}/iou": float(iou.mean())}


def check_settings(path: Path, settings: dict[str, Any]) -> None:
    """Refuse to resume an AL folder made with other model/training settings; record them on first use.

    The saved pool and committee belong to the settings that made them: continuing them under others would
    mix two experiments in one learning curve. Budget and patience are left out: they decide when a run
    stops, not what it learns.
    """
    wanted = json.loads(json.dumps(settings, default=str))
    if path.is_file():
        saved = json.loads(path.read_text())
        changed = sorted(k for k in saved.keys() | wanted.keys() if saved.get(k) != wanted.get(k))
        if changed:
            first = changed[0]
            raise MedalError(
                f"al.dir={path.parent} holds a run made with other settings ({len(changed)} differ, e.g. {first}: "
                f"{saved.get(first)!r} then, {wanted.get(first)!r} now); delete that folder to start over or set "
                "al.dir to a new one")
        return
    write_json(path, wanted, indent=1, sort_keys=True)


class ActiveLearner:
    """Runs Algorithm 1 over `data`'s train split, persisting to `al_dir` (pool.json, committee.pt, labels/)."""

    def __init__(
        self,
        data: SegData,
        oracle: Oracle,
        ctx: QueryContext,
        make_committee: Callable[[], Committee],
        fit: FitFn,
        cfg: ALConfig,
        al_dir: str | Path,
        val_limit: int | None = None,
        on_query: Callable[[ActivePool, Committee, list[str]], None] | None = None,
        on_round: Callable[[ActivePool], None] | None = None,
        settings: dict[str, Any] | None = None,
    ) -> None:
        self.data, self.oracle, self.ctx, self.cfg = data, oracle, ctx, cfg
        self.make_committee, self.fit = make_committee, fit
        self.on_query, self.on_round = on_query, on_round  # figures and loggers; never change the state
        self.committee: Committee | None = None  # the latest trained committee (oracles start from its masks)
        self.dir = Path(al_dir)
        check_settings(self.dir / "settings.json", settings or {})
        self.pool = ActivePool.open([data.ids[i] for i in data.where("train")], self.dir / "pool.json")
        self.val_idx = data.where("val", with_masks=True, limit=val_limit)
        self.test_idx = data.where("test", with_masks=True)
        self.labels: dict[str, np.ndarray] = {}  # id -> low-res training mask
        for image_id, path in self.pool.answers.items():
            self.labels[image_id] = lowres(read_image(path) > 0.5, data.size)

    @property
    def checkpoint(self) -> Path:
        return self.dir / "committee.pt"

    def _load_committee(self) -> tuple[Committee, int]:
        committee = self.make_committee()
        if not self.checkpoint.is_file():
            return committee, -1
        saved = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        committee.load_state_dict(saved["state_dict"])
        return committee.to(self.cfg.device), int(saved["labelled"])

    def _save_committee(self, committee: Committee) -> None:
        with atomic_path(self.checkpoint) as tmp:
            torch.save({"state_dict": committee.state_dict(), "labelled": len(self.pool.labelled)}, tmp)

    def _import_answers(self) -> None:
        answers = self.oracle.answer(self.pool.round, list(self.pool.pending), self.ctx)
        for image_id in list(self.pool.pending):
            mask = answers[image_id]
            path = write_png(self.dir / "labels" / f"{image_id}.png", mask)
            self.labels[image_id] = lowres(mask, self.data.size)
            self.pool.label(image_id, path)

    def _train(self, committee: Committee) -> dict[str, float]:
        ids = sorted(self.pool.labelled, key=self.data.rows.__getitem__)
        rows = [self.data.rows[i] for i in ids]
        images = np.asarray(self.data.images[rows], dtype=np.float32)
        masks = np.stack([self.labels[i] for i in ids]).astype(np.float32)
        val_images = np.asarray(self.data.images[self.val_idx], dtype=np.float32)
        val_masks = (
            np.asarray(self.data.eval_masks[self.val_idx], dtype=np.float32)
            if self.data.eval_masks is not None
            else np.zeros((0, self.data.size, self.data.size), np.float32)
        )
        log.info("round %d: training the committee on %d labelled images", self.pool.round, len(ids))
        metrics = self.fit(committee, images, masks, val_images, val_masks)
        committee.to(self.cfg.device)  # Lightning hands the module back on the CPU
        return metrics

    def _query(self, committee: Committee) -> None:
        free = self.pool.unlabelled
        k = min(self.cfg.per_round, self.cfg.budget - len(self.pool.labelled), len(free))
        rows = np.array([self.data.rows[i] for i in free])
        gen = torch.Generator().manual_seed(self.cfg.seed * 1000 + self.pool.round)
        scores = score_pool(committee, self.data.images[rows], self.cfg.strategy, self.cfg.score_batch_size,
                            self.cfg.fast_scoring, gen)
        top = torch.topk(scores, k).indices.tolist()
        chosen = [free[j] for j in top]
        log.info("round %d: querying %d images (%s, scored on %s)", self.pool.round, len(chosen), self.cfg.strategy,
                 committee.device)
        self.pool.query(chosen, dict(zip(free, scores.tolist(), strict=True)))
        if self.on_query is not None:
            self.on_query(self.pool, committee, chosen)

    def run(self) -> LoopResult:
        cfg, pool = self.cfg, self.pool
        committee, trained_for = self._load_committee()
        self.committee = committee
        while pool.stopped is None:
            if pool.pending:
                try:
                    self._import_answers()
                except OracleWaiting as waiting:
                    return LoopResult(committee, pool, waiting=str(waiting))
                continue
            n = len(pool.labelled)
            if n == 0:
                rng = np.random.default_rng(cfg.seed)
                free = pool.unlabelled
                if len(free) < cfg.initial:
                    raise MedalError(f"al.initial={cfg.initial}: the train split has only {len(free)} images")
                pool.query([free[j] for j in sorted(rng.choice(len(free), cfg.initial, replace=False))])
                continue
            if not (pool.history and pool.history[-1]["labelled"] == n):
                if trained_for != n:
                    if cfg.reset_weights:
                        committee = self.committee = self.make_committee()
                    fit_metrics = self._train(committee)
                    self._save_committee(committee)
                    trained_for = n
                else:
                    fit_metrics = {}
                metrics = {**fit_metrics, **evaluate(committee, self.data, self.val_idx, "val", cfg.fast_scoring)}
                metrics.update(evaluate(committee, self.data, self.test_idx, "test", cfg.fast_scoring))
                pool.end_round(metrics, cfg.patience, cfg.min_delta)
                log.info("round %d: %d labelled, %s", pool.round - 1, n,
                         ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
                if self.on_round is not None:
                    self.on_round(pool)
            if n >= cfg.budget:
                pool.finish("budget")
            elif pool.rounds_since_best >= cfg.patience:
                pool.finish("patience")
            elif not pool.unlabelled:
                pool.finish("pool exhausted")
            else:
                self._query(committee)
        if trained_for != len(pool.labelled):
            committee, _ = self._load_committee()
        self.committee = committee
        return LoopResult(committee, pool)
