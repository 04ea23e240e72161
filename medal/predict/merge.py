"""`medal predict predict.merge=true predict.parts=DIR`: join the shards of a multirun into one run folder.

Every folder under DIR (one or two levels down, as Hydra's sweep jobs are) with a finished predict record is a
part. The parts must be the shards 0..N-1 of one N, each once, made with one bundle, one input and the same
settings; otherwise one line says which part does not fit. Rows are copied into this run folder, and pictures linked
(`link_or_copy`: a 100,000-image archive's thumbnails and CAM overlays are gigabytes).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from medal.errors import MedalError
from medal.predict.rows import PREDICTIONS, read_rows
from medal.resume import Marker

log = logging.getLogger("medal.predict")


def _parts(parts_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    from medal.predict.run import MARKER

    found = []
    for folder in sorted({p.parent.parent for p in parts_dir.glob(f"**/.medal/{MARKER}.json")}):
        record = Marker.in_folder(folder, MARKER).read()
        if record is None or not record.get("finished"):
            raise MedalError(f"{folder}: a shard that did not finish; rerun its job (same folder) before merging")
        found.append((folder, record))
    return found


def link_or_copy(source: Path, target: Path) -> bool:
    """`target` as a hard link to `source` (an archive's pictures are gigabytes: merging should not write them
    again), or a copy where the file system has no links between the two (another device); atomic either way.
    True when linked.

    Both are safe to keep: predict writes every picture by renaming a new file over the old, so rewriting a
    shard's picture later gives it a new inode and leaves the merged one as it was.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
        linked = True
    except OSError:  # EXDEV (another device), EPERM (no hard links there): copy instead
        shutil.copyfile(source, tmp)
        linked = False
    os.replace(tmp, target)
    return linked


def merge_parts(parts_dir: str | None, out_dir: Path, max_rows: int) -> dict[str, float]:
    """Merge the finished shards under `parts_dir` into `out_dir` (rows, pictures, page); returns the metrics."""
    from medal.predict.run import finish_run

    if not parts_dir:
        raise MedalError("predict.merge=true: give predict.parts=<the multirun folder whose jobs hold the shards>")
    root = Path(parts_dir).expanduser().resolve()
    parts = _parts(root)
    if not parts:
        raise MedalError(f"predict.parts={root}: no finished `medal predict` run folders under it")
    first = parts[0][1]["parts"]
    shards = int(first["options"]["num_shards"])
    common = {k: v for k, v in first["options"].items() if k != "shard"}
    seen: dict[int, Path] = {}
    for folder, record in parts:
        p = record["parts"]
        options = {k: v for k, v in p["options"].items() if k != "shard"}
        if p["bundle"] != first["bundle"] or p["source"] != first["source"] or options != common:
            raise MedalError(f"{folder}: made with another bundle, input or settings than {parts[0][0]}; "
                             "merge the shards of one multirun")
        shard = int(p["options"]["shard"])
        if shard in seen:
            raise MedalError(f"{folder}: shard {shard} also in {seen[shard]}; keep one of them")
        seen[shard] = folder
    missing = sorted(set(range(shards)) - set(seen))
    if missing:
        raise MedalError(f"predict.parts={root}: shard(s) {missing} of {shards} missing; run them before merging")
    frames, linked, copied = [], 0, 0
    for folder in (seen[k] for k in range(shards)):
        rows = read_rows(folder / PREDICTIONS)
        for column in ("thumb", "overlay"):
            for rel in rows[column].dropna():
                if rel:
                    if link_or_copy(folder / rel, out_dir / rel):
                        linked += 1
                    else:
                        copied += 1
        frames.append(rows)
    merged = pd.concat(frames, ignore_index=True)
    log.info("merged %d shards (%d images) from %s; pictures: %d linked, %d copied (no hard links to %s)", shards,
             len(merged), root, linked, copied, out_dir)
    bundle = first["bundle"]
    return {**finish_run(out_dir, merged, sorted(merged["id"]), f"fingerprint {bundle}", int(
        parts[0][1]["metrics"].get("predict/calibration_images", 0)), common, max_rows, {}),
            "predict/shards": float(shards)}
