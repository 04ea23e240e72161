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
- The out-of-distribution gate: the same pass scores the cases (`medal.predict.ood.recalibrated`), and the
  threshold is refitted on them by the export's rule at the bundle's `export.gate.false_reject` (or
  `recalibrate.false_reject`), so the hospital's own radiographs are wrongly refused at that rate; the score's mean
  and covariance (the training images') stay. Too few cases for the rate keep the previous threshold, said in one
  line with the share of the cases it refuses.
- Recorded: the table's `source` (the file, its sha256, the images' sha256, the count, the date, the medal
  version), the same source in `gate.json`'s `ood.calibration` (the previous one in `ood.history`) and, in
  `bundle.json`, `calibration.current`, `calibration.ood` (threshold, rate, cases) and `calibration.history`
  (every earlier source). The old table and the old gate record are kept under `calibrations/<date>_<sha12>.json`
  and `calibrations/<date>_gate_<sha12>.json`, listed in the manifest with their sha256; the new
  `calibration.json`, `gate.json` and the model card are hashed into the manifest, which is written last.
- Resumable: the chain's pass is the slow part; `.medal/recalibrate.json` records the new table's sha256 and the
  new gate record before either file is written, so a run killed after the table was written but before the
  manifest finishes them on rerun, and one killed earlier starts over on the untouched bundle. The same cases and
  method a second time change nothing.
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
from medal.predict import conformal, ood
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


def _finish(root: Path, manifest: dict[str, Any], old_source: dict[str, Any] | None, archived: dict[str, str],
            new: dict[str, Any], gate: dict[str, Any] | None) -> None:
    """The model card and the manifest of the recalibrated bundle (the manifest last). `archived`: the old
    table's (`table`) and gate record's (`gate`) archive paths; `gate`: the new gate record, or None (none)."""
    from medal.bundle.export import model_card

    chain = json.loads((root / "configs" / "inference.json").read_text())
    write_text(root / CARD, model_card(manifest["name"], manifest["description"], manifest["data"], new, chain))
    record = dict(manifest.get("calibration") or {})
    history = list(record.get("history") or [])
    if old_source is not None:
        history.append({**old_source, "archived_as": archived["table"], "gate_archived_as": archived.get("gate")})
    files = dict(manifest["files"])
    for rel in [CALIBRATION, CARD, *archived.values()] + ([ood.GATE] if gate is not None else []):
        files[rel] = sha256(root / rel)
    current = {"current": new["source"], "history": history}
    if gate is not None:
        limit = gate["ood"]
        current["ood"] = {"threshold": limit["threshold"], "false_reject": limit["false_reject"],
                          "images": limit["calibration"]["images"], "split": limit["calibration"]["split"]}
    write_manifest(root, {**manifest, "files": files, "calibration": current})


def _text(payload: dict[str, Any]) -> str:
    return json.dumps(payload, indent=1)


def _write_new(root: Path, table_text: str, gate: dict[str, Any] | None) -> None:
    """The new table, then the new gate record (a rerun after a kill between them rewrites the gate record)."""
    write_text(root / CALIBRATION, table_text)
    if gate is not None:
        write_text(root / ood.GATE, _text(gate))


def recalibrate(bundle_dir: str | Path, cases: str | Path, labels: str | Path | None, method: str | None,
                device: str, batch_size: int, num_workers: int, *, false_reject: float | None = None) -> dict[str, float]:
    """Recalibrate the bundle at `bundle_dir` on `cases` (module docstring); returns metrics. `false_reject`: the
    refitted OOD threshold's rate (None: the bundle's, `export.gate.false_reject`)."""
    from medal.predict.calibrate import measure, table_of

    root = Path(bundle_dir).expanduser().resolve()
    frame = read_cases(cases, labels)
    if false_reject is not None:
        ood.threshold(np.zeros(1), false_reject)  # refuses a rate outside (0, 1) before any work
    source_file = Path(labels if labels is not None else cases).expanduser().resolve()
    parts = {"cases": str(Path(cases).expanduser().resolve()), "images_sha256": _digest(frame),
             "file_sha256": sha256(source_file) if source_file.is_file() else None, "method": method,
             "false_reject": false_reject}
    marker = Marker.in_folder(root, "recalibrate", policy="rebuild", what="a recalibration")
    record = marker.read()
    manifest = read_manifest(root)
    pending = (record is not None and not record.get("finished") and "gate" in record and record.get("parts") ==
               json.loads(json.dumps(parts)) and record.get("table") == sha256(root / CALIBRATION))
    if pending:  # killed after the new table, before the manifest: finish it
        log.info("%s: finishing the recalibration a killed run began", root)
        gate = record["gate"]
        if gate is not None:
            write_text(root / ood.GATE, _text(gate))
        verify_files(root, {**manifest, "files": {k: v for k, v in manifest["files"].items()
                                                  if k not in (CALIBRATION, CARD, ood.GATE)}})
        new = json.loads((root / CALIBRATION).read_text())
        _finish(root, manifest, record["old_source"], record["archived"], new, gate)
        marker.finish(parts, metrics=record["metrics"])
        return dict(record["metrics"])
    bundle = load_bundle(root)
    current = (bundle.calibration or {}).get("source") or {}
    if (current.get("images_sha256") == parts["images_sha256"]
            and (method is None or (bundle.calibration or {}).get("settings", {}).get("method") == method)
            and false_reject in (None, (record or {}).get("parts", {}).get("false_reject"))):
        log.info("%s: already calibrated on these cases (%s); nothing to do", root, current.get("file"))
        return {"recalibrate/images": float(bundle.calibration["images"]), "recalibrate/unchanged": 1.0}
    refuse_training_images(frame, manifest.get("data") or {})
    settings = _settings(bundle, method)
    source = {"kind": "cases", "file": str(source_file), "sha256": parts["file_sha256"],
              "images_sha256": parts["images_sha256"], "count": int(len(frame)),
              "date": datetime.now(UTC).isoformat(timespec="seconds"), "medal": versions()["medal"]}
    live, skipped = measure(bundle, frame, device, batch_size, num_workers)  # the chain's one pass over the cases
    table = table_of(bundle, live, skipped, settings, source, frame)
    gate, gate_metrics = ood.recalibrated(root, [m.features for m in live if m.features], false_reject, source)
    old_source = (bundle.calibration or {}).get("source") or {"kind": "validation split (medal before schema 2)"}
    stamp = str((bundle.calibration or {}).get("source", {}).get("date") or manifest.get("created", "unknown"))
    stamp = stamp.replace(":", "-")
    archived = {"table": f"{ARCHIVE}/{stamp}_{manifest['files'][CALIBRATION][:12]}.json"}
    (root / ARCHIVE).mkdir(exist_ok=True)
    write_text(root / archived["table"], (root / CALIBRATION).read_text())  # the old table, kept
    if gate is not None:
        archived["gate"] = f"{ARCHIVE}/{stamp}_gate_{manifest['files'][ood.GATE][:12]}.json"
        write_text(root / archived["gate"], (root / ood.GATE).read_text())  # the old gate record, kept
    metrics = {"recalibrate/images": float(table["images"]), "recalibrate/mae": table["mae"]["none"],
               "recalibrate/skipped": float(len(table["skipped"])), **gate_metrics}
    table_text = _text(table)
    marker.begin(parts)
    write_json(marker.path, {**marker.read(), "table": hashlib.sha256(table_text.encode()).hexdigest(),
                             "gate": gate, "old_source": old_source, "archived": archived, "metrics": metrics},
               indent=1, sort_keys=True)  # before the files: a rerun knows what this run was writing
    _write_new(root, table_text, gate)
    _finish(root, manifest, old_source, archived, table, gate)
    marker.finish(parts, metrics=metrics)
    log.info("%s recalibrated on %d cases from %s (MAE %.2f months; the old table is %s)", root, table["images"],
             source_file, table["mae"]["none"], archived["table"])
    return metrics


def run_recalibrate(cfg: DictConfig) -> dict[str, float]:
    """`medal recalibrate bundle=DIR cases=CSV|FOLDER [recalibrate.labels=CSV] [recalibrate.method=...]`."""
    rc = cfg.recalibrate
    device = inference_device(str(rc.device), "recalibrate.device")
    metrics = recalibrate(cfg.bundle, cfg.cases, rc.labels, rc.method, device, int(rc.batch_size),
                          int(rc.num_workers), false_reject=None if rc.false_reject is None else float(rc.false_reject))
    Path(cfg.paths.output_dir).mkdir(parents=True, exist_ok=True)
    log.info("predict with it: medal predict bundle=%s input=<folder of radiographs>", Path(str(cfg.bundle)))
    return metrics

