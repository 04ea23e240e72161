"""`medal pipeline` end to end at seconds-scale sizes: report, skipping, forcing, crash resume, folder oracle;
and its stage overrides checked before anything runs."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.browser import CHROMIUM, NO_CHROMIUM, render_dom
from helpers.bundles import predict
from helpers.dicom_files import write_dicom
from helpers.hydra_compose import compose_task

from medal.active.oracles import ANSWER_SUFFIX, MANIFEST
from medal.data.images import read_image, write_png
from medal.data.phantom.sheet import ARTIFACTS as PHANTOM_ARTIFACTS
from medal.data.rsna import read_index
from medal.errors import MedalError
from medal.pipeline import plan
from medal.pipeline.plan import StageBuilder
from medal.pipeline.run import run_pipeline
from medal.pipeline.stages import StageResult, read_record
from medal.predict.rows import PREDICTIONS, read_rows
from medal.tasks import runner

SECTIONS = ["## Data", "## Hand segmentation", "## Image enhancement", "## Bone age", "## Class activation maps",
            "## Use the trained model", "## Configuration and versions"]


def _run(root: Path, *overrides: str) -> tuple[dict, Path]:
    cfg = compose_task("pipeline", ["experiment=smoke", *overrides], root)
    return run_pipeline(cfg), Path(cfg.pipeline.dir)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, Path]:
    root = tmp_path_factory.mktemp("pipeline")
    metrics, state = _run(root)
    return root, metrics, state


def test_tiny_pipeline_runs_every_stage_and_writes_the_report(finished: tuple[Path, dict, Path]) -> None:
    root, metrics, state = finished
    assert metrics["pipeline/stopped"] == 0.0
    for stage in ("phantoms", "check_data", "segment", "enhance", "enhance_clahe", "enhance_none", "boneage_all", "cam",
                  "export", "heldout_phantoms", "predict"):
        assert read_record(state / "state", stage) is not None, stage
    assert metrics["segment/test/dice"] > 0.5
    assert 0 < metrics["boneage_all/test/mae"] < 240
    assert metrics["predict/predict/images"] == 12 and metrics["predict/predict/ok"] == 12
    report = (root / "run" / "report.md").read_text()
    assert [s for s in SECTIONS if s not in report] == []
    images = [line.split("](", 1)[1].rstrip(")") for line in report.splitlines() if line.startswith("![")]
    assert len(images) >= 7 and all((root / "run" / link).is_file() for link in images)
    assert (root / "run" / "report.html").is_file()


@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
def test_pipeline_report_figures_all_load_in_headless_chromium(finished: tuple[Path, dict, Path],
                                                               tmp_path: Path) -> None:
    root, _, _ = finished
    html = root / "run" / "report.html"
    n_figures = html.read_text().count("<img ")
    dom = render_dom(html, tmp_path)
    assert n_figures >= 7 and f'data-loaded="{n_figures}"' in dom and f'data-total="{n_figures}"' in dom


def test_rerun_skips_finished_stages_and_force_redoes_one(finished: tuple[Path, dict, Path],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    root, _, _ = finished
    called: list[str] = []
    real = runner.task_function
    monkeypatch.setattr(plan, "task_function", lambda name: called.append(name) or real(name))
    _run(root)
    assert called == []
    _run(root, "pipeline.force=[cam]")
    assert called == ["cam"]


def test_crash_in_a_stage_then_rerun_keeps_finished_stages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = runner.task_function
    called: list[str] = []

    def crashing(name: str):
        called.append(name)
        if name == "enhance":
            raise RuntimeError("killed during the enhancer")
        return real(name)

    overrides = ["pipeline.cam_cohort=null", "pipeline.cohorts=[]"]
    monkeypatch.setattr(plan, "task_function", crashing)
    with pytest.raises(RuntimeError, match="killed during the enhancer"):
        _run(tmp_path, *overrides)
    assert called == ["phantoms", "check-data", "segment", "enhance"]
    called.clear()
    monkeypatch.setattr(plan, "task_function", lambda name: called.append(name) or real(name))
    metrics, _ = _run(tmp_path, *overrides)
    assert called == ["enhance", "enhance", "enhance"]  # gan, clahe, none; nothing before the crash redone
    assert metrics["pipeline/stopped"] == 0.0


def test_folder_oracle_stops_the_pipeline_and_continues_after_answers(tmp_path: Path) -> None:
    overrides = ["pipeline.cam_cohort=null", "pipeline.cohorts=[]", "pipeline.enhance=none",
                 "pipeline.common=['oracle=folder']"]
    cfg = compose_task("pipeline", ["experiment=smoke", *overrides], tmp_path)
    masks, work_dir = Path(cfg.data.root) / "masks", Path(cfg.data.work_dir)
    stops = 0
    for _ in range(4):
        metrics, state = _run(tmp_path, *overrides)
        if not metrics["pipeline/stopped"]:
            break
        stops += 1
        assert read_record(state / "state", "segment") is None  # an unanswered round is not a finished stage
        round_dir = sorted(work_dir.glob("al/*/round_*"))[-1]
        for image_id in json.loads((round_dir / MANIFEST).read_text())["ids"]:  # the person answers
            shutil.copyfile(masks / f"{image_id}.png", round_dir / f"{image_id}{ANSWER_SUFFIX}")
    assert stops >= 1 and metrics["pipeline/stopped"] == 0.0
    assert read_record(state / "state", "segment")["metrics"]["al/labelled"] == 16


def test_every_artefact_a_stage_declares_is_where_it_says(finished: tuple[Path, dict, Path]) -> None:
    """The report finds files only through the producing tasks' `ARTIFACTS`: a renamed file must fail here."""
    root, _, _ = finished
    cfg = compose_task("pipeline", ["experiment=smoke"], root)
    stages = {s.name: s for s in StageBuilder(cfg).stages()}
    for name in ("segment", "enhance", "boneage_all", "cam", "export", "predict"):  # baselines train no GAN
        stage = stages[name]
        result = StageResult(name, "done", 0.0, dir=stage.dir, artifacts=stage.artifacts)
        assert stage.artifacts and {a: result.files(a) != [] for a in stage.artifacts} == dict.fromkeys(
            stage.artifacts, True), name
    assert (Path(cfg.data.root) / PHANTOM_ARTIFACTS["contact_sheet"]).is_file()


@pytest.mark.parametrize(("override", "message"), [
    ('pipeline.stages.boneage=["model=tiny","trainer.max_epoch=2"]',
     r"pipeline.stages.boneage: trainer.max_epoch=2 matches no key of any stage's config \(boneage_all\); "
     r"check its spelling \(`medal boneage --cfg job` prints every key\)"),
    ('pipeline.common=["segment.image_sise=32"]',
     r"pipeline.common: segment.image_sise=32 matches no key of any stage's config \(phantoms, check_data, "),
    ('pipeline.stages.boneage=["model=tinyy"]',
     r"pipeline stage boneage_all: model=tinyy: conf/model/ has no tinyy.yaml; choose one of: "),
    ('+pipeline.stages.segmnet=["al.budget=8"]', r"pipeline.stages.segmnet: not a pipeline task; choose from phantoms"),
])
def test_a_stage_override_that_fits_no_stage_is_refused_before_anything_runs(
        override: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    called: list[str] = []
    monkeypatch.setattr(plan, "task_function", lambda name: called.append(name))
    cfg = compose_task("pipeline", ["experiment=smoke", override], tmp_path)
    with pytest.raises(MedalError, match=message) as err:
        run_pipeline(cfg)
    assert "\n" not in str(err.value) and called == [] and not Path(cfg.pipeline.dir).exists()


def test_an_override_for_a_config_this_run_does_not_compose_is_logged_not_refused(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The smoke experiment's GAN settings with pipeline.enhance=none, its bone age ones with no cohort."""
    cfg = compose_task("pipeline", ["experiment=smoke", "pipeline.enhance=none", "pipeline.cohorts=[]",
                                    "pipeline.cam_cohort=null"], tmp_path)
    with caplog.at_level(logging.WARNING, logger="medal.pipeline"):
        names = [s.name for s in StageBuilder(cfg).stages()]
    assert names == ["phantoms", "check_data", "segment", "enhance", "enhance_clahe"]
    warnings = [r.getMessage() for r in caplog.records]
    assert ("pipeline.stages.enhance: enhance.epochs=1 is not used: no stage of this run has that key "
            "(conf/enhance.yaml with enhance=gan or gan_l1 has it)") in warnings
    assert ("pipeline.stages.boneage: trainer.max_epochs=2 is not used: no stage of this run has that key "
            "(conf/boneage.yaml has it)") in warnings


def test_stage_overrides_given_as_one_string_apply_like_a_list(tmp_path: Path) -> None:
    cfg = compose_task("pipeline", ["experiment=smoke", 'pipeline.stages.segment="al.budget=8 oracle=folder"',
                                    "pipeline.common=[]"], tmp_path)
    builder = StageBuilder(cfg)
    segment = next(p for p in builder.plan() if p.name == "segment")
    task_cfg = builder.task_config(segment)
    assert task_cfg.al.budget == 8 and task_cfg.oracle.name == "folder"
    assert task_cfg.segment.image_size == 256  # the smoke list was replaced, not merged



def test_a_stage_override_of_a_key_that_a_selected_option_brings_applies(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`model.timm_kwargs` exists only once `experiment=boneage_cpu` has selected its model: checked against the
    bare task config it was dropped with an "is not used" warning while the stage trained without it."""
    cfg = compose_task("pipeline", ["experiment=demo", 'pipeline.stages.boneage=["experiment=boneage_cpu",'
                                    '"model.timm_kwargs.output_stride=8","trainer.max_epochs=3"]'], tmp_path)
    builder = StageBuilder(cfg)
    with caplog.at_level(logging.WARNING, logger="medal.pipeline"):
        builder.check_overrides(builder.plan())
    assert not [r for r in caplog.records if "is not used" in r.getMessage()]
    boneage = next(p for p in builder.plan() if p.name == "boneage_all")
    task_cfg = builder.task_config(boneage)
    assert task_cfg.model.name == "tiny_os16" and task_cfg.model.timm_kwargs.output_stride == 8
    assert task_cfg.trainer.max_epochs == 3

def test_a_stage_fingerprints_what_its_config_files_say_not_where_the_project_lies(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An edit of conf/experiment/boneage_cpu.yaml changes the bone age stage's settings (and so redoes it) and
    leaves the segmentation stage's alone; the project's location (paths) is not part of them."""
    conf = tmp_path / "conf"
    shutil.copytree(plan.CONF_DIR, conf)
    monkeypatch.setattr(plan, "CONF_DIR", str(conf))

    def settings(root: Path) -> dict[str, dict]:
        builder = StageBuilder(compose_task("pipeline", ["experiment=demo"], root))
        return {p.name: builder.settings(p) for p in builder.plan()}

    before = settings(tmp_path / "one")
    assert before == settings(tmp_path / "elsewhere")  # another project root: the same settings
    assert before["boneage_all"]["scheduler"]["per"] == "epoch" and "paths" not in before["boneage_all"]
    recipe = conf / "experiment" / "boneage_cpu.yaml"
    recipe.write_text(recipe.read_text().replace("decay: 0.05", "decay: 0.1"))
    after = settings(tmp_path / "one")
    assert after["boneage_all"]["scheduler"]["decay"] == 0.1 and after["segment"] == before["segment"]


@pytest.mark.parametrize(("value", "message"), [
    (5, r"pipeline.common=5: give a list of overrides or one string of space-separated overrides"),
    ("oracle='folder", r"pipeline.common=\"oracle='folder\": No closing quotation; give space-separated overrides"),
])
def test_stage_overrides_that_are_neither_a_list_nor_a_line_are_refused(value: object, message: str) -> None:
    with pytest.raises(MedalError, match=message):
        plan.override_list(value, "pipeline.common")


def _case_csv(path: Path, rows: list[tuple[str, Path, int]]) -> Path:
    pd.DataFrame({"id": [r[0] for r in rows], "path": [str(r[1]) for r in rows],
                  "male": [r[2] for r in rows]}).to_csv(path, index=False)
    return path


def test_the_exported_bundle_reproduces_the_bone_age_runs_test_predictions(finished: tuple[Path, dict, Path],
                                                                           tmp_path: Path) -> None:
    """The bundle is the model: the whole chain from the raw radiographs (coarse polarity, committee, RoI, GAN,
    regressor) gives the run's own test predictions, without TTA."""
    root, _, state = finished
    cfg = compose_task("pipeline", ["experiment=smoke"], root)
    run = pd.read_csv(state / "boneage_all" / "predictions.csv", dtype={"id": str})
    test = run[run["split"] == "test"]
    paths = read_index(cfg.data.root, strict=False).set_index("id")["path"]
    source = _case_csv(tmp_path / "test.csv", [(i, paths[i], int(s == "M")) for i, s in zip(test["id"], test["sex"], strict=True)])
    predict(state / "export" / "bundle", source, tmp_path, tmp_path / "out")
    rows = read_rows(tmp_path / "out" / PREDICTIONS).set_index("id")
    assert len(test) >= 4 and (rows["status"] == "ok").all()
    np.testing.assert_allclose(rows.loc[test["id"], "boneage"].to_numpy(), test["predicted"].to_numpy(), atol=1e-4)


def test_dicom_and_16_bit_png_give_the_estimate_of_the_same_pixels_as_png(finished: tuple[Path, dict, Path],
                                                                         tmp_path: Path) -> None:
    """MONOCHROME2 and MONOCHROME1 12-bit DICOM and a 16-bit PNG of a radiograph's pixels: the estimate of the
    8-bit PNG, within the 12-bit rounding. A near-black image with no hand is a `no_hand` row."""
    root, _, state = finished
    cfg = compose_task("pipeline", ["experiment=smoke"], root)
    meta = pd.read_csv(Path(cfg.data.root) / "phantoms.csv", dtype={"id": str})
    index = read_index(cfg.data.root, strict=False).set_index("id")
    chosen = [meta.loc[meta["inverted"] == flag, "id"].iloc[0] for flag in (False, True) if (meta["inverted"] == flag).any()]
    rows, rng = [], np.random.default_rng(0)
    for image_id in chosen:
        pixels = np.round(read_image(index.loc[image_id, "path"]) * 255) / 255  # the 8-bit grey levels
        male = int(index.loc[image_id, "male"])
        write_png(tmp_path / "in" / f"{image_id}_png8.png", pixels)
        write_png(tmp_path / "in" / f"{image_id}_png16.png", pixels, bits=16)
        stored = np.round(pixels * 4095).astype(int)
        write_dicom(tmp_path / "in" / f"{image_id}_mono2.dcm", stored, sex="M" if male else "F")
        write_dicom(tmp_path / "in" / f"{image_id}_mono1.dcm", 4095 - stored, photometric="MONOCHROME1")
        rows += [(f"{image_id}_{kind}", tmp_path / "in" / f"{image_id}_{kind}.{ext}", male)
                 for kind, ext in (("png8", "png"), ("png16", "png"), ("mono2", "dcm"), ("mono1", "dcm"))]
    write_png(tmp_path / "in" / "dark.png", np.clip(0.02 + rng.normal(0, 0.01, (96, 80)), 0, 1))
    rows.append(("dark", tmp_path / "in" / "dark.png", 1))
    predict(state / "export" / "bundle", _case_csv(tmp_path / "cases.csv", rows), tmp_path, tmp_path / "out")
    out = read_rows(tmp_path / "out" / PREDICTIONS).set_index("id")
    assert out.loc["dark", "status"] == "no_hand" and np.isnan(out.loc["dark", "boneage"])
    for image_id in chosen:
        reference = out.loc[f"{image_id}_png8", "boneage"]
        assert out.loc[f"{image_id}_png16", "boneage"] == pytest.approx(reference, abs=1e-4)
        for kind in ("mono2", "mono1"):
            assert out.loc[f"{image_id}_{kind}", "status"] == "ok"
            assert out.loc[f"{image_id}_{kind}", "boneage"] == pytest.approx(reference, abs=0.5), (image_id, kind)
        assert out.loc[f"{image_id}_mono1", "boneage"] == out.loc[f"{image_id}_mono2", "boneage"]


# -- k-fold cross-validation in the pipeline (pipeline.cv) -------------------------------------------------------

def _beside(finished_root: Path, root: Path, *overrides: str) -> tuple[dict, Path]:
    """The smoke pipeline with `overrides` on the finished pipeline's data set and work folder (its committee and
    enhancer are reused, not retrained), in a pipeline folder and run folder of its own under `root`."""
    cfg = compose_task("pipeline", ["experiment=smoke", f"paths.data_root={finished_root}/outputs/data",
                                    f"paths.work_root={finished_root}/outputs/work", *overrides], root)
    return run_pipeline(cfg), Path(cfg.pipeline.dir)


def _oof(stage_dir: Path) -> pd.DataFrame:
    frame = pd.read_csv(stage_dir / "predictions.csv", dtype={"id": str})
    return frame[frame["split"] == "oof"]


def test_a_k_fold_pipeline_resumes_pools_its_folds_and_exports_them_as_one_cv_plus_bundle(
        finished: tuple[Path, dict, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, _, _ = finished
    real, called = runner.task_function, []

    def crashing(name: str):
        called.append(name)
        if called.count("boneage") == 2:
            raise RuntimeError("killed in fold 1")
        return real(name)

    monkeypatch.setattr(plan, "task_function", crashing)
    with pytest.raises(RuntimeError, match="killed in fold 1"):
        _beside(root, tmp_path, "pipeline.cv.folds=2")
    state = next((tmp_path / "outputs" / "pipeline").iterdir())
    fold0 = {p.name: p.stat().st_mtime_ns for p in (state / "boneage_all_fold0").rglob("*") if p.is_file()}
    assert read_record(state / "state", "boneage_all_fold0") and not read_record(state / "state", "boneage_all_fold1")

    called.clear()
    monkeypatch.setattr(plan, "task_function", lambda name: called.append(name) or real(name))
    metrics, state = _beside(root, tmp_path, "pipeline.cv.folds=2")
    assert called == ["boneage", "cam", "export", "phantoms", "predict"]  # fold 1 on; fold 0 not redone
    assert {p.name: p.stat().st_mtime_ns for p in (state / "boneage_all_fold0").rglob("*") if p.is_file()} == fold0

    # pooled out of fold: the mean over images of the two fold models' out-of-fold errors
    oof = pd.concat([_oof(state / f"boneage_all_fold{i}").assign(fold=i) for i in range(2)], ignore_index=True)
    folds = pd.read_csv(state / "boneage_all_fold0" / "split.csv", dtype={"id": str}).dropna(subset=["fold"])
    assert sorted(oof["id"]) == sorted(folds["id"]) and metrics["boneage_all_cv/cv/folds"] == 2
    assert metrics["boneage_all_cv/cv/mae"] == pytest.approx((oof["predicted"] - oof["true"]).abs().mean(), rel=1e-5)
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Bone age: k-fold cross-validation" in report and "CV+ intervals" in report

    # one bundle of both folds' models: every folded image estimated by its own fold's model, as the fold run did
    calibration = json.loads((state / "export" / "bundle" / "calibration.json").read_text())
    assert calibration["schema"] == 3 and calibration["regressor_folds"] == [0, 1]
    cases = pd.DataFrame({"id": calibration["cases"]["id"], "fold": calibration["cases"]["fold"],
                          "known": calibration["cases"]["known"]["none"]}).set_index("id")
    by_id = oof.set_index("id")
    assert sorted(cases.index) == sorted(by_id.index) and (cases["fold"] == by_id.loc[cases.index, "fold"]).all()
    np.testing.assert_allclose(cases["known"].to_numpy(float), by_id.loc[cases.index, "predicted"].to_numpy(), atol=1e-3)
    roles = pd.read_csv(state / "boneage_all_fold0" / "split.csv", dtype={"id": str})
    assert metrics["export/export/cv_plus_check_images"] == (roles["role"] == "calibration").sum()
    assert metrics["export/export/regressors"] == 2 and metrics["predict/predict/ok"] == 12
    rows = read_rows(state / "predict" / PREDICTIONS)
    assert ((rows["low"] <= rows["boneage"]) & (rows["boneage"] <= rows["high"])).all()
    assert (state / "cam" / "split.csv").read_bytes() == (state / "boneage_all_fold0" / "split.csv").read_bytes()

    called.clear()
    _beside(root, tmp_path, "pipeline.cv.folds=2")
    assert called == []  # every stage finished: nothing redone


@pytest.mark.slow  # two GANs and two folds beside the finished pipeline: a minute under load (plan-level: test_pipeline_cv)
def test_a_refitted_enhancer_per_fold_never_sees_its_folds_images_as_gold_standard_pairs(
        finished: tuple[Path, dict, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medal.enhance import train

    root, _, _ = finished
    trained: list[set[str]] = []
    real = train.PairDataModule

    def recording(input_dir, gold_dir, split, **kwargs):  # every pair an enhancer trains, selects or is scored on
        trained.append(set(split.train) | set(split.val) | set(split.test))
        return real(input_dir, gold_dir, split, **kwargs)

    monkeypatch.setattr(train, "PairDataModule", recording)
    metrics, state = _beside(root, tmp_path, "pipeline.cv.folds=2", "pipeline.cv.refit=[enhance]",
                             "pipeline.export=false")
    assert metrics["pipeline/stopped"] == 0.0 and len(trained) == 2  # the common enhancer is the finished one
    cfg = compose_task("pipeline", ["experiment=smoke"], root)
    gold = {p.stem for p in (Path(cfg.data.work_dir) / "roi_gold").glob("*.png")}  # the gold standards
    for fold in range(2):
        held = set(_oof(state / f"boneage_all_fold{fold}")["id"])
        excluded = set(pd.read_csv(next((state / "cv").glob(f"exclude_fold{fold}_*.csv")), dtype={"id": str})["id"])
        assert excluded == held and held & gold and not trained[fold] & held
        record = json.loads((state / f"boneage_all_fold{fold}" / ".medal" / "boneage.json").read_text())
        assert record["parts"]["data"]["images"].endswith(f"_cv2s0_fold{fold}")
    assert metrics["boneage_all_cv/cv/folds"] == 2  # pooled, though each fold read its own enhancer's images
    assert (state / "cam" / "split.csv").read_bytes() == (state / "boneage_all_fold0" / "split.csv").read_bytes()

