"""`medal predict` at archive scale: what grows with the number of images (the listing, the rows read back on a
resume, the merge of shards, the page) and must stay linear in time and bounded in memory. Timings are the scale
benchmark's (scripts/bench_scale.py); these tests check the behaviour the fixes keep."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from medal.predict.inputs import read_inputs


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(path)


def test_a_folder_names_each_image_by_its_path_without_suffix_unless_two_files_share_it(tmp_path: Path) -> None:
    for rel in ("a/x.png", "b/x.png", "c.png", "d/y.jpg", "d/y.png", "e/z.png"):
        _png(tmp_path / "in" / rel)
    frame = read_inputs(tmp_path / "in")
    by_path = dict(zip((Path(p).relative_to(tmp_path / "in").as_posix() for p in frame["path"]), frame["id"],
                       strict=True))
    assert by_path == {"a/x.png": "a/x", "b/x.png": "b/x", "c.png": "c", "d/y.jpg": "d/y.jpg",
                       "d/y.png": "d/y.png", "e/z.png": "e/z"}  # only d/y's two files share a stem
    assert frame["id"].is_unique
