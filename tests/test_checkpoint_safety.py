"""Resuming from last.ckpt never unpickles: a planted payload is refused in one line and never runs, in every
task that resumes a Lightning run (bone age, pretraining, the GAN enhancer), and a real resume still works.

`TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1` turns torch's own default back to unpickling (what torch < 2.6 did), so
these tests hold only if medal asks for weights-only loading itself.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.enhance_fixtures import pairs_data_set, write_pairs

from medal.boneage.experiment import run_boneage, run_marker
from medal.boneage.experiment import run_settings as boneage_settings
from medal.callbacks.checkpoints import resume_from
from medal.enhance.experiment import run_enhance
from medal.enhance.train import training_dir, training_parts
from medal.errors import MedalError
from medal.pretrain.experiment import run_pretrain
from medal.resume import Marker

BONEAGE = ["model=tiny", "data.images=raw", "data.image_size=64", "data.augment.enabled=false", "finetune=all",
           "scheduler=null", "target.scaling=divide", "optimizer.lr=0.01", "trainer.max_epochs=3",
           "trainer.enable_progress_bar=false", "trainer.precision=32-true", "evaluation.bootstrap=50"]
TINY_GAN = ["enhance=gan", "enhance.generator.depth=2", "enhance.generator.width=8", "enhance.discriminator.width=8",
            "enhance.image_size=64", "enhance.epochs=2", "enhance.batch_size=4", "trainer.precision=32-true",
            "trainer.enable_progress_bar=false", "logger=csv"]


class Payload:
    """What an attacker plants: unpickling it runs `exec`, which writes `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('unpickled')",)


def plant(path: Path, marker: Path) -> Path:
    """A last.ckpt that looks like Lightning's (weights, epoch, loops) with the payload among its values."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 0, "global_step": 1, "state_dict": {"w": torch.zeros(2)}, "loops": {},
                "callbacks": {"Payload": Payload(marker)}}, path)
    return path


@pytest.fixture(autouse=True)
def unpickling_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's default as it was before 2.6: a `torch.load` that does not ask for weights only unpickles."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")


def refusal(last: Path) -> str:
    return (rf"^{re.escape(str(last))}: holds objects that only unpickling could load \(Unsupported global: "
            r"GLOBAL exec\); medal never unpickles a checkpoint: delete that file to restart the run "
            r"from scratch, or rerun in a new output folder$")


def test_the_payload_is_live_and_resume_from_refuses_it_in_one_line(tmp_path: Path) -> None:
    proof = tmp_path / "proof"
    torch.load(plant(tmp_path / "proof.ckpt", proof), weights_only=False)  # what unpickling would do
    assert proof.read_text() == "unpickled"

    marker = tmp_path / "marker"
    last = plant(tmp_path / "run" / "last.ckpt", marker)
    with pytest.raises(MedalError, match=refusal(last)) as err:
        resume_from(last, resume=True)
    assert "\n" not in str(err.value)
    assert not marker.exists()
    assert resume_from(last, resume=False) is None  # a fresh start never opens it
    assert resume_from(tmp_path / "run" / "missing.ckpt", resume=True) is None


def test_an_unreadable_last_ckpt_is_refused_in_one_line(tmp_path: Path) -> None:
    last = tmp_path / "last.ckpt"
    last.write_bytes(b"PK\x03\x04 cut off mid-write")
    with pytest.raises(MedalError, match=rf"^{re.escape(str(last))}: not a readable checkpoint \(RuntimeError\); "
                                         "delete that file"):
        resume_from(last, resume=True)


def test_a_bone_age_run_refuses_a_planted_last_ckpt_and_keeps_its_record(make_cfg, tiny_phantoms, tmp_path) -> None:
    folder, marker = tmp_path / "train", tmp_path / "marker"
    cfg = make_cfg("boneage", [*BONEAGE, f"data.root={tiny_phantoms}", f"paths.output_dir={folder}"])
    record = run_marker(folder)
    record.begin(boneage_settings(cfg))  # a crashed attempt of these settings: the next run resumes it
    last = plant(folder / "checkpoints" / "last.ckpt", marker)
    with pytest.raises(MedalError, match=refusal(last)):
        run_boneage(cfg)
    assert not marker.exists()
    assert record.read() is not None and last.is_file()  # refused, nothing deleted


def test_a_pretraining_run_refuses_a_planted_last_ckpt(make_cfg, tiny_phantoms, tmp_path, monkeypatch,
                                                       one_thread) -> None:
    cfg = make_cfg("pretrain", ["experiment=pretrain_tiny", "trainer.max_epochs=2", "pretrain=ssl",
                                f"data.root={tiny_phantoms}", "probe=null"])
    out = Path(cfg.paths.output_dir)
    # a first attempt killed after its record was written and before any epoch ended
    import medal.pretrain.experiment as experiment

    def killed(*args, **kwargs):
        raise RuntimeError("killed")

    with monkeypatch.context() as patch:
        patch.setattr(experiment.pl.Trainer, "fit", killed)
        with pytest.raises(RuntimeError, match="killed"):
            run_pretrain(cfg)
    marker = tmp_path / "marker"
    last = plant(out / "checkpoints" / "last.ckpt", marker)
    with pytest.raises(MedalError, match=refusal(last)):
        run_pretrain(cfg)
    assert not marker.exists()


def test_the_gan_enhancer_refuses_a_planted_last_ckpt(make_cfg, tmp_path, one_thread) -> None:
    work = tmp_path / "work"
    write_pairs(work, n=12, size=96, seed=1)
    root = pairs_data_set(tmp_path / "rsna", n=12)  # the enhancer leaves its test holdout out of the pairs
    cfg = make_cfg("enhance", [*TINY_GAN, f"data.root={root}", f"data.work_dir={work}"])
    parts = training_parts(cfg.enhance, cfg.trainer, int(cfg.seed))
    train_dir = training_dir(cfg.enhance, parts)
    Marker.in_folder(train_dir, "generator").begin(parts)  # a crashed training of these settings
    marker = tmp_path / "marker"
    last = plant(train_dir / "checkpoints" / "last.ckpt", marker)
    with pytest.raises(MedalError, match=refusal(last)):
        run_enhance(cfg)
    assert not marker.exists()


def test_a_killed_bone_age_run_resumes_from_last_ckpt_loading_weights_only(make_cfg, tiny_phantoms, tmp_path,
                                                                          monkeypatch, one_thread) -> None:
    """A real resume (with EMA weights and the fine-tuning callback's state) loads under weights only and carries
    on from the epoch it was killed in."""
    import pytorch_lightning as pl

    folder = tmp_path / "train"
    cfg = make_cfg("boneage", [*BONEAGE, f"data.root={tiny_phantoms}", f"paths.output_dir={folder}",
                               "ema.decay=0.9"])
    started: list[int] = []

    class KillInSecondEpoch(pl.Callback):  # after the first epoch's last.ckpt was written
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            started.append(trainer.current_epoch)
            if len(started) == 2:
                raise RuntimeError("killed")

    original = pl.Trainer.__init__

    def with_killer(self, *args, callbacks=None, **kwargs):
        original(self, *args, callbacks=[*(callbacks or []), KillInSecondEpoch()], **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(pl.Trainer, "__init__", with_killer)
        with pytest.raises(RuntimeError, match="killed"):
            run_boneage(cfg)
    last = folder / "checkpoints" / "last.ckpt"
    first = torch.load(last, map_location="cpu", weights_only=True)
    assert first["epoch"] == 0
    shutil.copy(last, tmp_path / "first.ckpt")

    loads: list[bool | None] = []
    real_load = torch.load

    def spy(*args, **kwargs):
        loads.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    metrics = run_boneage(cfg)
    assert metrics["train/epochs"] == 3 and np.isfinite(metrics["test/mae"])
    assert loads and all(w is True for w in loads)  # medal's check, Lightning's resume, the best checkpoint's test
    resumed = torch.load(last, map_location="cpu", weights_only=True)
    assert resumed["epoch"] == 2 and resumed["global_step"] > first["global_step"]
