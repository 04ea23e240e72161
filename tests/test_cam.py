"""CAM of a linear head is the hand-computed FC-weighted sum; Grad-CAM works through a frozen backbone."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf

from medal.boneage.cam import class_activation_map, grad_cam, linear_cam, normalise, overlay
from medal.config import CONF_DIR
from medal.models.regressor import build_regressor


def tiny(**overrides):
    return build_regressor(OmegaConf.merge(OmegaConf.load(Path(CONF_DIR) / "model" / "tiny.yaml"), overrides))


def test_linear_cam_is_the_fc_weighted_sum_of_the_last_feature_maps() -> None:
    torch.manual_seed(0)
    model = tiny(sex_input=True).eval()
    image, male = torch.rand(2, 1, 64, 64), torch.tensor([1.0, 0.0])
    result = linear_cam(model, image, male)
    with torch.no_grad():
        features = model.backbone.forward_features((image - 0.5) / 0.5)
        weights = model.head.fc[-1].weight[0]
        expected = torch.zeros(2, *features.shape[2:])
        for k in range(features.shape[1]):
            expected += weights[k] * features[:, k]
        sex_term = model.head.sex_embedding(male.long()) @ weights[features.shape[1]:]
        prediction = model(image, male)
    assert result.method == "cam"
    assert torch.allclose(result.maps, expected, atol=1e-5)
    # exactness: spatial mean of the map + bias + sex term is the prediction
    assert torch.allclose(expected.mean(dim=(1, 2)) + model.head.fc[-1].bias + sex_term, prediction, atol=1e-5)
    assert torch.allclose(result.prediction, prediction, atol=1e-5)
    assert result.upsampled.shape == (2, 64, 64)


def test_grad_cam_of_a_linear_head_is_the_rectified_cam() -> None:
    torch.manual_seed(0)
    model = tiny().eval()
    image = torch.rand(2, 1, 64, 64)
    cam, gcam = linear_cam(model, image), grad_cam(model, image)
    h, w = cam.maps.shape[1:]
    assert torch.allclose(gcam.maps * h * w, cam.maps.clamp_min(0), atol=1e-5)


def test_grad_cam_with_frozen_backbone_restores_mode_and_flags() -> None:
    torch.manual_seed(0)
    model = tiny(head={"hidden": [64], "dropout": 0.2})
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    model.train()
    modes_before = [m.training for m in model.modules()]
    image = torch.rand(8, 1, 128, 128)
    result = class_activation_map(model, image)
    assert result.method == "grad_cam" and result.maps.shape == (8, 4, 4)
    assert torch.isfinite(result.maps).all() and result.maps.abs().sum() > 0
    assert [m.training for m in model.modules()] == modes_before
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    assert all(p.grad is None for p in model.parameters())


def test_normalise_and_overlay() -> None:
    maps = torch.tensor([[[0.0, 2.0], [4.0, 8.0]], [[-1.0, -1.0], [-1.0, 1.0]]])
    norm = normalise(maps)
    assert torch.allclose(norm.flatten(1).min(1).values, torch.zeros(2))
    assert torch.allclose(norm.flatten(1).max(1).values, torch.ones(2))
    rgb = overlay(torch.rand(8, 8).numpy(), torch.rand(8, 8).numpy())
    assert rgb.shape == (8, 8, 3) and rgb.dtype.name == "uint8"
