"""`medal predict bundle=DIR input=...`: bone age with a calibrated interval for new radiographs."""

from __future__ import annotations

from omegaconf import DictConfig

from medal.predict.run import run_predict
from medal.tasks.runner import hydra_task


@hydra_task("predict")
def main(cfg: DictConfig) -> dict[str, float]:
    """Every image of the input through the bundle's chain: predictions.csv, CAM overlays, an HTML page."""
    return run_predict(cfg)


if __name__ == "__main__":
    main()
