"""Keras-2 inverse-time learning rate decay `lr0 / (1 + decay * t)`, counted per update or per epoch.

Keras 2 optimizers with `decay=d` use `lr_t = lr0 / (1 + d * t)` with t the number of *updates* (batches);
the paper uses lr0 = 1e-3 and d = 0.05 with Keras 2, so `per: update` is the paper's setting. It shrinks
the lr 50-fold within 1,000 updates: harmless when fine-tuning ImageNet weights for a few epochs, fatal
for a network learning from random weights (issue 12: 31.8 months against 12.8 with a constant lr).
`per: epoch` counts epochs instead (lr halves after 1/d epochs), the unit a from-scratch recipe needs.
The unit is the config's `scheduler.per`; there is no default, so a config always says which it means.

torch's `LambdaLR` sizes its per-group state when it is built, so groups that paced transfer learning
adds later would keep a constant lr; this scheduler adopts every new group. Where a group's decay counts from
is the group's `decay_start` (kept in the optimizer's state, so it survives a resume), which paced transfer
learning's `finetune.schedule` sets (medal.callbacks.paced): from the step it joined (`adopt()`'s default; a
group met unadopted is adopted from its first update), from the start of training (`adopt(group, start=0)`: it
joins the running decay), or from now for every group (`restart()`: a Keras model recompiled for a new stage).
"""

from __future__ import annotations

from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from medal.errors import MedalError


def inverse_time(step: int, decay: float) -> float:
    """The Keras-2 factor `1 / (1 + decay * step)`.

    Examples:
        >>> inverse_time(0, 0.05), inverse_time(20, 0.05)
        (1.0, 0.5)
    """
    return 1.0 / (1.0 + decay * step)


class InverseTimeDecay(LRScheduler):
    """`lr = initial_lr / (1 + decay * steps_since_the_group_joined)` for every group, old and new."""

    def __init__(self, optimizer: Optimizer, decay: float = 0.05, last_epoch: int = -1):
        if decay < 0:
            raise ValueError(f"decay must be >= 0, got {decay}")
        self.decay = float(decay)
        super().__init__(optimizer, last_epoch)

    def adopt(self, group: dict[str, Any], start: int | None = None) -> None:
        """Decay `group` from its current lr (kept as `initial_lr`), counting t from step `start` (default: now),
        and set its lr to the schedule's value now. A group adopted before keeps its `initial_lr` and start."""
        group.setdefault("initial_lr", group["lr"])
        group.setdefault("decay_start", self.last_epoch if start is None else start)
        group["lr"] = self._lr(group)

    def restart(self) -> None:
        """Every group back to its `initial_lr`, its decay counted from now (a fresh schedule)."""
        for group in self.optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["decay_start"] = self.last_epoch
            group["lr"] = self._lr(group)

    def _lr(self, group: dict[str, Any]) -> float:
        return group["initial_lr"] * inverse_time(self.last_epoch - group["decay_start"], self.decay)

    def get_lr(self) -> list[float]:
        for group in self.optimizer.param_groups:
            # A group not adopted when it was added is met here, right after its first update.
            self.adopt(group, start=max(self.last_epoch - 1, 0))
        self.base_lrs = [g["initial_lr"] for g in self.optimizer.param_groups]
        return [self._lr(g) for g in self.optimizer.param_groups]


#: `scheduler.per` -> Lightning's `interval`: what one step of the decay's counter t is.
DECAY_UNITS = {"update": "step", "epoch": "epoch"}


def inverse_time_decay(optimizer: Optimizer, *, decay: float, per: str) -> dict[str, Any]:
    """Lightning scheduler config (Hydra `_partial_` target): t counts optimizer updates or epochs (`per`)."""
    if per not in DECAY_UNITS:
        raise MedalError(f"scheduler.per={per!r}: choose {' or '.join(DECAY_UNITS)} (the paper's Keras-2 decay "
                         "counts updates)")
    return {"scheduler": InverseTimeDecay(optimizer, decay=decay), "interval": DECAY_UNITS[per], "frequency": 1}
