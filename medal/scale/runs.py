"""Thousands of finished runs for `medal table`, copied from one real run: run folders and offline W&B runs.

`seed_run` trains one small `medal boneage` run (`model=tiny`, two epochs, `logger=[csv,wandb]` offline), so the
copies hold exactly what a run writes: `.hydra/`, `metrics.json`, `csv/metrics.csv` and `wandb/offline-run-*/`.
`run_folders` lays out n copies as a multirun folder (`<out>/<job>/`), each with its config moved to another cell
of Figure 12 (fine-tune mode x enhancement x cohort, then seeds) and its test MAE perturbed. `wandb_runs` copies
the W&B run folder n times and rewrites each `.wandb` log record by record with a new run id and the same config
moves, re-chunked into W&B's log format with its checksums (`write_datastore`).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import yaml

from medal.atomic import write_json
from medal.models.stages import FINETUNE_MODES

DONE = ".medal/scale_runs.json"
CELLS = [(mode, enhance, cohort) for cohort in ("all", "male", "female") for enhance in ("gan", "none")
         for mode in FINETUNE_MODES]
_HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
_BLOCK = 32 * 1024
_CHUNK = struct.Struct("<IHB")
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def cell(k: int) -> tuple[str, str, str, int]:
    """(fine-tune mode, enhancement, cohort, seed) of copy k: Figure 12's 36 cells, then the next seed.

    Examples:
        >>> cell(0), cell(37)
        (('above_fc', 'gan', 'all', 0), ('above_exit', 'gan', 'all', 1))
    """
    mode, enhance, cohort = CELLS[k % len(CELLS)]
    return mode, enhance, cohort, k // len(CELLS)


def seed_run(out: Path, base: Path, quick: bool) -> Path:
    """One finished `medal boneage` run (tiny model, 2 epochs, csv + offline W&B loggers) on the phantoms `base`."""
    if (out / "metrics.json").is_file() and any(out.glob("wandb/offline-run-*/run-*.wandb")):
        return out
    shutil.rmtree(out, ignore_errors=True)
    args = ["boneage", f"data.root={base}", f"data.work_dir={out.parent / 'work' / 'seed_run'}", "data.images=raw",
            "model=tiny", "data.image_size=64", "finetune=ptl", "trainer.max_epochs=2", "evaluation.bootstrap=50",
            "evaluation.plots=false", "logger=[csv,wandb]", "+experiment_name=figure12", f"hydra.run.dir={out}",
            "trainer.enable_progress_bar=false"]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "MEDAL_ROOT": str(out.parent)}
    print(f"[fixture] one real bone age run (tiny, csv + offline W&B) -> {out}", flush=True)
    subprocess.run([sys.executable, "-m", "medal", *args], env=env, check=True)
    return out


def _done(out: Path, spec: dict) -> bool:
    path = out / DONE
    return path.is_file() and json.loads(path.read_text()) == spec


def _move_config(config: dict, k: int) -> dict:
    mode, enhance, cohort, seed = cell(k)
    config = json.loads(json.dumps(config))
    config.setdefault("finetune", {})["name"] = mode
    config.setdefault("enhance", {})["name"] = enhance
    config.setdefault("cohort", {})["name"] = cohort
    config["seed"] = seed
    return config


def _mae(value: float, k: int) -> float:
    return float(value * (1.0 + 0.05 * np.sin(k)))


def run_folders(seed: Path, out: Path, n: int) -> Path:
    """`out/<k>/` for k < n: copies of the run folder `seed` in Figure 12's cells (config and test MAE moved; the
    per-epoch history shared as a hard link). Reused when complete."""
    spec = {"seed": str(seed.resolve()), "n": int(n), "version": 1}
    if _done(out, spec):
        return out
    print(f"[fixture] {n} run folders -> {out}", flush=True)
    config = yaml.safe_load((seed / ".hydra" / "config.yaml").read_text())
    metrics = json.loads((seed / "metrics.json").read_text())
    for k in range(n):
        job = out / str(k)
        (job / ".hydra").mkdir(parents=True, exist_ok=True)
        (job / "csv").mkdir(exist_ok=True)
        (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(_move_config(config, k), sort_keys=False))
        for name in ("hydra.yaml", "overrides.yaml"):
            shutil.copyfile(seed / ".hydra" / name, job / ".hydra" / name)
        moved = {key: (_mae(v, k) if key.startswith("test/mae") and isinstance(v, float) else v)
                 for key, v in metrics.items()}
        (job / "metrics.json").write_text(json.dumps(moved))
        history = job / "csv" / "metrics.csv"
        if not history.exists():
            os.link(seed / "csv" / "metrics.csv", history)
    write_json(out / DONE, spec)
    return out


def write_datastore(path: Path, records: Iterable[bytes]) -> Path:
    """W&B's run log (`run-<id>.wandb`): the header, then each serialized record as chunks in 32 KiB blocks, each
    chunk headed by its CRC-32 (of the chunk type byte and data), length and type, as `datastore_records` reads."""
    data = bytearray(_HEADER)
    for record in records:
        left, first = memoryview(record), True
        while True:
            room = _BLOCK - len(data) % _BLOCK
            if room < _CHUNK.size:
                data += b"\0" * room
                room = _BLOCK
            take = min(len(left), room - _CHUNK.size)
            last = take == len(left)
            kind = _FULL if first and last else _FIRST if first else _LAST if last else _MIDDLE
            chunk = bytes(left[:take])
            data += _CHUNK.pack(zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF, take, kind) + chunk
            left, first = left[take:], False
            if last:
                break
    path.write_bytes(bytes(data))
    return path


def _rewrite(raw: bytes, k: int, run_id: str) -> bytes:
    from wandb.proto import wandb_internal_pb2 as pb

    record = pb.Record()
    record.ParseFromString(raw)
    kind = record.WhichOneof("record_type")
    items = []
    if kind == "run":
        record.run.run_id = run_id
        items = list(record.run.config.update)
    elif kind == "config":
        items = list(record.config.update)
    mode, enhance, cohort, seed = cell(k)
    moves = {"finetune": ("name", mode), "enhance": ("name", enhance), "cohort": ("name", cohort)}
    for item in items:
        key = item.key or (item.nested_key[0] if item.nested_key else "")
        if key in moves and not item.nested_key:
            value = json.loads(item.value_json)
            if isinstance(value, dict):
                value[moves[key][0]] = moves[key][1]
                item.value_json = json.dumps(value)
        elif key == "seed" and not item.nested_key:
            item.value_json = json.dumps(seed)
    summaries = [record.summary] if kind == "summary" else [record.run.summary] if kind == "run" else []
    for summary in summaries:
        for item in summary.update:
            if item.key.startswith("test/mae"):
                value = json.loads(item.value_json)
                if isinstance(value, float):
                    item.value_json = json.dumps(_mae(value, k))
    return record.SerializeToString()


def wandb_runs(seed: Path, out: Path, n: int) -> Path:
    """`out/<k>/wandb/offline-run-<time>-<id>/` for k < n: the seed run's W&B folder with its log rewritten (new
    run id, Figure 12's cells, test MAE moved). Reused when complete."""
    from medal.tables.wandb_runs import datastore_records

    spec = {"seed": str(seed.resolve()), "n": int(n), "version": 1}
    if _done(out, spec):
        return out
    print(f"[fixture] {n} offline W&B runs -> {out}", flush=True)
    source = next(seed.glob("wandb/offline-run-*"))
    log = next(source.glob("run-*.wandb"))
    records = list(datastore_records(log))
    stamp = source.name.split("-")[2]
    for k in range(n):
        run_id = f"s{k:07d}"
        target = out / str(k) / "wandb" / f"offline-run-{stamp}-{run_id}"
        if target.is_dir():
            continue
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("run-*.wandb"))
        write_datastore(target / f"run-{run_id}.wandb", (_rewrite(r, k, run_id) for r in records))
    write_json(out / DONE, spec)
    return out
