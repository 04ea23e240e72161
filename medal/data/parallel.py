"""An ordered parallel map with a progress bar, for the per-image loops of the data layer."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """Use the cores the process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def iter_parallel(fn: Callable[[T], R], items: Sequence[T], workers: int | None = None, desc: str = "",
                  chunksize: int = 4) -> Iterator[R]:
    """Yield `fn(item)` in order; `workers=1` runs in this process (no pickling, easy to monkeypatch)."""
    workers = min(workers or default_workers(), max(1, len(items)))
    bar = tqdm(total=len(items), desc=desc, unit="img", disable=len(items) < 2, leave=False)
    with bar:
        if workers == 1:
            for item in items:
                yield fn(item)
                bar.update()
            return
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for result in pool.map(fn, items, chunksize=chunksize):
                yield result
                bar.update()


def parallel_map(fn: Callable[[T], R], items: Sequence[T], workers: int | None = None, desc: str = "") -> list[R]:
    """`list(iter_parallel(...))`."""
    return list(iter_parallel(fn, items, workers=workers, desc=desc))
