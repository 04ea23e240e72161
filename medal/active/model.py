"""What active learning needs of a segmentation model: a small protocol, not a class.

The round loop, the strategies and the oracles' starting masks use only these methods, so the paper's
FC-DenseNet committee, the U-Net baseline, a single network sampled with MC dropout, or a strategy that reads
ground truth all fit behind it. Shapes: images (N, S, S) float32 in [0, 1] at working resolution; outputs are
CPU tensors with the members (or samples) first.

Images come as an `ImageSource`: an array, or a reader that keeps them on disk (`medal.segment.data`'s); the pool
is handed to a strategy as `Rows` of it and read a chunk at a time (`in_chunks`), never copied whole.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from tqdm.auto import tqdm

# glibc's malloc_trim (Linux); other C libraries (macOS, musl) hand freed memory back their own way
_MALLOC_TRIM = getattr(ctypes.CDLL(None), "malloc_trim", None) if sys.platform.startswith("linux") else None


class ImageSource(Protocol):
    """Images (N, S, S) indexed like an array: `source[key]` (a slice, a list or an index array of rows) is an
    (n, S, S) array read then. A numpy array is one; so is a reader of a file on disk."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __len__(self) -> int: ...

    def __getitem__(self, key: Any) -> np.ndarray: ...


@dataclass(frozen=True)
class Rows:
    """Rows `index` of `source`, read only when indexed (`rows[a:b]` reads those rows of `source`): how the loop
    hands the pool to a strategy without copying it. An `ImageSource` itself.

    Examples:
        >>> pool = Rows(np.arange(10.0)[:, None, None] * np.ones((1, 2, 2)), np.array([7, 2, 5]))
        >>> len(pool), pool.shape, pool[1:][:, 0, 0].tolist()
        (3, (3, 2, 2), [2.0, 5.0])
    """

    source: ImageSource
    index: np.ndarray  # (n,) int rows of `source`

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index), *self.source.shape[1:])

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: Any) -> np.ndarray:
        rows = self.index[key]
        return self.source[rows] if np.ndim(rows) else self.source[[int(rows)]][0]


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


def chunks(images: ImageSource, size: int, desc: str = "scoring") -> Iterator[np.ndarray]:
    """The rows of `images` (N, ...) read `size` at a time, in order (a progress bar when there is more than one
    chunk and stderr is a terminal).

    Examples:
        >>> [c.tolist() for c in chunks(np.arange(5), 2)]
        [[0, 1], [2, 3], [4]]
    """
    n = len(images)
    if size < 1:
        raise ValueError(f"chunk size {size}: must be >= 1")
    for start in tqdm(range(0, n, size), desc=desc, unit="batch", leave=False,
                      disable=True if n <= size else None):  # None: no bar where stderr is not a terminal
        yield images[start:start + size]
        release_freed_memory()


def release_freed_memory() -> None:
    """Hand the heap memory freed so far back to the system (glibc's `malloc_trim`; nothing to do elsewhere).

    A chunk's maps, features and the strategies' float64 temporaries are freed before the next chunk, but glibc
    keeps fragments of them in its heap: without this, one pass over a pool grew the process by ~10 MB a chunk
    (an entropy pass at 256 px: 1.04 GB -> 1.55 GB in 60 chunks), so memory grew with the pool after all.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def in_chunks(fn: Callable[[np.ndarray], torch.Tensor], images: ImageSource, size: int, dim: int = 0,
              desc: str = "scoring") -> torch.Tensor:
    """`fn` over chunks of `size` rows of `images` (N, ...), results concatenated along `dim`.

    Keeps a 12k-image pool from ever holding every image or probability map at once: a strategy reduces each
    chunk to its scores before the next one is read and predicted.

    Examples:
        >>> in_chunks(lambda x: torch.from_numpy(x.sum(1)), np.ones((5, 2)), 2).tolist()
        [2.0, 2.0, 2.0, 2.0, 2.0]
    """
    out = [fn(chunk) for chunk in chunks(images, size, desc)]
    return torch.cat(out, dim=dim) if out else torch.empty(0)
