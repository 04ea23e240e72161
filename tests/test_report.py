"""The report renders as markdown and as HTML whose figures all load in a real (headless) browser."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from helpers.browser import CHROMIUM, NO_CHROMIUM, render_dom  # noqa: E402

from medal.boneage.cam_experiment import ARTIFACTS as CAM_ARTIFACTS  # noqa: E402
from medal.boneage.experiment import ARTIFACTS as BONEAGE_ARTIFACTS  # noqa: E402
from medal.pipeline.report import Figure, Section, Table, write_report  # noqa: E402
from medal.pipeline.report_builder import boneage_section, cam_section  # noqa: E402
from medal.pipeline.stages import StageResult  # noqa: E402


def _plot(path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    fig.savefig(path)
    plt.close(fig)
    return path


@pytest.fixture
def report(tmp_path: Path) -> tuple[Path, Path]:
    figs = tmp_path / "figs"
    figs.mkdir()
    sections = [
        Section("Data", ["64 phantoms <in> RSNA layout"], [Table(["split", "n"], [["train", "51"], ["test", "7"]])]),
        Section("Bone age", figures=[Figure(_plot(figs / "scatter.png"), "predicted vs true"),
                                     Figure(_plot(figs / "bland.png"), "Bland-Altman")]),
    ]
    return write_report("medal report", sections, tmp_path / "out")


def test_markdown_and_html_list_every_section_and_copy_images(report: tuple[Path, Path]) -> None:
    md, html = report
    text = md.read_text()
    assert "## Data" in text and "## Bone age" in text and "| train | 51 |" in text
    page = html.read_text()
    assert "&lt;in&gt;" in page  # text is escaped
    for link in ("images/00_scatter.png", "images/01_bland.png"):
        assert link in text and link in page and (md.parent / link).is_file()


@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
def test_every_figure_loads_in_headless_chromium(report: tuple[Path, Path], tmp_path: Path) -> None:
    _, html = report
    dom = render_dom(html, tmp_path)
    assert 'data-loaded="2"' in dom and 'data-total="2"' in dom, dom[-500:]



def _stage(name: str, metrics: dict[str, float]) -> StageResult:
    """A finished stage with metrics and no files (each task's declared artefacts, none written)."""
    artifacts = CAM_ARTIFACTS if name == "cam" else BONEAGE_ARTIFACTS
    return StageResult(name, "done", 1.0, metrics, dir=None, artifacts=artifacts)


def test_bone_age_rows_carry_the_noise_floor_beside_the_mean_predictor() -> None:
    phantom = {"test/mae": 6.5, "test/mae_male": 7.0, "test/mae_floor": 3.28, "test/mae_floor_male": 3.17,
               "test/mae_mean_predictor": 38.1, "test/mae_mean_predictor_male": 39.4}
    real = {"test/mae": 9.0, "test/mae_mean_predictor": 40.0}  # real data: no floor key at all
    section = boneage_section({"all": _stage("boneage", phantom), "rsna": _stage("boneage_rsna", real)})
    table = section.tables[0]
    floor, mean = table.headers.index("noise floor MAE"), table.headers.index("mean predictor MAE")
    rows = {(r[0], r[1]): r for r in table.rows}
    assert (rows["all", "all"][floor], rows["all", "all"][mean]) == ("3.28", "38.10")
    assert rows["all", "male"][floor] == "3.17"
    assert rows["rsna", "all"][floor] == "—" and rows["rsna", "all"][mean] == "40.00"  # absent, never 0


def test_cam_section_tabulates_region_fractions_only_where_they_were_measured() -> None:
    measured = {"cam/hand_fraction": 0.91, "cam/hand_area": 0.42, "cam/bone_fraction": 0.33, "cam/bone_area": 0.12,
                "cam/centre_fraction": 0.05, "cam/centre_area": 0.02, "cam/hand_grid": 0.8, "cam/bone_grid": 0.35, "cam/hand_near": 0.99}
    rows = cam_section(_stage("cam", measured)).tables[0].rows
    assert rows == [["hand", "0.910", "0.420", "0.800", "0.990"], ["bones", "0.330", "0.120", "0.350", "—"],
                    ["ossification centres (carpals, epiphyses)", "0.050", "0.020", "—", "—"]]
    assert cam_section(_stage("cam", {"cam/exact": 1.0})).tables == []  # real data: no masks, no table
