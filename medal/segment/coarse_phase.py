"""The coarse phase of `medal segment`: Otsu hand masks and polarity for every image of a data set.

Writes `<work_dir>/coarse/<id>.png` and `coarse.csv` (id, inverted, fraction). A `medal.resume.Marker`
(policy `rebuild`) records the options and the code version: a rerun with the same ones reuses the folder
when it covers every image of the index, anything else recomputes it from an empty folder.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import pandas as pd

from medal.atomic import atomic_path
from medal.data.images import read_image, write_png
from medal.data.parallel import iter_parallel
from medal.preprocess.coarse import coarse_mask
from medal.resume import Marker

log = logging.getLogger("medal.segment")

COARSE_DIR = "coarse"
COARSE_TABLE = "coarse.csv"
COARSE_VERSION = 2  # bump when coarse_mask changes, so stale masks are recomputed


@dataclass(frozen=True)
class CoarseOptions:
    """`segment.coarse`: the morphology's working size, closing radius and the polarity ring's inset."""

    work_size: int  # longer side the thresholding and morphology run at
    closing_radius: int
    border: float  # fraction of the short side


def _coarse_one(job: tuple[str, str, str], options: CoarseOptions) -> tuple[str, bool, float]:
    image_id, path, out = job
    mask, inverted = coarse_mask(read_image(path), options.work_size, options.closing_radius, options.border)
    write_png(out, mask)
    return image_id, inverted, float(mask.mean())


def _covers(table: pd.DataFrame, out_dir: Path, ids: list[str]) -> bool:
    return set(table["id"]) >= set(ids) and all((out_dir / f"{i}.png").is_file() for i in ids)


def coarse_phase(index: pd.DataFrame, work_dir: Path, options: CoarseOptions, workers: int | None) -> pd.DataFrame:
    """The coarse table (id, inverted, fraction) in index order; masks written or reused under `coarse/`."""
    out_dir = work_dir / COARSE_DIR
    table_path = out_dir / COARSE_TABLE
    ids = list(index["id"])
    marker = Marker.in_folder(out_dir, "coarse", policy="rebuild", outputs=[out_dir], what="coarse masks")
    parts = {"options": asdict(options), "version": COARSE_VERSION}
    status = marker.begin(parts)
    if status == "done":
        table = pd.read_csv(table_path, dtype={"id": str})
        if _covers(table, out_dir, ids):
            log.info("coarse masks: reusing %s", table_path)
            return table.set_index("id").loc[ids].reset_index()
        log.info("coarse masks: %s lacks images of this index; recomputing", out_dir)
        marker.begin(parts, force=True)
    jobs = [(i, p, str(out_dir / f"{i}.png")) for i, p in zip(index["id"], index["path"], strict=True)]
    rows = list(iter_parallel(partial(_coarse_one, options=options), jobs, workers=workers, desc="coarse masks"))
    table = pd.DataFrame(rows, columns=["id", "inverted", "fraction"])
    with atomic_path(table_path) as tmp:
        table.to_csv(tmp, index=False)
    marker.finish(parts, images=len(table))
    log.info("coarse masks: %d written, %d inverted", len(table), int(table["inverted"].sum()))
    return table
