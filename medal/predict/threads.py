"""How many torch threads `medal predict` runs its chain with on a CPU: measured, not assumed.

The chain's networks are small and their batches short, so intra-op threads help little, and where the cores are
shared with other work (more runnable processes than cores) OpenMP's threads wait on each other: on a 2-core
machine under load, two threads ran the demo's chain 4-5x slower than one; on idle cores two may well be faster
(scripts/bench_predict.py measures both). `predict.threads=auto` therefore times the chain's first batches at one
thread and at torch's default (the cores), after one warm-up batch, and keeps the faster per image; an integer
fixes the count. Nothing is measured on a GPU, or under DDP, where Lightning already gives each process its share
of the cores.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from medal.errors import MedalError

log = logging.getLogger("medal.predict")


def thread_candidates(setting: int | str, device_type: str, default: int, distributed: bool) -> list[int]:
    """The thread counts `auto` tries, in order (none where nothing is to be measured).

    Examples:
        >>> thread_candidates("auto", "cpu", 8, distributed=False)
        [1, 8]
        >>> thread_candidates("auto", "cuda", 8, False), thread_candidates(4, "cpu", 8, False)
        ([], [])
    """
    if setting != "auto" or device_type != "cpu" or distributed or default <= 1:
        return []
    return [1, default]


class ThreadChoice:
    """`predict.threads` (auto or a positive integer; None leaves torch's count alone) applied batch by batch:
    `with choice.batch(n): ...` around the chain's work on a batch of n readable images."""

    def __init__(self, setting: int | str | None, device_type: str) -> None:
        if setting is not None and setting != "auto" and (isinstance(setting, bool) or not isinstance(setting, int)
                                                           or setting < 1):
            raise MedalError(f"predict.threads={setting!r}: use auto (measured on the first batches) or a count >= 1")
        self.before = torch.get_num_threads()
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.pending = thread_candidates(setting, device_type, self.before, distributed)
        self.warm = not self.pending  # the first measured batch comes after one warm-up batch
        self.seconds: dict[int, float] = {}  # seconds per image at each count tried
        # the count each batch runs at once known (None: torch's, left alone)
        self.chosen: int | None = setting if isinstance(setting, int) else None

    @contextmanager
    def batch(self, images: int) -> Iterator[None]:
        """Run one batch, at the count being tried while `auto` measures; keep the faster once all are timed."""
        if not self.pending or not images or not self.warm:
            if self.chosen is not None and torch.get_num_threads() != self.chosen:
                torch.set_num_threads(self.chosen)
            yield
            self.warm = self.warm or bool(images)
            return
        threads = self.pending[0]
        torch.set_num_threads(threads)
        started = time.perf_counter()
        yield
        self.seconds[threads] = (time.perf_counter() - started) / images
        self.pending.pop(0)
        if not self.pending:
            self.chosen = min(self.seconds, key=self.seconds.__getitem__)
            torch.set_num_threads(self.chosen)
            log.info("predict.threads=auto: %d torch thread(s) (%s)", self.chosen,
                     ", ".join(f"{t}: {1000 * s:.0f} ms per image" for t, s in self.seconds.items()))

    def restore(self) -> None:
        """Torch's thread count as it was before (the process may go on to other work)."""
        torch.set_num_threads(self.before)
