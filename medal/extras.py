"""medal's optional parts (pyproject extras) and the one line a run gets when it needs one that is missing.

A minimal install (`pip install medal`, e.g. an air-gapped GPU server, README "Air-gapped install") has no W&B,
no Hydra launcher plugins and no Optuna: every task runs without them, and nothing in medal imports them at
module level. A run that asks for one (`logger=wandb`, `table.source=wandb`, `hydra/launcher=joblib`,
`hparams_search=optuna_boneage`) is refused before it starts, naming the extra that provides it, instead of
ending in Hydra's "Could not find 'hydra/launcher/joblib'" or an ImportError deep inside a run.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass

from medal.errors import MedalError


@dataclass(frozen=True)
class OptionalPart:
    """One optional module: the extra that installs it and what needs it."""

    module: str
    extra: str
    needed_by: str


WANDB = OptionalPart("wandb", "wandb", "W&B logging and tables")
JOBLIB = OptionalPart("hydra_plugins.hydra_joblib_launcher", "launchers", "the joblib launcher")
SUBMITIT = OptionalPart("hydra_plugins.hydra_submitit_launcher", "launchers", "the submitit (SLURM) launchers")
OPTUNA = OptionalPart("hydra_plugins.hydra_optuna_sweeper", "optuna", "the Optuna sweeper")


def installed(module: str) -> bool:
    """True when `module` can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module without a spec
        return False


def require(part: OptionalPart, what: str) -> None:
    """Raise one MedalError line when `part` is not installed; `what` names the setting that asked for it.

    Examples:
        >>> require(OptionalPart("no_such_module_x", "wandb", "W&B logging"), "logger=wandb")
        Traceback (most recent call last):
        ...
        medal.errors.MedalError: logger=wandb needs no_such_module_x (W&B logging), which this install lacks: pip install 'medal[wandb]' (offline: make wheels EXTRAS=wandb)
    """
    if not installed(part.module):
        raise MedalError(f"{what} needs {part.module.split('.')[-1]} ({part.needed_by}), which this install "
                         f"lacks: pip install 'medal[{part.extra}]' (offline: make wheels EXTRAS={part.extra})")


def parts_for(override: str) -> list[OptionalPart]:
    """The optional parts a command-line override needs (none for most).

    Examples:
        >>> [p.extra for p in parts_for("hydra/launcher=joblib")]
        ['launchers']
        >>> [p.extra for p in parts_for("logger=[csv,wandb]")]
        ['wandb']
        >>> parts_for("trainer=gpu")
        []
        >>> parts_for("table.source=wandb_offline")
        []
    """
    key, _, value = override.lstrip("+~").partition("=")
    value = value.strip().lower()
    if key == "hydra/launcher":
        if value == "joblib":
            return [JOBLIB]
        if value.startswith("submitit") or value.startswith("slurm"):
            return [SUBMITIT]
    if (key == "hydra/sweeper" and value == "optuna") or (key == "hparams_search" and value.startswith("optuna")):
        return [OPTUNA]
    if (key == "logger" and "wandb" in value) or (key == "table.source" and value == "wandb"):
        return [WANDB]  # table.source=wandb_offline reads medal's own record of each run: no wandb needed
    return []


def check_overrides(overrides: Iterable[str]) -> None:
    """Refuse, in one line, the first override that needs an optional part this install lacks."""
    for override in overrides:
        for part in parts_for(override):
            require(part, override)
