"""Paced transfer learning (PTL, paper section 2.4): fine-tune from the top down, one block at a time.

Stage 0 trains the new head only (at the optimizer's lr). Whenever the monitored loss has not improved by
`min_delta` for `patience` epochs, or the stage has lasted `max_epochs_per_stage` epochs, the next block
below is unfrozen with its own learning rate (exit, middle, entry, then the stem = all layers), using
Lightning's `BaseFinetuning.unfreeze_and_add_param_group`. The stage counters travel in the checkpoint,
and BaseFinetuning restores the added parameter groups, so a resumed run carries on in its stage.

The paper gives one optimiser setting (RMSprop, lr 1e-3, decay 0.05) and no per-stage rates, so which rate a
block starts at and how its decay counts are options (`conf/finetune/ptl*.yaml`, docs/experiments.md):
- `lrs`: the rate of each block unfrozen in stages 1-4 (`ptl`: the reference code's 1e-4 ... 5e-6), or
  `lr_factor`: block k (exit = 1 ... stem = 4) at the head's initial lr / lr_factor^k — 1 is the paper's text
  (`ptl_paper`, every stage at the base lr), 2.6 ULMFiT's discriminative rates (`ptl_discriminative`,
  Howard & Ruder 2018).
- `schedule` (what the inverse-time decay, medal.boneage.schedulers, does at an unfreeze): `per_group` — the new
  block's decay counts from its unfreeze, the others go on (`ptl`); `shared` — one decay counted from the start of
  training, so a block joins at its rate decayed to the current step (`ptl_paper`, `ptl_discriminative`);
  `restart` — every group back to its initial rate and the decay counted anew, as a Keras model recompiled with
  a fresh optimiser per stage (`ptl_restart`). The schedule's state is the groups' `decay_start`, which the
  optimizer's checkpoint keeps.
Every mode spends the same epoch budget, `trainer.max_epochs`: the fixed modes train their blocks for all of it;
PTL spends it across its stages (with `max_epochs_per_stage` set, the stem comes at the latest at epoch
4 x max_epochs_per_stage, and a budget too short for that is warned about at the start).

DDP registers only the parameters that require grad when the model is wrapped, so gradients of blocks
unfrozen later would not be averaged and the ranks would drift apart. This callback averages those
gradients itself (one flattened all-reduce before every optimizer step), which keeps the parameters
identical across ranks while frozen blocks still cost no backward pass.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import BaseFinetuning
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau

from medal.callbacks.finetune import set_trainable_stages, staged_model, trainable_parameter_count
from medal.errors import MedalError
from medal.models.stages import STAGES

log = logging.getLogger("medal.boneage")

#: The reference code's learning rates for the blocks unfrozen in stages 1-4 (exit, middle, entry, stem).
REFERENCE_LRS: tuple[float, ...] = (1e-4, 5e-5, 1e-5, 5e-6)
#: `finetune.schedule`: where a group's inverse-time decay counts from once a block is unfrozen (module docstring).
SCHEDULES: tuple[str, ...] = ("per_group", "shared", "restart")


def stage_lrs(base_lr: float, lrs: Sequence[float] | None, lr_factor: float | None) -> list[float]:
    """The initial learning rates of the blocks unfrozen in stages 1-4 (exit, middle, entry, stem): `lrs` as given,
    or base_lr / lr_factor^k for block k = 1..4.

    Examples:
        >>> stage_lrs(1e-3, [1e-4, 5e-5, 1e-5, 5e-6], None)  # the reference code's rates
        [0.0001, 5e-05, 1e-05, 5e-06]
        >>> [round(lr, 8) for lr in stage_lrs(1e-3, None, 2.6)]  # ULMFiT: each lower block 2.6x slower
        [0.00038462, 0.00014793, 5.69e-05, 2.188e-05]
        >>> stage_lrs(1e-3, None, 1.0)  # the paper's text: every stage at the base rate
        [0.001, 0.001, 0.001, 0.001]
    """
    if lrs is not None:
        return [float(lr) for lr in lrs]
    return [base_lr / float(lr_factor) ** k for k in range(1, len(STAGES))]


class PacedTransferLearning(BaseFinetuning):
    """Unfreeze exit, middle, entry, stem in turn when the monitored loss plateaus (see module docstring).

    The defaults are `conf/finetune/ptl.yaml`'s (a test keeps the two equal), so the callback behaves the same
    whether Hydra builds it or a script does.
    """

    def __init__(self, monitor: str = "train/loss", patience: int = 3, min_delta: float = 0.001,
                 max_epochs_per_stage: int | None = None, lrs: Sequence[float] | None = REFERENCE_LRS,
                 lr_factor: float | None = None, schedule: str = "per_group", train_bn: bool = True) -> None:
        super().__init__()
        if (lrs is None) == (lr_factor is None):
            raise MedalError(f"finetune.lrs={None if lrs is None else list(lrs)}, finetune.lr_factor={lr_factor}: "
                             "give exactly one (absolute rates per block, or the head's rate / lr_factor^depth)")
        if lrs is not None and len(lrs) != len(STAGES) - 1:
            raise MedalError(f"finetune.lrs has {len(lrs)} values; give one per unfrozen block "
                             f"({', '.join(STAGES[1:])})")
        if lr_factor is not None and lr_factor <= 0:
            raise MedalError(f"finetune.lr_factor={lr_factor}: must be > 0 (1 = every block at the head's rate)")
        if schedule not in SCHEDULES:
            raise MedalError(f"finetune.schedule={schedule!r}: use one of {', '.join(SCHEDULES)}")
        if patience < 1 or (max_epochs_per_stage is not None and max_epochs_per_stage < 1):
            raise MedalError(f"finetune.patience={patience}, finetune.max_epochs_per_stage={max_epochs_per_stage}: "
                             "both must be >= 1")
        self.monitor, self.patience, self.min_delta = monitor, int(patience), float(min_delta)
        self.max_epochs_per_stage = max_epochs_per_stage
        self.lrs = None if lrs is None else [float(lr) for lr in lrs]
        self.lr_factor = None if lr_factor is None else float(lr_factor)
        self.schedule, self.train_bn = schedule, train_bn
        self.base_lr: float | None = None  # the head's initial lr, fixed at the first fit start (kept in state)
        self.stage, self.best, self.wait, self.epochs_in_stage = 0, math.inf, 0, 0
        self.advance_pending = False
        self.transitions: list[int] = []  # epoch at which each stage after the first began
        self._ddp_registered: set[int] = set()
        self._warned_missing = False

    @property
    def stage_name(self) -> str:
        return STAGES[self.stage]

    # -- state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "stage": self.stage, "best": self.best, "wait": self.wait,
                "epochs_in_stage": self.epochs_in_stage, "advance_pending": self.advance_pending,
                "transitions": list(self.transitions), "base_lr": self.base_lr}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.stage, self.best, self.wait = state_dict["stage"], state_dict["best"], state_dict["wait"]
        self.epochs_in_stage, self.advance_pending = state_dict["epochs_in_stage"], state_dict["advance_pending"]
        self.transitions = list(state_dict["transitions"])
        self.base_lr = state_dict.get("base_lr")  # absent in checkpoints written before lr_factor existed

    # -- freezing ------------------------------------------------------------------------------------
    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        set_trainable_stages(staged_model(pl_module), 1)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # What DDP registered when it wrapped the model: the parameters trainable at that moment.
        self._ddp_registered = {id(p) for p in pl_module.parameters() if p.requires_grad}
        if self.base_lr is None:  # a fresh fit: the configured optimizer's rate, before any decay
            head = trainer.optimizers[0].param_groups[0]
            self.base_lr = float(head.get("initial_lr", head["lr"]))
        self._check_budget(trainer)
        super().on_fit_start(trainer, pl_module)  # on resume: re-creates the saved parameter groups
        set_trainable_stages(staged_model(pl_module), self.stage + 1)
        for optimizer in trainer.optimizers:
            optimizer.param_groups[0].setdefault("name", STAGES[0])

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        if not self.advance_pending or self.stage == len(STAGES) - 1:
            return
        self.advance_pending = False
        self.stage += 1
        self.best, self.wait, self.epochs_in_stage = math.inf, 0, 0
        self.transitions.append(epoch)
        model = staged_model(pl_module)
        lr = stage_lrs(self.base_lr, self.lrs, self.lr_factor)[self.stage - 1]
        self.unfreeze_and_add_param_group(model.stage_modules(self.stage_name), optimizer, lr=lr,
                                          train_bn=self.train_bn)
        optimizer.param_groups[-1]["name"] = self.stage_name
        model.train(model.training)
        _adopt_new_groups(pl_module.trainer, optimizer, self.schedule)
        log.info("PTL epoch %d: stage %d, unfroze %s at lr %g (now %g; schedule %s; %d trainable parameters)",
                 epoch, self.stage, self.stage_name, lr, optimizer.param_groups[-1]["lr"], self.schedule,
                 trainable_parameter_count(pl_module))

    def _check_budget(self, trainer: pl.Trainer) -> None:
        """Warn when `max_epochs_per_stage` cannot bring the stem in within the run's epoch budget."""
        budget, cap = trainer.max_epochs, self.max_epochs_per_stage
        if cap is None or budget is None or budget < 0:
            return
        stem_at = (len(STAGES) - 1) * cap
        if stem_at >= budget:
            log.warning("PTL: with finetune.max_epochs_per_stage=%d the stem is unfrozen at epoch %d at the latest, "
                        "but trainer.max_epochs=%d ends the run first; every mode gets the same budget, so lower "
                        "the cap to max_epochs // %d to reach every stage", cap, stem_at, budget, len(STAGES))

    # -- pacing --------------------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        pl_module.log("ptl/stage", float(self.stage), on_step=False, on_epoch=True)
        pl_module.log("ptl/trainable_params", float(trainable_parameter_count(pl_module)),
                      on_step=False, on_epoch=True)
        for group in trainer.optimizers[0].param_groups:
            pl_module.log(f"ptl/lr_{group.get('name', 'group')}", float(group["lr"]), on_step=False, on_epoch=True)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            if not self._warned_missing:
                log.warning("PTL monitors %r, which was not logged; stages advance only by "
                            "max_epochs_per_stage", self.monitor)
                self._warned_missing = True
        else:
            value = float(value)
            if value < self.best - self.min_delta:
                self.best, self.wait = value, 0
            else:
                self.wait += 1
        self.epochs_in_stage += 1
        stalled = self.wait >= self.patience
        timed_out = self.max_epochs_per_stage is not None and self.epochs_in_stage >= self.max_epochs_per_stage
        if self.stage < len(STAGES) - 1 and (stalled or timed_out):
            self.advance_pending = True

    # -- DDP -----------------------------------------------------------------------------------------
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: Optimizer) -> None:
        if trainer.world_size < 2:
            return
        late = [p for p in pl_module.parameters()
                if p.requires_grad and p.grad is not None and id(p) not in self._ddp_registered]
        if not late:
            return
        grads = [p.grad for p in late]
        flat = trainer.strategy.reduce(_flatten_dense_tensors(grads), reduce_op="mean")
        for grad, synced in zip(grads, _unflatten_dense_tensors(flat, grads), strict=True):
            grad.copy_(synced)


def _adopt_new_groups(trainer: pl.Trainer | None, optimizer: Optimizer, schedule: str = "per_group") -> None:
    """Size per-group scheduler state for the group just added (schedulers that fix it at construction), and
    start its decay as `schedule` says (module docstring; `shared` and `restart` need a scheduler with
    `adopt(group, start)` and `restart()`, medal's InverseTimeDecay)."""
    if trainer is None:
        return
    group = optimizer.param_groups[-1]
    for config in trainer.lr_scheduler_configs:
        scheduler = config.scheduler
        if scheduler.optimizer is not optimizer:
            continue
        if schedule != "per_group":
            if not (hasattr(scheduler, "adopt") and hasattr(scheduler, "restart")):
                raise MedalError(f"finetune.schedule={schedule} needs the inverse-time decay "
                                 f"(medal.boneage.schedulers), not {type(scheduler).__name__}; use "
                                 "finetune.schedule=per_group")
            if schedule == "shared":
                scheduler.adopt(group, start=0)
            else:
                scheduler.adopt(group)
                scheduler.restart()
            continue
        if isinstance(scheduler, ReduceLROnPlateau):
            if scheduler.default_min_lr is None and len(scheduler.min_lrs) < len(optimizer.param_groups):
                scheduler.min_lrs.append(scheduler.min_lrs[-1])
            continue
        if hasattr(scheduler, "adopt"):
            scheduler.adopt(group)
            continue
        base_lrs = getattr(scheduler, "base_lrs", None)
        if base_lrs is not None and len(base_lrs) < len(optimizer.param_groups):
            group.setdefault("initial_lr", group["lr"])
            base_lrs.append(group["initial_lr"])
            lambdas = getattr(scheduler, "lr_lambdas", None)
            if lambdas is not None:
                lambdas.append(lambdas[-1])



