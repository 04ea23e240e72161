"""`medal table`: collect runs (multirun folder or W&B), write table.md/.csv/.tex and figure11.png
(`medal.tables.make`)."""

from __future__ import annotations

from omegaconf import DictConfig

from medal.tables.make import make_table
from medal.tasks.runner import hydra_task


@hydra_task("table")
def main(cfg: DictConfig) -> dict[str, float]:
    """Build ablation tables and loss curves from finished runs."""
    return make_table(cfg)


if __name__ == "__main__":
    main()
