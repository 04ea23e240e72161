"""Comparing query strategies over seeds: learning curves with confidence bands, labels needed to reach a target,
and paired differences against a baseline (the same seed gives both arms the same initial draw and start).

Pure functions over per-seed histories, `[{"labelled": n, "test/dice": d, ...} per round]` as
`medal.active.pool.ActivePool.history` records them; used by scripts/bench_segmentation.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

History = Sequence[dict[str, float]]


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """(mean, half-width of the Student-t confidence interval of the mean); half-width 0 for one value.

    Examples:
        >>> m, h = mean_ci([0.90, 0.92, 0.94])
        >>> round(m, 3), round(h, 4)  # t(0.975, 2) = 4.303; sd 0.02 / sqrt(3)
        (0.92, 0.0497)
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return float(v.mean()), 0.0
    return float(v.mean()), float(stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))


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


def paired_difference(values: Sequence[float], baseline: Sequence[float]) -> dict[str, float]:
    """Per-seed differences value - baseline: `mean`, `sd`, `se`, `t` (mean / se) and the one-sided paired
    t-test's `p` (value > baseline); `beyond_spread` is 1.0 when the mean difference exceeds both two standard
    errors and the baseline's own sd over seeds, the benchmark's test of "better beyond the seed spread".

    Examples:
        >>> d = paired_difference([0.95, 0.96, 0.97, 0.96, 0.95], [0.90, 0.92, 0.91, 0.90, 0.92])
        >>> round(d["mean"], 3), d["beyond_spread"], d["p"] < 0.01
        (0.048, 1.0, True)
    """
    v, b = np.asarray(values, np.float64), np.asarray(baseline, np.float64)
    if v.shape != b.shape or v.size < 2:
        raise ValueError(f"paired difference needs two equal runs of >= 2 seeds, got {v.size} and {b.size}")
    diff = v - b
    mean, sd = float(diff.mean()), float(diff.std(ddof=1))
    se = sd / math.sqrt(diff.size)
    t = mean / se if se > 0 else (math.inf if mean > 0 else 0.0)
    p = float(stats.t.sf(t, diff.size - 1)) if math.isfinite(t) else (0.0 if mean > 0 else 1.0)
    beyond = mean > 2 * se and mean > float(b.std(ddof=1))
    return {"mean": mean, "sd": sd, "se": se, "t": t, "p": p, "beyond_spread": float(beyond)}
