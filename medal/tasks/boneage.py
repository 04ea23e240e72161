"""`medal boneage`: train, validate and test one bone age regressor (model, fine-tune mode, cohort, images)."""

from __future__ import annotations

from omegaconf import DictConfig

from medal.boneage.experiment import run_boneage
from medal.tasks.runner import hydra_task


@hydra_task("boneage")
def main(cfg: DictConfig) -> dict[str, float]:
    """Train with the chosen fine-tune mode, keep the best checkpoint by val MAE, test it by cohort."""
    return run_boneage(cfg)


if __name__ == "__main__":
    main()
