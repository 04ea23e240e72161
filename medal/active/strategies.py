"""Query strategies as pure tensor functions: scores per pool image -> (indices to query, scores).

Every strategy returns the indices of the `n` highest-scoring pool images (most informative first)
and the scores of the whole pool, so the round's scores can be stored and plotted.
"""

from __future__ import annotations

import torch

from medal.errors import MedalError


def pairwise_sine(features: torch.Tensor) -> torch.Tensor:
    """Eq. 5-7: for features (M members, N images, D), sum over pairs i > j of sqrt(1 - cos^2(v_i, v_j)).

    Computed in float64 and with cos^2 clamped to [0, 1]: the square root magnifies rounding near
    parallel vectors (float32 leaves ~1e-3 for identical members), and a hair above 1 would give NaN.
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


def _top(scores: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    if n < 0:
        raise MedalError(f"query size {n}: must be >= 0")
    n = min(n, scores.numel())
    return torch.topk(scores, n, sorted=True).indices, scores


def qbc(features: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Query-by-committee (paper eq. 5-7): the images whose member feature vectors disagree most."""
    return _top(pairwise_sine(features), n)


def entropy(probs: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean pixelwise binary entropy (nats) of the committee-mean foreground probability.

    `probs` is (M members, N images, ...); pass `probs[None]` for a single model's maps.
    """
    if probs.dim() < 3:
        raise MedalError(f"entropy probs shape {tuple(probs.shape)}: expected (members, images, H, W...)")
    mean = probs.float().mean(0)
    p = mean.clamp(1e-6, 1 - 1e-6).flatten(1)
    ent = -(p * p.log() + (1 - p) * (1 - p).log()).mean(1)
    return _top(ent, n)


def random(n_pool: int, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform random draw: random scores, so the result has the same shape as the other strategies."""
    scores = torch.rand(n_pool, generator=generator)
    return _top(scores, n)


STRATEGIES = ("qbc", "random", "entropy")
