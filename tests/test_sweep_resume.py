"""A bone age sweep through `hydra/launcher=submitit_local` (the SLURM launcher's local twin: the same submitit
job pickling, job folders and result collection, on this machine), killed while its second job trains and rerun
in the same sweep folder: the finished job is skipped untouched, the killed one resumes from its last.ckpt. The
same for a k-fold cross-validation's fold sweep through the basic launcher, whose last fold pools the folds."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers.bundles import RAW_BONEAGE

from medal.runs import read_metrics

LONG = 10  # epochs of the second job: long enough to be killed while it trains


def _launch(args: list[str], root: Path, log: Path) -> subprocess.Popen:
    """`medal ARGS` in a session of its own, so killing its process group kills the sweep and every job."""
    env = {**os.environ, "MEDAL_ROOT": str(root), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "medal", *args], cwd=root, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _stamps(job: Path) -> dict[str, tuple[int, str]]:
    """(mtime, sha256) of a job's metrics.json and checkpoints."""
    files = [job / "metrics.json", *sorted((job / "checkpoints").glob("*.ckpt"))]
    return {f.name: (f.stat().st_mtime_ns, hashlib.sha256(f.read_bytes()).hexdigest()) for f in files}


@pytest.mark.slow  # two sweeps of two tiny bone age jobs: about a minute idle, a few minutes under load
def test_a_killed_submitit_sweep_reruns_in_its_folder_skipping_the_finished_job(tiny_phantoms: Path,
                                                                                  tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = ["boneage", "-m", *[a for a in RAW_BONEAGE if not a.startswith("trainer.max_epochs")],
            f"data.root={tiny_phantoms}", f"trainer.max_epochs=2,{LONG}", "hydra/launcher=submitit_local",
            f"hydra.sweep.dir={sweep}"]
    log = tmp_path / "sweep.log"
    first = _launch(args, tmp_path, log)
    done, training = sweep / "0" / "metrics.json", sweep / "1" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 900
    while not (done.is_file() and training.is_file()):
        assert first.poll() is None, f"the sweep ended before it could be killed: {log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, f"no finished first job and training second job: {log.read_text()[-2000:]}"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # the sweep, its submitit controller and both jobs
    first.wait()
    assert not (sweep / "1" / "metrics.json").exists(), "the second job finished before the kill; raise LONG"
    killed_at = torch.load(training, map_location="cpu", weights_only=True)["epoch"]
    assert killed_at < LONG - 1
    assert read_metrics(sweep / "0")["status"] == "ok"
    finished = _stamps(sweep / "0")

    started = time.monotonic()
    second = _launch(args, tmp_path, log)
    assert second.wait(timeout=900) == 0, log.read_text()[-3000:]
    rerun_s = time.monotonic() - started

    assert _stamps(sweep / "0") == finished  # the finished job's metrics.json and checkpoints were not rewritten
    job_log = (sweep / "0" / "boneage.log").read_text()
    assert "already holds this run, finished" in job_log and "skipped, its metrics.json is kept" in job_log
    resumed = read_metrics(sweep / "1")
    assert resumed["status"] == "ok" and resumed["train/epochs"] == LONG
    assert "resuming from" in (sweep / "1" / "boneage.log").read_text()
    last = torch.load(training, map_location="cpu", weights_only=True)
    assert last["epoch"] == LONG - 1
    print(f"killed in epoch {killed_at + 2} of {LONG}; rerun took {rerun_s:.0f} s")


FOLD_EPOCHS = 8  # each fold's epochs: long enough to kill fold 1 while it trains


@pytest.mark.slow  # two sweeps of three tiny fold runs: about a minute idle, a few minutes under load
def test_a_killed_fold_sweep_resumes_without_redoing_finished_folds_and_the_last_fold_pools(tiny_phantoms: Path,
                                                                                           tmp_path: Path) -> None:
    """`medal boneage -m cv.folds=3 'cv.fold=range(3)'` (the basic launcher: one job after another) killed while
    fold 1 trains, then rerun in its sweep folder: fold 0 is not redone, fold 1 resumes, fold 2 trains and pools."""
    sweep = tmp_path / "sweep"
    args = ["boneage", "-m", *[a for a in RAW_BONEAGE if not a.startswith("trainer.max_epochs")],
            f"data.root={tiny_phantoms}", f"trainer.max_epochs={FOLD_EPOCHS}", "cv.folds=3", "cv.fold=range(3)",
            f"hydra.sweep.dir={sweep}"]
    log = tmp_path / "sweep.log"
    first = _launch(args, tmp_path, log)
    done, training = sweep / "0" / "metrics.json", sweep / "1" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 900
    while not (done.is_file() and training.is_file()):
        assert first.poll() is None, f"the sweep ended before it could be killed: {log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, f"no finished fold 0 and training fold 1: {log.read_text()[-2000:]}"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert not (sweep / "1" / "metrics.json").exists(), "fold 1 finished before the kill; raise FOLD_EPOCHS"
    assert not (sweep / "2").exists() and not list(sweep.glob("cv_*"))
    killed_at = torch.load(training, map_location="cpu", weights_only=True)["epoch"]
    finished = _stamps(sweep / "0")

    second = _launch(args, tmp_path, log)
    assert second.wait(timeout=900) == 0, log.read_text()[-3000:]
    assert _stamps(sweep / "0") == finished  # fold 0's metrics.json and checkpoints were not rewritten
    assert "already holds this run, finished" in (sweep / "0" / "boneage.log").read_text()
    assert "resuming from" in (sweep / "1" / "boneage.log").read_text()
    metrics = [read_metrics(sweep / str(fold)) for fold in range(3)]
    assert [m["status"] for m in metrics] == ["ok"] * 3 and metrics[1]["train/epochs"] == FOLD_EPOCHS
    pooled = sorted(sweep.glob("cv_*"))
    assert len(pooled) == 1, pooled
    cv = read_metrics(pooled[0])
    assert cv["cv/folds"] == 3 and cv["cv/n"] == sum(m["oof/n"] for m in metrics)
    print(f"fold 1 killed in epoch {killed_at + 2} of {FOLD_EPOCHS}")
