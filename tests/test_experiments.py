"""Experiment files, sweeps, launchers and the Optuna search: they compose, expand and actually run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from helpers.fake_runs import write_multirun
from helpers.hydra_compose import compose_jobs, compose_task
from helpers.scripts import load_script
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from medal.cli import main
from medal.config import CONF_DIR
from medal.models.stages import FINETUNE_MODES
from medal.tables.make import make_table
from medal.tasks import TASKS
from medal.tasks.runner import run_task

CONF = Path(CONF_DIR)
REPO = Path(__file__).resolve().parents[1]
# Each experiment file belongs to one task; a new experiment file must be registered here to be tested.
EXPERIMENT_TASKS = {"figure12": "boneage", "backbones": "boneage", "enhancers": "enhance",
                    "al_strategies": "segment", "demo": "pipeline",
                    "smoke": "pipeline", "pretrain_tiny": "pretrain", "boneage_cpu": "boneage"}
SWEEP_SIZES = {"figure12": 54, "backbones": 9, "enhancers": 4, "al_strategies": 70, "demo": None, "smoke": None,
               "pretrain_tiny": None, "boneage_cpu": None}  # None: no sweep


def sweep_jobs(cfg: DictConfig) -> list[list[str]]:
    """Expand `hydra.sweeper.params` into per-job overrides exactly as Hydra's basic sweeper does."""
    params = [f"{key}={value}" for key, value in cfg.hydra.sweeper.params.items()]
    (batch,) = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(params), None)
    return batch


def test_every_experiment_file_is_registered() -> None:
    assert {p.stem for p in (CONF / "experiment").glob("*.yaml")} == set(EXPERIMENT_TASKS)


FIGURE12_CELLS = {(m, e, c) for m in FINETUNE_MODES for e in ("gan", "none") for c in ("all", "male", "female")}


def _check_figure12_jobs(tmp_path: Path, every_job: bool) -> None:
    base = ["experiment=figure12", "model=tiny"]
    jobs = sweep_jobs(compose_task("boneage", base, tmp_path))
    assert len(jobs) == 54
    assert {tuple(o.split("=")[1] for o in job) for job in jobs} == FIGURE12_CELLS  # finetune, enhance, cohort
    # Composing is ~0.3 s a job: the fast test composes 9 jobs covering every option of every swept group.
    chosen = jobs if every_job else [jobs[i * 6 + (i % 2) * 3 + i % 3] for i in range(len(FINETUNE_MODES))]
    cells, fixed = set(), set()
    for cfg in compose_jobs("boneage", base, chosen, tmp_path):
        cells.add((cfg.finetune.name, cfg.enhance.name, cfg.cohort.name))
        fixed.add((cfg.seed, cfg.data.split.seed, cfg.data.root, cfg.model.name, cfg.experiment_name))
    assert len(cells) == len(chosen)  # distinct configs, each group option composes to itself
    assert len(fixed) == 1  # same seed, split, data and (overridden) model in every job
    if every_job:
        assert cells == FIGURE12_CELLS
    else:
        assert {c[0] for c in cells} == {c[0] for c in FIGURE12_CELLS} and len({c[1:] for c in cells}) == 6


def test_figure12_expands_to_54_distinct_runs_with_one_seed_and_split(tmp_path: Path) -> None:
    _check_figure12_jobs(tmp_path, every_job=False)


@pytest.mark.slow
def test_figure12_composes_all_54_jobs(tmp_path: Path) -> None:
    _check_figure12_jobs(tmp_path, every_job=True)


@pytest.mark.parametrize("experiment", sorted(EXPERIMENT_TASKS))
def test_experiment_composes_and_expands(experiment: str, tmp_path: Path) -> None:
    task = EXPERIMENT_TASKS[experiment]
    cfg = compose_task(task, [f"experiment={experiment}"], tmp_path)
    assert cfg.experiment_name == experiment
    if SWEEP_SIZES[experiment] is None:  # a single-run experiment (e.g. `medal pipeline experiment=demo`)
        assert not cfg.hydra.sweeper.get("params")
        return
    assert f"/multiruns/{task}/{experiment}/" in cfg.hydra.sweep.dir
    jobs = sweep_jobs(cfg)
    assert len(jobs) == SWEEP_SIZES[experiment]
    assert len({tuple(job) for job in jobs}) == len(jobs)
    first = compose_task(task, [f"experiment={experiment}", *jobs[0]], tmp_path)
    for override in jobs[0]:  # every swept key exists in the task's config and takes the job's value
        key, value = override.split("=", 1)
        node = OmegaConf.select(first, key)
        assert node is not None, f"{experiment}: {key} is not a key or group of conf/{task}.yaml"
        chosen = node.get("name") if isinstance(node, DictConfig) else node
        assert str(chosen) == value


def test_optuna_search_composes_over_existing_keys(tmp_path: Path) -> None:
    cfg = compose_task("boneage", ["hparams_search=optuna_boneage"], tmp_path)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "minimize"
    assert cfg.optimized_metric == "val/mae" and cfg.hydra.mode.name == "MULTIRUN"
    for key in sweeper.params:
        assert OmegaConf.select(cfg, key) is not None, f"search space key {key} is not in conf/boneage.yaml"


@pytest.mark.parametrize(("launcher", "target"), [
    ("joblib", "JoblibLauncher"),
    ("submitit_local", "LocalLauncher"),
    ("submitit_slurm", "SlurmLauncher"),
    ("slurm_gpu", "SlurmLauncher"),
])
def test_launchers_compose(launcher: str, target: str, tmp_path: Path) -> None:
    cfg = compose_task("table", ["table.source=x", f"hydra/launcher={launcher}"], tmp_path)
    assert cfg.hydra.launcher._target_.endswith(target)
    if launcher == "slurm_gpu":
        assert cfg.hydra.launcher.gpus_per_node == 1 and cfg.hydra.launcher.max_num_timeout == 3


def _medal(args: list[str], root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MEDAL_ROOT": str(root), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "medal", *args], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow  # two subprocess sweeps: ~15 s on an idle 2-core machine, minutes under load
def test_joblib_and_optuna_sweeps_run_a_real_task(tmp_path: Path) -> None:
    """`medal table` as the trivial app: 2 parallel joblib jobs, then a 2-trial Optuna search."""
    source = write_multirun(tmp_path / "figure12", failed={3})
    joblib_dir = tmp_path / "joblib"
    done = _medal(["table", "-m", f"table.source={source}", "table.decimals=1,2", "hydra/launcher=joblib",
                   "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={joblib_dir}"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    for job, decimals in (("0", 1), ("1", 2)):
        assert "| PTL | **10.0" in (joblib_dir / job / "table.md").read_text()
        assert f"{10.0123:.{decimals}f}" in (joblib_dir / job / "table.md").read_text()
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    for attempt in ("optuna", "optuna_again"):  # the second run continues the stored study
        optuna_dir = tmp_path / attempt
        done = _medal(["table", "-m", f"table.source={source}", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2",
                       "hydra.sweeper.direction=maximize", "+optimized_metric=table/cells_ok",
                       "table.curves.enabled=false", "table.decimals=choice(1,2,3)", f"hydra.sweep.dir={optuna_dir}",
                       f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=resumable"], tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        results = yaml.safe_load((optuna_dir / "optimization_results.yaml").read_text())
        assert results["best_value"] == 35  # 36 cells, one planted failure
        assert len([p for p in optuna_dir.iterdir() if p.is_dir() and p.name.isdigit()]) == 2
    study = optuna.load_study(study_name="resumable", storage=storage)
    assert len(study.trials) == 4 and all(t.state.name == "COMPLETE" for t in study.trials)


def _smoke_module():
    return load_script("figure12_smoke")


def test_figure12_smoke_commands_compose(tmp_path: Path) -> None:
    """Every override of the smoke run names a real key/option of its task's config."""
    steps = _smoke_module().steps(tmp_path, n=32, epochs=1, jobs=2)
    assert [args[0] for _, args in steps] == ["phantoms", "segment", "enhance", "boneage", "table", "table"]
    for name, args in steps:
        overrides = [a for a in args[1:] if a != "-m"]
        cfg = compose_task(args[0], overrides, tmp_path)  # a group option that does not exist fails here
        keys = [o.split("=", 1)[0] for o in overrides]
        plain = [k for k in keys if "/" not in k and not k.startswith("hydra") and not (CONF / k).is_dir()]
        assert [k for k in plain if OmegaConf.select(cfg, k, default="__missing__") == "__missing__"] == [], name


def test_figure12_smoke_accepts_a_full_table_with_baseline_rows_and_refuses_a_gap(tmp_path: Path) -> None:
    """The smoke's check reads `medal table`'s cell counts: the "—" of the paper column's noise-floor and
    mean-predictor cells is no gap, a failed run is."""
    check_cells = _smoke_module().check_cells
    for name, failed in (("full", set()), ("gap", {7})):
        sweep = write_multirun(tmp_path / name, failed=failed, modes=FINETUNE_MODES)
        for metrics_file in sweep.glob("*/metrics.json"):
            metrics = json.loads(metrics_file.read_text())
            metrics.update({"test/mae_floor": 3.0, "test/mae_mean_predictor": 40.0})
            metrics_file.write_text(json.dumps(metrics))
        cfg = compose_task("table", [f"table.source={sweep}", "table.compare=paper", "table.curves.enabled=false"],
                           tmp_path / f"table_{name}")
        run_task(make_table, cfg)
        table_dir = Path(cfg.paths.output_dir)
        if not failed:
            table = check_cells(table_dir)
            assert "| noise floor |" in table and "| mean predictor |" in table and "—" in table
        else:
            with pytest.raises(SystemExit, match="53 filled, 1 failed, 0 missing of 54"):
                check_cells(table_dir)


@pytest.mark.slow
def test_figure12_smoke_end_to_end(tmp_path: Path) -> None:
    """The full 54-run Figure 12 multirun on phantoms + both tables (folder and offline W&B), identical."""
    timings = _smoke_module().run_smoke(tmp_path / "smoke", n=64, epochs=1, jobs=2)
    assert set(timings) >= {"figure12", "table (folder)", "table (W&B offline)"}
    folder = tmp_path / "smoke" / "table_folder"
    assert (folder / "table.csv").read_text() == (tmp_path / "smoke" / "table_wandb" / "table.csv").read_text()
    runs = [p for p in (tmp_path / "smoke" / "sweep").iterdir() if p.is_dir() and p.name.isdigit()]
    assert len(runs) == 54
    assert (folder / "figure11.png").stat().st_size > 10_000


@pytest.mark.slow
def test_every_experiment_file_runs_one_job(tmp_path: Path) -> None:
    """Each experiment file drives its task for one (non-swept) job on tiny phantoms, 1 epoch: status ok."""
    smoke = _smoke_module()
    root = tmp_path / "exp"
    root.mkdir()
    for _, args in smoke.steps(root, n=48, epochs=1, jobs=1)[:3]:  # phantoms, segment, enhance=gan
        smoke.medal(args, root)
    # single-run experiments (demo, smoke) have their own end-to-end test (tests/test_pipeline_task.py)
    swept = sorted((e, t) for e, t in EXPERIMENT_TASKS.items() if SWEEP_SIZES[e] is not None)
    for experiment, task in swept:
        run_dir = root / "runs" / experiment
        smoke.medal([task, f"experiment={experiment}", *smoke.tiny(task, n=48, epochs=1),
                     f"hydra.run.dir={run_dir}"], root)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["status"] == "ok", (experiment, metrics.get("error"))


def test_an_optuna_search_with_a_misspelt_metric_stops_after_its_first_trial(tmp_path: Path) -> None:
    """Not every trial recorded as a failure: one trial, then one line naming the key and exit status 1."""
    source = write_multirun(tmp_path / "figure12")
    sweep = tmp_path / "optuna"
    done = _medal(["table", "-m", f"table.source={source}", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=3",
                   "+optimized_metric=table/cells_okk", "table.curves.enabled=false", "table.decimals=choice(1,2,3)",
                   f"hydra.sweep.dir={sweep}"], tmp_path)
    assert done.returncode == 1
    assert [p.name for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()] == ["0"]
    log = (sweep / "0" / "table.log").read_text()
    assert "optimized_metric=table/cells_okk: this run's metrics have no such key; choose one of: " in log
    assert "table/cells_ok" in log.rsplit("choose one of: ", 1)[1]


TASK_OVERRIDES = {"cam": ["ckpt=x.ckpt"], "table": ["table.source=x"], "check-data": [], "phantoms": [],
                  "segment": [], "enhance": [], "boneage": [], "pipeline": [], "export": [],
                  "predict": ["bundle=b", "input=x"], "pretrain": [], "annotate": [],
                  "recalibrate": ["bundle=b", "cases=x"]}  # the keys a task requires


def test_every_task_is_listed_here() -> None:
    assert set(TASK_OVERRIDES) == set(TASKS)


@pytest.mark.parametrize("args", [[task, *TASK_OVERRIDES[task]] for task in sorted(TASK_OVERRIDES)]
                         + [[task, *TASK_OVERRIDES[task], f"experiment={experiment}"]
                            for experiment, task in sorted(EXPERIMENT_TASKS.items())])
def test_cfg_job_prints_every_task_and_experiment_resolved(args: list[str], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """`medal <task> [experiment=...] --cfg job --resolve`: composes, and every interpolation resolves."""
    monkeypatch.setenv("MEDAL_ROOT", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["medal"])  # medal.cli sets it for Hydra
    main([*args, "--cfg", "job", "--resolve"])
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["task_name"] == args[0].replace("-", "_")
    if args[0] == "cam":  # cam's data settings are null: they come from the checkpoint's run record
        assert shown["data"]["work_dir"] is None and shown["data"]["image_size"] is None
    elif "data" in shown:
        assert shown["data"]["work_dir"].startswith(f"{tmp_path}/outputs/work/{shown['data']['name']}_")
    assert not (tmp_path / "outputs").exists()
