"""The `medal` command: task list, unknown tasks, and a task's Hydra `--help` / `--cfg job` (real processes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from medal.cli import main
from medal.tasks import TASKS

ROOT = Path(__file__).resolve().parents[1]


def medal(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m medal ARGS` with this venv's interpreter, as a user would run it."""
    return subprocess.run([sys.executable, "-m", "medal", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={"PATH": "/usr/bin:/bin", "MEDAL_ROOT": str(cwd), "HOME": str(cwd)})


def test_help_lists_every_task(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: medal <task>")
    for name, (_, description) in TASKS.items():
        assert f"  {name}" in out and description in out


def test_unknown_task_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["trian"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown task 'trian'" in err and "check-data" in err


def test_task_help_and_cfg_job_in_a_real_process(tmp_path: Path) -> None:
    helped = medal("check-data", "--help", cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert "check_data" in helped.stdout and "data: base, phantom, rsna" in helped.stdout
    shown = medal("check-data", "data=rsna", f"data.root={tmp_path}", "data.strict=false", "--cfg", "job",
                  cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "task_name: check_data" in shown.stdout and "name: rsna" in shown.stdout
    assert "strict: false" in shown.stdout and f"root: {tmp_path}" in shown.stdout
    assert "image_size" not in shown.stdout  # the bone age loader's keys are not the data set's
    assert not (tmp_path / "outputs").exists()  # printing the config runs nothing


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("cohort=bogus", "cohort=bogus: conf/cohort/ has no bogus.yaml; choose one of: all, female, male"),
        ("trainer.max_epochz=3", "Could not override 'trainer.max_epochz'"),
        ("trainer.max_epochs=[1", "no viable alternative at input '[1'"),
    ],
)
def test_bad_override_is_one_line_naming_it_and_runs_nothing(
    override: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDAL_ROOT", str(tmp_path))
    with pytest.raises(SystemExit) as stop:
        main(["boneage", override])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("medal boneage: ") and expected in err
    assert not (tmp_path / "outputs").exists()


def test_missing_key_message_says_how_to_list_keys(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["check-data", "data.imag_size=3"])
    err = capsys.readouterr().err
    assert "+data.imag_size=3" in err and "`medal check-data --cfg job` prints every key" in err


def test_sweeps_are_left_to_hydra_even_without_dash_m() -> None:
    """hparams_search=optuna_boneage sets hydra.mode=MULTIRUN, so its sweeps need no -m: don't reject them."""
    from medal.overrides import override_problem

    assert override_problem("boneage", ["hparams_search=optuna_boneage", "optimizer.lr=interval(1e-4,1e-2)"]) is None
    assert override_problem("boneage", ["cohort=male,female"]) is None  # Hydra itself says to add -m
    assert "conf/cohort/ has no" in override_problem("boneage", ["cohort=bogus"])


def test_a_multirun_with_the_default_sweep_dir_runs_every_job(tmp_path: Path) -> None:
    """The sweep dir is built from paths.root before Hydra's runtime config exists; it must still resolve."""
    done = medal("phantoms", "-m", "n=4", "image_size=32", "seed=0,1", "out=${hydra:runtime.output_dir}/ph",
                 cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    (sweep,) = (tmp_path / "outputs" / "multiruns" / "phantoms").iterdir()
    for job in ("0", "1"):
        assert '"status": "ok"' in (sweep / job / "metrics.json").read_text()
        assert len(list((sweep / job / "ph" / "masks").glob("*.png"))) == 4


@pytest.fixture
def in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`medal.cli.main` run in this process (it sets sys.argv for Hydra: restored afterwards), outputs in tmp."""
    monkeypatch.setenv("MEDAL_ROOT", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["medal"])
    return tmp_path


@pytest.mark.parametrize("typed", [
    ["pipeline.common=[trainer.precision=32-true]", "pipeline.stages.segment=[oracle=folder,al.budget=8]"],
    ["pipeline.common=trainer.precision=32-true", "pipeline.stages.segment=oracle=folder al.budget=8"],  # "..." in a shell
    ['pipeline.common=["trainer.precision=32-true"]', 'pipeline.stages.segment=["oracle=folder","al.budget=8"]'],
])
def test_stage_overrides_can_be_typed_as_a_person_would(typed: list[str], in_process: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Hydra itself rejects `pipeline.common=[trainer.precision=32-true]` ("no viable alternative at input")."""
    main(["pipeline", "experiment=smoke", *typed, "--cfg", "job"])
    out = capsys.readouterr().out
    assert "  common:\n  - trainer.precision=32-true\n" in out
    assert "    segment:\n    - oracle=folder\n    - al.budget=8\n    enhance:" in out


def test_an_unreadable_stage_override_names_the_quoted_form(in_process: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["pipeline", "pipeline.common=[trainer.precision=32-true"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("medal pipeline: pipeline.common=[trainer.precision=32-true: ")
    assert """'pipeline.common=["trainer.precision=32-true"]'""" in err


def test_a_misspelt_stage_override_stops_the_pipeline_before_any_stage(in_process: Path) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["pipeline", "experiment=smoke", "pipeline.common=[trainer.max_epoch=2]"])
    assert stop.value.code == 1
    (run,) = (in_process / "outputs" / "runs" / "pipeline").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "failed"
    assert metrics["error"].startswith("pipeline.common: trainer.max_epoch=2 matches no key of any stage's config")
    assert not (in_process / "outputs" / "data").exists()  # not even the phantoms were generated
