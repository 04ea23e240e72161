"""Compose a task config as Hydra would (hydra node included, HydraConfig set) with every path under `root`.

Like conftest's `make_cfg`, but sets `hydra.runtime.output_dir` through `read_write` (Hydra marks its node
read-only), and can compose a sweep job's overrides.
"""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict, read_write

from medal.config import CONF_DIR


def compose_task(task_config: str, overrides: list[str], root: Path) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose(config_name=task_config, return_hydra_config=True,
                      overrides=[f"paths.root={root}", f"paths.output_dir={root / 'run'}", *overrides])
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.runtime.output_dir = str(root / "run")
    HydraConfig.instance().set_config(cfg)
    return cfg


def compose_jobs(task_config: str, base: list[str], jobs: list[list[str]], root: Path) -> list[DictConfig]:
    """The job configs of a sweep (without the hydra node), composed under one Hydra initialisation: fast."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        return [compose(config_name=task_config, overrides=[f"paths.root={root}", *base, *job]) for job in jobs]
