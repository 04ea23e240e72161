"""Block maps: which backbone modules make up each fine-tuning block (`stem`, `entry`, `middle`, `exit`).

A map is `{block: [module prefix, ...]}` and must cover every backbone parameter exactly once
(`resolve_block_map` checks it and says in one line what to change). The paper's backbones carry maps
written by hand in `conf/model/<name>.yaml`, cut where the paper cuts Xception's flows; `model.blocks: auto`
derives one for any timm CNN (`auto_block_map`):

1. *Units*, in network order: the backbone's children, descending into plain containers (`Sequential`,
   `ModuleList`, `ModuleDict`) that hold one of the stage modules timm's `feature_info` names, so an
   EfficientNet's `blocks.3` or a ConvNeXt's `stages.2` is a unit and a residual block is never split.
2. Each unit's output size, measured by a shape-only forward pass on the `meta` device (no weights, no
   compute) at the architecture's design size: the stage *reductions* as they really are, whatever
   module timm taps them at. A unit that `forward_features` never runs (a MobileNet-V3 `conv_head`) takes
   the size of the unit before it.
3. Blocks by reduction, from the top: `exit` = the units at the smallest feature map (stride 32),
   `middle` = the next size (16), `entry` = the next (8), `stem` = everything before (stride <= 4).

On the paper's backbones this reproduces the hand-written Inception maps exactly; on Xception it puts
`block3` (Keras block4, the entry flow's last downsampling block, which outputs the middle flow's 19x19) in
the middle block where the paper's map keeps it in the entry flow. The explicit maps stay, and a test keeps
`auto` in the same stage order as them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from medal.errors import MedalError
from medal.models.stages import BACKBONE_BLOCKS

AUTO = "auto"  # `model.blocks: auto`
CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def under(name: str, prefix: str) -> bool:
    """True when parameter `name` lies in module `prefix` (`block1` holds `block1.x`, not `block10.x`).

    Examples:
        >>> under("block1.conv.weight", "block1"), under("block10.conv.weight", "block1")
        (True, False)
    """
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
        owners = [b for b, prefixes in block_map.items() for p in prefixes if under(name, p)]
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


def block_units(backbone: nn.Module, stage_modules: Sequence[str], model_name: str) -> list[str]:
    """Module paths in network (registration) order that together hold every parameter of `backbone`.

    Plain containers that hold one of `stage_modules` (timm's `feature_info` names) are opened; any other
    module is one unit. A parameter held directly by the backbone or by an opened container (a ViT's
    `cls_token`) belongs to no module prefix, so it is refused.
    """

    def walk(module: nn.Module, prefix: str) -> list[str]:
        own = [name for name, _ in module.named_parameters(recurse=False)]
        if own:
            raise MedalError(f"model.blocks=auto: {model_name} holds parameter {prefix}{own[0]} outside any "
                             "module, which a block map cannot name; write model.blocks by hand")
        units = []
        for name, child in module.named_children():
            path = prefix + name
            if isinstance(child, CONTAINERS) and any(s.startswith(path + ".") for s in stage_modules):
                units += walk(child, path + ".")
            else:
                units.append(path)
        return units

    return walk(backbone, "")


def _output_sizes(backbone: nn.Module, units: Sequence[str], size: tuple[int, int], in_chans: int,
                  model_name: str) -> dict[str, tuple[int, int]]:
    """Spatial size (h, w) of each unit's output in one shape-only forward pass (meta tensors).

    Units whose output is not a (B, C, h, w) tensor, or that `forward_features` does not run, are absent.
    Raises a MedalError when the backbone's own output is not (B, num_features, h, w): the regressor's
    pooling head needs channel-first maps (a Swin's are channel-last, a ViT's are tokens).
    """
    sizes: dict[str, tuple[int, int]] = {}

    def record(unit: str):
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            if torch.is_tensor(output) and output.dim() == 4:
                sizes[unit] = (int(output.shape[-2]), int(output.shape[-1]))
        return hook

    handles = [backbone.get_submodule(u).register_forward_hook(record(u)) for u in units]
    try:
        with torch.no_grad():
            out = backbone.forward_features(torch.empty(1, in_chans, *size, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    channels = getattr(backbone, "num_features", None)
    if not (torch.is_tensor(out) and out.dim() == 4 and out.shape[1] == channels):
        shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise MedalError(f"model.blocks=auto: {model_name}'s features are {shape}, not (batch, {channels}, h, w); "
                         "medal's regressor needs a CNN backbone with channel-first feature maps")
    return sizes


def auto_block_map(timm_name: str, in_chans: int) -> dict[str, list[str]]:
    """The block map of timm model `timm_name` by its stage reductions (see the module docstring).

    Every block is non-empty and every parameter is in exactly one block. A backbone whose feature maps
    take fewer than four sizes (nothing to cut into four blocks), or whose sizes grow again, is refused in
    one line asking for a hand-written map.
    """
    from medal.models.regressor import create_backbone

    with torch.device("meta"):  # names and shapes only: no weight initialisation, no arithmetic
        backbone = create_backbone(timm_name, in_chans, pretrained=False)
    stage_modules = [str(info["module"]) for info in getattr(backbone, "feature_info", None) or []]
    if not stage_modules:
        raise MedalError(f"model.blocks=auto: {timm_name} has no timm feature_info; write model.blocks by hand")
    units = [u for u in block_units(backbone, stage_modules, timm_name)
             if any(True for _ in backbone.get_submodule(u).parameters())]
    design = tuple(int(s) for s in backbone.pretrained_cfg["input_size"][-2:])
    measured = _output_sizes(backbone.eval(), units, design, in_chans, timm_name)
    widths, current = [], design[1]
    for unit in units:  # a unit forward_features skips keeps the size of the unit before it
        current = measured[unit][1] if unit in measured else current
        widths.append(current)
    if any(b > a for a, b in zip(widths, widths[1:], strict=False)):
        grows = next(u for u, a, b in zip(units[1:], widths, widths[1:], strict=False) if b > a)
        raise MedalError(f"model.blocks=auto: {timm_name}'s feature maps grow again at {grows}; "
                         "write model.blocks by hand")
    levels = sorted(set(widths))  # smallest map first: exit, middle, entry, then the stem's sizes
    if len(levels) < len(BACKBONE_BLOCKS):
        raise MedalError(f"model.blocks=auto: {timm_name}'s feature maps take only {len(levels)} size(s) "
                         f"({', '.join(f'{w} px' for w in reversed(levels))} at {design[1]} px input); four blocks "
                         "need four; write model.blocks by hand")
    top_down = ("exit", "middle", "entry")
    block_of = {width: top_down[i] if i < len(top_down) else "stem" for i, width in enumerate(levels)}
    blocks: dict[str, list[str]] = {block: [] for block in BACKBONE_BLOCKS}
    for unit, width in zip(units, widths, strict=True):
        blocks[block_of[width]].append(unit)
    return {block: blocks[block] for block in reversed(BACKBONE_BLOCKS)}  # stem first, as the YAML maps are
