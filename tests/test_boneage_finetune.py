"""Fixed fine-tune modes and paced transfer learning on a tiny backbone with synthetic batches."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from helpers.boneage_fixtures import loader, tiny_module, trainer_kwargs
from torch.nn.modules.batchnorm import _BatchNorm

from medal.boneage.module import BoneAgeModule
from medal.callbacks.checkpoints import best_and_last
from medal.callbacks.finetune import FixedFinetuning
from medal.callbacks.paced import PacedTransferLearning
from medal.models.stages import FIXED_MODES, STAGES

DECAY = {"_target_": "medal.boneage.schedulers.inverse_time_decay", "_partial_": True, "decay": 0.05, "per": "update"}


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def stage_keys(model, stage: str) -> tuple[set[str], set[str]]:
    """(parameter names, BatchNorm running-stat names) of one stage, as keys of model.state_dict()."""
    names = {id(m): n for n, m in model.named_modules()}
    params, stats = set(), set()
    for module in model.stage_modules(stage):
        prefix = names[id(module)]
        for sub_name, sub in module.named_modules():
            full = f"{prefix}.{sub_name}" if sub_name else prefix
            params |= {f"{full}.{p}" for p, _ in sub.named_parameters(recurse=False)}
            if isinstance(sub, _BatchNorm):
                stats |= {f"{full}.running_mean", f"{full}.running_var"}
    return params, stats


@pytest.mark.parametrize("mode", list(FIXED_MODES))
def test_fixed_mode_trains_exactly_its_stages(mode: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = tiny_module()
    before = snapshot(module.model)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, limit_train_batches=2), callbacks=[FixedFinetuning(mode)])
    trainer.fit(module, train_dataloaders=loader())
    after = module.model.state_dict()
    optimised = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    for index, stage in enumerate(STAGES):
        params, stats = stage_keys(module.model, stage)
        trainable = index < FIXED_MODES[mode]
        moved = [k for k in params if not torch.equal(before[k], after[k])]
        stats_moved = [k for k in stats if not torch.equal(before[k], after[k])]
        stage_params = [p for m in module.model.stage_modules(stage) for p in m.parameters()]
        assert all(p.requires_grad == trainable for p in stage_params), stage
        assert all((id(p) in optimised) == trainable for p in stage_params), stage
        if trainable:
            assert moved, f"{mode}: trainable stage {stage} did not change"
        else:
            assert not moved and not stats_moved, f"{mode}: frozen stage {stage} changed: {(moved + stats_moved)[:3]}"


class PlantedLossModule(BoneAgeModule):
    """Logs a planted per-epoch `train/loss` (through Lightning's logging, as the real one) while training."""

    planted: list[float] = []

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss, _ = self._step(batch)
        self.log("train/loss", float(self.planted[self.current_epoch]), on_step=False, on_epoch=True, batch_size=1)
        return loss


class StageRecorder(pl.Callback):
    """Records the PTL stage and the optimizer's groups at each epoch start (placed after the PTL callback)."""

    def __init__(self, ptl: PacedTransferLearning):
        self.ptl, self.stages, self.groups = ptl, [], []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.stages.append(self.ptl.stage)
        self.groups.append([(g.get("name"), len(g["params"])) for g in trainer.optimizers[0].param_groups])


def test_ptl_advances_on_a_planted_plateau_and_not_before(tmp_path: Path) -> None:
    torch.manual_seed(0)
    losses = [5, 4, 3, 3, 3, 2, 2, 2, 1.0, 0.95, 0.92, 0.5]
    ptl = PacedTransferLearning(patience=2, min_delta=0.1)
    planted = StageRecorder(ptl)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=len(losses), limit_train_batches=1),
                         callbacks=[ptl, planted])
    module = tiny_module(PlantedLossModule)
    module.planted = losses
    trainer.fit(module, train_dataloaders=loader(n=8))
    # plateau of 2 epochs after epochs 2 and 6; the drop 1.0 -> 0.95 -> 0.92 is below min_delta
    assert planted.stages == [0] * 5 + [1] * 3 + [2] * 3 + [3]
    assert ptl.transitions == [5, 8, 11]
    assert [name for name, _ in planted.groups[-1]] == ["head", "exit", "middle", "entry"]
    lrs = [g["lr"] for g in trainer.optimizers[0].param_groups]
    assert lrs == pytest.approx([1e-3, 1e-4, 5e-5, 1e-5])


def test_ptl_max_epochs_per_stage_and_logged_values(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ptl = PacedTransferLearning(patience=100, max_epochs_per_stage=1)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=6, limit_train_batches=1), callbacks=[ptl])
    module = tiny_module()
    trainer.fit(module, train_dataloaders=loader(n=8))
    assert ptl.transitions == [1, 2, 3, 4] and ptl.stage == 4
    assert all(p.requires_grad for p in module.parameters())
    logged = trainer.logged_metrics
    assert logged["ptl/stage"] == 4 and logged["ptl/trainable_params"] == sum(p.numel() for p in module.parameters())
    assert logged["ptl/lr_stem"] == pytest.approx(5e-6)


def test_ptl_resume_continues_in_its_stage_with_the_same_groups(tmp_path: Path) -> None:
    torch.manual_seed(0)
    first = PacedTransferLearning(patience=100, max_epochs_per_stage=2)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=3, limit_train_batches=2), callbacks=[first])
    trainer.fit(tiny_module(scheduler=DECAY), train_dataloaders=loader(n=16))
    assert first.stage == 1 and first.epochs_in_stage == 1  # mid-stage
    ckpt = tmp_path / "mid.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = [(g["name"], len(g["params"]), g["lr"]) for g in trainer.optimizers[0].param_groups]
    saved_step = trainer.global_step

    seen = {}

    class Probe(pl.Callback):
        def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            if "groups" in seen:
                return
            seen["stage"] = resumed.stage
            seen["groups"] = [(g["name"], len(g["params"]), g["lr"]) for g in trainer.optimizers[0].param_groups]
            seen["exit_trainable"] = all(p.requires_grad for m in pl_module.model.stage_modules("exit")
                                         for p in m.parameters())
            seen["middle_frozen"] = not any(p.requires_grad for m in pl_module.model.stage_modules("middle")
                                            for p in m.parameters())
            group = trainer.optimizers[0].param_groups[1]
            seen["exit_params_are_the_modules"] = {id(p) for p in group["params"]} == {
                id(p) for m in pl_module.model.stage_modules("exit") for p in m.parameters()}
            seen["has_state"] = all(p in trainer.optimizers[0].state for p in group["params"])

    resumed = PacedTransferLearning(patience=100, max_epochs_per_stage=2)
    trainer2 = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=5, limit_train_batches=2),
                          callbacks=[resumed, Probe()])
    module2 = tiny_module(scheduler=DECAY)
    trainer2.fit(module2, train_dataloaders=loader(n=16), ckpt_path=str(ckpt))
    assert seen["stage"] == 1
    assert seen["groups"] == saved
    assert seen["exit_trainable"] and seen["middle_frozen"] and seen["exit_params_are_the_modules"]
    assert seen["has_state"]
    assert resumed.transitions == [2, 4]  # the rest of stage 1 (epoch 3), then stage 2 at epoch 4
    # the decay goes on from the checkpoint's step: head lr = 1e-3 / (1 + 0.05 t)
    head = trainer2.optimizers[0].param_groups[0]
    assert trainer2.global_step == saved_step + 4
    assert head["lr"] == pytest.approx(1e-3 / (1 + 0.05 * trainer2.global_step))


@pytest.mark.parametrize(("per", "counts"), [("update", "updates"), ("epoch", "epochs")])
def test_decay_counts_the_unit_the_config_names(per: str, counts: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = tiny_module(scheduler={**DECAY, "per": per})
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=3, limit_train_batches=4),
                         callbacks=[FixedFinetuning("all")])
    trainer.fit(module, train_dataloaders=loader(n=32))
    t = {"updates": 12, "epochs": 3}[counts]  # 3 epochs of 4 updates
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-3 / (1 + 0.05 * t))


def test_checkpoint_keeps_the_ptl_counters_of_the_epoch_it_saves(tmp_path: Path) -> None:
    """last.ckpt must hold PTL's state after the epoch's update, or a resumed run spends an extra epoch in
    its stage (the checkpoint used to be written when validation ended, before PTL's epoch-end hook)."""
    torch.manual_seed(0)
    ptl = PacedTransferLearning(patience=100, max_epochs_per_stage=3)
    best, last = best_and_last(tmp_path / "checkpoints", "val/mae", "min")
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=2, limit_train_batches=2,
                                          enable_checkpointing=True), callbacks=[ptl, best, last])
    trainer.fit(tiny_module(), train_dataloaders=loader(n=16), val_dataloaders=loader(n=8, seed=1))
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    state = next(v for k, v in saved["callbacks"].items() if k.startswith("PacedTransferLearning"))
    assert ptl.epochs_in_stage == 2
    assert state["epochs_in_stage"] == 2 and state["stage"] == 0
    assert len(list((tmp_path / "checkpoints").glob("best-*.ckpt"))) == 1
    assert best.best_model_score is not None  # val/mae existed when it saved


class FlatValidation(BoneAgeModule):
    """Logs a validation metric that never improves after the first epoch."""

    def validation_step(self, batch, batch_idx):
        super().validation_step(batch, batch_idx)
        self.log("val/flat", 1.0)


def test_last_checkpoint_moves_every_epoch_when_the_metric_stops_improving(tmp_path: Path) -> None:
    """Lightning writes save_last's last.ckpt only alongside a new best; a stalled run must still resume from
    its latest epoch, not from its best one."""
    best, last = best_and_last(tmp_path / "checkpoints", "val/flat", "min")
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=4, limit_train_batches=1,
                                          enable_checkpointing=True), callbacks=[best, last])
    trainer.fit(tiny_module(FlatValidation), train_dataloaders=loader(n=8), val_dataloaders=loader(n=8, seed=1))
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 3
    assert [p.name for p in (tmp_path / "checkpoints").glob("best-*.ckpt")] == ["best-000.ckpt"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best-000.ckpt", "last.ckpt"]
