"""Geometry of a left hand (PA view) at a given maturity: bones and soft tissue as simple 3-D solids.

Coordinates are millimetres of an adult male hand: origin at the distal radius growth plate, +y
towards the fingertips, +x towards the thumb (which is on the image's right in a PA view of a left
hand). Long bones are tapered rods with a cortical shell, carpals/epiphyses/sesamoid are wobbly
ellipsoids, soft tissue is a union of capsules. `build_hand` scales everything by the growth curve
and places each epiphysis according to its maturity state (absent, widening, capping, fused).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medal.data.phantom.anatomy import (
    CARPALS,
    FINGERS,
    CentreState,
    Individual,
    describe,
    growth_fraction,
)


@dataclass
class Rod:
    """A long bone's shaft from p0 to p1 with radii at both ends and mid-shaft (mm)."""

    p0: np.ndarray
    p1: np.ndarray
    r0: float
    r1: float
    rmid: float
    cap0: float = 0.4  # axial length of the rounded end, as a fraction of the end radius
    cap1: float = 0.4
    flat: float = 1.0  # depth / width of the cross-section (the distal radius is flattened)


@dataclass
class Blob:
    """An ellipsoidal bone: centre, semi-major axis vector, semi-minor length, shape wobble."""

    centre: np.ndarray
    axis: np.ndarray
    minor: float
    wobble: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # amp2, phase2, amp3, phase3
    taper: float = 0.0  # > 0: thicker towards the tip of `axis` (a wedge, like the distal radial epiphysis)
    kind: str = "round"  # "round" (a carpal or the sesamoid) or "epiphysis": the class in the bone label map


@dataclass
class Capsule:
    """A soft-tissue cylinder with rounded ends from p0 to p1."""

    p0: np.ndarray
    p1: np.ndarray
    radius: float
    flat: float = 1.0  # depth / width of the cross-section


@dataclass
class HandGeometry:
    """Everything the renderer draws, plus the overall size (for framing the hand in the image)."""

    rods: list[Rod] = field(default_factory=list)
    blobs: list[Blob] = field(default_factory=list)
    tissue: list[Capsule] = field(default_factory=list)
    extent: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # x0, x1, y0, y1 (mm)


# Adult carpal bones: centre (x, y), semi-axes (a, b), long-axis angle (degrees from +x).
CARPAL_LAYOUT = {
    "scaphoid": ((15.5, 14.0), (10.0, 5.4), 60.0),
    "lunate": ((2.0, 13.5), (6.6, 6.2), 90.0),
    "triquetrum": ((-11.0, 16.0), (6.2, 4.9), 35.0),
    "pisiform": ((-13.5, 13.5), (4.4, 4.0), 0.0),
    "trapezium": ((24.0, 29.0), (7.0, 5.8), 35.0),
    "trapezoid": ((14.5, 32.0), (5.7, 4.9), 90.0),
    "capitate": ((3.5, 30.5), (9.6, 5.8), 90.0),
    "hamate": ((-8.5, 29.5), (8.8, 6.0), 80.0),
}
# Metacarpal base (x, y), direction (degrees from +y towards the thumb), length, radii base/mid/head.
MC_LAYOUT = {
    1: ((27.0, 37.0), 30.0, 44.0, (6.0, 4.2, 6.2)),
    2: ((16.0, 44.0), 8.0, 66.0, (5.8, 3.9, 5.8)),
    3: ((4.0, 45.0), 0.0, 64.0, (5.8, 3.9, 6.0)),
    4: ((-8.0, 44.0), -8.0, 57.0, (5.0, 3.4, 5.4)),
    5: ((-19.0, 42.0), -16.0, 53.0, (5.2, 3.4, 5.4)),
}
PHALANX_LENGTHS = {  # finger -> (proximal, middle, distal) in mm; the thumb has no middle phalanx
    1: (31.0, 0.0, 23.0),
    2: (40.0, 24.0, 17.0),
    3: (45.0, 28.0, 19.0),
    4: (42.0, 26.0, 18.0),
    5: (33.0, 19.0, 16.0),
}
FINGER_SOFT_RADIUS = {1: 10.0, 2: 8.5, 3: 9.0, 4: 8.5, 5: 7.5}
JOINT_MM = 2.0  # articular cartilage between neighbouring bones
PHYSIS_MM = 1.6  # open growth plate between epiphysis and metaphysis


@dataclass(frozen=True)
class HandShape:
    """An individual's build, independent of maturity: proportions, finger spread, soft tissue."""

    length_scale: float = 1.0
    finger_spread: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)  # extra degrees per finger
    finger_length: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0)
    bone_width: float = 1.0
    soft_tissue: float = 1.0
    carpal_wobble: tuple[tuple[float, float, float, float], ...] = ((0.0, 0.0, 0.0, 0.0),) * len(CARPALS)

    @classmethod
    def sample(cls, rng: np.random.Generator) -> HandShape:
        return cls(
            length_scale=float(rng.normal(1.0, 0.05)),
            # Neighbouring fingers are ~10 degrees apart: keep the spread small enough that none cross.
            finger_spread=tuple(float(v) for v in np.clip(rng.normal(0.0, 2.5, size=5), -5.0, 5.0)),
            finger_length=tuple(float(v) for v in rng.normal(1.0, 0.03, size=5)),
            bone_width=float(rng.normal(1.0, 0.06)),
            soft_tissue=float(rng.normal(1.0, 0.08)),
            carpal_wobble=tuple(
                (
                    float(rng.uniform(0.02, 0.08)),
                    float(rng.uniform(0, 2 * np.pi)),
                    float(rng.uniform(0.0, 0.05)),
                    float(rng.uniform(0, 2 * np.pi)),
                )
                for _ in CARPALS
            ),
        )


def _unit(deg: float) -> np.ndarray:
    """Unit vector at `deg` degrees from +y, positive towards +x (the thumb)."""
    rad = np.deg2rad(deg)
    return np.array([np.sin(rad), np.cos(rad)])


def _perp(v: np.ndarray) -> np.ndarray:
    return np.array([-v[1], v[0]])


def _long_bone(
    geo: HandGeometry,
    base: np.ndarray,
    direction: np.ndarray,
    length: float,
    radii: tuple[float, float, float],
    epi: CentreState | None,
    epi_at_base: bool,
    head_cap: float = 1.0,
) -> np.ndarray:
    """Add a long bone (and its epiphysis, if ossified) from `base` along `direction`; return its tip.

    The epiphysis takes a slot at one end (9% of a phalanx, 15% of a metacarpal head); before it
    ossifies that slot is cartilage and shows as soft tissue only. The growth plate between epiphysis
    and shaft narrows to nothing at fusion, where the two overlap slightly (the faint physeal scar).
    """
    tip = base + direction * length
    r_base, r_mid, r_head = radii
    if epi is None:
        geo.rods.append(Rod(base, tip, r_base, r_head, r_mid, cap0=0.5, cap1=head_cap))
        return tip
    epi_len = 0.09 * length if epi_at_base else 0.15 * length
    gap = PHYSIS_MM * (0.5 + 0.5 * length / 40.0) * (epi.gap if epi.present else 1.0)
    if epi_at_base:
        shaft0, shaft1 = base + direction * (epi_len + gap), tip
        r0, r1, cap0, cap1 = r_base * 0.92, r_head, 0.25, head_cap
        epi_end, r_meta = base, r0
    else:
        shaft0, shaft1 = base, tip - direction * (epi_len + gap)
        r0, r1, cap0, cap1 = r_base, r_head * 0.9, 0.5, 0.25
        epi_end, r_meta = tip, r1
    geo.rods.append(Rod(shaft0, shaft1, r0, r1, r_mid, cap0=cap0, cap1=cap1))
    if epi.present:
        half_len = 0.5 * epi_len * (0.5 + 0.5 * epi.size)
        towards_shaft = direction if epi_at_base else -direction
        # The epiphysis grows from the joint side; fused ones touch (and slightly overlap) the shaft.
        shaft_face = epi_end + towards_shaft * (epi_len - 0.3 * (1 - epi.gap))
        centre = shaft_face - towards_shaft * half_len
        geo.blobs.append(Blob(centre, _perp(direction) * r_meta * epi.width_ratio, half_len, kind="epiphysis"))
    return tip


def build_hand(individual: Individual, boneage: float, shape: HandShape | None = None) -> HandGeometry:
    """The hand of `individual` at bone-age label `boneage` (months), in millimetres."""
    shape = shape or HandShape()
    states = describe(individual, boneage)
    age = boneage + individual.maturity_offset
    growth = growth_fraction(age, individual.male)
    scale = growth * shape.length_scale * (1.0 if individual.male else 0.93)
    slender = 0.82 + 0.18 * (growth - 0.33) / 0.67  # young bones are thin for their length
    width = scale * shape.bone_width * slender
    chubby = 1.0 + 0.3 * (1.0 - (growth - 0.33) / 0.67)  # infants' soft tissue is thick
    soft = scale * shape.soft_tissue * chubby
    geo = HandGeometry()

    def pt(x: float, y: float) -> np.ndarray:
        return np.array([x, y]) * scale

    # Forearm: radius and ulna shafts run off the bottom of the image.
    radius_axis, ulna_axis = 10.0, -16.0
    for axis_x, r_shaft, r_distal, epi_name, half_w, half_h, tilt, taper in (
        (radius_axis, 6.5, 12.0, "radius_epi", 11.5, 3.6, 14.0, 0.5),
        (ulna_axis, 5.0, 6.5, "ulna_epi", 6.0, 3.0, 0.0, 0.0),
    ):
        st = states[epi_name]
        top = -1.0 if epi_name == "radius_epi" else -5.0
        gap = PHYSIS_MM * 1.3 * (st.gap if st.present else 1.0)
        geo.rods.append(
            Rod(
                pt(axis_x, -160),
                pt(axis_x, top) - np.array([0, gap]),
                r_shaft * width,
                r_distal * width,
                r_shaft * width,
                cap0=0.5,
                cap1=0.2,
                flat=0.7,
            )
        )
        if st.present:
            hw = half_w * width * st.width_ratio
            hh = half_h * scale * (0.45 + 0.55 * st.size)
            centre = pt(axis_x, top) + np.array([0.0, hh - 0.3 * (1 - st.gap)])
            # The radial epiphysis starts as an oval and becomes a wedge, thick on the thumb side.
            geo.blobs.append(Blob(centre, _unit(90 - tilt) * hw, hh, taper=taper * st.size, kind="epiphysis"))

    for i, name in enumerate(CARPALS):
        st = states[name]
        if not st.present:
            continue
        (cx, cy), (a, b), angle = CARPAL_LAYOUT[name]
        size = st.size * width  # carpals grow with both maturity and the hand
        geo.blobs.append(Blob(pt(cx, cy), _unit(90 - angle) * a * size, b * size, shape.carpal_wobble[i]))

    tips = {}
    for f in FINGERS:
        (bx, by), angle, mc_len, radii = MC_LAYOUT[f]
        angle += shape.finger_spread[f - 1] * 0.3
        d = _unit(angle)
        flen = shape.finger_length[f - 1]
        r = tuple(v * width for v in radii)
        mc_tip = _long_bone(
            geo, pt(bx, by), d, mc_len * scale * flen, r, states[f"mc{f}_epi"], epi_at_base=(f == 1)
        )
        # Fingers continue the metacarpal's line, fanning out a little more.
        d = _unit(angle * (1.25 if f == 1 else 1.2) + shape.finger_spread[f - 1])
        start = mc_tip + d * JOINT_MM * scale
        pp, mp, dp = PHALANX_LENGTHS[f]
        rows = [("pp", pp, (5.2, 3.6, 4.3)), ("mp", mp, (4.4, 3.0, 3.6)), ("dp", dp, (3.9, 2.4, 3.1))]
        for row, length, prad in rows:
            if length == 0:
                continue
            factor = 1.12 if f == 1 else 1.0 if f != 5 else 0.88
            r = tuple(v * width * factor for v in prad)
            cap = 0.7 if row == "dp" else 0.6
            end = _long_bone(
                geo,
                start,
                d,
                length * scale * flen,
                r,
                states[f"{row}{f}_epi"],
                epi_at_base=True,
                head_cap=cap,
            )
            start = end + d * JOINT_MM * scale
        tips[f] = start + d * 2.5 * scale
        geo.tissue.append(
            Capsule(
                pt(bx, by) + d * 10 * scale,
                tips[f] - d * FINGER_SOFT_RADIUS[f] * soft * 0.6,
                FINGER_SOFT_RADIUS[f] * soft,
            )
        )
        if f > 1:
            geo.tissue.append(Capsule(pt(bx, by), mc_tip, 13.0 * soft))
        else:
            geo.tissue.append(Capsule(pt(14, 26), mc_tip - d * 4 * scale, 14.0 * soft))

    st = states["sesamoid"]
    if st.present:
        (bx, by), angle, mc_len, _ = MC_LAYOUT[1]
        head = pt(bx, by) + _unit(angle) * (mc_len * scale * shape.finger_length[0])
        centre = head + _unit(angle - 90) * 3.5 * scale
        geo.blobs.append(Blob(centre, _unit(angle) * 3.0 * scale * st.size, 2.4 * scale * st.size))

    geo.tissue.append(Capsule(pt(-3, 15), pt(-3, -240), 28.0 * soft, flat=0.55))  # wrist and forearm
    geo.tissue.append(Capsule(pt(0, 32), pt(-2, 56), 32.0 * soft, flat=0.6))  # palm
    # Young children are X-rayed with more forearm in the field, so their hands look smaller.
    forearm = 45.0 + 60.0 * (1.0 - (growth - 0.33) / 0.67)
    geo.extent = (-50 * scale, 62 * scale, -forearm * scale, max(t[1] for t in tips.values()))
    return geo
