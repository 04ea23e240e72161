"""The scale benchmark's record: `outputs/bench/scale.json` + `scale.md`, and the time/memory plot against n.

Per stage: what was measured at each n (seconds, projected seconds where a prefix was timed, items/s, peak
memory, its growth over the process's baseline, disk), the growth exponents of time and memory (log-log least
squares over n), and both extrapolated to the stage's targets (12,611 and 100,000 images; 1,000 and 10,000 runs
for the tables). `scale.json` also carries one `medal.bench.BenchRow` per stage (the largest n against the
smallest, measured in the same run) so `scripts/bench_summary.py` gathers it with the other benchmarks.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from medal.bench import BenchRow, write_bench
from medal.scale.fit import extrapolate, extrapolate_memory, growth_exponent, memory_law
from medal.scale.stages import STAGES

GIB = 2**30
TARGETS = (12_611, 100_000)
TABLE_TARGETS = (1_000, 10_000)
#: the paper's own figure: 3 minutes per training epoch of 12,611 images on 8 V100s
PAPER_EPOCH_S, PAPER_IMG_S = 180.0, 12_611 / 180.0


def targets(stage: str) -> tuple[int, int]:
    return TABLE_TARGETS if stage.startswith("table_") else TARGETS


def summarise(results: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One summary per stage (in `STAGES` order): points, exponents, extrapolations."""
    out = []
    for name, stage in STAGES.items():
        records = results.get(name, [])
        ok = [r for r in records if r.get("ok")]
        skipped = [r for r in records if r.get("skipped")]
        failed = [r for r in records if not r.get("ok") and not r.get("skipped")]
        points = [_point(r) for r in ok]
        ns = [p["n"] for p in points]
        times = [p["projected_s"] for p in points]
        base = [p["baseline"] for p in points]
        peaks = [p["peak"] for p in points]
        summary: dict[str, Any] = {"stage": name, "how": stage.how, "owner": stage.owner, "items": stage.items,
                                   "points": points, "skipped": [{"n": r["n"], "why": r["skipped"]} for r in skipped],
                                   "failed": [r["n"] for r in failed]}
        if points and len(stage.sizes) > 1:
            summary["time_exponent"] = growth_exponent(ns, times)
            if any(p["prefix"] for p in points):  # what was run for all n: set-up, listing, the strategy's arithmetic
                summary["measured_exponent"] = growth_exponent(ns, [p["seconds"] for p in points])
            summary["memory_exponent"], summary["memory_law"] = memory_law(ns, base, peaks)
            for target in targets(name):
                summary[f"seconds_at_{target}"] = extrapolate(ns, times, target)
                summary[f"peak_at_{target}"] = extrapolate_memory(ns, base, peaks, target)
                summary[f"extrapolated_{target}"] = target not in ns
        out.append(summary)
    return out


def _point(record: dict[str, Any]) -> dict[str, Any]:
    r, m = record["report"], record["measurement"]
    return {"n": record["n"], "items": r["items"], "seconds": r["seconds"], "projected_s": r["projected_s"],
            "prefix": r.get("prefix"), "items_per_s": r["items"] / r["projected_s"] if r["projected_s"] else None,
            "peak": m["work_peak_anon"], "baseline": m["baseline_anon"] or 0, "peak_total": m["peak_total"],
            "maxrss": m["maxrss"], "processes": m["processes"], "disk_bytes": r["disk_bytes"],
            "gpu_peak_bytes": r.get("gpu_peak_bytes"), "notes": r.get("notes", ""), "commit": record.get("commit"),
            "date": record.get("date"), "before": record.get("before"),
            "extra": {k: v for k, v in r.items() if k not in _REPORT_KEYS}}


_REPORT_KEYS = {"items", "seconds", "projected_s", "prefix", "disk_bytes", "notes", "child_s", "gpu_peak_bytes"}


def _seconds(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if value < 120:
        return f"{value:.3g} s"
    if value < 7200:
        return f"{value / 60:.3g} min"
    return f"{value / 3600:.3g} h"


def _gib(value: float | None) -> str:
    return "—" if value is None else f"{value / GIB:.2f} GiB"


def _exp(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def markdown(summaries: list[dict[str, Any]], machine: dict[str, Any], notes: str,
             before: list[dict[str, Any]] | None = None) -> str:
    """scale.md: the per-stage table (exponents, extrapolations), then every measured point."""
    lines = ["# Scale: every stage as n grows", "", notes, "",
             "| stage | n measured | time exponent | memory exponent | time at 12,611 | peak at 12,611 | "
             "time at 100,000 | peak at 100,000 |", "|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        if not s["points"] or "time_exponent" not in s:
            continue
        t1, t2 = targets(s["stage"])
        mark = {t: "*" if s.get(f"extrapolated_{t}") else "" for t in (t1, t2)}
        label = s["stage"] + (f" ({t1:,}/{t2:,} runs)" if s["stage"].startswith("table_") else "") + \
            (" †" if any(p["before"] for p in s["points"]) else "")
        mem = _exp(s["memory_exponent"]) + (" (flat)" if s["memory_law"] == "flat" else "")
        sizes = ", ".join(f"{p['n']:,}" for p in s["points"])
        texp = _exp(s["time_exponent"]) + (f" ({_exp(s['measured_exponent'])} measured part)"
                                          if s.get("measured_exponent") is not None else "")
        lines.append(f"| {label} | {sizes} | {texp} | "
                     f"{mem} | {_seconds(s[f'seconds_at_{t1}'])}{mark[t1]} | {_gib(s[f'peak_at_{t1}'])}{mark[t1]} | "
                     f"{_seconds(s[f'seconds_at_{t2}'])}{mark[t2]} | {_gib(s[f'peak_at_{t2}'])}{mark[t2]} |")
    lines += ["", "\\* extrapolated from the measured sizes (the power law of the exponent, anchored at the largest "
              "n; memory: the baseline plus the growth above it). Time is the whole job's where a prefix was timed or a "
              "stand-in network ran (the real networks' seconds per image added); the exponent of what ran for every "
              "n (set-up, listing, the strategy's own arithmetic) is in brackets.", ""]
    befores = sorted({p["before"] for s in summaries for p in s["points"] if p["before"]})
    lines += [f"† measured {b}" for b in befores] + ([""] if befores else [])
    lines += ["## Every measurement", "",
              "| stage | n | items | seconds | projected | items/s | peak (anon) | above baseline | RSS incl. file "
              "pages | disk | how |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        for p in s["points"]:
            lines.append(f"| {s['stage']} | {p['n']:,} | {p['items']:,} | {_seconds(p['seconds'])} | "
                         f"{_seconds(p['projected_s']) if p['prefix'] else ''} | "
                         f"{p['items_per_s']:.3g} | {_gib(p['peak'])} | {_gib(p['peak'] - p['baseline'])} | "
                         f"{_gib(p['peak_total'])} | {_gib(p['disk_bytes'])} | {p['prefix'] or p['notes']}"
                         f"{' †' if p['before'] else ''} |")
        for k in s["skipped"]:
            lines.append(f"| {s['stage']} | {k['n']:,} | — | not run | | | | | | | {k['why']} |")
        for n in s["failed"]:
            lines.append(f"| {s['stage']} | {n:,} | — | failed | | | | | | | see outputs/bench/scale/scratch logs |")
    lines += ["", "## What each stage runs", ""]
    lines += [f"- **{s['stage']}**: {s['how']}" + (f" (fixed on branch `{s['owner']}`)" if s["owner"] else "")
              for s in summaries]
    lines += ["", f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, {machine['date']}.", ""]
    return "\n".join(lines)


def write_record(root: Path, results: dict[str, list[dict[str, Any]]], notes: str, out_dir: Path | None = None,
                 plot: Path | None = None) -> Path:
    """<root's name>.json (BenchRows + every summary) and .md under `out_dir` (default outputs/bench): scale.json
    for outputs/bench/scale; the plot."""
    summaries = summarise(results)
    rows = []
    for s in summaries:
        pts = s["points"]
        if len(pts) < 2:
            continue
        lo, hi = pts[0], pts[-1]
        rows.append(BenchRow(f"{s['stage']}: seconds at n={hi['n']:,}", hi["projected_s"], "s",
                             f"n={lo['n']:,} (same run)", lo["projected_s"], higher_is_better=False,
                             extra={k: v for k, v in s.items() if k != "points"} | {"points": pts}))
    path = write_bench(root.name, rows, notes, out_dir=out_dir)
    from medal.bench import machine_info

    path.with_suffix(".md").write_text(markdown(summaries, machine_info(), notes))
    if plot is not None:
        plot_scale(summaries, plot)
    return path


def plot_scale(summaries: list[dict[str, Any]], path: Path) -> Path:
    """Two log-log panels, time and peak memory above baseline against n, one line per stage."""
    import matplotlib.pyplot as plt

    from medal.plotting import save_figure

    shown = [s for s in summaries if len(s["points"]) >= 2]
    fig, axes = plt.subplots(1, 2, figsize=(13, 6))
    cmap = plt.get_cmap("tab20")
    for i, s in enumerate(shown):
        ns = [p["n"] for p in s["points"]]
        colour, style = cmap(i % 20), "-" if i < 20 else "--"
        axes[0].plot(ns, [p["projected_s"] for p in s["points"]], style, marker="o", ms=3, color=colour,
                     label=s["stage"])
        axes[1].plot(ns, [max(p["peak"] - p["baseline"], 2**20) / GIB for p in s["points"]], style, marker="o", ms=3,
                     color=colour, label=s["stage"])
    for ax, title, unit in ((axes[0], "time (projected where a prefix was timed)", "seconds"),
                            (axes[1], "peak memory above the process's baseline", "GiB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("n (images; runs for the tables)")
        ax.set_ylabel(unit)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.axvline(12_611, color="grey", lw=0.8, ls=":")
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return save_figure(fig, path)
