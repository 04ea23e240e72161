"""`medal check-data`'s body: validate a data set, print a per-split summary and every problem on its own line.

Every image's integrity is checked by default with the cheap chunk walk of `pngcheck` (CRCs and IEND, no
decode), so a truncated or corrupted file is named even on the full RSNA set; `data.check_images=true` also
decodes every image that passed (slow), which catches what only the pixels show.
"""

from __future__ import annotations

import math

import pandas as pd
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from medal.data.checks import Problem, damaged_images, summarize, unreadable_images
from medal.data.rsna import scan, to_index
from medal.errors import MedalError


def _fmt(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.1f}"


def summary_table(summary: pd.DataFrame, root: str) -> Table:
    """The `summarize` frame as a rich table: images, sexes and age range per split."""
    table = Table(title=f"data set {root}")
    for col in ("split", "images", "male", "female", "age min", "age mean", "age max"):
        table.add_column(col, justify="left" if col == "split" else "right")
    for r in summary.itertuples(index=False):
        table.add_row(r.split, str(r.images), str(r.male), str(r.female), _fmt(r.age_min), _fmt(r.age_mean),
                      _fmt(r.age_max))
    return table


def image_problems(index: pd.DataFrame, decode: bool, workers: int) -> list[Problem]:
    """The cheap PNG check of every indexed image, plus (when `decode`) a full decode of those that passed."""
    ids, paths = index["id"].tolist(), index["path"].tolist()
    problems = damaged_images(ids, paths, workers=workers)
    if decode:
        bad = {p.source for p in problems}
        keep = [i for i, path in enumerate(paths) if path not in bad]
        problems += unreadable_images([ids[i] for i in keep], [paths[i] for i in keep], workers=workers)
    return problems


def run_check_data(cfg: DictConfig) -> dict[str, float]:
    """Check every split of `data.root`; raise (exit status 1) when anything is wrong."""
    result = scan(cfg.data.root)
    index = to_index(result.labels)
    problems = list(result.problems) + image_problems(index, bool(cfg.data.check_images), int(cfg.workers))
    summary = summarize(index)
    console = Console()
    console.print(summary_table(summary, str(result.root)))
    for problem in problems:
        console.print(str(problem), markup=False, highlight=False, soft_wrap=True)
    if problems:
        raise MedalError(f"{len(problems)} problem(s) found in {result.root}")
    console.print(f"no problems found in {result.root}", markup=False, highlight=False)
    metrics: dict[str, float] = {"data/problems": 0.0, "data/images_checked": float(len(index))}
    for r in summary.itertuples(index=False):
        metrics[f"{r.split}/images"] = float(r.images)
    return metrics
