"""`medal table`'s body: collect runs (multirun folder or W&B), write table.md/.csv/.tex and figure11.png."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medal.atomic import write_text
from medal.errors import MedalError
from medal.plotting import save_figure
from medal.tables.curves import plot_loss_curves
from medal.tables.folder_runs import RunResult, collect_runs
from medal.tables.table import METRIC_AXIS, PRESETS, Table, TableSpec, build_table
from medal.tables.wandb_runs import collect_disk_runs, collect_online_runs

log = logging.getLogger("medal.table")


def load_runs(tcfg: DictConfig) -> list[RunResult]:
    """Runs from the configured source, filtered by `table.where`."""
    source = str(tcfg.source)
    if source == "wandb":
        runs = collect_online_runs(tcfg.project, entity=tcfg.entity, group=tcfg.group,
                                   with_history=bool(tcfg.curves.enabled))
    elif source == "wandb_offline":
        if not tcfg.dir:
            raise MedalError("table.source=wandb_offline needs table.dir=FOLDER (e.g. the multirun folder)")
        runs = collect_disk_runs(tcfg.dir, group=tcfg.group)
    else:
        runs = collect_runs(source)
    where = _mapping(tcfg.where)
    return [r for r in runs if all(str(r.get(k)) == str(v) for k, v in where.items())]


def _mapping(node: Any) -> dict[str, Any]:
    """A `where` filter from the config: a dict, or null/{} for none."""
    return dict(OmegaConf.to_container(node)) if OmegaConf.is_config(node) else dict(node or {})


def table_spec(tcfg: DictConfig) -> TableSpec:
    """The preset, with any of rows/columns/metric(s)/decimals/best given in the config taking precedence."""
    if tcfg.preset is not None and tcfg.preset not in PRESETS:
        raise MedalError(f"table.preset={tcfg.preset}: unknown; use one of {sorted(PRESETS)} or null")
    changes: dict[str, Any] = {}
    if tcfg.rows:
        changes["rows"] = str(tcfg.rows)
    if tcfg.columns:
        changes["columns"] = tuple(str(c) for c in tcfg.columns)
    if tcfg.metric:
        changes["metric"] = str(tcfg.metric)
    if tcfg.metrics:
        changes["metrics"] = tuple(str(m) for m in tcfg.metrics)
    if tcfg.decimals is not None:
        changes["decimals"] = int(tcfg.decimals)
    if tcfg.best is not None:
        changes["best"] = str(tcfg.best)
    if tcfg.baselines is not None:
        changes["baselines"] = {str(k): str(v) for k, v in tcfg.baselines.items()}
    changes.update(reference_row=None if tcfg.reference is None else str(tcfg.reference),
                   all_pairs=bool(tcfg.all_pairs), pair_by=tuple(str(k) for k in tcfg.pair_by),
                   alpha=float(tcfg.alpha), resamples=int(tcfg.bootstrap))
    if tcfg.preset is None:
        if not changes.get("rows") or not changes.get("columns"):
            raise MedalError("table.preset=null needs table.rows=KEY and table.columns=[KEY,...]")
        return TableSpec(**changes)
    preset = PRESETS[tcfg.preset]
    if {"rows", "columns"} & changes.keys():  # another layout: the preset's fixed orders/published numbers no longer fit
        changes.setdefault("published", None)
        if METRIC_AXIS in (changes.get("rows"), *changes.get("columns", ())):  # no single metric per cell
            changes.setdefault("baselines", {})
    return dataclasses.replace(preset, **changes)


def write_outputs(table: Table, out_dir: Path) -> dict[str, Path]:
    """table.md / table.csv / table.tex (+ comparisons.csv when the table has paired differences), each written
    atomically."""
    paths = {}
    files = [("table.md", table.to_markdown()), ("table.csv", table.to_csv()), ("table.tex", table.to_latex())]
    if table.comparisons:
        files.append(("comparisons.csv", table.comparisons_csv()))
    for name, text in files:
        paths[name] = write_text(out_dir / name, text)
    return paths


def make_table(cfg: DictConfig) -> dict[str, float]:
    """The task body: runs -> table files (+ figure11.png) in the run dir; returns cell counts."""
    tcfg = cfg.table
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = load_runs(tcfg)
    if tcfg.compare not in (None, "paper"):
        raise MedalError(f"table.compare={tcfg.compare}: use `paper` or null")
    table = build_table(runs, table_spec(tcfg), compare=tcfg.compare == "paper")
    write_outputs(table, out_dir)
    print(table.to_markdown())
    counts = table.counts()
    log.info("%d runs -> %d cells filled, %d failed, %d missing; tables in %s", len(runs), counts["ok"],
             counts["failed"], counts["missing"], out_dir)
    if tcfg.curves.enabled:
        curves = tcfg.curves
        try:
            fig = plot_loss_curves(runs, metric=curves.metric, hue=curves.hue, panel=curves.panel,
                                   where=_mapping(curves.where), stage_key=curves.stage_key)
        except MedalError as err:  # the figure is optional: the tables above are already written
            log.warning("figure11.png not drawn: %s", err)
        else:
            save_figure(fig, out_dir / "figure11.png")
    tested = [c for c in table.comparisons if c.difference is not None]
    return {"table/runs": len(runs), "table/cells_ok": counts["ok"], "table/cells_failed": counts["failed"],
            "table/cells_missing": counts["missing"], "table/comparisons": len(tested),
            "table/differences_holding": sum(c.holds(table.spec.alpha) for c in tested)}
