"""Bone age regressor: a timm backbone, a GAP + FC head, and a block map naming the fine-tuning stages.

The block map (from the model's YAML) assigns every backbone parameter to exactly one of `stem`, `entry`,
`middle`, `exit`, so fine-tune modes and paced transfer learning work on any backbone by config alone.
A BatchNorm whose parameters are frozen stays in eval mode whatever `.train()` is called with: frozen
blocks keep their (ImageNet) running statistics, as a Keras layer with `trainable=False` does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from omegaconf import DictConfig
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from medal.config import options_from
from medal.errors import MedalError
from medal.models.stages import BACKBONE_BLOCKS, STAGES

log = logging.getLogger("medal.boneage")


def _under(name: str, prefix: str) -> bool:
    """True when parameter `name` lies in module `prefix` (`block1` holds `block1.x`, not `block10.x`)."""
    return name == prefix or name.startswith(prefix + ".")


def resolve_block_map(backbone: nn.Module, block_map: Mapping[str, Sequence[str]], model_name: str = "") -> None:
    """Check that the block map covers every backbone parameter exactly once; raise a one-line MedalError."""
    where = f"model.blocks of {model_name or type(backbone).__name__}"
    unknown = sorted(set(block_map) - set(BACKBONE_BLOCKS))
    if unknown:
        raise MedalError(f"{where}: unknown block {unknown[0]!r}; use {', '.join(BACKBONE_BLOCKS)}")
    modules = dict(backbone.named_modules())
    for block, prefixes in block_map.items():
        for prefix in prefixes:
            if prefix not in modules:
                raise MedalError(f"{where}.{block}: {prefix!r} is not a module of the backbone; "
                                 f"top-level modules are {', '.join(n for n, _ in backbone.named_children())}")
    unmapped, duplicated = [], []
    for name, _ in backbone.named_parameters():
        owners = [b for b, prefixes in block_map.items() for p in prefixes if _under(name, p)]
        if not owners:
            unmapped.append(name)
        elif len(owners) > 1:
            duplicated.append(f"{name} ({'+'.join(owners)})")
    if unmapped or duplicated:
        parts = []
        if unmapped:
            parts.append(f"{len(unmapped)} parameter(s) in no block, e.g. {', '.join(unmapped[:3])}")
        if duplicated:
            parts.append(f"{len(duplicated)} in several blocks, e.g. {', '.join(duplicated[:3])}")
        raise MedalError(f"{where}: {'; '.join(parts)} — list each module prefix under exactly one block")


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


def _adapt_first_conv(backbone: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Sum RGB filters into the grey-level first conv, as timm does for pretrained in_chans=1."""
    from timm.models import adapt_input_conv

    key = f"{backbone.pretrained_cfg.get('first_conv', '')}.weight"
    own = backbone.state_dict().get(key)
    if key in state and own is not None and state[key].shape[1] != own.shape[1]:
        state[key] = adapt_input_conv(own.shape[1], state[key])


def load_weights(model: BoneAgeRegressor, path: str | Path) -> None:
    """Load a local checkpoint: a whole regressor (Lightning `.ckpt` or its state dict) or a timm backbone."""
    from timm.models import load_state_dict

    path = Path(path).expanduser()
    if not path.is_file():
        raise MedalError(f"model.weights={path}: no such file; give a timm/safetensors/Lightning checkpoint")
    try:
        state = load_state_dict(str(path), use_ema=False, weights_only=True)
    except Exception as err:
        raise MedalError(f"model.weights={path}: cannot read it ({type(err).__name__}: {err})") from None
    for prefix in ("model.", ""):
        if any(k.startswith(prefix + "backbone.") for k in state):
            own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            missing, unexpected = model.load_state_dict(own, strict=False)
            if missing or unexpected:
                raise MedalError(f"model.weights={path}: regressor checkpoint does not match model "
                                 f"(missing {missing[:2]}, unexpected {unexpected[:2]}); same model= config?")
            log.info("loaded regressor weights from %s", path)
            return
    _adapt_first_conv(model.backbone, state)
    classifier = str(model.backbone.pretrained_cfg.get("classifier", "fc"))
    backbone_state = {k: v for k, v in state.items() if not _under(k, classifier)}
    missing, unexpected = model.backbone.load_state_dict(backbone_state, strict=False)
    if missing or unexpected:
        raise MedalError(f"model.weights={path}: not a checkpoint of this backbone "
                         f"(missing {missing[:2]}, unexpected {unexpected[:2]}); check model.timm_name")
    log.info("loaded backbone weights from %s (head stays freshly initialised)", path)


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
    blocks: dict[str, list[str]]
    # Further `timm.create_model` arguments, e.g. {output_stride: 16} for a CAM twice as fine. The one key a
    # model YAML may leave out: most architectures need none.
    timm_kwargs: dict[str, Any] = field(default_factory=dict)


def build_regressor(model_cfg: DictConfig | Mapping[str, Any]) -> BoneAgeRegressor:
    """The regressor of a `model=` config: backbone, validated block map, head, optional local weights."""
    opts = options_from(ModelOptions, model_cfg, "model")
    head_opts = options_from(HeadOptions, opts.head, "model.head")
    backbone = create_backbone(opts.timm_name, int(opts.in_chans), bool(opts.pretrained), opts.timm_kwargs)
    block_map = dict(opts.blocks)
    resolve_block_map(backbone, block_map, opts.timm_name)
    head = RegressionHead(backbone.num_features, hidden=list(head_opts.hidden), dropout=float(head_opts.dropout),
                          sex_input=bool(opts.sex_input), sex_dim=int(head_opts.sex_dim))
    # timm's own normalisation of the backbone (its pretrained_cfg is timm's dict, not medal config)
    pcfg = getattr(backbone, "pretrained_cfg", {}) or {}
    mean = sum(pcfg.get("mean", (0.5,))) / len(pcfg.get("mean", (0.5,)))
    std = sum(pcfg.get("std", (0.5,))) / len(pcfg.get("std", (0.5,)))
    model = BoneAgeRegressor(backbone, block_map, head, mean=mean, std=std)
    if opts.weights:
        load_weights(model, opts.weights)
    return model
