"""What active learning needs of a segmentation model: a small protocol, not a class.

The round loop, the strategies and the oracles' starting masks use only these methods, so the paper's
FC-DenseNet committee, the U-Net baseline, a single network sampled with MC dropout, or a strategy that reads
ground truth all fit behind it. Shapes: images (N, S, S) float32 in [0, 1] at working resolution; outputs are
CPU tensors with the members (or samples) first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from tqdm.auto import tqdm


@runtime_checkable
class SegModel(Protocol):
    """A segmenter the loop can train round by round, query and checkpoint."""

    def fit(self, images: np.ndarray, masks: np.ndarray) -> dict[str, float]:
        """Train on the labelled set, images and masks (N, S, S); return what validation logged (`val/*`)."""
        ...

    def predict_probs(self, images: np.ndarray) -> torch.Tensor:
        """Foreground probabilities (M, N, S, S) float32: every member's (or sample's) map."""
        ...

    def features(self, images: np.ndarray) -> torch.Tensor:
        """Feature vectors (M, N, D) float32 (QBC's bottleneck; D may be 0 for a model without one)."""
        ...

    def state_dict(self) -> Mapping[str, Any]:
        """Weights to checkpoint between rounds (tensors only: saved and loaded without unpickling)."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> Any:
        """Restore what `state_dict` returned."""
        ...


@runtime_checkable
class MCDropoutModel(Protocol):
    """A model that can also sample one network's predictions with dropout active (BALD with MC dropout)."""

    def mc_probs(self, images: np.ndarray, samples: int, seed: int) -> torch.Tensor:
        """Foreground probabilities (samples, N, S, S) float32 of one network, dropout on (a fresh mask per
        sample, drawn from `seed`), normalisation layers as in inference."""
        ...


def in_chunks(fn: Callable[[np.ndarray], torch.Tensor], images: np.ndarray, size: int, dim: int = 0,
              desc: str = "scoring") -> torch.Tensor:
    """`fn` over chunks of `size` rows of `images` (N, ...), results concatenated along `dim`.

    Keeps a 12k-image pool from ever holding every probability map at once: a strategy reduces each chunk
    to its scores before the next one is predicted.

    Examples:
        >>> in_chunks(lambda x: torch.from_numpy(x.sum(1)), np.ones((5, 2)), 2).tolist()
        [2.0, 2.0, 2.0, 2.0, 2.0]
    """
    n = len(images)
    if size < 1:
        raise ValueError(f"chunk size {size}: must be >= 1")
    out = [fn(images[start:start + size])
           for start in tqdm(range(0, n, size), desc=desc, unit="batch", leave=False,
                             disable=True if n <= size else None)]  # None: no bar where stderr is not a terminal
    return torch.cat(out, dim=dim) if out else torch.empty(0)
