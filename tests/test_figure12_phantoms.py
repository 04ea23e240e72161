"""scripts/figure12_phantoms.py: the analysis on planted runs (fast), its sweeps compose, and a reduced run (slow)."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from medal.models.stages import FINETUNE_MODES
from medal.tables.folder_runs import RunResult
from medal.tables.table import build_table
from tests.helpers.hydra_compose import compose_task
from tests.helpers.scripts import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "figure12_phantoms.py"


def _script():
    return load_script("figure12_phantoms")


def _run(mode: str, enhance: str, cohort: str, seed: int, mae: float, stages: list[int] | None = None) -> RunResult:
    history = None
    if stages is not None:
        history = pd.DataFrame({"epoch": range(len(stages)), "ptl/stage": [float(s) for s in stages],
                                "train/loss": [1.0 / (e + 1) for e in range(len(stages))]})
    config = {"finetune": {"name": mode}, "enhance": {"name": enhance}, "cohort": {"name": cohort}, "seed": seed}
    return RunResult(name=f"{mode}-{enhance}-{cohort}-{seed}", config=config, history=history, status="ok",
                     metrics={"test/mae": mae, "test/mae_floor": 3.0, "test/mae_mean_predictor": 40.0})


def test_analysis_reads_orderings_differences_and_stages_from_planted_runs() -> None:
    """Planted MAEs: the paper's ordering with enhancement 2 months better everywhere, seeds ±0.5 apart."""
    fig = _script()
    runs = []
    for rank, mode in enumerate(reversed(FINETUNE_MODES)):  # ptl best (rank 0) ... above_fc worst
        for enhance, shift in (("gan_l1", -2.0), ("none", 0.0)):
            for cohort in ("all", "male", "female"):
                for seed, noise in ((0, -0.5), (1, 0.5)):
                    stages = [0, 0, 1, 2, 3, 4] if mode == "ptl" else None
                    runs.append(_run(mode, enhance, cohort, seed, 10.0 + 3 * rank + shift + noise, stages))
    table = build_table(runs, fig.figure12_spec(), compare=True)
    facts = fig.analyse(table, runs)

    assert table.cell("ptl", ("gan_l1", "all")).values == [7.5, 8.5]
    assert table._published("ptl", ("gan_l1", "all")) == 7.664  # the paper's enhanced column sits beside gan_l1
    for column, order in facts["orderings"].items():
        assert order["ours"] == ["ptl", "all", "above_entry", "above_mid", "above_exit", "above_fc"], column
    assert facts["orderings"]["gan_l1 / all"]["spearman"] == 1.0
    # the paper's enhanced female column puts above middle before above entry: one adjacent swap
    assert facts["orderings"]["gan_l1 / female"]["paper"][2:4] == ["above_mid", "above_entry"]
    assert facts["orderings"]["gan_l1 / female"]["spearman"] == pytest.approx(1 - 6 * 2 / (6 * 35))
    assert len(facts["enhancement"]) == 18
    for diff in facts["enhancement"]:
        assert diff["difference"] == pytest.approx(-2.0)
        assert diff["seed_sd"] == pytest.approx(math.sqrt(0.5))
        assert diff["beyond_spread"]
    assert [d["difference"] for d in facts["ptl_vs_above_fc"]] == pytest.approx([-15.0] * 6)
    assert len(facts["ptl_stages"]) == 12
    assert facts["ptl_stages"][0]["transitions"] == [(0, 0), (2, 1), (3, 2), (4, 3), (5, 4)]
    assert "| gan_l1 / all | ptl < all" in fig.report(table, facts, {"command": "x"}, {"total": 1.0})


def test_ptl_cap_lets_ptl_reach_its_last_stage_within_the_epochs() -> None:
    """With at most `cap` epochs per stage, the fifth stage starts by epoch 4 * cap < epochs."""
    fig = _script()
    for epochs in range(5, 40):
        assert 4 * fig.ptl_cap(epochs) < epochs


def test_every_sweep_override_names_a_real_key(tmp_path: Path) -> None:
    """The bone age sweeps' overrides compose (first value of each swept key) and land where they should."""
    fig = _script()
    common = ["model=tiny", "model.sex_input=true", "data.image_size=64", "trainer.max_epochs=12",
              "scheduler.per=epoch", "logger=csv", "evaluation.plots=false"]
    for modes, extra in ((["ptl"], ["finetune.patience=1", "finetune.max_epochs_per_stage=2"]),
                         (["above_fc", "all"], [])):
        args = fig.boneage_sweep(common, 1, modes, ["all", "male"], tmp_path / "sweep", 2, extra)
        assert args[:3] == ["boneage", "-m", "experiment=figure12"]
        overrides = [a.split(",")[0] for a in args[2:] if not a.startswith("hydra")]
        cfg = compose_task("boneage", overrides, tmp_path)
        assert (cfg.finetune.name, cfg.enhance.name, cfg.cohort.name, cfg.seed) == (modes[0], "gan_l1", "all", 1)
        assert cfg.scheduler.per == "epoch" and cfg.model.sex_input is True
        if modes == ["ptl"]:
            assert (cfg.finetune.patience, cfg.finetune.max_epochs_per_stage) == (1, 2)
        assert OmegaConf.select(cfg, "hydra.sweeper.params.finetune") is not None


@pytest.mark.slow  # ~10 min on 2 busy cores: 24 bone age runs, process start-ups dominate
def test_reduced_figure12_run_has_a_full_table_with_signal(tmp_path: Path) -> None:
    """The whole script, reduced (120 phantoms, 32 px, 3 epochs, 2 seeds, cohort all): every cell finite,
    PTL past its first stage, the enhanced column not a copy of the other."""
    root = tmp_path / "f12"
    subprocess.run([sys.executable, str(SCRIPT), "--root", str(root), "--n", "120", "--phantom-size", "128",
                    "--roi-size", "64", "--size", "32", "--epochs", "3", "--seeds", "0", "1", "--cohorts", "all",
                    "--source-n", "200", "--pretrain-epochs", "2", "--gan-epochs", "1", "--gan-size", "32"],
                   env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True, capture_output=True, timeout=3600)
    with (root / "table.csv").open() as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], {row[0]: row[1:] for row in rows[1:]}
    assert len(header) == 1 + 3 * 6  # row key, 6 columns (enhancement x cohort), their n[...], paper[...]
    assert list(body) == [*FINETUNE_MODES, "noise floor", "mean predictor"]
    filled = [header.index("enhance.name=gan_l1;cohort.name=all"), header.index("enhance.name=none;cohort.name=all")]
    for label, row in body.items():
        values = [float(row[i - 1]) for i in filled]
        assert all(math.isfinite(v) and 0 < v < 240 for v in values), (label, values)
        if label in FINETUNE_MODES:
            assert [row[header.index(f"n[{header[i]}]") - 1] for i in filled] == ["2", "2"]
    facts = json.loads((root / "figure12_phantoms.json").read_text())
    assert len(facts["facts"]["ptl_stages"]) == 4
    assert all(max(s for _, s in t["transitions"]) >= 1 for t in facts["facts"]["ptl_stages"])
    cells = facts["cells"]
    assert any(cells[f"{m}|gan_l1|all"] != cells[f"{m}|none|all"] for m in FINETUNE_MODES)
    assert (root / "figure11.png").stat().st_size > 10_000
    assert "## Ordering of the modes" in (root / "figure12_phantoms.md").read_text()
