"""`medal pipeline`: the whole system end to end, resumably, with a report (the work is in `medal.pipeline`)."""

from __future__ import annotations

from omegaconf import DictConfig

from medal.pipeline.run import run_pipeline
from medal.tasks.runner import hydra_task


@hydra_task("pipeline")
def main(cfg: DictConfig) -> dict[str, float]:
    """Run every stage not yet done (check-data, segment, enhance, bone age, CAM), then write the report."""
    return run_pipeline(cfg)


if __name__ == "__main__":
    main()
