"""Adversarial and reconstruction losses (hand-computed cases) and the CLAHE wrapper's config handling."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from medal.enhance.clahe import clahe, clahe_params
from medal.enhance.losses import (
    GANLoss,
    l1_reconstruction,
    paper_reconstruction,
    reconstruction_loss,
)
from medal.errors import MedalError
from medal.losses import soft_dice  # noqa: I001


def test_paper_loss_on_a_hand_computed_case() -> None:
    # logits 0 -> p = 0.5 everywhere; gold (1, 0, 1, 0): BCE = ln 2 per pixel;
    # soft Dice = 2 * (0.5 + 0.5) / (2.0 + 2) = 0.5, so loss = ln 2 + (1 - 0.5)
    logits = torch.zeros(1, 1, 2, 2)
    gold = torch.tensor([1.0, 0.0, 1.0, 0.0]).view(1, 1, 2, 2)
    assert paper_reconstruction(logits, gold).item() == pytest.approx(math.log(2) + 0.5, abs=1e-5)


def test_paper_loss_second_case_with_intensities() -> None:
    # logit ln(3) -> p = 0.75 on two pixels whose gold is 0.5:
    # BCE = -(0.5 ln .75 + 0.5 ln .25); Dice = 2 * (2 * .375) / (1.5 + 1.0) = 0.6
    logits = torch.full((1, 1, 1, 2), math.log(3))
    gold = torch.full((1, 1, 1, 2), 0.5)
    bce = -(0.5 * math.log(0.75) + 0.5 * math.log(0.25))
    assert paper_reconstruction(logits, gold).item() == pytest.approx(bce + 0.4, abs=1e-5)


def test_paper_loss_is_finite_at_saturation_and_lowest_at_the_target() -> None:
    gold = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    saturated_wrong = torch.tensor([-200.0, 200.0]).view(1, 1, 1, 2)
    assert torch.isfinite(paper_reconstruction(saturated_wrong, gold))
    right = torch.tensor([20.0, -20.0]).view(1, 1, 1, 2)
    assert paper_reconstruction(right, gold) < 1e-3 < paper_reconstruction(torch.zeros_like(right), gold)


def test_soft_dice_is_per_image() -> None:
    a = torch.stack([torch.ones(1, 2, 2), torch.zeros(1, 2, 2)])
    assert soft_dice(a, a).tolist() == pytest.approx([1.0, 1.0])


def test_l1_uses_sigmoid_of_logits() -> None:
    assert l1_reconstruction(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)).item() == pytest.approx(0.5)
    assert reconstruction_loss("l1") is l1_reconstruction
    with pytest.raises(MedalError, match="enhance.reconstruction.kind='mse'"):
        reconstruction_loss("mse")


def test_gan_loss_modes() -> None:
    logits = torch.tensor([0.0, 2.0])
    bce = GANLoss("bce")
    assert bce(logits, True).item() == pytest.approx((math.log(2) + math.log(1 + math.exp(-2))) / 2, abs=1e-6)
    assert bce(logits, False).item() == pytest.approx((math.log(2) + math.log(1 + math.exp(2))) / 2, abs=1e-6)
    ls = GANLoss("lsgan")
    assert ls(logits, True).item() == pytest.approx((1 + 1) / 2)
    assert ls(logits, False).item() == pytest.approx((0 + 4) / 2)
    assert torch.isfinite(bce(torch.tensor([1e4, -1e4]), True))
    with pytest.raises(MedalError, match="enhance.adversarial='wgan'"):
        GANLoss("wgan")


def test_clahe_takes_yaml_ints_and_lists() -> None:
    conf = OmegaConf.create({"clip_limit": 3, "grid": [4, 2]})  # int + ListConfig, as YAML gives them
    assert clahe_params(conf.clip_limit, conf.grid) == (3.0, (4, 2))
    assert clahe_params(2, 8) == (2.0, (8, 8))
    torch.manual_seed(0)
    low_contrast = 0.4 + 0.2 * torch.rand(2, 1, 64, 64)
    out = clahe(low_contrast, conf.clip_limit, conf.grid, keep_background=False)
    assert out.shape == low_contrast.shape
    assert out.min() >= 0 and out.max() <= 1
    assert out.std() > low_contrast.std()  # it does equalise


@pytest.mark.parametrize(("clip", "grid"), [(0, [8, 8]), (2, [8]), ("high", 8), (2, [0, 4])])
def test_clahe_rejects_bad_settings(clip: object, grid: object) -> None:
    with pytest.raises(MedalError, match="enhance.clahe"):
        clahe_params(clip, grid)


def test_clahe_can_keep_the_segmented_background_black() -> None:
    torch.manual_seed(0)
    roi = torch.zeros(1, 1, 64, 64)
    roi[..., 16:48, 16:48] = 0.3 + 0.2 * torch.rand(1, 1, 32, 32)
    lifted = clahe(roi, 2, [4, 4], keep_background=False)
    kept = clahe(roi, 2, [4, 4], keep_background=True)
    assert lifted[..., :8, :8].max() > 0  # equalisation lifts the empty background
    assert kept[..., :16, :].max() == 0 and kept[..., 16:48, 16:48].std() > roi[..., 16:48, 16:48].std()
