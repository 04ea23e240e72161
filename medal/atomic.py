"""Atomic file writes: readers (a resumed run, a sweep, the report) never see half a file.

Every state file medal resumes from is written to a temporary sibling and renamed over the target in
one step, so a crash leaves either the old file or the new one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary sibling of `path` (same suffix) to write; it replaces `path` when the block ends cleanly."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, payload: Any, **dumps: Any) -> Path:
    """`json.dumps(payload, **dumps)` written atomically."""
    return write_text(path, json.dumps(payload, **dumps))
