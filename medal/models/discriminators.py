"""Conditional discriminators D(x, y) for the enhancer: both see the input x and a candidate y.

`PairDiscriminator` is the paper's D (section 2.3): three strided conv layers and one fully
connected layer emitting one logit per pair. The FC layer reads an adaptively pooled grid, so
one D works at any image size. `PatchDiscriminator` is pix2pix's 70x70 PatchGAN: a map of
logits, each judging one overlapping patch, which favours sharp local texture.
Both emit logits (no sigmoid): the adversarial loss applies it in its stable form.
"""

from __future__ import annotations

import torch
from torch import nn

from medal.errors import MedalError
from medal.models.unet import make_norm

DISCRIMINATORS = ("paper", "patch")


def _down(in_ch: int, out_ch: int, norm: str, stride: int = 2) -> list[nn.Module]:
    """4x4 conv -> norm -> LeakyReLU(0.2), the DCGAN/pix2pix discriminator block."""
    return [
        nn.Conv2d(in_ch, out_ch, 4, stride=stride, padding=1, bias=norm == "none"),
        make_norm(norm, out_ch),
        nn.LeakyReLU(0.2, inplace=True),
    ]


class PairDiscriminator(nn.Module):
    """Paper's D: 3 conv layers + 1 FC layer on the channel-concatenated pair (x, y) -> (B,) logits."""

    def __init__(self, in_channels: int = 2, width: int = 64, norm: str = "batch", pool: int = 8) -> None:
        super().__init__()
        # no norm on the first layer (pix2pix/DCGAN practice: keeps the input statistics)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
            *_down(width, 2 * width, norm),
            *_down(2 * width, 4 * width, norm),
            nn.AdaptiveAvgPool2d(pool),
        )
        self.fc = nn.Linear(4 * width * pool * pool, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(torch.cat([x, y], dim=1)).flatten(1)).squeeze(1)


class PatchDiscriminator(nn.Module):
    """pix2pix's 70x70 PatchGAN (3 strided layers + 2 stride-1 layers) -> (B, 1, h, w) logits."""

    def __init__(self, in_channels: int = 2, width: int = 64, norm: str = "batch") -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
            *_down(width, 2 * width, norm),
            *_down(2 * width, 4 * width, norm),
            *_down(4 * width, 8 * width, norm, stride=1),
            nn.Conv2d(8 * width, 1, 4, stride=1, padding=1),
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, y], dim=1))


def build_discriminator(kind: str, in_channels: int = 2, width: int = 64, norm: str = "batch") -> nn.Module:
    """Discriminator by config name (`enhance.discriminator.kind`)."""
    if kind == "paper":
        return PairDiscriminator(in_channels, width, norm)
    if kind == "patch":
        return PatchDiscriminator(in_channels, width, norm)
    raise MedalError(
        f"enhance.discriminator.kind={kind!r}: unknown discriminator; use one of {', '.join(DISCRIMINATORS)}"
    )
