"""Check a run's overrides before Hydra starts, so a typo costs one clear line instead of a report.

Hydra reports composition errors over several lines (the options, the search path, a hint about
HYDRA_FULL_ERROR). `override_problem` composes the task's config with the same overrides and turns any
failure into one line that names the override and the fix. Sweeps (`a,b`, `range(...)`, `interval(...)`,
which a config may run without `-m` by setting `hydra.mode: MULTIRUN`) are left to Hydra's sweepers.
"""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException

from medal.config import CONF_DIR


def _one_line(message: str) -> str:
    lines = []
    for line in message.splitlines():
        if line.startswith("Config search path"):
            break
        if line.strip():
            lines.append(line.strip().rstrip("."))
    return "; ".join(lines)


def _missing_option(err: MissingConfigException, overrides: list[str]) -> str:
    group, _, name = str(err.missing_cfg_file).rpartition("/")
    given = next((o for o in overrides if o.lstrip("+~").split("=", 1)[0] == group), f"{group}={name}")
    choices = ", ".join(err.options or [])
    return f"{given}: conf/{group}/ has no {name}.yaml; choose one of: {choices}"


def _has_sweep(overrides: list[str]) -> bool:
    try:
        return any(o.is_sweep_override() for o in OverridesParser.create().parse_overrides(overrides))
    except HydraException:  # a syntax error: composing reports it
        return False


def override_problem(config_name: str, overrides: list[str], command: str = "medal <task>") -> str | None:
    """None when `conf/<config_name>.yaml` composes with `overrides` (or they sweep), else one line saying
    what to fix."""
    if _has_sweep(overrides):
        return None
    try:
        with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
            compose(config_name=config_name, overrides=overrides)
    except MissingConfigException as err:
        if err.options and err.missing_cfg_file and "/" in str(err.missing_cfg_file):
            return _missing_option(err, overrides)
        return _one_line(str(err))
    except HydraException as err:
        text = _one_line(str(err))
        if "Could not override" in text:
            text += f" (`{command} --cfg job` prints every key)"
        return text
    return None
