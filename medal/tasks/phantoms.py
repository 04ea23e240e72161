"""`medal phantoms`: generate (or finish) a phantom data set and its contact sheet (`medal.data.phantom.make`)."""

from __future__ import annotations

from omegaconf import DictConfig

from medal.data.phantom.make import run_phantoms
from medal.tasks.runner import hydra_task


@hydra_task("phantoms")
def main(cfg: DictConfig) -> dict[str, float]:
    """Generate `n` phantoms under `out` (resumable; other settings are refused), with a contact sheet."""
    return run_phantoms(cfg)


if __name__ == "__main__":
    main()
