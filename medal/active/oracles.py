"""Oracles answer the pool's queries with hand masks.

Oracles are the `oracle=` config group (`_target_` one of the classes below). `SimulatedOracle` reads
held-back ground truth (`<masks_dir>/<id>.png`, e.g. the phantoms' masks/); `FolderOracle` is the human in
the loop: it exports the queried images and a starting mask into a round folder, the run stops, a person
saves `<id>_bin.png` answers there (the reference code's naming), and the next run validates and imports
them. Every answer is a full-size boolean mask.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from medal.atomic import write_json
from medal.data.images import read_image, write_png
from medal.errors import MedalError

log = logging.getLogger("medal.active")

ANSWER_SUFFIX = "_bin.png"
START_SUFFIX = "_start.png"
MANIFEST = "queried.json"


class OracleWaiting(Exception):
    """The human oracle has not answered yet; the message says where to put the answers."""


@dataclass
class QueryContext:
    """What an oracle may need about the queried images: full size, the image, a starting mask."""

    shape_of: Callable[[str], tuple[int, int]]
    image_of: Callable[[str], np.ndarray]
    start_mask_of: Callable[[str], np.ndarray | None]


class Oracle(Protocol):
    """Answers a round's queries with full-size boolean masks, or raises `OracleWaiting`."""

    name: str

    def answer(self, round_no: int, ids: Sequence[str], ctx: QueryContext) -> dict[str, np.ndarray]: ...


def binary_mask(path: Path, expected_shape: tuple[int, int] | None = None,
                threshold: float | None = None) -> np.ndarray:
    """Read a mask file: must decode and, if given, have the shape. Two values (0 and one other, e.g. 0/255 or
    0/1) are a binary mask; more grey levels (an anti-aliased mask) are cut at `threshold` of white (0 to 1),
    or refused when `threshold` is None."""
    arr = read_image(path)
    if expected_shape is not None and arr.shape != tuple(expected_shape):
        raise MedalError(
            f"{path}: mask is {arr.shape[1]}x{arr.shape[0]} (WxH) but the image is "
            f"{expected_shape[1]}x{expected_shape[0]}; save it at the image's size"
        )
    values = np.unique(arr)
    if values.size <= 2 and values[0] == 0.0:
        return arr > 0
    if threshold is None:
        raise MedalError(
            f"{path}: mask is not binary ({values.size} grey levels); save it with only black (0) and white (255)"
        )
    return arr > threshold


def answer_mask(path: Path, expected_shape: tuple[int, int] | None, threshold: float | None) -> np.ndarray:
    """A person's answer (`binary_mask`), refused when it marks nothing or everything: a hand covers part of the
    image, so an empty or all-white mask is a wrong file (a blank canvas, an inverted export), not a label."""
    mask = binary_mask(path, expected_shape, threshold)
    if not mask.any():
        raise MedalError(f"{path}: the mask is empty (no white pixel); paint the hand white on black")
    if mask.all():
        raise MedalError(f"{path}: the mask is all white; paint the hand white on a black background")
    return mask


def edit_effort(proposal: np.ndarray, answer: np.ndarray) -> dict[str, float]:
    """How much an annotator changed a proposed mask to reach the answer, both boolean (H, W): `edit_dice` (Dice
    of proposal and answer: 1 = accepted as shown) and `changed_share` (share of the image's pixels flipped).

    Examples:
        >>> answer = np.zeros((4, 4), bool); answer[:2] = True
        >>> proposal = np.zeros((4, 4), bool); proposal[:1] = True
        >>> edit_effort(proposal, answer)  # 4 of 8 hand pixels proposed, 4 of 16 pixels painted
        {'edit_dice': 0.6666666666666666, 'changed_share': 0.25}
    """
    if proposal.shape != answer.shape:
        raise MedalError(f"edit effort: proposal {proposal.shape} and answer {answer.shape} differ in size")
    both = int(proposal.sum()) + int(answer.sum())
    dice = 2.0 * int((proposal & answer).sum()) / both if both else 1.0
    return {"edit_dice": dice, "changed_share": float((proposal != answer).mean())}


@dataclass
class SimulatedOracle:
    """Answers from a folder of ground-truth masks `<id>.png` (held back from the learner)."""

    name: str
    masks_dir: Path

    def __post_init__(self) -> None:
        self.masks_dir = Path(self.masks_dir)
        if not self.masks_dir.is_dir():
            raise MedalError(f"oracle.masks_dir={self.masks_dir}: folder not found; point it at <id>.png masks")

    def answer(self, round_no: int, ids: Sequence[str], ctx: QueryContext) -> dict[str, np.ndarray]:
        return {i: binary_mask(self.masks_dir / f"{i}.png", ctx.shape_of(i)) for i in ids}


@dataclass
class FolderOracle:
    """A person answers through `<root>/round_XX/` (root: the run's `al.dir`): images + starting masks out,
    `<id>_bin.png` back. Anti-aliased answers (grey edges) are cut at `threshold` of white; null refuses any mask
    that is not two-valued. An empty or all-white answer is refused (`answer_mask`)."""

    name: str
    root: Path
    threshold: float | None

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise MedalError(f"oracle.threshold={self.threshold}: a share of white in (0, 1), or null")

    def round_dir(self, round_no: int) -> Path:
        return self.root / f"round_{round_no:02d}"

    def export(self, round_no: int, ids: Sequence[str], ctx: QueryContext) -> Path:
        """Write `<id>.png` (the image) and `<id>_start.png` (a mask to correct) once per round."""
        out = self.round_dir(round_no)
        manifest = out / MANIFEST
        if manifest.is_file() and json.loads(manifest.read_text())["ids"] == list(ids):
            return out
        shapes = {}
        for i in ids:
            image = ctx.image_of(i)
            shapes[i] = list(image.shape)
            write_png(out / f"{i}.png", image)
            start = ctx.start_mask_of(i)
            if start is not None:
                write_png(out / f"{i}{START_SUFFIX}", start.astype(np.float32))
        write_json(manifest, {"round": round_no, "ids": list(ids), "shapes": shapes}, indent=1)
        return out

    def answer(self, round_no: int, ids: Sequence[str], ctx: QueryContext) -> dict[str, np.ndarray]:
        """Export the round (once), then import every answer, or raise OracleWaiting / MedalError (bad files)."""
        folder = self.export(round_no, ids, ctx)
        manifest = folder / MANIFEST
        shapes = {k: tuple(v) for k, v in json.loads(manifest.read_text())["shapes"].items()}
        wanted = set(ids)
        problems: list[str] = []
        for path in sorted(folder.glob(f"*{ANSWER_SUFFIX}")):
            image_id = path.name[: -len(ANSWER_SUFFIX)]
            if image_id not in wanted:
                problems.append(
                    f"{path}: no image {image_id!r} was queried in round {round_no}; rename it to a queried id or remove it"
                )
        missing = [i for i in ids if not (folder / f"{i}{ANSWER_SUFFIX}").is_file()]
        answers: dict[str, np.ndarray] = {}
        for i in ids:
            if i in missing:
                continue
            try:
                answers[i] = answer_mask(folder / f"{i}{ANSWER_SUFFIX}", shapes.get(i), self.threshold)
            except MedalError as err:
                problems.append(str(err))
        if problems:
            for line in problems:
                log.error("%s", line)
            raise MedalError(f"{len(problems)} bad answer file(s) in {folder}; first: {problems[0]}")
        if missing:
            raise OracleWaiting(
                f"waiting for {len(missing)} of {len(ids)} answers: save each mask as <id>{ANSWER_SUFFIX} "
                f"(white hand on black, image size; <id>{START_SUFFIX} is a start) in {folder}, "
                "then rerun `medal segment` with the same arguments"
            )
        return answers
