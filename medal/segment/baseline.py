"""The paper's non-AL baseline: one U-Net trained on `al.budget` labels drawn at random.

It runs through the same resumable loop as the committee, as a single round: the initial draw is the
whole budget (random, seeded), so the label count matches the active learner's exactly, and it gets
the optimiser steps the committee gets over all its rounds, so neither side is short of training.
"""

from __future__ import annotations

import math
from dataclasses import replace

from medal.active.loop import ALConfig


def baseline_schedule(al: ALConfig, steps_per_round: int) -> tuple[ALConfig, int]:
    """(single-round config with `initial = budget`, total steps the active learner would train)."""
    rounds = 1 + math.ceil((al.budget - al.initial) / al.per_round)
    single = replace(al, initial=al.budget, per_round=al.budget, strategy="random")
    return single, steps_per_round * rounds
