"""Ablation tables from a planted Figure 12 multirun folder: right cells, failed/missing shown, paper columns."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest
from helpers.fake_runs import GRID, planted_mae, write_job, write_multirun
from helpers.hydra_compose import compose_task

from medal.errors import MedalError
from medal.models.stages import FINETUNE_MODES
from medal.tables.folder_runs import collect_runs
from medal.tables.make import make_table, table_spec
from medal.tables.table import FIGURE12, FIGURE12_PAPER, TableSpec, build_table

FAILED_JOB, MISSING_JOB = 7, 20  # (above_exit, gan, male) failed; (above_entry, gan, female) never ran


@pytest.fixture
def multirun(tmp_path: Path) -> Path:
    return write_multirun(tmp_path / "figure12", failed={FAILED_JOB}, missing={MISSING_JOB})


def _markdown_cells(markdown: str) -> dict[str, list[str]]:
    """Row label -> cell texts of a markdown table (header and separator skipped)."""
    lines = [line for line in markdown.splitlines() if line.startswith("| ")][1:]
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines)}


def test_figure12_cells_from_folder(multirun: Path) -> None:
    table = build_table(collect_runs(multirun), FIGURE12)
    assert table.row_values == list(FINETUNE_MODES)  # the other PTL readings: expected rows, no runs here
    assert len(table.column_values) == 6
    for num, (mode, enhance, cohort) in enumerate(GRID):
        cell = table.cell(mode, (enhance, cohort))
        if num == FAILED_JOB:
            assert cell.state == "failed" and cell.mean is None
        elif num == MISSING_JOB:
            assert cell.state == "missing"
        else:
            assert cell.values == [pytest.approx(planted_mae(mode, enhance, cohort))]
    assert table.counts() == {"ok": 34, "failed": 1, "missing": 1 + 3 * 6}


def test_markdown_marks_failed_and_missing_never_zero(multirun: Path) -> None:
    table = build_table(collect_runs(multirun), FIGURE12)
    rows = _markdown_cells(table.to_markdown())
    columns = table.column_values
    for num, mark in ((FAILED_JOB, "failed"), (MISSING_JOB, "—")):
        mode, enhance, cohort = GRID[num]
        assert rows[FIGURE12.labels[mode]][columns.index((enhance, cohort))] == mark
    mode, enhance, cohort = GRID[0]
    expected = f"{planted_mae(mode, enhance, cohort):.3f} (n=1)"  # n even for one run
    assert rows["above FC"][0].strip("*") == expected
    assert "0.000" not in table.to_markdown()
    # lower MAE is better: the PTL row (lowest planted values) is bold in every column it has a value
    assert all(text.startswith("**") for text in rows["PTL"])


def test_csv_and_latex(multirun: Path) -> None:
    table = build_table(collect_runs(multirun), FIGURE12)
    frame = pd.read_csv(io.StringIO(table.to_csv()), dtype=str).set_index("finetune.name")
    for num, (mode, enhance, cohort) in enumerate(GRID):
        text = frame.loc[mode, f"enhance.name={enhance};cohort.name={cohort}"]
        if num == FAILED_JOB:
            assert text == "failed"
        elif num == MISSING_JOB:
            assert text == "missing"
        else:
            assert float(text) == pytest.approx(planted_mae(mode, enhance, cohort))
    latex = table.to_latex()
    assert latex.startswith(r"\begin{tabular}{lrrrrrr}")
    assert r"\multicolumn{3}{c}{enhanced} & \multicolumn{3}{c}{not enhanced}" in latex
    body = latex.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
    assert len(body) == len(FINETUNE_MODES) and all(line.count("&") == 6 for line in body)
    assert "above FC" in body[0] and "failed" in latex and "---" in latex


def test_paper_comparison_columns(multirun: Path) -> None:
    table = build_table(collect_runs(multirun), FIGURE12, compare=True)
    rows = _markdown_cells(table.to_markdown())
    assert all(len(cells) == 12 for cells in rows.values())
    assert rows["PTL"][6:] == [f"{FIGURE12_PAPER[('ptl', e, c)]:.3f}" for e in ("gan", "none")
                               for c in ("all", "male", "female")]
    assert rows["PTL"][6] == "7.664"
    frame = pd.read_csv(io.StringIO(table.to_csv())).set_index("finetune.name")
    assert frame.loc["above_fc", "paper[enhance.name=none;cohort.name=male]"] == pytest.approx(30.388)
    assert r"\multicolumn{6}{c}{paper}" in table.to_latex()
    generic = TableSpec(rows="finetune.name", columns=("cohort.name",), metric="test/mae")
    with pytest.raises(MedalError, match="compare=paper"):
        build_table(collect_runs(multirun), generic, compare=True)


def test_floor_and_mean_predictor_rows_follow_the_modes(multirun: Path) -> None:
    floors = {"all": 3.25, "male": 3.125, "female": 3.5}  # one test set per cohort: every mode shares it
    for num, (_, _, cohort) in enumerate(GRID):
        path = multirun / str(num) / "metrics.json"
        if num in (FAILED_JOB, MISSING_JOB):
            continue
        metrics = json.loads(path.read_text())
        metrics.update({"test/mae_mean_predictor": 40.0 + len(cohort)})
        if cohort != "female":  # as if the female runs were on real data: no floor recorded
            metrics["test/mae_floor"] = floors[cohort]
        path.write_text(json.dumps(metrics))
    table = build_table(collect_runs(multirun), FIGURE12)
    rows = _markdown_cells(table.to_markdown())
    columns = table.column_values
    assert list(rows)[-2:] == ["noise floor", "mean predictor"]
    for column, (_, cohort) in enumerate(columns):
        assert rows["noise floor"][column] == ("—" if cohort == "female" else f"{floors[cohort]:.3f}")
        assert rows["mean predictor"][column] == f"{40.0 + len(cohort):.3f}"
    assert not any(text.startswith("**") for text in rows["noise floor"] + rows["mean predictor"])
    frame = pd.read_csv(io.StringIO(table.to_csv()), dtype=str).set_index("finetune.name")
    assert float(frame.loc["noise floor", "enhance.name=gan;cohort.name=male"]) == pytest.approx(3.125)
    assert frame.loc["noise floor", "enhance.name=none;cohort.name=female"] == "missing"
    body = table.to_latex().split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
    assert len(body) == len(FINETUNE_MODES) + 2 and "noise floor" in body[len(FINETUNE_MODES)]
    assert "noise floor = `test/mae_floor`" in table.to_markdown()


def test_no_floor_row_where_no_run_recorded_one(multirun: Path) -> None:
    rows = _markdown_cells(build_table(collect_runs(multirun), FIGURE12).to_markdown())
    assert "noise floor" not in rows and "mean predictor" not in rows  # absent, never a row of zeros or dashes
    with pytest.raises(MedalError, match="baselines"):
        TableSpec(rows="finetune.name", columns=("metric",), metrics=("test/mae",), baselines={"floor": "x"})


def test_seeds_are_averaged_and_metric_axis(tmp_path: Path) -> None:
    for num, seed_shift in enumerate((0.0, 1.0)):
        job = tmp_path / "sweep" / str(num)
        write_job(job, "ptl", "gan", "all")
        metrics = json.loads((job / "metrics.json").read_text())
        metrics["test/mae"] += seed_shift
        (job / "metrics.json").write_text(json.dumps(metrics))
    runs = collect_runs(tmp_path / "sweep")
    spec = TableSpec(rows="finetune.name", columns=("metric",), metrics=("test/mae", "test/mae_male"))
    table = build_table(runs, spec)
    base = planted_mae("ptl", "gan", "all")
    assert table.cell("ptl", ("test/mae",)).mean == pytest.approx(base + 0.5)
    assert table.cell("ptl", ("test/mae_male",)).values == [pytest.approx(base + 1)] * 2
    assert "± 0.707 (n=2)" in table.to_markdown()


def test_table_task_writes_all_outputs(tmp_path: Path, multirun: Path) -> None:
    cfg = compose_task("table", [f"table.source={multirun}", "table.compare=paper"], tmp_path)
    counts = make_table(cfg)
    out = Path(cfg.paths.output_dir)
    assert counts == {"table/runs": 35, "table/cells_ok": 34, "table/cells_failed": 1, "table/cells_missing": 19,
                      "table/comparisons": 0, "table/differences_holding": 0}
    for name in ("table.md", "table.csv", "table.tex", "figure11.png"):
        assert (out / name).stat().st_size > 100, name
    assert "7.664" in (out / "table.md").read_text()


def test_bad_sources_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(MedalError, match="no such folder"):
        collect_runs(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedalError, match="no run folders"):
        collect_runs(tmp_path / "empty")
    write_job(tmp_path / "one" / "0", "ptl", "gan", "all")
    (tmp_path / "one" / "0" / "metrics.json").write_text("{not json")
    with pytest.raises(MedalError, match="metrics.json"):
        collect_runs(tmp_path / "one")
    cfg = compose_task("table", ["table.source=wandb_offline"], tmp_path)
    with pytest.raises(MedalError, match="table.dir"):
        make_table(cfg)


def test_saved_interpolations_are_resolved_with_the_runs_own_hydra_config(tmp_path: Path) -> None:
    """Hydra saves `.hydra/config.yaml` unresolved; a table keyed on an interpolated value still works."""
    job = tmp_path / "sweep" / "0"
    write_job(job, "ptl", "gan", "all")
    config = job / ".hydra" / "config.yaml"
    config.write_text(config.read_text() + "paths: {root: '${oc.env:MEDAL_NOT_SET_X,${hydra:runtime.cwd}}', "
                      "launched: '${oc.env:MEDAL_NOT_SET_X,${launch_dir:}}'}\n"
                      "data: {images: '${paths.root}/enhanced/${enhance.name}', broken: '${oc.env:MEDAL_NOT_SET_X}'}\n")
    (job / ".hydra" / "hydra.yaml").write_text("hydra: {runtime: {cwd: /lab/project}}\n")
    (run,) = collect_runs(tmp_path / "sweep")
    assert run.get("data.images") == "/lab/project/enhanced/gan"
    assert run.get("paths.launched") == "/lab/project"  # where the run was launched, not where the reader runs
    assert run.get("data.broken") == "${oc.env:MEDAL_NOT_SET_X}"
    table = build_table([run], TableSpec(rows="data.images", columns=("cohort.name",), metric="test/mae"))
    assert table.row_values == ["/lab/project/enhanced/gan"]


def test_best_from_the_config_bolds_the_highest_value(tmp_path: Path) -> None:
    """Dice-like metrics want `table.best=max`; without it a preset-less table bolds nothing."""
    for num, finetune in enumerate(("ptl", "all")):
        write_job(tmp_path / "sweep" / str(num), finetune, "gan", "all")
    runs = collect_runs(tmp_path / "sweep")
    base = ["table.preset=null", "table.rows=finetune.name", "table.columns=[cohort.name]", "table.metric=test/mae"]
    plain = build_table(runs, table_spec(compose_task("table", [f"table.source={tmp_path}", *base], tmp_path).table))
    assert "**" not in plain.to_markdown() and "bold" not in plain.to_markdown()
    cfg = compose_task("table", [f"table.source={tmp_path}", *base, "table.best=max"], tmp_path)
    table = build_table(runs, table_spec(cfg.table))
    high = max(planted_mae(f, "gan", "all") for f in ("ptl", "all"))
    assert f"**{high:.3f} (n=1)**" in table.to_markdown() and "bold = best (max) per column" in table.to_markdown()
