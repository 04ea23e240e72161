"""Comparing query strategies over seeds: learning curves with confidence bands, the area under a curve, and the
labels needed to reach a target. The paired differences between arms (the same seed gives both arms the same
initial draw and start) are `medal.stats`' (`paired_units`, `holm`), the ones `medal table` uses too.

Pure functions over per-seed histories, `[{"labelled": n, "test/dice": d, ...} per round]` as
`medal.active.pool.ActivePool.history` records them; used by scripts/bench_segmentation.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from medal.stats import mean_ci

History = Sequence[dict[str, float]]


def curve(histories: Sequence[History], key: str, level: float = 0.95) -> list[tuple[float, float, float]]:
    """[(labelled, mean, CI half-width)] of `key` over seeds, at every labelled count all seeds reached.

    Examples:
        >>> runs = [[{"labelled": 8, "d": 0.8}, {"labelled": 16, "d": 0.9}], [{"labelled": 8, "d": 0.82}]]
        >>> [(n, round(m, 2)) for n, m, _ in curve(runs, "d")]  # 16 labels: only one seed got there
        [(8.0, 0.81)]
    """
    by_count: dict[float, list[float]] = {}
    for history in histories:
        for record in history:
            if key in record:
                by_count.setdefault(float(record["labelled"]), []).append(float(record[key]))
    return [(n, *mean_ci(v, level)) for n, v in sorted(by_count.items()) if len(v) == len(histories)]


def area_under_curve(history: History, key: str) -> float:
    """The mean of `key` over a run's rounds after the first (every query round counts once): one number for the
    whole learning curve, the several-budgets view of a strategy that a single budget can miss.

    Examples:
        >>> h = [{"labelled": 8, "d": 0.5}, {"labelled": 16, "d": 0.8}, {"labelled": 24, "d": 0.9}]
        >>> round(area_under_curve(h, "d"), 4)
        0.85
    """
    values = [float(r[key]) for r in history[1:] if key in r]
    if not values:
        raise ValueError(f"no rounds after the first with {key}")
    return float(np.mean(values))


def labels_to_reach(history: History, key: str, target: float) -> float:
    """The first labelled count at which `key` reaches `target`; inf when the run never does.

    Examples:
        >>> h = [{"labelled": 8, "d": 0.90}, {"labelled": 16, "d": 0.95}, {"labelled": 24, "d": 0.94}]
        >>> labels_to_reach(h, "d", 0.95), labels_to_reach(h, "d", 0.99)
        (16.0, inf)
    """
    for record in history:
        if key in record and float(record[key]) >= target:
            return float(record["labelled"])
    return math.inf


def labels_at(history: History, key: str, target: float) -> float:
    """The labelled count at which `key` first reaches `target`, interpolated linearly between the two rounds
    around the crossing (a curve measured every 8 labels still tells 20 from 24); inf when the run never does.

    Examples:
        >>> h = [{"labelled": 8, "d": 0.5}, {"labelled": 16, "d": 0.7}, {"labelled": 24, "d": 0.9}]
        >>> labels_at(h, "d", 0.8), labels_at(h, "d", 0.4), labels_at(h, "d", 0.95)
        (20.0, 8.0, inf)
    """
    previous: tuple[float, float] | None = None
    for record in history:
        if key not in record:
            continue
        n, value = float(record["labelled"]), float(record[key])
        if value >= target:
            if previous is None or value == previous[1]:
                return n
            return previous[0] + (target - previous[1]) / (value - previous[1]) * (n - previous[0])
        previous = (n, value)
    return math.inf
