"""The task wrapper: one Hydra app per task, metrics.json always written, failures never kill a multirun.

A task is a plain function `fn(cfg) -> dict[str, float]`; `hydra_task("boneage")(fn)` makes it a
Hydra `main()` with `conf/boneage.yaml` as primary config; `main.run` stays the bare function.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from medal.config import CONF_DIR
from medal.errors import MedalError
from medal.loggers import summarize_run
from medal.runs import Reused, read_metrics, write_metrics

log = logging.getLogger("medal")

TaskFn = Callable[[DictConfig], dict[str, Any] | None]


def _is_worker_rank() -> bool:
    """A DDP process other than global rank 0: it must not overwrite rank 0's metrics.json.

    Lightning's own launcher sets only LOCAL_RANK / NODE_RANK in the ranks it starts (torchrun and SLURM set
    RANK); the strategy records the global rank in `rank_zero_only.rank` once it has set up, so that is read.
    """
    from pytorch_lightning.utilities import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or os.environ.get("RANK", "0")) != 0


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _sweeper_optimises() -> bool:
    """A multirun whose sweeper reads the returned value (Optuna, Nevergrad, ...; not the basic grid sweeper)."""
    return _in_multirun() and not str(HydraConfig.get().sweeper._target_).endswith("BasicSweeper")


def finish_loggers(metrics: dict[str, Any], failed: bool) -> None:
    """Copy the final metrics and status into an open W&B run, then close it, so metrics.json and W&B
    agree and a sweep's next run starts clean."""
    summarize_run(metrics, "failed" if failed else "ok")
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=1 if failed else 0)


def run_task(fn: TaskFn, cfg: DictConfig) -> float | None:
    """Run `fn`, write metrics.json (status ok/failed), return `cfg.optimized_metric` for sweepers."""
    out_dir = Path(cfg.paths.output_dir)
    started = time.perf_counter()
    try:
        returned = fn(cfg)
        metrics = dict(returned or {})
    except MedalError as err:
        log.error("%s", err)
        write_metrics(out_dir, {}, status="failed", error=str(err))
        finish_loggers({}, failed=True)
        if _in_multirun():
            return None
        raise SystemExit(1) from None
    except Exception as err:
        log.exception("run failed: %s", err)
        write_metrics(out_dir, {}, status="failed", error=f"{type(err).__name__}: {err}")
        finish_loggers({}, failed=True)
        if _in_multirun():
            return None
        raise
    if isinstance(returned, Reused) and _finished_ok(out_dir):
        log.info("%s: finished by an earlier run; skipped, its metrics.json is kept", out_dir)
        return optimized_value(read_metrics(out_dir), cfg.get("optimized_metric"))
    metrics.setdefault("time/run_s", time.perf_counter() - started)
    if _is_worker_rank():
        return None
    write_metrics(out_dir, metrics)
    finish_loggers(metrics, failed=False)
    log.info("metrics written to %s", out_dir / "metrics.json")
    return optimized_value(metrics, cfg.get("optimized_metric"))  # optional: set by tasks a sweeper may tune


def _finished_ok(out_dir: Path) -> bool:
    """The folder's metrics.json says the run finished (status ok)."""
    try:
        return read_metrics(out_dir).get("status") == "ok"
    except (OSError, ValueError):
        return False


def optimized_value(metrics: dict[str, Any], key: str | None) -> float | None:
    """`metrics[key]` for the sweeper (None when no key is set, or the run produced the key without a value).

    A key the run's metrics lack is a misspelt `optimized_metric` (or a task that cannot be tuned on it). Where
    a sweeper optimises the value (Optuna), it would record every trial as a failure and go on: the sweep
    stops here instead, in one line naming the key and the keys there are (SystemExit, which the sweeper does
    not catch; this run's metrics.json is written first, so its work is kept). Where nobody reads the value
    (a single run, the basic grid sweeper) it is one warning line.
    """
    if not key:
        return None
    if key not in metrics:
        message = (f"optimized_metric={key}: this run's metrics have no such key; "
                   f"choose one of: {', '.join(sorted(metrics))}")
        if _sweeper_optimises():
            log.error("%s", message)
            raise SystemExit(1)
        log.warning("%s", message)
        return None
    value = metrics[key]
    return None if value is None else float(value)


def hydra_task(config_name: str) -> Callable[[TaskFn], Callable[[], Any]]:
    """Decorator making `fn(cfg)` the Hydra app of a task with primary config `conf/<config_name>.yaml`."""

    def wrap(fn: TaskFn) -> Callable[[], Any]:
        @hydra.main(version_base="1.3", config_path=CONF_DIR, config_name=config_name)
        def main(cfg: DictConfig) -> float | None:
            return run_task(fn, cfg)

        main.__doc__ = fn.__doc__
        main.config_name = config_name  # the primary config, for checks before Hydra starts (medal.cli)
        main.run = fn  # the bare task function, for callers that compose configs themselves (pipeline)
        return main

    return wrap


def task_function(name: str) -> TaskFn:
    """The bare function of task `name` (e.g. "boneage"), as registered in `medal.tasks.TASKS`."""
    import importlib

    from medal.tasks import TASKS

    return importlib.import_module(TASKS[name][0]).main.run
