"""Stratified querying: random (or power-sampled) draws within strata of the pool, known without labels.

nnActive (Lüth et al. 2025) found that no strategy reliably beats a random baseline adapted to the task, and
ClaSP PE (Lüth et al. 2026, arXiv 2601.13677) beat it by drawing within class strata. This module holds the
pieces for both readings here, apart from `scoring.py`'s strategies so each grows on its own:

- pure functions: per-image acquisition statistics (`image_statistics`), strata from them (`kmeans_strata`),
  how many of the k queries each stratum gets (`allocate`: in proportion to its size, or equally, which is what
  lets a rare acquisition type be drawn more often than its share), and a draw of that many per stratum by
  given keys (`stratified_pick`: uniform keys = stratified random, power keys = stratified power sampling);
- `AcquisitionRandom` (`strategy=random_acquisition`): random within clusters of label-free image statistics,
  equal allocation; `StratifiedPower` (`strategy=entropy_power_stratified`): power-sampled entropy within the
  foreground-share strata of `StratifiedRandom` (ClaSP PE's closest reading with one foreground class).

Every strategy returns (N,) scores whose top k is its batch, as `scoring.select` expects.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from skimage.filters import threshold_otsu
from sklearn.cluster import KMeans

from medal.active import strategies
from medal.active.model import SegModel, in_chunks
from medal.active.scoring import Candidates, _strategy
from medal.errors import MedalError

ALLOCATIONS = ("proportional", "equal")


def _border(image: np.ndarray) -> np.ndarray:
    w = max(1, image.shape[-1] // 16)
    return np.concatenate([image[:w].ravel(), image[-w:].ravel(), image[w:-w, :w].ravel(), image[w:-w, -w:].ravel()])


def _otsu(image: np.ndarray) -> tuple[float, float]:
    """(share of pixels above Otsu's threshold, Otsu's separability: between-class / total variance)."""
    if float(image.max() - image.min()) <= 1e-12:
        return 0.0, 0.0
    fg = image > threshold_otsu(image)
    share = float(fg.mean())
    if share in (0.0, 1.0):
        return share, 0.0
    between = share * (1 - share) * float(image[fg].mean() - image[~fg].mean()) ** 2
    return share, between / float(image.var())


def _statistics(image: np.ndarray) -> dict[str, float]:
    """Every statistic of `STATISTICS` for one image (Otsu's threshold found once)."""
    p10, p50, p90 = np.percentile(image, [10, 50, 90])
    share, separability = _otsu(image)
    return {"background": float(p10), "median": float(p50), "contrast": float(p90 - p10),
            "border": float(_border(image).mean()), "otsu_share": share, "separability": separability}


#: What each statistic measures of an acquisition (images in [0, 1], polarity as the networks see them).
STATISTICS = {
    "background": "the 10th percentile: the dark level (exposure, fog)",
    "median": "the median: how much of the frame is bright",
    "contrast": "the 10-90% range: low-contrast exposures",
    "border": "the outer ring's mean: collimator frames and bright edges",
    "otsu_share": "the share above Otsu's threshold: the coarse mask (hand size, or a frame)",
    "separability": "Otsu's between-class over total variance: how cleanly one threshold splits the image",
}


def image_statistics(images: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """(N, len(names)) float64 statistics of images (N, S, S) in [0, 1] (`STATISTICS`).

    Examples:
        >>> x = np.zeros((2, 16, 16)); x[0, 4:12, 4:12] = 1.0; x[1, :, :] = 0.5; x[1, 0, :] = 1.0
        >>> image_statistics(x, ["otsu_share", "border"]).round(3).tolist()
        [[0.25, 0.0], [0.062, 0.633]]
        >>> image_statistics(x, ["sharpness"])
        Traceback (most recent call last):
        ...
        medal.errors.MedalError: strategy.statistics: unknown 'sharpness'; use background, median, contrast, border, otsu_share, separability
    """
    unknown = [n for n in names if n not in STATISTICS]
    if unknown:
        raise MedalError(f"strategy.statistics: unknown {unknown[0]!r}; use {', '.join(STATISTICS)}")
    x = np.asarray(images, dtype=np.float64)
    if x.ndim != 3:
        raise MedalError(f"image statistics: images shape {x.shape}, expected (N, S, S)")
    rows = [_statistics(image) for image in x]
    return np.array([[row[n] for n in names] for row in rows]).reshape(len(x), len(names))


def kmeans_strata(values: np.ndarray, strata: int, seed: int) -> torch.Tensor:
    """(N,) stratum labels: k-means (scikit-learn, `n_init=10`) on the standardised columns of values (N, F), so
    every statistic counts alike whatever its unit. Fewer distinct rows than strata: one stratum per row.

    Examples:
        >>> v = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0], [5.0, 5.1]])
        >>> labels = kmeans_strata(v, 2, seed=0).tolist()
        >>> labels[0] == labels[1] != labels[2] == labels[3] == labels[4]
        True
    """
    if strata < 1:
        raise MedalError(f"strategy.strata={strata}: must be >= 1")
    v = np.asarray(values, dtype=np.float64)
    n = len(v)
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    sd = v.std(0)
    z = (v - v.mean(0)) / np.where(sd > 1e-12, sd, 1.0)
    k = min(strata, len(np.unique(z.round(12), axis=0)))
    if k <= 1:
        return torch.zeros(n, dtype=torch.long)
    labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(z)
    return torch.as_tensor(labels, dtype=torch.long)


def _round_randomly(share: np.ndarray, generator: torch.Generator | None) -> np.ndarray:
    """Integers with expectation `share` (its sum an integer): each fraction rounded up with probability equal to
    itself, jointly so the sum is kept (systematic sampling: one uniform u, points u, u + 1, ... on the
    cumulated fractions).

    Examples:
        >>> _round_randomly(np.array([3.0, 1.5, 0.5]), torch.Generator().manual_seed(0)).tolist()
        [3, 1, 1]
    """
    base = np.floor(share + 1e-9)
    cum = np.concatenate([[0.0], np.cumsum(share - base)])
    u = float(torch.rand(1, generator=generator, dtype=torch.float64))
    extra = np.ceil(cum[1:] - u - 1e-9) - np.ceil(cum[:-1] - u - 1e-9)
    return (base + extra).astype(int)


def allocate(sizes: Sequence[int], k: int, allocation: str, generator: torch.Generator | None = None) -> list[int]:
    """How many of k queries each stratum of `sizes` images gets. `proportional`: k * n_s / N, fractions rounded
    at random with their own probability (`_round_randomly`), so each stratum's expected quota is its share.
    `equal`: water-filling — every stratum the same level L (or all it holds, if fewer), the last ones to
    strata drawn at random among those with more; never more than a stratum holds.

    Examples:
        >>> allocate([90, 5, 5], 6, "equal", torch.Generator().manual_seed(0))
        [2, 2, 2]
        >>> sorted(allocate([90, 1, 5], 6, "equal", torch.Generator().manual_seed(0)))  # stratum 1 holds one image
        [1, 2, 3]
        >>> sum(allocate([90, 5, 5], 7, "proportional", torch.Generator().manual_seed(0)))
        7
    """
    if allocation not in ALLOCATIONS:
        raise MedalError(f"strategy.allocation={allocation!r}: use one of {', '.join(ALLOCATIONS)}")
    n = np.array([int(s) for s in sizes], dtype=int)
    k = min(int(k), int(n.sum()))
    if k == 0:
        return [0] * len(n)
    if allocation == "proportional":
        return _round_randomly(k * n / n.sum(), generator).tolist()
    level = 0
    while np.minimum(n, level + 1).sum() <= k:
        level += 1
    quotas = np.minimum(n, level)
    more = np.flatnonzero(n > level)  # left < len(more), or level would be higher
    left = k - int(quotas.sum())
    quotas[more[torch.randperm(len(more), generator=generator)[:left].numpy()]] += 1
    return quotas.tolist()


def stratified_pick(strata: torch.Tensor, keys: torch.Tensor, k: int, allocation: str,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Scores (N,) whose top k takes `allocate`'s quota from each stratum, each stratum's highest `keys` first.
    strata (N,) integer labels; keys (N,) (uniform draws: stratified random; power keys: stratified power).

    Picked images score 1 + their key's rank within the picks, so `select`'s top k is exactly the batch;
    the rest score their key's rank below 1.

    Examples:
        >>> strata = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1])
        >>> keys = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.1, 0.2])
        >>> torch.topk(stratified_pick(strata, keys, 4, "equal"), 4).indices.sort().values.tolist()
        [0, 1, 6, 7]
        >>> torch.topk(stratified_pick(strata, keys, 4, "proportional"), 4).indices.sort().values.tolist()
        [0, 1, 2, 7]
    """
    if strata.shape != keys.shape or strata.dim() != 1:
        raise MedalError(f"stratified pick: strata {tuple(strata.shape)} and keys {tuple(keys.shape)} must be (N,)")
    labels = torch.unique(strata)
    members = [torch.nonzero(strata == s)[:, 0] for s in labels]
    quotas = allocate([len(m) for m in members], k, allocation, generator)
    rank = torch.argsort(torch.argsort(keys.double())).double() / max(len(keys), 1)  # in [0, 1)
    scores = rank.clone()
    for rows, quota in zip(members, quotas, strict=True):
        if quota:
            top = rows[torch.topk(keys[rows].double(), quota).indices]
            scores[top] = 1.0 + rank[top]
    return scores.float()


def foreground_share(model: SegModel, candidates: Candidates) -> torch.Tensor:
    """(N,) share of each candidate's pixels the committee's mean mask calls foreground (probability > 0.5)."""
    return in_chunks(lambda x: (model.predict_probs(x).mean(0) > 0.5).flatten(1).float().mean(1),
                     candidates.images, candidates.chunk)


def _seed(generator: torch.Generator) -> int:
    return int(torch.randint(2**31 - 1, (1,), generator=generator))


@dataclass(frozen=True)
class AcquisitionRandom:
    """Random queries balanced over acquisition types found without labels: the pool is cut into `strata`
    k-means clusters of image `statistics` (`STATISTICS`: exposure, contrast, frames, the coarse mask's share),
    and each cluster gives an `allocation` share of the round's queries (`equal`: rare acquisition types are
    drawn as often as common ones). Task-adapted, like nnActive's foreground-aware random, but from the images
    alone: the model is not consulted, so it is as cheap as `random`."""

    name: str
    strata: int
    allocation: str
    statistics: Sequence[str]

    def __post_init__(self) -> None:
        if self.allocation not in ALLOCATIONS:
            raise MedalError(f"strategy.allocation={self.allocation!r}: use one of {', '.join(ALLOCATIONS)}")
        if self.strata < 1 or not self.statistics:
            raise MedalError(f"strategy.strata={self.strata}, strategy.statistics={list(self.statistics)}: "
                             "need >= 1 stratum and >= 1 statistic")
        image_statistics(np.zeros((1, 4, 4)), self.statistics)  # names checked now, not in round 1

    def strata_of(self, images: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        return kmeans_strata(image_statistics(images, self.statistics), self.strata, _seed(generator))

    def score(self, model: SegModel, candidates: Candidates, generator: torch.Generator) -> torch.Tensor:
        strata = self.strata_of(candidates.images, generator)
        keys = strategies.uniform(len(candidates.ids), generator)
        return stratified_pick(strata, keys, candidates.k, self.allocation, generator)


@dataclass(frozen=True)
class StratifiedPower:
    """ClaSP PE's closest reading with one foreground class: the pool is cut into `strata` quantile bins of the
    committee's predicted foreground share (`StratifiedRandom`'s strata, proportional allocation), and within each
    bin the images are drawn by power sampling of the `base` score (probability ∝ score^beta_r, beta_r = beta *
    (1 + growth)^round: diverse early, greedy late; `strategies.power`)."""

    name: str
    base: Any  # a strategy's config node, built in __post_init__; its scores must be >= 0
    beta: float
    growth: float
    strata: int
    allocation: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "base", _strategy(self.base, "strategy.base"))
        if self.beta < 0 or self.growth < 0:
            raise MedalError(f"strategy.beta={self.beta}, strategy.growth={self.growth}: both must be >= 0")
        if self.allocation not in ALLOCATIONS or self.strata < 1:
            raise MedalError(f"strategy.allocation={self.allocation!r}, strategy.strata={self.strata}: use one of "
                             f"{', '.join(ALLOCATIONS)} and >= 1 stratum")

    def beta_at(self, round_no: int) -> float:
        return self.beta * (1.0 + self.growth) ** round_no

    def score(self, model: SegModel, candidates: Candidates, generator: torch.Generator) -> torch.Tensor:
        strata = strategies.quantile_strata(foreground_share(model, candidates), self.strata)
        keys = strategies.power(self.base.score(model, candidates, generator), self.beta_at(candidates.round_no),
                                generator)
        return stratified_pick(strata, keys, candidates.k, self.allocation, generator)


def eta_squared(values: np.ndarray, strata: np.ndarray) -> float:
    """Share of the variance of `values` that lies between the strata (η², the correlation ratio): how much
    of what varies a stratification captures; proportional stratified sampling only removes this share of a
    draw's variance, and none of its expectation.

    Examples:
        >>> eta_squared(np.array([1.0, 1.0, 3.0, 3.0]), np.array([0, 0, 1, 1]))
        1.0
        >>> eta_squared(np.array([1.0, 3.0, 1.0, 3.0]), np.array([0, 0, 1, 1]))
        0.0
    """
    v, s = np.asarray(values, np.float64), np.asarray(strata)
    total = float(((v - v.mean()) ** 2).sum())
    if total <= 0 or math.isclose(total, 0.0):
        return 0.0
    between = sum(float((s == g).sum()) * (float(v[s == g].mean()) - float(v.mean())) ** 2 for g in np.unique(s))
    return between / total
