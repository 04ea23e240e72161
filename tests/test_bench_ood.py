"""scripts/bench_ood.py's core on a tiny set: the shifted pictures, each gate layer as the judge reports it, and the
rates with their Wilson intervals (nothing is timed; the benchmark itself runs in `make bench`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers.scripts import load_script

from medal.bundle.load import load_bundle
from medal.data.images import decode
from medal.data.rsna import read_index


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_ood")


def test_wilson_intervals_and_redrawn_false_rejects(bench) -> None:
    assert bench.wilson(3, 100) == pytest.approx((0.01025, 0.08452), abs=1e-4)
    assert bench.wilson(0, 50)[0] == pytest.approx(0.0, abs=1e-12) and bench.wilson(0, 50)[1] == pytest.approx(
        3.8415 / 53.8415, abs=1e-4)  # z^2 / (n + z^2)
    assert np.isnan(bench.wilson(0, 0)).all()
    rng = np.random.default_rng(0)
    same = bench.redrawn_false_rejects(rng.normal(size=300), rng.normal(size=700), 300, 0.05, 300, seed=1)
    assert 0.035 < same["mean"] <= 0.055 and same["pool"] == 1000  # exchangeable scores: at most nominal, on average
    assert same["p2_5"] <= same["mean"] <= same["p97_5"] and 0.0 <= same["above_nominal"] <= 1.0


def test_the_judge_names_the_layer_that_refuses_each_image(bench, gated_bundle: Path, tiny_phantoms: Path,
                                                           tmp_path: Path) -> None:
    judge = bench.Judge(load_bundle(gated_bundle), bench.gate_options())
    assert np.isfinite(judge.threshold)
    source = bench.phantom_frame(read_index(tiny_phantoms, strict=False).head(3))
    sets = bench.shifted_sets(source, tmp_path / "shifted", seed=0)
    assert set(sets) == {*bench.CORRUPTIONS, "chest_like"} and all(len(f) == 3 for f in sets.values())
    original = decode(source["path"].iloc[0]).image
    assert decode(sets["fingers_only"]["path"].iloc[0]).image.shape == (original.shape[0] // 2, original.shape[1])
    assert decode(sets["rotated_90"]["path"].iloc[0]).image.shape == original.shape[::-1]
    assert sets["chest_like"]["male"].tolist() == source["male"].tolist()

    corpus = bench.corpus_frame()
    two = corpus[corpus["id"].str.endswith(("_MR_small.dcm", "_CT_small.dcm"))]
    assert len(two) == 2
    gated, pixels = judge(two), judge(two, pixels=True)
    assert set(gated["status"]) == {"not_a_hand_radiograph"} and gated["ood_score"].isna().all()
    assert np.isfinite(pixels["ood_score"]).all()  # the header rule off: the OOD score judges their pixels
    both = bench.summarise(gated, pixels, judge.threshold)
    assert both["header"]["k"] == 2 and both["caught"]["share"] == 1.0 and both["passes"]["k"] == 0
    assert both["ood_alone"]["n"] == 2 and both["ood_alone"]["k"] == int((pixels["ood_score"] > judge.threshold).sum())

    rows = judge(sets["heavy_noise"])
    noisy = bench.summarise(rows, None, judge.threshold)
    assert sum(noisy[k]["k"] for k in ("header", "ood", "range", "decoder", "other", "passes")) == 3
    assert noisy["ood"]["k"] == int((rows["status"] == "out_of_distribution").sum())
    assert noisy["ood_alone"]["k"] == int((rows["ood_score"] > judge.threshold).sum())
    for r in (noisy[k] for k in ("caught", "passes", "ood_alone")):
        assert r["low"] <= r["share"] <= r["high"]
    markdown = bench.table({"heavy_noise": noisy, "two": both})
    assert markdown.count("\n") == 3 and "| two | 2 | 100.0 % [" in markdown
