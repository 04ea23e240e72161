"""`medal pretrain`: a source-pretrained backbone (self-supervised or supervised) for `model.weights=PATH`."""

from __future__ import annotations

from omegaconf import DictConfig

from medal.pretrain.experiment import run_pretrain
from medal.tasks.runner import hydra_task


@hydra_task("pretrain")
def main(cfg: DictConfig) -> dict[str, float]:
    """Pretrain (`pretrain=ssl|supervised`), write backbone.safetensors, probe its features on the target."""
    return run_pretrain(cfg)


if __name__ == "__main__":
    main()
