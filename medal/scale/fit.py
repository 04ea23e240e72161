"""How a stage's cost grows with n: the exponent of a power law fitted on log-log axes, and the extrapolation.

`growth_exponent` is the least-squares slope of log(value) against log(n): 1 is linear, 2 quadratic, 0 flat.
Memory is fitted on what the work adds above the process's baseline (imports, networks), so a stage that holds
1 MB per image shows exponent ~1, not the ~0.3 its 500 MB of interpreter would make it look. `extrapolate`
carries the fitted law from the largest measured n; it never extrapolates from one point (the value is returned
as it is, flagged by the caller).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

FLAT = 32 * 2**20  # bytes: memory growth below this at every size reads as "does not grow"


def growth_exponent(ns: Sequence[float], values: Sequence[float]) -> float | None:
    """Least-squares slope of log(values) on log(ns); None with fewer than two sizes or a non-positive value.

    Examples:
        >>> round(growth_exponent([500, 2000, 12611], [1.0, 4.0, 25.222]), 3)
        1.0
        >>> round(growth_exponent([10, 100], [1.0, 100.0]), 3)
        2.0
        >>> growth_exponent([10], [1.0]) is None
        True
    """
    pairs = [(math.log(n), math.log(v)) for n, v in zip(ns, values, strict=True) if n > 0 and v > 0]
    if len(pairs) < 2 or len(pairs) < len(ns) or len({x for x, _ in pairs}) < 2:
        return None
    mx = sum(x for x, _ in pairs) / len(pairs)
    my = sum(y for _, y in pairs) / len(pairs)
    sxx = sum((x - mx) ** 2 for x, _ in pairs)
    return sum((x - mx) * (y - my) for x, y in pairs) / sxx


def extrapolate(ns: Sequence[float], values: Sequence[float], target: float) -> float | None:
    """The value at `target` on the power law of `growth_exponent`, anchored at the largest measured n (the
    measured value itself when `target` was measured); None when there is no law to follow.

    Examples:
        >>> round(extrapolate([500, 2000], [1.0, 4.0], 100_000), 6)
        200.0
        >>> extrapolate([500, 2000], [1.0, 4.0], 2000)
        4.0
    """
    for n, v in zip(ns, values, strict=True):
        if n == target:
            return float(v)
    exponent = growth_exponent(ns, values)
    if exponent is None:
        return None
    anchor = max(range(len(ns)), key=lambda i: ns[i])
    return float(values[anchor] * (target / ns[anchor]) ** exponent)


def memory_law(ns: Sequence[float], baselines: Sequence[float], peaks: Sequence[float]) -> tuple[float | None, str]:
    """(exponent, how) of memory growth: fitted on the peaks above each run's baseline; `flat` when every
    growth is below `FLAT` (the stage holds nothing per image).

    Examples:
        >>> exponent, how = memory_law([500, 2000], [4e8, 4e8], [5e8, 8e8])
        >>> round(exponent, 6), how
        (1.0, 'fitted')
        >>> memory_law([500, 2000], [4e8, 4e8], [4.1e8, 4.2e8])
        (0.0, 'flat')
    """
    growth = [max(p - b, 0.0) for p, b in zip(peaks, baselines, strict=True)]
    if all(g < FLAT for g in growth):
        return 0.0, "flat"
    return growth_exponent(ns, [max(g, FLAT / 4) for g in growth]), "fitted"


def extrapolate_memory(ns: Sequence[float], baselines: Sequence[float], peaks: Sequence[float],
                       target: float) -> float | None:
    """Peak memory at `target`: the largest run's baseline plus its growth carried by `memory_law`.

    Examples:
        >>> round(extrapolate_memory([500, 2000], [4e8, 4e8], [5e8, 8e8], 20_000) / 1e9, 6)
        4.4
    """
    for n, p in zip(ns, peaks, strict=True):
        if n == target:
            return float(p)
    exponent, how = memory_law(ns, baselines, peaks)
    anchor = max(range(len(ns)), key=lambda i: ns[i])
    if how == "flat":
        return float(peaks[anchor])
    if exponent is None:
        return None
    growth = max(peaks[anchor] - baselines[anchor], FLAT / 4)
    return float(baselines[anchor] + growth * (target / ns[anchor]) ** exponent)
