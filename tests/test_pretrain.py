"""`medal pretrain` on the tiny phantom set: what each method reads, the backbone it hands to `model.weights`,
the probe, resuming, and the one-line refusals."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from medal.config import CONF_DIR
from medal.data.datamodule import build_boneage_datamodule
from medal.errors import MedalError
from medal.models.regressor import build_regressor
from medal.models.weights import backbone_metadata, save_backbone
from medal.pretrain.curve import LossCurve
from medal.pretrain.data import ssl_images, unlabelled_images
from medal.pretrain.experiment import BACKBONE_FILE, run_pretrain
from medal.pretrain.views import ViewOptions, Views

TINY = ["experiment=pretrain_tiny", "trainer.max_epochs=3"]


def tiny_model(**overrides):
    return OmegaConf.merge(OmegaConf.load(Path(CONF_DIR) / "model" / "tiny.yaml"), overrides)


def assert_loaded(path: Path) -> None:
    """The file's tensors are in a `model=tiny` regressor built with `model.weights=path`, and they are not
    what the same seed gives without it (so the weights were not silently ignored)."""
    torch.manual_seed(0)
    fresh = build_regressor(tiny_model()).backbone.state_dict()
    torch.manual_seed(0)
    loaded = build_regressor(tiny_model(weights=str(path))).backbone.state_dict()
    from safetensors.torch import load_file

    saved = load_file(str(path))
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert any(not torch.equal(fresh[k], loaded[k]) for k in saved if k.endswith("weight"))


def test_ssl_pretrains_on_the_training_split_only_and_hands_over_its_backbone(make_cfg, tiny_phantoms,
                                                                                 tmp_path, one_thread) -> None:
    cfg = make_cfg("pretrain", [*TINY, "pretrain=ssl", f"data.root={tiny_phantoms}"])
    metrics = run_pretrain(cfg)
    run = tmp_path / "run"

    # the images: exactly the training role of the split `medal boneage` draws from the same data settings
    boneage = make_cfg("boneage", ["model=tiny", "data.images=raw", "data.image_size=64",
                                   f"data.root={tiny_phantoms}", f"paths.output_dir={tmp_path / 'boneage'}"])
    target = build_boneage_datamodule(boneage)
    target.prepare_data()
    train_ids = set(target.frames["train"]["id"])
    split = pd.read_csv(run / "split.csv", dtype=str)
    assert set(split.loc[split["role"] == "train", "id"]) == train_ids
    assert metrics["pretrain/images"] == len(train_ids)
    images = ssl_images(target, unlabelled=None)
    assert isinstance(images[0], torch.Tensor) and images[0].shape == (1, 64, 64)  # an image, no labels

    logged = pd.read_csv(run / "csv" / "metrics.csv")["train/loss"].dropna().tolist()  # Lightning's own log
    assert [metrics[f"train/loss_epoch{k}"] for k in (1, 2, 3)] == pytest.approx(logged)
    assert (metrics["train/loss_first"], metrics["train/loss_last"]) == pytest.approx((logged[0], logged[-1]))
    assert all(np.isfinite(metrics[k]) for k in ("probe/val_mae", "probe/val_mae_before",
                                                 "probe/val_mae_mean_predictor"))
    assert metrics["train/epochs"] == 3 and (run / "plots" / "loss.png").is_file()
    assert backbone_metadata(run / BACKBONE_FILE)["timm_name"] == "test_resnet"
    assert backbone_metadata(run / BACKBONE_FILE)["method"] == "ssl"
    assert_loaded(run / BACKBONE_FILE)

    stamp = (run / BACKBONE_FILE).stat().st_mtime_ns
    assert run_pretrain(cfg) == pytest.approx(metrics)  # finished: its metrics, nothing retrained
    assert (run / BACKBONE_FILE).stat().st_mtime_ns == stamp


def test_other_two_view_losses_fit_the_ssl_method(make_cfg, tiny_phantoms, one_thread) -> None:
    cfg = make_cfg("pretrain", [*TINY, "pretrain=ssl", f"data.root={tiny_phantoms}", "trainer.max_epochs=1",
                                "probe=null", "pretrain.loss._target_=lightly.loss.VICRegLoss", "~pretrain.loss.temperature",
                                "pretrain.head._target_=lightly.models.modules.heads.VICRegProjectionHead"])
    metrics = run_pretrain(cfg)
    assert np.isfinite(metrics["train/loss_last"]) and not any(k.startswith("probe/") for k in metrics)


def test_an_unlabelled_folder_adds_images_but_never_held_out_ones(make_cfg, tiny_phantoms, tmp_path) -> None:
    cfg = make_cfg("pretrain", [*TINY, f"data.root={tiny_phantoms}"])
    target = build_boneage_datamodule(cfg)
    target.prepare_data()
    extra = tmp_path / "unlabelled"
    (extra / "site_b").mkdir(parents=True)
    for i, path in enumerate(target.frames["train"]["path"][:3]):  # another site's files may share names
        shutil.copyfile(path, extra / ("site_b" if i else "") / Path(path).name)
    (extra / ".medal").mkdir()
    (extra / ".medal" / "u9.png").write_bytes(b"hidden folders are not images")
    assert len(ssl_images(target, str(extra))) == len(target.datasets["train"]) + 3

    held_out = Path(target.frames["test"]["path"].iloc[0])
    shutil.copyfile(held_out, extra / "site_b" / "renamed.png")
    with pytest.raises(MedalError, match=rf"renamed.png is a copy of the held-out image {held_out} \(1 such files\)"
                       ) as err:
        ssl_images(target, str(extra))
    assert "\n" not in str(err.value)
    (extra / "site_b" / "renamed.png").unlink()
    calibration = Path(target.calibration["path"].iloc[0])  # served by no loader, yet export calibrates on it
    shutil.copyfile(calibration, extra / "site_b" / "renamed.png")
    with pytest.raises(MedalError, match=rf"renamed.png is a copy of the held-out image {calibration} "):
        ssl_images(target, str(extra))
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedalError, match=r"pretrain.unlabelled=.*: holds no .png images"):
        unlabelled_images(tmp_path / "empty", target)


def test_supervised_pretrains_on_its_own_source_domain(make_cfg, tiny_phantoms, tmp_path, one_thread) -> None:
    source = tmp_path / "source"
    cfg = make_cfg("pretrain", [*TINY, "pretrain=supervised", f"data.root={tiny_phantoms}",
                                f"pretrain.source.root={source}", "pretrain.source.n=48",
                                "pretrain.source.image_size=96", "pretrain.source.workers=1"])
    metrics = run_pretrain(cfg)
    # another acquisition profile and other individuals, generated into their own root
    made = json.loads((source / ".medal" / "phantoms.json").read_text())["parts"]
    target = json.loads((tiny_phantoms / ".medal" / "phantoms.json").read_text())["parts"]
    assert made["seed"] != target["seed"] and made["nuisance"] != target["nuisance"]
    assert made["nuisance"]["inverted_p"] == 0.0 and made["nuisance"]["blur_px"] > target["nuisance"]["blur_px"]
    assert 0 <= metrics["source/val_sex_accuracy"] <= 1 and np.isfinite(metrics["source/val_mae"])
    run = tmp_path / "run"
    source_split = pd.read_csv(run / "source" / "split.csv", dtype=str)  # the source's own split, in its subfolder
    assert metrics["pretrain/images"] == (source_split["role"] == "train").sum()
    assert backbone_metadata(run / BACKBONE_FILE)["method"] == "supervised"
    assert_loaded(run / BACKBONE_FILE)

    same_root = make_cfg("pretrain", [*TINY, "pretrain=supervised", f"data.root={tiny_phantoms}",
                                      f"pretrain.source.root={tiny_phantoms}", f"paths.output_dir={tmp_path / 'b'}"])
    with pytest.raises(MedalError, match=r"pretrain.source.root=.*: is the target data set \(data.root\)"):
        run_pretrain(same_root)


def test_an_interrupted_run_resumes_from_last_ckpt_and_other_settings_are_refused(
        make_cfg, tiny_phantoms, tmp_path, monkeypatch, one_thread) -> None:
    cfg = make_cfg("pretrain", [*TINY, "pretrain=ssl", f"data.root={tiny_phantoms}", "probe=null"])
    original = LossCurve.on_train_epoch_end

    def crash_in_epoch_two(self, trainer, pl_module):
        original(self, trainer, pl_module)
        if len(self.losses) == 2:
            raise RuntimeError("killed")

    monkeypatch.setattr(LossCurve, "on_train_epoch_end", crash_in_epoch_two)
    with pytest.raises(RuntimeError, match="killed"):
        run_pretrain(cfg)
    first_epoch = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    monkeypatch.setattr(LossCurve, "on_train_epoch_end", original)

    metrics = run_pretrain(cfg)
    assert metrics["train/epochs"] == 3
    assert [k for k in metrics if k.startswith("train/loss_epoch")] == [f"train/loss_epoch{k}" for k in (1, 2, 3)]
    assert first_epoch["epoch"] == 0  # last.ckpt of epoch 1 was what the second run started from ...
    curve = next(v for k, v in first_epoch["callbacks"].items() if k.startswith("LossCurve"))
    assert metrics["train/loss_epoch1"] == curve["losses"][0]  # ... and the curve kept its first epoch

    other = make_cfg("pretrain", [*TINY, "pretrain=ssl", f"data.root={tiny_phantoms}", "probe=null",
                                  "optimizer.lr=0.01"])
    with pytest.raises(MedalError, match=r"run: holds a pretraining run made with other settings \(optimizer.lr\)"):
        run_pretrain(other)


def test_a_mismatched_weights_file_fails_in_one_line_naming_the_key(tmp_path: Path) -> None:
    backbone = build_regressor(tiny_model()).backbone
    wrong = save_backbone(backbone, tmp_path / "wrong.safetensors", "test_resnet")
    from safetensors.torch import load_file, save_file

    state = load_file(str(wrong))
    state["layer4.0.conv1.weight"] = state["layer4.0.conv1.weight"][:-1].contiguous()
    save_file(state, str(wrong), metadata={"format": "medal-backbone/1", "timm_name": "test_resnet"})
    with pytest.raises(MedalError, match=r"layer4.0.conv1.weight is \(\d+, \d+, 3, 3\) in the file but") as err:
        build_regressor(tiny_model(weights=str(wrong)))
    assert "\n" not in str(err.value)

    other = save_backbone(build_regressor(tiny_model(timm_name="test_efficientnet", blocks="auto")).backbone,
                          tmp_path / "other.safetensors", "test_efficientnet", method="ssl")
    with pytest.raises(MedalError, match=r"a backbone of test_efficientnet \(written by medal ssl\), but "
                                         r"model.timm_name=test_resnet"):
        build_regressor(tiny_model(weights=str(other)))
    save_file(load_file(str(other)), str(tmp_path / "plain.safetensors"))  # the same tensors, no medal header
    with pytest.raises(MedalError, match=r"not a checkpoint of this backbone; check model.timm_name "
                                         r"\(missing \['conv1.0.weight'"):
        build_regressor(tiny_model(weights=str(tmp_path / "plain.safetensors")))


def test_views_are_random_radiograph_views_in_range() -> None:
    options = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "pretrain" / "ssl.yaml").views)
    views = Views(ViewOptions(**options), size=32)
    torch.manual_seed(0)
    images = torch.rand(4, 1, 48, 48)
    a, b = views(images), views(images)
    assert a.shape == b.shape == (4, 1, 32, 32)
    assert float(a.min()) >= 0 and float(a.max()) <= 1 and not torch.allclose(a, b)
    with pytest.raises(MedalError, match=r"^pretrain.views.gamma=\[1.4, 0.7\]: give a range \[lo, hi\]"):
        Views(ViewOptions(**{**options, "gamma": [1.4, 0.7]}), size=32)


@pytest.mark.slow  # ~17 min on 2 busy cores (scripts/bench_pretrain.py at its default, 64 px sizes)
def test_pretrained_features_beat_random_ones_on_a_small_target(tmp_path: Path, capsys) -> None:
    """The transfer benchmark end to end: a 300-image labelled target, SSL on its training images plus 600
    unlabelled ones, supervised pretraining on 1,000 source phantoms of another profile, then bone age from
    each backbone and from random weights, head only (`finetune=above_fc`) and all layers (`all`).

    Prints every number. Asserts what held in both measured configurations (64 and 128 px, README): with the
    backbone frozen, both pretrained backbones beat random weights. Full fine-tuning did not separate the
    inits beyond single-seed noise in either, so nothing is asserted about it."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_pretrain.py"
    env = {**os.environ, "MEDAL_BENCH_DIR": str(tmp_path / "bench"), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(script), "--root", str(tmp_path / "runs")], env=env, check=True,
                   capture_output=True, timeout=3600)
    rows = {row["figure"]: row for row in json.loads((tmp_path / "bench" / "pretrain.json").read_text())["rows"]}
    with capsys.disabled():
        print("".join(f"\n{name}: {row['value']:.2f} vs {row['baseline_value']:.2f}" for name, row in rows.items()))
    assert len(rows) == 6
    for init in ("ssl", "supervised"):
        frozen = rows[f"bone age test MAE, {init} init, finetune=above_fc"]
        assert frozen["value"] < frozen["baseline_value"], frozen
