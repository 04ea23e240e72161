"""What every row of the check shares: the device, the precision, the sizes, where it writes, and task configs
composed exactly as the tasks compose them (so the check measures what `medal boneage` / `segment` / `enhance`
run, with the same defaults), with the check's device, precision and folders."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from medal.gpucheck.sizes import Sizes
from medal.pipeline.plan import compose_task_config

TRAINING_TASKS = ("boneage", "segment", "enhance")  # the configs with a `trainer` group


@dataclass
class Context:
    """`accelerator` is Lightning's (`gpu`/`cpu`), `precision` its precision string, `work` the check's folder."""

    device: torch.device
    accelerator: str
    precision: str
    sizes: Sizes
    work: Path
    workers: int | None  # bone age loader processes; None: the config's (`${loader_workers:...}`)
    phantoms: Path | None = None  # the throughput phantom set (RSNA layout), made by the first row
    facts: dict[str, Any] = field(default_factory=dict)  # shared figures: matmul peak, chosen batch, FLOPs

    @property
    def bf16(self) -> bool:
        return self.precision.startswith("bf16")

    def autocast(self) -> torch.autocast:
        """The autocast Lightning's `precision` uses for a training step (disabled at 32-true)."""
        dtype = torch.float16 if self.precision.startswith("16") else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.precision != "32-true")

    def trainer_overrides(self) -> list[str]:
        return [f"trainer={self.accelerator}", f"trainer.precision={self.precision}",
                "trainer.enable_progress_bar=false"]

    def compose(self, task: str, run: str, overrides: Sequence[str] = ()) -> DictConfig:
        """`conf/<task>.yaml` with the check's device, precision and folders, then `overrides`; the run folder
        is `<work>/runs/<run>`."""
        trainer = self.trainer_overrides() if task in TRAINING_TASKS else []
        return compose_task_config(task, [f"paths.output_root={self.work}", f"paths.output_dir={self.work / 'runs' / run}",
                                          *trainer, *overrides])
