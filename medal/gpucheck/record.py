"""The check's record: one `Row` per measurement, written as JSON and as a markdown table.

A row is `ok` (its numbers are measured), `failed` (an exception: its one-line reason is kept), `skipped` (a
thing the check cannot measure here, e.g. a command that does not exist yet, with the reason) or `timeout`
(the check's time ran out before the row started). Goals are the issue's: a row with a goal says whether it
met it, so the table answers "fast enough?" at a glance.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medal.atomic import write_json, write_text

STATUSES = ("ok", "failed", "skipped", "timeout")


@dataclass
class Row:
    """One measured figure: `value` in `unit` (higher is better unless `lower_is_better`), against `goal`."""

    name: str
    value: float | None = None
    unit: str = ""
    goal: float | None = None
    lower_is_better: bool = False
    status: str = "ok"
    reason: str = ""
    seconds: float = 0.0
    peak_memory_gib: float | None = None
    note: str = ""  # the few details a reader of the table needs (batch, workers, share of the peak, ...)
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def meets_goal(self) -> bool | None:
        """None without a goal or a value; else whether the value reaches it.

        Examples:
            >>> Row("pool scoring", 40.0, "s", goal=30.0, lower_is_better=True).meets_goal
            False
            >>> Row("training", 1500.0, "img/s", goal=1260.0).meets_goal
            True
        """
        if self.goal is None or self.value is None or not math.isfinite(self.value):
            return None
        return self.value <= self.goal if self.lower_is_better else self.value >= self.goal


def _number(value: float | None, digits: int = 4) -> str:
    """A figure for the table: 4 significant digits, `—` for none.

    Examples:
        >>> _number(1234.567), _number(0.012345), _number(None)
        ('1235', '0.01235', '—')
    """
    return "—" if value is None else f"{value:.{digits}g}"


def markdown(rows: list[Row], machine: dict[str, Any], notes: list[str]) -> str:
    """The rows as a markdown table with the machine on top and the notes below."""
    gpu = machine.get("gpu") or "no GPU"
    lines = ["## medal GPU check", "",
             f"{gpu}; torch {machine['torch']}, Python {machine['python']}, {machine['mode']} sizes, "
             f"{machine['date']}; {machine['total_seconds']:.0f} s in all.", "",
             "| measure | value | goal | met | peak GPU memory | s | status | notes |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        goal = "" if row.goal is None else f"{'≤' if row.lower_is_better else '≥'} {_number(row.goal)} {row.unit}"
        met = {True: "yes", False: "**no**", None: ""}[row.meets_goal]
        value = f"{_number(row.value)} {row.unit}" if row.value is not None else "—"
        memory = "" if row.peak_memory_gib is None else f"{row.peak_memory_gib:.1f} GiB"
        status = row.status if not row.reason else f"{row.status}: {row.reason}"
        lines.append(f"| {row.name} | {value} | {goal} | {met} | {memory} | {row.seconds:.0f} | {status} | {row.note} |")
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def write_record(out_dir: Path, rows: list[Row], machine: dict[str, Any], notes: list[str]) -> tuple[Path, Path]:
    """`gpu_check.json` (every row with its details) and `gpu_check.md` (the table), both written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine, "notes": notes, "rows": [{**asdict(r), "meets_goal": r.meets_goal} for r in rows]}
    json_path, md_path = out_dir / "gpu_check.json", out_dir / "gpu_check.md"
    write_json(json_path, payload, indent=2, default=str)
    write_text(md_path, markdown(rows, machine, notes))
    return json_path, md_path
