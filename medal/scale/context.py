"""What one measurement of the scale benchmark knows: its stage, its size, where its fixtures and scratch live.

A stage function receives a `Ctx`, prepares what it needs (configs, models), calls `ctx.begin()` when the work it
measures starts (the memory baseline is taken there, see `medal.scale.measure`), and returns its report through
`ctx.report(...)`: the items it processed, the seconds of its work, and where only a prefix was timed, the projected
seconds of the whole job at this n with the rule that projected it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from medal.scale.measure import folder_bytes


@dataclass
class Ctx:
    stage: str
    n: int
    root: Path  # outputs/bench/scale: results/, scratch/, outputs/
    out: Path  # this measurement's own scratch folder, empty when the stage starts
    result: Path  # where the child writes its report; `<result>.start` marks the start of the work
    quick: bool = False
    shared: Path | None = None  # fixtures shared with another root (a "before" run); default <root>/fixtures
    _started: float | None = None
    _disk: list[Path] = field(default_factory=list)
    _disk_before: int = 0

    @property
    def fixtures(self) -> Path:
        return self.shared or self.root / "fixtures"

    def base(self) -> Path:
        """The distinct phantoms every layout links to."""
        return self.fixtures / "base"

    def layout(self, n: int | None = None, extras: bool = True) -> Path:
        """The RSNA-layout data set of `n` training images (`medal.scale.fixtures.scaled_layout`)."""
        return self.fixtures / "layouts" / f"{'n' if extras else 'raw'}{self.n if n is None else n}"

    def work(self, n: int | None = None) -> Path:
        """`data.work_dir` of the layout of `n` (its caches, RoIs, runs' derived data)."""
        return self.fixtures / "work" / f"n{self.n if n is None else n}"

    def compose(self, task: str, overrides: list[str], run: Path | None = None) -> DictConfig:
        """`conf/<task>.yaml` as the task composes it, its run folder `run` (default: this measurement's scratch)."""
        from medal.pipeline.plan import compose_task_config

        run = run or self.out / "run"
        return compose_task_config(task, [f"paths.output_root={self.root / 'outputs'}", f"paths.output_dir={run}",
                                          *overrides])

    def data_overrides(self, n: int | None = None) -> list[str]:
        """`data=rsna` on the layout of `n`, with its own work dir."""
        return ["data=rsna", f"data.root={self.layout(n)}", f"data.work_dir={self.work(n)}"]

    def disk(self, *paths: Path) -> None:
        """Count what the work writes under `paths` (their size now is subtracted at the end)."""
        self._disk = [Path(p) for p in paths]
        self._disk_before = folder_bytes(self._disk)

    def begin(self) -> None:
        """The measured work starts now: the parent takes the memory baseline, the clock starts."""
        self.result.with_name(self.result.name + ".start").touch()
        self._started = time.perf_counter()

    def seconds(self) -> float:
        if self._started is None:
            raise RuntimeError(f"stage {self.stage}: ctx.begin() was never called")
        return time.perf_counter() - self._started

    def report(self, items: int, *, projected_s: float | None = None, prefix: str | None = None,
               notes: str = "", **extra: Any) -> dict[str, Any]:
        """The stage's report: `items` processed, the work's seconds (now), `projected_s` for the whole job at n
        where only a `prefix` was timed (with the rule in `prefix`), the bytes written under the `disk` paths."""
        seconds = self.seconds()
        written = folder_bytes(self._disk) - self._disk_before if self._disk else 0
        return {"items": int(items), "seconds": seconds, "projected_s": seconds if projected_s is None else projected_s,
                "prefix": prefix, "disk_bytes": max(written, 0), "notes": notes, **extra}
