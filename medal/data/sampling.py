"""Training samplers: the same expected number of images per bone-age bin (the paper's balancing), or plain.

RSNA ages pile up between 8 and 15 years; drawing each image with probability 1 / (size of its age bin)
gives every bin the same share of an epoch, so the regressor does not learn to predict the mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import RandomSampler, Sampler, WeightedRandomSampler

from medal.errors import MedalError


@dataclass(frozen=True)
class SamplerOptions:
    """`data.sampler`: balanced on/off, bins (a count of equal-width bins, or a list of edges in months),
    and images per epoch (None = the training set size)."""

    balanced: bool = True
    bins: int | Sequence[float] = field(default=12)
    samples_per_epoch: int | None = None


def age_bins(ages: np.ndarray, bins: int | Sequence[float]) -> np.ndarray:
    """Bin number of every age: `bins` equal-width bins over the age range, or explicit edges.

    Examples:
        >>> age_bins(np.array([10.0, 50.0, 120.0, 200.0]), 2).tolist()
        [0, 0, 1, 1]
        >>> age_bins(np.array([10.0, 50.0, 120.0, 200.0]), [60, 180]).tolist()
        [0, 0, 1, 2]
    """
    if isinstance(bins, int):
        if bins < 1:
            raise MedalError(f"data.sampler.bins={bins}: must be >= 1 or a list of edges in months")
        lo, hi = float(np.min(ages)), float(np.max(ages))
        edges = np.linspace(lo, hi, bins + 1)[1:-1]
    else:
        edges = np.asarray(list(bins), dtype=float)
        if edges.ndim != 1 or np.any(np.diff(edges) <= 0):
            raise MedalError(f"data.sampler.bins={list(bins)}: edges must increase")
    return np.digitize(ages, edges)


def balanced_weights(ages: np.ndarray, bins: int | Sequence[float]) -> np.ndarray:
    """Per-image weight 1 / (images in its bin): every non-empty bin gets the same total weight.

    Examples:
        >>> balanced_weights(np.array([10.0, 20.0, 30.0, 200.0]), 2).tolist()  # three young, one old
        [0.3333333333333333, 0.3333333333333333, 0.3333333333333333, 1.0]
    """
    which = age_bins(ages, bins)
    counts = np.bincount(which)
    return 1.0 / counts[which]


def make_sampler(ages: np.ndarray, options: SamplerOptions, seed: int) -> Sampler[int]:
    """The training sampler: age-balanced with replacement, or a shuffled pass of `samples_per_epoch`."""
    num = options.samples_per_epoch or len(ages)
    if num < 1:
        raise MedalError(f"data.sampler.samples_per_epoch={num}: must be >= 1")
    generator = torch.Generator().manual_seed(seed)
    if options.balanced:
        weights = torch.as_tensor(balanced_weights(np.asarray(ages, dtype=float), options.bins))
        return WeightedRandomSampler(weights, num_samples=num, replacement=True, generator=generator)
    replacement = num > len(ages)
    return RandomSampler(range(len(ages)), replacement=replacement, num_samples=num, generator=generator)
