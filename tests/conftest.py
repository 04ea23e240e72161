"""Shared fixtures: composed task configs in tmp dirs, a tiny phantom data set, offline loggers."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

from medal.config import CONF_DIR  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # two xdist workers on two cores: don't oversubscribe


def compose_task(task_config: str, overrides: list[str], root: Path) -> DictConfig:
    """Compose `conf/<task_config>.yaml` as Hydra would, with every path under `root`."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose(
            config_name=task_config,
            overrides=[f"paths.root={root}", f"paths.output_dir={root / 'run'}", *overrides],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(root / "run")
    return cfg


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """`make_cfg("boneage", ["model=tiny"])` -> composed config whose outputs go to tmp_path."""

    def make(task_config: str, overrides: list[str] | None = None) -> DictConfig:
        return compose_task(task_config, overrides or [], tmp_path)

    return make


@pytest.fixture(scope="session")
def tiny_phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small phantom data set in the RSNA layout (+ masks/, gold/), shared by the whole session."""
    from medal.data.phantom import generate_dataset

    root = tmp_path_factory.mktemp("phantoms")
    generate_dataset(root, n=64, seed=0, image_size=128, workers=1)
    return root
