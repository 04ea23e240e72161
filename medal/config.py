"""OmegaConf resolvers and config helpers shared by every task."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf

from medal.errors import MedalError

T = TypeVar("T")



def find_conf_dir(package_dir: Path) -> Path:
    """Where the Hydra configs are: `medal/conf` inside an installed wheel (pyproject force-includes them
    there), else `conf/` at the root of a checkout (`uv sync` installs the package editable, from the source).

    Examples:
        >>> find_conf_dir(Path("/nowhere/medal")).as_posix()
        '/nowhere/conf'
    """
    packaged = package_dir / "conf"
    return packaged if packaged.is_dir() else package_dir.parent / "conf"


CONF_DIR = str(find_conf_dir(Path(__file__).resolve().parent))


def to_plain(node: Any) -> Any:
    """A config node as plain Python (dicts, lists, values), resolved; other values pass through."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig | ListConfig) else node


def options_from(cls: type[T], node: Any, key: str, **extra: Any) -> T:
    """Build the options dataclass `cls` from config node `node` (at `key`), naming any unknown or missing key.

    The YAML is the one place defaults live: a key the dataclass does not know fails in one line (a typo in an
    override must not be dropped silently), and so does a field the config lacks that has no dataclass default.
    `extra` supplies fields that come from elsewhere in the config (e.g. a device chosen by hardware).

    Examples:
        >>> @dataclasses.dataclass
        ... class Opt:
        ...     size: int
        ...     p: float = 0.5
        >>> options_from(Opt, {"size": 3}, "data.augment")
        Opt(size=3, p=0.5)
        >>> options_from(Opt, {"size": 3, "sise": 4}, "data.augment")
        Traceback (most recent call last):
        ...
        medal.errors.MedalError: data.augment.sise: unknown key; known keys: p, size
    """
    values = dict(to_plain(node) or {}) if not isinstance(node, dict) else dict(node)
    values.update(extra)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise MedalError(f"{key}.{unknown[0]}: unknown key; known keys: {', '.join(sorted(fields))}")
    missing = sorted(name for name, f in fields.items() if name not in values and f.init
                     and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
    if missing:
        raise MedalError(f"{key}.{missing[0]}: missing; add it to the config ({', '.join(missing)} required)")
    return cls(**values)


def build_from(node: Any, key: str, **extra: Any) -> Any:
    """Instantiate a config group's choice (`strategy`, `oracle`, `segmenter`): its `_target_` is a dataclass
    built by `options_from` from the node's other keys, so an unknown or missing key fails in one line.

    Examples:
        >>> build_from({"_target_": "datetime.timedelta"}, "strategy")
        Traceback (most recent call last):
        ...
        medal.errors.MedalError: strategy._target_=datetime.timedelta: not an options dataclass
        >>> build_from({"name": "qbc"}, "strategy")
        Traceback (most recent call last):
        ...
        medal.errors.MedalError: strategy: no _target_; its conf/strategy/<name>.yaml must name the class to build
    """
    from hydra.utils import get_class

    values = dict(to_plain(node) or {}) if not isinstance(node, dict) else dict(node)
    target = values.pop("_target_", None)
    if not target:
        raise MedalError(f"{key}: no _target_; its conf/{key}/<name>.yaml must name the class to build")
    try:
        cls = get_class(str(target))
    except Exception as err:  # Hydra raises ImportError or its own error types, depending on what is missing
        raise MedalError(f"{key}._target_={target}: cannot be imported ({err.__class__.__name__})") from None
    if not dataclasses.is_dataclass(cls):
        raise MedalError(f"{key}._target_={target}: not an options dataclass")
    return options_from(cls, values, key, **extra)


def path_id(path: str) -> str:
    """Short stable id of an absolute path: keeps work dirs of two data sets with one name apart."""
    return hashlib.sha1(str(Path(path).expanduser().resolve()).encode()).hexdigest()[:8]


def fast_precision(accelerator: str = "cpu") -> str:
    """`${fast_precision:cpu}`: bf16-mixed where bf16 is native, else 32-true (see medal.hardware)."""
    from medal.hardware import fast_precision as pick

    return pick(accelerator)


def loader_workers(accelerator: str = "cpu") -> int:
    """`${loader_workers:${trainer.accelerator}}`: 0 on a CPU, a few on a GPU (see medal.hardware)."""
    from medal.hardware import loader_workers as pick

    return pick(accelerator)


def launch_dir() -> str:
    """`${launch_dir:}`: the directory medal was started from (Hydra's runtime.cwd once a job runs).

    `${hydra:runtime.cwd}` cannot serve `paths.root`: a multirun's sweeper resolves `hydra.sweep.dir`, which
    is built from `paths.root`, before Hydra sets its runtime config, and the sweep fails.
    """
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.cwd if HydraConfig.initialized() else os.getcwd()


def register_resolvers() -> None:
    """Register `${path_id:...}`, `${fast_precision:...}`, `${loader_workers:...}` and `${launch_dir:}`; safe to
    call more than once."""
    if not OmegaConf.has_resolver("launch_dir"):
        OmegaConf.register_new_resolver("launch_dir", launch_dir)
    if not OmegaConf.has_resolver("path_id"):
        OmegaConf.register_new_resolver("path_id", path_id)
    if not OmegaConf.has_resolver("fast_precision"):
        OmegaConf.register_new_resolver("fast_precision", fast_precision)
    if not OmegaConf.has_resolver("loader_workers"):
        OmegaConf.register_new_resolver("loader_workers", loader_workers)


register_resolvers()
