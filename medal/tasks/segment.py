"""`medal segment`: coarse masks -> active-learning rounds -> full-size masks, hand RoIs and boxes."""

from __future__ import annotations

from omegaconf import DictConfig

from medal.segment.experiment import run_segment
from medal.tasks.runner import hydra_task


@hydra_task("segment")
def main(cfg: DictConfig) -> dict[str, float]:
    """Coarse masks, active-learning hand segmentation and RoI crops (see conf/segment.yaml)."""
    return run_segment(cfg)


if __name__ == "__main__":
    main()
