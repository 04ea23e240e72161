"""`medal check-data`: validate a data set, print a per-split summary and every problem on its own line."""

from __future__ import annotations

import math

from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from medal.data.checks import summarize, unreadable_images
from medal.data.rsna import scan, to_index
from medal.errors import MedalError
from medal.tasks.runner import hydra_task


def _fmt(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.1f}"


def summary_table(summary, root: str) -> Table:  # noqa: ANN001 - a DataFrame from `summarize`
    table = Table(title=f"data set {root}")
    for col in ("split", "images", "male", "female", "age min", "age mean", "age max"):
        table.add_column(col, justify="left" if col == "split" else "right")
    for r in summary.itertuples(index=False):
        table.add_row(r.split, str(r.images), str(r.male), str(r.female), _fmt(r.age_min), _fmt(r.age_mean),
                      _fmt(r.age_max))
    return table


@hydra_task("check_data")
def main(cfg: DictConfig) -> dict[str, float]:
    """Check every split of `data.root`; exit status 1 when anything is wrong."""
    result = scan(cfg.data.root)
    index = to_index(result.labels)
    problems = list(result.problems)
    if cfg.data.get("check_images", False):
        problems += unreadable_images(index["id"].tolist(), index["path"].tolist(), workers=cfg.get("workers", 2))
    summary = summarize(index)
    console = Console()
    console.print(summary_table(summary, str(result.root)))
    for problem in problems:
        console.print(str(problem), markup=False, highlight=False, soft_wrap=True)
    if problems:
        raise MedalError(f"{len(problems)} problem(s) found in {result.root}")
    console.print(f"no problems found in {result.root}", markup=False, highlight=False)
    metrics: dict[str, float] = {"data/problems": 0.0}
    for r in summary.itertuples(index=False):
        metrics[f"{r.split}/images"] = float(r.images)
    return metrics
