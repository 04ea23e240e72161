"""Paired statistics in `medal table`, on planted run folders with known differences: a real difference is found, a
null one is not, Holm's correction is applied, and each comparison says how it was paired."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.hydra_compose import compose_task
from helpers.paired_runs import IMAGES, write_rows, write_run

from medal.errors import MedalError
from medal.stats import BOOTSTRAP, SIGN_FLIP, holm, paired_images, paired_units, sign_flip_p
from medal.tables.folder_runs import collect_runs
from medal.tables.make import make_table
from medal.tables.table import HOLDS_MARK, TableSpec, build_table

SPEC = TableSpec(rows="finetune.name", columns=("cohort.name",), metric="test/mae", reference_row="base",
                 resamples=2000)
COLUMN = ("all",)


def planted(seeds: int = 5, effect: float = -2.0, rng_seed: int = 0) -> dict[str, np.ndarray]:
    """(seeds, images) absolute errors: `base`; `better` = base + effect + noise; `same` = base + noise only.
    Each seed shifts all of a run's errors a little (the training's seed-to-seed spread)."""
    rng = np.random.default_rng(rng_seed)
    base = rng.uniform(6.0, 14.0, size=(seeds, IMAGES)) + rng.normal(0, 0.5, size=(seeds, 1))
    better = base + effect + rng.normal(0, 1.0, size=base.shape) + rng.normal(0, 0.3, size=(seeds, 1))
    same = base + rng.normal(0, 1.0, size=base.shape) + rng.normal(0, 0.3, size=(seeds, 1))
    return {"base": base, "better": better, "same": same}


def _by_rows(table) -> dict[str, object]:
    return {c.a[0]: c for c in table.comparisons}


def test_a_real_difference_holds_and_a_null_one_does_not(tmp_path: Path) -> None:
    rows = planted()
    table = build_table(collect_runs(write_rows(tmp_path / "sweep", rows)), SPEC)
    found = _by_rows(table)
    better, same = found["better"], found["same"]
    assert better.b == ("base", COLUMN) and better.difference.method == BOOTSTRAP
    assert better.difference.images == IMAGES and better.difference.n == 5 and "bootstrap" in better.paired_by
    truth = float((rows["better"] - rows["base"]).mean())
    assert better.difference.mean == pytest.approx(truth)
    assert better.difference.low < -1.5 and better.difference.high < 0 and better.holds(0.05)
    assert not same.holds(0.05) and same.difference.low < 0 < same.difference.high
    # the cell of the row that differs is marked, the other is not; the footnote says what the mark means
    markdown = table.to_markdown()
    line = {ln.split("|")[1].strip(): ln for ln in markdown.splitlines() if ln.startswith("| ")}
    assert HOLDS_MARK in line["better"] and HOLDS_MARK not in line["same"] and HOLDS_MARK not in line["base"]
    assert f"{HOLDS_MARK} = differs from base" in markdown and "Holm-adjusted p < 0.05" in markdown
    assert r"\textsuperscript{\dag}" in table.to_latex()


def test_holm_fails_a_p_that_passes_alone(tmp_path: Path) -> None:
    """10 seeds, no predictions on disk (pairing per seed only): `strong` is better on every seed (p = 2/2^10),
    `weak` on 8 of 10 (p = 0.031 alone, 0.094 once Holm counts the four comparisons)."""
    base = np.full(10, 10.0)
    deltas = {"strong": np.array([1.0, 1.1, 0.9, 1.0, 1.2, 1.0, 0.8, 1.0, 1.1, 1.0]),
              "weak": np.array([0.5, 0.6, 0.4, 0.7, 0.5, 0.6, 0.3, 0.5, -0.3, -0.4]),
              "null1": np.array([0.1, -0.1, 0.2, -0.2, 0.05, 0.0, 0.1, -0.05, 0.02, -0.02]),
              "null2": np.array([-0.1, 0.1, -0.2, 0.2, -0.05, 0.0, -0.1, 0.05, -0.02, 0.02])}
    rows = {"base": np.tile(base[:, None], (1, 4))}
    rows.update({name: np.tile((base - d)[:, None], (1, 4)) for name, d in deltas.items()})  # lower MAE
    table = build_table(collect_runs(write_rows(tmp_path / "sweep", rows, predictions=False)), SPEC)
    found = _by_rows(table)
    assert {c.difference.method for c in found.values()} == {SIGN_FLIP}
    assert "no predictions.csv" in found["weak"].note and found["weak"].paired_by == "seed (n=10), sign-flip test"
    assert found["strong"].difference.p == pytest.approx(2 / 2**10) and found["strong"].holds(0.05)
    weak = found["weak"]
    assert weak.difference.p == pytest.approx(0.03125) and weak.difference.p < 0.05  # passes alone ...
    assert weak.p_holm == pytest.approx(3 * 0.03125) and not weak.holds(0.05)  # ... not as one of four
    assert table.marked() == {("strong", COLUMN)}


def test_pairs_per_seed_when_a_run_left_no_predictions(tmp_path: Path) -> None:
    rows = planted(seeds=3)
    root = write_rows(tmp_path / "sweep", {"base": rows["base"]})
    for seed, errors in enumerate(rows["better"]):  # a W&B-like source: metrics, no per-image file
        write_run(root / f"b{seed}", "better", seed, errors, predictions=False)
    comparison = build_table(collect_runs(root), SPEC).comparisons[0]
    assert comparison.difference.method == SIGN_FLIP and comparison.difference.n == 3
    assert "no predictions.csv" in comparison.note
    assert comparison.difference.p == pytest.approx(0.25)  # three seeds can show no difference: 2 / 2^3


def test_pairs_only_shared_seeds_and_refuses_ambiguous_cells(tmp_path: Path) -> None:
    rows = planted(seeds=4)
    root = write_rows(tmp_path / "sweep", {"base": rows["base"][:3], "better": rows["better"]})
    comparison = build_table(collect_runs(root), SPEC).comparisons[0]
    assert comparison.difference.n == 3  # seed 3 ran only for `better`
    write_run(root / "dup", "better", 0, rows["better"][0])  # a second run of seed 0 in the same cell
    ambiguous = build_table(collect_runs(root), SPEC).comparisons[0]
    assert ambiguous.difference is None and "two runs with seed=0" in ambiguous.note
    assert ambiguous.p_holm is None and not ambiguous.holds(0.05)


def test_different_test_sets_fall_back_to_seeds(tmp_path: Path) -> None:
    rows = planted(seeds=3)
    root = write_rows(tmp_path / "sweep", {"base": rows["base"]})
    other = pd.DataFrame({"id": [f"x{i}" for i in range(IMAGES)], "sex": ["M", "F"] * (IMAGES // 2),
                          "true": np.linspace(20, 200, IMAGES)})
    for seed, errors in enumerate(rows["better"]):
        write_run(root / f"b{seed}", "better", seed, errors, ids=other)
    comparison = build_table(collect_runs(root), SPEC).comparisons[0]
    assert comparison.difference.method == SIGN_FLIP and "different test images" in comparison.note


def test_per_image_errors_follow_the_metric_cohort(tmp_path: Path) -> None:
    rows = planted(seeds=2)
    runs = collect_runs(write_rows(tmp_path / "sweep", rows))
    spec = TableSpec(rows="finetune.name", columns=("metric",), metrics=("test/mae_male",), reference_row="base",
                     resamples=500)
    comparison = _by_rows(build_table(runs, spec))["better"]
    male = np.arange(IMAGES) % 2 == 1
    assert comparison.difference.images == male.sum()
    assert comparison.difference.mean == pytest.approx(float((rows["better"] - rows["base"])[:, male].mean()))


def test_all_pairs_and_a_wrong_reference(tmp_path: Path) -> None:
    runs = collect_runs(write_rows(tmp_path / "sweep", planted(seeds=2)))
    spec = TableSpec(rows="finetune.name", columns=("cohort.name",), metric="test/mae", all_pairs=True, resamples=500)
    table = build_table(runs, spec)
    assert len(table.comparisons) == 3 and table.marked() == set()
    with pytest.raises(MedalError, match="table.reference=nope: no such row"):
        build_table(runs, TableSpec(rows="finetune.name", columns=("cohort.name",), metric="test/mae",
                                    reference_row="nope"))


def test_table_task_writes_the_comparisons(tmp_path: Path) -> None:
    root = write_rows(tmp_path / "sweep", planted())
    cfg = compose_task("table", [f"table.source={root}", "table.preset=null", "table.rows=finetune.name",
                                 "table.columns=[cohort.name]", "table.metric=test/mae", "table.reference=base",
                                 "table.bootstrap=1000", "table.curves.enabled=false"], tmp_path / "out")
    counts = make_table(cfg)
    assert counts["table/comparisons"] == 2 and counts["table/differences_holding"] == 1
    frame = pd.read_csv(Path(cfg.paths.output_dir) / "comparisons.csv", dtype={"a_column": str})
    assert list(frame["a_row"]) == ["better", "same"] and list(frame["holds"]) == [True, False]
    assert set(frame["method"]) == {BOOTSTRAP} and (frame["images"] == IMAGES).all()


# -- the statistics themselves ----------------------------------------------------------------------------
def test_sign_flip_matches_full_enumeration() -> None:
    rng = np.random.default_rng(3)
    d = rng.normal(0.3, 1.0, size=9)
    signs = np.array(np.meshgrid(*[[-1.0, 1.0]] * d.size)).reshape(d.size, -1).T
    null = (signs * d).mean(1)
    greater, less = np.mean(null >= d.mean() - 1e-12), np.mean(null <= d.mean() + 1e-12)
    assert sign_flip_p(d) == pytest.approx(min(1.0, 2 * min(greater, less)))


def test_tests_keep_their_level_under_the_null() -> None:
    """Under no difference, p < 0.05 comes up about 5% of the time (exact for the sign flip; the bootstrap is
    approximate, and its two-way resampling errs conservative)."""
    rng = np.random.default_rng(7)
    flips = [paired_units(rng.normal(0, 1, 6), rng.normal(0, 1, 6)).p < 0.05 for _ in range(400)]
    assert np.mean(flips) <= 0.05 + 0.02
    boots = []
    for _ in range(150):
        b = rng.uniform(5, 15, size=(4, 40))
        a = b + rng.normal(0, 1, size=b.shape) + rng.normal(0, 0.3, size=(4, 1))
        boots.append(paired_images(a, b, resamples=400, seed=int(rng.integers(1 << 30))).p < 0.05)
    assert 0.0 <= np.mean(boots) <= 0.10


def test_holm_is_monotone_and_never_below_the_raw_p() -> None:
    p = np.random.default_rng(0).uniform(0, 0.2, size=12)
    adjusted = np.array(holm(p))
    assert (adjusted >= p - 1e-12).all() and (adjusted <= 1).all()
    order = np.argsort(p)
    assert (np.diff(adjusted[order]) >= -1e-12).all()
