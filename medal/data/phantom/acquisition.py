"""Acquisition nuisances: what makes a raw radiograph differ from the clean projection.

Exposure and detector response (gain, background level, heel-effect gradient, gamma), blur, noise,
collimator frames, burned-in side markers, white-background (inverted) files and 8/16-bit depth, with
strengths set by `Nuisance`. Pose (rotation, scale, shift) and image size are drawn here too, but
applied by the renderer to the geometry so that mask and gold stay pixel-aligned with the raw image.

`Nuisance.hard_p` makes a minority of acquisitions hard, as in real archives (`HARD_KINDS`: one or two of low
contrast, wide collimator frames, a white background behind a frame, strong rotation, a small child's hand):
pools of uneven difficulty, on which choosing what to label can matter. At 0 (the default) nothing extra is
drawn, so the images of every existing seed stay as they were.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from medal.data.phantom.render import Layers, Pose
from medal.errors import MedalError


@dataclass(frozen=True)
class Nuisance:
    """Strengths of every nuisance; `Nuisance.off()` gives clean, upright, normal-polarity images."""

    rotation_deg: float = 20.0  # uniform in +-rotation_deg
    fill: tuple[float, float] = (0.62, 0.92)  # hand size as a fraction of the image
    shift: float = 0.05  # max shift of the hand centre, fraction of the image
    size_jitter: float = 0.15  # image height = image_size * (1 +- size_jitter)
    aspect: tuple[float, float] = (0.72, 1.0)  # width / height
    inverted_p: float = 0.15  # white background
    bits16_p: float = 0.3
    gain: tuple[float, float] = (0.9, 2.2)  # exposure: raw = 1 - exp(-gain * attenuation)
    background: tuple[float, float] = (0.0, 0.22)
    contrast: tuple[float, float] = (0.6, 1.0)
    gamma_sd: float = 0.25  # log-normal spread of the display gamma
    gradient: float = 0.08  # heel-effect ramp amplitude
    blur_px: float = 1.2  # max Gaussian blur sigma at 512 px
    noise: tuple[float, float] = (0.004, 0.035)
    marker_p: float = 0.75  # burned-in side letter
    frame_p: float = 0.25  # collimator frame on one or more sides
    hard_p: float = 0.0  # share of hard acquisitions (one or two of HARD_KINDS on top of the above)

    def validate(self) -> None:
        """Raise MedalError naming the first setting that cannot be drawn from."""
        for name in ("inverted_p", "bits16_p", "marker_p", "frame_p", "hard_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise MedalError(f"phantoms.nuisance.{name}={getattr(self, name)}: a probability in [0, 1]")
        for name in ("fill", "aspect", "gain", "background", "contrast", "noise"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise MedalError(f"phantoms.nuisance.{name}={[lo, hi]}: needs 0 <= low <= high")
        if not (0 < self.fill[1] <= 1 and self.aspect[0] > 0 and self.size_jitter < 1):
            raise MedalError("phantoms.nuisance: fill must lie in (0, 1], aspect > 0, size_jitter < 1")

    @classmethod
    def off(cls) -> Nuisance:
        return cls(
            rotation_deg=0.0,
            fill=(0.85, 0.85),
            shift=0.0,
            size_jitter=0.0,
            aspect=(0.8, 0.8),
            inverted_p=0.0,
            bits16_p=0.0,
            gain=(1.6, 1.6),
            background=(0.0, 0.0),
            contrast=(1.0, 1.0),
            gamma_sd=0.0,
            gradient=0.0,
            blur_px=0.0,
            noise=(0.0, 0.0),
            marker_p=0.0,
            frame_p=0.0,
        )


@dataclass(frozen=True)
class Acquisition:
    """One image's drawn acquisition: detector size, pose, and the settings of every nuisance."""

    height: int
    width: int
    pose: Pose
    inverted: bool
    bits: int
    gain: float
    background: float
    contrast: float
    gamma: float
    gradient: tuple[float, float]  # amplitude, direction (radians)
    blur: float
    noise: float
    marker: bool
    frame: tuple[float, float, float, float] | None  # fraction cut from top, bottom, left, right
    hard: tuple[str, ...] = ()  # the HARD_KINDS this acquisition was given (empty: an ordinary one)


HARD_KINDS = ("low_contrast", "framed", "inverted_framed", "rotated", "small_hand")


def _harden(acq: Acquisition, rng: np.random.Generator) -> Acquisition:
    """One or two hard kinds on top of an ordinary acquisition: what makes a radiograph hard to segment."""
    kinds = tuple(sorted(rng.choice(HARD_KINDS, size=int(rng.integers(1, 3)), replace=False).tolist()))
    changes: dict = {"hard": kinds}
    pose = acq.pose
    for kind in kinds:
        if kind == "low_contrast":  # under-exposed, washed out, noisy
            changes.update(contrast=float(rng.uniform(0.12, 0.3)), gain=float(rng.uniform(0.5, 0.9)),
                           noise=float(rng.uniform(0.03, 0.06)))
        elif kind in ("framed", "inverted_framed"):  # wide bright shutters on 2-4 sides
            sides = rng.permutation(4)[: int(rng.integers(2, 5))]
            frame = np.zeros(4)
            frame[sides] = rng.uniform(0.08, 0.2, size=len(sides))
            changes["frame"] = tuple(float(v) for v in frame)
            if kind == "inverted_framed":
                changes["inverted"] = True
        elif kind == "rotated":
            angle = float(rng.uniform(35.0, 80.0)) * (1 if rng.random() < 0.5 else -1)
            pose = replace(pose, angle_deg=angle)
        elif kind == "small_hand":  # a young child's hand on an adult-sized detector
            pose = replace(pose, fill=float(rng.uniform(0.3, 0.45)))
    return replace(acq, pose=pose, **changes)


def sample_acquisition(rng: np.random.Generator, image_size: int, nz: Nuisance) -> Acquisition:
    """Draw every random setting of one acquisition."""
    height = int(round(image_size * (1 + rng.uniform(-nz.size_jitter, nz.size_jitter))))
    width = int(round(height * rng.uniform(*nz.aspect)))
    pose = Pose(
        angle_deg=float(rng.uniform(-nz.rotation_deg, nz.rotation_deg)),
        fill=float(rng.uniform(*nz.fill)),
        shift=(float(rng.uniform(-nz.shift, nz.shift)), float(rng.uniform(-nz.shift, nz.shift))),
    )
    frame = None
    if rng.random() < nz.frame_p:
        frame = tuple(float(v) for v in rng.uniform(0.0, 0.06, size=4) * (rng.random(4) < 0.6))
    acq = Acquisition(
        height=height,
        width=width,
        pose=pose,
        inverted=bool(rng.random() < nz.inverted_p),
        bits=16 if rng.random() < nz.bits16_p else 8,
        gain=float(rng.uniform(*nz.gain)),
        background=float(rng.uniform(*nz.background)),
        contrast=float(rng.uniform(*nz.contrast)),
        gamma=float(np.exp(rng.normal(0.0, nz.gamma_sd))),
        gradient=(float(rng.uniform(0, nz.gradient)), float(rng.uniform(0, 2 * np.pi))),
        blur=float(rng.uniform(0, nz.blur_px) * image_size / 512),
        noise=float(rng.uniform(*nz.noise)),
        marker=bool(rng.random() < nz.marker_p),
        frame=frame,
    )
    if nz.hard_p > 0 and rng.random() < nz.hard_p:  # drawn last and only when asked: other images unchanged
        acq = _harden(acq, rng)
    return acq


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _marker(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray) -> None:
    """Burn a side letter (sometimes with a number) into a corner that the hand does not cover."""
    height, width = image.shape
    text = "L" if rng.random() < 0.85 else str(rng.choice(["R", "L PA", "LEFT"]))
    if rng.random() < 0.3:
        text += f" {int(rng.integers(1, 99))}"
    size = max(8, int(height * rng.uniform(0.05, 0.09)))
    font = _font(size)
    left, top, right, bottom = font.getbbox(text)
    tw, th = right - left + 4, bottom - top + 4
    if tw >= width // 2 or th >= height // 2:
        return
    corners = [(0.03, 0.03), (0.03, 0.97), (0.97, 0.03), (0.97, 0.97), (0.5, 0.03)]
    for idx in rng.permutation(len(corners)):
        fx, fy = corners[idx]
        x0 = int(np.clip(fx * width - tw * fx, 0, width - tw))
        y0 = int(np.clip(fy * height - th * fy, 0, height - th))
        if not mask[y0 : y0 + th, x0 : x0 + tw].any():
            break
    else:
        return
    stamp = Image.new("L", (tw, th), 0)
    ImageDraw.Draw(stamp).text((2 - left, 2 - top), text, fill=255, font=font)
    alpha = np.asarray(stamp, np.float32) / 255.0
    value = rng.uniform(0.85, 1.0)
    region = image[y0 : y0 + th, x0 : x0 + tw]
    region[:] = region * (1 - alpha) + value * alpha


def _frame(
    image: np.ndarray, mask: np.ndarray, frame: tuple[float, float, float, float], level: float
) -> None:
    """Collimator shutters: flat bands along the chosen sides, stopping short of the hand."""
    height, width = image.shape
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    free = (rows[0], height - 1 - rows[-1], cols[0], width - 1 - cols[-1]) if rows.size else (height,) * 4
    top, bottom, left, right = (
        min(int(f * n), room) for f, n, room in zip(frame, (height, height, width, width), free, strict=True)
    )
    if top:
        image[:top] = level
    if bottom:
        image[height - bottom :] = level
    if left:
        image[:, :left] = level
    if right:
        image[:, width - right :] = level


def acquire(layers: Layers, acq: Acquisition, rng: np.random.Generator) -> np.ndarray:
    """The raw radiograph (float32 in [0, 1], as stored) of a clean projection under `acq`."""
    height, width = layers.mask.shape
    signal = 1.0 - np.exp(-acq.gain * layers.attenuation)
    image = acq.background + acq.contrast * (1.0 - acq.background) * signal
    amp, direction = acq.gradient
    if amp:
        ramp = (
            np.cos(direction) * np.linspace(-1, 1, width, dtype=np.float32)[None, :]
            + np.sin(direction) * np.linspace(-1, 1, height, dtype=np.float32)[:, None]
        )
        image = image + amp * 0.5 * ramp * (0.4 + image)
    image = np.clip(image, 0.0, 1.0) ** acq.gamma
    if acq.blur > 0.05:
        image = ndimage.gaussian_filter(image, acq.blur, truncate=3.0)
    if acq.noise > 0:
        image = image + acq.noise * rng.standard_normal(image.shape, dtype=np.float32) * (0.5 + image)
    image = np.clip(image, 0.0, 1.0).astype(np.float32)
    if acq.frame is not None:
        _frame(image, layers.mask, acq.frame, level=float(rng.uniform(0.55, 1.0)))
    if acq.marker:
        _marker(rng, image, layers.mask)
    if acq.inverted:
        image = 1.0 - image
    return image
