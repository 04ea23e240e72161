"""The scale benchmark's driver: which (stage, n) to measure, their fixtures, the child processes, the cache.

Each result is kept as `<root>/results/<stage>/n<n>.json` the moment it is measured, so a rerun measures only what
is missing (or what `--force` names) and a killed run loses at most the measurement in flight. A stage's fixtures
(the phantoms, the layouts of hard links, another stage's output such as the image cache or the bone age run) are
made before its child starts and are not timed. A size whose peak memory the smaller sizes already predict above
`memory_limit` is not run: its result says so and the report extrapolates it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medal.atomic import write_json
from medal.scale import fixtures, stages
from medal.scale.context import Ctx
from medal.scale.fit import extrapolate_memory
from medal.scale.measure import run_child

log = logging.getLogger("medal.scale")

GIB = 2**30
MEMORY_LIMIT = 8 * GIB  # the machine is shared: no measurement may be predicted to hold more than this
TIMEOUT_S = 4 * 3600
GROWTH_SEEN = 256 * 2**20  # bytes above the baseline before a memory law predicts anything


def result_path(root: Path, stage: str, n: int) -> Path:
    return root / "results" / stage / f"n{n}.json"


def load_results(root: Path, folder: str = "results") -> dict[str, list[dict[str, Any]]]:
    """Every saved result by stage, sorted by n."""
    out: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((root / folder).glob("*/n*.json")):
        out.setdefault(path.parent.name, []).append(json.loads(path.read_text()))
    return {k: sorted(v, key=lambda r: r["n"]) for k, v in out.items()}


def sizes_of(stage: stages.Stage, quick: bool) -> tuple[int, ...]:
    return stage.quick if quick else stage.sizes


def predicted_peak(root: Path, stage: str, n: int) -> float | None:
    """The peak memory the sizes already measured predict at n (None with fewer than two, or while the work adds
    less than `GROWTH_SEEN` to the process: a law fitted on noise would refuse sizes for nothing)."""
    done = [r for r in load_results(root).get(stage, []) if r["n"] < n and r.get("ok")]
    if len(done) < 2:
        return None
    m = [r["measurement"] for r in done]
    if m[-1]["work_peak_anon"] - (m[-1]["baseline_anon"] or 0) < GROWTH_SEEN:
        return None
    return extrapolate_memory([r["n"] for r in done], [x["baseline_anon"] or 0 for x in m],
                              [x["work_peak_anon"] for x in m], n)


class Runner:
    """Measures (stage, n) pairs under `root`, preparing what each needs."""

    def __init__(self, root: Path, quick: bool, force: set[str], script: Path, shared: Path | None = None) -> None:
        self.root, self.quick, self.force, self.script, self.shared = root, quick, force, script, shared
        self.ctx = Ctx("runner", 0, root, root / "scratch", root / "unused", quick=quick, shared=shared)

    # -- fixtures ---------------------------------------------------------------------------------------------
    def base(self) -> Path:
        from medal.data.phantom import generate_dataset

        base = self.ctx.base()
        n, size = (stages.QUICK_BASE, stages.QUICK_BASE_SIZE) if self.quick else (stages.BASE, stages.BASE_SIZE)
        if not (base / "phantoms.csv").is_file():
            print(f"[fixture] {n} distinct phantoms at {size} px -> {base}", flush=True)
            generate_dataset(base, n=n, seed=0, image_size=size, workers=2, progress=False)
        return base

    def layout(self, n: int, extras: bool = True) -> Path:
        target = self.ctx.layout(n, extras)
        if not (target / fixtures.DONE).is_file():
            print(f"[fixture] layout of {n} training images ({'with' if extras else 'without'} masks/gold/bones) "
                  f"-> {target}", flush=True)
        return fixtures.scaled_layout(self.base(), target, n, extras)

    def rois(self, n: int) -> Path:
        from medal.data.phantom.rois import true_mask_rois

        size = 64 if self.quick else stages.GAN_SIZE
        base_rois = true_mask_rois(self.base(), self.ctx.fixtures / "work" / "base", size, progress=False)
        table = fixtures.layout_table(self.layout(n))
        return fixtures.linked_folder(base_rois, self.ctx.fixtures / "rois" / f"n{n}", table["id"].tolist(),
                                      table["source_id"].tolist())

    def prepare(self, stage: stages.Stage, n: int) -> str | None:
        """Make the fixtures `stage` needs at n; the reason it cannot run there, or None."""
        for need in stage.needs:
            if need == "layout":
                self.layout(n)
            elif need == "raw_layout":
                self.layout(n, extras=False)
            elif need == "small_layout":
                self.layout(stages.small(self.ctx))
            elif need == "rois":
                self.rois(n)
            elif need == "seg_cache":
                self.layout(n)
                print(f"[fixture] segmentation caches of the layout of {n}, seeded from the base's", flush=True)
                stages.seed_seg_cache(Ctx("seg_cache", n, self.root, self.root / "scratch", self.root / "unused",
                                          quick=self.quick, shared=self.shared))
            elif need == "archive":
                fixtures.archive_folder(self.base(), self.ctx.fixtures / "archive" / f"n{n}", n)
            elif need in ("runs", "wandb"):
                from medal.scale import runs

                seed = runs.seed_run(self.ctx.fixtures / "seed_run", self.base(), self.quick)
                maker = runs.run_folders if need == "runs" else runs.wandb_runs
                maker(seed, self.ctx.fixtures / need / f"n{n}", n)
            elif need in stages.STAGES:
                producer = stages.STAGES[need]
                if need == "export":  # predict needs a bundle, any bundle
                    if not any((self.ctx.fixtures / "bundle").glob("n*/bundle.json")):
                        self.measure(producer, sizes_of(producer, self.quick)[0])
                    continue
                if n > max(sizes_of(producer, self.quick)):  # a producer is measured up to its own largest size
                    return f"needs stage {need} at n={n}, which is measured up to {max(sizes_of(producer, self.quick))}"
                if not _ok(result_path(self.root, need, n)):
                    self.measure(producer, n)
            else:
                raise ValueError(f"stage {stage.name}: unknown fixture {need!r}")
        return None

    # -- measurements -----------------------------------------------------------------------------------------
    def run(self, names: list[str], ns: list[int] | None) -> None:
        for name in names:
            stage = stages.STAGES[name]
            for n in (ns or sizes_of(stage, self.quick)):
                path = result_path(self.root, name, n)
                if _ok(path) and name not in self.force:
                    print(f"[cached] {name} n={n}: {_line(json.loads(path.read_text()))}", flush=True)
                    continue
                if path.is_file() and name not in self.force and json.loads(path.read_text()).get("skipped"):
                    print(f"[cached] {name} n={n}: skipped ({json.loads(path.read_text())['skipped']})", flush=True)
                    continue
                peak = predicted_peak(self.root, name, n)
                if peak is not None and peak > MEMORY_LIMIT:
                    why = (f"the smaller sizes predict a peak of {peak / GIB:.1f} GiB, above this shared machine's "
                           f"{MEMORY_LIMIT / GIB:.1f} GiB limit")
                    write_json(path, {"stage": name, "n": n, "ok": False, "skipped": why,
                                      "predicted_peak_anon": peak, "date": _now()}, indent=1)
                    print(f"[skip] {name} n={n}: {why}", flush=True)
                    continue
                why = self.prepare(stage, n)
                if why:
                    write_json(path, {"stage": name, "n": n, "ok": False, "skipped": why, "date": _now()}, indent=1)
                    print(f"[skip] {name} n={n}: {why}", flush=True)
                    continue
                self.measure(stage, n)

    def measure(self, stage: stages.Stage, n: int) -> dict[str, Any]:
        out = self.root / "scratch" / stage.name / f"n{n}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        report = out.parent / f"n{n}.report.json"
        argv = [sys.executable, str(self.script), "--child", stage.name, "--n", str(n), "--root", str(self.root),
                "--out", str(out), "--result", str(report)] + (["--quick"] if self.quick else []) + \
            (["--fixtures", str(self.shared)] if self.shared else [])
        env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}
        print(f"[run] {stage.name} n={n} ...", flush=True)
        m = run_child(argv, report, out.parent / f"n{n}.log", env=env, timeout=TIMEOUT_S)
        ok = m.returncode == 0 and bool(m.report)
        record = {"stage": stage.name, "n": n, "ok": ok, "measurement": m.to_json(), "report": m.report,
                  "date": _now(), "commit": _commit(), "quick": self.quick}
        write_json(result_path(self.root, stage.name, n), record, indent=1)
        shutil.rmtree(out, ignore_errors=True)
        print(f"[{'done' if ok else 'FAILED'}] {stage.name} n={n}: {_line(record)}", flush=True)
        if not ok:
            print(m.stderr_tail, flush=True)
        return record


def _ok(path: Path) -> bool:
    return path.is_file() and bool(json.loads(path.read_text()).get("ok"))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _line(record: dict[str, Any]) -> str:
    """One progress line: items, seconds (projected), items/s, peak memory above baseline, disk."""
    if not record.get("ok"):
        return record.get("skipped") or f"failed (exit {record['measurement']['returncode']})"
    r, m = record["report"], record["measurement"]
    grow = (m["work_peak_anon"] - (m["baseline_anon"] or 0)) / GIB
    proj = f" (projected {r['projected_s']:.1f} s)" if r.get("prefix") else ""
    rate = r["items"] / r["projected_s"] if r["projected_s"] else float("nan")
    return (f"{r['items']} items in {r['seconds']:.1f} s{proj}, {rate:.3g} items/s; peak {m['work_peak_anon'] / GIB:.2f}"
            f" GiB (+{grow:.2f} over baseline), disk {r['disk_bytes'] / GIB:.2f} GiB; child wall {m['wall_s']:.0f} s")


def child_main(stage: str, n: int, root: Path, out: Path, result: Path, quick: bool,
               shared: Path | None = None) -> None:
    """In the child: run one stage at one n and write its report (the parent measures the process)."""
    logging.basicConfig(level=logging.WARNING)
    ctx = Ctx(stage, n, root, out, result, quick=quick, shared=shared)
    started = time.perf_counter()
    report = stages.STAGES[stage].fn(ctx)
    report["child_s"] = time.perf_counter() - started
    try:
        import torch

        if torch.cuda.is_available():
            report["gpu_peak_bytes"] = int(torch.cuda.max_memory_allocated())
    except ImportError:
        pass
    write_json(result, report, indent=1)
