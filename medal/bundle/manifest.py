"""`bundle.json`, a bundle's manifest: what it is, what made it, and the sha256 of every file it holds.

Modelled on a MONAI bundle's `configs/metadata.json` (versions of the libraries, a description of the
network's inputs and outputs) with what medal adds: the recorded config of every part, the data set and split
the models were trained on, and a hash per file, so a changed weight file is refused before anything loads.

Compatibility is by `format`: a bundle of another medal version loads when its format is one this medal reads
(the version difference is logged); a newer or older format is refused in one line saying which medal reads it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from medal.atomic import write_json
from medal.errors import MedalError

log = logging.getLogger("medal.bundle")

MANIFEST = "bundle.json"
INFERENCE = "configs/inference.json"
CALIBRATION = "calibration.json"
#: The bundle layout this medal writes, and the oldest it still reads.
FORMAT = 1
OLDEST_FORMAT = 1
PACKAGES = ("medal", "torch", "timm", "numpy", "pydicom", "safetensors", "pytorch-lightning")


def sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def versions() -> dict[str, str]:
    """Versions of the libraries the bundle's numbers depend on (and Python)."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def build_manifest(root: Path, *, name: str, description: str, files: list[str], parts: dict[str, Any],
                   data: dict[str, Any], data_format: dict[str, Any]) -> dict[str, Any]:
    """The manifest of the bundle at `root`, hashing `files` (paths relative to it) as they are now."""
    return {"format": FORMAT, "name": name, "description": description,
            "created": datetime.now(UTC).isoformat(timespec="seconds"), "versions": versions(),
            "network_data_format": data_format, "data": data, "parts": parts,
            "files": {rel: sha256(root / rel) for rel in sorted(files)}}


def write_manifest(root: Path, manifest: dict[str, Any]) -> Path:
    """Write `bundle.json` (atomically, last: a bundle without it is incomplete)."""
    return write_json(root / MANIFEST, manifest, indent=1, sort_keys=True)


def read_manifest(root: str | Path) -> dict[str, Any]:
    """The manifest of the bundle at `root`, its format checked; one line when it is missing or unreadable."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise MedalError(f"bundle={root}: no {MANIFEST}; not a medal bundle (make one with `medal export`)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise MedalError(f"{path}: not valid JSON ({err}); re-export the bundle") from None
    check_format(manifest, path)
    return manifest


def check_format(manifest: dict[str, Any], path: Path) -> None:
    """Refuse a format this medal does not read, saying which does; log a different medal version."""
    made_with = manifest.get("versions", {}).get("medal", "unknown")
    fmt = manifest.get("format")
    if not isinstance(fmt, int):
        raise MedalError(f"{path}: no integer `format`; not a medal bundle manifest")
    if fmt > FORMAT:
        raise MedalError(f"{path}: bundle format {fmt} (medal {made_with}) is newer than this medal "
                         f"{versions()['medal']} reads (formats {OLDEST_FORMAT}-{FORMAT}); upgrade medal")
    if fmt < OLDEST_FORMAT:
        raise MedalError(f"{path}: bundle format {fmt} (medal {made_with}) is older than this medal reads "
                         f"(formats {OLDEST_FORMAT}-{FORMAT}); re-export it with `medal export` from its runs")
    ours = versions()
    if made_with != ours["medal"]:
        log.info("bundle made with medal %s, read by medal %s (format %d, read by both)", made_with, ours["medal"], fmt)
    for lib in ("torch", "timm"):
        theirs = manifest.get("versions", {}).get(lib)
        if theirs and theirs != ours[lib]:
            log.warning("bundle made with %s %s, this is %s %s: its weights load if the networks are unchanged",
                        lib, theirs, lib, ours[lib])


def verify_files(root: Path, manifest: dict[str, Any]) -> None:
    """Every file the manifest lists is there with its recorded sha256; else one line naming the first that is not."""
    for rel, expected in manifest["files"].items():
        path = root / rel
        if not path.is_file():
            raise MedalError(f"{path}: listed in {MANIFEST} but missing; the bundle is incomplete (re-export it)")
        if sha256(path) != expected:
            raise MedalError(f"{path}: sha256 differs from {MANIFEST} (the file changed or is corrupted); "
                             "restore it or re-export the bundle")
