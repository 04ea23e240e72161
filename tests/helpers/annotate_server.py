"""`medal annotate`'s server on a free local port in a thread, and a Playwright page on Debian's Chromium."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from helpers.browser import CHROMIUM
from medal.annotate.app import Annotator
from medal.annotate.serve import serve


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(annotator: Annotator) -> Iterator[tuple[str, threading.Thread]]:
    """The app served on 127.0.0.1:<free port> until Finish (or the block's end); yields (url, server thread)."""
    port = free_port()
    server = serve(annotator, "127.0.0.1", port)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the annotate server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/", thread
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def chromium_page() -> Iterator:
    """A Playwright page in headless Debian Chromium (Playwright's own browser download is not used)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            yield page
        finally:
            browser.close()
