"""Conditional discriminators D(x, y) for the enhancer: both see the input x and a candidate y.

`PairDiscriminator` is the paper's D (section 2.3): three strided conv layers and one fully
connected layer emitting one logit per pair. The FC layer reads a pooled grid of fixed size, so
one D works at any image size (`GridMeanPool`: deterministic on GPUs where the map divides evenly). `PatchDiscriminator` is pix2pix's 70x70 PatchGAN: a map of
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


class GridMeanPool(nn.Module):
    """Average (B, C, H, W) maps into a (B, C, pool, pool) grid, as `nn.AdaptiveAvgPool2d(pool)` does.

    Where `pool` divides H and W (every power-of-two input size), the windows are equal and the mean is a reshape:
    its CUDA backward is deterministic, while adaptive pooling's is not (it raises under
    `trainer.deterministic=true`). Other sizes fall back to adaptive pooling.

    Examples:
        >>> x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
        >>> torch.equal(GridMeanPool(4)(x), nn.AdaptiveAvgPool2d(4)(x)), GridMeanPool(4)(x).shape
        (True, torch.Size([2, 3, 4, 4]))
        >>> torch.allclose(GridMeanPool(4)(x[..., :6, :6]), nn.AdaptiveAvgPool2d(4)(x[..., :6, :6]))
        True
    """

    def __init__(self, pool: int) -> None:
        super().__init__()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p = self.pool
        if h % p or w % p:
            return nn.functional.adaptive_avg_pool2d(x, p)
        return x.reshape(b, c, p, h // p, p, w // p).mean(dim=(3, 5))


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
            GridMeanPool(pool),
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
