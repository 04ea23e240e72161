"""`medal predict` at archive scale: what grows with the number of images (the listing, the rows read back on a
resume, the merge of shards, the page) and must stay linear in time and bounded in memory. Timings are the scale
benchmark's (scripts/bench_scale.py); these tests check the behaviour the fixes keep."""

from __future__ import annotations

import errno
import gc
import weakref
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medal.predict.inputs import read_inputs
from medal.predict.merge import link_or_copy, merge_parts
from medal.predict.rows import PREDICTIONS, read_rows


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


@pytest.fixture
def shards(tmp_path: Path) -> Path:
    """Four finished shard folders of one 60-image archive (the scale benchmark's, with a picture per row)."""
    from medal.scale.context import Ctx
    from medal.scale.stages import _shards

    ids = [f"a{i:04d}" for i in range(60)]
    parts = tmp_path / "parts"
    _shards(Ctx("test", 60, tmp_path, tmp_path, tmp_path / "r.json"), parts, ids, [f"/x/{i}.png" for i in ids])
    return parts


def test_merging_shards_links_their_pictures_instead_of_writing_them_again(shards: Path, tmp_path: Path) -> None:
    metrics = merge_parts(str(shards), tmp_path / "merged", 1000)
    rows = read_rows(tmp_path / "merged" / PREDICTIONS)
    assert metrics["predict/shards"] == 4 and len(rows) == 60 and rows["id"].is_unique
    picture = (shards / "picture.png").stat().st_ino
    assert all((tmp_path / "merged" / rel).stat().st_ino == picture for rel in [*rows["thumb"], *rows["overlay"]])
    again = merge_parts(str(shards), tmp_path / "merged", 1000)  # merging again into the same folder is fine
    assert again["predict/images"] == 60


def test_pictures_are_copied_where_the_file_system_cannot_link(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "a.png").write_bytes(b"picture")

    def no_links(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr("medal.predict.merge.os.link", no_links)
    assert link_or_copy(tmp_path / "a.png", tmp_path / "out" / "a.png") is False
    copy = tmp_path / "out" / "a.png"
    assert copy.read_bytes() == b"picture" and copy.stat().st_ino != (tmp_path / "a.png").stat().st_ino
    assert not list((tmp_path / "out").glob(".*"))  # no temporary file left behind


def test_export_s_calibration_holds_one_batch_of_images_not_the_validation_split(
        tiny_phantoms: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from helpers.bundles import export, train_regressor

    from medal.predict.chain import ChainModule

    run = train_regressor(tiny_phantoms, tmp_path / "train", "data.split.calibration=0.3")
    measure, alive, batches = ChainModule.measure, [], []

    def watched(self, batch):  # every image array of earlier batches must be gone when the next batch comes
        gc.collect()
        batches.append(sum(ref() is not None for ref in alive))
        measured = measure(self, batch)
        alive.extend(weakref.ref(a) for m in measured for a in m.sample.get("inputs", []))
        return measured

    monkeypatch.setattr(ChainModule, "measure", watched)
    _, metrics = export([run], tmp_path / "export", "export.batch_size=4")
    assert metrics["export/calibration_images"] >= 12 and len(batches) >= 3
    # at most the last image of the batch before (the loop's variable) is alive: nothing of the split piles up
    assert alive and max(batches) <= 1, batches
