"""Class activation maps of the bone age regressor (paper 2.5, Figure 13).

For the paper's head (GAP + one linear layer) the prediction is the spatial mean of
`sum_k w_k F_k(x, y)` plus a constant, so that weighted sum is the exact CAM (Zhou et al. 2016). A head
with hidden layers is not linear in the feature maps; there we use Grad-CAM (Selvaraju et al. 2017),
taking gradients through the input so it works even when every backbone weight is frozen.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F

from medal.models.regressor import BoneAgeRegressor


@contextlib.contextmanager
def evaluation_state(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode inside; the model's train/eval mode and every requires_grad flag restored afterwards."""
    modes = {m: m.training for m in model.modules()}
    flags = {p: p.requires_grad for p in model.parameters()}
    model.eval()
    try:
        yield
    finally:
        for module, mode in modes.items():
            module.training = mode
        for param, flag in flags.items():
            param.requires_grad_(flag)


@dataclass
class CamResult:
    """Maps at feature resolution (B, h, w), upsampled maps (B, H, W), scaled predictions (B,), the method."""

    maps: torch.Tensor
    upsampled: torch.Tensor
    prediction: torch.Tensor
    method: str


def linear_cam(model: BoneAgeRegressor, image: torch.Tensor, male: torch.Tensor | None = None) -> CamResult:
    """Exact CAM of a linear head: `sum_k w_k F_k(x, y)` (its spatial mean + bias = the prediction)."""
    if not model.head.is_linear:
        raise ValueError("linear_cam needs a head without hidden layers; use grad_cam")
    with evaluation_state(model), torch.no_grad():
        features = model.features(image.float())
    return cam_of_features(model, features, male, image.shape[-2:])


def grad_cam(model: BoneAgeRegressor, image: torch.Tensor, male: torch.Tensor | None = None) -> CamResult:
    """Grad-CAM: ReLU(sum_k a_k F_k) with a_k the spatial mean of d prediction / d F_k."""
    with evaluation_state(model), torch.no_grad():
        features = model.features(image.float())
    return cam_of_features(model, features, male, image.shape[-2:], gradient=True)


def cam_of_features(model: BoneAgeRegressor, features: torch.Tensor, male: torch.Tensor | None,
                    size: tuple[int, int] | torch.Size, gradient: bool | None = None) -> CamResult:
    """The CAM of images whose last feature maps are already computed: `medal predict` takes them from the
    forward pass that gave the estimate, so CAM costs no second pass through the backbone.

    Args:
        features: (B, C, h, w) the backbone's last feature maps (any float dtype; computed in float32 here).
        male: (B,) 1.0 / 0.0 for a head with a sex input, else None.
        size: (H, W) of the images, for the upsampled maps.
        gradient: Grad-CAM (True), the exact CAM (False), or the exact one where the head is linear (None).
            Grad-CAM's weights are d prediction / d F_k: the head alone gives them, backbone weights frozen or not.
    """
    gradient = not model.head.is_linear if gradient is None else gradient
    features = features.detach().float().clone()  # a normal tensor, even from an inference-mode pass
    with evaluation_state(model):
        if not gradient:
            with torch.no_grad():
                weight = model.head.output_layer.weight[0, : features.shape[1]].float()
                maps = torch.einsum("c,bchw->bhw", weight, features)
                prediction = model.head(features, male).float()
            return CamResult(maps, upsample(maps, size), prediction, "cam")
        with torch.enable_grad():
            features.requires_grad_(True)
            prediction = model.head(features, male).float()
            (gradients,) = torch.autograd.grad(prediction.sum(), features)
        weights = gradients.mean(dim=(2, 3), keepdim=True)
        maps = F.relu((weights * features.detach()).sum(dim=1))
    return CamResult(maps, upsample(maps, size), prediction.detach(), "grad_cam")


def class_activation_map(model: BoneAgeRegressor, image: torch.Tensor,
                         male: torch.Tensor | None = None) -> CamResult:
    """CAM for a linear head (exact), Grad-CAM otherwise."""
    return linear_cam(model, image, male) if model.head.is_linear else grad_cam(model, image, male)


def upsample(maps: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """(B, h, w) maps at feature resolution to (B, *size), bilinearly, as CAM maps are shown and scored."""
    return F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Each map to [0, 1] (min-max per image), so maps of different images can be averaged and shown.

    Args:
        maps: (B, H, W) any real values. A constant map becomes all zeros (no division by zero).

    Examples:
        >>> normalise(torch.tensor([[[0.0, 2.0], [4.0, 8.0]], [[3.0, 3.0], [3.0, 3.0]]]))
        tensor([[[0.0000, 0.2500],
                 [0.5000, 1.0000]],
        <BLANKLINE>
                [[0.0000, 0.0000],
                 [0.0000, 0.0000]]])
    """
    flat = maps.flatten(1)
    low, high = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    return ((flat - low) / (high - low).clamp_min(1e-12)).view_as(maps)


@cache
def _colours(colormap: str) -> np.ndarray:
    """The colormap's lookup table (N, 3) as float32 RGB in [0, 1], built once per name."""
    from matplotlib import colormaps

    table = colormaps[colormap]
    return table(np.arange(table.N))[:, :3].astype(np.float32)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45, colormap: str = "jet") -> np.ndarray:
    """RGB uint8 of a [0, 1] grey image (H, W) with a [0, 1] heat map (H, W) blended on top.

    The colours are matplotlib's (a value x takes entry floor(x * N) of the N-entry table, 1.0 the last), looked
    up in a table kept per colormap and blended in float32: `medal predict` draws one per image.

    Examples:
        >>> overlay(np.zeros((1, 2)), np.array([[0.0, 1.0]])).tolist()  # jet's dark blue and dark red, 45 %
        [[[0, 0, 57], [57, 0, 0]]]
    """
    table = _colours(colormap)
    index = np.minimum((np.clip(heat, 0, 1) * len(table)).astype(np.intp), len(table) - 1)
    grey = np.clip(image, 0, 1).astype(np.float32)[..., None]
    return np.rint(255 * ((1 - alpha) * grey + alpha * table[index])).astype(np.uint8)
