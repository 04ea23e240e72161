"""Skeletal maturity model: when each ossification centre appears, widens, caps and fuses.

Timings follow the sex-specific table in DOMAIN.md (girls about 1-2 years ahead). Each individual
draws its own per-centre deviation from the population timing, so the anatomy carries its bone age
with realistic spread: learnable, but not exactly. Ages are months of skeletal maturity.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

CARPALS = ("capitate", "hamate", "triquetrum", "lunate", "scaphoid", "trapezium", "trapezoid", "pisiform")
FINGERS = (1, 2, 3, 4, 5)  # 1 = thumb ... 5 = little finger
# Hand rows in order of epiphysis appearance: proximal phalanx, metacarpal, middle, distal.
ROWS = ("pp", "mc", "mp", "dp")
# Order in which fingers' epiphyses appear: middle finger first, fifth last.
FINGER_RANK = {3: 0, 2: 1, 4: 2, 1: 3, 5: 4}
# Fusion of hand growth plates goes the other way round: distal first, middle phalanges last.
FUSE_ROW_RANK = {"dp": 0, "mc": 1, "pp": 2, "mp": 3}

# (girls, boys) appearance ages in months, from the DOMAIN.md table (midpoints of ranges).
CARPAL_APPEAR = {
    "capitate": (2.5, 3.5),
    "hamate": (3.0, 4.0),
    "triquetrum": (21.0, 30.0),
    "lunate": (33.0, 48.0),
    "scaphoid": (48.0, 69.0),
    "trapezium": (50.0, 70.0),
    "trapezoid": (52.0, 72.0),
    "pisiform": (111.0, 138.0),
}
SESAMOID_APPEAR = (120.0, 138.0)
HAND_EPI_APPEAR = ((10.0, 24.0), (14.0, 36.0))  # (girls range, boys range), ordered by row and finger
HAND_EPI_WIDEN = ((84.0, 120.0), (108.0, 132.0))
HAND_EPI_CAP_AFTER = (36.0, 36.0)  # months from widening to capping
HAND_EPI_FUSE = ((150.0, 180.0), (192.0, 210.0))
FOREARM = {  # centre: (appear, widen, cap, fuse), each (girls, boys)
    "radius_epi": ((12.0, 12.0), (96.0, 120.0), (132.0, 156.0), (192.0, 210.0)),
    "ulna_epi": ((54.0, 66.0), (108.0, 132.0), (144.0, 162.0), (186.0, 204.0)),
}
# Age at which carpal bones reach adult size (girls, boys).
CARPAL_MATURE = (170.0, 200.0)
FUSION_MONTHS = 15.0  # growth plate narrows to nothing over this many months before the fusion age
STAGES = ("absent", "appeared", "widened", "capped", "fused")
# Hand length as a fraction of adult length at these ages (boys; girls run on an age axis scaled by
# GIRLS_GROWTH_CLOCK, so they finish earlier). After the last knot nothing grows any more.
GROWTH_KNOTS = (0.0, 12.0, 36.0, 60.0, 96.0, 132.0, 168.0, 204.0, 240.0)
GROWTH_FRACTION = (0.33, 0.42, 0.52, 0.60, 0.70, 0.78, 0.90, 0.99, 1.0)
GIRLS_GROWTH_CLOCK = 0.88
# The bone-age label distribution (`sample_boneage`): a share drawn uniformly over the age range (the
# extremes), the rest from a normal with the RSNA training set's mean by sex and SD, clipped to the range.
LABEL_UNIFORM_SHARE = 0.25
LABEL_MEAN = (117.9, 135.3)  # (girls, boys), months
LABEL_SD = 41.2


def hand_epiphyses() -> list[str]:
    """Names of the hand's epiphyseal centres, e.g. `pp3_epi`; the thumb has no middle phalanx."""
    return [f"{row}{f}_epi" for row in ROWS for f in FINGERS if not (row == "mp" and f == 1)]


@dataclass(frozen=True)
class Timing:
    """When one centre appears, reaches shaft width, caps the shaft and fuses (months); inf = never."""

    appear: float
    widen: float = np.inf
    cap: float = np.inf
    fuse: float = np.inf


@dataclass(frozen=True)
class CentreState:
    """What an ossification centre looks like at one age: the structural facts the renderer draws.

    `size` is the fraction of adult size (0 when absent); `width_ratio` is epiphysis width over the
    metaphysis width (epiphyses only); `gap` is the growth-plate width as a fraction of its
    childhood width (1 = open, 0 = fused; epiphyses only).
    """

    present: bool
    stage: str
    size: float
    width_ratio: float = float("nan")
    gap: float = float("nan")


def _lerp(rng_: tuple[float, float], frac: float) -> float:
    return rng_[0] + (rng_[1] - rng_[0]) * frac


def population_timings(male: bool) -> dict[str, Timing]:
    """Population-average timing of every centre for one sex."""
    sex = int(male)
    timings: dict[str, Timing] = {c: Timing(CARPAL_APPEAR[c][sex]) for c in CARPALS}
    timings["sesamoid"] = Timing(SESAMOID_APPEAR[sex])
    for name, (appear, widen, cap, fuse) in FOREARM.items():
        timings[name] = Timing(appear[sex], widen[sex], cap[sex], fuse[sex])
    for name in hand_epiphyses():
        row, finger = name[:2], int(name[2])
        order = 0.7 * ROWS.index(row) / 3 + 0.3 * FINGER_RANK[finger] / 4
        widen = _lerp(HAND_EPI_WIDEN[sex], order)
        fuse_order = 0.75 * FUSE_ROW_RANK[row] / 3 + 0.25 * FINGER_RANK[finger] / 4
        timings[name] = Timing(
            appear=_lerp(HAND_EPI_APPEAR[sex], order),
            widen=widen,
            cap=widen + HAND_EPI_CAP_AFTER[sex],
            fuse=_lerp(HAND_EPI_FUSE[sex], fuse_order),
        )
    return timings


def growth_fraction(age: float, male: bool) -> float:
    """Hand length as a fraction of adult length: a smooth curve, girls finishing earlier."""
    scale = 1.0 if male else GIRLS_GROWTH_CLOCK
    return float(np.interp(age, np.array(GROWTH_KNOTS) * scale, GROWTH_FRACTION))


@dataclass(frozen=True)
class Individual:
    """One child: sex, and how its centres deviate from the population timing (in SDs).

    The same individual rendered at different ages shows one consistent maturation, which is what
    lets tests check that anatomy follows age. `maturity_offset` (months) is how far the anatomy as a
    whole is ahead of (positive) or behind the bone-age label.
    """

    male: bool
    maturity_offset: float = 0.0
    appear_z: dict[str, float] = field(default_factory=dict)
    late_z: dict[str, float] = field(default_factory=dict)
    timing_sd: float = 0.07  # relative SD of a centre's timing around the population value

    @classmethod
    def sample(
        cls, rng: np.random.Generator, male: bool, offset_sd: float = 4.0, timing_sd: float = 0.07
    ) -> Individual:
        names = list(population_timings(male))
        offset = float(np.clip(rng.normal(0.0, offset_sd), -3 * offset_sd, 3 * offset_sd))
        appear, late = np.clip(rng.normal(size=(2, len(names))), -2.5, 2.5).tolist()
        return cls(
            male=male,
            maturity_offset=offset,
            appear_z=dict(zip(names, appear, strict=True)),
            late_z=dict(zip(names, late, strict=True)),
            timing_sd=timing_sd,
        )

    def timings(self) -> dict[str, Timing]:
        """This individual's timing of every centre (population timing shifted by its deviations)."""
        out = {}
        for name, t in population_timings(self.male).items():
            za, zl = self.appear_z.get(name, 0.0), self.late_z.get(name, 0.0)
            appear = t.appear * (1 + self.timing_sd * za) + za
            widen = max(t.widen * (1 + self.timing_sd * zl), appear + 6)
            cap = max(t.cap * (1 + self.timing_sd * zl), widen + 6)
            fuse = max(t.fuse * (1 + 0.5 * self.timing_sd * zl), cap + 6)
            out[name] = Timing(appear, widen, cap, fuse)
        return out

    def plateau(self) -> float:
        """The maturity age (months, label + offset) from which this hand's anatomy no longer changes.

        The last of: growth (the growth curve's last knot), each epiphysis' fusion (its size and width are
        final once it caps, its growth plate closes at fusion) and each round bone reaching adult size. Two
        ages past the plateau render the same geometry, so no reader of the image can tell them apart; the
        noise floor (`medal.data.phantom.floor`) needs it.
        """
        growth_end = GROWTH_KNOTS[-1] * (1.0 if self.male else GIRLS_GROWTH_CLOCK)
        mature = CARPAL_MATURE[int(self.male)]
        ends = [growth_end]
        for name, t in self.timings().items():
            round_bone = name in CARPALS or name == "sesamoid"
            ends.append(t.appear + max(mature - t.appear, 12.0) if round_bone else t.fuse)
        return float(max(ends))


def describe(individual: Individual, boneage: float) -> dict[str, CentreState]:
    """State of every ossification centre of `individual` when its bone-age label is `boneage`."""
    age = boneage + individual.maturity_offset
    mature = CARPAL_MATURE[int(individual.male)]
    states: dict[str, CentreState] = {}
    for name, t in individual.timings().items():
        if age < t.appear:
            states[name] = CentreState(False, "absent", 0.0)
            continue
        if name in CARPALS or name == "sesamoid":
            grown = np.clip((age - t.appear) / max(mature - t.appear, 12.0), 0.0, 1.0)
            states[name] = CentreState(True, "appeared", float(0.15 + 0.85 * grown**0.7))
            continue
        if age < t.widen:
            width = 0.3 + 0.7 * (age - t.appear) / (t.widen - t.appear)
        elif age < t.cap:
            width = 1.0 + 0.08 * (age - t.widen) / (t.cap - t.widen)
        else:
            width = 1.08
        gap = float(np.clip((t.fuse - age) / FUSION_MONTHS, 0.0, 1.0))
        stage = STAGES[1 + sum(age >= when for when in (t.widen, t.cap, t.fuse))]
        size = float(np.clip(0.2 + 0.8 * (age - t.appear) / (t.cap - t.appear), 0.2, 1.0))
        states[name] = CentreState(True, stage, size, float(width), gap)
    return states


def sample_boneage(rng: np.random.Generator, male: bool, age_range: tuple[float, float]) -> float:
    """A bone-age label: mostly the RSNA-like distribution by sex, a quarter uniform to cover the extremes."""
    lo, hi = age_range
    if rng.random() < LABEL_UNIFORM_SHARE:
        return float(rng.uniform(lo, hi))
    return float(np.clip(rng.normal(LABEL_MEAN[int(male)], LABEL_SD), lo, hi))
