"""The task wrapper: metrics.json always written, one-line errors, a failed job never kills a multirun."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from medal.errors import MedalError
from medal.tasks import runner


def _cfg(tmp_path: Path):
    return OmegaConf.create({"paths": {"output_dir": str(tmp_path)}, "optimized_metric": "val/mae"})


def test_successful_run_writes_status_and_metrics_and_returns_optimized_metric(tmp_path: Path) -> None:
    value = runner.run_task(lambda cfg: {"val/mae": 7.5, "test/mae": 8.0}, _cfg(tmp_path))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert value == 7.5
    assert metrics["status"] == "ok" and metrics["test/mae"] == 8.0 and metrics["time/run_s"] >= 0


def test_work_finished_by_an_earlier_run_keeps_that_runs_metrics_json(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A rerun of a sweep in its old folder: the task returns the recorded metrics as `Reused`, and the runner
    leaves the finished run's metrics.json (its time, its mtime) alone."""
    from medal.runs import Reused

    runner.run_task(lambda cfg: {"val/mae": 7.5}, _cfg(tmp_path))
    path = tmp_path / "metrics.json"
    before, stamp = path.read_text(), path.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="medal"):
        value = runner.run_task(lambda cfg: Reused({"val/mae": 7.5}), _cfg(tmp_path))
    assert value == 7.5 and path.read_text() == before and path.stat().st_mtime_ns == stamp
    assert any("finished by an earlier run; skipped" in r.getMessage() for r in caplog.records)

    path.write_text(json.dumps({"status": "failed", "error": "x"}))  # not a finished run: written as usual
    assert runner.run_task(lambda cfg: Reused({"val/mae": 6.0}), _cfg(tmp_path)) == 6.0
    assert json.loads(path.read_text())["status"] == "ok"


def test_bad_input_is_one_line_and_exit_status_1(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def fail(cfg):
        raise MedalError("train.csv row 3: age 'abc' is not a number; fix or remove the row")

    with caplog.at_level(logging.ERROR, logger="medal"), pytest.raises(SystemExit) as exit_info:
        runner.run_task(fail, _cfg(tmp_path))
    assert exit_info.value.code == 1
    assert caplog.records[-1].getMessage() == "train.csv row 3: age 'abc' is not a number; fix or remove the row"
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "row 3" in metrics["error"]


def test_failure_inside_a_multirun_is_recorded_and_the_sweep_goes_on(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(runner, "_in_multirun", lambda: True)

    def crash(cfg):
        raise RuntimeError("CUDA out of memory")

    assert runner.run_task(crash, _cfg(tmp_path)) is None
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics == {"status": "failed", "error": "RuntimeError: CUDA out of memory"}


def test_unexpected_error_in_a_single_run_propagates_with_its_traceback(tmp_path: Path) -> None:
    def crash(cfg):
        raise ZeroDivisionError("bug")

    with pytest.raises(ZeroDivisionError):
        runner.run_task(crash, _cfg(tmp_path))
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "failed"


def test_a_misspelt_optimized_metric_stops_an_optimising_sweep_naming_the_keys(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Optuna would record every trial as a failure (and go on): the first trial ends the sweep instead."""
    monkeypatch.setattr(runner, "_sweeper_optimises", lambda: True)
    cfg = _cfg(tmp_path)
    cfg.optimized_metric = "val/maee"
    with caplog.at_level(logging.ERROR, logger="medal"), pytest.raises(SystemExit) as exit_info:
        runner.run_task(lambda cfg: {"val/mae": 7.5, "test/mae": 8.0}, cfg)
    assert exit_info.value.code == 1
    assert caplog.records[-1].getMessage() == ("optimized_metric=val/maee: this run's metrics have no such key; "
                                               "choose one of: test/mae, time/run_s, val/mae")
    assert json.loads((tmp_path / "metrics.json").read_text())["val/mae"] == 7.5  # the run's work is kept


def test_a_missing_optimized_metric_where_nobody_reads_it_is_one_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A single run (or the basic grid sweeper) returns the value to nobody: e.g. segmentation without masks."""
    cfg = _cfg(tmp_path)
    cfg.optimized_metric = "test/dice"
    with caplog.at_level(logging.WARNING, logger="medal"):
        assert runner.run_task(lambda cfg: {"al/labelled": 64}, cfg) is None
    assert "optimized_metric=test/dice: this run's metrics have no such key" in caplog.text
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "ok"


def test_a_failed_run_in_an_optimising_sweep_is_still_recorded_as_failed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(runner, "_in_multirun", lambda: True)
    monkeypatch.setattr(runner, "_sweeper_optimises", lambda: True)

    def diverge(cfg):
        raise MedalError("val/mae is NaN after epoch 1; lower optimizer.lr")

    assert runner.run_task(diverge, _cfg(tmp_path)) is None
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "failed"
