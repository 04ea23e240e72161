"""k-fold cross-validation (`cv.folds=K cv.fold=i`): the folds of the split's train + val images and each fold
run's roles, the pooled out-of-fold metrics, and real fold runs of `medal boneage` that pool themselves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.bundles import RAW_BONEAGE
from helpers.hydra_compose import compose_task
from helpers.rsna_layouts import make_kaggle

from medal.boneage.cv import FOLDS_FILE, POOL_PREFIX, pool_dir, pool_runs, pool_when_complete
from medal.boneage.experiment import RUN_MARKER, run_boneage
from medal.boneage.predictions import PREDICTIONS_FILE
from medal.data.datamodule import BoneAgeDataModule
from medal.data.split import (
    FOLD_COLUMN,
    SPLIT_FILE,
    CVOptions,
    SplitOptions,
    assign_splits,
    fold_roles,
    read_folds,
    read_split,
)
from medal.errors import MedalError
from medal.resume import Marker


def _planted_index(n: int, n_test: int, seed: int = 0) -> pd.DataFrame:
    """`n` labelled images (ages 1-228 months, ~55% boys) in a data set's index, the last `n_test` its test split."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"id": [f"{i:04d}" for i in range(n)], "boneage": rng.integers(1, 229, n).astype(float),
                         "male": rng.random(n) < 0.55, "split": ["train"] * (n - n_test) + ["test"] * n_test})


def test_folds_are_disjoint_stratified_one_draw_and_never_touch_the_test_or_calibration_images() -> None:
    index = _planted_index(600, 60)
    holdout = index.loc[index["split"] == "test", "id"]
    options = SplitOptions(val_fraction=0.1, calibration=0.1, seed=3, bins=10)
    base = assign_splits(index, options, holdout)
    k = 5
    runs = [fold_roles(index, base, options, CVOptions(folds=k, fold=i, seed=7, inner_val=0.1)) for i in range(k)]
    folds = runs[0][1]
    pool = set(base.index[base.isin(("train", "val"))])
    untouched = base.index[base.isin(("test", "calibration"))]
    assert set(folds.index[folds >= 0]) == pool and (folds[untouched] == -1).all()
    oofs = []
    for i, (roles, fold) in enumerate(runs):
        assert fold.equals(folds)  # every fold run draws the same assignment
        assert roles[untouched].equals(base[untouched])  # test and calibration images keep their roles
        oof = set(roles.index[roles == "oof"])
        assert oof == set(folds.index[folds == i])
        inner = set(roles.index[roles == "val"])
        assert inner and not inner & oof and set(roles.index[roles == "train"]) == pool - oof - inner
        assert len(inner) == pytest.approx(0.1 * len(pool - oof), abs=3)
        oofs.append(oof)
    assert sum(len(o) for o in oofs) == len(pool) and set().union(*oofs) == pool  # disjoint, and they cover it
    # stratified: within each sex and age decile of the pool, the folds' counts differ by at most one image
    frame = index.loc[sorted(pool)].assign(fold=folds[sorted(pool)])
    edges = np.quantile(frame["boneage"], np.linspace(0, 1, 11)[1:-1])
    frame["stratum"] = np.digitize(frame["boneage"], np.unique(edges)) * 2 + frame["male"].astype(int)
    counts = frame.groupby(["stratum", "fold"]).size().unstack(fill_value=0)
    assert len(counts) == 20 and (counts.max(axis=1) - counts.min(axis=1)).max() <= 1
    # another fold seed draws other folds over the same pool
    other = fold_roles(index, base, options, CVOptions(folds=k, fold=0, seed=8))[1]
    assert set(other.index[other >= 0]) == pool and not other.equals(folds)


def test_a_fold_run_serves_its_fold_as_oof_and_records_the_folds_in_split_csv(tmp_path: Path) -> None:
    make_kaggle(tmp_path / "kaggle", n_train=60)
    modules = {}
    for fold in (0, 2):
        modules[fold] = BoneAgeDataModule(tmp_path / "kaggle", work_dir=tmp_path / "work", output_dir=tmp_path / f"f{fold}",
                                          image_size=32, batch_size=8, cache_workers=1,
                                          cv=CVOptions(folds=3, fold=fold))
        modules[fold].setup("fit")
    saved = [read_folds(tmp_path / f"f{fold}" / SPLIT_FILE) for fold in (0, 2)]
    assert saved[0] is not None and saved[0].sort_index().equals(saved[1].sort_index())
    for fold, dm in modules.items():
        roles = read_split(tmp_path / f"f{fold}" / SPLIT_FILE)
        served = {role: set(frame["id"]) for role, frame in dm.frames.items()}
        assert served["oof"] == set(saved[0].index[saved[0] == fold]) == set(roles.index[roles == "oof"])
        assert not served["oof"] & (served["train"] | served["val"] | served["test"])
        calibration = set(roles.index[roles == "calibration"])
        assert calibration and not calibration & set().union(*served.values())
        assert not calibration & set(saved[0].index) and not set(roles.index[roles == "test"]) & set(saved[0].index)
    plain = tmp_path / "plain"
    BoneAgeDataModule(tmp_path / "kaggle", work_dir=tmp_path / "work", output_dir=plain, image_size=32,
                      cache_workers=1).setup("fit")
    assert FOLD_COLUMN not in pd.read_csv(plain / SPLIT_FILE).columns
    with pytest.raises(MedalError, match=r"split.csv: drawn without cross-validation folds, but this run has "
                                         r"cv.folds=3; run it in a new folder"):
        BoneAgeDataModule(tmp_path / "kaggle", work_dir=tmp_path / "work", output_dir=plain, image_size=32,
                          cache_workers=1, cv=CVOptions(folds=3, fold=0)).setup("fit")


@pytest.mark.parametrize(("values", "message"), [
    ({"fold": 1}, r"cv.fold=1: set cv.folds=K too"),
    ({"folds": 1, "fold": 0}, r"cv.folds=1: must be >= 2"),
    ({"folds": 3}, r"cv.folds=3: a run trains one fold; set cv.fold=i \(0..2\), or run them all: medal boneage -m "
                   r"cv.folds=3 'cv.fold=range\(3\)'"),
    ({"folds": 3, "fold": 3}, r"cv.fold=3: must be one of 0..2"),
    ({"folds": 3, "fold": 0, "inner_val": 1.0}, r"cv.inner_val=1.0: must be in \[0, 1\)"),
])
def test_bad_cv_settings_are_one_line_naming_the_key(values: dict, message: str) -> None:
    with pytest.raises(MedalError, match=message) as err:
        CVOptions(**values)
    assert "\n" not in str(err.value)


# -- the pooled out-of-fold metrics, on planted fold runs -----------------------------------------------------

def _settings(fold: int, folds: int = 3) -> dict:
    """The recorded settings of a planted fold run (what `sibling_folds` groups by and `pool_folds` reads)."""
    return {"seed": 0, "cohort": {"name": "all"}, "data": {"root": "/nonexistent/real-data"},
            "evaluation": {"bootstrap": 200}, "cv": {"folds": folds, "fold": fold, "seed": 0, "inner_val": 0.1}}


def _plant_fold(run: Path, fold: int, oof: pd.DataFrame, test: pd.DataFrame, folds_of: pd.Series,
                settings: dict | None = None) -> None:
    """A finished fold run: split.csv with the folds, predictions.csv with its oof and test rows, its record."""
    run.mkdir(parents=True)
    pd.DataFrame({"id": folds_of.index, "role": np.where(folds_of == fold, "oof", "train"),
                  FOLD_COLUMN: folds_of.to_numpy()}).to_csv(run / SPLIT_FILE, index=False)
    rows = pd.concat([oof.assign(split="oof"), test.assign(split="test")], ignore_index=True).assign(fold=fold)
    rows.to_csv(run / PREDICTIONS_FILE, index=False)
    mae = float((oof["predicted"] - oof["true"]).abs().mean())
    record = settings or _settings(fold)
    marker = Marker.in_folder(run, RUN_MARKER, policy="refuse")
    marker.begin(record)
    marker.finish(record, metrics={"oof/mae": mae, "test/mae": float((test["predicted"] - test["true"]).abs().mean())})


def _planted_cv(parent: Path, sizes: tuple[int, ...] = (12, 6, 3)) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Folds of unequal sizes whose models err by unequal amounts, each run in `parent/f<fold>`; returns (every
    out-of-fold row with its fold, every test row with its fold)."""
    rng = np.random.default_rng(1)
    ids = [f"p{i:03d}" for i in range(sum(sizes))]
    folds_of = pd.Series(np.repeat(np.arange(len(sizes)), sizes), index=ids)
    tests = [f"t{i}" for i in range(5)]
    truth_test = rng.uniform(20, 200, len(tests))
    oof_rows, test_rows = [], []
    for fold in range(len(sizes)):
        held = folds_of.index[folds_of == fold]
        true = rng.uniform(20, 200, len(held))
        oof = pd.DataFrame({"id": held, "sex": rng.choice(["M", "F"], len(held)), "true": true,
                            "predicted": true + rng.normal(0, 5 * (fold + 1) ** 2, len(held))})
        test = pd.DataFrame({"id": tests, "sex": ["M", "F", "M", "F", "M"], "true": truth_test,
                             "predicted": truth_test + rng.normal(0, 10, len(tests))})
        _plant_fold(parent / f"f{fold}", fold, oof, test, folds_of)
        oof_rows.append(oof.assign(fold=fold))
        test_rows.append(test.assign(fold=fold))
    return pd.concat(oof_rows, ignore_index=True), pd.concat(test_rows, ignore_index=True)


def test_the_pooled_out_of_fold_mae_is_the_mean_over_images_not_over_folds(tmp_path: Path) -> None:
    oof, test = _planted_cv(tmp_path)
    out = pool_when_complete(tmp_path / "f1", _settings(1))
    assert out == pool_dir(tmp_path, _settings(1)) and out.name.startswith(POOL_PREFIX)
    metrics = json.loads((out / "metrics.json").read_text())
    errors = (oof["predicted"] - oof["true"]).abs()
    assert metrics["cv/mae"] == pytest.approx(errors.mean(), rel=1e-6)
    assert metrics["cv/n"] == len(oof) == 21
    for sex, suffix in (("M", "_male"), ("F", "_female")):
        assert metrics[f"cv/mae{suffix}"] == pytest.approx(errors[oof["sex"] == sex].mean(), rel=1e-6)
    assert metrics["cv/rmse"] == pytest.approx(np.sqrt(((oof["predicted"] - oof["true"]) ** 2).mean()), rel=1e-6)
    assert metrics["cv/bias"] == pytest.approx((oof["predicted"] - oof["true"]).mean(), rel=1e-5)
    per_fold = errors.groupby(oof["fold"]).mean()
    assert metrics["cv/mae_fold_mean"] == pytest.approx(per_fold.mean(), rel=1e-6)
    assert metrics["cv/mae_fold_sd"] == pytest.approx(per_fold.std(ddof=1), rel=1e-6)
    assert abs(metrics["cv/mae"] - metrics["cv/mae_fold_mean"]) > 1.0  # unequal folds: the two means differ
    assert metrics["cv/mae_ci_low"] < metrics["cv/mae"] < metrics["cv/mae_ci_high"]
    ensemble = test.groupby("id").agg(true=("true", "first"), predicted=("predicted", "mean"))
    assert metrics["ensemble/mae"] == pytest.approx((ensemble["predicted"] - ensemble["true"]).abs().mean(), rel=1e-6)
    pooled = pd.read_csv(out / PREDICTIONS_FILE, dtype={"id": str})
    assert sorted(pooled.loc[pooled["split"] == "cv", "id"]) == sorted(oof["id"])
    table = pd.read_csv(out / FOLDS_FILE)
    assert table["images"].tolist() == [12, 6, 3] and table["run"].tolist() == [str(tmp_path / f"f{i}") for i in range(3)]
    assert (out / ".hydra" / "config.yaml").read_text().count("fold: null") == 1

    stamp = (out / "metrics.json").stat().st_mtime_ns
    assert pool_when_complete(tmp_path / "f0", _settings(0)) == out
    assert (out / "metrics.json").stat().st_mtime_ns == stamp  # the same finished folds pool once


def test_pooling_waits_for_every_fold_and_refuses_what_is_not_one_cross_validation(tmp_path: Path,
                                                                                  caplog: pytest.LogCaptureFixture) -> None:
    _planted_cv(tmp_path)
    ids = pd.read_csv(tmp_path / "f0" / SPLIT_FILE, dtype={"id": str}).set_index("id")[FOLD_COLUMN]
    waiting = tmp_path / "waiting"
    waiting.mkdir()
    (tmp_path / "f2").rename(waiting / "f2")
    assert pool_when_complete(tmp_path / "f0", _settings(0)) is None  # fold 2 is missing
    assert not list(tmp_path.glob(f"{POOL_PREFIX}*"))
    (waiting / "f2").rename(tmp_path / "f2")
    other = _settings(0)
    other["cv"]["seed"] = 1  # another cross-validation beside it is not one of its folds
    _plant_fold(tmp_path / "g0", 0, pd.DataFrame({"id": ["p000"], "sex": ["M"], "true": [10.0], "predicted": [12.0]}),
                pd.DataFrame(columns=["id", "sex", "true", "predicted"]), ids, other)
    assert pool_when_complete(tmp_path / "f0", _settings(0)) is not None
    twice = tmp_path / "again"
    twice.mkdir()
    for name in ("f0", "f1", "f2"):
        (tmp_path / name).rename(twice / name)
    copy = twice / "f1_copy"
    copy.mkdir()
    for f in (twice / "f1").rglob("*"):
        if f.is_file():
            (copy / f.relative_to(twice / "f1")).parent.mkdir(parents=True, exist_ok=True)
            (copy / f.relative_to(twice / "f1")).write_bytes(f.read_bytes())
    assert pool_when_complete(twice / "f0", _settings(0)) is None
    assert "fold 1 was run in" in caplog.text and "with the same settings" in caplog.text
    (twice / "f1_copy" / ".medal" / f"{RUN_MARKER}.json").unlink()
    frame = pd.read_csv(twice / "f1" / PREDICTIONS_FILE, dtype={"id": str})
    frame.loc[frame["split"] == "oof", "id"] = "p000"  # fold 1's model "predicts" an image of fold 0 out of fold
    frame.to_csv(twice / "f1" / PREDICTIONS_FILE, index=False)
    with pytest.raises(MedalError, match=r"out-of-fold image p000 is not in fold 1"):
        pool_when_complete(twice / "f0", _settings(0))


def test_a_caller_that_knows_the_fold_runs_pools_them_in_order(tmp_path: Path) -> None:
    """`pool_runs` (the pipeline's fold stages): the record the last fold writes, or refused in one line."""
    oof, _ = _planted_cv(tmp_path)
    runs = [tmp_path / f"f{i}" for i in range(3)]
    pooled = pool_runs(runs)
    assert pooled.folder == pool_dir(tmp_path, _settings(0))
    assert pooled.metrics["cv/mae"] == pytest.approx((oof["predicted"] - oof["true"]).abs().mean(), rel=1e-6)
    assert pooled.folds["images"].tolist() == [12, 6, 3]
    with pytest.raises(MedalError, match=r"f1: not fold 0 of 3"):
        pool_runs([runs[1], runs[0], runs[2]])
    with pytest.raises(MedalError, match=r"f0: not fold 0 of 2 \(its cv: .*.folds.: 3"):  # a fold missing
        pool_runs(runs[:1] + runs[2:])


# -- real fold runs ----------------------------------------------------------------------------------------------

def _fold_run(data_root: Path, root: Path, fold: int, *extra: str) -> tuple[dict, Path]:
    out = root / f"fold{fold}"
    cfg = compose_task("boneage", [*RAW_BONEAGE, f"data.root={data_root}", "cv.folds=3", f"cv.fold={fold}",
                                   f"paths.output_dir={out}", *extra], root)
    return run_boneage(cfg), out


def test_three_ptl_fold_runs_predict_their_fold_out_of_fold_and_the_last_pools_them(tiny_phantoms: Path,
                                                                                      tmp_path: Path) -> None:
    """A paced (PTL) fine-tune per fold, each selecting on its inner val, pools into the per-image out-of-fold MAE."""
    ptl = ["finetune=ptl", "trainer.max_epochs=3", "finetune.max_epochs_per_stage=1"]
    runs = [_fold_run(tiny_phantoms, tmp_path, fold, *ptl) for fold in range(3)]
    oof_rows = []
    for fold, (metrics, run) in enumerate(runs):
        roles, folds = read_split(run / SPLIT_FILE), read_folds(run / SPLIT_FILE)
        predictions = pd.read_csv(run / PREDICTIONS_FILE, dtype={"id": str})
        oof = predictions[predictions["split"] == "oof"]
        assert set(oof["id"]) == set(folds.index[folds == fold]) == set(roles.index[roles == "oof"])
        assert set(predictions.loc[predictions["split"] == "val", "id"]) == set(roles.index[roles == "val"])
        assert not set(roles.index[roles == "val"]) & set(oof["id"])
        assert metrics["oof/mae"] == pytest.approx((oof["predicted"] - oof["true"]).abs().mean(), rel=1e-5)
        assert "val/mae_best_epoch" in metrics and metrics["train/epochs"] == 3
        assert (predictions["fold"] == fold).all()
        csv = pd.read_csv(run / "csv" / "metrics.csv")
        assert csv["ptl/stage"].dropna().max() >= 2  # paced: head, then exit, then middle (one epoch each)
        oof_rows.append(oof)
    pooled = pool_dir(tmp_path, json.loads((runs[0][1] / ".medal" / f"{RUN_MARKER}.json").read_text())["parts"])
    metrics = json.loads((pooled / "metrics.json").read_text())  # written by fold 2, the last to finish
    every = pd.concat(oof_rows)
    assert metrics["cv/folds"] == 3 and metrics["cv/n"] == len(every)
    assert metrics["cv/mae"] == pytest.approx((every["predicted"] - every["true"]).abs().mean(), rel=1e-5)


def test_a_fold_run_without_selection_keeps_its_last_epoch(tiny_phantoms: Path, tmp_path: Path) -> None:
    metrics, run = _fold_run(tiny_phantoms, tmp_path, 1, "cv.inner_val=0")
    roles = read_split(run / SPLIT_FILE)
    assert "val" not in set(roles) and "val/mae_best_epoch" not in metrics and metrics["train/epochs"] == 2
    assert [p.name for p in (run / "checkpoints").glob("best-*.ckpt")] == ["best-001.ckpt"]  # epoch 2 of 2
    with pytest.raises(MedalError, match=r"early_stopping.patience=2 with cv.inner_val=0: no validation images"):
        _fold_run(tiny_phantoms, tmp_path / "stopping", 1, "cv.inner_val=0", "early_stopping.patience=2")
