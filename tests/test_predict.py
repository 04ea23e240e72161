"""`medal export` and `medal predict` on a bundle of a regressor on whole radiographs (seconds to train).

The full chain (committee, GAN, regressor) and the reproduction of a bone age run's test predictions are
checked on the smoke pipeline in tests/test_pipeline_task.py; the coverage of the intervals in
tests/test_coverage.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.browser import CHROMIUM, NO_CHROMIUM, render_dom
from helpers.bundles import export, predict
from helpers.rsna_layouts import truncate

from medal.bundle.load import load_bundle
from medal.data.images import write_png
from medal.data.rsna import read_index
from medal.errors import MedalError
from medal.predict import run as predict_run
from medal.predict.chain import ChainModule
from medal.predict.rows import PREDICTIONS, read_rows


@pytest.fixture(scope="module")
def bundle(raw_regressor: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle of one tiny regressor with a sex input (so the sex is needed), exported with ONNX copies."""
    root = tmp_path_factory.mktemp("raw_bundle")
    path, metrics = export([raw_regressor], root / "export", "export.onnx=true")
    assert metrics["export/calibration_images"] >= 15
    return path


def _csv(tiny_phantoms: Path, path: Path, ids: list[str] | None = None, sex: bool = True) -> Path:
    index = read_index(tiny_phantoms, strict=False)
    rows = index if ids is None else index[index["id"].isin(ids)]
    table = pd.DataFrame({"id": rows["id"], "path": rows["path"]})
    if sex:
        table["male"] = rows["male"].astype(int).to_numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    return path


def _tree_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return digest.hexdigest()


def test_bundle_layout_manifest_and_onnx_copies(bundle: Path) -> None:
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert manifest["format"] == 1 and {"medal", "torch", "timm"} <= set(manifest["versions"])
    assert set(manifest["files"]) >= {"configs/inference.json", "calibration.json", "models/regressor_all.safetensors",
                                      "models/regressor_all.onnx", "docs/README.md"}
    assert manifest["parts"]["regressors"][0]["settings"]["model"]["sex_input"] is True
    assert manifest["data"]["name"] == "phantom" and Path(manifest["data"]["split_file"]).is_file()
    onnx = manifest["parts"]["onnx"]["regressor_all"]
    assert onnx["inputs"] == ["image", "male"] and onnx["max_abs_diff"] < 1e-3  # months
    import onnxruntime as ort

    session = ort.InferenceSession(str(bundle / onnx["file"]), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image", "male"]


def test_a_tampered_weight_file_fails_in_one_line(bundle: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(bundle, tmp_path / "b"))
    weights = copy / "models" / "regressor_all.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(MedalError, match=r"regressor_all.safetensors: sha256 differs from bundle.json") as err:
        load_bundle(copy)
    assert "\n" not in str(err.value)


def test_a_bundle_of_another_medal_version_loads_or_says_why_not(bundle: Path, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    copy = Path(shutil.copytree(bundle, tmp_path / "b"))
    manifest = json.loads((copy / "bundle.json").read_text())
    with caplog.at_level(logging.INFO, logger="medal.bundle"):
        (copy / "bundle.json").write_text(json.dumps({**manifest, "versions": {**manifest["versions"],
                                                                                "medal": "0.0.9"}}))
        assert load_bundle(copy).chain.regressors[0].name == "all"
    assert any("bundle made with medal 0.0.9" in r.getMessage() for r in caplog.records)
    for fmt, why in ((99, r"bundle format 99 \(medal 0.0.9\) is newer than this medal"),
                     (0, r"bundle format 0 \(medal 0.0.9\) is older than this medal reads")):
        (copy / "bundle.json").write_text(json.dumps({**manifest, "format": fmt,
                                                      "versions": {**manifest["versions"], "medal": "0.0.9"}}))
        with pytest.raises(MedalError, match=why):
            load_bundle(copy)


def test_predictions_page_and_intervals_on_a_labelled_data_set(bundle: Path, tiny_phantoms: Path,
                                                                tmp_path: Path) -> None:
    metrics = predict(bundle, tiny_phantoms, tmp_path, tmp_path / "out")
    rows = read_rows(tmp_path / "out" / PREDICTIONS)
    assert len(rows) == 64 and (rows["status"] == "ok").all() and metrics["predict/ok"] == 64
    assert (rows["low"] <= rows["boneage"]).all() and (rows["boneage"] <= rows["high"]).all()
    assert (rows["sex_source"] == "labels").all() and set(rows["calibration"]) <= {"all", "male", "female"}
    assert 0 <= metrics["predict/coverage"] <= 1 and np.isfinite(metrics["predict/mae"])
    for rel in list(rows["overlay"]) + list(rows["thumb"]):
        assert (tmp_path / "out" / rel).is_file()
    page = (tmp_path / "out" / "predictions.html").read_text()
    assert page.count("<img ") == 128


@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
def test_the_predictions_page_shows_every_picture_in_headless_chromium(bundle: Path, tiny_phantoms: Path,
                                                                         tmp_path: Path) -> None:
    ids = sorted(read_index(tiny_phantoms, strict=False)["id"])[:6]
    predict(bundle, _csv(tiny_phantoms, tmp_path / "in.csv", ids), tmp_path, tmp_path / "out")
    dom = render_dom(tmp_path / "out" / "predictions.html", tmp_path)
    assert 'data-loaded="12"' in dom and 'data-total="12"' in dom


def test_bad_inputs_are_one_line_and_one_row_each_and_the_rest_is_predicted(
        bundle: Path, tiny_phantoms: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    index = read_index(tiny_phantoms, strict=False).head(4)
    folder = tmp_path / "new"
    folder.mkdir()
    for row in index.itertuples():
        shutil.copyfile(row.path, folder / f"{row.id}.png")
    shutil.copyfile(index["path"].iloc[0], folder / "cut.png")
    truncate(folder / "cut.png")
    (folder / "text.png").write_text("not an image")
    write_png(folder / "flat.png", np.full((64, 48), 0.3))
    table = pd.DataFrame({"id": [*index["id"], "cut", "text", "flat", "nosex"],
                          "path": [str(folder / f"{i}.png") for i in index["id"]]
                          + [str(folder / n) for n in ("cut.png", "text.png", "flat.png")] + [index["path"].iloc[1]],
                          "male": [*index["male"].astype(int), 1, 1, 1, ""]})
    table.to_csv(tmp_path / "in.csv", index=False)
    with caplog.at_level(logging.WARNING, logger="medal.predict"):
        metrics = predict(bundle, tmp_path / "in.csv", tmp_path, tmp_path / "out")
    rows = read_rows(tmp_path / "out" / PREDICTIONS).set_index("id")
    expected = {"cut": "unreadable", "text": "unreadable", "flat": "empty_image", "nosex": "no_sex"}
    assert {i: rows.loc[i, "status"] for i in expected} == expected
    assert rows.loc[list(expected), "boneage"].isna().all()
    assert (rows.loc[list(index["id"]), "status"] == "ok").all() and rows.loc[list(index["id"]), "boneage"].notna().all()
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for name, status in expected.items():
        hits = [line for line in lines if line.endswith(f"[{status}]") and (name in line or status == "no_sex")]
        assert len(hits) == 1 and "\n" not in hits[0], (name, lines)
    assert metrics["predict/ok"] == 4 and metrics["predict/unreadable"] == 2

    # predict.sex=unknown: the image without a sex gets the average of both, and says so
    predict(bundle, tmp_path / "in.csv", tmp_path, tmp_path / "out_unknown", "predict.sex=unknown")
    unknown = read_rows(tmp_path / "out_unknown" / PREDICTIONS).set_index("id").loc["nosex"]
    assert unknown["status"] == "ok" and unknown["sex"] == "unknown" and unknown["sex_source"] == "averaged"
    assert unknown["calibration"] == "unknown"


def test_a_killed_run_resumes_without_redoing_rows_and_never_writes_into_its_input(
        bundle: Path, tiny_phantoms: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = sorted(read_index(tiny_phantoms, strict=False)["id"])[:10]
    source = _csv(tiny_phantoms, tmp_path / "in" / "list.csv", ids)
    before = _tree_hash(tiny_phantoms)
    real_end = predict_run.RowSink.on_predict_batch_end
    calls = {"batches": 0, "images": 0}

    def killed_after_one_batch(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0):
        real_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx)
        calls["batches"] += 1
        if calls["batches"] == 1:
            raise RuntimeError("killed mid-run")

    monkeypatch.setattr(predict_run.RowSink, "on_predict_batch_end", killed_after_one_batch)
    with pytest.raises(RuntimeError, match="killed mid-run"):
        predict(bundle, source, tmp_path, tmp_path / "out", "predict.batch_size=4")
    assert len(read_rows(tmp_path / "out" / PREDICTIONS)) == 4
    real_measure = ChainModule.measure
    monkeypatch.setattr(ChainModule, "measure",
                        lambda self, batch: calls.__setitem__("images", calls["images"] + len(batch))
                        or real_measure(self, batch))
    metrics = predict(bundle, source, tmp_path, tmp_path / "out", "predict.batch_size=4")
    assert calls["images"] == 6 and metrics["predict/ok"] == 10
    order = pd.read_csv(source, dtype={"id": str})["id"].tolist()
    assert read_rows(tmp_path / "out" / PREDICTIONS)["id"].tolist() == order  # input order
    assert predict(bundle, source, tmp_path, tmp_path / "out", "predict.batch_size=4") == metrics  # done: kept
    with pytest.raises(MedalError, match=r"other settings \(options.tta\)"):
        predict(bundle, source, tmp_path, tmp_path / "out", "predict.tta=flip")
    with pytest.raises(MedalError, match=r"inside the input"):
        predict(bundle, tiny_phantoms, tmp_path, tiny_phantoms / "predictions")
    assert _tree_hash(tiny_phantoms) == before


def test_a_rerun_of_a_finished_export_or_predict_keeps_the_first_run_s_metrics_json(
        raw_regressor: Path, tiny_phantoms: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The same command again in the same run folder (`hydra.run.dir=<run>`): the work is reused, and that run's
    metrics.json stays as the run that did the work wrote it (its time, its mtime)."""
    from helpers.hydra_compose import compose_task

    from medal.bundle.export import run_export
    from medal.tasks.runner import run_task

    ids = sorted(read_index(tiny_phantoms, strict=False)["id"])[:4]
    source = _csv(tiny_phantoms, tmp_path / "in" / "list.csv", ids)
    bundle = tmp_path / "export" / "run" / "bundle"
    tasks = {"export": (run_export, lambda: compose_task("export", [f"export.regressors=['{raw_regressor}']"],
                                                          tmp_path / "export")),
             "predict": (predict_run.run_predict, lambda: compose_task(
                 "predict", [f"bundle={bundle}", f"input={source}", "trainer.enable_progress_bar=false"],
                 tmp_path / "predict"))}
    for name, (task, cfg) in tasks.items():
        run_task(task, cfg())
        path = tmp_path / name / "run" / "metrics.json"
        before, stamp = path.read_text(), path.stat().st_mtime_ns
        first = json.loads(before)
        assert first["status"] == "ok" and len(first) > 5, first  # the work's metrics, not a near-empty record
        caplog.clear()
        with caplog.at_level(logging.INFO):
            run_task(task, cfg())
        assert path.read_text() == before and path.stat().st_mtime_ns == stamp, name
        text = caplog.text
        assert "reused" in text and "finished by an earlier run; skipped, its metrics.json is kept" in text, name


def test_shards_cover_the_input_once_and_merge_into_the_whole_run(bundle: Path, tiny_phantoms: Path,
                                                                   tmp_path: Path) -> None:
    source = _csv(tiny_phantoms, tmp_path / "in.csv")
    whole = read_rows(tmp_path / "w" / PREDICTIONS) if predict(bundle, source, tmp_path, tmp_path / "w") else None
    for k in range(3):
        predict(bundle, source, tmp_path, tmp_path / "sweep" / str(k), "predict.num_shards=3", f"predict.shard={k}")
    parts = [read_rows(tmp_path / "sweep" / str(k) / PREDICTIONS) for k in range(3)]
    assert sum(len(p) for p in parts) == 64 and len(set().union(*(set(p["id"]) for p in parts))) == 64
    metrics = predict(bundle, source, tmp_path, tmp_path / "merged", "predict.merge=true",
                      f"predict.parts={tmp_path / 'sweep'}")
    merged = read_rows(tmp_path / "merged" / PREDICTIONS).set_index("id").sort_index()
    assert metrics["predict/shards"] == 3 and len(merged) == 64
    np.testing.assert_allclose(merged["boneage"], whole.set_index("id").sort_index()["boneage"], atol=1e-4)
    assert all((tmp_path / "merged" / rel).is_file() for rel in merged["overlay"])
    shutil.rmtree(tmp_path / "sweep" / "1")
    with pytest.raises(MedalError, match=r"shard\(s\) \[1\] of 3 missing"):
        predict(bundle, source, tmp_path, tmp_path / "merged2", "predict.merge=true",
                f"predict.parts={tmp_path / 'sweep'}")


@pytest.mark.slow
def test_ddp_over_two_processes_predicts_every_image_once_like_one_process(bundle: Path, tiny_phantoms: Path,
                                                                            tmp_path: Path) -> None:
    """`medal predict trainer=ddp trainer.devices=2` (gloo on the CPU): the console script starts its second rank,
    rank 0 gathers both parts after a barrier, and the worker rank leaves rank 0's metrics alone."""
    source = _csv(tiny_phantoms, tmp_path / "in.csv")
    predict(bundle, source, tmp_path, tmp_path / "one")
    medal = Path(sys.executable).with_name("medal")
    done = subprocess.run([str(medal), "predict", f"bundle={bundle}", f"input={source}", "trainer=ddp",
                           "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
                           "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path / 'ddp'}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "MEMBER: 2/2" in done.stderr + done.stdout
    ddp = read_rows(tmp_path / "ddp" / PREDICTIONS)
    assert len(ddp) == 64 and ddp["id"].is_unique and not (tmp_path / "ddp" / "parts").exists()
    one = read_rows(tmp_path / "one" / PREDICTIONS).set_index("id").sort_index()
    np.testing.assert_allclose(ddp.set_index("id").sort_index()["boneage"], one["boneage"], atol=1e-4)
    assert json.loads((tmp_path / "ddp" / "metrics.json").read_text())["predict/ok"] == 64
