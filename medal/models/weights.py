"""Local weights for a regressor (`model.weights=PATH`) and the backbone files `medal pretrain` writes.

What `model.weights` loads, never by unpickling (`weights_only=True`, or safetensors):
- a whole regressor: a Lightning `.ckpt` of `medal boneage` or its state dict (keys `[model.]backbone.*`);
- a timm backbone: a timm / safetensors checkpoint of the same architecture; an RGB first conv is summed
  to grey as timm does, a classifier is dropped;
- a medal backbone (`save_backbone`, `medal pretrain`'s `backbone.safetensors`): the timm backbone's state
  dict without classifier, plus metadata naming the architecture, so a file made for another backbone is
  refused by name before any tensor is compared.

Every backbone tensor must be loaded: a missing, unexpected or differently shaped key is one MedalError
line naming it, so weights are never silently ignored.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from medal.atomic import atomic_path
from medal.errors import MedalError
from medal.models.blocks import under

if TYPE_CHECKING:
    from medal.models.regressor import BoneAgeRegressor

log = logging.getLogger("medal.boneage")

BACKBONE_FORMAT = "medal-backbone/1"  # `format` in a medal backbone file's safetensors metadata


def save_backbone(backbone: nn.Module, path: str | Path, timm_name: str, **metadata: str) -> Path:
    """Write `backbone`'s state dict as safetensors (atomically), with `format`, `timm_name`, `in_chans`
    and any extra string `metadata` (the method that trained it, its run) in the file's header."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous() for k, v in backbone.state_dict().items()}
    first_conv = f"{backbone.pretrained_cfg.get('first_conv', '')}.weight"
    in_chans = state[first_conv].shape[1] if first_conv in state else ""
    header = {"format": BACKBONE_FORMAT, "timm_name": timm_name, "in_chans": str(in_chans),
              **{k: str(v) for k, v in metadata.items()}}
    umask = os.umask(0)
    os.umask(umask)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=header)
        tmp.chmod(0o666 & ~umask)  # safetensors creates the file owner-only; a backbone is made to be shared
    return Path(path)


def backbone_metadata(path: str | Path) -> dict[str, str]:
    """The header metadata of a medal backbone file; {} for any other file (other safetensors, .pth, .ckpt)."""
    if Path(path).suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    return metadata if metadata.get("format") == BACKBONE_FORMAT else {}


def _adapt_first_conv(backbone: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Sum RGB filters into the grey-level first conv, as timm does for pretrained in_chans=1."""
    from timm.models import adapt_input_conv

    key = f"{backbone.pretrained_cfg.get('first_conv', '')}.weight"
    own = backbone.state_dict().get(key)
    if key in state and own is not None and state[key].shape[1] != own.shape[1]:
        state[key] = adapt_input_conv(own.shape[1], state[key])


def _load_all(module: nn.Module, state: dict[str, torch.Tensor], where: str, mismatch: str) -> None:
    """Load every tensor of `module` from `state`, or raise one line: the keys one side lacks (`mismatch`
    says what that means and what to check), else the first tensor whose shape differs."""
    own = module.state_dict()
    missing, unexpected = [k for k in own if k not in state], [k for k in state if k not in own]
    if missing or unexpected:
        raise MedalError(f"{where}: {mismatch} (missing {missing[:2]}, unexpected {unexpected[:2]})")
    for key, value in state.items():
        if tuple(own[key].shape) != tuple(value.shape):
            raise MedalError(f"{where}: {key} is {tuple(value.shape)} in the file but {tuple(own[key].shape)} "
                             "in the model; the file was made for another width or input (check model.timm_name)")
    module.load_state_dict(state)


def load_weights(model: BoneAgeRegressor, path: str | Path, timm_name: str) -> None:
    """Load a local checkpoint into `model` (see the module docstring for what it accepts)."""
    from timm.models import load_state_dict

    path = Path(path).expanduser()
    where = f"model.weights={path}"
    if not path.is_file():
        raise MedalError(f"{where}: no such file; give a timm/safetensors/Lightning checkpoint")
    try:
        metadata = backbone_metadata(path)
        state = load_state_dict(str(path), use_ema=False, weights_only=True)
    except Exception as err:
        raise MedalError(f"{where}: cannot read it ({type(err).__name__}: {err})") from None
    made_for = metadata.get("timm_name")
    if made_for is not None and made_for != timm_name:
        raise MedalError(f"{where}: a backbone of {made_for} (written by medal {metadata.get('method', '')}), "
                         f"but model.timm_name={timm_name}; use the model= config it was trained with")
    for prefix in ("model.", ""):
        if any(k.startswith(prefix + "backbone.") for k in state):
            own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            _load_all(model, own, where, "regressor checkpoint does not match model; same model= config?")
            log.info("loaded regressor weights from %s", path)
            return
    _adapt_first_conv(model.backbone, state)
    classifier = str(model.backbone.pretrained_cfg.get("classifier", "fc"))
    backbone_state = {k: v for k, v in state.items() if not under(k, classifier)}
    _load_all(model.backbone, backbone_state, where, "not a checkpoint of this backbone; check model.timm_name")
    log.info("loaded backbone weights from %s (head stays freshly initialised)", path)
