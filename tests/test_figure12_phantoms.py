"""scripts/figure12_phantoms.py: the analysis on planted runs (fast), its sweeps compose, and a reduced run (slow)."""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from medal.models.stages import FINETUNE_MODES, FIXED_MODES, PACED_MODES
from medal.tables.paired import Pairing
from medal.tables.table import build_table
from tests.helpers.hydra_compose import compose_task
from tests.helpers.paired_runs import write_run
from tests.helpers.scripts import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "figure12_phantoms.py"


def _script():
    return load_script("figure12_phantoms")


# planted MAE offsets (months): ptl_paper best, the reference `ptl` behind every fixed mode but above FC, above
# middle tied with above entry, and enhancement 2 months better everywhere but above FC
OFFSETS = {"ptl_paper": 0.0, "ptl_discriminative": 1.0, "ptl_restart": 2.0, "all": 4.0, "above_entry": 6.0,
           "above_mid": 6.0, "above_exit": 8.0, "ptl": 10.0, "above_fc": 12.0}


def planted_sweeps(root: Path, seeds: int = 3, images: int = 30) -> Path:
    """Run folders laid out as the script's sweeps, with predictions.csv whose errors carry the planted offsets."""
    rng = np.random.default_rng(0)
    for seed in range(seeds):
        for sweep, modes in (("paced", PACED_MODES), ("fixed", FIXED_MODES)):
            for job, (mode, enhance, cohort) in enumerate(itertools.product(modes, ("gan_l1", "none"),
                                                                             ("all", "male", "female"))):
                shift = -2.0 if enhance == "gan_l1" and mode != "above_fc" else 0.0
                errors = 10.0 + OFFSETS[mode] + shift + rng.normal(0, 1.0, images) + rng.normal(0, 0.2)
                folder = write_run(root / "sweeps" / f"seed{seed}" / sweep / str(job), mode, seed, errors,
                                   cohort=cohort, enhance=enhance)
                if mode in PACED_MODES:
                    (folder / "csv").mkdir()
                    pd.DataFrame({"epoch": range(6), "ptl/stage": [0.0, 0.0, 1.0, 2.0, 3.0, 4.0],
                                  "train/loss": [1.0 / (e + 1) for e in range(6)]}).to_csv(
                        folder / "csv" / "metrics.csv", index=False)
    return root


def test_analysis_tests_the_papers_orderings_on_planted_runs(tmp_path: Path) -> None:
    fig = _script()
    root = planted_sweeps(tmp_path)
    (root / "sweeps" / "seed0" / "ptl" / "0" / ".hydra").mkdir(parents=True)  # an earlier version's folder:
    (root / "sweeps" / "seed0" / "ptl" / "0" / ".hydra" / "config.yaml").write_text("seed: 0\n")  # ignored
    runs = fig.sweep_runs(root, [0, 1, 2])
    assert len(runs) == 3 * 9 * 6
    table = build_table(runs, fig.figure12_spec(), compare=True)
    facts = fig.analyse(table, runs, Pairing(resamples=5000))
    assert table._published("ptl", ("gan_l1", "all")) == 7.664  # the paper's enhanced column sits beside gan_l1

    claims = facts["claims"]
    assert len(claims) == 6 * (4 * 5 + 4 + 3) + 9 * 3
    assert all(c["paired_by"].startswith("seed (n=3) x 30 images") for c in claims)
    summary = {(e["family"], e["claim"]): e for e in facts["summary"]}
    assert summary[("more blocks trained, lower MAE", "all < above_entry")]["holds"] == 6
    assert summary[("more blocks trained, lower MAE", "above_entry < above_mid")]["not resolved"] == 6  # a tie
    assert summary[("more blocks trained, lower MAE", "above_exit < above_fc")]["holds"] == 6
    assert summary[("enhanced < not enhanced", "all: gan_l1 < none")]["holds"] == 3
    assert summary[("enhanced < not enhanced", "above_fc: gan_l1 < none")]["not resolved"] == 3
    assert summary[("PTL readings", "ptl_paper < ptl")]["lower"] == 6
    best = {(e["mode"], e["column"]): e for e in facts["ptl_best"]}
    assert best[("ptl_paper", "gan_l1 / all")]["best"]
    reference = best[("ptl", "none / male")]
    assert not reference["best"] and reference["beats"] == ["above_fc"]
    assert sorted(reference["loses_to"]) == ["above_entry", "above_exit", "above_mid", "all"]  # where PTL loses
    assert facts["epochs_trained"]["ptl_restart"] == [6]
    order = facts["orderings"]["gan_l1 / all"]["ours"]
    assert order[0] == "ptl_paper" and order[-1] == "above_fc"
    text = fig.report(table, facts, {"command": "x"}, {"total": 1.0})
    assert "## Which of the paper's orderings hold beyond chance" in text
    assert "| ptl | none / male | no | above_fc |" in text
    assert "Holm-corrected over all 189 comparisons" in text


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
    for modes, extra in ((list(PACED_MODES)[::-1], ["finetune.patience=1", "finetune.max_epochs_per_stage=2"]),
                         (["above_fc", "all"], [])):
        args = fig.boneage_sweep(common, 1, modes, ["all", "male"], tmp_path / "sweep", 2, extra)
        assert args[:3] == ["boneage", "-m", "experiment=figure12"]
        overrides = [a.split(",")[0] for a in args[2:] if not a.startswith("hydra")]
        cfg = compose_task("boneage", overrides, tmp_path)
        assert (cfg.finetune.name, cfg.enhance.name, cfg.cohort.name, cfg.seed) == (modes[0], "gan_l1", "all", 1)
        assert cfg.scheduler.per == "epoch" and cfg.model.sex_input is True
        if modes[0] in PACED_MODES:  # ptl_restart, the last reading: its own schedule, the shared PTL overrides
            assert (cfg.finetune.patience, cfg.finetune.max_epochs_per_stage) == (1, 2)
            assert (cfg.finetune.schedule, cfg.finetune.lr_factor, cfg.finetune.lrs) == ("restart", 1.0, None)
        assert OmegaConf.select(cfg, "hydra.sweeper.params.finetune") is not None


SLICE = ("above_fc", "all", "ptl", "ptl_restart")  # two fixed modes, two PTL readings


@pytest.mark.slow  # ~10 min on 2 busy cores: 16 bone age runs, process start-ups dominate
def test_reduced_figure12_run_has_a_full_table_with_signal(tmp_path: Path) -> None:
    """The whole script, reduced (120 phantoms, 32 px, 5 epochs, 2 seeds, cohort all, four modes): every cell
    finite, PTL past its first stage, the enhanced column not a copy of the other, the orderings tested."""
    root = tmp_path / "f12"
    subprocess.run([sys.executable, str(SCRIPT), "--root", str(root), "--n", "120", "--phantom-size", "128",
                    "--roi-size", "64", "--size", "32", "--epochs", "5", "--seeds", "0", "1", "--cohorts", "all",
                    "--modes", *SLICE, "--source-n", "200", "--pretrain-epochs", "2", "--gan-epochs", "1",
                    "--gan-size", "32"],
                   env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True, capture_output=True, timeout=3600)
    with (root / "table.csv").open() as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], {row[0]: row[1:] for row in rows[1:]}
    assert len(header) == 1 + 3 * 6  # row key, 6 columns (enhancement x cohort), their n[...], paper[...]
    assert list(body) == [*FINETUNE_MODES, "noise floor", "mean predictor"]
    filled = [header.index("enhance.name=gan_l1;cohort.name=all"), header.index("enhance.name=none;cohort.name=all")]
    for label, row in body.items():
        if label not in (*SLICE, "noise floor", "mean predictor"):
            assert [row[i - 1] for i in filled] == ["missing", "missing"], label  # not run, never 0
            continue
        values = [float(row[i - 1]) for i in filled]
        assert all(math.isfinite(v) and 0 < v < 240 for v in values), (label, values)
        if label in SLICE:
            assert [row[header.index(f"n[{header[i]}]") - 1] for i in filled] == ["2", "2"]
    facts = json.loads((root / "figure12_phantoms.json").read_text())["facts"]
    assert len(facts["ptl_stages"]) == 8  # 2 readings x 2 seeds x 2 enhancements
    assert all(max(s for _, s in t["transitions"]) >= 1 for t in facts["ptl_stages"])
    assert all(epochs == [5] for epochs in facts["epochs_trained"].values())  # one budget for every mode
    cells = json.loads((root / "figure12_phantoms.json").read_text())["cells"]
    assert any(cells[f"{m}|gan_l1|all"] != cells[f"{m}|none|all"] for m in SLICE)
    # every claim between the slice's cells is tested, per seed and image (the runs' predictions.csv)
    assert len(facts["claims"]) == 2 * (2 * 2 + 1 + 1) + 4  # per column: PTL x fixed, all vs above_fc, ptl_restart
    # vs ptl; then enhanced vs not per mode
    assert all("images, paired bootstrap" in c["paired_by"] for c in facts["claims"])
    assert (root / "comparisons.csv").stat().st_size > 100 and (root / "figure11.png").stat().st_size > 10_000
    assert "## Which of the paper's orderings hold beyond chance" in (root / "figure12_phantoms.md").read_text()
