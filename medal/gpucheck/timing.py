"""Clocks for the check: the overall budget, per-row time boxes, device-synchronised step times, memory peaks.

GPU work is asynchronous: a Python clock read after a launch measures the launch, not the work. Every time
here is read after `sync(device)`, so a rate is what the device really did. A row never runs past its box:
loops check the deadline between steps, and a Lightning fit is stopped by `StepTimer` after the step that
crossed it (one step can overrun; a step at these sizes takes well under a second on a GPU).
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytorch_lightning as pl
import torch

from medal.gpucheck.record import Row

log = logging.getLogger("medal.gpucheck")


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, float | None]]:
    """Yields a dict whose `gib` is, after the block, the device's peak allocated memory during it (None on CPU)."""
    out: dict[str, float | None] = {"gib": None}
    if device.type == "cuda":
        sync(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        yield out
    finally:
        if device.type == "cuda":
            sync(device)
            out["gib"] = torch.cuda.max_memory_allocated(device) / 2**30


@dataclass
class Budget:
    """The whole check's seconds; each row asks for a box of at most what is left (minus `reserve`, kept for
    writing the record)."""

    total_s: float
    reserve_s: float = 5.0
    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def remaining(self) -> float:
        return self.total_s - self.reserve_s - self.elapsed()

    def box(self, seconds: float) -> float:
        """A row's time box: `seconds`, or less when the check has less left.

        Examples:
            >>> Budget(100.0, reserve_s=0.0, started=time.perf_counter() - 90.0).box(30.0) <= 10.0
            True
        """
        return max(0.0, min(seconds, self.remaining()))


def deadline_after(seconds: float) -> float:
    return time.perf_counter() + seconds


class StepTimer(pl.Callback):
    """Times every training step of a fit (device-synchronised) and stops the fit at `deadline`, once at least
    `min_steps` steps are done (a rate needs steps after the warm-up, however slow the first ones were).

    `count(batch)` says how many images a batch holds. `rate(warmup)` is images/s over the steps after the
    first `warmup` (cuDNN autotuning, compilation and allocator growth happen there).
    """

    def __init__(self, deadline: float, count: Callable[[Any], int], min_steps: int = 2) -> None:
        self.deadline, self.count, self.min_steps = deadline, count, min_steps
        self.marks: list[float] = []
        self.images: list[int] = []
        self.stopped_early = False

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if not self.marks:  # the clock starts once the first batch is on the device
            sync(pl_module.device)
            self.marks.append(time.perf_counter())

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        sync(pl_module.device)
        self.marks.append(time.perf_counter())
        self.images.append(self.count(batch))
        if self.marks[-1] > self.deadline and self.steps >= self.min_steps:
            self.stopped_early = True
            trainer.should_stop = True

    @property
    def steps(self) -> int:
        return len(self.images)

    def rate(self, warmup: int) -> float:
        """Images per second over the steps after the first `warmup` (all but the last step if fewer ran).

        Examples:
            >>> timer = StepTimer(0.0, len)
            >>> timer.marks, timer.images = [0.0, 5.0, 6.0, 7.0], [4, 4, 4]
            >>> timer.rate(warmup=1)  # 8 images in the last 2 s; the first, slow step is warm-up
            4.0
        """
        if self.steps < 2:
            raise RuntimeError(f"{self.steps} training step(s) finished inside the time box; need at least 2")
        warmup = min(warmup, self.steps - 1)
        return sum(self.images[warmup:]) / (self.marks[-1] - self.marks[warmup])

    def step_seconds(self, warmup: int) -> float:
        """Median seconds per step after warm-up."""
        warmup = min(warmup, self.steps - 1)
        gaps = sorted(b - a for a, b in zip(self.marks[warmup:], self.marks[warmup + 1:], strict=False))
        return gaps[len(gaps) // 2]


def run_row(name: str, budget: Budget, seconds: float, device: torch.device,
            measure: Callable[[float], Row]) -> Row:
    """Run one measurement in a time box of `seconds` (less if the check has less left); a failure becomes a
    `failed` row with its one-line reason (the traceback goes to the log), never the end of the check."""
    box = budget.box(seconds)
    if box < 1.0:
        return Row(name, status="timeout", reason="the check's time ran out before this row")
    log.info("== %s (time box %.0f s)", name, box)
    started = time.perf_counter()
    peak: dict[str, float | None] = {"gib": None}
    try:
        with peak_memory(device) as peak:
            row = measure(deadline_after(box))
    except Exception as err:  # recorded, not fatal: the next row still runs (an OOM keeps its peak)
        log.error("%s failed:\n%s", name, traceback.format_exc())
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        row = Row(name, status="failed", reason=f"{type(err).__name__}: {first}"[:300])
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    row.name = name
    row.seconds = time.perf_counter() - started
    if row.peak_memory_gib is None:
        row.peak_memory_gib = peak["gib"]
    log.info("   %s: %s %s (%s, %.0f s)", name, row.value, row.unit, row.status, row.seconds)
    return row
