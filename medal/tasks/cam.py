"""`medal cam ckpt=PATH`: class activation maps of a trained bone age model (per image and averaged by sex)."""

from __future__ import annotations

from omegaconf import DictConfig

from medal.boneage.cam_experiment import run_cam
from medal.tasks.runner import hydra_task


@hydra_task("cam")
def main(cfg: DictConfig) -> dict[str, float]:
    """CAM (linear head, exact) or Grad-CAM overlays and male/female average maps on the run's test split."""
    return run_cam(cfg)


if __name__ == "__main__":
    main()
