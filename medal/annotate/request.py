"""The gold-standard request: which segmented RoIs a person adjusts for the enhancer, chosen once and recorded.

The enhancer learns from (RoI, gold standard) pairs; a gold set drawn from one corner of the data (young girls, one
detector) teaches it one corner. `choose` spreads the request over strata of sex x age (tertiles) x acquisition
(the source file's bit depth and polarity, the two acquisition traits every RSNA-layout image has), taking one RoI
per stratum in turn, so every stratum is represented before any gets a second. The data set's test holdout
(`medal.data.split.held_out_ids`: the official test split, or the split drawn once per data set under
`data.work_dir`) is never a candidate: no bone age test image gets a gold standard, so no GAN trains on one.

The request lives in `<request_dir>/request.json` (count, seed, the ids in the order the person sees them, each
id's stratum, the RoI and gold folders); the person's slider settings go to `<request_dir>/settings.csv`. The
folder is kept apart from the gold folder, which the segmentation stage owns (and rewrites when its masks change):
the CSV then reproduces the set on the new RoIs.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from medal.atomic import write_json, write_text
from medal.data.split import HoldoutOptions, held_out_ids
from medal.errors import MedalError

log = logging.getLogger("medal.annotate")

REQUEST = "request.json"
SETTINGS = "settings.csv"


@dataclass(frozen=True)
class GoldRequest:
    """What the enhancer asked a person for: `ids` (in order) to adjust from `input_dir` into `gold_dir`."""

    dir: Path
    ids: list[str]
    strata: dict[str, str]
    input_dir: Path
    gold_dir: Path

    def answered(self) -> list[str]:
        return [i for i in self.ids if (self.gold_dir / f"{i}.png").is_file()]

    def missing(self) -> list[str]:
        return [i for i in self.ids if not (self.gold_dir / f"{i}.png").is_file()]


def acquisition(path: Path, inverted: bool) -> str:
    """An image's acquisition type from its header and the coarse phase's polarity: e.g. '16-bit inverted'."""
    with Image.open(path) as img:
        bits = 16 if img.mode in ("I;16", "I;16B", "I", "I;16L") else 8
    return f"{bits}-bit" + (" inverted" if inverted else "")


def choose(table: pd.DataFrame, count: int, seed: int) -> pd.DataFrame:
    """`count` rows of `table` (columns id, boneage, male, acquisition) spread over sex x age tertile x
    acquisition: strata take turns, each giving its next row in a seeded random order. Returns the chosen rows
    in that order with a `stratum` column.

    Examples:
        >>> t = pd.DataFrame({"id": [str(i) for i in range(12)], "boneage": [10, 20, 30, 40, 50, 60] * 2,
        ...                   "male": [True] * 6 + [False] * 6, "acquisition": ["8-bit"] * 12})
        >>> picked = choose(t, 6, seed=0)
        >>> sorted(picked["stratum"].str.split(" ").str[:2].str.join(" ").value_counts().tolist())
        [1, 1, 1, 1, 1, 1]
    """
    if count < 1:
        raise MedalError(f"gold request: count={count}; ask for at least 1 gold standard")
    if len(table) == 0:
        raise MedalError("gold request: no segmented RoI to choose from; run the segmentation stage first")
    t = table.copy()
    t["age_bin"] = pd.qcut(t["boneage"].rank(method="first"), q=min(3, len(t)), labels=False)
    t["stratum"] = (np.where(t["male"], "male", "female") + " age" + (t["age_bin"] + 1).astype(str) + "/3 "
                    + t["acquisition"])
    rng = np.random.default_rng(seed)
    queues = {name: list(group["id"].iloc[rng.permutation(len(group))])
              for name, group in sorted(t.groupby("stratum"), key=lambda kv: kv[0])}
    picked: list[str] = []
    while len(picked) < min(count, len(t)):
        for name in list(queues):
            if queues[name] and len(picked) < count:
                picked.append(queues[name].pop(0))
    return t.set_index("id").loc[picked].reset_index()[["id", "boneage", "male", "acquisition", "stratum"]]


def write_request(request_dir: Path, index: pd.DataFrame, work_dir: Path, input_dir: Path, gold_dir: Path,
                  count: int, seed: int, holdout: HoldoutOptions) -> GoldRequest:
    """Choose and record the request (never an image of the data set's test holdout, kept under `work_dir`; the
    polarity of each image from the coarse phase's table there where there is one); an existing request is kept as
    it is, unless it names a held-out image (made before medal fixed the holdout), which is refused."""
    from medal.segment.coarse_phase import COARSE_DIR, COARSE_TABLE

    coarse_table = Path(work_dir) / COARSE_DIR / COARSE_TABLE
    excluded = held_out_ids(index, work_dir, holdout)
    existing = read_request(request_dir)
    if existing is not None:
        leaked = sorted(set(existing.ids) & excluded)
        if leaked:
            raise MedalError(f"{Path(request_dir) / REQUEST}: asks for gold standards of {len(leaked)} test images "
                             f"(e.g. {leaked[0]}); delete {request_dir} and the gold standards of those images, "
                             "then rerun to draw a request without them")
        return existing
    rois = {p.stem for p in Path(input_dir).glob("*.png")}
    rows = index[~index["id"].astype(str).isin(excluded) & index["id"].isin(rois)]
    inverted: dict[str, bool] = {}
    if coarse_table is not None and coarse_table.is_file():
        coarse = pd.read_csv(coarse_table, dtype={"id": str})
        inverted = dict(zip(coarse["id"], coarse["inverted"].astype(bool), strict=True))
    table = pd.DataFrame({"id": rows["id"], "boneage": rows["boneage"], "male": rows["male"].astype(bool),
                          "acquisition": [acquisition(Path(p), inverted.get(i, False))
                                          for i, p in zip(rows["id"], rows["path"], strict=True)]})
    picked = choose(table, count, seed)
    if len(picked) < count:
        log.warning("gold request: %d wanted, only %d RoIs outside the test holdout exist; asking for all of them",
                    count, len(picked))
    write_json(Path(request_dir) / REQUEST, {
        "count": int(count), "seed": int(seed), "input_dir": str(input_dir), "gold_dir": str(gold_dir),
        "ids": picked["id"].tolist(), "strata": dict(zip(picked["id"], picked["stratum"], strict=True))}, indent=1)
    log.info("gold request: %d RoIs over %d strata recorded in %s", len(picked), picked["stratum"].nunique(),
             Path(request_dir) / REQUEST)
    return read_request(request_dir)  # type: ignore[return-value]


def read_request(request_dir: Path) -> GoldRequest | None:
    """The recorded request, or None when none was made."""
    path = Path(request_dir) / REQUEST
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    return GoldRequest(Path(request_dir), list(raw["ids"]), dict(raw["strata"]), Path(raw["input_dir"]),
                       Path(raw["gold_dir"]))


def read_settings(request_dir: Path) -> dict[str, dict[str, str]]:
    """`{id: row}` of the recorded slider settings (`settings.csv`)."""
    path = Path(request_dir) / SETTINGS
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        return {row["id"]: row for row in csv.DictReader(f)}


def record_settings(request_dir: Path, image_id: str, values: dict[str, float]) -> None:
    """Add or replace `image_id`'s row of `settings.csv` (rewritten atomically; floats as Python writes them, so
    they read back exactly)."""
    rows = read_settings(request_dir)
    rows[image_id] = {"id": image_id, **{k: repr(float(v)) for k, v in values.items()}}
    names = ["id", *values]
    lines = [",".join(names)] + [",".join(str(row[n]) for n in names) for _, row in sorted(rows.items())]
    write_text(Path(request_dir) / SETTINGS, "\n".join(lines) + "\n")
