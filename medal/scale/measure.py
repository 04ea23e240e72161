"""Measuring one stage at one size in its own process: wall time, peak memory, disk written.

Each measurement runs as a child process, so its peak memory is its own and not what an earlier measurement left
behind. The parent polls `/proc` while the child runs and sums, over the child and every process it started
(loader workers, process pools), the *anonymous* resident memory (`RssAnon` + `RssShmem`: what the machine must
hold; file pages of a memory-mapped cache are counted apart, as `RssFile`, because the kernel can drop and reread
them). While the child has children of its own, each process's proportional share is read instead
(`smaps_rollup`'s `Pss_Anon` + `Pss_Shmem`): forked workers share their parent's pages until they write them, and
summing their resident sizes would count those pages once per worker. The child marks the moment its work starts (after imports and set-up) by creating `<result>.start`: the
memory the tree holds then is the *baseline*, and the growth a stage shows with n is its peak above it. `wait4`
gives the child's own `ru_maxrss` (every page it ever held, file pages included) as a cross-check.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

POLL_S = 0.1  # seconds between samples of the process tree's memory
TREE_S = 0.5  # seconds between scans of /proc for new descendants


@dataclass
class Sample:
    """Resident memory of a process tree at one moment, in bytes: anonymous (+ shared) and file-backed."""

    anon: int = 0
    file: int = 0

    @property
    def total(self) -> int:
        return self.anon + self.file


def read_status(pid: int, shared: bool = False) -> Sample | None:
    """Resident memory of one process (None when it has gone): `RssAnon + RssShmem` and `RssFile` from its
    status, or with `shared` its proportional share of each (`Pss_Anon + Pss_Shmem`, `Pss_File`), which costs the
    kernel a walk of its mappings and is read only while the tree has more than one process."""
    name, keys = (("smaps_rollup", ("Pss_Anon", "Pss_File", "Pss_Shmem")) if shared
                  else ("status", ("RssAnon", "RssFile", "RssShmem")))
    try:
        text = Path(f"/proc/{pid}/{name}").read_text()
    except OSError:
        return None
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in keys:
            values[key] = int(rest.split()[0]) * 1024
    anon, file, shmem = (values.get(k, 0) for k in keys)
    return Sample(anon + shmem, file)


def descendants(root: int) -> set[int]:
    """`root` and every live process below it (one scan of /proc: parent ids from `/proc/<pid>/stat`)."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat[stat.rfind(")") + 2:].split()[1])
    tree, grew = {root}, True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return tree


@dataclass
class Peaks:
    """What the poller saw: peaks over the child's whole life and from the start of its work."""

    peak_anon: int = 0
    peak_total: int = 0
    baseline_anon: int | None = None
    work_peak_anon: int = 0
    work_peak_total: int = 0
    samples: int = 0
    processes: int = 1


class TreePoller(threading.Thread):
    """Samples a process tree's memory until `stop()`; `start_file` marks the start of the measured work."""

    def __init__(self, pid: int, start_file: Path) -> None:
        super().__init__(daemon=True)
        self.pid, self.start_file = pid, start_file
        self.peaks = Peaks()
        self._halt = threading.Event()

    def stop(self) -> Peaks:
        self._halt.set()
        self.join()
        return self.peaks

    def run(self) -> None:
        tree, scanned, started = {self.pid}, 0.0, False
        while not self._halt.is_set():
            now = time.monotonic()
            if now - scanned > TREE_S:
                tree, scanned = descendants(self.pid), now
                self.peaks.processes = max(self.peaks.processes, len(tree))
            sample = Sample()
            for pid in tree:
                part = read_status(pid, shared=len(tree) > 1)
                if part is not None:
                    sample.anon += part.anon
                    sample.file += part.file
            p = self.peaks
            p.samples += 1
            p.peak_anon, p.peak_total = max(p.peak_anon, sample.anon), max(p.peak_total, sample.total)
            if not started and self.start_file.exists():
                started = True
                p.baseline_anon = sample.anon
            if started:
                p.work_peak_anon = max(p.work_peak_anon, sample.anon)
                p.work_peak_total = max(p.work_peak_total, sample.total)
            self._halt.wait(POLL_S)


@dataclass
class Measurement:
    """One child run: exit status, wall seconds, memory peaks (bytes) and what the child reported."""

    returncode: int
    wall_s: float
    peak_anon: int
    peak_total: int
    baseline_anon: int | None
    work_peak_anon: int
    maxrss: int  # the child's own ru_maxrss (bytes), file pages included
    processes: int
    report: dict[str, Any] = field(default_factory=dict)
    stderr_tail: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def run_child(argv: Sequence[str], result: Path, log: Path, env: dict[str, str] | None = None,
              timeout: float | None = None) -> Measurement:
    """Run `argv` (a child that writes its report to `result` and touches `<result>.start` when its work
    begins) and measure it. Output goes to `log`; a child past `timeout` seconds is killed (returncode -9)."""
    result.unlink(missing_ok=True)
    start_file = result.with_name(result.name + ".start")
    start_file.unlink(missing_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, env=env)
        poller = TreePoller(proc.pid, start_file)
        poller.start()
        timer = threading.Timer(timeout, proc.kill) if timeout else None
        if timer:
            timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            if timer:
                timer.cancel()
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
    peaks = poller.stop()
    report = json.loads(result.read_text()) if result.is_file() else {}
    start_file.unlink(missing_ok=True)
    tail = log.read_text(errors="replace")[-3000:] if proc.returncode else ""
    return Measurement(proc.returncode, wall, peaks.peak_anon, peaks.peak_total, peaks.baseline_anon,
                       peaks.work_peak_anon, usage.ru_maxrss * 1024, peaks.processes, report, tail)


def folder_bytes(paths: Sequence[str | Path]) -> int:
    """Bytes on disk (allocated blocks) of every file under `paths`, each inode counted once (hard links)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root in paths:
        root = Path(root)
        if root.is_file():
            entries = [root]
        elif root.is_dir():
            entries = (Path(d, f) for d, _, files in os.walk(root) for f in files)
        else:
            continue
        for path in entries:
            try:
                st = path.lstat()
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            if key not in seen:
                seen.add(key)
                total += st.st_blocks * 512
    return total
