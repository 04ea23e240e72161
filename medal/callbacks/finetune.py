"""Fixed fine-tune modes (the paper's baselines): train exactly one set of stages, freeze the rest.

`above_fc` trains the head, `above_exit` adds the exit flow, `above_mid` the middle flow, `above_entry`
the entry flow, `all` everything including the stem. Frozen stages keep their weights and their
BatchNorm running statistics (BatchNorm in eval mode, see `BoneAgeRegressor.train`).
"""

from __future__ import annotations

import logging
from typing import Protocol

import pytorch_lightning as pl
from pytorch_lightning.callbacks import BaseFinetuning
from torch import nn
from torch.optim import Optimizer

from medal.errors import MedalError
from medal.models.stages import FIXED_MODES, STAGES

log = logging.getLogger("medal.boneage")


class StagedModel(Protocol):
    training: bool

    def stage_modules(self, stage: str) -> list[nn.Module]: ...

    def train(self, mode: bool = True) -> nn.Module: ...


def staged_model(pl_module: pl.LightningModule) -> StagedModel:
    """The regressor inside a LightningModule (its `model` attribute), checked for a block map."""
    model = getattr(pl_module, "model", None)
    if model is None or not hasattr(model, "stage_modules"):
        raise MedalError(f"{type(pl_module).__name__}.model has no stage_modules(): fine-tuning needs a regressor "
                         "built by medal.models.regressor.build_regressor")
    return model


def set_trainable_stages(model: StagedModel, n_stages: int) -> None:
    """Make the top `n_stages` stages trainable and freeze the others (weights and BatchNorm statistics)."""
    for index, stage in enumerate(STAGES):
        modules = model.stage_modules(stage)
        if index < n_stages:
            BaseFinetuning.make_trainable(modules)
        else:
            BaseFinetuning.freeze(modules, train_bn=False)
    model.train(model.training)  # re-apply the rule "frozen BatchNorm stays in eval mode"


def trainable_parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class FixedFinetuning(BaseFinetuning):
    """Train exactly the stages of `mode` for the whole run (the optimizer only sees those parameters)."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        if mode not in FIXED_MODES:
            raise MedalError(f"finetune.mode={mode!r}: choose one of {', '.join(FIXED_MODES)} (or a finetune=ptl* mode)")
        self.mode = mode

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        set_trainable_stages(staged_model(pl_module), FIXED_MODES[self.mode])
        log.info("fine-tune mode %s: %d trainable parameters", self.mode, trainable_parameter_count(pl_module))

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        """Nothing to unfreeze: the trainable set is fixed."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        pl_module.log("ptl/trainable_params", float(trainable_parameter_count(pl_module)),
                      on_step=False, on_epoch=True)
