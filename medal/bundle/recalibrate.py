"""`medal recalibrate`: rewrite a bundle's conformal calibration on a hospital's own labelled cases.

A bundle's intervals hold for images exchangeable with the images that calibrated it; a hospital's radiographs
(another scanner, another population, another reader) may not be. Run over its own labelled cases, the bundle's
chain gives new estimates; they replace `calibration.json`, so the intervals then hold for that hospital's cases.

- Cases: a CSV `id,path,male,boneage` (paths relative to the CSV allowed), or a folder of images with
  `recalibrate.labels=<CSV id,male,boneage>` (ids are the file names without suffix). Every case needs a sex and
  a bone age; a case without one is refused in one line. A case that is one of the bundle's own training or
  validation images (where its data set is on this machine) is refused too: the models have seen it.
- Kept: the age band edges and the difficulty curve of the bundle (fixed by its training run, so they stay
  independent of the cases); the method unless `recalibrate.method` names another.
- Recorded: the table's `source` (the file, its sha256, the images' sha256, the count, the date, the medal
  version) and, in `bundle.json`, `calibration.current` and `calibration.history` (every earlier source). The old
  table is kept under `calibrations/<date>_<sha12>.json`, listed in the manifest with its sha256; the new
  `calibration.json` and the model card are hashed into the manifest, which is written last.
- Resumable: the chain's pass is the slow part; a run killed after the new table was written but before the
  manifest (`.medal/recalibrate.json` says which table it wrote) finishes the manifest on rerun. The same cases
  and method a second time change nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from medal.atomic import write_json, write_text
from medal.bundle.load import Bundle, load_bundle
from medal.bundle.manifest import CALIBRATION, read_manifest, sha256, verify_files, versions, write_manifest
from medal.errors import MedalError
from medal.hardware import inference_device
from medal.predict import conformal
from medal.predict.inputs import read_inputs
from medal.resume import Marker

log = logging.getLogger("medal.bundle")

CARD = "docs/README.md"
ARCHIVE = "calibrations"


def read_cases(cases: str | Path, labels: str | Path | None) -> pd.DataFrame:
    """The input table (`medal.predict.inputs.COLUMNS`) of labelled cases; one line for a case without sex or age."""
    path = Path(cases).expanduser().resolve()
    frame = read_inputs(path)
    if labels is not None:
        if path.is_file():
            raise MedalError(f"recalibrate.labels={labels}: give labels with a folder of images; cases={path} is a "
                             "CSV, whose male and boneage columns are the labels")
        table = pd.read_csv(Path(labels).expanduser(), dtype={"id": str})
        missing = [c for c in ("id", "male", "boneage") if c not in table.columns]
        if missing:
            raise MedalError(f"recalibrate.labels={labels}: no {missing[0]} column; give columns id,male,boneage")
        from medal.data.rsna import parse_male

        known = {str(i): (parse_male(m), b) for i, m, b in zip(table["id"], table["male"], table["boneage"],
                                                                strict=True)}
        unlabelled = [i for i in frame["id"] if i not in known]
        if unlabelled:
            raise MedalError(f"recalibrate.labels={labels}: {len(unlabelled)} images of {path} have no row (e.g. "
                             f"{unlabelled[0]}); label every case, or move the others out of the folder")
        frame["male"] = [np.nan if known[i][0] is None else float(known[i][0]) for i in frame["id"]]
        frame["reference"] = pd.to_numeric(pd.Series([known[i][1] for i in frame["id"]]), errors="coerce").to_numpy()
        frame["sex_source"] = "labels"
    for row in frame.itertuples():
        if not np.isfinite(row.male) or not np.isfinite(row.reference):
            what = "no sex (male)" if not np.isfinite(row.male) else "no bone age (boneage)"
            raise MedalError(f"cases={path}: case {row.id} has {what}; every calibration case needs id, path, male "
                             "and boneage (months)")
    return frame


def _digest(frame: pd.DataFrame) -> str:
    """sha256 over the cases as read: each id, sex, age and the sha256 of its image file."""
    digest = hashlib.sha256()
    for row in frame.sort_values("id").itertuples():
        image = sha256(row.path) if Path(row.path).is_file() else "missing"
        digest.update(f"{row.id},{row.male},{row.reference},{image}\n".encode())
    return digest.hexdigest()


def refuse_training_images(frame: pd.DataFrame, data: dict[str, Any]) -> None:
    """Refuse cases that are the bundle's own training or validation images (checked where its split file and data
    set are on this machine; a hospital's cases are elsewhere)."""
    from medal.data.rsna import read_index
    from medal.data.split import read_split

    split_file, root = Path(str(data.get("split_file", ""))), Path(str(data.get("root", "")))
    if not split_file.is_file() or not root.is_dir():
        return
    roles = read_split(split_file)
    index = read_index(root, strict=False)
    seen = index[index["id"].isin(set(roles.index[roles.isin(("train", "val"))]))]
    paths = {str(Path(p).resolve()) for p in seen["path"]}
    hit = [i for i, p in zip(frame["id"], frame["path"], strict=True) if str(Path(p).resolve()) in paths]
    if hit:
        raise MedalError(f"cases: {len(hit)} are images the bundle's models trained on or were selected with (e.g. "
                         f"{hit[0]}, in {split_file}); calibrate on cases they never saw")


def _settings(bundle: Bundle, method: str | None) -> dict[str, Any]:
    old = bundle.calibration or {}
    settings = dict(old.get("settings") or {"method": "sex", "min_cohort": 50, "min_band": 30, "edges": None,
                                             "difficulty": None})
    if method is not None:
        if method not in conformal.METHODS:
            raise MedalError(f"recalibrate.method={method!r}: choose one of {', '.join(conformal.METHODS)}")
        needs = {"mondrian_age": "edges", "normalised": "difficulty"}.get(method)
        if needs and not settings.get(needs):
            raise MedalError(f"recalibrate.method={method}: this bundle has no {needs} (exported by an older medal); "
                             "use recalibrate.method=sex, or re-export it")
        settings["method"] = method
    return settings


def _finish(root: Path, manifest: dict[str, Any], old_source: dict[str, Any] | None, archived: str | None,
            new: dict[str, Any]) -> None:
    """The model card and the manifest of the recalibrated bundle (the manifest last)."""
    from medal.bundle.export import model_card

    chain = json.loads((root / "configs" / "inference.json").read_text())
    write_text(root / CARD, model_card(manifest["name"], manifest["description"], manifest["data"], new, chain))
    record = dict(manifest.get("calibration") or {})
    history = list(record.get("history") or [])
    if old_source is not None:
        history.append({**old_source, "archived_as": archived})
    files = dict(manifest["files"])
    for rel in [CALIBRATION, CARD] + ([archived] if archived else []):
        files[rel] = sha256(root / rel)
    write_manifest(root, {**manifest, "files": files, "calibration": {"current": new["source"], "history": history}})


def recalibrate(bundle_dir: str | Path, cases: str | Path, labels: str | Path | None, method: str | None,
                device: str, batch_size: int, num_workers: int) -> dict[str, float]:
    """Recalibrate the bundle at `bundle_dir` on `cases` (module docstring); returns metrics."""
    from medal.predict.calibrate import calibrate

    root = Path(bundle_dir).expanduser().resolve()
    frame = read_cases(cases, labels)
    source_file = Path(labels if labels is not None else cases).expanduser().resolve()
    parts = {"cases": str(Path(cases).expanduser().resolve()), "images_sha256": _digest(frame),
             "file_sha256": sha256(source_file) if source_file.is_file() else None, "method": method}
    marker = Marker.in_folder(root, "recalibrate", policy="rebuild", what="a recalibration")
    record = marker.read()
    manifest = read_manifest(root)
    pending = (record is not None and not record.get("finished") and record.get("parts") == json.loads(
        json.dumps(parts)) and record.get("table") == sha256(root / CALIBRATION))
    if pending:  # killed after the new table, before the manifest: finish it
        log.info("%s: finishing the recalibration a killed run began", root)
        verify_files(root, {**manifest, "files": {k: v for k, v in manifest["files"].items()
                                                  if k not in (CALIBRATION, CARD)}})
        new = json.loads((root / CALIBRATION).read_text())
        _finish(root, manifest, record["old_source"], record["archived"], new)
        marker.finish(parts, metrics=record["metrics"])
        return dict(record["metrics"])
    bundle = load_bundle(root)
    current = (bundle.calibration or {}).get("source") or {}
    if (current.get("images_sha256") == parts["images_sha256"]
            and (method is None or (bundle.calibration or {}).get("settings", {}).get("method") == method)):
        log.info("%s: already calibrated on these cases (%s); nothing to do", root, current.get("file"))
        return {"recalibrate/images": float(bundle.calibration["images"]), "recalibrate/unchanged": 1.0}
    refuse_training_images(frame, manifest.get("data") or {})
    settings = _settings(bundle, method)
    source = {"kind": "cases", "file": str(source_file), "sha256": parts["file_sha256"],
              "images_sha256": parts["images_sha256"], "count": int(len(frame)),
              "date": datetime.now(UTC).isoformat(timespec="seconds"), "medal": versions()["medal"]}
    table = calibrate(bundle, frame, device, batch_size, num_workers, settings, source)
    old_source = (bundle.calibration or {}).get("source") or {"kind": "validation split (medal before schema 2)"}
    stamp = (bundle.calibration or {}).get("source", {}).get("date") or manifest.get("created", "unknown")
    archived = f"{ARCHIVE}/{str(stamp).replace(':', '-')}_{manifest['files'][CALIBRATION][:12]}.json"
    (root / ARCHIVE).mkdir(exist_ok=True)
    write_text(root / archived, (root / CALIBRATION).read_text())  # the old table, kept
    metrics = {"recalibrate/images": float(table["images"]), "recalibrate/mae": table["mae"]["none"],
               "recalibrate/skipped": float(len(table["skipped"]))}
    marker.begin(parts)
    write_json(root / CALIBRATION, table, indent=1)
    write_json(marker.path, {**marker.read(), "table": sha256(root / CALIBRATION), "old_source": old_source,
                             "archived": archived, "metrics": metrics}, indent=1, sort_keys=True)
    _finish(root, manifest, old_source, archived, table)
    marker.finish(parts, metrics=metrics)
    log.info("%s recalibrated on %d cases from %s (MAE %.2f months; the old table is %s)", root, table["images"],
             source_file, table["mae"]["none"], archived)
    return metrics


def run_recalibrate(cfg: DictConfig) -> dict[str, float]:
    """`medal recalibrate bundle=DIR cases=CSV|FOLDER [recalibrate.labels=CSV] [recalibrate.method=...]`."""
    rc = cfg.recalibrate
    device = inference_device(str(rc.device), "recalibrate.device")
    metrics = recalibrate(cfg.bundle, cfg.cases, rc.labels, rc.method, device, int(rc.batch_size),
                          int(rc.num_workers))
    Path(cfg.paths.output_dir).mkdir(parents=True, exist_ok=True)
    log.info("predict with it: medal predict bundle=%s input=<folder of radiographs>", Path(str(cfg.bundle)))
    return metrics

