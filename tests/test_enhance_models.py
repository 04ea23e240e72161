"""Shapes and config errors of the enhancer's networks (U-Net G, paper D, PatchGAN D)."""

from __future__ import annotations

import pytest
import torch

from medal.errors import MedalError
from medal.models.discriminators import PairDiscriminator, PatchDiscriminator, build_discriminator
from medal.models.unet import InputResidual, UNet


@pytest.mark.parametrize("norm", ["batch", "instance", "group", "none"])
def test_unet_returns_logits_at_input_size(norm: str) -> None:
    net = UNet(in_channels=1, out_channels=1, depth=3, width=8, dropout=0.1, norm=norm)
    out = net(torch.rand(2, 1, 64, 48))
    assert out.shape == (2, 1, 64, 48)
    assert torch.isfinite(out).all()


def test_unet_channels_and_contract_defaults() -> None:
    net = UNet()  # contract 7 defaults: 1 -> 1 channel, depth 4, width 32
    assert net(torch.rand(1, 1, 32, 32)).shape == (1, 1, 32, 32)
    assert UNet(in_channels=3, out_channels=2, depth=2, width=4)(torch.rand(1, 3, 16, 16)).shape == (1, 2, 16, 16)


def test_unet_rejects_bad_sizes_and_settings() -> None:
    with pytest.raises(MedalError, match="divisible by 2\\*\\*depth=16"):
        UNet(depth=4, width=4)(torch.rand(1, 1, 40, 40))
    with pytest.raises(MedalError, match="norm='layer'"):
        UNet(norm="layer")
    with pytest.raises(MedalError, match="dropout"):
        UNet(dropout=1.5)


def test_paper_discriminator_emits_one_logit_per_pair_at_any_size() -> None:
    disc = build_discriminator("paper", in_channels=2, width=8)
    assert isinstance(disc, PairDiscriminator)
    for size in (64, 128):
        x, y = torch.rand(3, 1, size, size), torch.rand(3, 1, size, size)
        assert disc(x, y).shape == (3,)
    convs = [m for m in disc.modules() if isinstance(m, torch.nn.Conv2d)]
    fcs = [m for m in disc.modules() if isinstance(m, torch.nn.Linear)]
    assert (len(convs), len(fcs)) == (3, 1)  # the paper's 3 conv layers + 1 FC layer


def test_patch_discriminator_emits_a_logit_map() -> None:
    disc = build_discriminator("patch", in_channels=2, width=8)
    assert isinstance(disc, PatchDiscriminator)
    x = torch.rand(2, 1, 256, 256)
    assert disc(x, x).shape == (2, 1, 30, 30)  # pix2pix's 70x70 PatchGAN on 256 px


def test_discriminator_is_conditional_on_x() -> None:
    torch.manual_seed(0)
    disc = build_discriminator("paper", width=8).eval()
    y = torch.rand(1, 1, 64, 64)
    assert not torch.allclose(disc(torch.zeros_like(y), y), disc(torch.ones_like(y), y))


def test_unknown_discriminator_names_the_key() -> None:
    with pytest.raises(MedalError, match="enhance.discriminator.kind='fc'"):
        build_discriminator("fc")


def test_residual_generator_starts_as_identity_and_learns() -> None:
    torch.manual_seed(0)
    gen = InputResidual(UNet(depth=2, width=4))
    x = torch.rand(2, 1, 16, 16) * 0.9 + 0.05
    torch.testing.assert_close(torch.sigmoid(gen(x)), x, atol=1e-5, rtol=0)
    opt = torch.optim.SGD(gen.parameters(), lr=0.1)
    for _ in range(3):  # the zero-initialised head still receives gradient, then the rest follows
        opt.zero_grad()
        (torch.sigmoid(gen(x)) - 1).abs().mean().backward()
        opt.step()
    assert torch.sigmoid(gen(x)).mean() > x.mean()
