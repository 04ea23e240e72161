"""`medal recalibrate bundle=DIR cases=...`: a bundle's intervals and OOD threshold calibrated on a hospital's own
labelled cases."""

from __future__ import annotations

from omegaconf import DictConfig

from medal.bundle.recalibrate import run_recalibrate
from medal.tasks.runner import hydra_task


@hydra_task("recalibrate")
def main(cfg: DictConfig) -> dict[str, float]:
    """The bundle's chain over the cases; a new calibration.json and gate.json, the old ones kept, the manifest
    updated."""
    return run_recalibrate(cfg)


if __name__ == "__main__":
    main()
