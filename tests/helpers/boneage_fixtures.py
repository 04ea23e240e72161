"""Synthetic bone age batches (contract 4's format) and a tiny regressor module, for callback tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset

from medal.boneage.module import BoneAgeModule
from medal.config import CONF_DIR


class SyntheticHands(Dataset):
    """Images whose brightness encodes the bone age, so a model can learn it in a few steps."""

    def __init__(self, n: int = 32, size: int = 32, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.ages = torch.rand(n, generator=g) * 200 + 10
        self.male = (torch.rand(n, generator=g) > 0.5).float()
        noise = torch.rand(n, 1, size, size, generator=g) * 0.2
        self.images = (self.ages / 240).view(n, 1, 1, 1) * 0.8 + noise

    def __len__(self) -> int:
        return len(self.ages)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.images[i], "boneage": self.ages[i], "male": self.male[i], "id": str(i)}


def loader(n: int = 32, size: int = 32, batch_size: int = 8, seed: int = 0) -> DataLoader:
    return DataLoader(SyntheticHands(n, size, seed), batch_size=batch_size, shuffle=False)


def tiny_module(cls: type[BoneAgeModule] = BoneAgeModule, **overrides: Any) -> BoneAgeModule:
    """The tiny regressor with `conf/boneage.yaml`'s loss, optimiser and memory format, no scheduler."""
    cfg = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "model" / "tiny.yaml"))
    task = OmegaConf.load(Path(CONF_DIR) / "boneage.yaml")
    kwargs: dict[str, Any] = {"target_shift": 120.0, "target_scale": 60.0, "scheduler": None, "loss": task.loss,
                              "optimizer": OmegaConf.to_container(task.optimizer),
                              "channels_last": task.channels_last}
    kwargs.update(overrides)
    return cls(model_cfg=cfg, **kwargs)


def trainer_kwargs(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(accelerator="cpu", devices=1, max_epochs=1, logger=False,
                                  enable_checkpointing=False, enable_progress_bar=False,
                                  enable_model_summary=False, num_sanity_val_steps=0,
                                  default_root_dir=str(tmp_path), precision="32-true")
    kwargs.update(overrides)
    return kwargs
