"""Bone age regressor: a timm backbone, a GAP + FC head, and a block map naming the fine-tuning stages.

The block map (from the model's YAML, or `auto`: derived from timm's stage reductions, `models/blocks.py`)
assigns every backbone parameter to exactly one of `stem`, `entry`, `middle`, `exit`, so fine-tune modes and
paced transfer learning work on any backbone by config alone. Local weights: `models/weights.py`.
A BatchNorm whose parameters are frozen stays in eval mode whatever `.train()` is called with: frozen
blocks keep their (ImageNet) running statistics, as a Keras layer with `trainable=False` does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import timm
import torch
from omegaconf import DictConfig
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from medal.config import options_from
from medal.errors import MedalError
from medal.models.blocks import AUTO, auto_block_map, resolve_block_map
from medal.models.stages import BACKBONE_BLOCKS, STAGES
from medal.models.weights import load_weights

log = logging.getLogger("medal.boneage")


class RegressionHead(nn.Module):
    """Global average pooling, optional sex embedding, FC layers (ReLU, dropout) to one output.

    With no hidden layers the output is linear in the pooled features, which makes CAM exact.
    """

    def __init__(self, in_features: int, hidden: Sequence[int] = (), dropout: float = 0.0,
                 sex_input: bool = False, sex_dim: int = 16):
        super().__init__()
        self.sex_embedding = nn.Embedding(2, sex_dim) if sex_input else None
        width = in_features + (sex_dim if sex_input else 0)
        layers: list[nn.Module] = []
        for size in hidden:
            layers += [nn.Dropout(dropout), nn.Linear(width, int(size)), nn.ReLU(inplace=True)]
            width = int(size)
        layers += [nn.Dropout(dropout), nn.Linear(width, 1)]
        self.fc = nn.Sequential(*layers)

    @property
    def is_linear(self) -> bool:
        return sum(isinstance(m, nn.Linear) for m in self.fc) == 1

    @property
    def output_layer(self) -> nn.Linear:
        return self.fc[-1]

    def forward(self, features: torch.Tensor, male: torch.Tensor | None = None) -> torch.Tensor:
        pooled = features.mean(dim=(2, 3))
        if self.sex_embedding is not None:
            if male is None:
                raise MedalError("model.sex_input=true but the batch has no `male` entry")
            pooled = torch.cat([pooled, self.sex_embedding(male.long()).to(pooled.dtype)], dim=1)
        return self.fc(pooled).squeeze(1)


class BoneAgeRegressor(nn.Module):
    """Backbone (features) + head, with the fine-tuning stages of the block map."""

    def __init__(self, backbone: nn.Module, block_map: Mapping[str, Sequence[str]], head: RegressionHead,
                 mean: float = 0.5, std: float = 0.5):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.block_map = {b: list(block_map.get(b, [])) for b in BACKBONE_BLOCKS}
        self.register_buffer("input_mean", torch.tensor(float(mean)), persistent=False)
        self.register_buffer("input_std", torch.tensor(float(std)), persistent=False)

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """Last feature maps (B, C, h, w) of a [0, 1] image batch."""
        return self.backbone.forward_features((image - self.input_mean) / self.input_std)

    def forward(self, image: torch.Tensor, male: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled bone age prediction (B,)."""
        return self.head(self.features(image), male)

    def stage_modules(self, stage: str) -> list[nn.Module]:
        """The modules of one fine-tuning stage (`head` or a backbone block)."""
        if stage == "head":
            return [self.head]
        if stage not in self.block_map:
            raise MedalError(f"unknown fine-tuning stage {stage!r}; use {', '.join(STAGES)}")
        return [self.backbone.get_submodule(prefix) for prefix in self.block_map[stage]]

    def train(self, mode: bool = True) -> BoneAgeRegressor:
        super().train(mode)
        if mode:
            for module in self.modules():
                if isinstance(module, _BatchNorm) and module.weight is not None and not module.weight.requires_grad:
                    module.eval()
        return self


def create_backbone(name: str, in_chans: int, pretrained: bool, extra: Mapping[str, Any] | None = None) -> nn.Module:
    """timm feature extractor (no classifier, no pooling); a failed download becomes a clear MedalError.

    `extra` are further `timm.create_model` arguments (`model.timm_kwargs`, e.g. `output_stride: 16`).
    """
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0, global_pool="", in_chans=in_chans,
                                 **dict(extra or {}))
    except TypeError as err:
        raise MedalError(f"model.timm_kwargs={dict(extra or {})}: {name} does not take them ({err})") from None
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise MedalError(f"model.timm_name={name!r}: timm has no such model (see timm.list_models())") from None
        if not pretrained:
            raise
        raise _download_error(name, err) from None
    except Exception as err:  # network errors come from urllib, requests and huggingface_hub alike
        if not pretrained:
            raise
        raise _download_error(name, err) from None


def _download_error(name: str, err: BaseException) -> MedalError:
    return MedalError(f"model.pretrained=true: could not download the ImageNet weights of {name} "
                      f"({type(err).__name__}); downloads are impossible without network access — set "
                      f"model.pretrained=false model.weights=PATH to a local timm/safetensors/Lightning checkpoint")


@dataclass(frozen=True)
class HeadOptions:
    """`model.head`: FC widths before the output (`[]` keeps the head linear, so CAM is exact), dropout, and
    the width of the sex embedding (used when `model.sex_input` is true)."""

    hidden: list[int]
    dropout: float
    sex_dim: int


@dataclass(frozen=True)
class ModelOptions:
    """A `model=` config (`conf/model/<name>.yaml`). Every key is required: the YAML is the one place the
    settings live, so a renamed or misspelt key fails in one line instead of falling back to a default."""

    name: str
    timm_name: str
    in_chans: int
    pretrained: bool
    weights: str | None  # a local timm / safetensors / Lightning checkpoint, or null
    sex_input: bool
    image_size: int  # the input size the architecture was designed for (a hint for data.image_size)
    head: dict[str, Any]
    blocks: dict[str, list[str]] | str  # module prefixes per block, or "auto" (derived, medal.models.blocks)
    # Further `timm.create_model` arguments, e.g. {output_stride: 16} for a CAM twice as fine. The one key a
    # model YAML may leave out: most architectures need none.
    timm_kwargs: dict[str, Any] = field(default_factory=dict)


def block_map_of(opts: ModelOptions) -> dict[str, list[str]]:
    """`model.blocks` as a map: the YAML's own, or derived from the timm architecture when it says `auto`.

    `auto` reads the stage modules of the architecture without `timm_kwargs`: an output stride dilates stages
    but does not rename or regroup their modules, so the map is the same."""
    if isinstance(opts.blocks, str):
        if opts.blocks != AUTO:
            raise MedalError(f"model.blocks={opts.blocks!r}: give a map of module prefixes per block or {AUTO!r}")
        derived = auto_block_map(opts.timm_name, int(opts.in_chans), opts.timm_kwargs)
        log.info("model.blocks=auto for %s: %s", opts.timm_name,
                 "; ".join(f"{block}: {', '.join(units)}" for block, units in derived.items()))
        return derived
    return {str(block): list(units) for block, units in opts.blocks.items()}


def build_regressor(model_cfg: DictConfig | Mapping[str, Any]) -> BoneAgeRegressor:
    """The regressor of a `model=` config: backbone, validated block map, head, optional local weights."""
    opts = options_from(ModelOptions, model_cfg, "model")
    head_opts = options_from(HeadOptions, opts.head, "model.head")
    backbone = create_backbone(opts.timm_name, int(opts.in_chans), bool(opts.pretrained), opts.timm_kwargs)
    block_map = block_map_of(opts)
    resolve_block_map(backbone, block_map, opts.timm_name)
    head = RegressionHead(backbone.num_features, hidden=list(head_opts.hidden), dropout=float(head_opts.dropout),
                          sex_input=bool(opts.sex_input), sex_dim=int(head_opts.sex_dim))
    # timm's own normalisation of the backbone (its pretrained_cfg is timm's dict, not medal config)
    pcfg = getattr(backbone, "pretrained_cfg", {}) or {}
    mean = sum(pcfg.get("mean", (0.5,))) / len(pcfg.get("mean", (0.5,)))
    std = sum(pcfg.get("std", (0.5,))) / len(pcfg.get("std", (0.5,)))
    model = BoneAgeRegressor(backbone, block_map, head, mean=mean, std=std)
    if opts.weights:
        load_weights(model, opts.weights, opts.timm_name)
    return model
