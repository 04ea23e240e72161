"""`medal annotate`: hand masks for the folder oracle's round, or gold standards for the enhancer, in a local web
page (`medal.annotate`)."""

from __future__ import annotations

from omegaconf import DictConfig

from medal.annotate.serve import run_annotate
from medal.tasks.runner import hydra_task


@hydra_task("annotate")
def main(cfg: DictConfig) -> dict[str, float]:
    """Serve the waiting round (annotate.mode=masks) or the gold request (gold) until Finish."""
    return run_annotate(cfg)


if __name__ == "__main__":
    main()
