"""Query scores as pure tensor functions: what a model says about pool images -> one score per image.

Higher means "more informative: label first". Scores only; the round loop selects the top k once
(`medal.active.scoring.select`), so every strategy is comparable and its scores can be stored and plotted.
Shape contract: members first, images second — probabilities (M members or MC samples, N images, H, W),
features (M, N, D). A single model is M = 1.

The uncertainty heuristics for probability maps (predictive entropy, BALD, vote entropy) are baal's
(`baal.active.heuristics`), given per-pixel two-class distributions and reduced to one score per image with
baal's `mean` reduction. They are called through `compute_score` and the reduction, not baal's
`get_uncertainties`: that one silently replaces a non-finite score by 10000 or 0, whereas medal's `select`
refuses it. Batch strategies that need the whole pool at once (k-centre greedy, the two-stage hybrid) are
written here in the same `(N,) scores, top k = the batch` form, in O(N) memory beyond their features: baal has
no core-set, and its stochastic `PowerSampling` draws indices itself from NumPy's global random state
(unseeded, and not scores), so its power distribution is sampled here by the equivalent Gumbel top-k trick with
the round's generator.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from baal.active.heuristics import BALD, Entropy

from medal.errors import MedalError

_ENTROPY = Entropy(reduction="mean")
_BALD = BALD(reduction="mean")


def pairwise_sine(features: torch.Tensor) -> torch.Tensor:
    """Query-by-committee (paper eq. 5-7): for features (M members, N images, D), the sum over member pairs
    i > j of sqrt(1 - cos²(v_i, v_j)) -> (N,) float32, in [0, M(M-1)/2].

    Computed in float64 and with cos² clamped to [0, 1]: the square root magnifies rounding near parallel
    vectors (float32 leaves ~1e-3 for identical members), and a hair above 1 would give NaN.

    Examples:
        >>> pairwise_sine(torch.eye(3)[:, None, :]).tolist()  # 3 orthogonal members, one image: 3 x sin 90°
        [3.0]
        >>> pairwise_sine(torch.ones(3, 2, 4)).tolist()  # identical members agree on every image
        [0.0, 0.0]
        >>> pairwise_sine(torch.ones(2, 4))
        Traceback (most recent call last):
        ...
        medal.errors.MedalError: qbc features shape (2, 4): expected (members, images, dim)
    """
    if features.dim() != 3:
        raise MedalError(f"qbc features shape {tuple(features.shape)}: expected (members, images, dim)")
    unit = torch.nn.functional.normalize(features.double(), dim=-1)
    score = torch.zeros(features.shape[1], dtype=torch.float64, device=features.device)
    for i in range(features.shape[0]):
        for j in range(i):
            cos = (unit[i] * unit[j]).sum(-1)
            score += torch.sqrt((1.0 - cos.square()).clamp(min=0.0, max=1.0))
    return score.float()


def probability_descriptor(probs: torch.Tensor, grid: int) -> torch.Tensor:
    """Each member's probability map average-pooled to grid x grid and flattened: probs (M, N, H, W) ->
    (M, N, grid²). A descriptor in a space every member shares (pixels of the image), so eq. 5's angle between
    two members' vectors measures how differently they segment the image, whatever their weights look like.

    Examples:
        >>> probability_descriptor(torch.ones(3, 2, 8, 8), 4).shape
        torch.Size([3, 2, 16])
        >>> probability_descriptor(torch.ones(2, 8, 8), 4)
        Traceback (most recent call last):
        ...
        medal.errors.MedalError: qbc probs shape (2, 8, 8): expected (members, images, H, W)
    """
    if probs.dim() != 4:
        raise MedalError(f"qbc probs shape {tuple(probs.shape)}: expected (members, images, H, W)")
    m, n = probs.shape[:2]
    pooled = torch.nn.functional.adaptive_avg_pool2d(probs.float().flatten(0, 1)[:, None], grid)
    return pooled.reshape(m, n, grid * grid)


def _two_class(probs: torch.Tensor, what: str) -> np.ndarray:
    """Foreground probabilities (M, N, H, W...) as baal's (N, 2 classes, H*W..., M iterations) float64."""
    if probs.dim() < 3:
        raise MedalError(f"{what} probs shape {tuple(probs.shape)}: expected (members, images, H, W...)")
    p = probs.detach().double().cpu().flatten(2).permute(1, 2, 0).numpy()  # (N, P, M)
    return np.stack([1.0 - p, p], axis=1)


def _per_image(heuristic: BALD | Entropy, two_class: np.ndarray) -> torch.Tensor:
    """baal's per-pixel score reduced by its `mean` (over pixels) -> (N,) float32."""
    return torch.from_numpy(np.asarray(heuristic.reduction(heuristic.compute_score(two_class)))).float()


def mean_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Uncertainty: the mean pixelwise binary entropy (nats) of the members' mean foreground probability,
    probs (M members, N images, H, W...) -> (N,). Pass `probs[None]` for one model's maps. (baal's `Entropy`.)

    Examples:
        >>> p = torch.full((2, 2, 4, 4), 0.01); p[:, 1] = 0.5
        >>> [round(v, 3) for v in mean_entropy(p).tolist()]  # an undecided map scores ln 2
        [0.056, 0.693]
        >>> mean_entropy(torch.rand(4, 8))
        Traceback (most recent call last):
        ...
        medal.errors.MedalError: entropy probs shape (4, 8): expected (members, images, H, W...)
    """
    return _per_image(_ENTROPY, _two_class(probs, "entropy"))


def bald(probs: torch.Tensor) -> torch.Tensor:
    """BALD (mutual information between a pixel's label and the model): entropy of the mean minus the mean of
    the entropies over samples, averaged over pixels; probs (T samples or members, N, H, W...) -> (N,) >= 0.
    Samples are MC-dropout passes of one network or the members of a committee (an ensemble). (baal's `BALD`.)

    Examples:
        >>> same = torch.full((4, 1, 2, 2), 0.3)  # identical samples: nothing to learn about the model
        >>> abs(bald(same).item()) < 1e-9
        True
        >>> split = torch.stack([torch.full((1, 2, 2), 0.01), torch.full((1, 2, 2), 0.99)])
        >>> round(bald(split).item(), 3)  # confident and contradictory: ln 2 - H(0.01)
        0.637
    """
    return _per_image(_BALD, _two_class(probs, "bald"))


def vote_entropy(probs: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Vote (consensus) entropy of the members' masks: each member votes foreground where its probability
    exceeds `threshold`; the entropy of the vote shares, averaged over pixels. probs (M, N, H, W...) -> (N,).
    Unlike `mean_entropy`, members that agree on a mask score 0 however unsure each of them is.
    (baal's `Entropy` on one-hot votes: its mean over iterations is the vote share.)

    Examples:
        >>> p = torch.tensor([[[[0.9, 0.2]]], [[[0.6, 0.4]]], [[[0.1, 0.3]]]])  # 3 members, 1 image, 2 pixels
        >>> round(vote_entropy(p).item(), 4)  # pixel 1: votes 2 of 3 (H = 0.6365); pixel 2: 0 of 3
        0.3183
    """
    votes = (probs > threshold).to(torch.float64)
    return _per_image(_ENTROPY, _two_class(votes, "vote entropy"))


def squared_norms(x: torch.Tensor, rows: int = 2048) -> torch.Tensor:
    """|x|² of each row of x (N, D) in float64 -> (N,) float64, `rows` rows at a time (never a float64 copy of x).

    Examples:
        >>> squared_norms(torch.tensor([[3.0, 4.0], [1.0, 0.0]])).tolist()
        [25.0, 1.0]
    """
    out = torch.empty(len(x), dtype=torch.float64)
    for start in range(0, len(x), rows):
        out[start:start + rows] = torch.linalg.vector_norm(x[start:start + rows], dim=1, dtype=torch.float64).square()
    return out


def nearest_distance(pool: torch.Tensor, centres: torch.Tensor, nearest: torch.Tensor | None = None,
                     pool_sq: torch.Tensor | None = None, rows: int = 2048) -> torch.Tensor:
    """Each pool vector's Euclidean distance to its nearest centre, pool (N, D), centres (C, D) -> (N,) float64;
    with `nearest` (N,) given, the smaller of it and that distance, written into it (`pool_sq`: the pool's
    `squared_norms`, when the caller has them).

    Computed `rows` pool vectors and `rows` centres at a time as |x|² + |c|² - 2 x·c (a matrix product in the
    pool's dtype, the squared norms in float64, clamped at 0), so the memory beyond the inputs is O(rows²):
    never an (N, C) or an (N, D) temporary. In float32 the cross term leaves an absolute error of ~1e-7 |x| |c|
    in the squared distance: far below the distances that k-centre's farthest-point picks compare.

    Examples:
        >>> nearest_distance(torch.tensor([[0.0, 0.0], [3.0, 4.0]]), torch.tensor([[0.0, 0.0], [3.0, 0.0]])).tolist()
        [0.0, 4.0]
    """
    n = len(pool)
    if nearest is None:
        nearest = torch.full((n,), math.inf, dtype=torch.float64)
    if len(centres) == 0:
        return nearest
    if pool_sq is None:
        pool_sq = squared_norms(pool)
    for first in range(0, len(centres), rows):  # centres `rows` at a time too: temporaries stay O(rows²)
        c = centres[first:first + rows].to(pool.dtype)
        c_sq = squared_norms(c)
        for start in range(0, n, rows):
            block = pool[start:start + rows]
            d2 = pool_sq[start:start + rows, None] + c_sq[None, :] - 2.0 * (block @ c.T).double()
            part = nearest[start:start + rows]
            torch.minimum(part, d2.clamp(min=0.0).min(1).values.sqrt(), out=part)
    return nearest


def k_center_greedy(pool: torch.Tensor, labelled: torch.Tensor, k: int) -> torch.Tensor:
    """Core-set (Sener & Savarese 2018): greedy k-centre over pool features (N, D) given the labelled ones
    (L, D); scores (N,) whose top k are the greedy picks.

    Each pick is the pool image farthest from every centre so far (the labelled images, then the picks); its
    score is that distance. The distances to the nearest centre only shrink as centres are added, so the picks'
    scores never increase and every image left out scores its final distance, no more than the last pick's:
    `select(scores, k)` returns the greedy batch. With no labelled image the first centre is the image farthest
    from the pool's mean.

    Cost: O(N · D · (L + k)) time; memory beyond the features O(N) (each image's distance to its nearest centre,
    updated in place by `nearest_distance`), so the features may be float32 and are never copied.

    Examples:
        >>> near = torch.tensor([[0.0, 0.1], [0.2, 0.0], [0.0, -0.1]]); far = torch.tensor([[5.0, 5.0], [5.1, 5.0]])
        >>> scores = k_center_greedy(torch.cat([near, far]), torch.zeros(1, 2), k=2)
        >>> torch.topk(scores, 2).indices.tolist()  # one image of the far cluster, then the one farthest out near
        [4, 1]
    """
    if pool.dim() != 2 or labelled.dim() != 2 or (len(labelled) and labelled.shape[1] != pool.shape[1]):
        raise MedalError(f"core-set features: pool {tuple(pool.shape)} and labelled {tuple(labelled.shape)} "
                         "must be (images, dim) with one dim")
    centres = labelled if len(labelled) else pool.mean(0, keepdim=True)
    pool_sq = squared_norms(pool)
    nearest = nearest_distance(pool, centres, pool_sq=pool_sq)
    scores = nearest.clone()
    for _ in range(min(k, len(pool))):
        pick = int(nearest.argmax())
        scores[pick] = nearest[pick]
        nearest_distance(pool, pool[pick:pick + 1], nearest, pool_sq)
        nearest[pick] = -1.0  # picked: never again
    left = nearest >= 0
    scores[left] = nearest[left]
    return scores.float()


def shortlist_of(uncertainty: torch.Tensor, k: int, shortlist: float) -> torch.Tensor:
    """Indices of the `ceil(shortlist * k)` most uncertain images (at least k, at most all), most uncertain first:
    the first stage of `uncertain_then_diverse`.

    Examples:
        >>> shortlist_of(torch.tensor([0.9, 0.1, 0.7, 0.8]), k=2, shortlist=1.5).tolist()
        [0, 3, 2]
    """
    if shortlist < 1:
        raise MedalError(f"strategy.shortlist={shortlist}: must be >= 1 (a multiple of the query size)")
    size = min(len(uncertainty), max(k, math.ceil(shortlist * k)))
    return torch.topk(uncertainty, size).indices


def uncertain_then_diverse(uncertainty: torch.Tensor, top: torch.Tensor, top_features: torch.Tensor,
                           labelled: torch.Tensor, k: int) -> torch.Tensor:
    """Two stages: the shortlist `top` of the most uncertain images (`shortlist_of`), then k-centre greedy
    (`k_center_greedy`) within it, so a batch is uncertain *and* not k near-copies of one hard case.
    uncertainty (N,), top (T,) indices, the shortlist's features (T, D) (only those: the pool's are never
    needed), labelled features (L, D) -> (N,) scores whose top k are the picks.

    Scores are ranks: in [1, 2) inside the shortlist, ordered by the k-centre pass; in [0, 1) outside it,
    ordered by uncertainty.

    Examples:
        >>> u = torch.tensor([0.9, 0.8, 0.7, 0.1])  # images 0 and 1 are near-copies, 3 is certain
        >>> f = torch.tensor([[0.0, 0.0], [0.0, 0.01], [3.0, 0.0], [9.0, 9.0]])
        >>> top = shortlist_of(u, k=2, shortlist=1.5)  # images 0, 1, 2
        >>> picks = torch.topk(uncertain_then_diverse(u, top, f[top], torch.zeros(0, 2), k=2), 2).indices
        >>> sorted(picks.tolist())  # image 2 and one of the near-copies, never 3
        [1, 2]
    """
    n, size = len(uncertainty), len(top)
    scores = torch.argsort(torch.argsort(uncertainty)).double() / max(n, 1)
    if size == 0:
        return scores.float()
    diverse = k_center_greedy(top_features, labelled, k)
    scores[top] = 1.0 + torch.argsort(torch.argsort(diverse)).double() / size
    return scores.float()


def power(scores: torch.Tensor, beta: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Stochastic power acquisition (Kirsch et al. 2023, baal's PowerSampling): top k of the returned scores is a
    draw of k images without replacement with probability proportional to score^beta (Gumbel top-k:
    beta * log(score) + Gumbel noise). beta -> infinity is the greedy top k; beta = 0 is uniform. Scores must be
    >= 0; a zero score is never drawn before a positive one.

    Examples:
        >>> s = torch.tensor([1.0, 2.0, 4.0, 0.0])
        >>> noisy = power(s, beta=1.0, generator=torch.Generator().manual_seed(0))
        >>> noisy.shape, bool(torch.isfinite(noisy).all()), int(noisy.argmin())
        (torch.Size([4]), True, 3)
        >>> torch.topk(power(s, beta=1e6, generator=torch.Generator().manual_seed(0)), 2).indices.tolist()
        [2, 1]
    """
    if beta < 0:
        raise MedalError(f"strategy.beta={beta}: must be >= 0")
    if bool((scores < -1e-6).any()):
        raise MedalError(f"power sampling: scores must be >= 0 (min {float(scores.min()):.3g})")
    u = torch.rand(scores.shape, generator=generator, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    gumbel = -torch.log(-torch.log(u))
    floor = math.log(1e-300)  # log 0: below every positive score's log, finite so `select` can rank it
    logs = torch.log(scores.double().clamp(min=0.0)).clamp(min=floor)
    return (beta * logs + gumbel - (logs <= floor).double() * 1e6).float()


def stratified_uniform(strata: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Stratified random sampling: scores (N,) whose top k takes every stratum in proportion to its size
    (systematic sampling: within stratum s of n_s images, a random order r and one random offset u_s give
    1 - (r + u_s) / n_s). strata (N,) integer labels.

    Examples:
        >>> strata = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
        >>> picks = torch.topk(stratified_uniform(strata, torch.Generator().manual_seed(0)), 2).indices
        >>> sorted(strata[picks].tolist())  # one from each stratum
        [0, 1]
    """
    scores = torch.empty(len(strata), dtype=torch.float64)
    for s in torch.unique(strata):
        rows = torch.nonzero(strata == s)[:, 0]
        order = torch.randperm(len(rows), generator=generator).double()
        offset = torch.rand(1, generator=generator, dtype=torch.float64)
        scores[rows] = 1.0 - (order + offset) / len(rows)
    return scores.float()


def quantile_strata(values: torch.Tensor, strata: int) -> torch.Tensor:
    """(N,) stratum labels 0..strata-1 of `values` (N,) cut at its quantiles (ties may leave strata empty).

    Examples:
        >>> quantile_strata(torch.tensor([0.1, 0.9, 0.5, 0.3]), 2).tolist()
        [0, 1, 1, 0]
    """
    if strata < 1:
        raise MedalError(f"strategy.strata={strata}: must be >= 1")
    if strata == 1 or len(values) == 0:
        return torch.zeros(len(values), dtype=torch.long)
    cuts = torch.quantile(values.double(), torch.linspace(0, 1, strata + 1, dtype=torch.float64)[1:-1])
    return torch.bucketize(values.double(), cuts)  # a value equal to a cut joins the lower stratum


def uniform(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random querying's scores: n independent U(0, 1) draws, so its top k is a uniform random sample.

    Examples:
        >>> a = uniform(5, torch.Generator().manual_seed(0))
        >>> bool(torch.equal(a, uniform(5, torch.Generator().manual_seed(0)))), a.shape
        (True, torch.Size([5]))
    """
    return torch.rand(n, generator=generator)


def score_spread(scores: torch.Tensor, k: int) -> dict[str, float]:
    """How well a round's scores separate the pool: `cv` (sd / |mean|) and `top_k_over_median` (mean of the
    k best / median). A degenerate score has cv near 0 and a ratio near 1: the top k are then a coin toss.

    Examples:
        >>> flat = torch.tensor([2.8684, 2.8682, 2.8671, 2.8658, 2.8601])  # the paper's QBC, independent members
        >>> {k: round(v, 4) for k, v in score_spread(flat, 2).items()}
        {'cv': 0.0011, 'top_k_over_median': 1.0004}
        >>> {k: round(v, 3) for k, v in score_spread(torch.tensor([0.0, 0.0, 0.0]), 1).items()}
        {'cv': 0.0, 'top_k_over_median': 1.0}
    """
    s = scores.double()
    if s.numel() == 0:
        return {"cv": 0.0, "top_k_over_median": 1.0}
    tiny = 1e-12
    mean, sd = float(s.mean()), float(s.std(unbiased=False))
    top = float(torch.topk(s, max(1, min(k, s.numel()))).values.mean())
    median = float(s.median())
    ratio = top / median if abs(median) > tiny else (1.0 if abs(top) <= tiny else float("inf"))
    return {"cv": sd / abs(mean) if abs(mean) > tiny else 0.0 if sd <= tiny else float("inf"),
            "top_k_over_median": ratio}
