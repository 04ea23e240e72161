"""CI (`.ci/run`) runs the README's test command and then the slow tests, so that code only a long run or a GPU
reaches (the GPU check, the Figure 12 smoke run, DDP) is exercised on every change."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _commands(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def _recipe(target: str) -> str:
    match = re.search(rf"^{re.escape(target)}:.*\n\t(.+)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert match, f"Makefile has no {target} target"
    return match.group(1)


def test_ci_runs_the_readme_s_test_command_then_the_slow_tests() -> None:
    commands = _commands(REPO / ".ci" / "run")
    assert "make test" in (REPO / "README.md").read_text()
    assert commands.index("make test") < commands.index("make test-slow")
    assert "pytest" in _recipe("test-slow") and "-m slow" in _recipe("test-slow")
    assert "-m" not in _recipe("test").split()  # the fast suite: pyproject's default marker filter (not slow)
