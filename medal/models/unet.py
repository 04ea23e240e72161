"""A plain U-Net (Ronneberger et al.): the enhancer's generator and the segmentation baseline.

Forward returns raw outputs (logits) at the input's size, so the caller picks the output map
(sigmoid for masks and [0, 1] intensities) and the loss can use its numerically stable logit form.
"""

from __future__ import annotations

import torch
from torch import nn

from medal.errors import MedalError

NORMS = ("batch", "instance", "group", "none")


def make_norm(kind: str, channels: int) -> nn.Module:
    """Normalisation layer by name; `group` uses 8 groups (or fewer when channels are few)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise MedalError(f"norm={kind!r}: unknown normalisation; use one of {', '.join(NORMS)}")


class DoubleConv(nn.Sequential):
    """(3x3 conv -> norm -> ReLU) x 2, the U-Net's building block; optional dropout at the end."""

    def __init__(self, in_ch: int, out_ch: int, norm: str, dropout: float = 0.0) -> None:
        bias = norm == "none"  # a bias right before a norm layer is cancelled by it
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=bias),
            make_norm(norm, out_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=bias),
            make_norm(norm, out_ch),
            nn.ReLU(inplace=True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        super().__init__(*layers)


class UNet(nn.Module):
    """U-Net with `depth` down/up steps; channels `width * 2**level`.

    Dropout (pix2pix's source of stochasticity) sits in the bottleneck and the decoder only, so the
    encoder's features stay deterministic. Input H and W must be divisible by `2**depth`.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        depth: int = 4,
        width: int = 32,
        dropout: float = 0.0,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if depth < 1 or width < 1:
            raise MedalError(f"UNet depth={depth}, width={width}: both must be >= 1")
        if not 0.0 <= dropout < 1.0:
            raise MedalError(f"UNet dropout={dropout}: must be in [0, 1)")
        make_norm(norm, 1)  # validate the name once, with the clear message
        self.depth = depth
        chans = [width * 2**i for i in range(depth + 1)]
        self.encoder = nn.ModuleList([DoubleConv(in_channels, chans[0], norm)])
        self.encoder.extend(DoubleConv(chans[i], chans[i + 1], norm) for i in range(depth - 1))
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = DoubleConv(chans[depth - 1], chans[depth], norm, dropout)
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(chans[i + 1], chans[i], kernel_size=2, stride=2) for i in reversed(range(depth))
        )
        self.decoder = nn.ModuleList(
            DoubleConv(2 * chans[i], chans[i], norm, dropout) for i in reversed(range(depth))
        )
        self.head = nn.Conv2d(chans[0], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = 2**self.depth
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise MedalError(
                f"UNet input {tuple(x.shape[-2:])}: height and width must be divisible by 2**depth={factor}; "
                "resize or pad the images"
            )
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, block, skip in zip(self.up, self.decoder, reversed(skips), strict=True):
            x = block(torch.cat([up(x), skip], dim=1))
        return self.head(x)


class InputResidual(nn.Module):
    """Logits = net(x) + logit(x): the net learns a *correction* of its [0, 1] input and starts as identity.

    For enhancement the output is mostly the input (same hand, same bones), so the residual form
    spends no training on relearning the image and cannot start worse than pass-through; the net's
    last conv is zero-initialised for that reason.
    """

    def __init__(self, net: UNet, eps: float = 1e-3) -> None:
        super().__init__()
        self.net, self.eps = net, eps
        nn.init.zeros_(net.head.weight)
        nn.init.zeros_(net.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + torch.logit(x.float().clamp(self.eps, 1 - self.eps))
