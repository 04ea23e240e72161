"""`medal export`: write a portable model bundle from finished runs (a pipeline, or bone age run folders)."""

from __future__ import annotations

from omegaconf import DictConfig

from medal.bundle.export import run_export
from medal.tasks.runner import hydra_task


@hydra_task("export")
def main(cfg: DictConfig) -> dict[str, float]:
    """Weights (safetensors), inference config, conformal calibration and manifest of a trained system."""
    return run_export(cfg)


if __name__ == "__main__":
    main()
