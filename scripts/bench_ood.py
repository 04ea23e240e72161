"""Benchmark `medal predict`'s gate: how often it wrongly refuses radiographs like its training images, and how
often it catches what is no hand radiograph, or a badly corrupted one, layer by layer.

    python scripts/bench_ood.py [--n 900] [--fresh 400] [--shifted 150] [--epochs 40] [--image-size 64]
                                [--redraws 1000] [--threads N] [--root outputs/bench_ood]

1. `--n` phantoms at 128 px (official layout, 75/5/20 train/val/test) and `--fresh` more from another seed.
2. One regressor on the whole radiographs (`experiment=boneage_cpu` at `--image-size` px, `--epochs` epochs,
   `data.split.calibration=0.3`), exported with conf/export.yaml's gate: the OOD score fitted on the training
   images, its threshold calibrated on the ~200 calibration images at `export.gate.false_reject` (1 %). Each step
   is reused when its folder holds it finished.
3. Sets, each run through the bundle's chain with conf/predict.yaml's gate (`judge`, as `medal predict` runs it):
   - in distribution (`held_out`): the data set's test holdout and the fresh phantoms, which no model trained,
     selected or calibrated on;
   - shifted, made from the first `--shifted` fresh phantoms: `heavy_noise` (Gaussian, sd 0.25 of the grey
     range, where the phantoms' own noise is at most 0.035), `inverted` polarity (note: 15 % of the training
     phantoms are inverted already, `Nuisance.inverted_p`), `fingers_only` (the upper half: no carpals, no
     radius), `rotated_90` (the training phantoms turn by at most 20 degrees); and as many `chest_like` blanks
     (a body outline, two lung fields, a spine, ribs; no hand);
   - `pydicom_corpus`: pydicom's own test files as installed with it (CT, MR, ultrasound, RGB, ...; none a hand
     radiograph), with the sex unknown (estimates averaged over both, `predict.sex=unknown`).
   An image's first refusal says which layer caught it: the DICOM header rule (`not_a_hand_radiograph`), the OOD
   score (`out_of_distribution`), the valid age range (`out_of_range`); `unreadable` and `empty_image` are the
   decoder's. Each layer is also judged alone: the OOD score with the header rule off (`pixels`: every file that
   decodes reaches the regressors), the valid range with the OOD gate off.
4. The false-reject rate of the bundle's one threshold on the held-out phantoms, and its mean over `--redraws`
   random calibration sets of the export's size drawn from the calibration and held-out phantoms pooled, each
   scored on the rest: the conformal guarantee is about that mean (at most the nominal rate), not about one
   threshold's rate, which varies with the calibration set it came from.
Rates carry Wilson 95 % intervals. Every shifted set's rate is read against the held-out phantoms' rate in the same
run (the ratio: how many times likelier such an image is refused).

The chain here has no segmentation: the regressor reads the whole radiograph (a bundle in minutes). A bundle with
a committee crops the hand first, which changes what reaches the regressor for crops, rotations and blanks, and
may refuse a blank as `no_hand`: these numbers are the OOD score's and the rules', not a segmenting chain's.
Writes outputs/bench/ood.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.ndimage import gaussian_filter
from torch.utils.data import DataLoader

from medal.bench import BenchRow, write_bench
from medal.bundle.load import Bundle, load_bundle
from medal.config import options_from
from medal.data.dicom import is_dicom
from medal.data.images import decode, write_png
from medal.data.phantom import generate_dataset
from medal.data.rsna import read_index
from medal.predict.calibrate import calibration_inputs
from medal.predict.chain import ChainModule, ChainOptions, InputImages, collate
from medal.predict.gate import GateOptions
from medal.predict.ood import read_gate, threshold

log = logging.getLogger("medal.bench")

#: Where each status of a refused image comes from (`medal.predict.rows.STATUSES`); `ok` passes.
LAYERS = {"not_a_hand_radiograph": "header", "out_of_distribution": "ood", "out_of_range": "range",
          "unreadable": "decoder", "empty_image": "decoder", "no_sex": "other", "no_hand": "other",
          "no_model": "other", "ok": "passes"}
GATE_LAYERS = ("header", "ood", "range")
NOISE_SD = 0.25


def wilson(k: int, n: int) -> tuple[float, float]:
    """Wilson 95 % interval of the proportion k / n ((nan, nan) for n = 0).

    Examples:
        >>> [round(v, 4) for v in wilson(3, 100)]
        [0.0103, 0.0845]
        >>> [round(v, 4) for v in wilson(0, 50)]
        [0.0, 0.0713]
    """
    from scipy.stats import binomtest

    if n == 0:
        return float("nan"), float("nan")
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def rate(k: int, n: int) -> dict[str, float]:
    """{k, n, share, low, high}: a share with its Wilson interval."""
    low, high = wilson(k, n)
    return {"k": int(k), "n": int(n), "share": k / n if n else float("nan"), "low": low, "high": high}


# -- the shifted images -----------------------------------------------------------------------------------------
def _noise(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(image + rng.normal(0.0, NOISE_SD, image.shape), 0.0, 1.0)


def _fingers(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return image[: image.shape[0] // 2].copy()  # phantoms stand fingers up: the upper half has no carpals or radius


CORRUPTIONS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "heavy_noise": _noise,
    "inverted": lambda image, rng: 1.0 - image,
    "fingers_only": _fingers,
    "rotated_90": lambda image, rng: np.rot90(image).copy(),
}


def chest_like(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A chest-radiograph-like picture (H, W) in [0, 1]: a bright body outline, two dark lung fields, a spine and a
    few ribs, blurred and noisy; no hand. Each draw moves and sizes the parts a little."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w] / np.array([h, w], dtype=float)[:, None, None]
    image = np.full(shape, 0.05)
    body = ((xx - 0.5) / rng.uniform(0.40, 0.48)) ** 2 + ((yy - 0.55) / rng.uniform(0.50, 0.60)) ** 2 < 1
    image[body] = rng.uniform(0.55, 0.7)
    for side in (-1, 1):
        lung = (((xx - 0.5 - side * rng.uniform(0.16, 0.2)) / rng.uniform(0.11, 0.15)) ** 2
                + ((yy - 0.5) / rng.uniform(0.28, 0.34)) ** 2 < 1)
        image[lung] = rng.uniform(0.2, 0.3)
        for rib in np.linspace(0.28, 0.72, 6):  # faint arcs across each lung
            arc = np.abs(yy - rib - 0.06 * ((xx - 0.5) * side * 4) ** 2) < 0.012
            image[lung & arc] += 0.12
    image[(np.abs(xx - 0.5) < rng.uniform(0.03, 0.045)) & body] = rng.uniform(0.75, 0.85)
    image = gaussian_filter(image, sigma=max(h, w) / 150)
    return np.clip(image + rng.normal(0.0, 0.01, shape), 0.0, 1.0)


def _frame(ids: list[str], paths: list[str], male: list[float], reference: list[float]) -> pd.DataFrame:
    """An input table (`medal.predict.inputs.COLUMNS`, less the chronological age)."""
    return pd.DataFrame({"id": ids, "path": paths, "male": np.asarray(male, dtype=float), "sex_source": "labels",
                         "reference": np.asarray(reference, dtype=float)})


def phantom_frame(index: pd.DataFrame) -> pd.DataFrame:
    """The input table of phantoms as `medal.data.rsna.read_index` lists them."""
    return _frame(index["id"].astype(str).tolist(), index["path"].astype(str).tolist(),
                  index["male"].astype(float).tolist(), index["boneage"].astype(float).tolist())


def shifted_sets(source: pd.DataFrame, out: Path, seed: int) -> dict[str, pd.DataFrame]:
    """Every corruption of each image of `source` (an input table), and as many chest-like blanks, written as 16-bit
    PNGs under `out/<set>/`; {set: input table} (each keeps the source image's sex and reference)."""
    rng = np.random.default_rng(seed)
    images = [decode(p).image for p in source["path"]]
    sets: dict[str, pd.DataFrame] = {}
    pictures = {name: [fn(image, rng) for image in images] for name, fn in CORRUPTIONS.items()}
    pictures["chest_like"] = [chest_like(image.shape, rng) for image in images]
    for name, made in pictures.items():
        paths = [str(write_png(out / name / f"{i}.png", picture, bits=16)) for i, picture in zip(source["id"], made,
                                                                                                    strict=True)]
        sets[name] = _frame([f"{name}_{i}" for i in source["id"]], paths, source["male"].tolist(),
                            source["reference"].tolist())
    return sets


def corpus_frame() -> pd.DataFrame:
    """pydicom's test files as installed with it (none fetched), with no sex or reference."""
    from pydicom.data import DATA_ROOT

    files = sorted(p for p in (Path(DATA_ROOT) / "test_files").rglob("*") if p.is_file() and is_dicom(p))
    return _frame([f"{k:03d}_{p.name}" for k, p in enumerate(files)], [str(p) for p in files], [np.nan] * len(files),
                  [np.nan] * len(files))


# -- judging ----------------------------------------------------------------------------------------------------
class Judge:
    """The bundle's chain with `medal predict`'s gate (`on`), and the same without the OOD gate (`off`, for the
    valid range alone), sharing each image's one pass through the networks."""

    def __init__(self, bundle: Bundle, gate: GateOptions) -> None:
        options = ChainOptions(tta="none", sex="unknown", coverage=0.9, bf16="as_trained", cam=False)
        self.bundle, self.gate = bundle, gate
        self.on = ChainModule(bundle, options, gate_options=gate).eval()
        self.off = ChainModule(bundle, options, gate_options=replace(gate, ood=False)).eval()
        for module in (self.on, self.off):
            module.prepare()
        self.threshold = self.on.ood.threshold if self.on.ood is not None else float("inf")

    def __call__(self, frame: pd.DataFrame, pixels: bool = False, batch_size: int = 32) -> pd.DataFrame:
        """One row per image of `frame`: its status under the gate, the message, the OOD score and the status with
        the OOD gate off. `pixels`: the header rule (and DICOM colour refusal, laterality) off, so every file that
        decodes reaches the regressors."""
        images = InputImages(frame, self.bundle.chain, "unknown", None if pixels else self.gate)
        rows = []
        for batch in DataLoader(images, batch_size=batch_size, collate_fn=collate):
            for m in self.on.measure(batch):
                row, off = self.on.finish(m), self.off.finish(m)
                rows.append({"id": row["id"], "status": row["status"], "message": row["message"],
                             "ood_score": row["ood_score"], "without_ood": off["status"], "boneage": off["boneage"]})
        return pd.DataFrame(rows)


def summarise(gated: pd.DataFrame, pixels: pd.DataFrame | None, limit: float) -> dict[str, Any]:
    """A set's rates: the first refusal's layer under the gate (`header`, `ood`, `range`, `decoder`, `other`,
    `passes`), `caught` (any of the gate's layers), and each layer alone, on `pixels` (the judge's rows with the
    header rule off; None: `gated`, for files without a header): `ood_alone` (score above `limit`, among the images
    that reached the regressors) and `range_alone` (out of range, among the images estimated with the OOD gate
    off)."""
    layers = gated["status"].map(LAYERS)
    if layers.isna().any():
        raise ValueError(f"statuses without a layer: {sorted(set(gated.loc[layers.isna(), 'status']))}")
    n = len(gated)
    out: dict[str, Any] = {"n": n, **{layer: rate(int((layers == layer).sum()), n) for layer in
                                      ("header", "ood", "range", "decoder", "other", "passes")}}
    out["caught"] = rate(int(layers.isin(GATE_LAYERS).sum()), n)
    alone = pixels if pixels is not None else gated
    scored = alone["ood_score"].to_numpy(dtype=float)
    scored = scored[np.isfinite(scored)]
    out["ood_alone"] = rate(int((scored > limit).sum()), len(scored))
    estimated = alone["without_ood"].isin(("ok", "out_of_range"))
    out["range_alone"] = rate(int((alone.loc[estimated, "without_ood"] == "out_of_range").sum()), int(estimated.sum()))
    return out


def redrawn_false_rejects(calibration: np.ndarray, held_out: np.ndarray, n_cal: int, false_reject: float,
                          redraws: int, seed: int) -> dict[str, float]:
    """The OOD threshold's false-reject rate over `redraws` random calibration sets of `n_cal` scores drawn from the
    calibration and held-out scores pooled, each scored on the rest: mean, its 2.5-97.5 % spread over draws, and
    the share of draws whose rate exceeds the nominal `false_reject`.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> r = redrawn_false_rejects(rng.normal(size=200), rng.normal(size=800), 200, 0.05, 200, seed=1)
        >>> 0.03 < r["mean"] <= 0.06
        True
    """
    pool = np.concatenate([calibration, held_out]).astype(float)
    rng = np.random.default_rng(seed)
    rates = []
    for _ in range(redraws):
        order = rng.permutation(len(pool))
        limit = threshold(pool[order[:n_cal]], false_reject)
        rates.append(float(np.mean(pool[order[n_cal:]] > limit)))
    values = np.asarray(rates)
    return {"mean": float(values.mean()), "p2_5": float(np.quantile(values, 0.025)),
            "p97_5": float(np.quantile(values, 0.975)), "above_nominal": float(np.mean(values > false_reject)),
            "redraws": redraws, "n_cal": n_cal, "pool": len(pool)}


# -- the run ----------------------------------------------------------------------------------------------------
def train_and_export(root: Path, args: argparse.Namespace) -> tuple[Path, Path, dict[str, float]]:
    """(the bone age run, the bundle, seconds per step) of `--n` phantoms; each step reused when finished."""
    from medal.boneage.experiment import run_boneage
    from medal.bundle.export import run_export
    from medal.pipeline.plan import compose_task_config
    from medal.runs import write_metrics

    took: dict[str, float] = {}
    started = time.perf_counter()
    run = root / "run"
    cfg = compose_task_config("boneage", [
        "experiment=boneage_cpu", f"data.root={root / 'phantoms'}", f"data.work_dir={root / 'work'}",
        f"paths.root={Path.cwd()}", f"paths.output_dir={run}", "data.images=raw", f"data.image_size={args.image_size}",
        f"trainer.max_epochs={args.epochs}", "data.split.calibration=0.3", "trainer.enable_progress_bar=false",
        "evaluation.plots=false", "logger=csv"])
    metrics = run_boneage(cfg)
    write_metrics(run, metrics)
    took["train"], took["test_mae"] = time.perf_counter() - started, float(metrics["test/mae"])
    started = time.perf_counter()
    run_export(compose_task_config("export", [f"export.regressors=['{run}']", f"paths.output_dir={root / 'export'}",
                                              f"paths.root={Path.cwd()}", "export.batch_size=64"]))
    took["export"] = time.perf_counter() - started
    return run, root / "export" / "bundle", took


def gate_options() -> GateOptions:
    """conf/predict.yaml's `predict.gate`, as `medal predict` reads it."""
    from medal.pipeline.plan import compose_task_config

    return options_from(GateOptions, compose_task_config("predict", []).predict.gate, "predict.gate")


def _cell(r: dict[str, float]) -> str:
    return "–" if not r["n"] else f"{100 * r['share']:.1f} % [{100 * r['low']:.1f}–{100 * r['high']:.1f}] ({r['k']}/{r['n']})"


def table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown: per set, the first refusal's layer and each layer alone, with Wilson 95 % intervals."""
    lines = ["| set | images | header rule | OOD score | valid range | decoder | **passes (estimate)** | OOD alone "
             "(header off) | range alone (OOD off) |", "|---|---:|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        cells = [_cell(r[k]) for k in ("header", "ood", "range", "decoder", "passes", "ood_alone", "range_alone")]
        lines.append(f"| {name} | {r['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def passing_corpus(gated: pd.DataFrame, frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The pydicom files that got an estimate: name, Modality, photometric interpretation, estimate, OOD score."""
    from medal.data.dicom import read_header

    out = []
    paths = dict(zip(frame["id"], frame["path"], strict=True))
    for row in gated[gated["status"] == "ok"].itertuples():
        header = read_header(paths[row.id])
        out.append({"file": Path(paths[row.id]).name, "modality": header.modality, "photometric": header.photometric,
                    "boneage": round(float(row.boneage), 1), "ood_score": round(float(row.ood_score), 3)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=900, help="phantoms to train, select and calibrate on (75/5/20)")
    parser.add_argument("--fresh", type=int, default=400, help="held-out phantoms from another seed")
    parser.add_argument("--shifted", type=int, default=150, help="images per shifted set")
    parser.add_argument("--image-size", type=int, default=64, help="the regressor's input (px)")
    parser.add_argument("--epochs", type=int, default=40,
                        help="the OOD score is the regressor's features: a regressor trained 12 epochs caught 3 %% of "
                             "chest-like blanks, one trained 40 caught 99 %% (docs/results.md)")
    parser.add_argument("--redraws", type=int, default=1000, help="random calibration sets for the mean rate")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--root", type=Path, default=Path("outputs/bench_ood"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    root = args.root.resolve()
    started = time.perf_counter()
    generate_dataset(root / "phantoms", n=args.n, seed=0, image_size=128, workers=2, progress=False,
                     splits=(0.75, 0.05, 0.2))
    generate_dataset(root / "fresh", n=args.fresh, seed=1, image_size=128, workers=2, progress=False)
    prepared = time.perf_counter() - started
    run, bundle_dir, took = train_and_export(root, args)
    bundle = load_bundle(bundle_dir)
    record = read_gate(bundle_dir)
    nominal = float(record.ood["false_reject"])
    judge = Judge(bundle, gate_options())
    started_scoring = time.perf_counter()

    from medal.data.split import SPLIT_FILE, read_split

    roles = read_split(run / SPLIT_FILE)
    index = read_index(root / "phantoms", strict=True)
    holdout = phantom_frame(index[index["id"].isin(set(roles.index[roles == "test"]))])
    fresh = phantom_frame(read_index(root / "fresh", strict=True))
    fresh["id"] = "fresh_" + fresh["id"]
    held_out = pd.concat([holdout, fresh], ignore_index=True)
    sets = {"held_out": held_out, **shifted_sets(fresh.head(args.shifted), root / "shifted", seed=2),
            "pydicom_corpus": corpus_frame()}
    results: dict[str, dict[str, Any]] = {}
    judged: dict[str, pd.DataFrame] = {}
    for name, frame in sets.items():
        gated = judge(frame)
        pixels = judge(frame, pixels=True) if name == "pydicom_corpus" else None
        judged[name] = gated
        results[name] = summarise(gated, pixels, judge.threshold)
        log.info("%s: %d images, caught %.1f %%, passes %.1f %%", name, len(frame),
                 100 * results[name]["caught"]["share"], 100 * results[name]["passes"]["share"])
    calibration = judge(calibration_inputs(bundle.manifest["data"]))["ood_score"].to_numpy(dtype=float)
    recomputed = threshold(calibration, nominal)
    held_scores = judged["held_out"]["ood_score"].to_numpy(dtype=float)
    redrawn = redrawn_false_rejects(calibration, held_scores[np.isfinite(held_scores)], len(calibration), nominal,
                                    args.redraws, seed=3)
    scoring = time.perf_counter() - started_scoring
    frr = results["held_out"]["ood_alone"]
    base = results["held_out"]["caught"]
    rows = [BenchRow("OOD false-reject rate, held-out phantoms (the bundle's threshold)", frr["share"], "share",
                     "nominal export.gate.false_reject", nominal, higher_is_better=False, extra=frr),
            BenchRow(f"OOD false-reject rate, mean over {args.redraws} redrawn calibration sets of "
                     f"{len(calibration)}", redrawn["mean"], "share", "nominal export.gate.false_reject", nominal,
                     higher_is_better=False, extra=redrawn)]
    rows += [BenchRow(f"{name}: refused by the gate (header rule, OOD score or valid range)", r["caught"]["share"],
                      "share", "held-out phantoms refused (same run)", base["share"],
                      extra={k: r[k] for k in ("caught", "header", "ood", "range", "passes", "ood_alone")})
             for name, r in results.items() if name != "held_out"]
    passing = passing_corpus(judged["pydicom_corpus"], sets["pydicom_corpus"])
    notes = (f"{args.n} phantoms at 128 px (75/5/20) + {args.fresh} fresh ones (another seed); one regressor "
             f"(`experiment=boneage_cpu`, whole radiographs at {args.image_size} px, {args.epochs} epochs; test MAE "
             f"{took['test_mae']:.1f} months), no segmentation in its chain. OOD threshold {judge.threshold:.3f} "
             f"(recomputed from the {len(calibration)} calibration images' scores: {recomputed:.3f}), calibrated for "
             f"{nominal:.0%} false rejects; valid range {record.valid_range.low:.0f}-{record.valid_range.high:.0f} "
             f"months. Held-out phantoms: {len(holdout)} of the test holdout + {len(fresh)} fresh. Shifted sets from "
             f"the first {args.shifted} fresh phantoms; pydicom's corpus with the sex unknown.\n\n"
             f"False rejects of in-distribution images: the bundle's one threshold refuses {_cell(frr)} of the "
             f"held-out phantoms (the gate as a whole, valid range included: {_cell(base)}); over {args.redraws} "
             f"redrawn calibration sets the mean is {100 * redrawn['mean']:.2f} % (2.5-97.5 %: "
             f"{100 * redrawn['p2_5']:.2f}-{100 * redrawn['p97_5']:.2f} %; {100 * redrawn['above_nominal']:.0f} % of "
             f"draws above the nominal {nominal:.0%}).\n\n"
             "Each set, the first refusal's layer (the gate as `medal predict` runs it), then each layer alone, with "
             "Wilson 95 % intervals:\n\n" + table(results) + "\n\n"
             f"pydicom files that got an estimate ({len(passing)}): "
             + ("; ".join(f"{p['file']} ({p['modality']}, {p['photometric']}, {p['boneage']} months, OOD "
                          f"{p['ood_score']})" for p in passing) or "none") + ".\n\n"
             f"Data {prepared:.0f} s, training {took['train']:.0f} s, export {took['export']:.0f} s (near 0: reused), "
             f"scoring {scoring:.0f} s; total {time.perf_counter() - started:.0f} s, {torch.get_num_threads()} torch "
             f"threads, load average {Path('/proc/loadavg').read_text().split()[0]} (shared cores).")
    path = write_bench("ood", rows, notes)
    payload = json.loads(path.read_text())
    payload.update(results=results, redrawn=redrawn, passing_corpus=passing, threshold=judge.threshold,
                   nominal=nominal, calibration_images=len(calibration))
    path.write_text(json.dumps(payload, indent=2))
    print(path.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
