"""The GPU check (`medal.gpucheck`, `scripts/gpu_check.py`): its time boxes, its record, that every full-size
config it runs composes (so a GPU lease is not lost to a typo), and — slow — the whole check at tiny sizes on the
CPU as a minimal install runs it."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from helpers.minimal_install import run_minimal
from torch.utils.data import DataLoader, TensorDataset

from medal.gpucheck import check, pipeline_rows, segment_rows
from medal.gpucheck.boneage_rows import _overrides
from medal.gpucheck.context import Context
from medal.gpucheck.enhance_rows import _config as gan_config
from medal.gpucheck.record import Row, markdown, write_record
from medal.gpucheck.segment_rows import _setup as segment_setup
from medal.gpucheck.sizes import FULL, TINY, Sizes
from medal.gpucheck.timing import Budget, StepTimer, run_row
from medal.pipeline.plan import StageBuilder, compose_task_config

CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parents[1]


def _context(tmp_path: Path, sizes: Sizes, accelerator: str = "gpu") -> Context:
    device = torch.device("cuda" if accelerator == "gpu" else "cpu")
    return Context(device, accelerator, "bf16-mixed", sizes, tmp_path / "work", None, phantoms=tmp_path / "phantoms")


def test_a_failing_row_is_recorded_and_the_next_one_runs() -> None:
    budget = Budget(60.0)

    def broken(deadline: float) -> Row:
        raise ValueError("bad input\nsecond line")

    failed = run_row("broken", budget, 10.0, CPU, broken)
    fine = run_row("fine", budget, 10.0, CPU, lambda deadline: Row("", 2.0, "img/s"))
    assert (failed.status, failed.reason, failed.value) == ("failed", "ValueError: bad input", None)
    assert (fine.status, fine.name, fine.value) == ("ok", "fine", 2.0)


def test_a_row_gets_no_time_once_the_budget_is_spent() -> None:
    called = []
    spent = Budget(10.0, reserve_s=0.0, started=time.perf_counter() - 20.0)
    row = run_row("late", spent, 30.0, CPU, lambda deadline: called.append(deadline) or Row("", 1.0))
    assert row.status == "timeout" and called == []


class _Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_step_timer_stops_a_fit_at_its_deadline_but_not_before_its_minimum_steps() -> None:
    timer = StepTimer(deadline=time.perf_counter(), count=lambda batch: len(batch[0]), min_steps=3)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[timer])
    trainer.fit(_Tiny(), DataLoader(TensorDataset(torch.randn(400, 4)), batch_size=4))
    assert timer.steps == 3 and timer.stopped_early and trainer.global_step == 3
    assert timer.rate(warmup=1) > 0 and timer.step_seconds(warmup=1) > 0


def test_record_is_json_and_a_markdown_table_with_every_row(tmp_path: Path) -> None:
    rows = [Row("training", 900.0, "img/s", goal=1260.0, note="batch 256"),
            Row("pool", 12.0, "s", goal=30.0, lower_is_better=True),
            Row("broken", status="failed", reason="RuntimeError: boom"),
            Row("predict", status="skipped", reason="no such task")]
    machine = {"gpu": "Some GPU", "torch": "2.x", "python": "3.12", "mode": "full", "date": "today",
               "total_seconds": 400.0}
    json_path, md_path = write_record(tmp_path, rows, machine, ["a note"])
    payload = json.loads(json_path.read_text())
    assert [r["meets_goal"] for r in payload["rows"]] == [False, True, None, None]
    table = md_path.read_text()
    assert table == markdown(rows, machine, ["a note"])
    assert "| training | 900 img/s | ≥ 1260 img/s | **no** |" in table
    assert "| pool | 12 s | ≤ 30 s | yes |" in table
    assert "failed: RuntimeError: boom" in table and "skipped: no such task" in table and "- a note" in table


@pytest.mark.parametrize("sizes", [FULL, TINY], ids=lambda s: s.mode)
def test_every_config_the_check_runs_composes(sizes: Sizes, tmp_path: Path) -> None:
    """The full-size overrides are checked here, on a CPU: a misspelt key must not cost a GPU lease."""
    ctx = _context(tmp_path, sizes, "gpu" if sizes is FULL else "cpu")
    (ctx.phantoms / "masks").mkdir(parents=True)  # the simulated oracle checks that its masks folder exists
    for backbone in sizes.backbones:
        cfg = ctx.compose("boneage", f"x_{backbone}", _overrides(ctx, backbone))
        assert cfg.model.name == backbone and cfg.trainer.accelerator == ctx.accelerator
        assert cfg.trainer.precision == "bf16-mixed" and cfg.finetune.name == "all"
        assert cfg.trainer.get("benchmark") is (True if sizes is FULL else None)  # cuDNN autotuning on GPUs
    cfg, setup = segment_setup(ctx, "segment")
    assert setup.segment.image_size == sizes.segment_size and cfg.data.root == str(ctx.phantoms)
    if sizes is FULL:
        assert setup.segment.net["bottleneck_layers"] * setup.segment.net["growth"] == 192  # the paper's net
    assert gan_config(ctx, "gan").enhance.image_size == sizes.gan_size
    pipeline = compose_task_config("pipeline", pipeline_rows.pipeline_overrides(ctx, tmp_path / "pipeline"))
    stages = StageBuilder(pipeline).stages()  # every stage override applies to some stage and composes
    names = [s.name for s in stages]
    assert names[:3] == ["phantoms", "check_data", "segment"] and "cam" in names
    assert names[-1] == "export"  # the predict row (its own measurement) uses the bundle the pipeline exports


def test_the_plan_covers_every_measure_of_the_issue(tmp_path: Path) -> None:
    names = [name for _, name, _, _ in check.plan(_context(tmp_path, FULL))]
    wanted = ["matmul peak", "xception 299 px: training fed by medal's DataModule", "the loader alone",
              "inception_v3 299 px: training", "inception_resnet_v2 299 px: training", "pool scoring",
              "active-learning round", "GAN 512 px: training", "GAN generator 512 px: inference",
              "medal pipeline smoke", "medal predict", "torch.compile"]
    assert [w for w in wanted if not any(w in name for name in names)] == []
    assert {group for group, _, _, _ in check.plan(_context(tmp_path, FULL))} == set(check.GROUPS)


def test_the_command_refuses_cuda_where_there_is_none(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        check.parse(["--device", "cuda"])
    assert exit_info.value.code == 2 and "--device cpu --tiny" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        check.parse(["--device", "cpu", "--skip", "segmnt"])
    assert "--skip segmnt: not a group" in capsys.readouterr().err


def test_predict_row_fails_in_one_line_without_the_pipeline_s_bundle(tmp_path: Path) -> None:
    ctx = _context(tmp_path, TINY, "cpu")
    with pytest.raises(RuntimeError, match="no exported bundle"):  # run_row records it as a failed row
        pipeline_rows.predict_rate(ctx, time.perf_counter() + 10)


def test_committee_rows_build_the_committee_as_medal_segment_does(tmp_path: Path) -> None:
    """Both committee rows run at tiny sizes on the CPU, through `medal segment`'s own builders: a change to
    how a round trains or how the strategy is called fails here, in the fast suite, not first on a GPU lease."""
    ctx = _context(tmp_path, TINY, "cpu")
    (ctx.phantoms / "masks").mkdir(parents=True)  # the simulated oracle's folder must exist; it is never asked
    scoring = segment_rows.pool_scoring(ctx, time.perf_counter() + 2)
    training = segment_rows.round_training(ctx, time.perf_counter() + 2)
    assert scoring.value is not None and math.isfinite(scoring.value) and scoring.value > 0
    assert scoring.detail["strategy"] == "qbc" and scoring.detail["members"] == 3
    assert training.value is not None and training.value > 0 and training.detail["steps_timed"] >= 3


@pytest.mark.slow
def test_tiny_check_runs_every_row_on_the_cpu_of_a_minimal_install(tmp_path: Path) -> None:
    """`--device cpu --tiny` end to end, without W&B, launchers or Optuna importable, loader workers included."""
    out = tmp_path / "gpu"
    done = run_minimal("from medal.gpucheck.check import main\nraise SystemExit(main("
                       f"['--device', 'cpu', '--tiny', '--workers', '1', '--out', {str(out)!r}]))",
                       cwd=tmp_path, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    payload = json.loads((out / "gpu_check.json").read_text())
    rows = {row["name"]: row for row in payload["rows"]}
    assert len(rows) == 1 + len(check.plan(_context(tmp_path, TINY, "cpu")))  # phantoms + every planned row
    assert [(r["name"], r["status"], r["reason"]) for r in rows.values() if r["status"] != "ok"] == []
    assert all(r["value"] is not None and math.isfinite(r["value"]) and r["value"] > 0 for r in rows.values())
    smoke = next(row for name, row in rows.items() if "pipeline smoke" in name)
    assert smoke["detail"]["ptl_stages_visited"] == 5 and smoke["detail"]["segment/test/dice"] > 0.5
    table = (out / "gpu_check.md").read_text()
    assert all(f"| {name} |" in table for name in rows) and table in done.stdout
