"""Rasterise a hand geometry into attenuation maps, the hand mask and the gold-standard image.

Each solid contributes its projected path length (mm) times a density, the way an X-ray integrates
attenuation: rods and blobs have a dense cortical shell around lighter trabecular bone, so bones show
bright edges and darker marrow like real radiographs. Everything is vectorised over the bounding
box of each solid; geometry is transformed to pixels before rasterising, so raw image, mask and
gold image are aligned by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from medal.data.phantom.anatomy import Individual
from medal.data.phantom.hand import Blob, HandGeometry, HandShape, Rod, build_hand

SOFT_DENSITY = 0.013  # attenuation per mm of soft tissue
BONE_DENSITY = 0.11  # attenuation per mm of cortical bone (trabecular bone is a fraction of it)
MASK_THICKNESS_MM = 0.5  # soft tissue thinner than this is background
GOLD_GAIN = 1.2  # the gold standard's fixed window: 1 - exp(-gain * mu), then gamma
GOLD_GAMMA = 0.8
TEXTURE_AMPLITUDE = 0.1  # relative SD of the bone grain
# Classes of the bone label map (`Layers.bones`); where solids overlap the higher class wins, so an
# epiphysis touching its shaft stays an epiphysis.
BONE_CLASSES = {"shaft": 1, "round": 2, "epiphysis": 3}  # long-bone shafts; carpals + sesamoid; epiphyses


@dataclass(frozen=True)
class Pose:
    """Where the hand lies in the image: rotation, size (fraction of the image) and shift."""

    angle_deg: float = 0.0
    fill: float = 0.85
    shift: tuple[float, float] = (0.0, 0.0)  # fractions of width, height


@dataclass
class Layers:
    """The noiseless picture of one hand: attenuation of bone and soft tissue, the hand mask and the bones.

    `bones` is a uint8 label map (0 = no bone, else a `BONE_CLASSES` value): exactly the pixels where a
    bone's projected path length is positive, so it is aligned with the raw image like the hand mask.
    """

    bone: np.ndarray
    soft: np.ndarray
    mask: np.ndarray
    bones: np.ndarray

    @property
    def attenuation(self) -> np.ndarray:
        return self.bone + self.soft


def gold_image(layers: Layers) -> np.ndarray:
    """The enhancer's target: a fixed, smooth window of the clean attenuation (background exactly 0)."""
    gold = (1.0 - np.exp(-GOLD_GAIN * layers.attenuation)) ** GOLD_GAMMA  # float32 throughout
    return np.where(layers.mask, gold, 0.0).astype(np.float32)


def _transform(
    geo: HandGeometry, pose: Pose, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """Matrix and offset taking hand millimetres (x right, y up) to pixels (col, row), and px per mm."""
    x0, x1, y0, y1 = geo.extent
    scale = pose.fill * min(height / (y1 - y0), width / (x1 - x0))
    rad = np.deg2rad(pose.angle_deg)
    rot = np.array([[np.cos(rad), -np.sin(rad)], [np.sin(rad), np.cos(rad)]])
    matrix = scale * rot @ np.diag([1.0, -1.0])  # image rows grow downwards
    centre_mm = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    centre_px = np.array([width * (0.5 + pose.shift[0]), height * (0.5 + pose.shift[1])])
    return matrix, centre_px - matrix @ centre_mm, scale


def _window(
    points: np.ndarray, pad: float, shape: tuple[int, int]
) -> tuple[slice, slice, np.ndarray, np.ndarray] | None:
    """Row/col slices of the canvas covering `points` +- pad, and the pixel coordinates inside them."""
    lo = np.floor(points.min(axis=0) - pad).astype(int)
    hi = np.ceil(points.max(axis=0) + pad).astype(int) + 1
    c0, r0 = max(lo[0], 0), max(lo[1], 0)
    c1, r1 = min(hi[0], shape[1]), min(hi[1], shape[0])
    if c0 >= c1 or r0 >= r1:
        return None
    cols = np.arange(c0, c1, dtype=np.float32)[None, :]
    rows = np.arange(r0, r1, dtype=np.float32)[:, None]
    return slice(r0, r1), slice(c0, c1), cols, rows


def _chord(q: np.ndarray, radius: np.ndarray | float) -> np.ndarray:
    """Path length through a round solid at normalised squared distance q from its axis."""
    return 2.0 * radius * np.sqrt(np.maximum(1.0 - q, 0.0))


def _label(labels: np.ndarray, rs: slice, cs: slice, inside: np.ndarray, value: int) -> None:
    """Mark the pixels `inside` a solid with class `value` (the higher class wins where solids overlap)."""
    window = labels[rs, cs]
    window[inside] = np.maximum(window[inside], value)


def _add_rod(
    canvas: np.ndarray, labels: np.ndarray, p0: np.ndarray, p1: np.ndarray, rod: Rod, scale: float
) -> None:
    r0, r1, rmid = float(rod.r0 * scale), float(rod.r1 * scale), float(rod.rmid * scale)
    length = float(np.linalg.norm(p1 - p0))
    if length < 1e-3:
        return
    win = _window(np.stack([p0, p1]), max(r0, r1, rmid) * 1.2 + 2, canvas.shape)
    if win is None:
        return
    rs, cs, cols, rows = win
    ex, ey = (float(c) for c in (p1 - p0) / length)  # python floats keep the arithmetic in float32
    dx, dy = cols - float(p0[0]), rows - float(p0[1])
    u = dx * ex + dy * ey
    v = dy * ex - dx * ey
    flare = 0.3 * length
    near0 = np.square(np.minimum(np.maximum(flare - u, 0.0), flare) / flare)
    near1 = np.square(np.minimum(np.maximum(u - (length - flare), 0.0), flare) / flare)
    radius = rmid + (r0 - rmid) * near0 + (r1 - rmid) * near1
    beyond = np.where(u < 0, -u / rod.cap0, 0.0) + np.where(u > length, (u - length) / rod.cap1, 0.0)
    q = (v * v + beyond * beyond) / (radius * radius)
    ends = np.maximum(near0, near1)
    inner = 0.55 + 0.33 * ends  # thick cortex mid-shaft, thin shell around trabecular ends
    outer_chord = _chord(q, radius)
    inner_chord = _chord(q / (inner * inner), radius * inner)
    marrow = 0.22 + 0.18 * ends
    canvas[rs, cs] += rod.flat * BONE_DENSITY * (outer_chord - inner_chord + marrow * inner_chord) / scale
    _label(labels, rs, cs, outer_chord > 0, BONE_CLASSES["shaft"])


def _add_blob(
    canvas: np.ndarray, labels: np.ndarray, centre: np.ndarray, axis: np.ndarray, blob: Blob, scale: float
) -> None:
    a = float(np.linalg.norm(axis))
    b = float(blob.minor * scale)
    if a < 0.3 or b < 0.3:
        return
    win = _window(centre[None, :], max(a, b) * 1.15 + 2, canvas.shape)
    if win is None:
        return
    rs, cs, cols, rows = win
    ex, ey = float(axis[0]) / a, float(axis[1]) / a
    dx, dy = cols - float(centre[0]), rows - float(centre[1])
    u = (dx * ex + dy * ey) / a
    v = (dy * ex - dx * ey) / b
    if blob.taper:
        v /= np.maximum(1.0 + float(blob.taper) * u, 0.3)
    amp2, ph2, amp3, ph3 = (float(w) for w in blob.wobble)
    if amp2 or amp3:
        theta = np.arctan2(v, u)
        reach = 1.0 + amp2 * np.cos(2 * theta + ph2) + amp3 * np.cos(3 * theta + ph3)
        q = (u * u + v * v) / (reach * reach)
    else:
        q = u * u + v * v
    depth = min(a, b)
    inner = 0.85  # a thin cortical shell around trabecular bone: the outline shows brighter
    outer_chord = _chord(q, depth)
    inner_chord = _chord(q / (inner * inner), depth * inner)
    canvas[rs, cs] += 1.2 * BONE_DENSITY * (outer_chord - inner_chord + 0.3 * inner_chord) / scale
    _label(labels, rs, cs, outer_chord > 0, BONE_CLASSES[blob.kind])


def _add_capsule(canvas: np.ndarray, p0: np.ndarray, p1: np.ndarray, radius: float, flat: float) -> None:
    win = _window(np.stack([p0, p1]), radius + 2, canvas.shape)
    if win is None:
        return
    rs, cs, cols, rows = win
    sx, sy = float(p1[0] - p0[0]), float(p1[1] - p0[1])
    length2 = sx * sx + sy * sy or 1e-6
    dx, dy = cols - float(p0[0]), rows - float(p0[1])
    t = np.clip((dx * sx + dy * sy) / length2, 0.0, 1.0)
    ex, ey = dx - t * sx, dy - t * sy
    radius, flat = float(radius), float(flat)
    thickness = flat * _chord((ex * ex + ey * ey) / (radius * radius), radius)
    np.maximum(canvas[rs, cs], thickness, out=canvas[rs, cs])


def _trabecular_texture(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Smooth random density variation (about 1 mm grain) so bone is not a flat, synthetic-looking fill."""
    step = max(1, int(round(0.8 * scale)))  # draw the grain at ~0.8 mm per cell, then upsample
    coarse = rng.standard_normal((shape[0] // step + 2, shape[1] // step + 2), dtype=np.float32)
    coarse = ndimage.gaussian_filter(coarse, 0.8)
    coarse /= float(coarse.std()) + 1e-6
    size = (coarse.shape[1] * step, coarse.shape[0] * step)
    fine = np.asarray(Image.fromarray(coarse).resize(size, Image.Resampling.BILINEAR))
    return fine[: shape[0], : shape[1]]


def render_layers(
    geo: HandGeometry, pose: Pose, height: int, width: int, texture: np.random.Generator | None = None
) -> Layers:
    """Project the hand onto a `height` x `width` detector in `pose`; bone grain is drawn from `texture`."""
    matrix, offset, scale = _transform(geo, pose, height, width)

    def px(p: np.ndarray) -> np.ndarray:
        return matrix @ p + offset

    bone = np.zeros((height, width), np.float32)
    bones = np.zeros((height, width), np.uint8)
    for rod in geo.rods:
        _add_rod(bone, bones, px(rod.p0), px(rod.p1), rod, scale)
    for blob in geo.blobs:
        _add_blob(bone, bones, px(blob.centre), matrix @ blob.axis, blob, scale)
    if texture is not None:
        bone *= 1.0 + TEXTURE_AMPLITUDE * _trabecular_texture(texture, bone.shape, scale)
        np.maximum(bone, 0.0, out=bone)
    thickness = np.zeros((height, width), np.float32)
    for cap in geo.tissue:
        _add_capsule(thickness, px(cap.p0), px(cap.p1), cap.radius * scale, cap.flat)
    thickness /= scale  # mm
    mask = (thickness > MASK_THICKNESS_MM) | (bone > 0)
    soft = np.where(mask, SOFT_DENSITY * thickness, 0.0).astype(np.float32)
    return Layers(bone=bone, soft=soft, mask=mask, bones=bones)


def render_hand(
    individual: Individual,
    boneage: float,
    height: int = 384,
    width: int = 320,
    shape: HandShape | None = None,
    pose: Pose | None = None,
) -> Layers:
    """The clean picture of one individual's hand at bone-age label `boneage`: for inspecting anatomy."""
    return render_layers(build_hand(individual, boneage, shape), pose or Pose(), height, width)
