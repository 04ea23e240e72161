"""Query scores as pure tensor functions: what a model says about pool images -> one score per image.

Higher means "more informative: label first". Scores only; the round loop selects the top k once
(`medal.active.scoring.select`), so every strategy is comparable and its scores can be stored and plotted.
Shape contract: members first, images second — probabilities (M members, N images, H, W), features
(M, N, D). A single model is M = 1.
"""

from __future__ import annotations

import torch

from medal.errors import MedalError


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


def mean_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Uncertainty: the mean pixelwise binary entropy (nats) of the members' mean foreground probability,
    probs (M members, N images, H, W...) -> (N,). Pass `probs[None]` for one model's maps.

    Probabilities are clamped to [1e-6, 1 - 1e-6] so a confident pixel contributes ~0, not NaN.

    Examples:
        >>> p = torch.full((2, 2, 4, 4), 0.01); p[:, 1] = 0.5
        >>> [round(v, 3) for v in mean_entropy(p).tolist()]  # an undecided map scores ln 2
        [0.056, 0.693]
        >>> mean_entropy(torch.rand(4, 8))
        Traceback (most recent call last):
        ...
        medal.errors.MedalError: entropy probs shape (4, 8): expected (members, images, H, W...)
    """
    if probs.dim() < 3:
        raise MedalError(f"entropy probs shape {tuple(probs.shape)}: expected (members, images, H, W...)")
    p = probs.float().mean(0).clamp(1e-6, 1 - 1e-6).flatten(1)
    return -(p * p.log() + (1 - p) * (1 - p).log()).mean(1)


def uniform(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random querying's scores: n independent U(0, 1) draws, so its top k is a uniform random sample.

    Examples:
        >>> a = uniform(5, torch.Generator().manual_seed(0))
        >>> bool(torch.equal(a, uniform(5, torch.Generator().manual_seed(0)))), a.shape
        (True, torch.Size([5]))
    """
    return torch.rand(n, generator=generator)
