"""The report renders as markdown and as HTML whose figures all load in a real (headless) browser."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from helpers.browser import CHROMIUM, NO_CHROMIUM, render_dom  # noqa: E402

from medal.pipeline.report import Figure, Section, Table, write_report  # noqa: E402


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

