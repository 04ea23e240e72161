"""Assemble the pipeline report from what each stage left in its folder and its metrics."""

from __future__ import annotations

import math
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from medal.data.checks import summarize
from medal.data.rsna import read_index
from medal.pipeline.report import Figure, Section, Table, write_report
from medal.pipeline.stages import StageResult

if TYPE_CHECKING:
    from medal.tasks.pipeline import StageBuilder

PACKAGES = ("medal", "torch", "pytorch-lightning", "timm", "kornia", "torchmetrics", "hydra-core", "wandb")


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}" if isinstance(value, int | float) else str(value)


def _figures(candidates: list[tuple[Path, str]]) -> list[Figure]:
    return [Figure(path, caption) for path, caption in candidates if path.is_file()]


def _missing(figures: list[Figure], what: str) -> list[str]:
    return [] if figures else [f"No {what} figure was produced (see the stage's log)."]


def data_section(cfg: DictConfig) -> Section:
    summary = summarize(read_index(cfg.data.root, strict=False))
    rows = [[r.split, str(r.images), str(r.male), str(r.female), _fmt(r.age_min, 0), _fmt(r.age_mean, 1),
             _fmt(r.age_max, 0)] for r in summary.itertuples(index=False)]
    sheet = Path(cfg.data.root) / "contact_sheet.png"
    return Section(
        "Data",
        [f"Data set `{cfg.data.root}` ({cfg.data.name}). Ages in months."],
        [Table(["split", "images", "male", "female", "age min", "age mean", "age max"], rows)],
        _figures([(sheet, "Contact sheet: raw radiographs, hand masks and gold-standard images across ages")]),
    )


def segmentation_section(stage_dir: Path, metrics: dict[str, Any]) -> Section:
    names = [("coarse/test_dice", "Otsu + largest component (coarse) Dice"), ("test/dice", "committee Dice"),
             ("test/iou", "committee IoU"), ("al/labelled", "labelled images used")]
    rows = [[label, _fmt(metrics.get(key), 0 if key == "al/labelled" else 3)] for key, label in names if key in metrics]
    rounds = sorted((stage_dir / "figures").glob("queried_round_*.png"))
    figs = _figures([(stage_dir / "figures" / "learning_curve.png", "Active learning: held-out Dice vs labelled images")]
                    + ([(rounds[-1], f"Queried images and each member's mask ({rounds[-1].stem})")] if rounds else []))
    return Section("Hand segmentation (active learning)",
                   ["Held-out (test split) masks; Dice/IoU of the Otsu-binarised committee-mean prediction."]
                   + _missing(figs, "segmentation"),
                   [Table(["measure", "value"], rows)], figs)


def enhancement_section(sample_dir: Path, metrics: dict[str, dict[str, Any]]) -> Section:
    rows = []
    for name, m in metrics.items():
        rows.append([name, f"{_fmt(m.get('test/psnr'))} ± {_fmt(m.get('test/psnr_std'))}", _fmt(m.get("test/psnr_p5")),
                     f"{_fmt(m.get('test/ssim'), 3)} ± {_fmt(m.get('test/ssim_std'), 3)}",
                     _fmt(m.get("enhance/images_per_s"), 1)])
    samples = sorted(sample_dir.glob("*.png"))
    figs = _figures([(samples[-1], "Enhancer samples: input | generated | gold standard")] if samples else [])
    return Section("Image enhancement",
                   ["PSNR (dB) and SSIM against the gold standard on the same held-out pairs for every method; "
                    "'none' is the segmented RoI itself."] + _missing(figs, "enhancement"),
                   [Table(["method", "test PSNR", "PSNR 5th pct", "test SSIM", "images/s"], rows)], figs)


def boneage_section(runs: dict[str, tuple[Path, dict[str, Any]]]) -> Section:
    rows = []
    for cohort, (_, m) in runs.items():
        for sex in ("", "_male", "_female"):
            if f"test/mae{sex}" not in m:
                continue
            rows.append([cohort, sex.strip("_") or "all", _fmt(m.get(f"test/mae{sex}")), _fmt(m.get(f"test/rmse{sex}")),
                         _fmt(m.get(f"test/bias{sex}")), _fmt(m.get(f"test/within12{sex}"), 3),
                         _fmt(m.get(f"test/mae_mean_predictor{sex}"))])
    figs: list[Figure] = []
    for cohort, (stage_dir, m) in runs.items():
        ci = (m.get("test/mae_ci_low"), m.get("test/mae_ci_high"))
        figs += _figures([(stage_dir / "plots" / "predicted_vs_true.png",
                           f"{cohort} model: predicted vs true bone age (test MAE {_fmt(m.get('test/mae'))}, "
                           f"95% CI {_fmt(ci[0])}–{_fmt(ci[1])})"),
                          (stage_dir / "plots" / "bland_altman.png", f"{cohort} model: Bland–Altman")])
    return Section("Bone age",
                   ["Test split, months. The mean predictor always answers the training cohort's mean age."]
                   + _missing(figs, "bone age"),
                   [Table(["model cohort", "test sex", "MAE", "RMSE", "bias", "within 12 mo", "mean predictor MAE"],
                          rows)], figs)


def cam_section(stage_dir: Path) -> Section:
    figs = _figures([(stage_dir / "cam_by_sex.png", "Average class activation maps, male and female test images"),
                     (stage_dir / "average_male.png", "Average CAM, male"),
                     (stage_dir / "average_female.png", "Average CAM, female")])
    return Section("Class activation maps", ["Which regions drove the estimate (Zhou et al. CAM)."]
                   + _missing(figs, "CAM"), figures=figs)


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


def build_report(cfg: DictConfig, builder: StageBuilder, results: list[StageResult], out_dir: Path) -> tuple[Path, Path]:
    """Write report.md and report.html into `out_dir` from the stages' folders and metrics."""
    by_name = {r.name: r for r in results}
    sections = [data_section(cfg)]
    if "segment" in by_name:
        sections.append(segmentation_section(builder.stage_dir("segment"), by_name["segment"].metrics))
    enh = {(n.removeprefix("enhance_") if n != "enhance" else str(cfg.pipeline.enhance)): r.metrics
           for n, r in by_name.items() if n.startswith("enhance")}
    if enh:
        sections.append(enhancement_section(builder.stage_dir("enhance") / "samples", enh))
    boneage = {r.name.removeprefix("boneage_"): (builder.stage_dir(r.name), r.metrics)
               for r in results if r.name.startswith("boneage_")}
    if boneage:
        sections.append(boneage_section(boneage))
    if "cam" in by_name:
        sections.append(cam_section(builder.stage_dir("cam")))
    timing = Table(["stage", "status", "seconds"], [[r.name, r.status, _fmt(r.seconds, 1)] for r in results],
                   caption="This run's stages (skipped = finished earlier with the same configuration)")
    sections.append(Section("Configuration and versions",
                            [f"Stage outputs are kept in `{builder.root}`."],
                            [timing, _versions()], code=[_resolved_yaml(cfg)]))
    return write_report("medal pipeline report", sections, out_dir)
