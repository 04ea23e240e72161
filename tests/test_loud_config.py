"""Configs fail loudly: defaults live in the YAML (code defaults may only repeat them), a missing or unknown key
is one MedalError line, and the fine-tune modes are one list that the configs and the figure agree with."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

import pytest
from helpers.hydra_compose import compose_task
from omegaconf import OmegaConf, open_dict

from medal.boneage.module import BoneAgeModule
from medal.callbacks.finetune import FixedFinetuning
from medal.callbacks.paced import PacedTransferLearning
from medal.config import CONF_DIR
from medal.data.augment import AugmentOptions
from medal.data.progressive import ProgressiveOptions
from medal.data.sampling import SamplerOptions
from medal.data.split import HoldoutOptions, SplitOptions
from medal.enhance.module import Enhancer
from medal.errors import MedalError
from medal.loggers import build_loggers
from medal.models.discriminators import build_discriminator
from medal.models.regressor import build_regressor
from medal.models.stages import FINETUNE_MODES, FIXED_MODES, PACED_MODE, PACED_MODES
from medal.models.unet import UNet
from medal.tables.table import FIGURE12

CONF = Path(CONF_DIR)


def _defaults(fn: Any) -> dict[str, Any]:
    return {name: p.default for name, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


# -- one list of fine-tune modes ---------------------------------------------------------------------------
def test_every_finetune_mode_has_its_config_and_nothing_else_does(tmp_path: Path) -> None:
    assert {p.stem for p in (CONF / "finetune").glob("*.yaml")} == set(FINETUNE_MODES)
    for mode in FIXED_MODES:
        cfg = OmegaConf.load(CONF / "finetune" / f"{mode}.yaml")
        assert cfg.name == cfg.mode == mode and cfg._target_.endswith("FixedFinetuning")
    for mode in PACED_MODES:
        cfg = compose_task("boneage", [f"finetune={mode}"], tmp_path).finetune
        assert cfg.name == mode and cfg._target_.endswith("PacedTransferLearning")
    assert PACED_MODES[0] == PACED_MODE


def test_figure12_rows_and_sweep_follow_the_one_list() -> None:
    assert FIGURE12.orders["finetune.name"] == FINETUNE_MODES
    sweep = OmegaConf.load(CONF / "experiment" / "figure12.yaml").hydra.sweeper.params.finetune
    assert tuple(sweep.split(",")) == FINETUNE_MODES


def test_an_unknown_fixed_mode_is_refused_naming_the_list() -> None:
    with pytest.raises(MedalError, match=r"finetune.mode='above_head': choose one of above_fc, .*, all \(or a finetune=ptl\* mode\)"):
        FixedFinetuning("above_head")


# -- code defaults may only repeat the YAML -----------------------------------------------------------------
def test_ptl_callback_defaults_are_the_yaml_ones() -> None:
    yaml = OmegaConf.to_container(OmegaConf.load(CONF / "finetune" / "ptl.yaml"))
    defaults = _defaults(PacedTransferLearning.__init__)
    assert set(defaults) == set(yaml) - {"name", "_target_"}
    assert {k: _plain(v) for k, v in defaults.items()} == {k: yaml[k] for k in defaults}


def test_data_options_defaults_are_the_composed_config(tmp_path: Path) -> None:
    data = compose_task("boneage", [], tmp_path).data
    for cls, key in ((SplitOptions, "split"), (HoldoutOptions, "holdout"), (SamplerOptions, "sampler"), (AugmentOptions, "augment"),
                     (ProgressiveOptions, "progressive")):
        defaults = {f.name: _plain(f.default) for f in dataclasses.fields(cls)}
        assert defaults == OmegaConf.to_container(data[key]), key


def test_enhancer_network_defaults_are_the_gan_yaml() -> None:
    gan = OmegaConf.load(CONF / "enhance" / "gan.yaml")
    enhancer = _defaults(Enhancer.__init__)
    assert (enhancer["residual"], enhancer["adversarial"], enhancer["reconstruction"]) == (
        gan.residual, gan.adversarial, gan.reconstruction.kind)
    assert (enhancer["reconstruction_weight"], enhancer["lr"], list(enhancer["betas"])) == (
        gan.reconstruction.weight, gan.optim.lr, list(gan.optim.betas))
    assert enhancer["sample_every_n_epochs"] == gan.sample_every_n_epochs
    unet = _defaults(UNet.__init__)
    assert {k: unet[k] for k in gan.generator} == OmegaConf.to_container(gan.generator)
    disc = _defaults(build_discriminator)
    assert {k: disc[k] for k in ("width", "norm")} == {"width": gan.discriminator.width, "norm": gan.discriminator.norm}


# -- a missing or unknown key is one line, not a fallback ---------------------------------------------------
def _tiny(**changes: Any) -> dict[str, Any]:
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "model" / "tiny.yaml"))
    cfg.update(changes)
    return cfg


def test_model_config_with_a_misspelt_or_missing_key_fails_in_one_line() -> None:
    with pytest.raises(MedalError, match=r"^model.head.dorpout: unknown key; known keys: dropout, hidden, sex_dim$"):
        build_regressor(_tiny(head={"hidden": [], "dorpout": 0.1, "sex_dim": 8}))
    cfg = _tiny()
    del cfg["in_chans"]
    with pytest.raises(MedalError, match=r"^model.in_chans: missing; add it to the config"):
        build_regressor(cfg)


def test_bone_age_module_without_an_optimizer_fails_in_one_line() -> None:
    with pytest.raises(MedalError, match=r"^optimizer: null; give a partial optimiser config"):
        BoneAgeModule(_tiny(), target_shift=0.0, target_scale=240.0, loss="l1", optimizer=None, scheduler=None,
                      channels_last=True)


def test_loggers_come_only_from_the_config(tmp_path: Path) -> None:
    assert build_loggers(OmegaConf.create({"seed": 0})) == []  # `logger=null` drops the group: no loggers
    with pytest.raises(MedalError, match=r"^logger.csv: not a logger config \(no _target_\)"):
        build_loggers(OmegaConf.create({"logger": {"csv": {"save_dir": str(tmp_path)}}}))


def test_a_boneage_config_missing_a_key_fails_instead_of_falling_back(tmp_path: Path) -> None:
    from omegaconf.errors import ConfigAttributeError

    from medal.boneage.experiment import build_module

    cfg = compose_task("boneage", ["model=tiny"], tmp_path)
    with open_dict(cfg):
        del cfg.target["divisor"]
    with pytest.raises(ConfigAttributeError, match="divisor"):
        build_module(cfg, [60.0, 120.0])
