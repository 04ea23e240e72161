"""`medal enhance`: train the GAN (enhance=gan|gan_l1) or take a baseline (clahe|none), enhance every RoI,
and score the method against gold standards on held-out pairs (`medal.enhance.experiment`)."""

from __future__ import annotations

from omegaconf import DictConfig

from medal.enhance.experiment import run_enhance
from medal.tasks.runner import hydra_task


@hydra_task("enhance")
def main(cfg: DictConfig) -> dict[str, float]:
    """Train or set up the enhancer, score it on held-out pairs, enhance every RoI."""
    return run_enhance(cfg)


if __name__ == "__main__":
    main()
