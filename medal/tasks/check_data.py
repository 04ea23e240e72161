"""`medal check-data`: validate a data set, print a per-split summary and every problem on its own line
(`medal.data.check_experiment`); exit status 1 when anything is wrong."""

from __future__ import annotations

from omegaconf import DictConfig

from medal.data.check_experiment import run_check_data
from medal.tasks.runner import hydra_task


@hydra_task("check_data")
def main(cfg: DictConfig) -> dict[str, float]:
    """Check every split of `data.root`: labels, ids, every image's PNG integrity (and decode, optionally)."""
    return run_check_data(cfg)


if __name__ == "__main__":
    main()
