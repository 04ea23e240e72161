"""`medal predict` on real-world DICOM: the fixtures' encodings agree, the gate refuses what is not a hand
radiograph (header rule, out-of-distribution score), estimates stay in the bundle's valid range with ordered
intervals, the clinician's columns (chronological age, gap, SDS) come from DICOM or the CSV, and the page opens
with the counts. The slow corpus test runs over pydicom's own test files too."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import dicom_fixtures
from helpers.bundles import predict

from medal.data.dicom import is_dicom, read_header
from medal.data.images import decode, write_png
from medal.data.rsna import read_index
from medal.predict import chronology
from medal.predict.chain import ChainModule
from medal.predict.ood import GATE, WEIGHTS
from medal.predict.rows import PREDICTIONS, STATUSES, read_rows

SAME_ESTIMATE = 0.05  # months: the encodings of one radiograph must agree this closely


@pytest.fixture(scope="module")
def gated(gated_bundle: Path) -> Path:
    """The session's gated bundle (conftest): read only here; a test that changes it works on a copy."""
    return gated_bundle


@pytest.fixture(scope="module")
def phantom(tiny_phantoms: Path) -> pd.Series:
    """A phantom boy whose radiograph the fixtures encode."""
    index = read_index(tiny_phantoms, strict=False)
    return index[index["male"].astype(bool)].iloc[0]


@pytest.fixture(scope="module")
def fixtures(phantom: pd.Series, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dicom_fixtures.Fixture]:
    folder = tmp_path_factory.mktemp("dicom_in")
    return {f.name: f for f in dicom_fixtures.build(decode(phantom["path"]).radiograph, folder, sex="M")}


def _ok_rows_are_sane(rows: pd.DataFrame) -> None:
    ok = rows[rows["status"] == "ok"]
    assert (ok["low"] <= ok["boneage"]).all() and (ok["boneage"] <= ok["high"]).all()
    assert set(rows["status"]) <= set(STATUSES)
    refused = rows[rows["status"] != "ok"]
    assert refused["boneage"].isna().all() and (refused["message"].str.len() > 0).all()


def test_dicom_fixtures_are_estimated_alike_and_non_hands_refused_with_a_reason(
        gated: Path, fixtures, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = fixtures["cr_mono2_uncompressed"].path.parent
    with caplog.at_level(logging.INFO):
        metrics = predict(gated, folder, tmp_path, tmp_path / "out")
    rows = read_rows(tmp_path / "out" / PREDICTIONS).set_index("id")
    assert len(rows) == len(fixtures)
    _ok_rows_are_sane(rows.reset_index())
    for name, fixture in fixtures.items():
        assert (rows.loc[name, "status"] == "ok") == fixture.estimated, (name, rows.loc[name, "message"])
    lossless = [n for n, f in fixtures.items() if f.estimated and n != "cr_jpeg12"]
    estimates = rows.loc[lossless, "boneage"]
    assert estimates.max() - estimates.min() <= SAME_ESTIMATE, estimates.to_dict()  # encodings, MONO1, right hands
    assert rows.loc["mr_labelled", "status"] == "not_a_hand_radiograph"
    assert rows.loc["mr_labelled", "message"].startswith("Modality MR is not a projection radiograph")
    assert rows.loc["cr_both_hands", "message"].startswith("laterality B")
    # the clinician's columns: PatientAge, then birth and study dates; the birth date itself is never written
    assert rows.loc["cr_mono2_rle", ["chronological_age", "age_source"]].tolist() == [120.0, "dicom_age"]
    assert rows.loc["cr_mono1", "age_source"] == "dicom_dates" and rows.loc["cr_mono1", "chronological_age"] == 126.0
    one = rows.loc["cr_mono1"]
    expected = chronology.assess(one["boneage"], one["low"], one["high"], 126.0, "M")
    assert one["assessment"] == expected["assessment"] and one["sds"] == pytest.approx(expected["sds"], abs=1e-5)
    assert rows.loc["dx_mono2_no_body_part", "assessment"] == "no_age"
    assert "20140301" not in (tmp_path / "out" / PREDICTIONS).read_text()
    assert metrics["predict/not_a_hand_radiograph"] == 3
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "Traceback" not in text and "out-of-distribution gate on: threshold" in text
    refusals = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "[not_a_hand" in r.getMessage()]
    assert len(refusals) == 3 and all("\n" not in line for line in refusals)


def _pictures(folder: Path, phantom: pd.Series) -> Path:
    """A CSV of a phantom and three pictures that are no radiograph, all with a sex."""
    rng = np.random.default_rng(3)
    shape = decode(phantom["path"]).image.shape
    write_png(folder / "noise.png", rng.random(shape))
    write_png(folder / "stripes.png", np.tile((np.arange(shape[1]) // 4 % 2).astype(float), (shape[0], 1)))
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    write_png(folder / "rings.png", 0.5 + 0.5 * np.sin(np.hypot(yy - shape[0] / 2, xx - shape[1] / 2) / 3))
    shutil.copyfile(phantom["path"], folder / "hand.png")
    names = ["hand", "noise", "stripes", "rings"]
    pd.DataFrame({"id": names, "path": [f"{n}.png" for n in names], "male": 1,
                  "chronological_age": [150, "", "", ""]}).to_csv(folder / "in.csv", index=False)
    return folder / "in.csv"


def test_the_ood_gate_refuses_pictures_unlike_the_training_images_and_the_bundle_records_it(
        gated: Path, phantom: pd.Series, tmp_path: Path) -> None:
    record = json.loads((gated / GATE).read_text())
    ood = record["ood"]
    assert ood["false_reject"] == 0.1 and ood["calibration"]["split"] == "calibration" and ood["threshold"] > 0
    assert ood["fit"]["split"] == "train" and ood["weights"] == WEIGHTS
    manifest = json.loads((gated / "bundle.json").read_text())
    assert {GATE, WEIGHTS} <= set(manifest["files"])  # hashed with the bundle
    low, high = record["valid_range"]["labels"]
    assert record["valid_range"]["low"] == max(0.0, low - 12) and record["valid_range"]["high"] == high + 12
    source = _pictures(tmp_path / "in", phantom)
    predict(gated, source, tmp_path, tmp_path / "out")
    rows = read_rows(tmp_path / "out" / PREDICTIONS).set_index("id")
    assert rows.loc["hand", "status"] == "ok" and rows.loc["hand", "age_source"] == "input"
    for name in ("noise", "stripes", "rings"):
        assert rows.loc[name, "status"] == "out_of_distribution", (name, rows.loc[name].to_dict())
        assert rows.loc[name, "ood_score"] > ood["threshold"] > rows.loc["hand", "ood_score"]
    predict(gated, source, tmp_path, tmp_path / "off", "predict.gate.ood=false")
    off = read_rows(tmp_path / "off" / PREDICTIONS).set_index("id")
    assert "out_of_distribution" not in set(off["status"]) and off["ood_score"].notna().all()


def test_planted_estimates_outside_the_valid_range_are_never_ok_and_intervals_are_cut(
        gated: Path, phantom: pd.Series, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    valid = json.loads((gated / GATE).read_text())["valid_range"]
    planted = {"negative": -256.0, "ct": 624.0, "young": valid["low"] + 1.0, "old": valid["high"] - 1.0,
               "mid": 100.0, "above": valid["high"] + 0.5}
    folder = tmp_path / "in"
    folder.mkdir()
    for name in planted:
        shutil.copyfile(phantom["path"], folder / f"{name}.png")
    pd.DataFrame({"id": list(planted), "path": [f"{n}.png" for n in planted], "male": 1,
                  "chronological_age": 60}).to_csv(folder / "in.csv", index=False)
    real = ChainModule.regress

    def plant(self, measured, images):  # noqa: ANN001, ANN202
        real(self, measured, images)
        for m in measured:
            value = planted[m.sample["id"]]
            m.predictions = {mode: {s: np.full_like(a, value) for s, a in by_sex.items()}
                             for mode, by_sex in m.predictions.items()}

    monkeypatch.setattr(ChainModule, "regress", plant)
    predict(gated, folder / "in.csv", tmp_path, tmp_path / "out", "predict.gate.ood=false")
    rows = read_rows(tmp_path / "out" / PREDICTIONS).set_index("id")
    _ok_rows_are_sane(rows.reset_index())
    for name in ("negative", "ct", "above"):
        assert rows.loc[name, "status"] == "out_of_range" and "valid range" in rows.loc[name, "message"]
    assert "below" in rows.loc["negative", "message"] and "above" in rows.loc["ct", "message"]
    assert rows.loc["young", "low"] == valid["low"] and rows.loc["old", "high"] == valid["high"]  # cut to the range
    assert rows.loc["young", "high"] > rows.loc["young", "boneage"] > rows.loc["young", "low"]
    mid = rows.loc["mid"]
    assert mid["age_gap"] == pytest.approx(40.0) and mid["sds"] == pytest.approx(40.0 / 8.79, abs=1e-4)
    assert mid["age_gap_low"] == pytest.approx(mid["low"] - 60) and mid["assessment"] in chronology.ASSESSMENTS


def test_the_page_opens_with_counts_then_estimates_then_the_refused_in_one_line_each(
        gated: Path, fixtures, tmp_path: Path) -> None:
    predict(gated, fixtures["cr_mono2_uncompressed"].path.parent, tmp_path, tmp_path / "out")
    page = (tmp_path / "out" / "predictions.html").read_text()
    counts, estimates, refused = (page.index(marker) for marker in ('id="status-counts"', 'id="estimates"',
                                                                     'id="refused"'))
    assert counts < estimates < refused
    assert "<td>not_a_hand_radiograph</td><td>3</td>" in page
    assert page.count("<li>") == 3 and "Modality MR is not a projection radiograph" in page[refused:]


def test_a_bundle_without_a_gate_record_loads_and_says_its_ood_gate_is_off(
        gated: Path, fixtures, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    old = Path(shutil.copytree(gated, tmp_path / "old"))
    manifest = json.loads((old / "bundle.json").read_text())
    for rel in (GATE, WEIGHTS):
        (old / rel).unlink()
        del manifest["files"][rel]
    (old / "bundle.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.INFO, logger="medal.predict"):
        predict(old, fixtures["cr_mono2_uncompressed"].path.parent, tmp_path, tmp_path / "out")
    lines = [r.getMessage() for r in caplog.records if "records no gate" in r.getMessage()]
    assert len(lines) == 1 and "out-of-distribution gate is off" in lines[0] and "0-240 months" in lines[0]
    rows = read_rows(tmp_path / "out" / PREDICTIONS)
    assert rows["ood_score"].isna().all() and (rows["status"] == "ok").sum() == sum(
        f.estimated for f in fixtures.values())
    assert "records no gate" in (tmp_path / "out" / "predictions.html").read_text()


def _corpus() -> list[Path]:
    """pydicom's test files as installed with it (none fetched: pydicom downloads some on demand, not here)."""
    from pydicom.data import DATA_ROOT

    root = Path(DATA_ROOT) / "test_files"
    return sorted(p for p in root.rglob("*") if p.is_file() and is_dicom(p))


@pytest.mark.slow
def test_pydicom_s_corpus_and_the_fixtures_give_no_impossible_age_and_no_traceback(
        gated: Path, fixtures, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        capfd: pytest.CaptureFixture) -> None:
    corpus = _corpus()
    assert len(corpus) >= 150, len(corpus)  # pydicom 3.0 installs 176 such files
    paths = corpus + [f.path for f in fixtures.values()]
    ids = [f"{k:03d}_{p.name}" for k, p in enumerate(paths)]
    pd.DataFrame({"id": ids, "path": [str(p) for p in paths]}).to_csv(tmp_path / "in.csv", index=False)
    with caplog.at_level(logging.INFO):
        predict(gated, tmp_path / "in.csv", tmp_path, tmp_path / "out", "predict.sex=unknown")
    rows = read_rows(tmp_path / "out" / PREDICTIONS).set_index("id")
    assert len(rows) == len(paths) and rows.index.is_unique
    _ok_rows_are_sane(rows.reset_index())
    ok = rows[rows["status"] == "ok"]
    valid = json.loads((gated / GATE).read_text())["valid_range"]
    assert ((ok["boneage"] >= valid["low"]) & (ok["boneage"] <= valid["high"])).all()
    for image_id, path in zip(ids, paths, strict=True):
        if rows.loc[image_id, "status"] == "ok":
            header = read_header(path)
            assert header.modality in (None, "CR", "DX", "RG", "OT", "SC"), (image_id, header.modality)
    for fixture, image_id in zip(fixtures.values(), ids[len(corpus):], strict=True):
        assert (rows.loc[image_id, "status"] == "ok") == fixture.estimated, (image_id, rows.loc[image_id, "message"])
    printed = capfd.readouterr()
    text = "\n".join(r.getMessage() for r in caplog.records) + printed.out + printed.err
    assert "Traceback" not in text
    counts = rows["status"].value_counts().to_dict()
    (tmp_path / "counts.json").write_text(json.dumps(counts))
    print(f"\ncorpus: {len(corpus)} pydicom files + {len(fixtures)} fixtures; statuses {counts}")
