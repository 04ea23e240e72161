"""The readings of paced transfer learning (`finetune=ptl|ptl_paper|ptl_discriminative|ptl_restart`): each
parameter group's learning rate at each stage is as its YAML says, the decay restarts where it should, and a
resumed run continues with exactly the rates an uninterrupted one has."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from helpers.boneage_fixtures import loader, tiny_module, trainer_kwargs
from helpers.hydra_compose import compose_task
from omegaconf import DictConfig

from medal.boneage.experiment import build_finetune_callback
from medal.callbacks.paced import REFERENCE_LRS, PacedTransferLearning
from medal.errors import MedalError
from medal.models.stages import PACED_MODES, STAGES

BASE, DECAY = 1e-3, 0.05  # conf/boneage.yaml's RMSprop rate and Keras-2 decay
EPOCHS = 6  # stages begin at epochs 0 (head), 1 (exit), 2 (middle), 3 (entry), 4 (stem); epoch 5 in the stem
SCHEDULER = {"_target_": "medal.boneage.schedulers.inverse_time_decay", "_partial_": True, "decay": DECAY,
             "per": "epoch"}  # Figure 12's `scheduler.per=epoch`


def expected_lrs(mode: str, epoch: int) -> list[float]:
    """Each group's lr (head first, then the blocks unfrozen so far) at the start of `epoch`, in closed form."""
    joined = list(range(min(epoch, len(STAGES) - 1) + 1))  # group k joined at epoch k

    def decayed(lr: float, t: int) -> float:
        return lr / (1 + DECAY * t)

    if mode == "ptl":  # the reference rates, each block's decay from its own unfreeze; the head's from epoch 0
        return [decayed(BASE, epoch)] + [decayed(REFERENCE_LRS[k - 1], epoch - k) for k in joined[1:]]
    if mode == "ptl_paper":  # every block at the base rate, one decay from the start
        return [decayed(BASE, epoch) for _ in joined]
    if mode == "ptl_discriminative":  # block k at base / 2.6^k, one decay from the start
        return [decayed(BASE / 2.6**k, epoch) for k in joined]
    assert mode == "ptl_restart"  # every group back to the base rate at the last unfreeze
    return [decayed(BASE, epoch - joined[-1]) for _ in joined]


class LrRecorder(pl.Callback):
    """Each group's (name, lr) at every epoch start, after the PTL callback has unfrozen that epoch's block."""

    def __init__(self) -> None:
        self.epochs: dict[int, list[tuple[str, float]]] = {}

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        groups = trainer.optimizers[0].param_groups
        self.epochs[trainer.current_epoch] = [(g["name"], g["lr"]) for g in groups]


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, DictConfig]:
    """Each mode's `finetune` node as `medal boneage finetune=<mode>` composes it, one epoch per stage."""
    root = tmp_path_factory.mktemp("compose")
    return {mode: compose_task("boneage", [f"finetune={mode}", "finetune.patience=100",
                                           "finetune.max_epochs_per_stage=1"], root).finetune
            for mode in PACED_MODES}


def fit(tmp_path: Path, callback: PacedTransferLearning, epochs: int, ckpt: Path | None = None) -> tuple:
    torch.manual_seed(0)
    recorder = LrRecorder()
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=epochs, limit_train_batches=1),
                         callbacks=[callback, recorder])
    trainer.fit(tiny_module(scheduler=SCHEDULER), train_dataloaders=loader(n=8),
                ckpt_path=None if ckpt is None else str(ckpt))
    return trainer, recorder


@pytest.mark.parametrize("mode", PACED_MODES)
def test_each_group_runs_at_the_rate_its_mode_specifies_and_survives_a_resume(mode: str, tmp_path: Path,
                                                                              nodes: dict[str, DictConfig]) -> None:
    whole, recorder = fit(tmp_path / "whole", build_finetune_callback(nodes[mode]), EPOCHS)
    assert [len(recorder.epochs[e]) for e in range(EPOCHS)] == [1, 2, 3, 4, 5, 5]
    assert [name for name, _ in recorder.epochs[EPOCHS - 1]] == list(STAGES)
    for epoch in range(EPOCHS):
        lrs = [lr for _, lr in recorder.epochs[epoch]]
        assert lrs == pytest.approx(expected_lrs(mode, epoch), rel=1e-9), (mode, epoch)

    # stopped after epoch 2 (in the middle stage), saved, resumed by a new trainer with a new callback
    first, _ = fit(tmp_path / "split", build_finetune_callback(nodes[mode]), 3)
    ckpt = tmp_path / "split" / "stopped.ckpt"
    first.save_checkpoint(ckpt)
    state = next(v for k, v in torch.load(ckpt, weights_only=True)["callbacks"].items()
                 if k.startswith("PacedTransferLearning"))
    assert state["base_lr"] == BASE and state["stage"] == 2
    resumed, again = fit(tmp_path / "split", build_finetune_callback(nodes[mode]), EPOCHS, ckpt)
    for epoch in range(3, EPOCHS):
        assert [n for n, _ in again.epochs[epoch]] == [n for n, _ in recorder.epochs[epoch]]
        assert [lr for _, lr in again.epochs[epoch]] == pytest.approx(expected_lrs(mode, epoch), rel=1e-9)
    assert [g["lr"] for g in resumed.optimizers[0].param_groups] == pytest.approx(
        [g["lr"] for g in whole.optimizers[0].param_groups], rel=1e-9)


def test_only_the_restart_mode_sends_the_head_back_to_the_base_rate(tmp_path: Path,
                                                                   nodes: dict[str, DictConfig]) -> None:
    heads = {}
    for mode in ("ptl_paper", "ptl_restart"):
        _, recorder = fit(tmp_path / mode, build_finetune_callback(nodes[mode]), 3)
        heads[mode] = [recorder.epochs[e][0][1] for e in range(3)]
    assert heads["ptl_paper"] == pytest.approx([BASE, BASE / 1.05, BASE / 1.1])
    assert heads["ptl_restart"] == pytest.approx([BASE, BASE, BASE])  # each unfreeze restarts the decay


def test_options_are_checked_in_one_line() -> None:
    with pytest.raises(MedalError, match="give exactly one"):
        PacedTransferLearning(lrs=None, lr_factor=None)
    with pytest.raises(MedalError, match="give exactly one"):
        PacedTransferLearning(lr_factor=2.6)  # lrs still the reference ones
    with pytest.raises(MedalError, match="finetune.schedule='cosine': use one of per_group, shared, restart"):
        PacedTransferLearning(schedule="cosine")
    with pytest.raises(MedalError, match="finetune.lr_factor=0.0"):
        PacedTransferLearning(lrs=None, lr_factor=0.0)


def test_a_schedule_other_than_per_group_needs_the_inverse_time_decay(tmp_path: Path) -> None:
    step = {"_target_": "torch.optim.lr_scheduler.StepLR", "_partial_": True, "step_size": 1}
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=2, limit_train_batches=1),
                         callbacks=[PacedTransferLearning(lrs=None, lr_factor=1.0, schedule="restart",
                                                          max_epochs_per_stage=1)])
    with pytest.raises(MedalError, match="finetune.schedule=restart needs the inverse-time decay"):
        trainer.fit(tiny_module(scheduler=step), train_dataloaders=loader(n=8))


def test_a_budget_too_short_for_the_stem_is_warned(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=4, limit_train_batches=1),
                         callbacks=[PacedTransferLearning(max_epochs_per_stage=1)])
    with caplog.at_level(logging.WARNING, logger="medal.boneage"):
        trainer.fit(tiny_module(), train_dataloaders=loader(n=8))
    assert "trainer.max_epochs=4 ends the run first" in caplog.text
