"""The active-learning pool: which image was labelled in which round, every round's scores, the answers.

The whole state is one JSON file rewritten atomically (temp file + rename) after every change, so a
crash or a deliberate stop (a human oracle still labelling) loses nothing: the next run loads it and
goes on. Invariants enforced here: an image is queried at most once and labelled at most once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from medal.atomic import write_json
from medal.errors import MedalError

STATE_VERSION = 1


def stop_reason(labelled: int, budget: int, rounds_since_best: int, patience: int, unlabelled: int) -> str | None:
    """The stopping rule (paper: stop at the label budget; medal also when validation Dice stalls for
    `patience` rounds, or when nothing is left to query). None: go on.

    Examples:
        >>> stop_reason(labelled=400, budget=400, rounds_since_best=0, patience=2, unlabelled=9)
        'budget'
        >>> stop_reason(labelled=200, budget=400, rounds_since_best=2, patience=2, unlabelled=9)
        'patience'
        >>> stop_reason(labelled=200, budget=400, rounds_since_best=0, patience=2, unlabelled=0)
        'pool exhausted'
        >>> stop_reason(labelled=200, budget=400, rounds_since_best=1, patience=2, unlabelled=9) is None
        True
    """
    if labelled >= budget:
        return "budget"
    if rounds_since_best >= patience:
        return "patience"
    if unlabelled == 0:
        return "pool exhausted"
    return None


class ActivePool:
    """Labelled / pending / unlabelled split of `ids`, persisted to `path` after every step."""

    def __init__(self, ids: Sequence[str], path: str | Path | None = None) -> None:
        if len(set(ids)) != len(ids):
            raise MedalError("active pool: duplicate image ids in the pool; the data index must have unique ids")
        self.ids = [str(i) for i in ids]
        self.path = Path(path) if path is not None else None
        self.round = 0
        self.labelled: dict[str, int] = {}  # id -> round whose query labelled it
        self.pending: list[str] = []  # queried, oracle answer not yet in
        self.answers: dict[str, str] = {}  # id -> where the stored answer mask lives
        self.scores: dict[int, dict[str, float]] = {}  # round -> id -> strategy score at query time
        self.history: list[dict[str, float]] = []  # per finished round: labelled count, val dice, ...
        self.edits: dict[str, dict[str, float]] = {}  # id -> how far the oracle's answer is from its proposal
        self.best_dice = float("-inf")
        self.rounds_since_best = 0
        self.stopped: str | None = None  # why the loop ended, once it has

    # -- queries and answers ------------------------------------------------------------------
    @property
    def unlabelled(self) -> list[str]:
        """Pool ids neither labelled nor waiting for an answer, in pool order."""
        taken = set(self.labelled) | set(self.pending)
        return [i for i in self.ids if i not in taken]

    def query(self, ids: Iterable[str], scores: dict[str, float] | None = None,
              stats: dict[str, float] | None = None) -> None:
        """Ask the oracle for `ids` in the current round (they become pending); save. `stats` (e.g. the spread of
        the scores) join the last finished round's history record: the model of that round did the scoring."""
        ids = [str(i) for i in ids]
        if self.pending:
            raise MedalError(f"active pool: round {self.round} still waits for {len(self.pending)} answers")
        known = set(self.ids)
        free = set(self.unlabelled)
        for i in ids:
            if i not in known:
                raise MedalError(f"active pool: id {i} is not in the pool")
            if i not in free or ids.count(i) > 1:
                raise MedalError(f"active pool: id {i} was already queried; an image is queried only once")
        self.pending = ids
        if scores is not None:
            self.scores[self.round] = {str(k): float(v) for k, v in scores.items()}
        if stats and self.history:
            self.history[-1].update({k: float(v) for k, v in stats.items()})
        self.save()

    def label(self, image_id: str, answer: str | Path, edit: dict[str, float] | None = None, save: bool = True) -> None:
        """Record the oracle's answer for one pending id (the stored mask's path) and, when the oracle was shown a
        proposal, how far the answer is from it (`edit`, see `medal.active.oracles.edit_effort`); save unless
        `save` is false (a caller labelling a round's answers saves once, after the last)."""
        if image_id not in self.pending:
            raise MedalError(f"active pool: answer for {image_id}, which was not queried in round {self.round}")
        self.pending.remove(image_id)
        self.labelled[image_id] = self.round
        self.answers[image_id] = str(answer)
        if edit is not None:
            self.edits[image_id] = {k: float(v) for k, v in edit.items()}
        if save:
            self.save()

    def round_edits(self) -> dict[str, float]:
        """The mean of each edit measure over the answers of the current round (`oracle/<measure>`); {} if none."""
        rows = [self.edits[i] for i, r in self.labelled.items() if r == self.round and i in self.edits]
        return {f"oracle/{k}": sum(row[k] for row in rows) / len(rows) for k in (rows[0] if rows else {})}

    def end_round(self, metrics: dict[str, float], min_delta: float) -> None:
        """Close the round with its metrics and the mean editing effort of its answers (`round_edits`); save.

        `metrics["val/dice"]` (if present) is the stopping rule's signal: a round that does not improve on the
        best validation Dice by more than `min_delta` counts towards `rounds_since_best` (see `stop_reason`).
        """
        record = {"round": float(self.round), "labelled": float(len(self.labelled)), **self.round_edits(), **metrics}
        self.history.append(record)
        dice = metrics.get("val/dice")  # absent when the data set has no validation masks
        if dice is not None:
            if dice > self.best_dice + min_delta:
                self.best_dice = float(dice)
                self.rounds_since_best = 0
            else:
                self.rounds_since_best += 1
        self.round += 1
        self.save()

    def stop_reason(self, budget: int, patience: int) -> str | None:
        """Why the loop should stop now (None: query the next round); see `stop_reason`."""
        return stop_reason(len(self.labelled), budget, self.rounds_since_best, patience, len(self.unlabelled))

    def finish(self, reason: str) -> None:
        self.stopped = reason
        self.save()

    # -- persistence --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "ids": self.ids,
            "round": self.round,
            "labelled": self.labelled,
            "pending": self.pending,
            "answers": self.answers,
            "scores": {str(k): v for k, v in self.scores.items()},
            "history": self.history,
            "edits": self.edits,
            "best_dice": self.best_dice if self.best_dice != float("-inf") else None,
            "rounds_since_best": self.rounds_since_best,
            "stopped": self.stopped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise MedalError(f"active pool: state version {state.get('version')} unsupported; delete the al/ dir")
        if list(state["ids"]) != self.ids:
            raise MedalError(
                f"active pool {self.path}: saved for a different pool of images; use another al.dir or delete it"
            )
        self.round = int(state["round"])
        self.labelled = {str(k): int(v) for k, v in state["labelled"].items()}
        self.pending = [str(i) for i in state["pending"]]
        self.answers = {str(k): str(v) for k, v in state["answers"].items()}
        self.scores = {int(k): v for k, v in state["scores"].items()}
        self.history = list(state["history"])
        self.edits = {str(k): dict(v) for k, v in state.get("edits", {}).items()}  # absent in pools saved before
        best = state.get("best_dice")
        self.best_dice = float(best) if best is not None else float("-inf")
        self.rounds_since_best = int(state["rounds_since_best"])
        self.stopped = state.get("stopped")

    def save(self) -> None:
        """Write the state atomically; no-op for an in-memory pool."""
        if self.path is None:
            return
        write_json(self.path, self.state_dict(), indent=1)

    @classmethod
    def open(cls, ids: Sequence[str], path: str | Path) -> ActivePool:
        """Resume the pool saved at `path`, or start a new one there."""
        pool = cls(ids, path)
        path = Path(path)
        if path.is_file():
            try:
                state = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as err:
                raise MedalError(f"{path}: unreadable active-pool state ({err}); restore it or delete it") from None
            pool.load_state_dict(state)
        return pool
