"""Assemble the pipeline report from each stage's metrics and the artefacts its task declares.

The report knows what to say about an artefact (its caption), never where a task writes it: a
`StageResult` carries its folder and its task's `ARTIFACTS`, and `StageResult.files(name)` finds them.
"""

from __future__ import annotations

import math
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medal.boneage.cv import Pooled
from medal.data.checks import summarize
from medal.data.phantom.sheet import ARTIFACTS as PHANTOM_ARTIFACTS
from medal.data.rsna import read_index
from medal.pipeline.report import Figure, Section, Table, write_report
from medal.pipeline.stages import StageResult

#: A fold stage's name other than fold 0's (`boneage_<cohort>_fold<i>`, i > 0).
FOLD_STAGE = re.compile(r"_fold([1-9]\d*)$")
PACKAGES = ("medal", "torch", "pytorch-lightning", "timm", "kornia", "torchmetrics", "hydra-core", "wandb")


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}" if isinstance(value, int | float) else str(value)


def _figures(candidates: list[tuple[Path, str]]) -> list[Figure]:
    return [Figure(path, caption) for path, caption in candidates if path.is_file()]


def _latest(result: StageResult, artifact: str, caption: str) -> list[Figure]:
    """The last file of an artefact (e.g. the last round's or epoch's figure), captioned."""
    files = result.files(artifact)
    return [Figure(files[-1], caption.replace("{stem}", files[-1].stem))] if files else []


def _missing(figures: list[Figure], what: str) -> list[str]:
    return [] if figures else [f"No {what} figure was produced (see the stage's log)."]


def data_section(cfg: DictConfig) -> Section:
    summary = summarize(read_index(cfg.data.root, strict=False))
    rows = [[r.split, str(r.images), str(r.male), str(r.female), _fmt(r.age_min, 0), _fmt(r.age_mean, 1),
             _fmt(r.age_max, 0)] for r in summary.itertuples(index=False)]
    sheet = Path(cfg.data.root) / PHANTOM_ARTIFACTS["contact_sheet"]
    return Section(
        "Data",
        [f"Data set `{cfg.data.root}` ({cfg.data.name}). Ages in months."],
        [Table(["split", "images", "male", "female", "age min", "age mean", "age max"], rows)],
        _figures([(sheet, "Contact sheet: raw radiographs, hand masks and gold-standard images across ages")]),
    )


def segmentation_section(result: StageResult) -> Section:
    metrics = result.metrics
    names = [("coarse/test_dice", "Otsu + largest component (coarse) Dice"), ("test/dice", "committee Dice"),
             ("test/iou", "committee IoU"), ("al/labelled", "labelled images used")]
    rows = [[label, _fmt(metrics.get(key), 0 if key == "al/labelled" else 3)] for key, label in names if key in metrics]
    figs = (_latest(result, "learning_curve", "Active learning: held-out Dice vs labelled images")
            + _latest(result, "queried", "Queried images and each member's mask ({stem})"))
    return Section("Hand segmentation (active learning)",
                   ["Held-out (test split) masks; Dice/IoU of the Otsu-binarised committee-mean prediction."]
                   + _missing(figs, "segmentation"),
                   [Table(["measure", "value"], rows)], figs)


def enhancement_section(trained: StageResult, metrics: dict[str, dict[str, Any]]) -> Section:
    rows = []
    for name, m in metrics.items():
        rows.append([name, f"{_fmt(m.get('test/psnr'))} ± {_fmt(m.get('test/psnr_std'))}", _fmt(m.get("test/psnr_p5")),
                     f"{_fmt(m.get('test/ssim'), 3)} ± {_fmt(m.get('test/ssim_std'), 3)}",
                     _fmt(m.get("enhance/images_per_s"), 1)])
    figs = _latest(trained, "samples", "Enhancer samples: input | generated | gold standard")
    return Section("Image enhancement",
                   ["PSNR (dB) and SSIM against the gold standard on the same held-out pairs for every method; "
                    "'none' is the segmented RoI itself."] + _missing(figs, "enhancement"),
                   [Table(["method", "test PSNR", "PSNR 5th pct", "test SSIM", "images/s"], rows)], figs)


def boneage_section(runs: dict[str, StageResult], figures_of: set[str] | None = None) -> Section:
    """The bone age stages' test metrics, and the figures of `figures_of` (every stage's when None)."""
    rows = []
    for cohort, result in runs.items():
        m = result.metrics
        for sex in ("", "_male", "_female"):
            if f"test/mae{sex}" not in m:
                continue
            rows.append([cohort, sex.strip("_") or "all", _fmt(m.get(f"test/mae{sex}")), _fmt(m.get(f"test/rmse{sex}")),
                         _fmt(m.get(f"test/bias{sex}")), _fmt(m.get(f"test/within12{sex}"), 3),
                         _fmt(m.get(f"test/mae_floor{sex}")), _fmt(m.get(f"test/mae_mean_predictor{sex}"))])
    figs: list[Figure] = []
    for cohort, result in runs.items():
        if figures_of is not None and cohort not in figures_of:
            continue
        m = result.metrics
        ci = (m.get("test/mae_ci_low"), m.get("test/mae_ci_high"))
        figs += _latest(result, "predicted_vs_true", f"{cohort} model: predicted vs true bone age (test MAE "
                        f"{_fmt(m.get('test/mae'))}, 95% CI {_fmt(ci[0])}–{_fmt(ci[1])})")
        figs += _latest(result, "bland_altman", f"{cohort} model: Bland–Altman")
    return Section("Bone age",
                   ["Test split, months. The mean predictor always answers the training cohort's mean age; the "
                    "noise floor (phantoms only, — on real data) is the MAE of the best reader of each hand's "
                    "anatomy, which no model can beat (`medal.data.phantom.floor`)."]
                   + _missing(figs, "bone age"),
                   [Table(["model cohort", "test sex", "MAE", "RMSE", "bias", "within 12 mo", "noise floor MAE",
                           "mean predictor MAE"], rows)], figs)


def cv_section(pools: dict[str, Pooled], cfg: DictConfig) -> Section:
    """The k-fold cross-validation of each cohort: its pooled out-of-fold metrics, and each fold's."""
    cv = cfg.pipeline.cv
    refit = "enhance" in cv.refit
    text = [f"{cv.folds} folds of the split's train and validation images, stratified by age and sex (`cv.seed="
            f"{cv.seed}`); the test and calibration images are in no fold. Fold i's model trained on the other folds, "
            "chose its checkpoint on an inner validation split of them (`cv.inner_val`), and estimated fold i, "
            "which it never saw: its out-of-fold estimates. The pooled MAE is the mean over every folded image of "
            "that error (not the mean of the folds' MAEs); its 95% CI resamples images and leaves the fold "
            "models' own variability out, so it is narrower than the uncertainty of the recipe's MAE. The folds' "
            "ensemble on the test split is what the exported bundle estimates.",
            "Fitted once on every image, the folds' included: the segmentation committee (it saw their "
            "appearance, never their ages)" + ("." if refit else ", and the enhancer with its gold standards "
                                                "(pipeline.cv.refit=[enhance] refits it per fold).")
            + (" The enhancer was refitted per fold without the fold's gold-standard pairs." if refit else "")
            + " docs/experiments.md, \"k-fold cross-validation\", says what that means for the folds."]
    pooled_rows, fold_rows = [], []
    for cohort, pooled in pools.items():
        m = pooled.metrics
        for sex in ("", "_male", "_female"):
            if f"cv/mae{sex}" not in m:
                continue
            ci = f" ({_fmt(m.get('cv/mae_ci_low'))}–{_fmt(m.get('cv/mae_ci_high'))})" if not sex else ""
            pooled_rows.append([cohort, sex.strip("_") or "all", _fmt(m.get(f"cv/n{sex}"), 0),
                                f"{_fmt(m.get(f'cv/mae{sex}'))}{ci}", _fmt(m.get(f"cv/rmse{sex}")),
                                _fmt(m.get(f"cv/bias{sex}")), _fmt(m.get(f"cv/within12{sex}"), 3),
                                _fmt(m.get(f"cv/mae_floor{sex}")), _fmt(m.get(f"ensemble/mae{sex}"))])
        for values in pooled.folds.to_dict("records"):
            fold_rows.append([cohort, str(values["fold"]), str(values["images"]),
                              f"{_fmt(values.get('oof/mae'))} ({_fmt(values.get('oof/mae_ci_low'))}–"
                              f"{_fmt(values.get('oof/mae_ci_high'))})", _fmt(values.get("test/mae"))])
        fold_rows.append([cohort, "mean ± sd", "", f"{_fmt(m.get('cv/mae_fold_mean'))} ± {_fmt(m.get('cv/mae_fold_sd'))}",
                          ""])
    return Section("Bone age: k-fold cross-validation", text, [
        Table(["model cohort", "sex", "images", "out-of-fold MAE (95% CI)", "RMSE", "bias", "within 12 mo",
               "noise floor MAE", "folds' ensemble, test MAE"], pooled_rows,
              caption="Pooled out-of-fold metrics, months"),
        Table(["model cohort", "fold", "held-out images", "out-of-fold MAE (95% CI)", "test MAE"], fold_rows,
              caption="Each fold's model")])


CAM_REGIONS = (("hand", "hand"), ("bone", "bones"), ("centre", "ossification centres (carpals, epiphyses)"))


def cam_section(result: StageResult) -> Section:
    figs = (_latest(result, "cam_by_sex", "Average class activation maps, male and female test images")
            + _latest(result, "average_male", "Average CAM, male")
            + _latest(result, "average_female", "Average CAM, female"))
    m = result.metrics
    rows = [[label] + [_fmt(m.get(f"cam/{key}_{what}"), 3) for what in ("fraction", "area", "grid", "near")]
            for key, label in CAM_REGIONS if f"cam/{key}_area" in m]
    text = ["Which regions drove the estimate (Zhou et al. CAM)."]
    if rows:
        text.append("Share of each test map's positive mass inside a region of the phantom's own masks, averaged "
                    "over images, beside two references: the region's share of the image (what an evenly spread "
                    "map scores) and what a map that is the region itself scores at the CAM's grid (pooled to "
                    "the feature map's cells and upsampled like the CAM; thin fingers lose mass to the background "
                    "at a coarse grid). The last column counts the map's mass on the region or within one cell of "
                    "it: what separates spill beside a finger from evidence read off the background.")
    return Section("Class activation maps", text + _missing(figs, "CAM"),
                   [Table(["region", "share of positive CAM mass", "share of image area",
                           "the region itself at the CAM's grid", "CAM mass on it or within one cell"], rows)]
                   if rows else [],
                   figs)


def use_section(export: StageResult, predict: StageResult | None) -> Section:
    """The exported bundle and its predictions on images no model saw, linked."""
    m = export.metrics
    coverage = ", ".join(f"{_fmt(m[f'export/cv_plus_coverage_{c}'] * 100, 0)}% at {c}%" for c in (80, 90, 95)
                         if f"export/cv_plus_coverage_{c}" in m)
    if coverage:  # the K fold models of a cross-validation, CV+ intervals
        calibrated = (f"The fold models of the cross-validation as one portable bundle (`medal export`): MAE "
                      f"{_fmt(m.get('export/calibration_mae'))} months out of fold on "
                      f"{_fmt(m.get('export/calibration_images'), 0)} images, each estimated by the models that "
                      "never saw it; their residuals give the CV+ intervals (Barber et al. 2021). On the "
                      f"{_fmt(m.get('export/cv_plus_check_images'), 0)} calibration images, which no fold model saw, "
                      f"the intervals covered {coverage} nominal.")
    else:
        calibrated = (f"The bone age stages' system as one portable bundle (`medal export`): MAE "
                      f"{_fmt(m.get('export/calibration_mae'))} months on {_fmt(m.get('export/calibration_images'), 0)} "
                      "calibration images (trained and selected on by no model), which calibrate its intervals.")
    paragraphs = [f"{calibrated} Use it on new radiographs with `medal predict bundle=<bundle> input=<folder>`."]
    links = [("bundle manifest (bundle.json)", f) for f in export.files("bundle")]
    links += [("model card", f) for f in export.files("card")]
    tables: list[Table] = []
    if predict is not None:
        p = predict.metrics
        rows = [[label, _fmt(p.get(key), digits)] for key, label, digits in (
            ("predict/images", "images", 0), ("predict/ok", "estimated", 0), ("predict/flagged", "flagged", 0),
            ("predict/mae", "MAE against the phantoms' ages (months)", 2),
            ("predict/coverage", "share of ages inside their interval", 3),
            ("predict/nominal_coverage", "nominal coverage", 2),
            ("predict/interval_width", "median interval width (months)", 1),
            ("predict/images_per_s", "images/s (whole chain)", 1)) if key in p]
        tables.append(Table(["measure", "value"], rows, caption="medal predict on images none of the models saw"))
        links += [("predictions (CSV)", f) for f in predict.files("predictions")]
        links += [("predictions page: each image, its mask, its CAM and its estimate", f)
                  for f in predict.files("page")]
    return Section("Use the trained model", paragraphs, tables, links=links)


def _versions() -> Table:
    rows = []
    for name in PACKAGES:
        try:
            rows.append([name, version(name)])
        except PackageNotFoundError:
            rows.append([name, "not installed"])
    return Table(["package", "version"], rows)


def _resolved_yaml(cfg: DictConfig) -> str:
    """The run's own configuration (Hydra's internal `hydra` node left out), resolved."""
    own = {key: cfg[key] for key in cfg if key != "hydra"}
    return OmegaConf.to_yaml(OmegaConf.to_container(OmegaConf.create(own), resolve=True))


def build_report(cfg: DictConfig, results: list[StageResult], out_dir: Path,
                 pools: dict[str, Pooled] | None = None) -> tuple[Path, Path]:
    """Write report.md and report.html into `out_dir` from the stages' metrics and declared artefacts, and the
    pooled cross-validation of each cohort (`pools`, with `pipeline.cv.folds`)."""
    by_name = {r.name: r for r in results}
    sections = [data_section(cfg)]
    if "segment" in by_name:
        sections.append(segmentation_section(by_name["segment"]))
    # the methods on the same held-out pairs; a per-fold enhancer (pipeline.cv.refit) leaves its fold out of them
    enh = {(n.removeprefix("enhance_") if n != "enhance" else str(cfg.pipeline.enhance)): r.metrics
           for n, r in by_name.items() if n.startswith("enhance") and not n.startswith("enhance_fold")}
    if "enhance" in by_name:
        sections.append(enhancement_section(by_name["enhance"], enh))
    boneage = {r.name.removeprefix("boneage_"): r for r in results if r.name.startswith("boneage_")}
    if boneage:  # of a cross-validation, the figures of fold 0's models, which the CAM stage explains too
        sections.append(boneage_section(boneage, {n for n in boneage if not FOLD_STAGE.search(n)}))
    if pools:
        sections.append(cv_section(pools, cfg))
    if "cam" in by_name:
        sections.append(cam_section(by_name["cam"]))
    if "export" in by_name:
        sections.append(use_section(by_name["export"], by_name.get("predict")))
    timing = Table(["stage", "status", "seconds"], [[r.name, r.status, _fmt(r.seconds, 1)] for r in results],
                   caption="This run's stages (skipped = finished earlier with the same configuration)")
    sections.append(Section("Configuration and versions",
                            [f"Stage outputs are kept in `{cfg.pipeline.dir}`."],
                            [timing, _versions()], code=[_resolved_yaml(cfg)]))
    return write_report("medal pipeline report", sections, out_dir)
