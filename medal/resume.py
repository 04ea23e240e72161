"""One resume mechanism for every piece of work medal can skip, continue or must redo.

A piece of work (a pipeline stage, the coarse masks of a data set, an active-learning run, a trained
generator, a folder of enhanced images, an image cache, a phantom set) is defined by a few *parts*: the
settings and inputs its result depends on. Its `Marker` is one JSON file beside the work
(`<folder>/.medal/<name>.json`) and decides what a rerun does:

- `done`: the record holds the same fingerprint and says the work finished -> **reuse** it.
- `resume`: an attempt with the same fingerprint started and did not finish (a crash, a kill, a person
  still labelling) -> continue it: its partial outputs belong to this configuration.
- `fresh`: nothing was done, or something else was -> start. Work done under *other* parts is handled by
  the marker's policy: `rebuild` (derived data: its outputs are deleted first, so nothing of the old
  configuration is resumed or returned) or `refuse` (work a person did or an experiment's history: one
  line naming the folder, the first part that differs and the fix; nothing is deleted).

The record is written atomically and *last* (`finish`), so a crash can never leave a record that claims
finished work. The `parts` are kept in the record, so a refusal can say what changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from medal.atomic import write_json
from medal.config import to_plain
from medal.errors import MedalError

log = logging.getLogger("medal.resume")

Policy = Literal["rebuild", "refuse"]
Status = Literal["done", "resume", "fresh"]
POLICIES: tuple[str, ...] = ("rebuild", "refuse")


def _plain(parts: Any) -> Any:
    """JSON-ready: configs resolved to containers, paths and other objects to strings (via json's default)."""
    return json.loads(json.dumps(to_plain(parts), sort_keys=True, default=str))


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (configs are resolved to plain containers first).

    Equal parts give equal fingerprints whatever the key order; any change of a value changes it.

    Examples:
        >>> fingerprint({"a": 1, "b": [2, 3]}) == fingerprint({"b": [2, 3], "a": 1})
        True
        >>> fingerprint({"a": 1}) == fingerprint({"a": 2})
        False
        >>> len(fingerprint("x"))
        16
    """
    text = json.dumps([_plain(p) for p in parts], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def first_difference(old: Any, new: Any, prefix: str = "") -> str | None:
    """The dotted key of the first value that differs between two plain structures (None if equal).

    Examples:
        >>> first_difference({"net": {"width": 8, "depth": 3}}, {"net": {"width": 16, "depth": 3}})
        'net.width'
        >>> first_difference({"a": 1}, {"a": 1}) is None
        True
    """
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(old.keys() | new.keys(), key=str):
            found = first_difference(old.get(key), new.get(key), f"{prefix}{key}.")
            if found is not None:
                return found
        return None
    return None if old == new else (prefix.rstrip(".") or "(value)")


class Marker:
    """The record of one piece of work: `path` (a JSON file), its policy, and the outputs it owns.

    `outputs` are the files or folders a `rebuild` deletes when the work is redone under other parts;
    they must hold nothing but this work's results.

    `clear_unrecorded` (rebuild only) treats outputs found without any record as work of unknown parts and
    clears them before a fresh start, where by default they are kept (a folder a person pointed medal at
    may hold other things). Use it where the outputs are a folder medal owns outright and whose record
    lives elsewhere, so the record can be lost without the folder (the pipeline's stage folders, whose
    records are in `<pipeline.dir>/state/`).
    """

    def __init__(self, path: str | Path, policy: Policy = "rebuild", outputs: Iterable[str | Path] = (),
                 what: str = "", *, clear_unrecorded: bool = False) -> None:
        if policy not in POLICIES:
            raise MedalError(f"resume policy {policy!r}: choose one of {', '.join(POLICIES)}")
        if clear_unrecorded and policy == "refuse":
            raise MedalError(f"{path}: clear_unrecorded needs policy 'rebuild'; a `refuse` marker never deletes")
        self.path = Path(path)
        self.policy = policy
        self.outputs = [Path(p) for p in outputs]
        self.what = what or self.path.stem
        self.clear_unrecorded = clear_unrecorded

    @classmethod
    def in_folder(cls, folder: str | Path, name: str, policy: Policy = "rebuild",
                  outputs: Iterable[str | Path] = (), what: str = "") -> Marker:
        """The marker `<folder>/.medal/<name>.json` (hidden, so globbing a folder of images skips it)."""
        return cls(Path(folder) / ".medal" / f"{name}.json", policy, outputs, what or name)

    def read(self) -> dict[str, Any] | None:
        """The saved record, or None when there is none (an unreadable record counts as none)."""
        try:
            return json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def status(self, parts: Mapping[str, Any]) -> Status:
        """What a run with `parts` finds, without changing anything (a refusal still raises)."""
        record = self.read()
        fp = fingerprint(parts)
        if record is None:
            return "fresh"
        if record.get("fingerprint") == fp:
            return "done" if record.get("finished") else "resume"
        if self.policy == "refuse":
            changed = first_difference(record.get("parts"), _plain(dict(parts))) or "(settings)"
            raise MedalError(
                f"{self.path.parent.parent}: holds {self.what} made with other settings ({changed}); "
                "rerun with the same settings to continue it, or delete that folder (or choose another) to start over")
        return "fresh"

    def begin(self, parts: Mapping[str, Any], force: bool = False) -> Status:
        """Decide and prepare: reuse (`done`), continue (`resume`) or start (`fresh`, old outputs cleared).

        `force` redoes finished work of the same parts too (its outputs are cleared). A `refuse` marker never
        deletes anything: work under other parts raises instead.
        """
        status = self.status(parts)
        if status == "done" and not force:
            return "done"
        if status != "resume" or force:
            if self.read() is not None or force or self.clear_unrecorded:
                self._clear()
            status = "fresh"
        write_json(self.path, {"fingerprint": fingerprint(parts), "parts": _plain(dict(parts)), "finished": False},
                   indent=1, sort_keys=True)
        return status

    def finish(self, parts: Mapping[str, Any], **record: Any) -> None:
        """Record the work as finished (atomically, last), with any extra JSON-able facts (metrics, counts)."""
        payload = {"fingerprint": fingerprint(parts), "parts": _plain(dict(parts)), "finished": True,
                   **_plain(record)}
        write_json(self.path, payload, indent=1, sort_keys=True)

    def reset(self) -> None:
        """Forget the record (the outputs stay)."""
        self.path.unlink(missing_ok=True)

    def _clear(self) -> None:
        if self.policy == "refuse":
            raise MedalError(f"{self.path}: a `refuse` marker never deletes its work; delete it by hand to start over")
        for out in self.outputs:
            if out.is_dir():
                log.info("%s: new settings or forced: clearing %s", self.what, out)
                shutil.rmtree(out)
            elif out.exists():
                out.unlink()
        self.reset()
