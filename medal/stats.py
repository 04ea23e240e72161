"""Paired statistics for comparing runs: one implementation for `medal table` and the active-learning benchmark.

Two arms (table rows, query strategies) are compared on the units that pair them: the same seed (or the same fold
of a k-fold cross-validation) gives both arms the same split, initial draw and data order, so the per-unit
difference cancels what the unit shares. Where the runs also share a test set and their per-image results are on
disk, the comparison pairs per image as well.

- `paired_units`: the mean per-unit difference a - b, its 95% Student-t confidence interval, and the two-sided p of
  the exact **sign-flip permutation test** (Fisher-Pitman; `scipy.stats.permutation_test` with
  `permutation_type="samples"` on the differences). Why this test for small n: it assumes only that, with no
  difference, each unit's sign is as likely flipped (the arms are exchangeable within a unit); it uses the
  differences' sizes, which the sign test throws away and Wilcoxon's signed-rank test reduces to ranks; and it
  is exact, where a t-test's p at n = 5 rests on a normality that five values cannot show (one bad seed makes
  the differences skewed). Its price is a floor: with n units there are 2^n equally likely sign patterns, so
  the smallest two-sided p is 2 / 2^n — 0.0625 at n = 5, 0.002 at n = 10. **Five seeds alone can never show
  a difference at the 5% level**; the per-image pairing below is what gives five seeds their power.
- `paired_images`: per-image losses of both arms (S units x I images, the same images in the same order), the
  difference of their means, and a **two-way paired bootstrap**: each resample draws units and images with
  replacement, independently (Owen's pigeonhole bootstrap for crossed designs, which errs on the conservative
  side), so the interval holds both the test set's sampling and the training's seed-to-seed spread. Percentile
  interval; two-sided p from the bootstrap distribution centred on the observed difference (Hall & Wilson 1991),
  at best 1 / (resamples + 1).
- `holm`: Holm's step-down adjustment of a family of p-values (the whole table's comparisons), which keeps the
  chance of any false "holds" below alpha without assuming the comparisons independent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

#: How a difference was paired, as the outputs name it.
SIGN_FLIP, BOOTSTRAP = "sign-flip", "bootstrap"
#: Beyond this many units the sign-flip test samples patterns instead of enumerating all 2^n.
EXACT_UNITS = 16


@dataclass(frozen=True)
class Difference:
    """a - b over paired units: the mean difference, its confidence interval (`low`, `high`), the two-sided `p`,
    `n` paired units, `images` per unit (0 when not paired per image), the test (`method`) and the sd of the
    per-unit differences (`sd`; nan for one unit)."""

    mean: float
    low: float
    high: float
    p: float
    n: int
    images: int
    method: str
    sd: float

    @property
    def se(self) -> float:
        """Standard error of the mean per-unit difference (nan for one unit)."""
        return self.sd / math.sqrt(self.n) if self.n > 1 else math.nan


def mean_sd(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sd with n - 1, n); sd nan for one value.

    Examples:
        >>> mean_sd([1.0, 2.0, 3.0])
        (2.0, 1.0, 3)
        >>> mean_sd([4.0])[1]
        nan
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("mean_sd of no values")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan, int(v.size)


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


def sign_flip_p(differences: Sequence[float], seed: int = 0) -> float:
    """Two-sided p of the sign-flip permutation test of mean(differences) = 0: exact up to `EXACT_UNITS`
    differences (every sign pattern), sampled beyond (200,000 patterns from `seed`).

    Examples:
        >>> sign_flip_p([0.5, 0.4, 0.6, 0.5, 0.7])  # all five positive: the floor, 2 / 2^5
        0.0625
        >>> round(sign_flip_p([0.5, 0.4, 0.6, 0.5, 0.7, 0.3, 0.4, 0.6, 0.5, 0.2]), 4)  # ten: 2 / 2^10
        0.002
        >>> sign_flip_p([0.1, -0.1, 0.2, -0.2])
        1.0
    """
    d = np.asarray(differences, dtype=np.float64)
    if d.size < 1:
        raise ValueError("sign-flip test of no differences")
    if not np.any(d):
        return 1.0
    resamples = np.inf if d.size <= EXACT_UNITS else 200_000
    result = stats.permutation_test((d,), np.mean, permutation_type="samples", vectorized=True,
                                    n_resamples=resamples, alternative="two-sided", rng=np.random.default_rng(seed))
    return float(min(1.0, result.pvalue))


def paired_units(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Difference:
    """a - b per paired unit (a[i] and b[i] share unit i): mean, Student-t interval, sign-flip p.

    Examples:
        >>> d = paired_units([10.0, 11.0, 12.0, 10.5, 11.5], [12.0, 13.5, 13.0, 12.5, 14.0])
        >>> round(d.mean, 2), d.p, d.high < 0  # every seed lower, yet p cannot go below 2 / 2^5
        (-2.0, 0.0625, True)
        >>> paired_units([1.0], [2.0, 3.0])
        Traceback (most recent call last):
        ...
        ValueError: paired difference needs two equal runs of >= 2 units, got 1 and 2
    """
    va, vb = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if va.shape != vb.shape or va.size < 2:
        raise ValueError(f"paired difference needs two equal runs of >= 2 units, got {va.size} and {vb.size}")
    diff = va - vb
    mean, half = mean_ci(diff, level)
    return Difference(mean=mean, low=mean - half, high=mean + half, p=sign_flip_p(diff), n=int(diff.size),
                      images=0, method=SIGN_FLIP, sd=float(diff.std(ddof=1)))


def paired_images(a: np.ndarray, b: np.ndarray, resamples: int = 10_000, seed: int = 0,
                  level: float = 0.95) -> Difference:
    """mean(a) - mean(b) for per-image losses a, b (S units, I images; row s of both is unit s, column i image
    i), with a two-way paired bootstrap over units and images (module docstring). One unit: images only.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> b = rng.uniform(5, 15, size=(5, 100)); a = b - 1.0 + rng.normal(0, 0.5, size=(5, 100))
        >>> d = paired_images(a, b, resamples=2000)
        >>> round(d.mean, 1), d.low < -0.8 and d.high < 0, d.p < 0.001, d.method, d.images
        (-1.0, True, True, 'bootstrap', 100)
    """
    da = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    if np.ndim(a) != 2 or np.shape(a) != np.shape(b) or da.shape[1] < 2:
        raise ValueError(f"per-image losses must be two (units, images) arrays of one shape with >= 2 images, "
                         f"got {np.shape(a)} and {np.shape(b)}")
    units, images = da.shape
    observed = float(da.mean())
    rng = np.random.default_rng(seed)
    draws = np.empty(resamples, dtype=np.float64)
    block = max(1, 2_000_000 // max(images, 1))  # resamples per block: about 16 MB of image weights
    for start in range(0, resamples, block):
        size = min(block, resamples - start)
        unit_w = rng.multinomial(units, np.full(units, 1.0 / units), size=size) if units > 1 else \
            np.ones((size, 1), dtype=np.int64)
        image_w = rng.multinomial(images, np.full(images, 1.0 / images), size=size)
        draws[start:start + size] = np.einsum("bs,si,bi->b", unit_w, da, image_w) / (units * images)
    tail = (1.0 - level) / 2
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    p = (1.0 + np.count_nonzero(np.abs(draws - observed) >= abs(observed))) / (resamples + 1.0)
    per_unit = da.mean(1)
    return Difference(mean=observed, low=float(low), high=float(high), p=float(min(1.0, p)), n=units,
                      images=images, method=BOOTSTRAP, sd=float(per_unit.std(ddof=1)) if units > 1 else math.nan)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given): the k-th smallest p times (m - k + 1), made
    monotone and capped at 1. A comparison holds at family-wise level alpha when its adjusted p < alpha.

    Examples:
        >>> holm([0.01, 0.04, 0.03, 0.20])  # 0.04 passes alone but not as one of four
        [0.04, 0.09, 0.09, 0.2]
        >>> holm([])
        []
    """
    p = np.asarray(pvalues, dtype=np.float64)
    m = p.size
    if m == 0:
        return []
    if np.isnan(p).any():
        raise ValueError("holm: a p-value is nan; leave comparisons without a test out of the family")
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate(p[order] * (m - np.arange(m)))
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return [round(float(v), 12) for v in adjusted]
