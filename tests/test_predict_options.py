"""`medal export` + `medal predict` end to end for what the chain offers beyond one plain regressor: mirror
test-time augmentation (`predict.tta=flip`, with its own calibration table) and a bundle of several regressors
(an ensemble), each checked against the same networks called directly or predicted alone.

Two tiny regressors on whole radiographs (different training seeds, the same split), three bundles (each alone,
both together), shared by the module: seconds on a CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.bundles import export, predict, train_regressor

from medal.boneage.evaluate import autocast_for
from medal.bundle.load import load_bundle
from medal.data.cache import cached_form
from medal.data.images import decode
from medal.data.rsna import read_index
from medal.hardware import use_bf16
from medal.predict.conformal import conformal_radius
from medal.predict.ood import read_gate
from medal.predict.rows import PREDICTIONS, read_rows

COVERAGE = 0.8
# the split's seed is not the training seed; a calibration split as large as the validation one (about 17 images)
MEMBER = ["model.sex_input=true", "data.split.val_fraction=0.3", "data.split.calibration=0.3"]


@pytest.fixture(scope="module")
def bundles(tiny_phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{"first", "second": one regressor each; "ensemble": both}."""
    root = tmp_path_factory.mktemp("members")
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny nets on a shared machine
    try:
        runs = [train_regressor(tiny_phantoms, root / f"seed{seed}", *MEMBER, f"seed={seed}") for seed in (0, 1)]
        return {"first": export(runs[:1], root / "first")[0], "second": export(runs[1:], root / "second")[0],
                "ensemble": export(runs, root / "ensemble")[0]}
    finally:
        torch.set_num_threads(torch_threads)


@pytest.fixture(scope="module")
def inputs(tiny_phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight labelled radiographs with their sex, as a CSV input."""
    index = read_index(tiny_phantoms, strict=False).sort_values("id").head(8)
    path = tmp_path_factory.mktemp("inputs") / "eight.csv"
    pd.DataFrame({"id": index["id"], "path": index["path"], "male": index["male"].astype(int)}).to_csv(path,
                                                                                                        index=False)
    return path


def _predicted(bundle: Path, inputs: Path, out: Path, *extra: str, coverage: float = COVERAGE) -> pd.DataFrame:
    predict(bundle, inputs, out.parent, out, f"predict.coverage={coverage}", *extra)
    rows = read_rows(out / PREDICTIONS).set_index("id")
    assert (rows["status"] == "ok").all(), rows["message"].tolist()
    assert np.isfinite(rows[["boneage", "low", "high"]].to_numpy()).all()
    return rows


def _residuals(calibration: dict, mode: str) -> np.ndarray:
    """(n,) absolute residuals of the calibration images in TTA `mode`."""
    cases = calibration["cases"]
    return np.abs(np.array(cases["known"][mode]) - np.array(cases["reference"]))


def _radius(calibration: dict, mode: str, coverage: float = COVERAGE) -> float:
    """The half-width at `coverage` ranked against every calibration image's residual in TTA `mode`: what each
    interval here gets, as the few calibration images are fewer than export.conformal's min_band per age band and
    min_cohort per sex (so predictions.csv's `calibration` says `all`)."""
    return conformal_radius(_residuals(calibration, mode), coverage)


def _cut(rows: pd.DataFrame, radius: float, bundle: Path) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of the estimates +- `radius`, cut at both ends to the bundle's valid range as an `ok` row's
    interval is (medal.predict.valid_range); at least one end of one row is left uncut, so the radius shows."""
    valid = read_gate(bundle).valid_range
    low, high = rows["boneage"].to_numpy() - radius, rows["boneage"].to_numpy() + radius
    assert (low > valid.low).any() or (high < valid.high).any()
    return np.maximum(valid.low, low), np.minimum(valid.high, high)


def _telling_coverage(calibration: dict) -> float:
    """A coverage whose rank (k of n residuals at k / (n + 1)) is where the two TTA modes' sorted residuals differ
    most, so an interval shows which table it came from (a barely trained net gives some images the same estimate
    in both modes, and a fixed coverage may rank on one of those)."""
    gap = np.abs(np.sort(_residuals(calibration, "none")) - np.sort(_residuals(calibration, "flip")))
    return (int(np.argmax(gap)) + 1) / (gap.size + 1)


def _direct(bundle: Path, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(months of each image, months of its mirror image) from the bundle's one regressor called directly on its
    input as the training cache holds it (`cached_form` at the regressor's size and fit), with the bf16 autocast
    its run recorded (`predict.bf16=as_trained`)."""
    loaded = load_bundle(bundle)
    (spec,) = loaded.chain.regressors
    module = loaded.regressor(spec).eval()
    x = torch.from_numpy(np.stack([cached_form(decode(p).image, spec.image_size, spec.fit).astype(np.float32)
                                   for p in rows["path"]]))[:, None]
    male = torch.tensor((rows["sex"] == "M").to_numpy(dtype=np.float32))
    with torch.inference_mode(), autocast_for(torch.device("cpu"), use_bf16(spec.bf16, "cpu")):
        return module(x, male).float().numpy(), module(x.flip(-1), male).float().numpy()


def test_mirror_tta_averages_each_image_with_its_mirror_and_takes_its_interval_from_the_flip_table(
        bundles: dict[str, Path], inputs: Path, tmp_path: Path, one_thread: None) -> None:
    bundle = bundles["first"]
    calibration = load_bundle(bundle).calibration
    coverage = _telling_coverage(calibration)
    plain = _predicted(bundle, inputs, tmp_path / "none", coverage=coverage)
    flip = _predicted(bundle, inputs, tmp_path / "flip", "predict.tta=flip", coverage=coverage)
    assert not np.allclose(flip["boneage"], plain["boneage"], atol=1e-3)  # the mirror changes the estimate

    months, mirrored = _direct(bundle, flip)
    assert plain["boneage"].to_numpy() == pytest.approx(months, abs=1e-4)
    assert flip["boneage"].to_numpy() == pytest.approx((months + mirrored) / 2, abs=1e-4)  # conf/predict.yaml's claim

    for rows, mode in ((plain, "none"), (flip, "flip")):  # two tables, told apart at this coverage
        assert set(rows["calibration"]) == {"all"}
        radius = _radius(calibration, mode, coverage)
        other = _radius(calibration, "flip" if mode == "none" else "none", coverage)
        assert np.isfinite(radius) and not np.isclose(radius, other)
        low, high = _cut(rows, radius, bundle)
        assert rows["low"].to_numpy() == pytest.approx(low, abs=1e-5)
        assert rows["high"].to_numpy() == pytest.approx(high, abs=1e-5)
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert len(manifest["parts"]["regressors"]) == 1


def test_an_ensemble_estimates_the_mean_of_its_members_and_fills_the_spread(
        bundles: dict[str, Path], inputs: Path, tmp_path: Path, one_thread: None) -> None:
    first = _predicted(bundles["first"], inputs, tmp_path / "first")
    second = _predicted(bundles["second"], inputs, tmp_path / "second")
    both = _predicted(bundles["ensemble"], inputs, tmp_path / "both")
    manifest = json.loads((bundles["ensemble"] / "bundle.json").read_text())
    assert [r["name"] for r in manifest["parts"]["regressors"]] == ["all_1", "all_2"]
    assert not np.allclose(first["boneage"], second["boneage"], atol=1e-2)  # two different members

    members = np.stack([first["boneage"].to_numpy(), second["boneage"].to_numpy()])
    assert both["boneage"].to_numpy() == pytest.approx(members.mean(0), abs=1e-5)
    assert both["spread"].to_numpy() == pytest.approx(members.std(0), abs=1e-5)  # the members' sd
    assert (both["spread"] > 0).all()
    assert first["spread"].isna().all() and second["spread"].isna().all()  # one model: no spread

    # its interval comes from the ensemble's own calibration (the residuals of the mean, not of a member)
    assert set(both["calibration"]) == {"all"}
    low, high = _cut(both, _radius(load_bundle(bundles["ensemble"]).calibration, "none"), bundles["ensemble"])
    assert both["low"].to_numpy() == pytest.approx(low, abs=1e-5)
    assert both["high"].to_numpy() == pytest.approx(high, abs=1e-5)
