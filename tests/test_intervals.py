"""Conformal intervals that hold: methods whose widths follow the estimated age, export calibrating on the
calibration split only, and `medal recalibrate` on a hospital's own cases, end to end on a small bundle."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.bundles import export, predict, train_regressor

from medal.bundle.load import load_bundle
from medal.bundle.recalibrate import recalibrate
from medal.data.rsna import read_index
from medal.data.split import SPLIT_FILE, read_split
from medal.errors import MedalError
from medal.predict.calibrate import calibration_inputs
from medal.predict.conformal import IntervalTable, band_edges, difficulty_curve
from medal.predict.rows import PREDICTIONS, read_rows


def _heteroscedastic(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(male, reference, estimate): errors that grow tenfold from infancy to adolescence, as bone age's do."""
    reference = rng.uniform(1, 228, n)
    return rng.random(n) < 0.5, reference, reference + rng.normal(0, 1 + reference / 12)


@pytest.mark.parametrize("method", ["mondrian_age", "normalised"])
def test_adaptive_methods_cover_every_age_band_where_the_sex_method_does_not(method: str) -> None:
    rng = np.random.default_rng(0)
    male, ref, est = _heteroscedastic(6000, rng)
    edges = band_edges(ref[:2000], 5)  # fixed before calibration, as export fixes them from training labels
    curve = difficulty_curve(est[:2000], ref[:2000])  # from other images, as export takes validation predictions
    cal, test = slice(2000, 4000), slice(4000, 6000)
    groups = np.where(male[test], "male", "female")
    young, old = ref[test] < edges[0], ref[test] >= edges[-1]
    covered = {}
    for name in ("sex", method):
        table = IntervalTable(male[cal], ref[cal], est[cal], None, name, edges, curve, 50, 30)
        radius, _ = table.radius(est[test], groups, 0.9)
        inside = np.abs(est[test] - ref[test]) <= radius
        covered[name] = (inside.mean(), inside[young].mean(), inside[old].mean(), radius[young].mean(),
                         radius[old].mean())
    marginal, young_cov, old_cov, young_width, old_width = covered[method]
    assert abs(marginal - 0.9) < 0.02 and abs(young_cov - 0.9) < 0.05 and abs(old_cov - 0.9) < 0.05
    assert old_width > 3 * young_width  # a 2-year-old and a 15-year-old no longer get the same interval
    assert covered["sex"][1] > 0.98 and covered["sex"][2] < 0.85  # today's: too wide for infants, too narrow later


def test_conformal_option_defaults_are_the_export_yaml(tmp_path: Path) -> None:
    from dataclasses import fields

    from helpers.hydra_compose import compose_task
    from omegaconf import OmegaConf

    from medal.predict.conformal import ConformalOptions

    composed = OmegaConf.to_container(compose_task("export", [], tmp_path).export.conformal)
    assert {f.name: f.default for f in fields(ConformalOptions)} == composed


def test_a_sparse_band_falls_back_to_a_coarser_group_and_says_so() -> None:
    rng = np.random.default_rng(1)
    male, ref, est = _heteroscedastic(400, rng)
    keep = ~((ref < 40) & ~male) | (np.arange(400) < 5)  # hardly any young girls
    table = IntervalTable(male[keep], ref[keep], est[keep], None, "mondrian_age", [40.0, 120.0], None, 50, 30)
    radius, labels = table.radius(np.array([20.0, 20.0]), np.array(["female", "male"]), 0.9)
    assert labels == ["both sexes, estimate < 40 mo", "male, estimate < 40 mo"] and np.isfinite(radius).all()
    assert any(n.startswith("female, estimate < 40 mo:") and "both sexes in that band" in n for n in table.survey())


@pytest.fixture(scope="module")
def trained(tiny_phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("intervals")
    return train_regressor(tiny_phantoms, root / "train", "data.split.val_fraction=0.3", "data.split.calibration=0.3",
                           "trainer.max_epochs=1")


@pytest.fixture(scope="module")
def bundle(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path, metrics = export([trained], tmp_path_factory.mktemp("export"), "export.conformal.method=mondrian_age",
                           "export.gate.false_reject=0.1")  # an OOD threshold its ~19 calibration images can set
    assert metrics["export/calibration_images"] >= 15
    return path


def test_export_calibrates_on_the_calibration_split_and_records_it(bundle: Path, trained: Path) -> None:
    table = json.loads((bundle / "calibration.json").read_text())
    roles = read_split(trained / SPLIT_FILE)
    assert set(table["cases"]["id"]) == set(roles.index[roles == "calibration"])  # which images, recorded
    assert table["source"]["kind"] == "split" and table["source"]["role"] == "calibration"
    assert table["settings"]["method"] == "mondrian_age" and len(table["settings"]["edges"]) == 4
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert set(calibration_inputs(manifest["data"])["id"]) == set(table["cases"]["id"])  # what issue 26 calls


def test_export_refuses_an_old_split_and_images_a_model_saw(trained: Path, tmp_path: Path) -> None:
    old = Path(shutil.copytree(trained, tmp_path / "old"))
    split = pd.read_csv(old / SPLIT_FILE, dtype=str)
    split.loc[split["role"] == "calibration", "role"] = "train"  # as medal drew splits before the calibration role
    split.to_csv(old / SPLIT_FILE, index=False)
    with pytest.raises(MedalError, match=r"split.csv: no calibration images .* rerun the bone age runs") as err:
        export([old], tmp_path / "a")
    assert "\n" not in str(err.value)
    other = Path(shutil.copytree(trained, tmp_path / "other"))
    split = pd.read_csv(other / SPLIT_FILE, dtype=str)
    split.loc[split.index[split["role"] == "calibration"][0], "role"] = "val"  # this model selected on it
    split.to_csv(other / SPLIT_FILE, index=False)
    with pytest.raises(MedalError, match=r"other/split.csv: 1 calibration images were used to select the checkpoint"):
        export([trained, other], tmp_path / "b")


def test_recalibrate_rewrites_the_table_keeps_the_old_and_the_manifest_consistent(
        bundle: Path, tiny_phantoms: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    copy = Path(shutil.copytree(bundle, tmp_path / "bundle"))
    before = json.loads((copy / "calibration.json").read_text())
    index = read_index(tiny_phantoms, strict=False)
    test = index[index["split"] == "test"]
    cases = tmp_path / "cases.csv"
    broken = tmp_path / "broken.png"  # a case whose file is cut short: left out, said, the rest calibrates
    broken.write_bytes(Path(test["path"].iloc[0]).read_bytes()[:200])
    table = test.assign(male=test["male"].astype(int))[["id", "path", "male", "boneage"]]
    pd.concat([table, pd.DataFrame({"id": ["broken"], "path": [str(broken)], "male": [1], "boneage": [100.0]})]
              ).to_csv(cases, index=False)
    metrics = recalibrate(copy, cases, None, "sex", "cpu", 16, 0)
    assert metrics["recalibrate/images"] == len(test) and metrics["recalibrate/skipped"] == 1
    loaded = load_bundle(copy)  # every file, the new table and the archived one included, matches bundle.json
    manifest = loaded.manifest
    current = manifest["calibration"]["current"]
    assert current["kind"] == "cases" and current["count"] == len(test) + 1 and current["file"] == str(cases)
    assert len(current["sha256"]) == 64 and current["medal"] and current["date"]
    assert set(loaded.calibration["cases"]["id"]) == set(test["id"]) and loaded.calibration["settings"]["method"] == "sex"
    archived = manifest["calibration"]["history"][0]["archived_as"]
    assert json.loads((copy / archived).read_text()) == before and archived in manifest["files"]
    assert loaded.calibration["settings"]["edges"] == before["settings"]["edges"]  # the bundle's bands are kept
    with caplog.at_level(logging.INFO, logger="medal.bundle"):
        assert recalibrate(copy, cases, None, "sex", "cpu", 16, 0)["recalibrate/unchanged"] == 1.0
    assert "already calibrated on these cases" in caplog.text
    out = predict(copy, tiny_phantoms, tmp_path, tmp_path / "out", "predict.cam=false", "predict.interval=mondrian_age",
                  "predict.gate.ood=false")  # the intervals of every image (a 10 % OOD gate refuses some)
    rows = read_rows(tmp_path / "out" / PREDICTIONS)
    assert out["predict/ok"] == 64 and set(rows["interval_method"]) == {"mondrian_age"}
    assert all(label.startswith(("male", "female", "both sexes", "all")) for label in rows["calibration"])


def test_recalibrate_refuses_unlabelled_cases_and_images_the_models_saw(bundle: Path, tiny_phantoms: Path,
                                                                         trained: Path, tmp_path: Path) -> None:
    index = read_index(tiny_phantoms, strict=False)
    cases = tmp_path / "cases.csv"
    table = index[["id", "path", "male", "boneage"]].head(3).assign(male=lambda t: t["male"].astype(int))
    table.assign(boneage=["", 100, 120]).to_csv(cases, index=False)
    with pytest.raises(MedalError, match=rf"cases={cases}: case {table['id'].iloc[0]} has no bone age"):
        recalibrate(bundle, cases, None, None, "cpu", 16, 0)
    roles = read_split(trained / SPLIT_FILE)
    seen = index[index["id"].isin(set(roles.index[roles == "train"]))].head(3)
    seen.assign(male=seen["male"].astype(int))[["id", "path", "male", "boneage"]].to_csv(cases, index=False)
    with pytest.raises(MedalError, match=r"cases: 3 are images the bundle's models trained on or were selected with"):
        recalibrate(bundle, cases, None, None, "cpu", 16, 0)


def _hospital_cases(root: Path, n: int, seed: int) -> Path:
    """A CSV of `n` fresh labelled phantoms (another seed: images no model of the bundle saw), as a hospital's."""
    from medal.data.phantom import generate_dataset

    generate_dataset(root, n=n, seed=seed, image_size=128, workers=1, progress=False)
    index = read_index(root, strict=False)
    cases = root / "cases.csv"
    index.assign(male=index["male"].astype(int))[["id", "path", "male", "boneage"]].to_csv(cases, index=False)
    return cases


def test_recalibrate_refits_the_ood_threshold_on_the_cases_and_keeps_the_old_gate_record(
        bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from medal.predict.ood import GATE, threshold

    copy = Path(shutil.copytree(bundle, tmp_path / "bundle"))
    before = json.loads((copy / GATE).read_text())
    assert before["ood"]["threshold"] is not None and before["ood"]["calibration"]["split"] == "calibration"
    cases = _hospital_cases(tmp_path / "hospital", 24, seed=7)
    metrics = recalibrate(copy, cases, None, None, "cpu", 16, 0)
    loaded = load_bundle(copy)  # the new gate.json and the archived one match bundle.json
    ood = json.loads((copy / GATE).read_text())["ood"]
    assert metrics["recalibrate/ood_refit"] == 1.0 and ood["false_reject"] == 0.1  # the export's rate
    assert ood["calibration"]["split"] == "cases" and ood["calibration"]["images"] == 24
    assert ood["calibration"]["source"] == loaded.calibration["source"]  # the recalibration's source, recorded
    assert ood["history"][-1]["threshold"] == before["ood"]["threshold"]
    assert ood["history"][-1]["calibration"] == before["ood"]["calibration"]
    history = loaded.manifest["calibration"]["history"][-1]
    assert json.loads((copy / history["gate_archived_as"]).read_text()) == before
    assert history["gate_archived_as"] in loaded.manifest["files"]
    assert loaded.manifest["calibration"]["ood"] == {"threshold": ood["threshold"], "false_reject": 0.1,
                                                     "images": 24, "split": "cases"}
    # the threshold is the export's rule over the cases' own scores: predict scores them alike
    with caplog.at_level(logging.INFO, logger="medal.predict"):
        predict(copy, cases, tmp_path, tmp_path / "out", "predict.cam=false")
    scores = read_rows(tmp_path / "out" / PREDICTIONS)["ood_score"].to_numpy(float)
    assert len(scores) == 24 and ood["threshold"] == pytest.approx(threshold(scores, 0.1), rel=1e-4)
    assert int((scores > ood["threshold"] * (1 + 1e-4)).sum()) <= 1  # ceil(25 * 0.9) = 23 of 24 at or below it
    assert f"on 24 labelled cases ({cases})" in caplog.text

    few = _hospital_cases(tmp_path / "few", 6, seed=8)  # too few for 5 %: the refitted threshold stays
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medal.predict"):
        metrics = recalibrate(copy, few, None, None, "cpu", 16, 0, false_reject=0.05)
    kept = json.loads((copy / GATE).read_text())["ood"]
    assert metrics["recalibrate/ood_refit"] == 0.0 and kept["threshold"] == ood["threshold"]
    assert kept["refit"]["images"] == 6 and kept["refit"]["needs"] == 19 and kept["refit"]["kept"] == ood["threshold"]
    assert "6 cases are too few to refit the OOD threshold at 5% false rejects (needs 19)" in caplog.text
    load_bundle(copy)



def test_a_recalibration_killed_between_the_table_and_the_gate_record_finishes_both_on_rerun(
        bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medal.bundle import recalibrate as module
    from medal.predict import calibrate as calibrate_module
    from medal.predict.ood import GATE

    copy = Path(shutil.copytree(bundle, tmp_path / "bundle"))
    cases = _hospital_cases(tmp_path / "hospital", 12, seed=9)

    def killed_after_the_table(root: Path, table_text: str, gate) -> None:  # noqa: ANN001
        (root / "calibration.json").write_text(table_text)
        raise RuntimeError("killed")

    monkeypatch.setattr(module, "_write_new", killed_after_the_table)
    with pytest.raises(RuntimeError, match="killed"):
        recalibrate(copy, cases, None, None, "cpu", 16, 0)
    with pytest.raises(MedalError, match="calibration.json: sha256 differs"):
        load_bundle(copy)  # half-written: the manifest still lists the old table
    monkeypatch.undo()
    monkeypatch.setattr(calibrate_module, "measure", lambda *a, **k: pytest.fail("the chain ran again"))
    metrics = recalibrate(copy, cases, None, None, "cpu", 16, 0)
    loaded = load_bundle(copy)
    ood = json.loads((copy / GATE).read_text())["ood"]
    assert metrics["recalibrate/ood_refit"] == 1.0 and ood["calibration"]["images"] == 12
    assert loaded.manifest["calibration"]["ood"]["threshold"] == ood["threshold"]
