"""The enhancer's manual optimisation: who updates when, learning on CPU, and the NaN guard."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from helpers.enhance_fixtures import write_pairs
from pytorch_lightning.callbacks import ModelCheckpoint

from medal.enhance.module import Enhancer
from medal.enhance.pairs import PairDataModule, PairDataset, PairedAugment, matching_ids, split_ids
from medal.errors import MedalError

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"generator": {"depth": 2, "width": 8}, "discriminator": {"kind": "paper", "width": 8}}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_pairs(tmp_path_factory.mktemp("pairs"), n=24, size=64, seed=0)


def _datamodule(pairs: tuple[Path, Path], batch_size: int = 4) -> PairDataModule:
    inp, gold = pairs
    split = split_ids(matching_ids(inp, gold), 0.15, 0.15, seed=0)
    return PairDataModule(inp, gold, split, image_size=64, batch_size=batch_size, augment=PairedAugment())


def _trainer(tmp_path: Path, **kwargs) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu", devices=1, precision="32-true", logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    return pl.Trainer(**{**defaults, **kwargs})


def _snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _changed(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(b, p) for b, p in zip(before, module.parameters(), strict=True))


class StepSpy(Enhancer):
    """Records which network each of the two optimiser steps changed, and whether D was trainable."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.record: dict[str, dict[str, bool]] = {}
        self.d_trainable_in: dict[str, bool] = {}

    def _spy(self, name: str, step, *args):
        g, d = _snapshot(self.generator), _snapshot(self.discriminator)
        d_grads = [None if p.grad is None else p.grad.clone() for p in self.discriminator.parameters()]

        def note_trainable(mod: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            self.d_trainable_in.setdefault(name, any(p.requires_grad for p in mod.parameters()))

        hook = self.discriminator.register_forward_hook(note_trainable)
        out = step(*args)
        hook.remove()
        self.record[name] = {
            "g": _changed(g, self.generator),
            "d": _changed(d, self.discriminator),
            "g_grad": any(p.grad is not None for p in self.generator.parameters()),
            "d_grad_changed": any(
                (a is None) != (p.grad is None) or (a is not None and not torch.equal(a, p.grad))
                for a, p in zip(d_grads, self.discriminator.parameters(), strict=True)
            ),
        }
        return out

    def discriminator_step(self, *args):
        return self._spy("d_step", super().discriminator_step, *args)

    def generator_step(self, *args):
        return self._spy("g_step", super().generator_step, *args)


def test_one_manual_step_updates_only_the_stepped_network(pairs, tmp_path: Path) -> None:
    torch.manual_seed(0)
    spy = StepSpy(**TINY)
    _trainer(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=0).fit(spy, datamodule=_datamodule(pairs))
    d_step, g_step = spy.record["d_step"], spy.record["g_step"]
    assert d_step["d"] and not d_step["g"]  # D step: D learns, G untouched
    assert not d_step["g_grad"]  # fakes were detached: no gradient reached G
    assert g_step["g"] and not g_step["d"]  # G step: G learns, D untouched
    assert not g_step["d_grad_changed"]  # D frozen during the G step: no gradient accumulated in D
    assert spy.d_trainable_in == {"d_step": True, "g_step": False}


def _val_error(module: Enhancer, dm: PairDataModule) -> float:
    data = PairDataset(dm.input_dir, dm.gold_dir, dm.split.val + dm.split.test, dm.image_size)
    x = torch.stack([item["input"] for item in data])
    y = torch.stack([item["gold"] for item in data])
    module.eval()
    with torch.inference_mode():
        return (module(x) - y).abs().mean().item()


def test_tiny_training_run_lowers_reconstruction_error(pairs, tmp_path: Path) -> None:
    torch.manual_seed(0)
    dm = _datamodule(pairs)
    module = Enhancer(**TINY, lr=2e-3, sample_dir=str(tmp_path / "samples"), sample_every_n_epochs=3)
    before = _val_error(module, dm)
    _trainer(tmp_path, max_epochs=6).fit(module, datamodule=dm)
    after = _val_error(module, dm)
    assert after < 0.6 * before, (before, after)
    assert sorted(p.name for p in (tmp_path / "samples").glob("*.png")) == ["epoch_0002.png", "epoch_0005.png"]


class PoisonedAfterFirstEpoch(Enhancer):
    """Reconstruction loss turns NaN from the second epoch on (e.g. a diverging run)."""

    def generator_step(self, x, y, fake_logits):
        if self.current_epoch >= 1:
            fake_logits = fake_logits * float("nan")
        return super().generator_step(x, y, fake_logits)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(pairs, tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = PoisonedAfterFirstEpoch(**TINY)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = _trainer(tmp_path, max_epochs=3, enable_checkpointing=True, callbacks=[ckpt], limit_val_batches=0)
    with pytest.raises(MedalError, match=r"enhancer: generator loss is nan at epoch 1.*last good checkpoint: .*last\.ckpt"):
        trainer.fit(module, datamodule=_datamodule(pairs))
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert state["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
    assert all(torch.isfinite(p).all() for p in module.generator.parameters())  # no step taken on the NaN loss
