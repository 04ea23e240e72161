"""A committee with the paper's output shapes and no network: what the pool-scoring stages score with.

Scoring 12,611 images with three 192-map FC-DenseNets takes hours on a CPU, and the networks' time is the same
per image whatever the pool's size; what grows with the pool is what the strategy holds and computes around
them. `ShapeCommittee` answers `predict_probs`, `features` and `mc_probs` (`medal.active.model.SegModel`,
`MCDropoutModel`) with tensors of exactly the real committee's shapes and dtype (probability maps (M, b, S, S),
bottleneck vectors (M, b, D) with D = 192 x (S/8)^2 at `feature: flatten`), cut from a small bank of random
values, and counts the images each call saw. The benchmark adds `count x seconds per image` of the real networks,
measured once at the paper's widths (`unit_committee`), to the measured time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

BANK = 8  # distinct random images per output kind


def feature_dim(net: Mapping[str, Any], size: int) -> int:
    """Length of one member's feature vector for `segment.net` at working size `size`.

    Examples:
        >>> feature_dim({"growth": 16, "bottleneck_layers": 12, "down_layers": [4, 5, 7], "feature": "flatten"}, 256)
        196608
        >>> feature_dim({"growth": 16, "bottleneck_layers": 12, "down_layers": [4, 5, 7], "feature": "gap"}, 256)
        192
    """
    channels = int(net["growth"]) * int(net["bottleneck_layers"])
    if net["feature"] == "gap":
        return channels
    side = size // 2 ** len(net["down_layers"])
    return channels * side * side


class ShapeCommittee:
    """`members` x (probability maps, feature vectors) of the real committee's shapes; `seen[kind]` counts the
    images each kind of call predicted (`probs`, `features`, `mc`)."""

    def __init__(self, members: int, size: int, dim: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.members, self.size, self.dim = members, size, dim
        self.probs = torch.rand(members, BANK, size, size, generator=g) * 0.98 + 0.01
        self.vectors = torch.randn(members, BANK, dim, generator=g)
        self.seen = {"probs": 0, "features": 0, "mc": 0}
        self._next = 0

    def _rows(self, images: np.ndarray) -> torch.Tensor:
        np.asarray(images, dtype=np.float32)  # the real committee converts every chunk it is given
        b = len(images)
        rows = (self._next + torch.arange(b)) % BANK
        self._next = (self._next + b) % BANK
        return rows

    def predict_probs(self, images: np.ndarray) -> torch.Tensor:
        self.seen["probs"] += len(images)
        return self.probs[:, self._rows(images)]

    def features(self, images: np.ndarray) -> torch.Tensor:
        self.seen["features"] += len(images)
        return self.vectors[:, self._rows(images)]

    def mc_probs(self, images: np.ndarray, samples: int, seed: int) -> torch.Tensor:
        self.seen["mc"] += len(images) * samples
        rows = self._rows(images)
        return self.probs[torch.arange(samples) % self.members][:, rows]

    def fit(self, images: np.ndarray, masks: np.ndarray) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None
