"""Training augmentation on the device, after transfer: rotation, zoom, shear and horizontal flip (kornia).

One `AugmentationSequential` draws one set of parameters per sample and applies it to the image and,
when given, its mask (masks are resampled nearest-neighbour), so they stay aligned. YAML hands over
lists and ints; kornia wants tuples and floats, converted here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import kornia.augmentation as K
import torch

from medal.errors import MedalError

PADDINGS = ("zeros", "border", "reflection")


@dataclass(frozen=True)
class AugmentOptions:
    """`data.augment`: ranges and probabilities. rotation/shear in degrees (±x or [lo, hi]);
    scale is the zoom range [lo, hi]; p is the probability of the affine part; hflip its own probability."""

    enabled: bool = True
    rotation: float | Sequence[float] = 20.0
    scale: Sequence[float] = (0.9, 1.1)
    shear: float | Sequence[float] = 10.0
    hflip: float = 0.5
    p: float = 0.9
    padding: str = "border"  # border: corners take the edge value, right for either polarity


def _range(name: str, value: float | Sequence[float], symmetric: bool) -> tuple[float, float]:
    if isinstance(value, int | float):
        if not symmetric:
            raise MedalError(f"data.augment.{name}={value}: give a range [lo, hi]")
        return (-float(abs(value)), float(abs(value)))
    values = tuple(float(v) for v in value)
    if len(values) != 2 or values[0] > values[1]:
        raise MedalError(f"data.augment.{name}={list(value)}: give a range [lo, hi] with lo <= hi")
    return values  # type: ignore[return-value]


def build_augmentation(options: AugmentOptions) -> K.AugmentationSequential | None:
    """The kornia pipeline for `options`, or None when augmentation is disabled."""
    if not options.enabled:
        return None
    if options.padding not in PADDINGS:
        raise MedalError(f"data.augment.padding={options.padding!r}: choose one of {', '.join(PADDINGS)}")
    for name in ("p", "hflip"):
        if not 0.0 <= float(getattr(options, name)) <= 1.0:
            raise MedalError(f"data.augment.{name}={getattr(options, name)}: must be a probability in [0, 1]")
    affine = K.RandomAffine(
        degrees=_range("rotation", options.rotation, symmetric=True),
        scale=_range("scale", options.scale, symmetric=False),
        shear=_range("shear", options.shear, symmetric=True),
        padding_mode=options.padding,
        p=float(options.p),
    )
    return K.AugmentationSequential(affine, K.RandomHorizontalFlip(p=float(options.hflip)),
                                    data_keys=None)


def augment(pipeline: K.AugmentationSequential, image: torch.Tensor,
            mask: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Augment a (B, C, H, W) batch; with `mask`, apply the very same transform to it and return both."""
    if mask is None:
        return pipeline({"input": image})["input"]
    out = pipeline({"input": image, "mask": mask})
    return out["input"], out["mask"]
