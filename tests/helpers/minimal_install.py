"""Run Python as on a minimal install (`pip install medal` without extras): W&B, the Hydra launcher plugins and
Optuna (with what only they bring) cannot be imported, though this environment has them.

A module set to None in `sys.modules` fails to import and `importlib.util.find_spec` reports it missing, which is
exactly how an absent package behaves for medal's code and for Hydra's plugin discovery.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

#: what `medal[wandb]`, `medal[launchers]` and `medal[optuna]` add (the top-level modules)
OPTIONAL_MODULES = ("wandb", "optuna", "joblib", "submitit", "sqlalchemy", "alembic", "cliff", "cmaes",
                    "hydra_plugins.hydra_joblib_launcher", "hydra_plugins.hydra_submitit_launcher",
                    "hydra_plugins.hydra_optuna_sweeper")
BLOCK = f"import sys\nfor _name in {OPTIONAL_MODULES!r}:\n    sys.modules[_name] = None\n"


def run_minimal(code: str, cwd: Path, timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter that cannot import the optional packages."""
    return subprocess.run([sys.executable, "-c", BLOCK + code], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
