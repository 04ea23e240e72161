"""Pool scoring: a strategy (the `strategy=` config group) scores the unlabelled candidates with the current
model; `select` takes the top k. The loop calls both, once per round.

A strategy sees the model only through `medal.active.model.SegModel` and the candidates' ids and images, so
one that needs more (ground truth for an oracle upper bound, the labelled set for diversity) is a new class
with the same `score` method and a YAML file naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from medal.active import strategies
from medal.active.model import SegModel, in_chunks
from medal.errors import MedalError


@dataclass(frozen=True)
class Candidates:
    """The pool images a strategy scores: ids (N) and images (N, S, S), predicted `chunk` rows at a time."""

    ids: list[str]
    images: np.ndarray
    chunk: int

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.images):
            raise MedalError(f"candidates: {len(self.ids)} ids but {len(self.images)} images")


class Strategy(Protocol):
    """`score` returns (N,) scores for the candidates, higher = query first."""

    name: str

    def score(self, model: SegModel, candidates: Candidates, generator: torch.Generator) -> torch.Tensor: ...


@dataclass(frozen=True)
class PerImage:
    """A strategy whose score of an image depends on that image alone: scored a chunk of candidates at a time,
    so the pool's probability maps or features are never all held at once."""

    name: str

    def score(self, model: SegModel, candidates: Candidates, generator: torch.Generator) -> torch.Tensor:
        return in_chunks(lambda images: self.score_chunk(model, images), candidates.images, candidates.chunk)

    def score_chunk(self, model: SegModel, images: np.ndarray) -> torch.Tensor:
        """(b,) scores of images (b, S, S)."""
        raise NotImplementedError


@dataclass(frozen=True)
class QBC(PerImage):
    """Query-by-committee (paper eq. 5-7): the images whose members' feature vectors disagree most."""

    def score_chunk(self, model: SegModel, images: np.ndarray) -> torch.Tensor:
        return strategies.pairwise_sine(model.features(images))


@dataclass(frozen=True)
class Entropy(PerImage):
    """Uncertainty sampling: the images whose members' mean mask has the highest mean pixel entropy."""

    def score_chunk(self, model: SegModel, images: np.ndarray) -> torch.Tensor:
        return strategies.mean_entropy(model.predict_probs(images))


@dataclass(frozen=True)
class Random:
    """Random queries (the control): uniform scores from the round's generator; the model is not consulted."""

    name: str

    def score(self, model: SegModel, candidates: Candidates, generator: torch.Generator) -> torch.Tensor:
        return strategies.uniform(len(candidates.ids), generator)


def select(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the `k` highest scores, best first (all of them when k exceeds the pool).

    Examples:
        >>> select(torch.tensor([0.2, 0.9, 0.5, 0.1]), 2)
        [1, 2]
        >>> select(torch.tensor([0.2]), 3)
        [0]
    """
    if k < 0:
        raise MedalError(f"query size {k}: must be >= 0")
    if scores.dim() != 1:
        raise MedalError(f"strategy scores shape {tuple(scores.shape)}: expected one score per candidate (N,)")
    if not bool(torch.isfinite(scores).all()):
        raise MedalError(f"strategy scores: {int((~torch.isfinite(scores)).sum())} are not finite (NaN or inf)")
    return torch.topk(scores, min(k, scores.numel()), sorted=True).indices.tolist()
