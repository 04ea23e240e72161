"""`medal pipeline` end to end at seconds-scale sizes: report, skipping, forcing, crash resume, folder oracle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from browser import CHROMIUM, NO_CHROMIUM, render_dom
from hydra_compose import compose_task

from medal.active.oracles import ANSWER_SUFFIX, MANIFEST
from medal.pipeline.stages import read_record
from medal.tasks import pipeline as pipeline_task
from medal.tasks import runner

SECTIONS = ["## Data", "## Hand segmentation", "## Image enhancement", "## Bone age", "## Class activation maps",
            "## Configuration and versions"]


def _run(root: Path, *overrides: str) -> tuple[dict, Path]:
    cfg = compose_task("pipeline", ["experiment=smoke", *overrides], root)
    return pipeline_task.run(cfg), Path(cfg.pipeline.dir)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, Path]:
    root = tmp_path_factory.mktemp("pipeline")
    metrics, state = _run(root)
    return root, metrics, state


def test_tiny_pipeline_runs_every_stage_and_writes_the_report(finished: tuple[Path, dict, Path]) -> None:
    root, metrics, state = finished
    assert metrics["pipeline/stopped"] == 0.0
    for stage in ("phantoms", "check_data", "segment", "enhance", "enhance_clahe", "enhance_none", "boneage_all", "cam"):
        assert read_record(state / "state", stage) is not None, stage
    assert metrics["segment/test/dice"] > 0.5
    assert 0 < metrics["boneage_all/test/mae"] < 240
    report = (root / "run" / "report.md").read_text()
    assert [s for s in SECTIONS if s not in report] == []
    images = [line.split("](", 1)[1].rstrip(")") for line in report.splitlines() if line.startswith("![")]
    assert len(images) >= 7 and all((root / "run" / link).is_file() for link in images)
    assert (root / "run" / "report.html").is_file()


@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
def test_pipeline_report_figures_all_load_in_headless_chromium(finished: tuple[Path, dict, Path],
                                                               tmp_path: Path) -> None:
    root, _, _ = finished
    html = root / "run" / "report.html"
    n_figures = html.read_text().count("<img ")
    dom = render_dom(html, tmp_path)
    assert n_figures >= 7 and f'data-loaded="{n_figures}"' in dom and f'data-total="{n_figures}"' in dom


def test_rerun_skips_finished_stages_and_force_redoes_one(finished: tuple[Path, dict, Path],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    root, _, _ = finished
    called: list[str] = []
    real = runner.task_function
    monkeypatch.setattr(pipeline_task, "task_function",
                        lambda name: called.append(name) or real(name))
    _run(root)
    assert called == []
    _run(root, "pipeline.force=[cam]")
    assert called == ["cam"]


def test_crash_in_a_stage_then_rerun_keeps_finished_stages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = runner.task_function
    called: list[str] = []

    def crashing(name: str):
        called.append(name)
        if name == "enhance":
            raise RuntimeError("killed during the enhancer")
        return real(name)

    overrides = ["pipeline.cam_cohort=null", "pipeline.cohorts=[]"]
    monkeypatch.setattr(pipeline_task, "task_function", crashing)
    with pytest.raises(RuntimeError, match="killed during the enhancer"):
        _run(tmp_path, *overrides)
    assert called == ["phantoms", "check-data", "segment", "enhance"]
    called.clear()
    monkeypatch.setattr(pipeline_task, "task_function", lambda name: called.append(name) or real(name))
    metrics, _ = _run(tmp_path, *overrides)
    assert called == ["enhance", "enhance", "enhance"]  # gan, clahe, none; nothing before the crash redone
    assert metrics["pipeline/stopped"] == 0.0


def test_folder_oracle_stops_the_pipeline_and_continues_after_answers(tmp_path: Path) -> None:
    overrides = ["pipeline.cam_cohort=null", "pipeline.cohorts=[]", "pipeline.enhance=none",
                 "pipeline.common=['oracle=folder']"]
    cfg = compose_task("pipeline", ["experiment=smoke", *overrides], tmp_path)
    masks, work_dir = Path(cfg.data.root) / "masks", Path(cfg.data.work_dir)
    stops = 0
    for _ in range(4):
        metrics, state = _run(tmp_path, *overrides)
        if not metrics["pipeline/stopped"]:
            break
        stops += 1
        assert read_record(state / "state", "segment") is None  # an unanswered round is not a finished stage
        round_dir = sorted(work_dir.glob("al/*/round_*"))[-1]
        for image_id in json.loads((round_dir / MANIFEST).read_text())["ids"]:  # the person answers
            shutil.copyfile(masks / f"{image_id}.png", round_dir / f"{image_id}{ANSWER_SUFFIX}")
    assert stops >= 1 and metrics["pipeline/stopped"] == 0.0
    assert read_record(state / "state", "segment")["metrics"]["al/labelled"] == 16
