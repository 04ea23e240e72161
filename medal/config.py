"""OmegaConf resolvers and config helpers shared by every task."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def to_plain(node: Any) -> Any:
    """A config node as plain Python (dicts, lists, values), resolved; other values pass through."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig | ListConfig) else node


def path_id(path: str) -> str:
    """Short stable id of an absolute path: keeps work dirs of two data sets with one name apart."""
    return hashlib.sha1(str(Path(path).expanduser().resolve()).encode()).hexdigest()[:8]


def fast_precision(accelerator: str = "cpu") -> str:
    """`${fast_precision:cpu}`: bf16-mixed where bf16 is native, else 32-true (see medal.hardware)."""
    from medal.hardware import fast_precision as pick

    return pick(accelerator)


def launch_dir() -> str:
    """`${launch_dir:}`: the directory medal was started from (Hydra's runtime.cwd once a job runs).

    `${hydra:runtime.cwd}` cannot serve `paths.root`: a multirun's sweeper resolves `hydra.sweep.dir`, which
    is built from `paths.root`, before Hydra sets its runtime config, and the sweep fails.
    """
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.cwd if HydraConfig.initialized() else os.getcwd()


def register_resolvers() -> None:
    """Register `${path_id:...}`, `${fast_precision:...}` and `${launch_dir:}`; safe to call more than once."""
    if not OmegaConf.has_resolver("launch_dir"):
        OmegaConf.register_new_resolver("launch_dir", launch_dir)
    if not OmegaConf.has_resolver("path_id"):
        OmegaConf.register_new_resolver("path_id", path_id)
    if not OmegaConf.has_resolver("fast_precision"):
        OmegaConf.register_new_resolver("fast_precision", fast_precision)


register_resolvers()
