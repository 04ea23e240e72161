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
        features = model.features(image.float()).float()
        weight = model.head.output_layer.weight[0, : features.shape[1]].float()
        maps = torch.einsum("c,bchw->bhw", weight, features)
        prediction = model.head(features, male).float()
    return CamResult(maps, upsample(maps, image.shape[-2:]), prediction, "cam")


def grad_cam(model: BoneAgeRegressor, image: torch.Tensor, male: torch.Tensor | None = None) -> CamResult:
    """Grad-CAM: ReLU(sum_k a_k F_k) with a_k the spatial mean of d prediction / d F_k."""
    with evaluation_state(model), torch.enable_grad():
        probe = image.detach().float().clone().requires_grad_(True)  # builds the graph through frozen layers
        features = model.features(probe).float()
        prediction = model.head(features, male).float()
        (gradients,) = torch.autograd.grad(prediction.sum(), features)
        weights = gradients.mean(dim=(2, 3), keepdim=True)
        maps = F.relu((weights * features).sum(dim=1)).detach()
    return CamResult(maps, upsample(maps, image.shape[-2:]), prediction.detach(), "grad_cam")


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


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45, colormap: str = "jet") -> np.ndarray:
    """RGB uint8 of a [0, 1] grey image with a [0, 1] heat map blended on top."""
    from matplotlib import colormaps

    grey = np.repeat(np.clip(image, 0, 1)[..., None], 3, axis=2)
    colour = colormaps[colormap](np.clip(heat, 0, 1))[..., :3]
    return (255 * ((1 - alpha) * grey + alpha * colour)).round().astype(np.uint8)
