"""Decoded-image cache: each image is decoded, squared and resized once into a memory-mapped array.

Training reads rows of `<work_dir>/cache/<key>.npy` (float16 in [0, 1]; half the disk of float32 and still
finer than 8-bit) and never touches a PNG again. The key is `medal.resume.fingerprint` of every file's
`file_stamp` (path, size, mtime), the target size, the fit mode and `CACHE_VERSION` -- the same hash and
the same file identity every resumable piece of medal uses -- so a changed file or setting builds a new
cache (the key stays in the file name, which lets caches of several settings live side by side). A build
writes to a temporary name and renames when complete, so a complete cache is reused and an interrupted one
resumes where it stopped; a lock makes concurrent runs (a parallel multirun) build it once.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medal.atomic import write_json
from medal.data import images as image_io
from medal.data.parallel import iter_parallel
from medal.errors import MedalError
from medal.resume import fingerprint

log = logging.getLogger("medal.data")

CACHE_VERSION = 2  # bump when decoding/resizing changes, so old caches are not reused
CACHE_DTYPE = np.float16
PROGRESS_EVERY = 256  # images between progress records of a build (what a killed build keeps)
FITS = ("pad", "stretch")


def fit_square(image: np.ndarray, size: int, fit: str = "pad", fill: float | None = None) -> np.ndarray:
    """Resize HxW float [0, 1] to (size, size) float32.

    `pad` keeps the aspect ratio: the long side is resized to `size` and the short side padded with
    `fill`, by default the median of the image border, so a white-background (inverted) radiograph gets
    white bars and a normal one black bars (a mask mapped into the same frame passes `fill=0`); `stretch`
    resizes directly. PIL's bilinear filter widens its support when shrinking (antialiased). Padding after
    resizing touches size x size pixels, not the full-resolution square.
    """
    if fit not in FITS:
        raise MedalError(f"data.fit={fit!r}: choose one of {', '.join(FITS)}")
    h, w = image.shape
    if fit == "stretch" or h == w:
        return np.clip(image_io.resize(image, (size, size)), 0.0, 1.0)
    if fill is None:
        fill = float(np.median(np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])))
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    out = np.full((size, size), fill, dtype=np.float32)
    y0, x0 = (size - nh) // 2, (size - nw) // 2
    out[y0:y0 + nh, x0:x0 + nw] = image_io.resize(image, (nh, nw))
    return np.clip(out, 0.0, 1.0)


def load_resized(path: str | Path, size: int, fit: str = "pad") -> np.ndarray:
    """Decode one PNG and fit it to (size, size): what the cache stores and the no-cache path computes."""
    return fit_square(image_io.read_image(path), size, fit)


def cached_form(image: np.ndarray, size: int, fit: str = "pad") -> np.ndarray:
    """A decoded image as a cache row holds it: fitted to (size, size) and stored as `CACHE_DTYPE`.

    `medal predict` passes images it holds in memory through this, so the networks see the values they saw
    in training (the float16 rounding included).
    """
    return fit_square(image, size, fit).astype(CACHE_DTYPE)


def file_stamp(path: str | Path) -> list[str | int]:
    """A file's identity for resume fingerprints: resolved path, size in bytes and mtime (ns).

    Rewriting a file (a new RoI, a retrained generator) changes its stamp, so work derived from it is redone.
    """
    try:
        st = os.stat(path)
    except OSError:
        return [str(Path(path).resolve()), "missing"]
    return [str(Path(path).resolve()), st.st_size, st.st_mtime_ns]


def cache_key(paths: Sequence[str | Path], size: int, fit: str) -> str:
    """`medal.resume.fingerprint` of every file's stamp, in order, plus the settings and code version."""
    settings = {"version": CACHE_VERSION, "size": int(size), "fit": fit, "dtype": np.dtype(CACHE_DTYPE).str}
    return fingerprint(settings, [file_stamp(p) for p in paths])


@dataclass
class CachedImages:
    """A built cache: `array[i]` is the image of `ids[i]`; `failed` maps ids that did not decode to why."""

    array: np.memmap
    ids: list[str]
    failed: dict[str, str]
    path: Path


def _decode(job: tuple[str, int, str]) -> tuple[np.ndarray | None, str | None]:
    path, size, fit = job
    try:
        return cached_form(image_io.read_image(path), size, fit), None
    except MedalError as err:
        return None, str(err)


def _load_complete(array_path: Path, meta_path: Path, ids: list[str]) -> CachedImages | None:
    if not (array_path.is_file() and meta_path.is_file()):
        return None
    meta = json.loads(meta_path.read_text())
    if meta["ids"] != ids:
        return None
    log.debug("image cache hit: %s", array_path)
    return CachedImages(np.load(array_path, mmap_mode="r"), ids, meta["failed"], array_path)


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock: two runs that need the same cache (a parallel multirun) build it once."""
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_cache(ids: Sequence[str], paths: Sequence[str | Path], work_dir: str | Path, size: int,
                fit: str = "pad", workers: int | None = None) -> CachedImages:
    """Return the cache of `paths` at (size, fit), building it (in parallel, with a progress bar) if needed.

    Images that fail to decode are left black and listed in `failed`, so the caller decides whether
    that is fatal (`cached_images`) or a row to skip (data.strict=false). An interrupted build resumes:
    rows already decoded are recorded in a progress file (after the array is flushed) and not redone.
    """
    if len(ids) != len(paths):
        raise ValueError(f"{len(ids)} ids but {len(paths)} paths")
    if fit not in FITS:
        raise MedalError(f"data.fit={fit!r}: choose one of {', '.join(FITS)}")
    ids = [str(i) for i in ids]
    cache_dir = Path(work_dir) / "cache"
    key = cache_key(paths, size, fit)
    array_path, meta_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    if (hit := _load_complete(array_path, meta_path, ids)) is not None:
        return hit
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(cache_dir / f".{key}.lock"):
        if (hit := _load_complete(array_path, meta_path, ids)) is not None:  # built while we waited
            return hit
        _build(ids, paths, cache_dir / f".{key}.partial.npy", cache_dir / f".{key}.progress.json", size, fit,
               workers, meta_path, array_path)
    (cache_dir / f".{key}.lock").unlink(missing_ok=True)
    return _load_complete(array_path, meta_path, ids)  # type: ignore[return-value]


def _save_progress(array: np.memmap, progress: Path, ids: list[str], done: np.ndarray,
                   failed: dict[str, str]) -> None:
    array.flush()  # rows on disk first, then the record that says they are there
    write_json(progress, {"ids": ids, "done": np.flatnonzero(done).tolist(), "failed": failed})


def _build(ids: list[str], paths: Sequence[str | Path], partial: Path, progress: Path, size: int, fit: str,
           workers: int | None, meta_path: Path, array_path: Path) -> None:
    """Decode the rows not done yet into `partial`, then publish it as `array_path`."""
    shape = (len(ids), size, size)
    done, failed = np.zeros(len(ids), dtype=bool), {}
    if partial.is_file() and progress.is_file():
        state = json.loads(progress.read_text())
        array = np.load(partial, mmap_mode="r+")
        if array.shape == shape and state["ids"] == ids:
            done[state["done"]] = True
            failed = state["failed"]
            log.info("resuming image cache build: %d of %d images already done", done.sum(), len(ids))
    if not done.any():
        array = np.lib.format.open_memmap(partial, mode="w+", dtype=CACHE_DTYPE, shape=shape)
    todo = np.flatnonzero(~done)
    source = Path(paths[todo[0]]).parent if len(todo) else "-"
    log.info("building image cache of %d images from %s at %d px (%s) in %s", len(todo), source, size, fit,
             array_path)

    jobs = [(str(paths[i]), size, fit) for i in todo]
    try:
        results = iter_parallel(_decode, jobs, workers=workers, desc="caching images")
        for n, (i, (image, error)) in enumerate(zip(todo, results, strict=True), start=1):
            array[i] = image if error is None else 0
            if error is not None:
                failed[ids[i]] = error
            done[i] = True
            if n % PROGRESS_EVERY == 0:
                _save_progress(array, progress, ids, done, failed)
    finally:
        _save_progress(array, progress, ids, done, failed)
    write_json(meta_path, {"ids": ids, "failed": failed, "size": size, "fit": fit, "version": CACHE_VERSION})
    partial.replace(array_path)  # last: a cache whose array exists is complete
    progress.unlink(missing_ok=True)


def cached_images(ids: Sequence[str], paths: Sequence[str | Path], work_dir: str | Path, size: int,
                  fit: str = "pad", workers: int | None = None) -> np.memmap:
    """(N, size, size) float16 memmap in [0, 1], row i = ids[i]; raises MedalError if any image is unreadable."""
    cache = build_cache(ids, paths, work_dir, size, fit, workers=workers)
    if cache.failed:
        first = next(iter(cache.failed.values()))
        more = f" (and {len(cache.failed) - 1} more)" if len(cache.failed) > 1 else ""
        raise MedalError(f"{first}{more}; fix or remove the file, or set data.strict=false to skip it")
    return cache.array
