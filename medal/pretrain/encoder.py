"""The part of a bone age regressor that pretraining trains: backbone + input normalisation + pooling.

Pretraining must see images exactly as the target regressor will, or the weights it hands over meet other
inputs: so the encoder is cut out of a `BoneAgeRegressor` built from the same `model=` config (same timm
backbone, same normalisation, same global average pooling) rather than assembled anew. Its backbone's
state dict is what `medal pretrain` saves and `model.weights` loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from medal.models.regressor import BoneAgeRegressor, build_regressor


class Encoder(nn.Module):
    """(B, C, H, W) images in [0, 1] -> (B, D) pooled backbone features, D = `num_features`."""

    def __init__(self, regressor: BoneAgeRegressor) -> None:
        super().__init__()
        self.backbone = regressor.backbone
        self.mean, self.std = float(regressor.input_mean), float(regressor.input_std)

    @property
    def num_features(self) -> int:
        return int(self.backbone.num_features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features((images - self.mean) / self.std).mean(dim=(2, 3))


def build_encoder(model_cfg: Mapping[str, Any]) -> Encoder:
    """The encoder of a `model=` config (block map checked, `model.weights` loaded when given)."""
    return Encoder(build_regressor(model_cfg))
