"""DDP (2 CPU processes, gloo): after PTL unfreezes blocks, parameters stay identical on both ranks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from helpers.boneage_fixtures import loader, tiny_module, trainer_kwargs

from medal.callbacks.paced import PacedTransferLearning


class UnsyncedPTL(PacedTransferLearning):
    """Negative control: PTL without its gradient averaging of late-unfrozen blocks."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        return None


class CompareRanks(pl.Callback):
    """At the end, gathers every parameter on rank 0 and writes the largest difference between ranks."""

    def __init__(self, out: str):
        self.out = out
        self.initial: dict[str, torch.Tensor] = {}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.initial = {n: p.detach().clone() for n, p in pl_module.model.named_parameters()}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        flat = torch.cat([p.detach().flatten() for p in pl_module.parameters()])
        gathered = pl_module.all_gather(flat)
        exit_moved = any(not torch.equal(p.detach(), self.initial[n])
                         for n, p in pl_module.model.named_parameters() if n.startswith("backbone.layer4"))
        if trainer.is_global_zero:
            Path(self.out).write_text(json.dumps({"max_diff": float((gathered[0] - gathered[1]).abs().max()),
                                                  "exit_moved": exit_moved}))


def run_ddp(tmp_path: Path, ptl: PacedTransferLearning) -> dict:
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = tmp_path / "ranks.json"
    torch.manual_seed(0)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=3, devices=2, strategy="ddp_spawn",
                                          limit_train_batches=2),
                         callbacks=[ptl, CompareRanks(str(out))])
    trainer.fit(tiny_module(), train_dataloaders=loader(n=32, batch_size=4))
    return json.loads(out.read_text())


@pytest.mark.slow
def test_ddp_parameters_stay_equal_after_an_unfreeze(tmp_path: Path) -> None:
    synced = run_ddp(tmp_path / "synced", PacedTransferLearning(patience=100, max_epochs_per_stage=1))
    assert synced["exit_moved"], "the exit block was unfrozen but never trained"
    assert synced["max_diff"] == 0.0
    # without the callback's averaging, the late-unfrozen blocks drift apart: the test can fail
    unsynced = run_ddp(tmp_path / "unsynced", UnsyncedPTL(patience=100, max_epochs_per_stage=1))
    assert unsynced["max_diff"] > 0.0
