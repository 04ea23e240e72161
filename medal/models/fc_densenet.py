"""FC-DenseNet ("the one hundred layers Tiramisu", Jégou et al.), as the paper's committee member.

The paper uses three transition-down and three transition-up blocks with 192 feature maps in the
middle; that middle map is the member's high-level feature vector for query-by-committee (eq. 5), so
`forward` returns it next to the mask logits. The bottleneck block, as in Tiramisu, outputs only its
new feature maps: its width is `bottleneck_layers * growth` (12 * 16 = 192 by default).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medal.errors import MedalError

FEATURE_MODES = ("flatten", "gap")


class DenseLayer(nn.Sequential):
    """BN -> ReLU -> 3x3 conv -> dropout, producing `growth` new feature maps."""

    def __init__(self, in_ch: int, growth: int, dropout: float) -> None:
        layers: list[nn.Module] = [
            nn.BatchNorm2d(in_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_ch, growth, 3, padding=1, bias=False),
        ]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        super().__init__(*layers)


class DenseBlock(nn.Module):
    """Each layer sees the concatenation of the block input and all previous layers' outputs.

    Returns only the new maps (`n_layers * growth` channels); callers concatenate the input where the
    architecture wants it (down path), which keeps the up path from exploding in width.
    """

    def __init__(self, in_ch: int, n_layers: int, growth: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(in_ch + i * growth, growth, dropout) for i in range(n_layers))
        self.out_channels = n_layers * growth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new: list[torch.Tensor] = []
        for layer in self.layers:
            out = layer(torch.cat([x, *new], dim=1))
            new.append(out)
        return torch.cat(new, dim=1)


class TransitionDown(nn.Sequential):
    """BN -> ReLU -> 1x1 conv -> dropout -> 2x2 max-pool (halves the resolution, keeps the width)."""

    def __init__(self, channels: int, dropout: float) -> None:
        layers: list[nn.Module] = [
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1, bias=False),
        ]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        layers.append(nn.MaxPool2d(2))
        super().__init__(*layers)


class FCDenseNet(nn.Module):
    """Tiramisu with `len(down_layers)` transition-down / transition-up blocks.

    forward(x) -> (logits (B, 1, H, W), feature vector (B, D)); D = bottleneck width * h * w for
    `feature="flatten"` (the paper) or the bottleneck width for `feature="gap"` (global average pool:
    independent of the input size). H and W must be divisible by 2 ** len(down_layers).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        first_conv: int = 48,
        growth: int = 16,
        down_layers: Sequence[int] = (4, 5, 7),
        bottleneck_layers: int = 12,
        up_layers: Sequence[int] | None = None,
        dropout: float = 0.2,
        feature: str = "flatten",
    ) -> None:
        super().__init__()
        down_layers = list(down_layers)
        up_layers = list(up_layers) if up_layers is not None else down_layers[::-1]
        if not down_layers or len(up_layers) != len(down_layers):
            raise MedalError(
                f"FCDenseNet down_layers={down_layers}, up_layers={up_layers}: need one up block per down block"
            )
        if min([first_conv, growth, bottleneck_layers, *down_layers, *up_layers]) < 1:
            raise MedalError("FCDenseNet: first_conv, growth and every block size must be >= 1")
        if feature not in FEATURE_MODES:
            raise MedalError(f"FCDenseNet feature={feature!r}: use one of {', '.join(FEATURE_MODES)}")
        if not 0.0 <= dropout < 1.0:
            raise MedalError(f"FCDenseNet dropout={dropout}: must be in [0, 1)")
        self.feature = feature
        self.factor = 2 ** len(down_layers)

        self.stem = nn.Conv2d(in_channels, first_conv, 3, padding=1, bias=True)
        channels = first_conv
        skips: list[int] = []
        self.down_blocks = nn.ModuleList()
        self.trans_down = nn.ModuleList()
        for n in down_layers:
            block = DenseBlock(channels, n, growth, dropout)
            self.down_blocks.append(block)
            channels += block.out_channels
            skips.append(channels)
            self.trans_down.append(TransitionDown(channels, dropout))

        self.bottleneck = DenseBlock(channels, bottleneck_layers, growth, dropout)
        self.bottleneck_channels = self.bottleneck.out_channels
        prev_new = self.bottleneck_channels

        self.trans_up = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for n, skip in zip(up_layers, reversed(skips), strict=True):
            self.trans_up.append(nn.ConvTranspose2d(prev_new, prev_new, 3, stride=2, padding=1, output_padding=1))
            block = DenseBlock(prev_new + skip, n, growth, dropout)
            self.up_blocks.append(block)
            channels = prev_new + skip + block.out_channels  # the last block's full output feeds the head
            prev_new = block.out_channels
        self.head = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise MedalError(
                f"FCDenseNet input {tuple(x.shape[-2:])}: height and width must be divisible by {self.factor}"
            )
        out = self.stem(x)
        skips: list[torch.Tensor] = []
        for block, down in zip(self.down_blocks, self.trans_down, strict=True):
            out = torch.cat([out, block(out)], dim=1)
            skips.append(out)
            out = down(out)
        middle = self.bottleneck(out)
        out = middle
        for up, block, skip in zip(self.trans_up, self.up_blocks, reversed(skips), strict=True):
            out = torch.cat([up(out), skip], dim=1)
            new = block(out)
            out_full = torch.cat([out, new], dim=1)
            out = new
        logits = self.head(out_full)
        features = middle.mean(dim=(2, 3)) if self.feature == "gap" else middle.flatten(1)
        return logits, features
