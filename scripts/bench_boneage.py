"""Benchmark: Xception regressor training step at 299 px on this machine, project settings vs plain fp32.

Project settings = channels_last memory format + bf16 autocast (what `trainer.precision=bf16-mixed` and
`channels_last=true` do in `medal boneage`); baseline = fp32, contiguous, eager, in the same run. The two
are interleaved (warm-up, then alternating rounds) so machine load hits both alike. Peak memory per
setting is measured in a forked child process of its own (ru_maxrss after two training steps), because
an allocator keeps freed pages: in one process the second setting would reuse the first one's memory.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing as mp
import resource
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from medal.bench import BenchRow, write_bench
from medal.config import CONF_DIR
from medal.models.regressor import build_regressor

log = logging.getLogger("medal.bench")


def _peak_child(fast: bool, batch: int, size: int, conn) -> None:
    setting = Setting("probe", fast, batch, size)
    for _ in range(2):
        setting.step()
    conn.send(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # KiB -> MiB on Linux
    conn.close()


def peak_memory_mib(fast: bool, batch: int, size: int) -> float:
    """Peak resident memory of a fresh process that builds the model and takes two training steps."""
    context = mp.get_context("fork")  # forked before this process runs any torch op (OpenMP is not fork-safe)
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_peak_child, args=(fast, batch, size, sender))
    child.start()
    peak = receiver.recv()
    child.join()
    return float(peak)


class Setting:
    """One model + optimizer under one numeric setting; `step()` is one full training update."""

    def __init__(self, name: str, fast: bool, batch: int, size: int, channels_last: bool | None = None):
        torch.manual_seed(0)
        self.name, self.fast = name, fast
        self.format = torch.channels_last if (fast if channels_last is None else channels_last) else torch.contiguous_format
        cfg = OmegaConf.load(Path(CONF_DIR) / "model" / "xception.yaml")
        self.model = build_regressor(cfg).to(memory_format=self.format).train()
        self.optimizer = torch.optim.RMSprop(self.model.parameters(), lr=1e-3, alpha=0.9, eps=1e-7)
        self.image = torch.rand(batch, 1, size, size).contiguous(memory_format=self.format)
        self.target = torch.randn(batch)
        self.times: list[float] = []

    def step(self) -> None:
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if self.fast else contextlib.nullcontext()
        with autocast:
            loss = F.l1_loss(self.model(self.image).float(), self.target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def timed_round(self, steps: int) -> None:
        for _ in range(steps):
            start = time.perf_counter()
            self.step()
            self.times.append(time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=299)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per round")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    peaks = {fast: peak_memory_mib(fast, args.batch, args.size) for fast in (False, True)}
    settings = [Setting("fp32 eager", False, args.batch, args.size),
                Setting("channels_last + bf16 autocast", True, args.batch, args.size),
                Setting("channels_last fp32", False, args.batch, args.size, channels_last=True)]
    for setting in settings:
        for _ in range(args.warmup):
            setting.step()
    for _ in range(args.rounds):
        for setting in settings:
            setting.timed_round(args.steps)
            log.info("%s: %.2f s/step", setting.name, setting.times[-1])

    baseline, fast, layout_only = settings
    rate = {s.name: args.batch / statistics.median(s.times) for s in settings}
    rows = [
        BenchRow(f"Xception regressor training images/s (299 px, batch {args.batch})", rate[fast.name], "img/s",
                 baseline.name, rate[baseline.name], higher_is_better=True,
                 extra={"steps_timed": len(fast.times), "median_step_s": {s.name: args.batch / rate[s.name]
                                                                         for s in settings}}),
        BenchRow("peak resident memory of a training process (model + 2 steps)", peaks[True], "MiB",
                 baseline.name, peaks[False], higher_is_better=False, extra={"measure": "ru_maxrss of a forked child"}),
        BenchRow(f"Xception regressor training images/s, channels_last only (299 px, batch {args.batch})",
                 rate[layout_only.name], "img/s", baseline.name, rate[baseline.name], higher_is_better=True),
    ]
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    bf16_hw = "has" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "lacks"
    notes = (f"This CPU {bf16_hw} native bf16 (avx512_bf16/amx_bf16). Training step = forward + L1 loss + backward + RMSprop update of every layer, random input, "
             f"{args.warmup} warm-up steps, {args.rounds} alternating rounds of {args.steps} steps, median step time, "
             f"{torch.get_num_threads()} torch threads. Load average at the end: {Path('/proc/loadavg').read_text().split()[0]} "
             "(other jobs share these cores; the interleaving keeps the ratio fair, not the absolute rate).")
    path = write_bench("boneage", rows, notes)
    log.info("speed-up %.2fx; written %s", rows[0].ratio, path)


if __name__ == "__main__":
    main()
