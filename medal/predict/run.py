"""`medal predict bundle=DIR input=...`: the task. Reads the input, keeps its shard, resumes, predicts, writes.

Outputs in the run folder: `predictions.csv` (`medal.predict.rows.COLUMNS`), `thumbs/<id>.png` (radiograph
and mask), `overlays/<id>.png` (CAM on what the regressors saw), `predictions.html`, `metrics.json`. The
folder's `medal.resume.Marker` (`.medal/predict.json`, policy refuse) holds the bundle's hashes, the input
listing and the settings: the same command in the same folder (`hydra.run.dir=<run>`) continues a killed
run where it stopped; other settings there are refused. Nothing is written inside the input.

`Trainer.predict` runs the chain: `trainer=gpu` on a GPU, `trainer=ddp trainer.devices=N` over N GPUs (each
rank appends its rows to `parts/rank<k>.csv`; rank 0 gathers them). `predict.shard=K predict.num_shards=N`
keeps the images whose id hashes to K, so a Hydra multirun (e.g. the submitit SLURM launcher) spreads an
archive over a cluster; `predict.merge=true predict.parts=<multirun folder>` joins the shards' folders.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image
from torch.utils.data import DataLoader

from medal.atomic import atomic_path
from medal.bundle.load import Bundle, load_bundle
from medal.config import options_from, to_plain
from medal.errors import MedalError
from medal.predict.chain import ChainModule, ChainOptions, InputImages, collate
from medal.predict.conformal import empirical_coverage
from medal.predict.gate import GateOptions
from medal.predict.inputs import read_inputs, shard_of
from medal.predict.ood import read_gate
from medal.predict.page import PAGE, write_page
from medal.predict.rows import PREDICTIONS, RowWriter, read_rows, write_ordered
from medal.resume import Marker, fingerprint
from medal.runs import Reused

log = logging.getLogger("medal.predict")

MARKER = "predict"
#: Outputs by name, in the run folder (what the pipeline report links).
ARTIFACTS = {"predictions": PREDICTIONS, "page": PAGE}
_SAFE = str.maketrans({c: "_" for c in '\\:*?"<>| '})


def _picture_path(kind: str, image_id: str) -> str:
    return f"{kind}/{image_id.translate(_SAFE)}.png"


class RowSink(pl.Callback):
    """Writes each batch's pictures, then appends its rows (so a row on disk has its pictures)."""

    def __init__(self, out_dir: Path, csv_path: Path) -> None:
        self.out_dir, self.writer, self.bad = out_dir, RowWriter(csv_path), 0

    def on_predict_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        rows = []
        for row, thumb, cam in outputs:
            for kind, picture in (("thumb", thumb), ("overlay", cam)):
                if picture is not None:
                    rel = _picture_path(kind + "s", row["id"])
                    with atomic_path(self.out_dir / rel) as tmp:
                        Image.fromarray(picture).save(tmp, format="PNG")
                    row[kind] = rel
            if row["status"] != "ok":
                self.bad += 1
                text = row["message"] if str(row["path"]) in row["message"] else f"{row['path']}: {row['message']}"
                log.warning("%s [%s]", text, row["status"])
            rows.append(row)
        self.writer.append(rows)


def _options(cfg: DictConfig) -> tuple[ChainOptions, dict[str, Any]]:
    node = dict(to_plain(cfg.predict))
    chain_keys = ("tta", "sex", "coverage", "bf16", "cam", "interval")
    return options_from(ChainOptions, {k: node.pop(k) for k in chain_keys if k in node}, "predict"), node


def gate_state(bundle: Bundle, options: GateOptions) -> str:
    """One line on what the bundle's gate can do (logged, and on the page): its OOD threshold and valid range."""
    record = read_gate(bundle.root)
    if record is None:
        return (f"bundle {bundle.root} records no gate (exported before medal had one): the out-of-distribution "
                "gate is off and the valid range is the default 0-240 months; re-export the bundle to record both")
    valid = record.valid_range
    span = f"valid range {valid.low:.0f}-{valid.high:.0f} months ({valid.source})"
    ood = record.ood
    if not options.ood:
        return f"out-of-distribution gate off (predict.gate.ood=false); {span}"
    if ood is None or ood["threshold"] is None:
        return f"out-of-distribution gate off for this bundle ({(ood or {}).get('note', 'not fitted')}); {span}"
    on = ood["calibration"]
    what = "calibration images" if on["split"] == "calibration" else f"labelled cases ({on['source']['file']})"
    return (f"out-of-distribution gate on: threshold {ood['threshold']:.2f}, calibrated for {ood['false_reject']:.0%} "
            f"false rejects on {on['images']} {what}; {span}")


def check_output(out_dir: Path, source: str, paths: list[str]) -> None:
    """Refuse a run folder that could overwrite, or later be read as, the input: inside an input folder, holding
    the input CSV, or holding any input image."""
    out, src = out_dir.resolve(), Path(source).expanduser().resolve()
    inside = src.is_dir() and (out == src or src in out.parents)
    holds = out in src.parents or any(out in Path(p).resolve().parents for p in paths)
    if inside or holds:
        raise MedalError(f"paths.output_dir={out}: {'inside the input' if inside else 'holds input files of'} "
                         f"{src}; medal predict never writes where its input is: choose another run folder")


def summarise(rows: pd.DataFrame, coverage: float) -> dict[str, float]:
    """Counts by status, flags, interval width and, where the input had reference ages, MAE and coverage."""
    ok = rows[rows["status"] == "ok"]
    metrics = {"predict/images": float(len(rows)), "predict/ok": float(len(ok)),
               "predict/flagged": float((ok["flag"].fillna("") != "").sum())}
    for status in sorted(set(rows["status"]) - {"ok"}):
        metrics[f"predict/{status}"] = float((rows["status"] == status).sum())
    if len(ok):
        width = (ok["high"] - ok["low"]).to_numpy(dtype=float)
        metrics["predict/interval_width"] = float(np.median(width))
        labelled = ok[np.isfinite(ok["reference"].to_numpy(dtype=float))]
        if len(labelled):
            err = (labelled["boneage"] - labelled["reference"]).abs()
            metrics["predict/mae"] = float(err.mean())
            metrics["predict/coverage"] = empirical_coverage(labelled["boneage"].to_numpy(float),
                                                             labelled["low"].to_numpy(float),
                                                             labelled["high"].to_numpy(float),
                                                             labelled["reference"].to_numpy(float))
            metrics["predict/nominal_coverage"] = float(coverage)
    return metrics


def finish_run(out_dir: Path, rows: pd.DataFrame, order: list[str], bundle: str, calibration_images: int,
               options: dict[str, Any], max_rows: int, extra: dict[str, float],
               notes: tuple[str, ...] = ()) -> dict[str, float]:
    """predictions.csv in input order, the page and the metrics of a finished run (or of merged shards)."""
    ordered = write_ordered(rows, order, out_dir / PREDICTIONS)
    metrics = {**summarise(ordered, float(options["coverage"])), **extra}
    lines = [f"Bundle {bundle}; {int(metrics['predict/ok'])} of {len(ordered)} images estimated; intervals at "
             f"{float(options['coverage']):.0%} coverage (split-conformal on {calibration_images} calibration "
             f"images, method {options['interval']}), test-time augmentation: {options['tta']}."]
    lines += list(notes)
    if "predict/coverage" in metrics:
        lines.append(f"Reference ages given: MAE {metrics['predict/mae']:.2f} months, "
                     f"{metrics['predict/coverage']:.1%} of references inside their interval.")
    write_page(ordered, out_dir, "medal predict", lines, max_rows)
    return metrics


def _settings(bundle: Bundle, frame: pd.DataFrame, source: str, options: ChainOptions,
              node: dict[str, Any]) -> dict[str, Any]:
    """What a run folder's predictions depend on (its marker's parts; `merge` compares them across shards)."""
    return {"bundle": bundle.fingerprint, "source": str(Path(source).expanduser().resolve()),
            "input": fingerprint(frame[["id", "path"]].to_numpy().tolist()),
            "options": {**options.__dict__, "shard": node["shard"], "num_shards": node["num_shards"]}}


def run_predict(cfg: DictConfig) -> dict[str, float]:
    """The task: predict every image of the input's shard not yet in this run folder's predictions.csv."""
    options, node = _options(cfg)
    gate_options = options_from(GateOptions, node.pop("gate"), "predict.gate")
    out_dir = Path(cfg.paths.output_dir)
    if node["merge"]:
        from medal.predict.merge import merge_parts

        return merge_parts(node["parts"], out_dir, int(node["max_page_rows"]))
    bundle = load_bundle(cfg.bundle)
    frame = read_inputs(str(cfg.input))
    check_output(out_dir, str(cfg.input), frame["path"].tolist())
    shard, shards = int(node["shard"]), int(node["num_shards"])
    if not 0 <= shard < shards:
        raise MedalError(f"predict.shard={shard}: must be in 0..{shards - 1} (predict.num_shards={shards})")
    frame = frame[[shard_of(i, shards) == shard for i in frame["id"]]].reset_index(drop=True)
    settings = _settings(bundle, frame, str(cfg.input), options, node)
    settings["options"]["gate"] = gate_options.__dict__
    gate_line = gate_state(bundle, gate_options)
    log.info("%s", gate_line)
    marker = Marker.in_folder(out_dir, MARKER, policy="refuse", what="predictions")
    status = marker.begin(settings)
    if status == "done":  # a rerun: the first run's metrics, and its metrics.json kept as that run wrote it
        log.info("%s holds these predictions, finished; reused, nothing to do", out_dir)
        return Reused(marker.read()["metrics"])
    csv_path = out_dir / PREDICTIONS
    done = read_rows(csv_path)
    todo = frame[~frame["id"].isin(set(done["id"]))]
    if len(done):
        log.info("resuming: %d of %d images already predicted in %s", len(frame) - len(todo), len(frame), csv_path)
    started = time.perf_counter()
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False, precision="32-true",
                                      inference_mode=False, callbacks=[])  # Grad-CAM needs gradients
    world = trainer.world_size
    part = csv_path if world == 1 else out_dir / "parts" / f"rank{trainer.global_rank}.csv"
    sink = RowSink(out_dir, part)
    trainer.callbacks.append(sink)
    if len(todo):
        loader = DataLoader(InputImages(todo, bundle.chain, options.sex, gate_options),
                            batch_size=int(node["batch_size"]), num_workers=int(node["num_workers"]),
                            collate_fn=collate)
        trainer.predict(ChainModule(bundle, options, gate_options=gate_options, threads=node["threads"]),
                        dataloaders=loader, return_predictions=False)
        trainer.strategy.barrier("predict rows written")  # every rank's part is on disk before rank 0 reads them
    if not trainer.is_global_zero:
        return {}
    seconds = time.perf_counter() - started
    rows = pd.concat([read_rows(csv_path)] + [read_rows(p) for p in sorted((out_dir / "parts").glob("rank*.csv"))],
                     ignore_index=True).drop_duplicates("id", keep="last")
    extra = {"predict/seconds": seconds, "predict/images_per_s": len(todo) / seconds if len(todo) else float("nan"),
             "predict/calibration_images": float(bundle.calibration["images"])}
    metrics = finish_run(out_dir, rows, list(frame["id"]), f"{bundle.manifest['name']} ({bundle.root})",
                         int(bundle.calibration["images"]), options.__dict__, int(node["max_page_rows"]), extra,
                         (gate_line[0].upper() + gate_line[1:] + ".",))
    if world > 1:
        shutil.rmtree(out_dir / "parts", ignore_errors=True)
    marker.finish(settings, metrics=metrics)
    log.info("%d images: %d estimated, %d without estimate; %s", len(rows), int(metrics["predict/ok"]),
             len(rows) - int(metrics["predict/ok"]), out_dir / PAGE)
    return metrics
