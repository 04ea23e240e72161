"""`medal boneage` and `medal cam` end to end on the tiny phantom set (raw images, 64 px, tiny backbone)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch

from medal.boneage.cam_experiment import check_against_run, run_cam, run_data_config, training_settings
from medal.boneage.evaluate import predict_frame
from medal.boneage.experiment import build_module, run_boneage, run_marker, run_settings
from medal.data.datamodule import BoneAgeDataModule, build_boneage_datamodule
from medal.errors import MedalError
from medal.runs import write_metrics

# /240 scaling: the untrained model predicts ~0 months, so a working loop must move val MAE a long way
# (with z-scores it starts on the train-mean predictor, which 52 images and 4 epochs cannot reliably beat).
FAST = ["model=tiny", "data.images=raw", "data.image_size=64", "data.augment.enabled=false", "finetune=all",
        "scheduler=null", "target.scaling=divide", "optimizer.lr=0.01", "trainer.max_epochs=4",
        "trainer.enable_progress_bar=false", "trainer.precision=32-true", "evaluation.bootstrap=200"]


def test_tiny_training_run_lowers_val_mae_and_writes_its_artifacts(make_cfg, tiny_phantoms, tmp_path) -> None:
    cfg = make_cfg("boneage", [*FAST, f"data.root={tiny_phantoms}"])
    # the run's starting point: same seed, same order of random draws as run_boneage
    pl.seed_everything(0, workers=True)
    datamodule = build_boneage_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    untrained = build_module(cfg, datamodule.frames["train"]["boneage"].to_numpy())
    start = predict_frame(untrained, datamodule.val_dataloader(), "val", bf16=False, progress=False)
    start_mae = float(np.abs(start["predicted"] - start["true"]).mean())

    metrics = run_boneage(cfg)
    assert metrics["val/mae"] < start_mae, (metrics["val/mae"], start_mae)
    for key in ("test/mae", "test/mae_male", "test/mae_female", "test/rmse", "test/bias", "test/within12",
                "test/mae_ci_low", "test/mae_ci_high", "test/mae_mean_predictor", "val/mae"):
        assert np.isfinite(metrics[key]), key
    assert metrics["test/mae_ci_low"] <= metrics["test/mae"] <= metrics["test/mae_ci_high"]

    run = tmp_path / "run"
    predictions = pd.read_csv(run / "predictions.csv", dtype={"id": str})
    # the noise floor: the sidecar's best reader of each test hand, scored on the same test images
    sidecar = pd.read_csv(tiny_phantoms / "phantoms.csv", dtype={"id": str}).set_index("id")
    test = predictions[predictions["split"] == "test"]
    floor_errors = (sidecar.loc[test["id"], "floor_prediction"].to_numpy() - test["true"].to_numpy())
    assert metrics["test/mae_floor"] == pytest.approx(np.abs(floor_errors).mean())
    males = (test["sex"] == "M").to_numpy()
    assert metrics["test/mae_floor_male"] == pytest.approx(np.abs(floor_errors[males]).mean())
    assert 0 < metrics["test/mae_floor"] < metrics["test/mae_mean_predictor"]
    assert set(predictions["split"]) == {"val", "test"}
    assert not set(predictions["id"]) & set(datamodule.frames["train"]["id"])  # never training images
    assert (run / "plots" / "bland_altman.png").is_file() and (run / "plots" / "predicted_vs_true.png").is_file()
    curve = pd.read_csv(run / "csv" / "metrics.csv")
    assert curve["train/loss"].notna().sum() == 4  # one per epoch: the Figure 11 reader depends on it
    assert len(list((run / "checkpoints").glob("best-*.ckpt"))) == 1

    # a finished run is not redone
    write_metrics(run, metrics)
    assert run_boneage(cfg)["test/mae"] == metrics["test/mae"]

    # CAM of the best checkpoint on the run's own test split: data set, images and size come from the run
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    cam_cfg = make_cfg("cam", [f"ckpt={best}", f"paths.output_dir={tmp_path / 'cam'}", "cam.max_overlays=3"])
    cam = run_cam(cam_cfg)
    n_test = len(predictions[predictions["split"] == "test"])
    assert cam["cam/n_male"] + cam["cam/n_female"] == n_test and cam["cam/exact"] == 1.0
    assert cam["cam/image_size"] == 64  # the run's data.image_size (a size unlike the model's hint: the test below)
    assert len(list((tmp_path / "cam" / "overlays").glob("*.png"))) == 3
    assert (tmp_path / "cam" / "cam_by_sex.png").is_file()
    # where the maps lie, against the phantoms' own hand and bone masks (raw images: framed like the cache)
    regions = pd.read_csv(tmp_path / "cam" / "cam_regions.csv", dtype={"id": str})
    assert sorted(regions["id"]) == sorted(test["id"])
    for region in ("hand", "bone", "centre"):
        assert cam[f"cam/{region}_fraction"] == pytest.approx(regions[f"{region}_fraction"].mean())
        assert 0.0 <= cam[f"cam/{region}_fraction"] <= 1.0
    assert 0 < cam["cam/centre_area"] < cam["cam/bone_area"] < cam["cam/hand_area"] < 1
    # references at the map's grid (2x2 at 64 px, stride 32): the hand drawn there beats an even map, and mass on
    # the hand or within one cell of it includes the mass on it
    assert cam["cam/hand_area"] < cam["cam/hand_grid"] < 1 and cam["cam/hand_near"] >= cam["cam/hand_fraction"]


def test_early_stopping_ends_the_run_when_val_mae_stalls(make_cfg, tiny_phantoms) -> None:
    # No improvement can beat a 1000-month min_delta: the run must stop after epoch 0 + `patience` epochs.
    cfg = make_cfg("boneage", [*FAST, f"data.root={tiny_phantoms}", "trainer.max_epochs=6",
                               "early_stopping.patience=1", "early_stopping.min_delta=1000", "evaluation.plots=false"])
    metrics = run_boneage(cfg)
    assert metrics["train/epochs"] == 2
    assert np.isfinite(metrics["test/mae"])


def test_bad_early_stopping_patience_is_one_line_naming_the_key(make_cfg, tiny_phantoms) -> None:
    cfg = make_cfg("boneage", [*FAST, f"data.root={tiny_phantoms}", "early_stopping.patience=0"])
    with pytest.raises(MedalError, match=r"^early_stopping.patience=0: must be >= 1"):
        run_boneage(cfg)


def test_weight_averaging_is_what_validation_keeps_and_tests(make_cfg, tiny_phantoms, tmp_path) -> None:
    # evaluation.bf16=false: scored at the precision training validated in (32-true), so the two MAEs compare the
    # weights alone; `auto` autocasts the re-scoring where a CPU has native bf16 (avx512_bf16/AMX), ~1e-3 apart
    cfg = make_cfg("boneage", [*FAST, f"data.root={tiny_phantoms}", "trainer.max_epochs=2", "ema.decay=0.5",
                               "evaluation.plots=false", "evaluation.bf16=false"])
    metrics = run_boneage(cfg)
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    averaged, raw = last["state_dict"], last["current_model_state"]  # the raw weights: what training resumes from
    assert averaged.keys() == raw.keys()
    assert any(not torch.equal(averaged[k], raw[k]) for k in raw if raw[k].is_floating_point())
    # the checkpoint kept for its val MAE holds the weights that scored it: the test reloads the same average
    assert metrics["val/mae"] == pytest.approx(metrics["val/mae_best_epoch"], rel=1e-4)


def test_a_run_trains_through_a_change_of_input_size(make_cfg, tiny_phantoms, monkeypatch) -> None:
    # two epochs on 32-px batches, one at the full 64 px; validation and test always at 64 px
    cfg = make_cfg("boneage", [*FAST, f"data.root={tiny_phantoms}", "trainer.max_epochs=3", "data.progressive.size=32",
                               "data.progressive.epochs=2", "evaluation.plots=false"])
    seen: set[tuple[bool, int, int]] = set()
    transfer = BoneAgeDataModule.on_after_batch_transfer

    def spy(self, batch, dataloader_idx):
        batch = transfer(self, batch, dataloader_idx)
        seen.add((self.trainer.training, self.trainer.current_epoch, batch["image"].shape[-1]))
        return batch

    monkeypatch.setattr(BoneAgeDataModule, "on_after_batch_transfer", spy)
    metrics = run_boneage(cfg)
    assert sorted(e[1:] for e in seen if e[0]) == [(0, 32), (1, 32), (2, 64)]
    assert {e[2] for e in seen if not e[0]} == {64}
    assert np.isfinite(metrics["test/mae"]) and np.isfinite(metrics["val/mae"])


def test_bad_ema_decay_is_one_line_naming_the_key(make_cfg, tiny_phantoms) -> None:
    cfg = make_cfg("boneage", [*FAST, f"data.root={tiny_phantoms}", "ema.decay=1.5"])
    with pytest.raises(MedalError, match=r"^ema.decay=1.5: must lie between 0 and 1"):
        run_boneage(cfg)


def _recorded_run(make_cfg, tiny_phantoms, folder, overrides: list[str]):
    """A bone age run folder holding only its record and a checkpoint file: what `medal cam` reads first."""
    cfg = make_cfg("boneage", [*FAST, f"data.root={tiny_phantoms}", f"paths.output_dir={folder}", *overrides])
    run_marker(folder).begin(run_settings(cfg))
    ckpt = folder / "checkpoints" / "best-000.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"never loaded: the settings are checked first")
    return cfg, ckpt


def test_a_run_folder_is_resumed_only_with_its_own_settings(make_cfg, tiny_phantoms, tmp_path) -> None:
    folder = tmp_path / "train"
    _recorded_run(make_cfg, tiny_phantoms, folder, [])
    other = make_cfg("boneage", [*FAST, f"data.root={tiny_phantoms}", f"paths.output_dir={folder}",
                                 "optimizer.lr=0.02"])
    with pytest.raises(MedalError, match=r"train: holds a bone age run made with other settings \(optimizer.lr\)"):
        run_boneage(other)
    assert (folder / "checkpoints" / "best-000.ckpt").is_file()  # refused, nothing deleted
    legacy = tmp_path / "legacy"
    (legacy / "checkpoints").mkdir(parents=True)
    (legacy / "checkpoints" / "last.ckpt").write_bytes(b"made by who knows which settings")
    with pytest.raises(MedalError, match=r"checkpoints: checkpoints without a record of the settings"):
        run_boneage(make_cfg("boneage", [*FAST, f"data.root={tiny_phantoms}", f"paths.output_dir={legacy}"]))


def test_cam_takes_the_run_data_settings_and_refuses_contradictions(make_cfg, tiny_phantoms, tmp_path) -> None:
    folder = tmp_path / "train"
    trained, ckpt = _recorded_run(make_cfg, tiny_phantoms, folder, ["enhance=gan", "data.images=${enhance.images_dir}",
                                                                   "data.image_size=48", "cohort=male"])
    gan_rois = str(trained.enhance.images_dir)
    assert gan_rois.endswith("enhanced/gan")
    # what CAM reads: the GAN-enhanced RoIs at 48 px of the male cohort, whatever cam.yaml's defaults say
    cam_cfg = make_cfg("cam", [f"ckpt={ckpt}"])
    run, settings = training_settings(ckpt)
    assert run == folder.resolve()
    data = run_data_config(cam_cfg, settings, tmp_path / "cam").data
    assert (data.images, data.image_size, data.root) == (gan_rois, 48, str(tiny_phantoms))
    check_against_run(make_cfg("cam", [f"ckpt={ckpt}", "enhance=gan", "cohort=male", "data.image_size=48",
                                       f"data.root={tiny_phantoms}"]), settings, run)  # agreeing: fine
    for override, key in (("enhance=none", "enhance.name=none"), ("data.image_size=299", "data.image_size=299"),
                          ("cohort=female", "cohort.name=female"), ("data.images=raw", "data.images=raw")):
        with pytest.raises(MedalError, match=rf"^{key}: the model in .* was trained with"):
            run_cam(make_cfg("cam", [f"ckpt={ckpt}", override]))
    stray = tmp_path / "elsewhere" / "model.ckpt"
    stray.parent.mkdir()
    stray.write_bytes(b"x")
    with pytest.raises(MedalError, match=r"no record of the run that trained it"):
        run_cam(make_cfg("cam", [f"ckpt={stray}"]))


def test_cam_and_export_refuse_a_run_recorded_before_the_fixed_test_holdout_in_one_line(make_cfg, tiny_phantoms,
                                                                                       tmp_path) -> None:
    """A run made when `data.split.test_fraction` drew each run's test set (no `data.holdout`): its record is
    refused by name, with the fix, instead of `data.split.test_fraction: unknown key`."""
    from medal.bundle.sources import find_sources

    folder = tmp_path / "old_run"
    cfg, ckpt = _recorded_run(make_cfg, tiny_phantoms, folder, [])
    settings = run_settings(cfg)
    data = settings["data"]
    data["split"] = {"val_fraction": 0.1, "test_fraction": 0.1, "seed": 0, "bins": 10}  # as medal recorded it then
    del data["holdout"]
    run_marker(folder).finish(settings, metrics={"test/mae": 20.0})
    with pytest.raises(MedalError) as cam:
        run_cam(make_cfg("cam", [f"ckpt={ckpt}"]))
    with pytest.raises(MedalError) as export:
        find_sources([str(folder)])
    for err in (cam, export):
        text = str(err.value)
        assert text.startswith(f"{folder.resolve()}: a bone age run made before medal fixed one test holdout")
        assert "data.split.test_fraction" in text and "retrain it in a new folder" in text and "\n" not in text
        assert "unknown key" not in text

