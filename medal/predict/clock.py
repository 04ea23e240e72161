"""Seconds per step of the prediction chain, summed over batches: where `medal predict`'s time goes.

The chain times its own steps (`ChainModule.clock`); scripts/bench_predict.py reads them as its per-step
profile. Timing a step costs two `perf_counter` calls; on a GPU a step's time includes waiting for the device
only where the step copies its result back to the host (every step of the chain does).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

#: The chain's steps, in order (decode runs in the DataLoader: the caller times it).
STEPS = ("decode", "committee", "roi", "enhancer", "regressor", "tta", "cam")


class StepClock:
    """Seconds and calls per step name.

    Examples:
        >>> clock = StepClock()
        >>> with clock("roi"):
        ...     pass
        >>> clock.calls["roi"], clock.seconds["roi"] >= 0.0
        (1, True)
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    @contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(step, time.perf_counter() - started)

    def add(self, step: str, seconds: float) -> None:
        self.seconds[step] = self.seconds.get(step, 0.0) + seconds
        self.calls[step] = self.calls.get(step, 0) + 1

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()
