"""`model.blocks: auto`: block maps derived from timm's stage reductions cover every parameter once, keep the
paper backbones' stage order, refuse what they cannot cut, and drive the fine-tune modes and PTL."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from helpers.boneage_fixtures import loader, trainer_kwargs
from omegaconf import OmegaConf

from medal.boneage.module import BoneAgeModule
from medal.callbacks.finetune import set_trainable_stages, trainable_parameter_count
from medal.callbacks.paced import PacedTransferLearning
from medal.config import CONF_DIR
from medal.errors import MedalError
from medal.models.blocks import auto_block_map
from medal.models.regressor import build_regressor, create_backbone
from medal.models.stages import BACKBONE_BLOCKS, FIXED_MODES, STAGES

ORDER = ("stem", "entry", "middle", "exit")  # network order of the backbone blocks


def timm_cfg(timm_name: str, **overrides):
    cfg = OmegaConf.load(Path(CONF_DIR) / "model" / "timm.yaml")
    return OmegaConf.merge(cfg, {"timm_name": timm_name, **overrides})


def block_of_each_parameter(backbone: torch.nn.Module, block_map: dict[str, list[str]]) -> list[list[str]]:
    """For each parameter in network order, the blocks whose modules hold it (computed from the modules)."""
    ids = {id(p): i for i, p in enumerate(backbone.parameters())}
    owners: list[list[str]] = [[] for _ in ids]
    for block, prefixes in block_map.items():
        for prefix in prefixes:
            for p in backbone.get_submodule(prefix).parameters():
                owners[ids[id(p)]].append(block)
    return owners


@pytest.mark.parametrize("timm_name", ["test_resnet", "resnet18", "test_efficientnet", "mobilenetv3_small_050",
                                       "test_convnext", "legacy_xception", "xception41", "densenet121"])
def test_auto_covers_every_parameter_once_in_stage_order(timm_name: str) -> None:
    with torch.device("meta"):
        model = build_regressor(timm_cfg(timm_name))
    owners = block_of_each_parameter(model.backbone, model.block_map)
    assert all(len(o) == 1 for o in owners), [i for i, o in enumerate(owners) if len(o) != 1][:5]
    assert all(model.block_map[block] for block in BACKBONE_BLOCKS)  # four non-empty blocks
    ranks = [ORDER.index(o[0]) for o in owners]
    assert ranks == sorted(ranks) and ranks[0] == 0 and ranks[-1] == 3  # stem first, exit last, never back


def _first_last(backbone: torch.nn.Module, block_map: dict[str, list[str]]) -> list[tuple[int, int]]:
    """(index of the first, index of the last parameter) of each block, stem to exit."""
    owners = block_of_each_parameter(backbone, block_map)
    return [(min(i for i, o in enumerate(owners) if o == [b]), max(i for i, o in enumerate(owners) if o == [b]))
            for b in ORDER]


@pytest.mark.parametrize("name", ["xception", "inception_v3", "inception_resnet_v2"])
def test_auto_agrees_with_the_paper_backbones_maps_in_stage_order(name: str) -> None:
    hand = OmegaConf.load(Path(CONF_DIR) / "model" / f"{name}.yaml")
    with torch.device("meta"):
        backbone = create_backbone(hand.timm_name, int(hand.in_chans), pretrained=False)
    auto = auto_block_map(hand.timm_name, int(hand.in_chans))
    explicit = {b: list(hand.blocks[b]) for b in ORDER}
    hand_spans, auto_spans = _first_last(backbone, explicit), _first_last(backbone, auto)
    for spans in (hand_spans, auto_spans):  # blocks follow each other: each starts after the previous ends
        assert all(a[1] < b[0] for a, b in zip(spans, spans[1:], strict=False)), spans
    if name == "xception":
        # The one difference: block3 (Keras block4) downsamples to the middle flow's 19x19, so by reduction it
        # opens the middle block, where the paper's map ends the entry flow with it.
        assert auto["stem"] == explicit["stem"] and auto["exit"] == explicit["exit"]
        assert auto["entry"] == ["block2"] and explicit["entry"] == ["block2", "block3"]
        assert auto["middle"] == ["block3", *explicit["middle"]]
    else:
        assert auto == explicit


@pytest.mark.parametrize(("timm_name", "message"), [
    ("test_vit", r"^model.blocks=auto: test_vit holds parameter cls_token outside any module"),
    ("swin_tiny_patch4_window7_224", r"features are \(1, 7, 7, 768\), not \(batch, 768, h, w\)"),
])
def test_auto_refuses_backbones_it_cannot_cut(timm_name: str, message: str) -> None:
    with pytest.raises(MedalError, match=message) as err:
        auto_block_map(timm_name, 1)
    assert "\n" not in str(err.value)


def test_blocks_must_be_a_map_or_auto() -> None:
    with pytest.raises(MedalError, match=r"^model.blocks='automatic': give a map of module prefixes per block"):
        build_regressor(timm_cfg("test_resnet", blocks="automatic"))


def test_fixed_modes_train_more_with_each_stage_on_an_auto_map() -> None:
    model = build_regressor(timm_cfg("test_efficientnet"))
    counts = []
    for mode, n_stages in FIXED_MODES.items():
        set_trainable_stages(model, n_stages)
        counts.append(trainable_parameter_count(model))
        assert all(p.requires_grad == (i < n_stages) for i, stage in enumerate(STAGES)
                   for module in model.stage_modules(stage) for p in module.parameters()), mode
    assert counts == sorted(set(counts)) and counts[-1] == sum(p.numel() for p in model.parameters())


def test_ptl_unfreezes_the_auto_blocks_from_the_top(tmp_path: Path, one_thread) -> None:
    pl.seed_everything(0)
    module = BoneAgeModule(OmegaConf.to_container(timm_cfg("test_efficientnet")), target_shift=120.0, target_scale=60.0,
                           loss="l1", optimizer={"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3},
                           scheduler=None, channels_last=False)
    stem_before = module.model.backbone.conv_stem.weight.detach().clone()
    ptl = PacedTransferLearning(max_epochs_per_stage=1, lrs=[1e-3] * 4)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=5, callbacks=[ptl]))
    trainer.fit(module, loader(n=16, size=32))
    assert ptl.stage == len(STAGES) - 1 and ptl.transitions == [1, 2, 3, 4]  # exit, middle, entry, stem in turn
    assert not torch.equal(module.model.backbone.conv_stem.weight, stem_before)  # the stem trained last
