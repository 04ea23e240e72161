"""Split roles and the data set's one test holdout: a calibration role no training or selection sees, a test set
fixed per data set whatever the split seed, and left out of gold requests and enhancer pairs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.hydra_compose import compose_task
from helpers.rsna_layouts import make_kaggle, make_official

from medal.annotate.request import write_request
from medal.data.datamodule import BoneAgeDataModule
from medal.data.images import write_png
from medal.data.rsna import read_index
from medal.data.split import HOLDOUT_FILE, SPLIT_FILE, HoldoutOptions, SplitOptions, read_split
from medal.enhance.experiment import held_out_pairs
from medal.errors import MedalError


def _module(root: Path, work: Path, out: Path, **kwargs: object) -> BoneAgeDataModule:
    dm = BoneAgeDataModule(root, work_dir=work, output_dir=out, image_size=32, batch_size=8, cache_workers=1,
                           **kwargs)
    dm.setup("fit")
    return dm


def _served(dm: BoneAgeDataModule) -> set[str]:
    return {i for frame in dm.frames.values() for i in frame["id"]}


def test_the_calibration_role_is_carved_recorded_and_never_served(tmp_path: Path) -> None:
    truth = make_official(tmp_path / "rsna", n_train=80, n_val=20, n_test=12, size=(36, 28), modes=("L",))
    dm = _module(tmp_path / "rsna", tmp_path / "work", tmp_path / "out")
    roles = read_split(tmp_path / "out" / SPLIT_FILE)
    assert set(roles.index) == set(truth["id"]) and set(roles) == {"train", "val", "calibration", "test"}
    calibration = set(roles.index[roles == "calibration"])
    assert len(calibration) == 10 and len(roles[roles == "val"]) == 10  # 10% each of the 100-image pool
    assert not calibration & _served(dm)  # neither trained on, nor validated (checkpoint, early stopping, Optuna)
    assert set(roles.index[roles == "test"]) == set(truth.loc[truth["split"] == "test", "id"])
    record = json.loads((tmp_path / "work" / HOLDOUT_FILE).read_text())
    assert record["source"] == "official test split" and set(record["ids"]) == set(roles.index[roles == "test"])
    off = _module(tmp_path / "rsna", tmp_path / "work", tmp_path / "off", split=SplitOptions(calibration=0.0))
    assert "calibration" not in set(read_split(tmp_path / "off" / SPLIT_FILE)) and len(off.frames["val"]) == 10


def test_two_split_seeds_share_the_data_sets_test_holdout(tmp_path: Path) -> None:
    truth = make_kaggle(tmp_path / "kaggle", n_train=60)
    runs = [_module(tmp_path / "kaggle", tmp_path / "work", tmp_path / f"seed{s}", split=SplitOptions(seed=s))
            for s in (0, 1)]
    tests = [set(dm.frames["test"]["id"]) for dm in runs]
    assert tests[0] == tests[1] and len(tests[0]) == 6  # 10% of the 60 labelled images, whatever the seed
    assert tests[0] <= set(truth.loc[truth["split"] == "train", "id"])
    assert set(runs[0].frames["val"]["id"]) != set(runs[1].frames["val"]["id"])  # the seed still draws val
    for dm in runs:
        assert not tests[0] & (set(dm.frames["train"]["id"]) | set(dm.frames["val"]["id"]))
    assert set(json.loads((tmp_path / "work" / HOLDOUT_FILE).read_text())["ids"]) == tests[0]


def test_a_changed_holdout_setting_or_an_old_per_run_test_split_is_refused_in_one_line(tmp_path: Path) -> None:
    make_kaggle(tmp_path / "kaggle", n_train=60)
    _module(tmp_path / "kaggle", tmp_path / "work", tmp_path / "run")
    with pytest.raises(MedalError, match=r"test_holdout.json: drawn with data.holdout.fraction=0.1, not 0.2") as err:
        _module(tmp_path / "kaggle", tmp_path / "work", tmp_path / "other", holdout=HoldoutOptions(fraction=0.2))
    assert "\n" not in str(err.value)
    split = pd.read_csv(tmp_path / "run" / SPLIT_FILE, dtype=str)
    test, train = split.index[split["role"] == "test"][0], split.index[split["role"] == "train"][0]
    split.loc[[test, train], "role"] = ["train", "test"]  # as a per-run draw of an older medal would differ
    split.to_csv(tmp_path / "run" / SPLIT_FILE, index=False)
    with pytest.raises(MedalError, match=r"split.csv: its test images are not the data set's test holdout"):
        _module(tmp_path / "kaggle", tmp_path / "work", tmp_path / "run")


def test_a_gold_request_never_includes_a_holdout_image(tmp_path: Path) -> None:
    make_kaggle(tmp_path / "kaggle", n_train=60)
    index = read_index(tmp_path / "kaggle", strict=False)
    rois = tmp_path / "work" / "roi"
    for image_id in index["id"]:  # a RoI for every image, test images included
        write_png(rois / f"{image_id}.png", np.full((16, 16), 0.5, np.float32), bits=8)
    request = write_request(tmp_path / "request", index, tmp_path / "work", rois, tmp_path / "gold", count=500,
                            seed=0, holdout=HoldoutOptions())
    holdout = set(json.loads((tmp_path / "work" / HOLDOUT_FILE).read_text())["ids"])
    unlabelled_test = set(index.loc[index["split"] == "test", "id"])
    assert len(holdout) == 6 and not (holdout | unlabelled_test) & set(request.ids)
    assert len(request.ids) == 60 - 6  # every other labelled image: the request had room for all
    leaked = json.loads((tmp_path / "request" / "request.json").read_text())
    leaked["ids"].append(sorted(holdout)[0])  # a request recorded before medal fixed the holdout
    (tmp_path / "request" / "request.json").write_text(json.dumps(leaked))
    with pytest.raises(MedalError, match=r"request.json: asks for gold standards of 1 test images"):
        write_request(tmp_path / "request", index, tmp_path / "work", rois, tmp_path / "gold", count=500, seed=0,
                      holdout=HoldoutOptions())


def test_enhancer_training_pairs_never_include_a_holdout_image(tmp_path: Path) -> None:
    make_kaggle(tmp_path / "kaggle", n_train=60)
    cfg = compose_task("enhance", [f"data.root={tmp_path / 'kaggle'}", f"data.work_dir={tmp_path / 'work'}"], tmp_path)
    index = read_index(tmp_path / "kaggle", strict=False)
    for folder in (cfg.enhance.pairs.input_dir, cfg.enhance.pairs.gold_dir):  # a pair for every image
        for image_id in index["id"]:
            write_png(Path(folder) / f"{image_id}.png", np.full((16, 16), 0.5, np.float32), bits=8)
    split = held_out_pairs(cfg.enhance.pairs, cfg.data)
    holdout = set(json.loads((tmp_path / "work" / HOLDOUT_FILE).read_text())["ids"])
    everything = set(split.train) | set(split.val) | set(split.test)
    assert len(holdout) == 6 and not holdout & everything
    assert not set(index.loc[index["split"] == "test", "id"]) & everything  # nor Kaggle's unlabelled test images
    assert len(everything) == 60 - 6
