"""Find a trained system in finished runs: the regressors' run records say which images they were trained on,
and those images' own records say which committee, final pass and enhancer made them.

Everything is read from the resolved records the tasks write (`medal.resume.Marker` files), never from a
config re-composed today, so a bundle describes what ran:

- a bone age run: `<run>/.medal/boneage.json` (its settings: `data.images`, size, fit, cohort, split) and its
  best checkpoint (`checkpoints/best-*.ckpt`, read weights-only);
- its images folder: `<work_dir>/enhanced/<method>/.medal/enhanced.json` (method, working size, the generator's
  file stamp) or the RoIs themselves (`enhance=none`), or `raw` (no segmentation, no enhancement);
- the RoIs: `<work_dir>/roi/.medal/final.json` (the active-learning folder, labelled count, RoI size and
  margin, clean-up, how the committee saw the images) and the polarity ring of `<work_dir>/coarse/`;
- the committee: `<al.dir>/.medal/al.json` (members, architecture, net) and `<al.dir>/committee.pt`;
- a GAN's generator: `<train dir>/generator.safetensors` and its `.medal/generator.json` (architecture).

A record that is missing, unfinished, or says the files changed since is one line naming it and the fix.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from medal.bundle.spec import ChainSpec, EnhancerSpec, RegressorSpec, SegmenterSpec
from medal.data.cache import file_stamp
from medal.errors import MedalError
from medal.resume import Marker

log = logging.getLogger("medal.bundle")


@dataclass
class RegressorSource:
    run: Path
    checkpoint: Path
    settings: dict[str, Any]  # the run's recorded settings (`run_settings`)
    spec: RegressorSpec
    state: dict[str, torch.Tensor]  # BoneAgeRegressor weights


@dataclass
class Sources:
    """A chain found in finished runs: its spec, where each weight comes from, and each part's recorded config."""

    chain: ChainSpec
    regressors: list[RegressorSource]
    committee: Path | None = None  # committee.pt
    generator: Path | None = None  # generator.safetensors
    parts: dict[str, Any] = field(default_factory=dict)  # the config of every part, for the manifest
    data: dict[str, Any] = field(default_factory=dict)  # data set and split the regressors were trained on


def finished_record(marker: Marker, what: str, fix: str) -> dict[str, Any]:
    """A marker's record when it says the work finished; else one line naming it."""
    record = marker.read()
    if record is None or not record.get("finished") or "parts" not in record:
        raise MedalError(f"{marker.path}: no finished record of {what}; {fix}")
    return record


def best_checkpoint(run: Path) -> Path:
    """The best-by-val-MAE checkpoint of a `medal boneage` run."""
    found = sorted((run / "checkpoints").glob("best-*.ckpt"))
    if not found:
        raise MedalError(f"{run}/checkpoints: no best-*.ckpt; export needs a finished `medal boneage` run")
    return found[-1]


def _regressor(run: Path, name: str) -> RegressorSource:
    from medal.boneage.cam_experiment import load_trained
    from medal.boneage.experiment import check_recorded_split, run_marker

    run = run.expanduser().resolve()
    record = finished_record(run_marker(run), "a bone age run", "give the folder of a finished `medal boneage` run")
    settings = record["parts"]
    check_recorded_split(settings, run)
    checkpoint = best_checkpoint(run)
    module = load_trained(checkpoint)
    data = settings["data"]
    spec = RegressorSpec(name=name, cohort=str(settings["cohort"]["name"]), image_size=int(data["image_size"]),
                         fit=str(data["fit"]), bf16=settings["evaluation"]["bf16"], batch_size=int(data["batch_size"]),
                         module=dict(module.hparams), weights=f"models/regressor_{name}.safetensors")
    state = {k: v.contiguous() for k, v in module.model.state_dict().items()}
    return RegressorSource(run, checkpoint, settings, spec, state)


def _same_path(a: Any, b: Any) -> bool:
    return Path(str(a)).expanduser().resolve() == Path(str(b)).expanduser().resolve()


def _segmenter(work_dir: Path, committee: str | None) -> tuple[SegmenterSpec, Path, dict[str, Any]]:
    roi = work_dir / "roi"
    final = finished_record(Marker.in_folder(roi, "final"), "the final masks and RoIs",
                            "run `medal segment` to the end on this data set")["parts"]
    if "inference" not in final:
        raise MedalError(f"{roi}/.medal/final.json: made before medal recorded how the committee saw the images; "
                         "rerun `medal segment` (it redoes only the final pass)")
    al_dir = Path(final["al_dir"])
    if committee is not None and not _same_path(committee, al_dir):
        raise MedalError(f"export.committee={committee}: the regressors were trained on RoIs made by the committee "
                         f"in {al_dir}; a bundle with another one would not be the trained system (drop the key "
                         "or export regressors trained on that committee's RoIs)")
    al = finished_record(Marker.in_folder(al_dir, "al"), "an active-learning run", "run `medal segment`")
    checkpoint = al_dir / "committee.pt"
    if not checkpoint.is_file():
        raise MedalError(f"{checkpoint}: missing; the committee's weights are gone (rerun `medal segment`)")
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if int(saved["labelled"]) != int(final["labelled"]):
        raise MedalError(f"{checkpoint}: fitted on {saved['labelled']} labels, but the RoIs were made by the "
                         f"committee at {final['labelled']}; rerun `medal segment` so the RoIs are its own")
    coarse = finished_record(Marker.in_folder(work_dir / "coarse", "coarse"), "the coarse masks",
                             "run `medal segment`")["parts"]
    seg, inference = al["parts"]["segmenter"], final["inference"]
    spec = SegmenterSpec(arch=str(seg["arch"]), members=int(seg["members"]), net=dict(seg["net"]),
                         channels_last=bool(inference["channels_last"]), image_size=int(inference["image_size"]),
                         normalise_polarity=bool(inference["normalise_polarity"]),
                         border=float(coarse["options"]["border"]), postprocess=bool(final["postprocess"]),
                         roi_size=int(final["roi"]["size"]), margin=float(final["roi"]["margin"]),
                         batch_size=int(inference["batch_size"]), fast=inference["fast_scoring"],
                         labelled=int(final["labelled"]))
    return spec, checkpoint, {"active_learning": al["parts"], "final_pass": final, "coarse": coarse}


def _enhancer(images: Path, work_dir: Path, enhancer: str | None) -> tuple[EnhancerSpec, Path | None, dict[str, Any]]:
    if _same_path(images, work_dir / "roi"):
        if enhancer not in (None, "none"):
            raise MedalError(f"export.enhancer={enhancer}: the regressors were trained on un-enhanced RoIs "
                             f"({images}); drop the key or set export.enhancer=none")
        return EnhancerSpec(method="none"), None, {"method": "none"}
    record = finished_record(Marker.in_folder(images, "enhanced"), "enhanced RoIs",
                             f"data.images={images} is neither the RoIs nor a finished `medal enhance` folder")
    parts = record["parts"]
    method = str(parts["method"])
    if enhancer is not None and enhancer != method and not (method == "gan" and _same_path(enhancer, Path(
            parts["generator"][0]).parent)):
        raise MedalError(f"export.enhancer={enhancer}: the regressors were trained on images enhanced by "
                         f"{method} ({images}); drop the key or name that enhancer")
    if method == "clahe":
        spec = EnhancerSpec(method="clahe", image_size=int(parts["image_size"]), clip_limit=float(parts["clip_limit"]),
                            grid=[int(g) for g in parts["grid"]], keep_background=bool(parts["keep_background"]))
        return spec, None, {"enhanced": parts}
    if "channels_last" not in parts:
        raise MedalError(f"{images}/.medal/enhanced.json: made before medal recorded the generator's memory "
                         "format; rerun `medal enhance` (the trained generator is reused)")
    weights = Path(parts["generator"][0])
    if file_stamp(weights) != parts["generator"]:
        raise MedalError(f"{weights}: changed since {images} was written (retrained?); rerun `medal enhance` "
                         "so the enhanced images are this generator's, then the bone age stage")
    training = finished_record(Marker.in_folder(weights.parent, "generator"), "a trained generator",
                               "rerun `medal enhance`")["parts"]
    spec = EnhancerSpec(method="gan", image_size=int(parts["image_size"]),
                        generator=dict(training["method"]["generator"]), residual=bool(training["method"]["residual"]),
                        channels_last=bool(parts["channels_last"]), weights="models/generator.safetensors")
    return spec, weights, {"enhanced": parts, "training": training}


def _names(cohorts: list[str]) -> list[str]:
    """Unique regressor names: the cohort, numbered where several models share one.

    Examples:
        >>> _names(["all", "male", "all"])
        ['all_1', 'male', 'all_2']
    """
    seen: dict[str, int] = {}
    names = []
    for cohort in cohorts:
        seen[cohort] = seen.get(cohort, 0) + 1
        names.append(cohort if cohorts.count(cohort) == 1 else f"{cohort}_{seen[cohort]}")
    return names


def find_sources(regressor_runs: list[str | Path], committee: str | None = None,
                 enhancer: str | None = None) -> Sources:
    """The chain of the given bone age runs (they must share one set of training images and one split)."""
    from medal.boneage.experiment import run_marker

    if not regressor_runs:
        raise MedalError("export.regressors: empty; give the folders of finished `medal boneage` runs "
                         "(or export.pipeline=<pipeline.dir>)")
    runs = [Path(r).expanduser().resolve() for r in regressor_runs]
    cohorts = [str(finished_record(run_marker(r), "a bone age run", "give the folder of a finished `medal boneage` "
                                   "run")["parts"]["cohort"]["name"]) for r in runs]
    regressors = [_regressor(run, name) for run, name in zip(runs, _names(cohorts), strict=True)]
    first = regressors[0].settings["data"]
    for other in regressors[1:]:
        data = other.settings["data"]
        for key in ("root", "images", "split"):
            if data[key] != first[key]:
                raise MedalError(f"{other.run}: data.{key}={data[key]} but {regressors[0].run} has {first[key]}; "
                                 "the models of one bundle share their training images and split")
    work_dir, images = Path(first["work_dir"]), str(first["images"])
    parts: dict[str, Any] = {"regressors": [{"name": r.spec.name, "run": str(r.run), "checkpoint": str(r.checkpoint),
                                             "settings": r.settings} for r in regressors]}
    if images == "raw":
        if committee is not None or enhancer is not None:
            raise MedalError("export.committee / export.enhancer: the regressors read raw radiographs "
                             "(data.images=raw); a bundle of them has no segmentation or enhancement")
        chain = ChainSpec(regressors=[r.spec for r in regressors])
        return Sources(chain, regressors, parts=parts, data=_data(first, regressors))
    seg, committee_path, seg_parts = _segmenter(work_dir, committee)
    enh, generator, enh_parts = _enhancer(Path(images), work_dir, enhancer)
    parts.update({"segmenter": seg_parts, "enhancer": enh_parts})
    chain = ChainSpec(regressors=[r.spec for r in regressors], segmenter=seg, enhancer=enh)
    return Sources(chain, regressors, committee_path, generator, parts, _data(first, regressors))


def _data(data: dict[str, Any], regressors: list[RegressorSource]) -> dict[str, Any]:
    """The data set and split the models were trained on (the split file of the first run; all share it)."""
    from medal.data.split import SPLIT_FILE

    split = regressors[0].run / SPLIT_FILE
    if not split.is_file():
        raise MedalError(f"{split}: missing; the run's split says which images calibrate the intervals")
    return {"name": data["name"], "root": str(data["root"]), "work_dir": str(data["work_dir"]),
            "images": str(data["images"]), "split": data["split"], "split_file": str(split)}


def fold_of(regressor: RegressorSource) -> tuple[int, int, int] | None:
    """(folds, fold, cv seed) of a k-fold run's regressor, None for a run without folds."""
    cv = regressor.settings.get("cv")  # absent: a run without folds (they record no `cv`)
    return None if cv is None else (int(cv["folds"]), int(cv["fold"]), int(cv["seed"]))


def regressor_folds(sources: Sources) -> list[int]:
    """The fold each regressor was trained without, when they are the K fold runs of one cross-validation (every
    fold present, each with the same cohorts): what CV+ needs; else one line saying what is missing."""
    found = [fold_of(r) for r in sources.regressors]
    plain = [r.run for r, f in zip(sources.regressors, found, strict=True) if f is None]
    if plain:
        raise MedalError(f"export.conformal.source=cv_plus: {plain[0]} is not a k-fold run (no cv.folds); export the K "
                         "fold runs of a cross-validation (export.cv=<its sweep folder>), or use source=calibration")
    draws = {(k, seed) for k, _, seed in found}
    if len(draws) > 1:
        raise MedalError(f"export.conformal.source=cv_plus: the runs come from different fold draws (cv.folds, cv.seed: "
                         f"{sorted(draws)}); export the folds of one cross-validation")
    (folds, _), = draws
    cohorts: dict[int, list[str]] = {fold: [] for fold in range(folds)}
    for regressor, (_, fold, _) in zip(sources.regressors, found, strict=True):
        cohorts[fold].append(regressor.spec.cohort)
    missing = [fold for fold, cs in cohorts.items() if not cs]
    if missing:
        raise MedalError(f"export.conformal.source=cv_plus: no run of fold {missing[0]} of {folds}; CV+ needs every "
                         "fold's model (finish the fold sweep, or use source=calibration)")
    shapes = {fold: sorted(cs) for fold, cs in cohorts.items()}
    if len({tuple(v) for v in shapes.values()}) > 1:
        raise MedalError(f"export.conformal.source=cv_plus: the folds hold different models (cohorts by fold: {shapes}); "
                         "export the same cohorts and seeds of every fold")
    return [fold for _, fold, _ in found]


def cv_regressors(folder: str | Path) -> list[Path]:
    """The fold runs of a cross-validation: `folder` is its pooled record (`cv_<fingerprint>/`, written by the last
    fold to finish) or a folder holding exactly one (a fold sweep)."""
    from medal.boneage.cv import FOLDS_FILE, POOL_PREFIX

    root = Path(folder).expanduser().resolve()
    pooled = [root] if (root / FOLDS_FILE).is_file() else sorted(p.parent for p in root.glob(f"{POOL_PREFIX}*/{FOLDS_FILE}"))
    if len(pooled) != 1:
        what = "none" if not pooled else f"{len(pooled)} ({', '.join(p.name for p in pooled)})"
        raise MedalError(f"export.cv={root}: holds {what} pooled cross-validations ({POOL_PREFIX}*/{FOLDS_FILE}, "
                         "written when the last fold finishes); give the one to export")
    return [Path(run) for run in pd.read_csv(pooled[0] / FOLDS_FILE)["run"]]


def pipeline_regressors(pipeline_dir: str | Path) -> list[Path]:
    """The bone age stages (`boneage_<cohort>`) a `medal pipeline` folder finished."""
    from medal.pipeline.stages import read_record

    root = Path(pipeline_dir).expanduser().resolve()
    found = sorted(p for p in root.glob("boneage_*") if p.is_dir() and read_record(root / "state", p.name))
    if not found:
        raise MedalError(f"export.pipeline={root}: no finished boneage_* stage; run `medal pipeline` first")
    return found
