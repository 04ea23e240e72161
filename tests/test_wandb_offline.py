"""W&B offline: the logger writes into the run dir with medal's record of the run, and the disk reader recovers
config, summary, history, images from that record — the same table as the multirun-folder reader; a damaged
record, a record of another schema and a W&B run without one are refused in one line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import wandb
from helpers.fake_runs import GRID, write_multirun
from helpers.hydra_compose import compose_task
from omegaconf import OmegaConf
from PIL import Image
from pytorch_lightning.loggers import CSVLogger, WandbLogger

from medal.errors import MedalError
from medal.loggers import build_loggers, log_figure, summarize_run, wandb_logger
from medal.tables.curves import stage_boundaries
from medal.tables.folder_runs import collect_runs
from medal.tables.make import make_table
from medal.tables.table import FIGURE12, build_table
from medal.tables.wandb_runs import collect_disk_runs, read_disk_run
from medal.wandb_record import HISTORY_FILE, RECORD_DIR, RUN_FILE, SCHEMA, SUMMARY_FILE


def _flush_wandb() -> None:
    """`wandb.finish()` returns before the W&B service has written the run log; shutting the service down
    flushes it (a task's process does the same at exit)."""
    wandb.teardown()


def _offline_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("offline-run-*") if p.is_dir())


def test_build_loggers_csv_and_wandb_write_offline_to_run_dir(tmp_path: Path) -> None:
    cfg = compose_task("table", ["table.source=somewhere", "+logger=[csv,wandb]", "+experiment_name=figure12"],
                       tmp_path)
    assert set(cfg.logger) == {"csv", "wandb"}
    loggers = build_loggers(cfg)
    csv_logger, wandb_run_logger = loggers
    assert isinstance(csv_logger, CSVLogger) and isinstance(wandb_run_logger, WandbLogger)
    wandb_run_logger.log_metrics({"train/loss": 0.25, "epoch": 0}, step=0)
    png = tmp_path / "figure.png"
    Image.new("L", (16, 16), 128).save(png)
    log_figure(loggers, "figures/figure11", png)
    summarize_run({"test/mae": 3.5, "test/mae_male": None}, status="ok")
    wandb.finish()
    _flush_wandb()
    csv_logger.save()

    run_dirs = _offline_dirs(tmp_path / "run" / "wandb")
    assert len(run_dirs) == 1
    run = read_disk_run(run_dirs[0])
    assert run.status == "ok" and run.metrics["test/mae"] == 3.5 and "test/mae_male" not in run.metrics
    assert run.config["table"]["source"] == "somewhere" and run.config["task_name"] == "table"
    assert run.extra["group"] == "figure12" and run.extra["project"] == "medal"
    assert "+experiment_name=figure12" in run.overrides
    assert run.history["train/loss"].tolist() == [0.25]
    (image,) = run.extra["images"]["figures/figure11"]
    assert image.is_file() and Image.open(image).size == (16, 16)
    hparams = (tmp_path / "run" / "csv" / "hparams.yaml").read_text()
    assert "source: somewhere" in hparams


def _mirror_job_to_wandb(job_dir: Path) -> None:
    """Log a planted job the way a task run with logger=wandb does: config, per-epoch history, final summary."""
    config = __import__("yaml").safe_load((job_dir / ".hydra" / "config.yaml").read_text())
    overrides = __import__("yaml").safe_load((job_dir / ".hydra" / "overrides.yaml").read_text())
    metrics = json.loads((job_dir / "metrics.json").read_text())
    logger = wandb_logger(save_dir=job_dir, group="figure12", job_type="boneage", tags=overrides, offline=True)
    logger.log_hyperparams(config)
    history_file = job_dir / "csv" / "metrics.csv"
    if history_file.exists():
        for row in pd.read_csv(history_file).to_dict("records"):
            logger.log_metrics({k: v for k, v in row.items() if k != "step" and pd.notna(v)}, step=int(row["step"]))
    status = metrics.pop("status")
    metrics.pop("error", None)
    summarize_run(metrics, status=status)
    wandb.finish(exit_code=0 if status == "ok" else 1)


@pytest.fixture(scope="module")
def mirrored_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 planted jobs (fine-tune all/ptl x enhance x cohort), one failed, each also logged to W&B offline."""
    root = tmp_path_factory.mktemp("sweep")
    keep = {n for n, (mode, _, _) in enumerate(GRID) if mode in ("all", "ptl")}
    failed = min(keep) + 4
    write_multirun(root, failed={failed}, missing=set(range(len(GRID))) - keep)
    for job in sorted(p for p in root.iterdir() if p.is_dir()):
        _mirror_job_to_wandb(job)
    _flush_wandb()
    return root


def test_offline_reader_gives_the_folder_table(mirrored_sweep: Path) -> None:
    from_folder = collect_runs(mirrored_sweep)
    from_wandb = collect_disk_runs(mirrored_sweep, group="figure12")
    assert len(from_wandb) == len(from_folder) == 12
    folder_table = build_table(from_folder, FIGURE12, compare=True)
    wandb_table = build_table(from_wandb, FIGURE12, compare=True)
    assert wandb_table.counts() == folder_table.counts() == {"ok": 11, "failed": 1, "missing": 24 + 3 * 6}
    assert wandb_table.to_csv() == folder_table.to_csv()
    assert wandb_table.to_markdown() == folder_table.to_markdown()
    by_name = {(r.get("finetune.name"), r.get("cohort.name"), r.get("enhance.name")): r for r in from_wandb}
    for run in from_folder:
        twin = by_name[(run.get("finetune.name"), run.get("cohort.name"), run.get("enhance.name"))]
        assert twin.overrides == run.overrides
        if run.history is not None:
            assert stage_boundaries(twin.history) == stage_boundaries(run.history)
            assert twin.history["train/loss"].tolist() == pytest.approx(run.history["train/loss"].tolist())
    with pytest.raises(MedalError, match="group 'other'"):
        collect_disk_runs(mirrored_sweep, group="other")


def test_table_task_from_wandb_offline(tmp_path: Path, mirrored_sweep: Path) -> None:
    cfg = compose_task("table", ["table.source=wandb_offline", f"table.dir={mirrored_sweep}",
                                 "table.group=figure12"], tmp_path)
    counts = make_table(cfg)
    assert counts["table/cells_ok"] == 11 and counts["table/cells_failed"] == 1
    assert (tmp_path / "run" / "figure11.png").stat().st_size > 10_000


def test_a_real_task_run_reads_back_the_same_from_its_wandb_record_as_from_its_folder(tiny_phantoms: Path,
                                                                                    tmp_path: Path,
                                                                                    one_thread: None) -> None:
    """`medal boneage logger=[csv,wandb]` through the task runner: Lightning's own calls (hyper-parameters at fit
    start, step and epoch rows) reach the record, and the summary equals metrics.json."""
    from medal.boneage.experiment import run_boneage
    from medal.tasks.runner import run_task

    cfg = compose_task("boneage", ["model=tiny", "data.images=raw", "data.image_size=64", "finetune=all",
                                   "scheduler=null", "trainer.max_epochs=2", "trainer.enable_progress_bar=false",
                                   "trainer.precision=32-true", "evaluation.bootstrap=50", "evaluation.plots=false",
                                   f"data.root={tiny_phantoms}", "logger=[csv,wandb]",
                                   "+experiment_name=figure12"], tmp_path)
    run_task(run_boneage, cfg)
    _flush_wandb()
    hydra_dir = tmp_path / "run" / ".hydra"  # what Hydra's launcher writes beside a run
    hydra_dir.mkdir()
    OmegaConf.save({k: v for k, v in cfg.items() if k != "hydra"}, hydra_dir / "config.yaml", resolve=True)
    OmegaConf.save(list(cfg.hydra.overrides.task), hydra_dir / "overrides.yaml")
    (folder,) = collect_runs(tmp_path / "run")
    (logged,) = collect_disk_runs(tmp_path / "run", group="figure12")
    assert logged.status == folder.status == "ok"
    assert logged.metrics == folder.metrics and "test/mae" in logged.metrics
    assert logged.get("finetune.name") == folder.get("finetune.name") == "all"
    assert logged.get("model.name") == folder.get("model.name") == "tiny"
    assert logged.history["epoch"].tolist() == folder.history["epoch"].tolist() == [0, 1]
    for key in ("train/loss", "val/mae"):
        assert logged.history[key].tolist() == pytest.approx(folder.history[key].tolist()), key


@pytest.fixture
def offline_run(tmp_path: Path) -> Path:
    """A real offline W&B run logged through medal's logger: config, three epochs, a figure, a final summary."""
    logger = wandb_logger(save_dir=tmp_path, group="figure12", tags=["finetune=ptl"], offline=True)
    logger.log_hyperparams({"finetune": {"name": "ptl"}, "seed": 0})
    for epoch in range(3):
        logger.log_metrics({"train/loss": 1.0 / (epoch + 1), "epoch": epoch}, step=epoch)
    png = tmp_path / "figure.png"
    Image.new("L", (8, 8), 200).save(png)
    log_figure([logger], "test/figure", png)
    summarize_run({"test/mae": 7.25}, status="ok")
    wandb.finish()
    _flush_wandb()
    (run_dir,) = _offline_dirs(tmp_path)
    return run_dir


def test_the_record_is_all_the_offline_reader_needs(offline_run: Path) -> None:
    """W&B's private log is not read: with the .wandb file damaged beyond use, the run reads the same."""
    (log_file,) = offline_run.glob("run-*.wandb")
    log_file.write_bytes(b"\0" * log_file.stat().st_size)
    run = read_disk_run(offline_run)
    assert (run.status, run.metrics, run.overrides) == ("ok", {"test/mae": 7.25}, ["finetune=ptl"])
    assert run.config == {"finetune": {"name": "ptl"}, "seed": 0} and run.extra["group"] == "figure12"
    assert run.history["train/loss"].tolist() == pytest.approx([1.0, 0.5, 1 / 3])
    (image,) = run.extra["images"]["test/figure"]
    assert Image.open(image).getpixel((0, 0)) == 200


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", [RUN_FILE, SUMMARY_FILE])
def test_a_damaged_record_file_is_refused_in_one_line_naming_it(offline_run: Path, name: str) -> None:
    path = offline_run / RECORD_DIR / name
    _flip(path, 0)  # the opening brace
    with pytest.raises(MedalError, match=rf"^{re.escape(str(path))}: damaged medal W&B record \(.*\); rebuild the "
                                         r"table from the run folders \(table.source=DIR\) or rerun that job$"):
        collect_disk_runs(offline_run.parent)


def test_a_damaged_history_row_is_refused_naming_the_line_but_a_cut_off_last_row_ends_the_history(
        offline_run: Path) -> None:
    history = offline_run / RECORD_DIR / HISTORY_FILE
    rows = history.read_bytes()
    history.write_bytes(rows[:-8])  # killed while writing the last row: the history ends before it
    assert read_disk_run(offline_run).history["train/loss"].tolist() == pytest.approx([1.0, 0.5])
    history.write_bytes(rows)
    _flip(history, rows.index(b"\n") + 1)  # the first byte of the second row
    with pytest.raises(MedalError, match=rf"^{re.escape(str(history))}:2: damaged medal W&B history row"):
        read_disk_run(offline_run)


def test_a_record_of_another_schema_is_refused_in_one_line(offline_run: Path) -> None:
    path = offline_run / RECORD_DIR / RUN_FILE
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "schema": SCHEMA + 1}))
    with pytest.raises(MedalError, match=rf"^{re.escape(str(path))}: medal W&B record schema {SCHEMA + 1}, but this "
                                         rf"medal reads schema {SCHEMA}: "):
        read_disk_run(offline_run)


def test_a_killed_run_reads_as_incomplete(offline_run: Path) -> None:
    (offline_run / RECORD_DIR / SUMMARY_FILE).unlink()
    run = read_disk_run(offline_run)
    assert run.status == "incomplete" and run.metrics == {} and len(run.history) == 3


def test_a_wandb_run_logged_without_medal_is_refused_in_one_line(tmp_path: Path) -> None:
    run = wandb.init(mode="offline", dir=tmp_path, project="medal", config={"seed": 0})
    run.log({"train/loss": 1.0, "epoch": 0})
    run.finish()
    _flush_wandb()
    (run_dir,) = _offline_dirs(tmp_path)
    with pytest.raises(MedalError, match=rf"^{re.escape(str(run_dir.resolve()))}: a W&B run without medal's record "
                                         r"\(files/medal/run.json\): .*table.source=DIR\)$"):
        collect_disk_runs(tmp_path)


def test_the_wandb_extra_has_a_ceiling_that_the_tested_release_meets() -> None:
    """The record lives in W&B's run folder layout (`<run>/files/`): releases past the ceiling are untested."""
    import tomllib
    from importlib.metadata import version

    from packaging.requirements import Requirement

    extra = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["wandb"]
    (requirement,) = (Requirement(r) for r in extra)
    assert any(spec.operator == "<" for spec in requirement.specifier)
    assert requirement.specifier.contains(version("wandb"))


class _RecordedRun:
    """The attributes of `wandb.apis.public.Run` that the online reader uses, with recorded values."""

    def __init__(self, run_id: str, mode: str, state: str, summary: dict) -> None:
        self.id, self.state, self.group, self.tags = run_id, state, "figure12", [f"finetune={mode}"]
        self.config = {"finetune": {"name": mode}, "enhance": {"name": "gan"}, "cohort": {"name": "all"},
                       "_wandb": {"cli_version": "0.31.0"}}
        self.summary_metrics = summary

    def scan_history(self) -> list[dict]:
        return [{"epoch": 0, "_step": 0, "train/loss": 2.0}, {"epoch": 1, "_step": 1, "train/loss": 1.0}]


class _RecordedApi:
    def __init__(self, runs: list[_RecordedRun]) -> None:
        self.runs_ = runs
        self.calls: list[tuple] = []

    def runs(self, path: str, filters: dict | None = None) -> list[_RecordedRun]:
        self.calls.append((path, filters))
        return self.runs_


def test_online_reader_maps_states_and_summary() -> None:
    from medal.tables.wandb_runs import collect_online_runs

    api = _RecordedApi([
        _RecordedRun("a1", "ptl", "finished", {"test/mae": 7.5, "_runtime": 3, "status": "ok"}),
        _RecordedRun("b2", "all", "crashed", {"_runtime": 3}),
        _RecordedRun("c3", "above_fc", "finished", {"status": "failed"}),
    ])
    runs = collect_online_runs("medal", entity="lab", group="figure12", api=api)
    assert api.calls == [("lab/medal", {"group": "figure12"})]
    assert [r.status for r in runs] == ["ok", "failed", "failed"]
    assert runs[0].metrics == {"test/mae": 7.5} and "_wandb" not in runs[0].config
    assert runs[0].history["train/loss"].tolist() == [2.0, 1.0] and runs[0].overrides == ["finetune=ptl"]
    table = build_table(runs, FIGURE12)
    assert table.cell("ptl", ("gan", "all")).mean == 7.5
    assert table.cell("all", ("gan", "all")).state == table.cell("above_fc", ("gan", "all")).state == "failed"
    with pytest.raises(MedalError, match="has no runs"):
        collect_online_runs("medal", api=_RecordedApi([]))


def test_csv_logger_continues_the_metrics_of_a_resumed_run(tmp_path: Path) -> None:
    """Lightning's CSVLogger deletes metrics.csv when its folder is reused; a resumed run must keep it."""
    import pandas as pd

    from medal.loggers import ResumableCSVLogger

    first = ResumableCSVLogger(save_dir=str(tmp_path), name="csv", version="")
    first.log_metrics({"train/loss": 1.0, "epoch": 0}, step=0)
    first.log_metrics({"train/loss": 0.8, "epoch": 1}, step=1)
    first.save()
    resumed = ResumableCSVLogger(save_dir=str(tmp_path), name="csv", version="")
    resumed.log_metrics({"train/loss": 0.6, "epoch": 2}, step=2)
    resumed.save()
    resumed.log_metrics({"train/loss": 0.5, "val/mae": 9.0, "epoch": 3}, step=3)  # a new column rewrites the header
    resumed.save()
    frame = pd.read_csv(tmp_path / "csv" / "metrics.csv")
    assert frame["epoch"].tolist() == [0, 1, 2, 3]
    assert frame["train/loss"].tolist() == [1.0, 0.8, 0.6, 0.5]
    assert frame["val/mae"].isna().tolist() == [True, True, True, False]
