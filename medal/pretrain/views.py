"""Random views of grey-level radiographs for self-supervised pretraining (kornia, on the device, batched).

Two views of one image must differ in what a bone age model should ignore and agree in what it must read.
A radiograph's nuisances are position, scale, a little rotation, side, exposure (contrast, gamma), blur and
detector noise, so the views draw exactly those: a resized crop, a horizontal flip, a small rotation,
contrast and gamma changes, Gaussian blur and noise, and optionally a polarity flip (for raw files whose
background is white). There is no colour jitter or greyscale conversion (the images have one channel) and
no solarisation. Crops keep most of the hand (`crop_scale` from 0.4): a crop of one finger would ask the
network to match hands by pixels that carry no age.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import kornia.augmentation as K
import torch
from torch import nn

from medal.errors import MedalError


@dataclass(frozen=True)
class ViewOptions:
    """`pretrain.views`: ranges [lo, hi] and probabilities of each random change (see the module docstring).

    `rotation` in degrees (±x), `blur_sigma` in pixels at the working size, `noise_std` in [0, 1] grey levels.
    """

    crop_scale: Sequence[float]
    crop_ratio: Sequence[float]
    hflip: float
    rotation: float
    contrast: Sequence[float]
    gamma: Sequence[float]
    blur_p: float
    blur_sigma: Sequence[float]
    noise_p: float
    noise_std: float
    invert_p: float


def _pair(name: str, value: Sequence[float], low: float = 0.0) -> tuple[float, float]:
    values = tuple(float(v) for v in value)
    if len(values) != 2 or not low <= values[0] <= values[1]:
        raise MedalError(f"pretrain.views.{name}={list(value)}: give a range [lo, hi] with {low} <= lo <= hi")
    return values  # type: ignore[return-value]


def _probability(name: str, value: float) -> float:
    if not 0.0 <= float(value) <= 1.0:
        raise MedalError(f"pretrain.views.{name}={value}: must be a probability in [0, 1]")
    return float(value)


class Views(nn.Module):
    """`views(images)` -> one random view of each image: (B, 1, S, S) in [0, 1] -> (B, 1, S, S) in [0, 1].

    Every call draws new parameters per image, so two calls give the two views of a SimCLR pair.
    """

    def __init__(self, options: ViewOptions, size: int) -> None:
        super().__init__()
        blur_sigma = _pair("blur_sigma", options.blur_sigma, low=1e-3)
        kernel = 2 * int(round(3 * blur_sigma[1])) + 1  # +-3 sigma of the widest blur
        self.pipeline = K.AugmentationSequential(
            K.RandomResizedCrop((size, size), scale=_pair("crop_scale", options.crop_scale),
                                ratio=_pair("crop_ratio", options.crop_ratio)),
            K.RandomHorizontalFlip(p=_probability("hflip", options.hflip)),
            K.RandomRotation(degrees=abs(float(options.rotation)), p=1.0),
            K.RandomContrast(contrast=_pair("contrast", options.contrast), p=1.0),
            K.RandomGamma(gamma=_pair("gamma", options.gamma, low=1e-3), p=1.0),
            K.RandomGaussianBlur((kernel, kernel), blur_sigma, p=_probability("blur_p", options.blur_p)),
            K.RandomGaussianNoise(std=float(options.noise_std), p=_probability("noise_p", options.noise_p)),
            K.RandomInvert(p=_probability("invert_p", options.invert_p)),
            data_keys=None,
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pipeline({"input": images})["input"].clamp(0.0, 1.0)
