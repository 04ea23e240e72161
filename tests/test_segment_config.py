"""The segmentation config: strategies, oracles and segmenters are instantiable groups; every key is read
loudly (an unknown or missing one fails in one line naming it), before any work is done."""

from __future__ import annotations

from pathlib import Path

import pytest

from medal.active.oracles import FolderOracle, SimulatedOracle
from medal.active.scoring import (
    BALD,
    QBC,
    Baseline,
    CoreSet,
    Entropy,
    Hybrid,
    Power,
    Random,
    StratifiedRandom,
    VoteEntropy,
)
from medal.active.stratified import AcquisitionRandom, StratifiedPower
from medal.config import CONF_DIR
from medal.errors import MedalError
from medal.overrides import override_problem
from medal.segment.experiment import configure
from medal.segment.segmenter import RandomLabelsBaseline, Segmenter

STRATEGY_CLASSES = {"qbc": QBC, "qbc_paper": QBC, "random": Random, "random_stratified": StratifiedRandom,
                    "entropy": Entropy, "entropy_power": Power, "bald": BALD, "bald_mc": BALD,
                    "vote_entropy": VoteEntropy, "coreset": CoreSet, "hybrid": Hybrid, "unet_random": Baseline,
                    "random_acquisition": AcquisitionRandom, "entropy_power_stratified": StratifiedPower}


def test_every_strategy_file_is_listed_here() -> None:
    assert {p.stem for p in (Path(CONF_DIR) / "strategy").glob("*.yaml")} == set(STRATEGY_CLASSES)


@pytest.mark.parametrize(("option", "cls"), sorted(STRATEGY_CLASSES.items()))
def test_each_strategy_option_builds_its_class(make_cfg, tiny_phantoms: Path, option: str, cls: type) -> None:
    setup = configure(make_cfg("segment", [f"data.root={tiny_phantoms}", f"strategy={option}"]))
    assert type(setup.strategy) is cls and setup.strategy.name == option
    assert type(setup.segmenter) is (RandomLabelsBaseline if option == "unet_random" else Segmenter)


def test_wrapped_strategies_build_their_inner_strategy_and_refuse_its_typos(make_cfg, tiny_phantoms: Path) -> None:
    power = configure(make_cfg("segment", [f"data.root={tiny_phantoms}", "strategy=entropy_power"])).strategy
    assert type(power.base) is Entropy and power.beta == 1.0
    hybrid = configure(make_cfg("segment", [f"data.root={tiny_phantoms}", "strategy=hybrid",
                                            "strategy.uncertainty._target_=medal.active.scoring.BALD",
                                            "+strategy.uncertainty.source=committee",
                                            "+strategy.uncertainty.samples=4"])).strategy
    assert type(hybrid.uncertainty) is BALD and hybrid.uncertainty.source == "committee"
    with pytest.raises(MedalError, match=r"^strategy.base.temp: unknown key; known keys: name$"):
        configure(make_cfg("segment", [f"data.root={tiny_phantoms}", "strategy=entropy_power", "+strategy.base.temp=1"]))
    with pytest.raises(MedalError, match=r"^strategy.uncertainty: no _target_"):
        configure(make_cfg("segment", [f"data.root={tiny_phantoms}", "strategy=hybrid", "~strategy.uncertainty._target_"]))


def test_the_unet_baseline_as_a_strategy_is_refused_beside_a_committee(make_cfg, tiny_phantoms: Path) -> None:
    with pytest.raises(MedalError, match=r"^strategy=unet_random is the paper's no-AL baseline .*drop segmenter=committee"):
        configure(make_cfg("segment", [f"data.root={tiny_phantoms}", "strategy=unet_random", "segmenter=committee"]))


def test_oracles_and_segmenters_build_from_their_groups(make_cfg, tiny_phantoms: Path) -> None:
    setup = configure(make_cfg("segment", [f"data.root={tiny_phantoms}"]))
    assert isinstance(setup.oracle, SimulatedOracle) and setup.oracle.masks_dir == tiny_phantoms / "masks"
    assert type(setup.segmenter) is Segmenter and setup.segmenter.queries
    assert setup.segmenter.members == 3 and setup.segmenter.net["bottleneck_layers"] == 12  # from al, segment.net
    assert setup.al.min_delta == 0.001  # the YAML's value, no dataclass default to disagree with it
    cfg = make_cfg("segment", [f"data.root={tiny_phantoms}", "oracle=folder", "segmenter=unet_random"])
    setup = configure(cfg)
    assert isinstance(setup.oracle, FolderOracle) and setup.oracle.root == Path(cfg.al.dir)
    assert type(setup.segmenter) is RandomLabelsBaseline and not setup.segmenter.queries
    assert setup.segmenter.members == 1 and setup.segmenter.net == dict(cfg.segment.unet)
    assert Path(cfg.al.dir).name == "unet_random_qbc_seed0"


@pytest.mark.parametrize("group", ["strategy", "oracle", "segmenter"])
def test_an_unknown_option_is_refused_in_one_line_with_the_choices(group: str) -> None:
    problem = override_problem("segment", [f"{group}=bogus"])
    assert problem is not None and "\n" not in problem
    assert problem.startswith(f"{group}=bogus: conf/{group}/ has no bogus.yaml; choose one of: ")


@pytest.mark.parametrize(("override", "message"), [
    ("+al.pateince=3", r"^al.pateince: unknown key; known keys: budget, committee_size, dir, "),
    ("~al.min_delta", r"^al.min_delta: missing; add it to the config"),
    ("+segment.flip=true", r"^segment.flip: unknown key; known keys: augment, batch_size, channels_last, "),
    ("+segment.coarse.radius=1", r"^segment.coarse.radius: unknown key; known keys: border, closing_radius, "),
    ("+segment.roi.sise=64", r"^segment.roi.sise: unknown key; known keys: margin, size$"),
    ("+segment.augment.rotate=5", r"^segment.augment.rotate: unknown key"),
    ("+segment.net.depht=3", r"^segmenter.net.depht: not an argument of FCDenseNet; known: "),
    ("+strategy.temperature=2", r"^strategy.temperature: unknown key; known keys: descriptor, grid, name$"),
    ("strategy.descriptor=pixels", r"^strategy.descriptor='pixels': use one of bottleneck, probs$"),
    ("+oracle.threshold=0.5", r"^oracle.threshold: unknown key; known keys: masks_dir, name$"),
    ("+segmenter.depth=3", r"^segmenter.depth: unknown key; known keys: arch, members, name, net$"),
    ("~strategy._target_", r"^strategy: no _target_; its conf/strategy/<name>.yaml must name the class"),
    ("strategy._target_=medal.active.scoring.Nope", r"^strategy._target_=medal.active.scoring.Nope: cannot be "),
    ("segmenter.arch=resnet", r"^segmenter.arch='resnet': unknown; use one of fc_densenet, unet$"),
    ("strategy._target_=medal.active.scoring.Candidates", r"^strategy.descriptor: unknown key; known keys: chunk, ids, "),
    ("oracle._target_=medal.active.scoring.Random", r"^oracle.masks_dir: unknown key; known keys: name$"),
    ("segmenter._target_=medal.active.scoring.Random", r"^segmenter.arch: unknown key; known keys: name$"),
    ("al.member_init=twins", r"^al.member_init='twins': use one of shared, independent$"),
    ("al.patience=0", r"^al.patience=0: must be >= 1$"),
])
def test_a_bad_key_fails_in_one_line_naming_it(make_cfg, tiny_phantoms: Path, override: str, message: str) -> None:
    cfg = make_cfg("segment", [f"data.root={tiny_phantoms}", override])
    with pytest.raises(MedalError, match=message) as err:
        configure(cfg)
    assert "\n" not in str(err.value)


def test_a_group_whose_class_cannot_do_its_job_is_refused(make_cfg, tiny_phantoms: Path, tmp_path: Path) -> None:
    oracle_as_strategy = ["strategy=random", "strategy._target_=medal.active.oracles.FolderOracle",
                          f"+strategy.root={tmp_path}", "+strategy.threshold=null"]
    with pytest.raises(MedalError, match=r"^strategy._target_=medal.active.oracles.FolderOracle: has no score\(\)"):
        configure(make_cfg("segment", [f"data.root={tiny_phantoms}", *oracle_as_strategy]))
    oracle_as_segmenter = ["segmenter._target_=medal.active.oracles.FolderOracle", "~segmenter.arch",
                           "~segmenter.members", "~segmenter.net", f"+segmenter.root={tmp_path}",
                           "+segmenter.threshold=null"]
    with pytest.raises(MedalError, match=r"^segmenter._target_=medal.active.oracles.FolderOracle: not a medal"):
        configure(make_cfg("segment", [f"data.root={tiny_phantoms}", *oracle_as_segmenter]))


def test_a_simulated_oracle_without_masks_fails_before_any_work(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg("segment", [f"data.root={tmp_path / 'nowhere'}"])
    with pytest.raises(MedalError, match=r"^oracle.masks_dir=.*nowhere/masks: folder not found"):
        configure(cfg)
