"""Headless Debian Chromium for tests that open pages from disk, as a reader of the report would."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NO_CHROMIUM = ("Debian chromium not installed (`make test` installs it with apt-get when it can; "
               "this machine could not)")


def render_dom(html: Path, tmp_path: Path) -> str:
    """The page's DOM after load in headless Chromium opened from disk (no server), scripts run."""
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'chr'}",
         "--virtual-time-budget=5000", "--dump-dom", html.resolve().as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
