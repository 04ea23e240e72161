"""The decoded-image cache: values, fit modes, hits that read no PNG, rebuilds, atomic builds."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from helpers.rsna_layouts import MODES, truncate, write_png
from PIL import Image

import medal.data.images as image_io
from medal.data.cache import build_cache, cached_images, fit_square, load_resized
from medal.errors import MedalError


@pytest.fixture
def pngs(tmp_path: Path) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(0)
    paths = [str(write_png(tmp_path / "png" / f"{i}.png", rng, MODES[i % len(MODES)], size=(48, 36)))
             for i in range(10)]
    return [str(i) for i in range(10)], paths


def _forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("a PNG was read")

    monkeypatch.setattr(image_io, "read_image", refuse)
    monkeypatch.setattr(Image, "open", refuse)


def test_cache_rows_match_decoded_images(pngs: tuple[list[str], list[str]], tmp_path: Path) -> None:
    ids, paths = pngs
    array = cached_images(ids, paths, tmp_path / "work", size=32, workers=1)
    assert array.shape == (10, 32, 32) and isinstance(array, np.memmap)
    assert Path(array.filename).parent == tmp_path / "work" / "cache"
    for i in (0, 3, 7):  # L, RGB, I;16 ...: each row is its own image
        np.testing.assert_allclose(array[i].astype(np.float32), load_resized(paths[i], 32), atol=1e-3)
    assert float(array.min()) >= 0.0 and float(array.max()) <= 1.0


def test_pad_keeps_aspect_and_stretch_fills() -> None:
    wide = np.zeros((20, 40), dtype=np.float32)
    wide[:, 10:30] = 1.0  # a bright square in the middle of a dark wide image
    padded, stretched = fit_square(wide, 40, "pad"), fit_square(wide, 40, "stretch")
    assert padded.shape == stretched.shape == (40, 40)
    assert padded[:8].max() < 0.01 and padded[20, 20] > 0.99  # bars above/below, content kept square
    assert stretched[2, 20] > 0.99  # stretched content reaches the top
    assert abs(padded.mean() - 0.25) < 0.02  # a 20x20 square in 40x40
    with pytest.raises(MedalError, match="data.fit='crop'"):
        fit_square(wide, 40, "crop")


def test_pad_uses_the_background_of_inverted_images() -> None:
    inverted = np.ones((20, 40), dtype=np.float32)
    inverted[5:15, 15:25] = 0.0
    assert fit_square(inverted, 40, "pad")[:8].min() > 0.99  # white background -> white bars


def test_cache_hit_reads_no_png(pngs: tuple[list[str], list[str]], tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    ids, paths = pngs
    first = np.array(cached_images(ids, paths, tmp_path / "work", size=24, workers=2))
    _forbid_decoding(monkeypatch)
    again = cached_images(ids, paths, tmp_path / "work", size=24, workers=1)
    np.testing.assert_array_equal(first, again)


def test_changed_file_or_setting_rebuilds(pngs: tuple[list[str], list[str]], tmp_path: Path) -> None:
    ids, paths = pngs
    work = tmp_path / "work"
    before = build_cache(ids, paths, work, size=24, workers=1)
    old_row = np.array(before.array[2])
    Image.fromarray(np.full((48, 36), 255, dtype=np.uint8), mode="L").save(paths[2])
    stat = os.stat(paths[2])
    os.utime(paths[2], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    after = build_cache(ids, paths, work, size=24, workers=1)
    assert after.path != before.path
    assert np.all(np.asarray(after.array[2]) == 1.0) and not np.array_equal(old_row, after.array[2])
    np.testing.assert_array_equal(after.array[5], before.array[5])
    for size, fit in ((24, "stretch"), (16, "pad")):
        assert build_cache(ids, paths, work, size=size, fit=fit, workers=1).path not in {before.path, after.path}


def test_interrupted_build_resumes_without_redoing_work(pngs: tuple[list[str], list[str]], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    ids, paths = pngs
    work = tmp_path / "work"
    real_read, calls = image_io.read_image, []

    def dies_after_six(path: str) -> np.ndarray:
        calls.append(path)
        if len(calls) > 6:
            raise KeyboardInterrupt
        return real_read(path)

    monkeypatch.setattr(image_io, "read_image", dies_after_six)
    with pytest.raises(KeyboardInterrupt):
        cached_images(ids, paths, work, size=24, workers=1)
    assert not list((work / "cache").glob("[!.]*.npy"))  # nothing that looks complete
    calls.clear()
    monkeypatch.setattr(image_io, "read_image", lambda path: calls.append(path) or real_read(path))
    array = cached_images(ids, paths, work, size=24, workers=1)
    assert calls == paths[6:]  # the six finished images are not decoded again
    for i in (0, 5, 9):
        np.testing.assert_allclose(array[i].astype(np.float32), load_resized(paths[i], 24), atol=1e-3)
    assert sorted(p.name for p in (work / "cache").iterdir()) == sorted([Path(array.filename).name,
                                                                         Path(array.filename).stem + ".json"])


def test_unreadable_image_is_named(pngs: tuple[list[str], list[str]], tmp_path: Path) -> None:
    ids, paths = pngs
    truncate(Path(paths[4]))
    built = build_cache(ids, paths, tmp_path / "work", size=24, workers=2)
    assert list(built.failed) == ["4"] and "unreadable or truncated" in built.failed["4"]
    with pytest.raises(MedalError) as err:
        cached_images(ids, paths, tmp_path / "work", size=24, workers=1)
    assert paths[4] in str(err.value) and "\n" not in str(err.value)
