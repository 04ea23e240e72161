"""`medal export`: write a model bundle from finished runs.

Layout (after MONAI's bundle: weights under `models/`, the inference config under `configs/`, a model card
under `docs/`, metadata in a manifest):

    bundle.json              manifest: format, versions, parts' recorded configs, data set and split, sha256s
    configs/inference.json   the chain (`medal.bundle.spec.ChainSpec`): every preprocessing setting
    models/committee.safetensors, models/generator.safetensors, models/regressor_<name>.safetensors
    models/*.onnx            with export.onnx=true (checked against PyTorch; the largest difference recorded)
    calibration.json         the chain's estimates on the calibration split (`medal.predict.calibrate`), the
                             conformal settings and the quality fences; or (`export.conformal.source=cv_plus`, the
                             K fold runs of a cross-validation) each folded image's out-of-fold estimate, with
                             the CV+ intervals' coverage on the calibration split
    gate.json, models/ood.safetensors   valid age range, out-of-distribution score and its threshold
                             (`medal.predict.ood.write_gate`, thresholded on the same calibration images)
    docs/README.md           what it is, how to use it, what it was trained on

The folder's `medal.resume.Marker` (`.medal/export.json`, policy rebuild) holds the sources' stamps: the same
runs export once; a retrained part rewrites the bundle. `bundle.json` is written last, so a bundle without it
is incomplete (and `load_bundle` says so).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from safetensors.torch import load_file, save_file

from medal.atomic import atomic_path, write_json, write_text
from medal.bundle.manifest import (
    CALIBRATION,
    INFERENCE,
    MANIFEST,
    build_manifest,
    sha256,
    versions,
    write_manifest,
)
from medal.bundle.sources import Sources, cv_regressors, find_sources, pipeline_regressors, regressor_folds
from medal.config import options_from, to_plain
from medal.data.cache import file_stamp
from medal.data.split import SPLIT_FILE
from medal.errors import MedalError
from medal.hardware import inference_device
from medal.predict.conformal import ConformalOptions
from medal.predict.ood import GATE, GateExportOptions, write_gate
from medal.resume import Marker
from medal.runs import Reused

log = logging.getLogger("medal.bundle")

#: Outputs by name, relative to the export run folder (what the pipeline report links).
ARTIFACTS = {"bundle": "bundle/bundle.json", "card": "bundle/docs/README.md"}
DATA_FORMAT = {
    "inputs": {"image": {"type": "radiograph", "format": "PNG (8/16-bit, palette, RGB), JPEG or DICOM",
                         "channels": 1, "note": "one left-hand radiograph per file, any size (a right hand is mirrored where DICOM "
                                 "laterality says R)"},
               "male": {"type": "sex", "values": "1 male, 0 female; from a CSV, RSNA labels or DICOM PatientSex"}},
    "outputs": {"boneage": {"type": "regression", "unit": "months"},
                "interval": {"type": "split-conformal interval", "unit": "months"}},
}


def _save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))


def write_weights(sources: Sources, root: Path) -> list[str]:
    """Every network's weights as safetensors under `root/models/`; returns their paths relative to `root`."""
    chain, written = sources.chain, []
    if sources.committee is not None:
        state = torch.load(sources.committee, map_location="cpu", weights_only=True)["state_dict"]
        _save(state, root / chain.segmenter.weights)
        written.append(chain.segmenter.weights)
    if sources.generator is not None:
        _save(load_file(str(sources.generator)), root / chain.enhancer.weights)
        written.append(chain.enhancer.weights)
    for reg in sources.regressors:
        _save(reg.state, root / reg.spec.weights)
        written.append(reg.spec.weights)
    return written


def model_card(name: str, description: str, data: dict[str, Any], calibration: dict[str, Any],
               chain: dict[str, Any]) -> str:
    """docs/README.md: what the bundle is and how to use it, in a few lines."""
    regs = ", ".join(f"{r['name']} ({r['cohort']}, {r['image_size']} px)" for r in chain["regressors"])
    seg, enh = chain.get("segmenter"), chain.get("enhancer")
    segmentation = ("none (the regressors read whole radiographs)" if seg is None else
                    f"{seg['members']} x {seg['arch']} at {seg['image_size']} px, RoI {seg['roi_size']} px")
    source = calibration["source"]
    where = {"split": f"{calibration['images']} images of the `calibration` role of `{source.get('split_file')}`, "
                      "which no model trained on or was selected with",
             "cv_plus": f"CV+ over the out-of-fold estimates of {calibration['images']} images of the {source.get('folds')} "
                        f"folds of `{source.get('split_file')}`, each by the models that never saw it; checked on the "
                        f"calibration split: {_check_text(calibration.get('check'))}",
             "cases": f"{calibration['images']} labelled cases from `{source.get('file')}` (sha256 "
                      f"{str(source.get('sha256', ''))[:12]}, {source.get('date')})"}[source["kind"]]
    lines = [f"# {name}", "", description, "", "## Use", "", "```bash",
             "medal predict bundle=<this folder> input=<folder | images.csv | RSNA root>", "```", "",
             "## Parts", "", f"- segmentation: {segmentation}", f"- enhancement: {enh['method'] if enh else 'none'}",
             f"- bone age: {regs}", "", "## Trained on", "", f"- data set {data['name']} at `{data['root']}`",
             f"- calibration: {where}; MAE {calibration['mae']['none']:.2f} months (no TTA), "
             f"{calibration['mae']['flip']:.2f} (mirror TTA); intervals by `{calibration['settings']['method']}` "
             "conformal (marginal coverage for images exchangeable with these; recalibrate on your own cases with "
             "`medal recalibrate`)", "",
             f"Versions: {', '.join(f'{k} {v}' for k, v in versions().items())}.", ""]
    return "\n".join(lines)


def _check_text(check: dict[str, Any] | None) -> str:
    """The CV+ check of a model card: coverage at each nominal level on the calibration images."""
    if not check:
        return "not checked"
    shares = ", ".join(f"{float(v):.0%} at {float(c):.0%}" for c, v in check["coverage"]["none"].items() if v is not None)
    return f"{shares} on {check['images']} images"


def export_parts(sources: Sources, conformal: ConformalOptions) -> dict[str, Any]:
    """What the bundle's content depends on: every source file's stamp and record, and how it is calibrated (the
    export marker's parts)."""
    stamps = [file_stamp(r.checkpoint) for r in sources.regressors]
    stamps += [file_stamp(p) for p in (sources.committee, sources.generator) if p is not None]
    splits = [file_stamp(r.run / SPLIT_FILE) for r in sources.regressors]
    return {"stamps": stamps, "splits": splits, "chain": sources.chain.to_json(), "data": sources.data,
            "conformal": dict(conformal.__dict__)}


def calibration_settings(sources: Sources, conformal: ConformalOptions) -> dict[str, Any]:
    """The conformal settings a bundle keeps (and `medal recalibrate` reuses): method, group sizes, the age band
    edges (quantiles of the training labels) and the difficulty curve (the regressors' validation predictions),
    both fixed before any calibration image is seen."""
    from medal.predict.calibrate import band_edges_of, difficulty_of

    return {"method": conformal.method, "min_cohort": conformal.min_cohort, "min_band": conformal.min_band,
            "edges": band_edges_of(sources.data, conformal.bands),
            "edges_source": f"{conformal.bands} quantile bands of the training labels of {sources.data['split_file']}",
            "difficulty": difficulty_of([r.run for r in sources.regressors]),
            "difficulty_source": "mean absolute error over the estimate of the regressors' validation predictions"}


def _cv_plus_calibration(sources: Sources, bundle: Any, check_inputs: Any, settings: dict[str, Any], device: str,
                         batch_size: int, num_workers: int) -> dict[str, Any]:
    """The CV+ table of the K fold runs' bundle: every folded image by its own fold's models, then the intervals
    checked on the calibration split (`check_inputs`), which no fold model saw."""
    from medal.predict.calibrate import calibrate, cv_plus_check, cv_plus_inputs, refuse_in_fold

    folds = regressor_folds(sources)
    inputs = cv_plus_inputs(sources.data, [r.spec.cohort for r in sources.regressors])
    refuse_in_fold(inputs, [(r.run / SPLIT_FILE, fold) for r, fold in zip(sources.regressors, folds, strict=True)])
    source = {"kind": "cv_plus", "split_file": sources.data["split_file"], "roles": ["train", "val", "oof"],
              "folds": max(folds) + 1, "root": sources.data["root"], "sha256": sha256(sources.data["split_file"])}
    calibration = calibrate(bundle, inputs, device, batch_size, num_workers, settings, source, folds=folds)
    calibration["check"] = cv_plus_check(bundle, calibration, check_inputs, device, batch_size, num_workers)
    return calibration


def export_bundle(sources: Sources, root: Path, *, name: str, onnx: bool, device: str, batch_size: int,
                  num_workers: int, conformal: ConformalOptions, gate: GateExportOptions) -> dict[str, float]:
    """Write (or reuse) the bundle of `sources` at `root`; returns export metrics (`medal.runs.Reused`, the
    first export's, when the bundle of these runs is there already)."""
    from medal.bundle.load import Bundle
    from medal.predict.calibrate import calibrate, calibration_inputs, refuse_seen

    if conformal.source == "cv_plus":
        regressor_folds(sources)  # refused in one line before anything is written when they are not the K folds
    parts = export_parts(sources, conformal)
    outputs = [root / d for d in ("models", "configs", "docs")] + [root / MANIFEST, root / CALIBRATION, root / GATE]
    marker = Marker.in_folder(root, "export", policy="rebuild", outputs=outputs, what="a model bundle")
    if marker.begin({**parts, "gate": gate.__dict__}) == "done" and (root / MANIFEST).is_file():
        log.info("%s: the bundle of these runs is there already; reused", root)
        return Reused(marker.read()["metrics"])
    files = write_weights(sources, root)
    write_json(root / INFERENCE, sources.chain.to_json(), indent=1)
    files.append(INFERENCE)
    # weights load as predict loads them (the bundle proves itself here), before the manifest exists
    bundle = Bundle(root, {"name": name, "versions": versions(), "files": {}}, sources.chain, None)
    inputs = calibration_inputs(sources.data)  # refused in one line before anything is written when there are none
    refuse_seen(set(inputs["id"]), [r.run / SPLIT_FILE for r in sources.regressors])
    settings = calibration_settings(sources, conformal)
    metrics: dict[str, float] = {}
    if conformal.source == "cv_plus":
        calibration = _cv_plus_calibration(sources, bundle, inputs, settings, device, batch_size, num_workers)
        metrics |= {f"export/cv_plus_coverage_{float(c) * 100:.0f}": float(v)
                    for c, v in calibration["check"]["coverage"]["none"].items() if v is not None}
        metrics["export/cv_plus_check_images"] = float(calibration["check"]["images"])
    else:
        source = {"kind": "split", "split_file": sources.data["split_file"], "role": "calibration",
                  "root": sources.data["root"], "sha256": sha256(sources.data["split_file"])}
        calibration = calibrate(bundle, inputs, device, batch_size, num_workers, settings, source)
    write_json(root / CALIBRATION, calibration, indent=1)
    files.append(CALIBRATION)
    metrics |= {"export/calibration_images": float(calibration["images"]),
                "export/calibration_mae": calibration["mae"]["none"],
                "export/calibration_mae_tta": calibration["mae"]["flip"]}
    gate_files, gate_metrics = write_gate(bundle, sources.data, gate, device, batch_size, num_workers)
    files += gate_files
    metrics |= gate_metrics
    extra: dict[str, Any] = {}
    if onnx:
        from medal.bundle.onnx import export_onnx

        extra["onnx"] = export_onnx(bundle, root)
        files += [entry["file"] for entry in extra["onnx"].values()]
        metrics["export/onnx_max_abs_diff"] = max(entry["max_abs_diff"] for entry in extra["onnx"].values())
    interval = "a CV+ interval" if conformal.source == "cv_plus" else "a split-conformal interval"
    description = (f"Bone age (months) of hand radiographs with {interval}: "
                   f"{len(sources.regressors)} regressor(s), trained by medal on {sources.data['name']}.")
    write_text(root / "docs" / "README.md", model_card(name, description, sources.data, calibration,
                                                       sources.chain.to_json()))
    files.append("docs/README.md")
    manifest = build_manifest(root, name=name, description=description, files=files,
                              parts={**sources.parts, **extra}, data=sources.data, data_format=DATA_FORMAT)
    write_manifest(root, manifest)
    marker.finish({**parts, "gate": gate.__dict__}, metrics=metrics)
    scored = "images out of fold (CV+)" if conformal.source == "cv_plus" else "calibration images"
    log.info("bundle written to %s (%d files; MAE %.2f months on %d %s)", root, len(manifest["files"]),
             metrics["export/calibration_mae"], calibration["images"], scored)
    return metrics


def run_export(cfg: DictConfig) -> dict[str, float]:
    """`medal export`: the bundle of a pipeline's or of explicit runs, into `export.out`."""
    exp = cfg.export
    given = [key for key in ("pipeline", "regressors", "cv") if exp[key]]
    if len(given) > 1:
        raise MedalError(f"export.{' and export.'.join(given)}: give one (a pipeline folder, run folders, or a "
                         "cross-validation's folder)")
    runs = (pipeline_regressors(exp.pipeline) if exp.pipeline else cv_regressors(exp.cv) if exp.cv
            else list(to_plain(exp.regressors) or []))
    sources = find_sources(runs, committee=exp.committee, enhancer=exp.enhancer)
    device = inference_device(str(exp.device), "export.device")
    root = Path(str(exp.out)).expanduser().resolve()
    metrics = export_bundle(sources, root, name=str(exp.name), onnx=bool(exp.onnx), device=device,
                            batch_size=int(exp.batch_size), num_workers=int(exp.num_workers),
                            conformal=options_from(ConformalOptions, exp.conformal, "export.conformal"),
                            gate=options_from(GateExportOptions, exp.gate, "export.gate"))
    (Path(cfg.paths.output_dir)).mkdir(parents=True, exist_ok=True)
    log.info("use it: medal predict bundle=%s input=<folder of radiographs>", root)
    result = {**metrics, "export/regressors": float(len(sources.regressors))}
    return Reused(result) if isinstance(metrics, Reused) else result  # a rerun keeps the first run's metrics.json
