"""`medal check-data`: summary table, one line per problem, exit status 1 on any problem."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.rsna_layouts import (
    corrupt_crc,
    garble_pixels,
    make_official,
    rewrite_train_csv,
    truncate,
    write_png,
)
from hydra.core.global_hydra import GlobalHydra

from medal.data.checks import summarize
from medal.data.rsna import read_index
from medal.tasks import check_data


def run_check_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *overrides: str) -> int:
    """Run the task's Hydra app in this process as `medal check-data` would; return its exit status."""
    run_dir = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["medal check-data", f"paths.root={tmp_path}", f"hydra.run.dir={run_dir}",
                                      *overrides])
    GlobalHydra.instance().clear()
    try:
        check_data.main()
    except SystemExit as stop:
        return int(stop.code or 0)
    return 0


def test_clean_data_set_prints_summary_and_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "rsna"
    truth = make_official(root)
    assert run_check_data(tmp_path, monkeypatch, f"data.root={root}", "data.check_images=true") == 0
    out = capsys.readouterr().out
    for split in ("train", "val", "test"):
        row = next(line for line in out.splitlines() if f" {split} " in line)
        part = truth[truth["split"] == split]
        cells = [c.strip() for c in row.strip("│┃ ").split("│")]
        assert cells[1:4] == [str(len(part)), str(int(part["male"].sum())), str(int((~part["male"]).sum()))]
        assert float(cells[5]) == pytest.approx(part["boneage"].mean(), abs=0.06)
    assert "no problems found" in out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["train/images"] == 30


def _spoil(root: Path) -> list[str]:
    """Break a data set in every way check-data must report by default; return the expected line starts."""
    images = root / "boneage-training-dataset"

    def spoil(t: pd.DataFrame) -> pd.DataFrame:
        t.loc[1, "boneage"], t.loc[2, "boneage"], t.loc[3, "male"] = "abc", "500", "X"
        return pd.concat([t, t.iloc[[5]]], ignore_index=True)

    rewrite_train_csv(root, spoil)
    (images / "1006.png").unlink()
    truncate(images / "1008.png")
    corrupt_crc(images / "1009.png")
    write_png(images / "4242.png", np.random.default_rng(0))
    return [
        f"{root}/train.csv:3: id 1001: bone age 'abc' is not a number",
        f"{root}/train.csv:4: id 1002: bone age 500 months is outside 0-240",
        f"{root}/train.csv:5: id 1003: unknown sex 'X'",
        f"{root}/train.csv:32: duplicate id 1005 (first at {root}/train.csv:7)",
        f"{root}/train.csv:8: id 1006: image 1006.png not found in {images}",
        f"{images}/4242.png: image has no row in train.csv",
        f"{images}/1008.png: damaged PNG: truncated: the file ends inside chunk IDAT",
        f"{images}/1009.png: damaged PNG: chunk IDAT at byte ",
    ]


def _assert_lines(out: str, expected: list[str]) -> None:
    lines = out.splitlines()
    for text in expected:
        assert sum(line.startswith(text) for line in lines) == 1, text


def test_every_problem_is_one_line_and_exit_status_is_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "rsna"
    make_official(root)
    expected = _spoil(root)
    # by default: labels, ids, and every image's PNG chunks (no decode) -- the truncated and the bit-rotten file
    assert run_check_data(tmp_path, monkeypatch, f"data.root={root}") == 1
    captured = capsys.readouterr()
    _assert_lines(captured.out, expected)
    assert "8 problem(s) found" in captured.err + captured.out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "8 problem(s) found" in metrics["error"]


def test_full_decode_adds_what_only_the_pixels_show(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "rsna"
    make_official(root)
    expected = _spoil(root)
    images = root / "boneage-training-dataset"
    garble_pixels(images / "1010.png")  # every chunk CRC is right: only decoding the pixels fails
    assert run_check_data(tmp_path, monkeypatch, f"data.root={root}") == 1
    assert "1010.png" not in capsys.readouterr().out
    assert run_check_data(tmp_path, monkeypatch, f"data.root={root}", "data.check_images=true") == 1
    captured = capsys.readouterr()
    _assert_lines(captured.out, [*expected, f"{images}/1010.png: unreadable or truncated image"])
    assert sum("1008.png" in line for line in captured.out.splitlines()) == 1  # one line per file, not two
    assert "9 problem(s) found" in captured.err + captured.out


def test_missing_labels_file_and_missing_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "rsna"
    make_official(root, n_train=5, n_val=4, n_test=2)
    (root / "Bone age ground truth.xlsx").unlink()
    assert run_check_data(tmp_path, monkeypatch, f"data.root={root}") == 1
    assert f"{root}/Test Set Images: labels file missing for the test images" in capsys.readouterr().out
    assert run_check_data(tmp_path, monkeypatch, f"data.root={tmp_path / 'nowhere'}") == 1
    assert "folder not found" in json.loads((tmp_path / "run" / "metrics.json").read_text())["error"]


def test_summarize_counts_per_split(tmp_path: Path) -> None:
    truth = make_official(tmp_path, n_train=12, n_val=6, n_test=4)
    summary = summarize(read_index(tmp_path)).set_index("split")
    assert summary.loc["val", "images"] == 6
    assert summary.loc["train", "male"] + summary.loc["train", "female"] == 12
    train = truth[truth["split"] == "train"]["boneage"]
    assert summary.loc["train", "age_min"] == train.min() and summary.loc["train", "age_max"] == train.max()
