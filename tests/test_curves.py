"""Figure 11: loss curves per fine-tune mode and cohort, PTL stage changes drawn where the logs say."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from helpers.fake_runs import MODES, STAGE_EPOCHS, write_multirun

from medal.errors import MedalError
from medal.plotting import save_figure
from medal.tables.curves import STAGE_LINE_GID, plot_loss_curves, stage_boundaries
from medal.tables.folder_runs import collect_runs


def test_stage_boundaries_are_first_epochs_of_new_stages() -> None:
    history = pd.DataFrame({"epoch": [0, 1, 2, 3, 4, 5, 6], "ptl/stage": [0, 0, 1, None, 1, 3, 3]})
    assert stage_boundaries(history) == [2, 5]
    assert stage_boundaries(pd.DataFrame({"epoch": [0, 1], "train/loss": [1.0, 0.5]})) == []


def test_figure11_marks_stage_changes_per_cohort(tmp_path: Path) -> None:
    runs = collect_runs(write_multirun(tmp_path / "sweep"))
    fig = plot_loss_curves(runs, where={"enhance.name": "gan"})
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["cohort: all", "cohort: male", "cohort: female"]
    for ax, cohort in zip(axes, ("all", "male", "female"), strict=True):
        curves = [line for line in ax.lines if line.get_gid() != STAGE_LINE_GID]
        assert len(curves) == len(MODES)  # one curve per fine-tune mode (enhanced runs only)
        boundaries = sorted(line.get_xdata()[0] for line in ax.lines if line.get_gid() == STAGE_LINE_GID)
        assert boundaries == list(STAGE_EPOCHS[cohort])
    legend = [text.get_text() for text in axes[-1].get_legend().get_texts()]
    assert legend == ["above FC", "above exit", "above middle", "above entry", "all layers", "PTL"]
    png = save_figure(fig, tmp_path / "figure11.png")
    assert png.stat().st_size > 10_000


def test_no_history_is_a_clear_error(tmp_path: Path) -> None:
    runs = collect_runs(write_multirun(tmp_path / "sweep"))
    with pytest.raises(MedalError, match="val/loss"):
        plot_loss_curves(runs, metric="val/loss")
