"""Regressor: block maps cover each backbone exactly once, head shapes, weights loading, download errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from medal.config import CONF_DIR
from medal.errors import MedalError
from medal.models.regressor import build_regressor, resolve_block_map
from medal.models.stages import BACKBONE_BLOCKS


def model_cfg(name: str, **overrides):
    cfg = OmegaConf.load(Path(CONF_DIR) / "model" / f"{name}.yaml")
    return OmegaConf.merge(cfg, overrides)


@pytest.mark.parametrize("name", ["tiny", "xception", "inception_v3", "inception_resnet_v2"])
def test_block_map_covers_every_parameter_once(name: str) -> None:
    with torch.device("meta"):  # names and shapes only: skips weight initialisation
        model = build_regressor(model_cfg(name))
    owners: dict[str, list[str]] = {n: [] for n, _ in model.backbone.named_parameters()}
    for block in BACKBONE_BLOCKS:
        for module in model.stage_modules(block):
            for p in module.parameters():
                owners[_name_of(model.backbone, p)].append(block)
    assert all(len(blocks) == 1 for blocks in owners.values()), {n: b for n, b in owners.items() if len(b) != 1}
    assert all(model.stage_modules(block) for block in BACKBONE_BLOCKS)


def _name_of(module: torch.nn.Module, param: torch.Tensor) -> str:
    return next(n for n, p in module.named_parameters() if p is param)


def test_xception_blocks_follow_the_reference_stage_starts() -> None:
    blocks = model_cfg("xception").blocks
    assert blocks.exit[0] == "block12" and "conv4" in blocks.exit  # Keras block13-14
    assert blocks.middle[0] == "block4" and blocks.middle[-1] == "block11"  # Keras block5-12 (8 blocks)
    assert blocks.entry == ["block2", "block3"] and "block1" in blocks.stem  # Keras block3-4; stem = block1-2


def test_broken_block_map_names_the_unmapped_and_duplicated_parameters() -> None:
    model = build_regressor(model_cfg("tiny"))
    with pytest.raises(MedalError, match=r"in no block, e\.g\. layer4") as err:
        resolve_block_map(model.backbone, {"stem": ["conv1", "bn1"], "entry": ["layer1", "layer2"],
                                           "middle": ["layer3"]}, "test_resnet")
    assert "\n" not in str(err.value)
    with pytest.raises(MedalError, match=r"several blocks.*layer3"):
        resolve_block_map(model.backbone, {"stem": ["conv1", "bn1"], "entry": ["layer1", "layer2", "layer3"],
                                           "middle": ["layer3"], "exit": ["layer4"]}, "test_resnet")
    with pytest.raises(MedalError, match="not a module"):
        resolve_block_map(model.backbone, {"exit": ["layer9"]}, "test_resnet")


def test_head_shapes_and_sex_input() -> None:
    torch.manual_seed(0)
    image = torch.rand(3, 1, 64, 64)
    male = torch.tensor([1.0, 0.0, 1.0])
    plain = build_regressor(model_cfg("tiny"))
    assert plain(image).shape == (3,) and plain.head.is_linear
    with_sex = build_regressor(model_cfg("tiny", sex_input=True, head={"hidden": [16], "dropout": 0.1}))
    with_sex.eval()
    out = with_sex(image, male)
    assert out.shape == (3,) and not with_sex.head.is_linear
    assert not torch.allclose(out, with_sex(image, 1 - male))  # sex changes the prediction


def test_pretrained_without_network_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    import timm.models._builder as builder

    def offline(*args, **kwargs):
        raise OSError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(builder, "load_pretrained", offline)
    with pytest.raises(MedalError, match="downloads are impossible.*model.weights=PATH") as err:
        build_regressor(model_cfg("tiny", pretrained=True))
    assert "\n" not in str(err.value)


def test_local_backbone_weights_are_loaded(tmp_path: Path) -> None:
    """A timm checkpoint with an RGB first conv and a classifier loads into the grey-level backbone."""
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("test_resnet", pretrained=False, num_classes=10)
    path = tmp_path / "test_resnet.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = build_regressor(model_cfg("tiny", weights=str(path)))
    assert torch.allclose(model.backbone.layer4[0].conv1.weight, source.layer4[0].conv1.weight)
    assert torch.allclose(model.backbone.conv1[0].weight[:, 0], source.conv1[0].weight.sum(dim=1))


def test_local_regressor_checkpoint_is_loaded(tmp_path: Path) -> None:
    trained = build_regressor(model_cfg("tiny"))
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in trained.state_dict().items()}}, path)
    model = build_regressor(model_cfg("tiny", weights=str(path)))
    for (name, a), (_, b) in zip(trained.state_dict().items(), model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_bad_weights_path_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(MedalError, match="no such file"):
        build_regressor(model_cfg("tiny", weights=str(tmp_path / "missing.pt")))
    bad = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(MedalError, match="not a checkpoint of this backbone"):
        build_regressor(model_cfg("tiny", weights=str(bad)))
