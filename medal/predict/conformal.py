"""Split-conformal intervals for bone age estimates, with widths that follow sex and estimated age.

For n calibration images with scores s_1..s_n, the interval of a new estimate y is [y - q, y + q] with q the k-th
smallest score, k = ceil((n + 1) * coverage). If the new image is exchangeable with the calibration images (same
distribution, e.g. an unseen image of the same data set), P(truth in interval) >= coverage, and
<= coverage + 1 / (n + 1) when scores have no ties (Vovk et al. 2005; Lei et al. 2018). This finite-sample rank
(the "+1") is what makes the guarantee exact; the plain empirical quantile under-covers for small n. When k > n
(fewer than coverage / (1 - coverage) images) no finite radius has the guarantee: the interval is infinite and
says so. The rank is computed here rather than by crepes' `ConformalRegressor`: crepes 0.9.1 takes index
`int((1 - c) * (n + 1)) - 1` in floating point, one rank too wide whenever (1 - c)(n + 1) is a whole number
(n = 9 at 90 % gives an infinite interval, n = 99 the 91st residual instead of the 90th), and it imports
scikit-learn without declaring it.

Three methods (`METHODS`; `export.conformal.method` sets a bundle's, `predict.interval` may choose another):

- `sex`: absolute residuals per sex where a sex has `min_cohort` calibration images, else pooled. The guarantee
  is marginal, and per sex where calibrated per sex.
- `mondrian_age` (Mondrian conformal, Vovk et al. 2005 ch. 4; Bostrom et al. 2020): per band of the *estimated*
  age (the bundle's band edges, quantiles of its training labels) within a sex; a band of a sex with fewer than
  `min_band` images uses that band over both sexes, then the sex, then everything, each fallback logged with its
  count. The guarantee then holds per band (and sex) that was calibrated on its own.
- `normalised` (Papadopoulos et al. 2008; Lei et al. 2018 sec. 5.2): scores |residual| / sigma(estimate), with
  sigma the bundle's difficulty curve (the mean absolute error of the regressors' *validation* predictions as a
  function of their estimate: fixed before calibration, so exchangeability holds), per sex as `sex`; the radius
  is q * sigma(estimate). The ensemble's spread is not the difficulty: a bundle of one regressor has none.

An estimate for an unknown sex (the mean of the estimates as a boy and as a girl) has errors of its own: it is
calibrated on the residuals of that same averaged estimate over every calibration image (`unknown`).

Two sources of scores (`export.conformal.source`, `SOURCES`):

- `calibration`: the residuals of the bundle's ensemble on the calibration split (or a hospital's cases), which no
  model saw: split conformal as above, the interval centred on the estimate.
- `cv_plus` (a bundle of the K fold models of a k-fold cross-validation): CV+ (Barber, Candes, Ramdas & Tibshirani
  2021, "Predictive inference with the jackknife+", sec. 3). Every image of the folded pool is a case, scored with
  the model of its own fold, which never saw it (its out-of-fold residual R_i). For a new image with fold k's
  estimate mu_k, the interval is [the floor(alpha (n+1))-th smallest of mu_k(i) - R_i, the ceil((1-alpha)(n+1))-th
  smallest of mu_k(i) + R_i] over the cases i of its group (`cv_plus_bounds`): the fold models' own spread on the
  new image widens it. Barber et al. prove coverage >= 1 - 2 alpha - sqrt(2/n)-order terms for K-fold CV+, and
  find about 1 - alpha in practice; the groups of `sex` and `mondrian_age` restrict the cases as above, and
  `normalised` scales each R_i by sigma. The interval is widened to hold the ensemble's estimate when it would
  not (only ever wider). It uses every folded image, where split conformal has the calibration split's few; the
  calibration split, which no fold model saw, then checks it (export records the coverage there).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from medal.errors import MedalError

#: The layout of `calibration.json` this medal writes for split-conformal tables (1: residuals per sex on the
#: validation split, no longer read), and for CV+ tables (3: schema 2 with each case's fold and each regressor's).
SCHEMA = 2
CV_PLUS_SCHEMA = 3
SOURCES = ("calibration", "cv_plus")


def conformal_radius(residuals: Sequence[float] | np.ndarray, coverage: float) -> float:
    """Half-width q of the split-conformal interval at `coverage` from absolute calibration residuals.

    Args:
        residuals: (n,) absolute residuals |estimate - truth| (months) of the calibration images.
        coverage: nominal coverage in (0, 1).

    Returns:
        The ceil((n + 1) * coverage)-th smallest residual, or `inf` when that rank exceeds n.

    Raises:
        MedalError: coverage outside (0, 1), or a negative or non-finite residual.

    Examples:
        >>> conformal_radius([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0], 0.9)  # k = ceil(10 * 0.9) = 9
        9.0
        >>> conformal_radius(np.arange(1.0, 20.0), 0.9)  # n = 19: k = 18
        18.0
        >>> conformal_radius([1.0, 2.0, 3.0], 0.9)  # too few images for 90%
        inf
    """
    if not 0.0 < coverage < 1.0:
        raise MedalError(f"predict.coverage={coverage}: must be in (0, 1), e.g. 0.9")
    values = np.sort(np.asarray(residuals, dtype=np.float64))
    if values.size and (not np.all(np.isfinite(values)) or values[0] < 0):
        raise MedalError("conformal residuals must be finite absolute errors (>= 0)")
    k = math.ceil((values.size + 1) * coverage - 1e-9)  # guard against 0.9 * 10 = 9.000000000000002
    return float(values[k - 1]) if 1 <= k <= values.size else math.inf


def cv_plus_bounds(centres: np.ndarray, scores: np.ndarray, scale: float, coverage: float) -> tuple[float, float]:
    """The CV+ interval (Barber et al. 2021) from each case's fold model's estimate of the new image and the case's
    out-of-fold score.

    Args:
        centres: (n,) months, mu_{k(i)}(x): the new image as estimated by the model of case i's fold.
        scores: (n,) case i's out-of-fold score (|residual|, or |residual| / sigma for normalised conformal).
        scale: what a score is in months at this image (1, or sigma(estimate) for normalised).
        coverage: nominal coverage 1 - alpha in (0, 1).

    Returns:
        (low, high): the k-th largest of centres - scale * scores and the k-th smallest of centres + scale * scores,
        k = ceil((n + 1) * coverage); infinite where k > n.

    Examples:
        >>> scores = np.arange(1.0, 10.0)  # 9 cases; at 90% k = 9: the extremes
        >>> cv_plus_bounds(np.full(9, 100.0), scores, 1.0, 0.9)  # fold models agree: split conformal's 100 -+ 9
        (91.0, 109.0)
        >>> cv_plus_bounds(np.array([96.0, 104.0] * 4 + [96.0]), scores, 1.0, 0.9)  # they disagree: wider
        (87.0, 112.0)
        >>> cv_plus_bounds(np.full(3, 100.0), np.ones(3), 1.0, 0.9)
        (-inf, inf)
    """
    centres, scores = np.asarray(centres, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    if centres.shape != scores.shape:
        raise MedalError(f"CV+: {centres.size} fold estimates for {scores.size} scores")
    if not centres.size:
        return -math.inf, math.inf
    upper = conformal_radius(centres + scale * scores - centres.min(), coverage) + centres.min()
    lower = centres.max() - conformal_radius(centres.max() - (centres - scale * scores), coverage)
    return float(lower), float(upper)


def empirical_coverage(estimate: np.ndarray, low: np.ndarray, high: np.ndarray, truth: np.ndarray) -> float:
    """Share of images whose truth lies in [low, high] (NaN rows ignored).

    Examples:
        >>> empirical_coverage(np.zeros(4), np.array([-1, -1, -1, -1.0]), np.array([1, 1, 1, 1.0]),
        ...                    np.array([0.5, -2.0, 0.0, np.nan]))
        0.6666666666666666
    """
    truth = np.asarray(truth, dtype=np.float64)
    keep = np.isfinite(truth) & np.isfinite(np.asarray(estimate, dtype=np.float64))
    if not keep.any():
        return float("nan")
    inside = (np.asarray(low)[keep] <= truth[keep]) & (truth[keep] <= np.asarray(high)[keep])
    return float(inside.mean())


METHODS = ("sex", "mondrian_age", "normalised")
GROUPS = ("male", "female", "unknown", "all")


@dataclass(frozen=True)
class ConformalOptions:
    """`export.conformal`: how a bundle's intervals are calibrated (conf/export.yaml holds the values)."""

    source: str = "calibration"  # calibration (split conformal) | cv_plus (the out-of-fold residuals of k-fold runs)
    method: str = "mondrian_age"
    min_cohort: int = 50  # a sex is calibrated on its own residuals from this many images
    min_band: int = 30  # an age band (of a sex) is calibrated on its own from this many images
    bands: int = 5  # age bands of mondrian_age: quantiles of the training labels

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise MedalError(f"export.conformal.source={self.source!r}: choose one of {', '.join(SOURCES)}")
        if self.method not in METHODS:
            raise MedalError(f"export.conformal.method={self.method!r}: choose one of {', '.join(METHODS)}")
        if self.min_cohort < 1 or self.min_band < 1 or self.bands < 1:
            raise MedalError(f"export.conformal: min_cohort={self.min_cohort}, min_band={self.min_band}, "
                             f"bands={self.bands}: each must be >= 1")


def band_edges(ages: Sequence[float] | np.ndarray, bands: int) -> list[float]:
    """The `bands - 1` inner edges (months) that cut `ages` into `bands` bands of equal counts (quantiles).

    Examples:
        >>> [round(e, 6) for e in band_edges(np.arange(0.0, 101.0), 5)]
        [20.0, 40.0, 60.0, 80.0]
    """
    if bands < 1:
        raise MedalError(f"export.conformal.bands={bands}: must be >= 1")
    values = np.asarray(ages, dtype=np.float64)
    if not values.size:
        raise MedalError("conformal age bands: no ages to place the band edges by")
    return [float(v) for v in np.quantile(values, np.linspace(0, 1, bands + 1)[1:-1])]


def band_of(estimate: np.ndarray | float, edges: Sequence[float]) -> np.ndarray:
    """Band index (0..len(edges)) of each estimate; an estimate on an edge belongs to the band above it.

    Examples:
        >>> band_of(np.array([5.0, 20.0, 99.0]), [20.0, 40.0, 60.0, 80.0]).tolist()
        [0, 1, 4]
    """
    return np.searchsorted(np.asarray(edges, dtype=np.float64), np.asarray(estimate, dtype=np.float64), side="right")


def band_label(band: int, edges: Sequence[float]) -> str:
    """A band as people read it: 'estimate < 20 mo', 'estimate 20-40 mo', 'estimate >= 80 mo'.

    Examples:
        >>> [band_label(b, [20.0, 40.0]) for b in range(3)]
        ['estimate < 20 mo', 'estimate 20-40 mo', 'estimate >= 40 mo']
    """
    if not edges:
        return "every estimate"
    if band == 0:
        return f"estimate < {edges[0]:.0f} mo"
    if band == len(edges):
        return f"estimate >= {edges[-1]:.0f} mo"
    return f"estimate {edges[band - 1]:.0f}-{edges[band]:.0f} mo"


def difficulty_curve(estimate: np.ndarray, truth: np.ndarray, bins: int = 8, floor: float = 0.25) -> dict[str, list]:
    """sigma(estimate) for normalised conformal: the mean absolute error per quantile bin of the estimate, at each
    bin's median estimate (interpolated between them, constant beyond), floored at `floor` x the overall mean
    absolute error so that no score is divided by almost nothing. At least 10 images per bin.

    Args:
        estimate, truth: (n,) months, of images that did not calibrate (the regressors' validation images).

    Examples:
        >>> est = np.arange(0.0, 200.0)
        >>> curve = difficulty_curve(est, est + np.where(est < 100, 2.0, 8.0), bins=2)
        >>> curve["ages"], curve["scale"]
        ([49.5, 149.5], [2.0, 8.0])
    """
    estimate, truth = np.asarray(estimate, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    keep = np.isfinite(estimate) & np.isfinite(truth)
    estimate, error = estimate[keep], np.abs(estimate[keep] - truth[keep])
    if not estimate.size:
        raise MedalError("normalised conformal: no validation predictions to measure the difficulty on")
    bins = max(1, min(bins, estimate.size // 10))
    order = np.argsort(estimate, kind="stable")
    parts = np.array_split(order, bins)
    lowest = floor * float(error.mean())
    ages = [float(np.median(estimate[p])) for p in parts]
    scale = [max(float(error[p].mean()), lowest) for p in parts]
    return {"ages": ages, "scale": scale}


def sigma(estimate: np.ndarray | float, curve: Mapping[str, Sequence[float]]) -> np.ndarray:
    """The difficulty curve at each estimate (linear between its points, constant beyond).

    Examples:
        >>> sigma(np.array([0.0, 99.5, 300.0]), {"ages": [49.5, 149.5], "scale": [2.0, 8.0]}).tolist()
        [2.0, 5.0, 8.0]
    """
    return np.interp(np.asarray(estimate, dtype=np.float64), curve["ages"], curve["scale"])


@dataclass(frozen=True)
class Pool:
    """The calibration scores one query is ranked against, and what to call them."""

    label: str
    scores: np.ndarray  # sorted
    folds: np.ndarray | None = None  # CV+: the fold of each score's case (aligned with `scores`)


class IntervalTable:
    """Intervals of one method from one calibration set (one TTA mode), for any number of estimates.

    Args:
        male: (n,) 1.0 / 0.0 of the calibration images.
        reference: (n,) their reference bone ages (months).
        known: (n,) the ensemble's estimate given each image's sex.
        unknown: (n,) the estimate averaged over both sexes (bundles whose models take the sex), or None.
        method: one of `METHODS`.
        edges: inner band edges (months) for `mondrian_age`.
        curve: the difficulty curve for `normalised`.
        min_cohort: images a sex needs to be calibrated on its own.
        min_band: images a band (of a sex) needs to be calibrated on its own.
        case_folds: (n,) CV+ only: the fold of each case, whose models' out-of-fold estimate `known`/`unknown` hold.
        regressor_folds: (R,) CV+ only: the fold each regressor of the bundle was trained without.

    `notes` lists every fallback to a coarser group with its count (logged by whoever builds the table).

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> ref = rng.uniform(0, 200, 400)
        >>> est = ref + rng.normal(0, 1 + ref / 20)  # errors grow with age
        >>> table = IntervalTable(np.zeros(400), ref, est, None, "mondrian_age", [100.0], None, 50, 50)
        >>> radius, labels = table.radius(np.array([20.0, 180.0]), np.array(["female", "female"]), 0.9)
        >>> bool(radius[0] < radius[1]), labels
        (True, ['female, estimate < 100 mo', 'female, estimate >= 100 mo'])
    """

    def __init__(self, male: np.ndarray, reference: np.ndarray, known: np.ndarray, unknown: np.ndarray | None,
                 method: str, edges: Sequence[float] | None, curve: Mapping[str, Sequence[float]] | None,
                 min_cohort: int, min_band: int, case_folds: np.ndarray | None = None,
                 regressor_folds: Sequence[int] | None = None) -> None:
        if method not in METHODS:
            raise MedalError(f"conformal method {method!r}: choose one of {', '.join(METHODS)}")
        if method == "mondrian_age" and edges is None:
            raise MedalError("mondrian_age conformal needs the bundle's age band edges; re-export the bundle")
        if method == "normalised" and curve is None:
            raise MedalError("normalised conformal needs the bundle's difficulty curve; re-export the bundle")
        self.method, self.edges, self.curve = method, list(edges or []), curve
        self.min_cohort, self.min_band = int(min_cohort), int(min_band)
        male = np.asarray(male, dtype=np.float64)
        reference = np.asarray(reference, dtype=np.float64)
        self._sex = {"male": male >= 0.5, "female": male < 0.5, "all": np.ones(male.size, dtype=bool)}
        self._estimate = {"known": np.asarray(known, dtype=np.float64)}
        if unknown is not None:
            self._estimate["unknown"] = np.asarray(unknown, dtype=np.float64)
        self._score = {}
        for kind, est in self._estimate.items():
            error = np.abs(est - reference)
            self._score[kind] = error / sigma(est, curve) if method == "normalised" else error
        self.case_folds = None if case_folds is None else np.asarray(case_folds, dtype=int)
        self.regressor_folds = None if regressor_folds is None else [int(f) for f in regressor_folds]
        if (self.case_folds is None) != (self.regressor_folds is None):
            raise MedalError("CV+ calibration: needs the fold of every case and of every regressor; re-export")
        if self.case_folds is not None and self.case_folds.shape != male.shape:
            raise MedalError(f"CV+ calibration: {self.case_folds.size} case folds for {male.size} cases; re-export")
        self._pools: dict[tuple[str, int], Pool] = {}
        self.notes: list[str] = []

    def _scores(self, label: str, kind: str, members: np.ndarray) -> Pool:
        values = self._score[kind][members]
        keep = np.isfinite(values)
        order = np.argsort(values[keep], kind="stable")
        folds = None if self.case_folds is None else self.case_folds[members][keep][order]
        return Pool(label, values[keep][order], folds)

    def _sex_pool(self, group: str) -> Pool:
        """`sex` method's pool of a group: its own residuals where it has `min_cohort`, else everyone's."""
        if group == "unknown":
            return self._scores("unknown", "unknown", self._sex["all"])
        if group != "all":
            own = self._scores(group, "known", self._sex[group])
            if own.scores.size >= self.min_cohort:
                return own
            self.notes.append(f"{group}: {own.scores.size} calibration images (< min_cohort {self.min_cohort}): "
                              "calibrated with both sexes")
        return self._scores("all", "known", self._sex["all"])

    def _band_pool(self, group: str, band: int) -> Pool:
        """`mondrian_age`'s pool: the band within the group, else the band over both sexes, else the group's."""
        kind = "unknown" if group == "unknown" else "known"
        in_band = band_of(self._estimate[kind], self.edges) == band
        where = band_label(band, self.edges)
        sexes = self._sex["all"] if group in ("unknown", "all") else self._sex[group]
        own = self._scores(f"{group}, {where}", kind, sexes & in_band)
        if own.scores.size >= self.min_band:
            return own
        reason = f"{group}, {where}: {own.scores.size} calibration images (< min_band {self.min_band})"
        if group in ("male", "female"):
            both = self._scores(f"both sexes, {where}", kind, in_band)
            if both.scores.size >= self.min_band:
                self.notes.append(f"{reason}: calibrated with both sexes in that band ({both.scores.size})")
                return both
        fallback = self._sex_pool(group)
        self.notes.append(f"{reason}: calibrated on {fallback.label} ({fallback.scores.size}), every age")
        return fallback

    def pool(self, group: str, estimate: float) -> Pool:
        """The scores an estimate of `group` (one of `GROUPS`) is ranked against."""
        if group not in GROUPS:
            raise MedalError(f"conformal group {group!r}: one of {', '.join(GROUPS)}")
        if group == "unknown" and "unknown" not in self._estimate:
            raise MedalError("this calibration has no averaged-sex residuals (the bundle's models do not take the "
                             "sex); an unknown sex is calibrated as `all`")
        band = int(band_of(estimate, self.edges)) if self.method == "mondrian_age" else -1
        key = (group, band)
        if key not in self._pools:
            self._pools[key] = self._band_pool(group, band) if band >= 0 else self._sex_pool(group)
        return self._pools[key]

    def survey(self) -> list[str]:
        """Every fallback this table makes, for every group and band (each said once): what export logs."""
        groups = ["male", "female", "all"] + (["unknown"] if "unknown" in self._estimate else [])
        bands = range(len(self.edges) + 1) if self.method == "mondrian_age" else [-1]
        for group in groups:
            for band in bands:
                if (group, band) not in self._pools:
                    self._pools[(group, band)] = (self._band_pool(group, band) if band >= 0
                                                  else self._sex_pool(group))
        return list(dict.fromkeys(self.notes))

    def radius(self, estimate: np.ndarray, group: np.ndarray, coverage: float) -> tuple[np.ndarray, list[str]]:
        """Half-widths (months) of the intervals at `coverage` of (m,) estimates of (m,) groups, and the label
        of the calibration group each was ranked in (what predictions.csv's `calibration` column shows)."""
        estimate = np.asarray(estimate, dtype=np.float64)
        radius, labels = np.empty(estimate.size), []
        for j, (value, who) in enumerate(zip(estimate, group, strict=True)):
            chosen = self.pool(str(who), float(value))
            radius[j] = conformal_radius(chosen.scores, coverage)
            labels.append(chosen.label)
        if self.method == "normalised":
            radius = radius * sigma(estimate, self.curve)
        return radius, labels

    def bounds(self, estimate: float, group: str, coverage: float,
               fold_estimates: np.ndarray | None = None) -> tuple[float, float, str]:
        """(low, high, calibration group) of one estimate at `coverage`: split conformal's estimate -+ radius, or,
        for a CV+ table, `cv_plus_bounds` from `fold_estimates` ((K,) months: the image as each fold's models
        estimate it), widened to hold `estimate` where it would not."""
        if self.case_folds is None:
            radius, labels = self.radius(np.array([estimate]), np.array([group]), coverage)
            return estimate - float(radius[0]), estimate + float(radius[0]), labels[0]
        if fold_estimates is None:
            raise MedalError("a CV+ calibration needs each fold's estimate of the image (the regressors' folds)")
        chosen = self.pool(group, estimate)
        scale = float(sigma(estimate, self.curve)) if self.method == "normalised" else 1.0
        centres = np.asarray(fold_estimates, dtype=np.float64)[chosen.folds]
        low, high = cv_plus_bounds(centres, chosen.scores, scale, coverage)
        return min(low, estimate), max(high, estimate), chosen.label


def interval_table(calibration: Mapping, tta: str, method: str | None = None) -> IntervalTable:
    """The `IntervalTable` of a bundle's calibration (`calibration.json`, schema 2 or, CV+, 3) for one TTA mode, by
    the bundle's own method unless `method` names another."""
    schema = calibration.get("schema")
    if isinstance(schema, int) and schema > CV_PLUS_SCHEMA:
        raise MedalError(f"calibration.json: schema {schema} is newer than this medal reads ({SCHEMA} and "
                         f"{CV_PLUS_SCHEMA}); upgrade medal")
    if schema not in (SCHEMA, CV_PLUS_SCHEMA):
        raise MedalError("calibration.json: calibrated by an older medal on the validation split, whose images chose "
                         "the checkpoint (its intervals are too narrow); re-export the bundle from runs with a "
                         "calibration split, or run `medal recalibrate bundle=<bundle> cases=<labelled cases>`")
    cases, settings = calibration["cases"], calibration["settings"]
    unknown = cases["unknown"][tta] if cases["unknown"] is not None else None
    cv_plus = schema == CV_PLUS_SCHEMA
    return IntervalTable(np.array(cases["male"], dtype=np.float64), np.array(cases["reference"], dtype=np.float64),
                         np.array(cases["known"][tta], dtype=np.float64),
                         None if unknown is None else np.array(unknown, dtype=np.float64),
                         method or settings["method"], settings["edges"], settings["difficulty"],
                         int(settings["min_cohort"]), int(settings["min_band"]),
                         case_folds=np.array(cases["fold"], dtype=int) if cv_plus else None,
                         regressor_folds=calibration["regressor_folds"] if cv_plus else None)
