"""Check a run's overrides before Hydra starts, so a typo costs one clear line instead of a report.

Hydra reports composition errors over several lines (the options, the search path, a hint about
HYDRA_FULL_ERROR). `override_problem` composes the task's config with the same overrides and turns any
failure into one line that names the override and the fix. Sweeps (`a,b`, `range(...)`, `interval(...)`,
which a config may run without `-m` by setting `hydra.mode: MULTIRUN`) are left to Hydra's sweepers.

The pipeline's stage overrides (`pipeline.common`, `pipeline.stages.<task>`) are lists of overrides, which
Hydra's grammar only reads element by element quoted (`'pipeline.common=["trainer.precision=32-true"]'`).
`stage_override_args` accepts the forms a person types instead and rewrites them into that one:
`pipeline.common=[trainer.precision=32-true]` (a list, elements unquoted) and
`pipeline.stages.segment="oracle=folder al.budget=8"` (one string, the shell having eaten the quotes).
"""

from __future__ import annotations

import re
import shlex

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException

from medal.config import CONF_DIR
from medal.errors import MedalError

STAGE_OVERRIDES = re.compile(r"(?P<key>\+{0,2}pipeline\.(?:common|stages\.[\w-]+))=(?P<value>.*)", re.DOTALL)


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


def _parses(override: str) -> bool:
    try:
        OverridesParser.create().parse_overrides([override])
    except HydraException:
        return False
    return True


def _has_sweep(overrides: list[str]) -> bool:
    try:
        return any(o.is_sweep_override() for o in OverridesParser.create().parse_overrides(overrides))
    except HydraException:  # a syntax error: composing reports it
        return False


def composition_problem(err: HydraException, overrides: list[str], command: str = "medal <task>") -> str:
    """One line saying what to fix, from the error Hydra raised composing a config with `overrides`."""
    if isinstance(err, MissingConfigException) and err.options and err.missing_cfg_file \
            and "/" in str(err.missing_cfg_file):
        return _missing_option(err, overrides)
    text = _one_line(str(err))
    if "Could not override" in text:
        text += f" (`{command} --cfg job` prints every key)"
    return text


def override_problem(config_name: str, overrides: list[str], command: str = "medal <task>") -> str | None:
    """None when `conf/<config_name>.yaml` composes with `overrides` (or they sweep), else one line saying
    what to fix."""
    if _has_sweep(overrides):
        return None
    try:
        with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
            compose(config_name=config_name, overrides=overrides)
    except HydraException as err:
        return composition_problem(err, overrides, command)
    return None


def _split_list(body: str) -> list[str] | None:
    """`a=1,b=[2,3]` -> ['a=1', 'b=[2,3]']: split on the commas outside brackets and quotes (None if unbalanced)."""
    parts, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(body):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
            if depth < 0:
                return None
        elif char == "," and depth == 0:
            parts.append(body[start:i])
            start = i + 1
    if depth or quote:
        return None
    parts.append(body[start:])
    return [p.strip() for p in parts if p.strip()]


def _unquote(text: str) -> str:
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"" else text


def _quoted(element: str, arg: str) -> str:
    for quote in ('"', "'"):
        if quote not in element:
            return f"{quote}{element}{quote}"
    raise MedalError(f"{arg}: {element} holds both kinds of quote; put it in a YAML experiment file instead")


def stage_override_arg(arg: str) -> str:
    """`arg` in Hydra's quoted list form when it is a stage-override list typed the natural way, else as is.

    Examples:
        >>> stage_override_arg("pipeline.common=[trainer.precision=32-true]")
        'pipeline.common=["trainer.precision=32-true"]'
        >>> stage_override_arg("pipeline.stages.segment=oracle=folder al.budget=8")
        'pipeline.stages.segment=["oracle=folder","al.budget=8"]'
        >>> stage_override_arg("pipeline.stages.segment=[]")
        'pipeline.stages.segment=[]'
    """
    match = STAGE_OVERRIDES.fullmatch(arg)
    if match is None or _parses(arg):
        return arg
    key, value = match["key"], match["value"].strip()
    example = f"'{key}=[\"trainer.precision=32-true\"]' or {key}=\"trainer=gpu trainer.max_epochs=3\""
    if value.startswith("[") and value.endswith("]"):
        elements = _split_list(value[1:-1])
    else:
        try:
            elements = shlex.split(value)
        except ValueError:
            elements = None
    if elements is None:
        raise MedalError(f"{arg}: unbalanced brackets or quotes; write the stage overrides as {example}")
    elements = [_unquote(e) for e in elements]
    bad = next((e for e in elements if not _parses(e)), None)
    if bad is not None:
        raise MedalError(f"{arg}: {bad!r} is not an override (key=value); write the stage overrides as {example}")
    rewritten = f"{key}=[{','.join(_quoted(e, arg) for e in elements)}]"
    if not _parses(rewritten):
        raise MedalError(f"{arg}: Hydra cannot read it; write the stage overrides as {example}")
    return rewritten


def stage_override_args(args: list[str]) -> list[str]:
    """Every command-line argument through `stage_override_arg` (others are returned unchanged)."""
    return [stage_override_arg(a) for a in args]
