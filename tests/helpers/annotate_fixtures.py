"""Small things `medal annotate` serves, made through the package's own writers: a mask round (the folder oracle's
export) and a gold request; a valid answer for each; and a snapshot of a folder's files to show nothing changed."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from medal.active.oracles import FolderOracle, QueryContext
from medal.annotate.adjust import GoldSettings, adjust
from medal.annotate.request import read_request, record_settings, write_request
from medal.data.images import DERIVED_BITS, read_image, write_png
from medal.data.split import HoldoutOptions

SHAPE = (24, 20)  # (H, W) of the round's images


def mask_png(mask: np.ndarray) -> bytes:
    """A boolean mask as the page sends it (black/white), or float levels in [0, 1] as grey."""
    buf = io.BytesIO()
    levels = np.where(mask, 255, 0) if mask.dtype == bool else np.round(mask * 255)
    Image.fromarray(levels.astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def export_round(al: Path) -> Path:
    """Round 1 of a query-by-committee run the folder oracle exported (through its own `export`): images b, a, c in
    query order with the strategy's scores in pool.json; returns the round folder."""
    rng = np.random.default_rng(0)
    start = np.zeros(SHAPE, bool)
    start[6:18, 5:15] = True
    ctx = QueryContext(lambda i: SHAPE, lambda i: rng.random(SHAPE).astype(np.float32), lambda i: start,
                       lambda i: np.full(SHAPE, 0.25, np.float32))
    FolderOracle("folder", al, 0.5).export(1, ["b", "a", "c"], ctx)
    (al / "pool.json").write_text(json.dumps({"scores": {"1": {"a": 0.5, "b": 0.9, "c": 0.1, "d": 0.7}}}))
    return al / "round_01"


def a_mask() -> np.ndarray:
    """A mask the folder oracle accepts for the round's images, unlike any answer `answer_round` writes."""
    mask = np.zeros(SHAPE, bool)
    mask[2:22, 3:17] = True
    return mask


def answer_round(round_dir: Path) -> None:
    """Every image of the round answered (so Finish would stop the server)."""
    for image_id in ("a", "b", "c"):
        mask = np.zeros(SHAPE, np.float32)
        mask[5:10, 5:10] = 1
        write_png(round_dir / f"{image_id}_bin.png", mask)


def make_gold_request(root: Path) -> Path:
    """A gold request of 5 of 10 RoIs (the test split's two, the data set's test holdout, left out) under `root`,
    with the index it was drawn from (`root/index.csv`); returns its folder."""
    rois, rng = root / "roi", np.random.default_rng(2)
    index = pd.DataFrame({"id": [f"{i}" for i in range(10)], "split": ["train"] * 6 + ["val", "val", "test", "test"],
                          "boneage": np.linspace(10, 200, 10), "male": [True, False] * 5})
    paths = []
    for image_id in index["id"]:
        roi = np.zeros((32, 32), np.float32)
        roi[4:28, 6:26] = rng.uniform(0.2, 0.7, (24, 20))
        paths.append(write_png(rois / f"{image_id}.png", roi, bits=16))
    index["path"] = [str(p) for p in paths]
    index.to_csv(root / "index.csv", index=False)
    write_request(root / "request", index, root / "work", rois, root / "roi_gold", count=5, seed=0,
                  holdout=HoldoutOptions())
    return root / "request"


def answer_request(request_dir: Path) -> None:
    """Every requested gold standard made at the suggested-free default setting (so Finish would stop the server)."""
    request = read_request(request_dir)
    assert request is not None
    for image_id in request.ids:
        roi = read_image(request.input_dir / f"{image_id}.png")
        write_png(request.gold_dir / f"{image_id}.png", adjust(roi, GoldSettings()), bits=DERIVED_BITS)
        record_settings(request_dir, image_id, GoldSettings().as_dict())


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes: equal snapshots mean nothing was written, added or removed."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
