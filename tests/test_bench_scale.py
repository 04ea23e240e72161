"""The scale benchmark's own machinery: memory measured in a child process, growth laws, layouts of hard links
that medal reads as RSNA data, and run folders / offline W&B runs copied from one run that `medal table` reads."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from medal.data.checks import damaged_images
from medal.data.rsna import read_index
from medal.scale import fixtures
from medal.scale.measure import run_child
from medal.scale.runs import CELLS, cell
from medal.scale.standin import ShapeCommittee

CHILD = """
import json, os, sys, time
from pathlib import Path
result = Path(sys.argv[1])
held = bytearray(50 * 2**20)  # before the work: part of the baseline
result.with_name(result.name + ".start").touch()
time.sleep(0.4)
work = [bytearray(200 * 2**20)]
for chunk in work:
    chunk[::4096] = b"x" * len(chunk[::4096])  # touch every page
time.sleep(0.5)
if len(sys.argv) > 2:  # a forked worker that holds memory of its own
    pid = os.fork()
    if pid == 0:
        extra = bytearray(150 * 2**20)
        extra[::4096] = b"y" * len(extra[::4096])
        time.sleep(0.8)
        os._exit(0)
    os.waitpid(pid, 0)
result.write_text(json.dumps({"items": 1}))
"""


def test_a_child_s_peak_above_its_baseline_is_what_its_work_held(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    result = tmp_path / "r.json"
    m = run_child([sys.executable, str(script), str(result)], result, tmp_path / "log")
    assert m.returncode == 0 and m.report == {"items": 1}
    grown = (m.work_peak_anon - m.baseline_anon) / 2**20
    assert 180 < grown < 260, grown  # the 200 MB the work touched, not the 50 MB held before it
    assert m.maxrss >= m.work_peak_anon * 0.9


def test_the_memory_of_a_forked_worker_counts_once(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    result = tmp_path / "r.json"
    m = run_child([sys.executable, str(script), str(result), "fork"], result, tmp_path / "log")
    grown = (m.work_peak_anon - m.baseline_anon) / 2**20
    # the worker's own 150 MB add to the parent's 200 MB; the pages it shares with its parent are not counted twice
    assert m.processes == 2 and 310 < grown < 450, grown


def test_a_killed_child_is_a_failure_with_its_log(tmp_path: Path) -> None:
    result = tmp_path / "r.json"
    m = run_child([sys.executable, "-c", "import time; print('working'); time.sleep(30)"], result, tmp_path / "log",
                  timeout=1.0)
    assert m.returncode != 0 and m.report == {} and "working" in m.stderr_tail


@pytest.fixture(scope="module")
def layout(tiny_phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fixtures.scaled_layout(tiny_phantoms, tmp_path_factory.mktemp("layout") / "n150", 150)


def test_a_scaled_layout_is_valid_rsna_data_of_hard_links(layout: Path, tiny_phantoms: Path) -> None:
    index = read_index(layout, strict=True)  # any problem would raise
    counts = index["split"].value_counts().to_dict()
    assert counts == fixtures.split_sizes(150) and index["id"].is_unique
    assert not damaged_images(index["id"].tolist(), index["path"].tolist(), workers=1)
    table = fixtures.layout_table(layout)
    sources = read_index(tiny_phantoms, strict=False).set_index("id")
    first = table.iloc[0]
    assert (layout / first["path"]).stat().st_ino == Path(sources.loc[first["source_id"], "path"]).stat().st_ino
    assert (layout / "masks" / f"{first['id']}.png").stat().st_ino == \
        (tiny_phantoms / "masks" / f"{first['source_id']}.png").stat().st_ino  # links, not copies
    # labels travel with the pixels: the copy's age and sex are its source's
    ages = index.set_index("id").loc[table["id"], "boneage"].to_numpy()
    np.testing.assert_allclose(ages, sources.loc[table["source_id"], "boneage"].round().clip(1, 228).to_numpy(),
                               atol=0.51)


def test_an_archive_folder_is_a_flat_folder_of_links(tiny_phantoms: Path, tmp_path: Path) -> None:
    from medal.predict.inputs import read_inputs

    folder = fixtures.archive_folder(tiny_phantoms, tmp_path / "archive", 70)
    frame = read_inputs(folder)
    assert len(frame) == 70 and frame["id"].is_unique and frame["id"].iloc[0] == "a0000000"


def test_copies_spread_over_figure_12_s_cells_then_seeds() -> None:
    cells = {cell(k)[:3] for k in range(len(CELLS))}
    assert len(cells) == len(CELLS) == 54 and cell(len(CELLS))[3] == 1 and cell(0)[3] == 0


def test_the_stand_in_committee_has_the_real_shapes_and_counts_its_images() -> None:
    model = ShapeCommittee(members=3, size=32, dim=192 * 4 * 4)
    images = np.zeros((5, 32, 32), np.float32)
    probs, features, mc = model.predict_probs(images), model.features(images), model.mc_probs(images, 8, 0)
    assert probs.shape == (3, 5, 32, 32) and features.shape == (3, 5, 192 * 16) and mc.shape == (8, 5, 32, 32)
    assert probs.dtype == features.dtype == torch.float32 and float(probs.min()) > 0 and float(probs.max()) < 1
    assert model.seen == {"probs": 5, "features": 5, "mc": 40}


def test_the_record_reports_exponents_and_extrapolations(tmp_path: Path) -> None:
    from medal.scale.report import summarise

    def result(n: float) -> dict:
        return {"stage": "check_data", "n": n, "ok": True,
                "measurement": {"work_peak_anon": 4e8 + 1e5 * n, "baseline_anon": 4e8, "peak_total": 0, "maxrss": 0,
                                "processes": 1},
                "report": {"items": n, "seconds": 0.01 * n, "projected_s": 0.01 * n, "disk_bytes": 0}}

    summary = next(s for s in summarise({"check_data": [result(n) for n in (500, 2000, 12611)]})
                   if s["stage"] == "check_data")
    assert summary["time_exponent"] == pytest.approx(1.0) and summary["memory_exponent"] == pytest.approx(1.0)
    assert summary["seconds_at_100000"] == pytest.approx(1000.0) and summary["extrapolated_100000"]
    assert summary["peak_at_100000"] == pytest.approx(4e8 + 1e10) and not summary["extrapolated_12611"]
    json.dumps(summary)


def test_copies_of_one_run_read_back_as_one_table_from_folders_and_from_w_and_b(tmp_path: Path) -> None:
    from helpers.fake_runs import write_job

    from medal import wandb_record
    from medal.scale.runs import run_folders, wandb_runs
    from medal.tables.folder_runs import collect_runs
    from medal.tables.wandb_runs import collect_disk_runs

    seed = tmp_path / "seed"
    write_job(seed, "ptl", "gan", "all")
    files = seed / "wandb" / "offline-run-20261207_120000-abc123" / "files"
    files.mkdir(parents=True)
    (files.parent / "run-abc123.wandb").write_bytes(b":W&B")  # W&B's own log, which the tables never read
    config = yaml.safe_load((seed / ".hydra" / "config.yaml").read_text())
    wandb_record.write_run(files, "abc123", "medal", "figure12", ["finetune=ptl"], config)
    wandb_record.append_history(files, {"train/loss": 1.0, "epoch": 0}, step=9)
    wandb_record.write_summary(files, "ok", json.loads((seed / "metrics.json").read_text()))
    copies = len(CELLS) + 6
    folders = collect_runs(run_folders(seed, tmp_path / "runs", copies))
    w_and_b = collect_disk_runs(wandb_runs(seed, tmp_path / "wandb", copies))

    def cells(runs: list) -> list:
        return sorted((r.get("finetune.name"), r.get("enhance.name"), r.get("cohort.name"), r.get("seed"),
                       round(r.metrics["test/mae"], 6)) for r in runs)

    assert len(folders) == len(w_and_b) == copies and cells(folders) == cells(w_and_b)
    assert len({c[:3] for c in cells(folders)}) == len(CELLS)  # every Figure 12 cell, then a second seed
    assert len({r.extra["id"] for r in w_and_b}) == copies


def test_a_seeded_cache_is_the_cache_medal_would_build_from_the_links(layout: Path, tiny_phantoms: Path,
                                                                        tmp_path: Path) -> None:
    from medal.data.cache import cached_images

    table = fixtures.layout_table(layout)
    ids, paths = table["id"].tolist(), [str(layout / p) for p in table["path"]]
    seeded = fixtures.seeded_cache(tiny_phantoms, tmp_path / "base_work", tmp_path / "work", ids, paths,
                                   table["source_id"].tolist(), 32, "stretch")
    found = cached_images(ids, paths, tmp_path / "work", 32, fit="stretch", workers=1)  # a hit: nothing decoded
    built = cached_images(ids, paths, tmp_path / "fresh", 32, fit="stretch", workers=1)
    assert Path(found.filename) == seeded
    np.testing.assert_array_equal(np.asarray(found), np.asarray(built))
