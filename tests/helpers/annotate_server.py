"""`medal annotate`'s server on a free local port in a thread, its app behind a TestClient as the page would talk
to it, and a Playwright browser on Debian's Chromium."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from starlette.testclient import TestClient

from helpers.browser import CHROMIUM
from medal.annotate.access import Access, launch_access
from medal.annotate.app import Annotator, build_app
from medal.annotate.serve import serve

TEST_PORT = 8765  # the TestClient's address: nothing is bound


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def local_access(port: int | None = None, max_upload_mib: int = 64) -> Access:
    """A launch's access on 127.0.0.1 with a fresh random secret, as `medal annotate` draws it."""
    return launch_access("127.0.0.1", free_port() if port is None else port, max_upload_mib, {})


def page_client(annotator: Annotator, access: Access | None = None) -> TestClient:
    """A TestClient that talks as the annotator's own page does: at the bound address, with the page's Origin, and
    holding the cookie from one visit of the printed address (`?token=...`)."""
    access = access or local_access(TEST_PORT)
    client = TestClient(build_app(annotator, access), base_url=access.url(with_token=False).rstrip("/"),
                        headers={"Origin": access.url(with_token=False).rstrip("/")})
    assert client.get(access.url()).status_code == 200  # redirected to "/" with the cookie set
    return client


@contextmanager
def serving(annotator: Annotator, access: Access | None = None) -> Iterator[tuple[str, threading.Thread]]:
    """The app served on 127.0.0.1:<free port> until Finish (or the block's end); yields (the address with its
    token, as `medal annotate` prints it; the server thread)."""
    access = access or local_access()
    server = serve(annotator, access)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the annotate server did not start")
        time.sleep(0.05)
    try:
        yield access.url(), thread
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def chromium(args: Sequence[str] = ()) -> Iterator:
    """A Playwright browser: headless Debian Chromium (Playwright's own browser download is not used)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", *args])
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def chromium_page() -> Iterator:
    """A Playwright page in headless Debian Chromium."""
    with chromium() as browser:
        yield browser.new_page(viewport={"width": 1100, "height": 900})
