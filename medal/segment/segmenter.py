"""The `segmenter=` config group: which networks the rounds train, and on what schedule.

`committee` (the paper's): `al.committee_size` FC-DenseNets (`segment.net`) from seeds seed, seed+1, ...,
trained round by round on what the strategy queries. `unet_random` (the paper's baseline): one U-Net
(`segment.unet`) on `al.budget` labels drawn at random, through the same resumable loop as a single round.
A new segmenter (e.g. one network sampled with MC dropout) is a subclass with its own `build` or `schedule`
and a YAML file naming it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from medal.active.loop import ALConfig
from medal.segment.committee import Committee, check_net
from medal.segment.model import CommitteeModel
from medal.segment.train import RoundTraining


@dataclass(frozen=True)
class Segmenter:
    """`segmenter.*`: `members` networks of architecture `arch` (committee.ARCHS) built from `net`."""

    name: str
    arch: str
    members: int
    net: dict[str, Any]
    queries: ClassVar[bool] = True  # whether rounds query with the strategy (part of what a run depends on)

    def __post_init__(self) -> None:
        check_net(self.arch, self.net)

    def schedule(self, al: ALConfig, steps_per_round: int) -> tuple[ALConfig, int]:
        """(the round schedule, optimiser steps per round) this segmenter trains on: as configured."""
        return al, steps_per_round

    def build(self, *, seed: int, lr: float, weight_decay: float, augment: dict[str, Any], channels_last: bool,
              shared_init: bool, training: RoundTraining, device: str, fast: bool,
              batch_size: int) -> CommitteeModel:
        """A fresh, untrained model behind the `SegModel` protocol (`shared_init`: every member from `seed`)."""
        committee = Committee(net=self.net, size=self.members, seed=seed, lr=lr, weight_decay=weight_decay,
                              augment=augment, channels_last=channels_last, arch=self.arch, shared_init=shared_init)
        return CommitteeModel(committee, training, device, fast, batch_size)


@dataclass(frozen=True)
class RandomLabelsBaseline(Segmenter):
    """The paper's non-AL baseline: one round whose initial random draw is the whole budget, so the label
    count matches the active learner's exactly, with the optimiser steps the active learner gets over all its
    rounds, so neither side is short of training. The strategy is never consulted."""

    queries: ClassVar[bool] = False

    def schedule(self, al: ALConfig, steps_per_round: int) -> tuple[ALConfig, int]:
        """(single-round config with `initial = budget`, total steps the active learner would train).

        Examples:
            >>> al = ALConfig(dir="al", initial=100, per_round=100, budget=400, patience=2, min_delta=0.001,
            ...               reset_weights=False, committee_size=3, member_init="shared", member_data="bootstrap",
            ...               val_limit=None, score_batch_size=16, fast_scoring=False, seed=0)
            >>> single, steps = RandomLabelsBaseline("unet_random", "unet", 1, {}).schedule(al, 300)
            >>> single.initial, single.per_round, steps  # the committee's 4 rounds x 300 steps
            (400, 400, 1200)
        """
        rounds = 1 + math.ceil((al.budget - al.initial) / al.per_round)
        return replace(al, initial=al.budget, per_round=al.budget), steps_per_round * rounds
