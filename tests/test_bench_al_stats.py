"""scripts/bench_segmentation.py's statistics on planted runs: every arm against the stratified random, paired by
seed with medal.stats and Holm-corrected, and the labels each arm needs to reach the baseline's worst-decile Dice."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers.scripts import load_script

BUDGET, SEEDS = 40, 10
WEAK = (0.5, 0.6, 0.4, 0.7, 0.5, 0.6, 0.3, 0.5, -0.3, -0.4)
WORST, DICE = "test/dice_worst_decile", "test/dice"


def _run(arm: str, seed: int, worst: list[float]) -> dict:
    """One arm x seed as run_job returns it: a history of rounds at 8, 16, ..., 40 labels."""
    history = [{"labelled": 8 * (i + 1), WORST: w, DICE: 0.8 + 0.02 * i, "query/cv": 0.5,
                "oracle/edit_dice": 0.8, "oracle/changed_share": 0.02} for i, w in enumerate(worst)]
    return {"arm": arm, "seed": seed, "history": history, "queried": {"a": 0, "b": 1},
            "final": {"dice": 0.9, "iou": 0.8, "dice_worst_decile": worst[-1]}, "seconds": 1.0}


def planted() -> dict[str, list[dict]]:
    rng = np.random.default_rng(0)
    base = [0.30, 0.36, 0.42, 0.48, 0.54]
    runs: dict[str, list[dict]] = {"random_stratified": [], "faster": [], "same": [], "weak": []}
    for seed in range(SEEDS):
        shift = rng.normal(0, 0.05)  # a seed's luck, shared by every arm (same initial draw)
        runs["random_stratified"].append(_run("random_stratified", seed, [b + shift for b in base]))
        # reaches the baseline's final 0.54 two rounds early: 0.42 at 16 labels, 0.54 at 24
        runs["faster"].append(_run("faster", seed, [0.30 + shift, 0.42 + shift, 0.54 + shift, 0.60 + shift,
                                                    0.64 + shift]))
        noise = rng.normal(0, 0.02, 5)
        runs["same"].append(_run("same", seed, [b + shift + n for b, n in zip(base, noise, strict=True)]))
        bump = 0.04 * WEAK[seed]  # better on 8 seeds of 10: p = 0.031 alone
        runs["weak"].append(_run("weak", seed, [b + shift + (bump if i else 0.0) for i, b in enumerate(base)]))
    return runs


def test_arms_against_the_stratified_random_with_holm_and_labels_saved() -> None:
    bench = load_script("bench_segmentation")
    runs = planted()
    reference = bench.summarise("random_stratified", runs["random_stratified"], set(), 0.9, None)
    reach = reference["worst_curve"][-1][1]
    assert reach == pytest.approx(np.mean([r["history"][-1][WORST] for r in runs["random_stratified"]]))
    summary = {arm: bench.summarise(arm, arm_runs, set(), 0.9, reach) for arm, arm_runs in runs.items()}
    family = bench.compare_arms(summary, "random_stratified")
    assert family == 3 * 2  # three arms, two measures
    faster, same, weak = (summary[a]["vs_baseline_worst_auc"] for a in ("faster", "same", "weak"))
    assert faster["holds"] and faster["mean"] > 0 and faster["p"] == pytest.approx(2 / 2**SEEDS)
    assert not same["holds"] and same["low"] < 0 < same["high"]
    assert weak["p"] < 0.05 and weak["p_holm"] >= 0.05 and not weak["holds"]  # passes alone, not as one of six
    labels = summary["faster"]["labels_to_baseline"]
    assert labels["mean_curve"] == pytest.approx(24.0, abs=0.5) and labels["reached"] >= SEEDS - 2  # 60% of the budget
    assert summary["random_stratified"]["labels_to_baseline"]["mean_curve"] == pytest.approx(40.0)
    assert "vs_baseline_worst_auc" not in summary["random_stratified"]
    text = bench.table(type("Args", (), {"baseline": "random_stratified", "budget": BUDGET, "target": 0.9,
                                         "seeds": list(range(SEEDS))})(), summary)
    assert "**holds**" in text.split("| faster |")[1].split("\n")[0] and "24.0 (60%)" in text
    assert math.isinf(bench.summarise("x", [_run("x", 0, [0.1] * 5)], set(), 0.9, 0.5)["labels_to_baseline"]["median"])
