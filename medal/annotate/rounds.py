"""The folder oracle's round a person answers in `medal annotate` (masks mode): what it asks, and the writes.

A round folder (`<al.dir>/round_XX/`, written by `medal.active.oracles.FolderOracle.export`) holds `queried.json`
(the ids in query order and each image's full size), `<id>.png`, `<id>_start.png` (the proposal) and, from round
1, `<id>_disagreement.png`. The strategy's score of each queried image is in the AL folder's `pool.json`. An
answer is accepted only through the folder oracle's own checks (`oracles.answer_values`: size, binary, not empty,
not all white) and written atomically as `<id>_bin.png`, so the next `medal segment` / `medal pipeline` run
imports exactly what the page showed as accepted.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from medal.active.loop import POOL_STATE
from medal.active.oracles import ANSWER_SUFFIX, DISAGREEMENT_SUFFIX, MANIFEST, START_SUFFIX, answer_values
from medal.data.images import write_png
from medal.errors import MedalError


@dataclass(frozen=True)
class MaskRound:
    """One exported round: `ids` in query order, their full sizes, the strategy's scores and each one's rank among
    the whole pool's scores that round (None in round 0, the initial random draw), and the pool's size."""

    dir: Path
    round_no: int
    ids: list[str]
    shapes: dict[str, tuple[int, int]]
    scores: dict[str, float] | None
    strategy: str
    ranks: dict[str, int] | None = None
    pool_size: int = 0

    def image(self, image_id: str) -> Path:
        return self.dir / f"{self.known(image_id)}.png"

    def proposal(self, image_id: str) -> Path | None:
        path = self.dir / f"{self.known(image_id)}{START_SUFFIX}"
        return path if path.is_file() else None

    def disagreement(self, image_id: str) -> Path | None:
        path = self.dir / f"{self.known(image_id)}{DISAGREEMENT_SUFFIX}"
        return path if path.is_file() else None

    def answer(self, image_id: str) -> Path:
        return self.dir / f"{self.known(image_id)}{ANSWER_SUFFIX}"

    def answered(self) -> list[str]:
        return [i for i in self.ids if self.answer(i).is_file()]

    def known(self, image_id: str) -> str:
        """`image_id` when the round queried it; anything else (a path, `..`) is refused: files are addressed by
        the manifest's ids only."""
        if image_id not in self.shapes:
            raise KeyError(image_id)
        return image_id


def open_round(round_dir: Path) -> MaskRound:
    """The round exported into `round_dir` (refused in one line when it holds no `queried.json`)."""
    manifest = round_dir / MANIFEST
    if not manifest.is_file():
        raise MedalError(f"annotate.round_dir={round_dir}: no {MANIFEST}; point it at a round_XX folder the "
                         "folder oracle exported")
    raw = json.loads(manifest.read_text())
    round_no = int(raw["round"])
    pool_path = round_dir.parent / POOL_STATE
    scores, ranks, pool_size = None, None, 0
    if pool_path.is_file():
        by_round = json.loads(pool_path.read_text()).get("scores", {})
        if str(round_no) in by_round:
            pool = by_round[str(round_no)]
            order = sorted(pool, key=lambda i: -float(pool[i]))
            scores = {i: float(pool[i]) for i in raw["ids"] if i in pool}
            ranks = {i: order.index(i) + 1 for i in scores}
            pool_size = len(pool)
    marker = round_dir.parent / ".medal" / "al.json"
    strategy = round_dir.parent.name
    if marker.is_file():
        settings = (json.loads(marker.read_text()).get("parts") or {}).get("strategy") or {}
        strategy = str(settings.get("name", strategy))
    return MaskRound(round_dir, round_no, list(raw["ids"]), {k: (int(v[0]), int(v[1])) for k, v in
                                                             raw["shapes"].items()}, scores, strategy, ranks, pool_size)


def waiting_round(al_root: Path) -> Path:
    """The one round folder under `al_root` (`<work_dir>/al`) still missing answers; refused in one line when
    there is none or more than one (then `annotate.round_dir` chooses)."""
    waiting = []
    for manifest in sorted(Path(al_root).glob(f"*/round_*/{MANIFEST}")):
        ids = json.loads(manifest.read_text())["ids"]
        if any(not (manifest.parent / f"{i}{ANSWER_SUFFIX}").is_file() for i in ids):
            waiting.append(manifest.parent)
    if not waiting:
        raise MedalError(f"{al_root}: no round waits for masks; run `medal pipeline` (or `medal segment "
                         "oracle=folder`) until it stops for them")
    runs = sorted({p.parent for p in waiting})
    if len(runs) > 1:
        raise MedalError(f"{len(runs)} active-learning runs wait for masks ({', '.join(str(r) for r in runs)}); "
                         "choose one with annotate.round_dir=<its round_XX folder>")
    return waiting[-1]


def decode_mask_png(data: bytes, source: str) -> np.ndarray:
    """The page's mask PNG as (H, W) float in [0, 1] (its first channel: the page sends black/white pixels)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            arr = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError):
        raise MedalError(f"{source}: the page sent no readable PNG; reload the page") from None
    return arr


def accept_mask(rnd: MaskRound, image_id: str, data: bytes) -> Path:
    """Validate the drawn mask with the folder oracle's own checks and write `<id>_bin.png` atomically; a refused
    mask raises MedalError (one line) and writes nothing. The page paints whole pixels black or white, so no grey
    level is cut at a threshold: a grey one is refused as the folder oracle with `threshold: null` would."""
    target = rnd.answer(image_id)
    mask = answer_values(decode_mask_png(data, target.name), target.name, rnd.shapes[image_id], None)
    return write_png(target, mask)
