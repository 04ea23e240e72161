"""Pool scoring: a strategy (the `strategy=` config group) scores the unlabelled candidates with the current
model; `select` takes the top k. The loop calls both, once per round.

A strategy sees the model only through `medal.active.model.SegModel` (and `MCDropoutModel` for BALD with MC
dropout) and the `Candidates`: the unlabelled images, the labelled ones (diversity needs them), how many the loop
will take and the round. Every strategy returns (N,) scores, higher = query first; a batch strategy (core-set,
the hybrid) returns scores whose top k is its batch, so `select` stays the one place that picks. One that needs
more (ground truth for the benchmark's oracle upper bound) is a new class with the same `score` method and a
YAML file naming it.

Options that wrap another strategy (`Power.base`, `Hybrid.uncertainty`) hold its config node, built here through
`medal.config.build_from`, so a typo in the nested node fails in one line too.

Memory: the candidates are read `chunk` images at a time and every strategy reduces a chunk before the next, so
nothing holds the pool's images, probability maps or feature maps at once. Core-set and the hybrid keep one
compact descriptor per image and member (`diversity_features`: the bottleneck projected to `dim` values, 3 x
12,611 x 512 float32 = 77 MB, against 30 GB for the paper's flattened 192 x 32 x 32 bottleneck at 256 px).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from sklearn.random_projection import SparseRandomProjection

from medal.active import strategies
from medal.active.model import ImageSource, MCDropoutModel, Rows, SegModel, chunks, in_chunks
from medal.config import build_from
from medal.errors import MedalError

QBC_DESCRIPTORS = ("bottleneck", "probs")
BALD_SOURCES = ("committee", "mc_dropout")
DIVERSITY_DESCRIPTORS = ("projected", "full")
PROJECTION_SEED = 0  # one projection for every run and round: a fixed measuring instrument, like a metric


@dataclass(frozen=True)
class Candidates:
    """The pool images a strategy scores: ids (N) and images (N, S, S), read and predicted `chunk` rows at a
    time; the labelled images (L, S, S) (diversity strategies measure distance to them); `k`, how many the loop
    takes this round; `round_no`, for strategies whose behaviour follows a schedule. The images are any
    `ImageSource`: the loop passes `Rows` of the data set, read from disk a chunk at a time."""

    ids: list[str]
    images: ImageSource
    chunk: int
    labelled: ImageSource
    k: int
    round_no: int

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.images):
            raise MedalError(f"candidates: {len(self.ids)} ids but {len(self.images)} images")


class Strategy(Protocol):
    """`score` returns (N,) scores for the candidates, higher = query first."""

    name: str

    def score(self, model: SegModel, candidates: Candidates, generator: torch.Generator) -> torch.Tensor: ...


def one_of(key: str, value: str, choices: tuple[str, ...]) -> None:
    """Refuse an option value outside `choices`, in one line naming the key.

    Examples:
        >>> one_of("strategy.source", "ensemble", BALD_SOURCES)
        Traceback (most recent call last):
        ...
        medal.errors.MedalError: strategy.source='ensemble': use one of committee, mc_dropout
    """
    if value not in choices:
        raise MedalError(f"{key}={value!r}: use one of {', '.join(choices)}")


def _strategy(node: Any, key: str) -> Strategy:
    """A nested strategy option (a dict with `_target_`), built and checked."""
    built = node if not isinstance(node, dict) else build_from(node, key)
    if not callable(getattr(built, "score", None)):
        raise MedalError(f"{key}: {type(built).__name__} has no score() method, so it is not a strategy")
    return built


@dataclass(frozen=True)
class PerImage:
    """A strategy whose score of an image depends on that image alone: scored a chunk of candidates at a time,
    so the pool's probability maps or features are never all held at once."""

    name: str

    def score(self, model: SegModel, candidates: Candidates, generator: torch.Generator) -> torch.Tensor:
        return in_chunks(lambda images: self.score_chunk(model, images, generator), candidates.images,
                         candidates.chunk)

    def score_chunk(self, model: SegModel, images: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        """(b,) scores of images (b, S, S)."""
        raise NotImplementedError


@dataclass(frozen=True)
class QBC(PerImage):
    """Query-by-committee (paper eq. 5-7): the images whose members' vectors disagree most (`pairwise_sine`).

    `descriptor`: `probs` is each member's probability map pooled to `grid` x `grid`, a space every member
    shares whatever its weights; `bottleneck` is the paper's flattened middle feature map. Members keep their own
    channel bases (unrelated after independent initialisations, and drifting apart even from a shared one,
    `al.member_init=shared`), so bottleneck vectors of two members look near-orthogonal for every image and
    every image scores close to M(M-1)/2: on small phantom committees the pool's coefficient of variation was
    ~0.005 (0.02 with a shared start), against ~0.4 for `probs` (tests/test_segment_strategies.py measures it).
    """

    descriptor: str
    grid: int

    def __post_init__(self) -> None:
        one_of("strategy.descriptor", self.descriptor, QBC_DESCRIPTORS)
        if self.grid < 1:
            raise MedalError(f"strategy.grid={self.grid}: must be >= 1")

    def score_chunk(self, model: SegModel, images: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        if self.descriptor == "probs":
            return strategies.pairwise_sine(strategies.probability_descriptor(model.predict_probs(images), self.grid))
        features = model.features(images)
        if features.shape[-1] == 0:
            raise MedalError("strategy=qbc descriptor=bottleneck: the segmenter has no feature vector; "
                             "use strategy.descriptor=probs")
        return strategies.pairwise_sine(features)


@dataclass(frozen=True)
class Entropy(PerImage):
    """Uncertainty sampling: the images whose members' mean mask has the highest mean pixel entropy."""

    def score_chunk(self, model: SegModel, images: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        return strategies.mean_entropy(model.predict_probs(images))


@dataclass(frozen=True)
class VoteEntropy(PerImage):
    """Vote (consensus) entropy of the members' masks (members vote foreground above `threshold`)."""

    threshold: float

    def score_chunk(self, model: SegModel, images: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        return strategies.vote_entropy(model.predict_probs(images), self.threshold)


@dataclass(frozen=True)
class BALD(PerImage):
    """BALD: `source=committee` treats the members as samples of the posterior (an ensemble); `mc_dropout` draws
    `samples` dropout passes of the first member (the model must be an `MCDropoutModel` with dropout > 0)."""

    source: str
    samples: int

    def __post_init__(self) -> None:
        one_of("strategy.source", self.source, BALD_SOURCES)
        if self.samples < 2:
            raise MedalError(f"strategy.samples={self.samples}: MC dropout needs >= 2 samples")

    def score_chunk(self, model: SegModel, images: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        if self.source == "committee":
            return strategies.bald(model.predict_probs(images))
        if not isinstance(model, MCDropoutModel):
            raise MedalError(f"strategy=bald source=mc_dropout: {type(model).__name__} cannot sample with dropout")
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        return strategies.bald(model.mc_probs(images, self.samples, seed))


@dataclass(frozen=True)
class Random:
    """Random queries (the control): uniform scores from the round's generator; the model is not consulted."""

    name: str

    def score(self, model: SegModel, candidates: Candidates, generator: torch.Generator) -> torch.Tensor:
        return strategies.uniform(len(candidates.ids), generator)


@dataclass(frozen=True)
class Baseline(Random):
    """`strategy=unet_random`: the paper's baseline (no active learning) as a strategy choice, so a sweep over
    strategies covers it. Its YAML selects `segmenter=unet_random`, which draws every label at random at once;
    `medal.segment.experiment.configure` refuses it beside a segmenter that queries."""


@dataclass(frozen=True)
class StratifiedRandom:
    """Random queries stratified by the predicted hand size (a foreground-aware random baseline, after nnActive):
    the pool is cut into `strata` quantile bins of the committee-mean mask's foreground share (probability >
    0.5), and each bin gives labels in proportion to its size, so small hands and failed segmentations (too
    little or too much foreground) are not left to chance."""

    name: str
    strata: int

    def score(self, model: SegModel, candidates: Candidates, generator: torch.Generator) -> torch.Tensor:
        share = in_chunks(lambda x: (model.predict_probs(x).mean(0) > 0.5).flatten(1).float().mean(1),
                          candidates.images, candidates.chunk)
        return strategies.stratified_uniform(strategies.quantile_strata(share, self.strata), generator)


@functools.lru_cache(maxsize=4)
def projection(dim_in: int, dim: int) -> SparseRandomProjection:
    """The seeded very sparse random projection (Li, Hastie & Church 2006; scikit-learn's, density 1/sqrt(dim_in))
    of dim_in-vectors to `dim`: a Johnson-Lindenstrauss map, so distances keep their size within ~1/sqrt(2 dim)
    relative error (3 % at 512; the segmentation benchmark records it). Its matrix holds ~dim·sqrt(dim_in)
    values (0.2 M for the paper's 196,608-value bottleneck), built once per size."""
    return SparseRandomProjection(n_components=dim, dense_output=True, random_state=PROJECTION_SEED).fit(
        np.zeros((1, dim_in), dtype=np.float32))


def _refuse_beyond_memory(n: int, members: int, dim: int) -> None:
    """`descriptor=full` holds (n, members, dim) float32: refused in one line when that exceeds the machine's
    physical memory (where the system says it), after the first chunk, before the rest is scored."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):  # a system that does not say: nothing to check against
        return
    need = 4 * n * members * dim
    if need > physical:
        raise MedalError(f"strategy.descriptor=full: {n} images x {members} members x {dim} values need "
                         f"{need / 2**30:.1f} GiB, more than this machine's {physical / 2**30:.1f} GiB; "
                         "use strategy.descriptor=projected")


def member_vectors(model: SegModel, images: ImageSource, chunk: int, descriptor: str,
                   dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every member's descriptor of `images` (N, S, S), read `chunk` at a time: ((N, M, d) float32, (N, M)
    float64 norms of the members' full feature vectors). `projected`: each (M, b, D) chunk of bottleneck vectors
    through `projection(D, dim)` as it comes (d = dim; the vectors themselves when D <= dim); `full`: the vectors
    as they are (d = D). Only one chunk of full-size vectors exists at a time."""
    out = norms = None
    rows = 0
    for part in chunks(images, chunk, desc="features"):
        features = model.features(part)  # (M, b, D)
        m, b, dim_in = features.shape
        if dim_in == 0:
            raise MedalError("diversity strategies (coreset, hybrid) need feature vectors; this segmenter has none")
        project = descriptor == "projected" and dim_in > dim
        if out is None:
            if descriptor == "full":
                _refuse_beyond_memory(len(images), m, dim_in)
            out = torch.empty((len(images), m, dim if project else dim_in), dtype=torch.float32)
            norms = torch.empty((len(images), m), dtype=torch.float64)
        norms[rows:rows + b] = torch.linalg.vector_norm(features.float(), dim=-1).T  # float32: 1e-6 relative
        for k in range(m):  # a member at a time: the projection's temporaries are one member's (b, D)
            vectors = features[k].float()
            if project:
                vectors = torch.from_numpy(projection(dim_in, dim).transform(vectors.numpy()))
            out[rows:rows + b, k] = vectors
        rows += b
    if out is None:
        return torch.empty((0, 0, 0)), torch.empty((0, 0), dtype=torch.float64)
    return out, norms


def diversity_features(model: SegModel, sets: list[ImageSource], chunk: int, descriptor: str,
                       dim: int) -> list[torch.Tensor]:
    """Feature vectors (N_i, M*d) float32 of each image set in `sets` (the pool and the labelled images), for
    distances between images: every member's descriptor (`member_vectors`), each member scaled by its mean full
    norm over all the sets so each counts equally, concatenated. Members need no common basis: a distance compares
    two images within one member's own space. A projection is linear, so scaling after it is scaling before."""
    parts = [member_vectors(model, images, chunk, descriptor, dim) for images in sets]
    norms = torch.cat([n for _, n in parts if len(n)])  # (sum N_i, M)
    scale = norms.mean(0).clamp(min=1e-12).float()  # (M,)
    return [v.div_(scale[None, :, None]).flatten(1) if len(v) else torch.empty((0, 0)) for v, _ in parts]


def distance_distortion(model: SegModel, images: ImageSource, chunk: int, dim: int) -> dict[str, float]:
    """How far the `projected` descriptor's distances are from the `full` one's on `images` (a sample of the pool:
    the full vectors of all of them are held): the ratio projected / full of every pair's distance, both scaled
    alike (as `diversity_features` scales them), as its mean, sd, min and max over the pairs; `dim_in`, the full
    vectors' size per member (no projection when it is <= dim: every ratio 1)."""
    full, norms = member_vectors(model, images, chunk, "full", dim)
    projected, _ = member_vectors(model, images, chunk, "projected", dim)
    scale = norms.mean(0).clamp(min=1e-12)[None, :, None]
    exact, approx = (torch.pdist((v.double() / scale).flatten(1)) for v in (full, projected))
    ratio = approx[exact > 0] / exact[exact > 0]
    return {"ratio_mean": float(ratio.mean()), "ratio_sd": float(ratio.std()), "ratio_min": float(ratio.min()),
            "ratio_max": float(ratio.max()), "pairs": float(ratio.numel()), "dim": float(dim),
            "dim_in": float(full.shape[2])}


def check_descriptor(descriptor: str, dim: int) -> None:
    """Refuse a diversity descriptor (`projected`, `full`) or projection width outside their range, in one line.

    Examples:
        >>> check_descriptor("pooled", 512)
        Traceback (most recent call last):
        ...
        medal.errors.MedalError: strategy.descriptor='pooled': use one of projected, full
    """
    one_of("strategy.descriptor", descriptor, DIVERSITY_DESCRIPTORS)
    if dim < 1:
        raise MedalError(f"strategy.dim={dim}: must be >= 1")


@dataclass(frozen=True)
class CoreSet:
    """Core-set (k-centre greedy, Sener & Savarese 2018) on the members' bottleneck features: each pick is the
    pool image farthest from the labelled set and the earlier picks. `descriptor`: `projected` (the default:
    each member's vector through a seeded sparse random projection to `dim` values, chunk by chunk) or `full`
    (the vectors as they are: the paper's flattened bottleneck is 196,608 values per member at 256 px, 30 GB
    over 12,611 images, so only for small pools)."""

    name: str
    descriptor: str
    dim: int

    def __post_init__(self) -> None:
        check_descriptor(self.descriptor, self.dim)

    def score(self, model: SegModel, candidates: Candidates, generator: torch.Generator) -> torch.Tensor:
        pool, labelled = diversity_features(model, [candidates.images, candidates.labelled], candidates.chunk,
                                            self.descriptor, self.dim)
        return strategies.k_center_greedy(pool, labelled, candidates.k)


@dataclass(frozen=True)
class Hybrid:
    """Uncertainty, then diversity: the `shortlist` x k candidates the `uncertainty` strategy ranks highest, then
    k-centre greedy among them (`strategies.uncertain_then_diverse`) on `descriptor` / `dim` as for `CoreSet`.
    Descriptors are computed for the shortlist and the labelled images only (each member scaled by its mean norm
    over those)."""

    name: str
    uncertainty: Any  # a strategy's config node (`_target_`, name, its options), built in __post_init__
    shortlist: float
    descriptor: str
    dim: int

    def __post_init__(self) -> None:
        check_descriptor(self.descriptor, self.dim)
        object.__setattr__(self, "uncertainty", _strategy(self.uncertainty, "strategy.uncertainty"))

    def score(self, model: SegModel, candidates: Candidates, generator: torch.Generator) -> torch.Tensor:
        uncertainty = self.uncertainty.score(model, candidates, generator)
        top = strategies.shortlist_of(uncertainty, candidates.k, self.shortlist)
        shortlisted, labelled = diversity_features(model, [Rows(candidates.images, top.numpy()),
                                                           candidates.labelled], candidates.chunk,
                                                   self.descriptor, self.dim)
        return strategies.uncertain_then_diverse(uncertainty, top, shortlisted, labelled, candidates.k)


@dataclass(frozen=True)
class Power:
    """The stochastic power variant of a score (`strategies.power`): k images drawn with probability proportional
    to score^beta_r, beta_r = beta * (1 + growth)^round. growth = 0 is Kirsch et al.'s power sampling; growth > 0
    makes early rounds diverse and later ones greedy (the schedule of ClaSP PE, Lüth et al. 2026)."""

    name: str
    base: Any  # a strategy's config node, built in __post_init__; its scores must be >= 0
    beta: float
    growth: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "base", _strategy(self.base, "strategy.base"))
        if self.beta < 0 or self.growth < 0:
            raise MedalError(f"strategy.beta={self.beta}, strategy.growth={self.growth}: both must be >= 0")

    def score(self, model: SegModel, candidates: Candidates, generator: torch.Generator) -> torch.Tensor:
        scores = self.base.score(model, candidates, generator)
        return strategies.power(scores, self.beta * (1.0 + self.growth) ** candidates.round_no, generator)


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
