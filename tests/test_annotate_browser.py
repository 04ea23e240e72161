"""`medal annotate` in a real headless browser (Debian's Chromium through Playwright).

Issue 14's check, end to end: a small RSNA-layout set without masks/ and gold/; the pipeline stops at segmentation;
in `medal annotate` (opened at the printed address with its token) a stroke is drawn and accepted (the saved mask
differs from the proposal exactly where the stroke went), an empty mask is refused with its reason shown, the rest
are answered; the pipeline stops at the enhancer; in gold mode a slider moves and the accepted gold standard equals
the RoI transformed by the recorded slider values; the pipeline then runs to its report. The screenshots are the
ones docs/annotate.md shows (written to outputs/annotate_screenshots/ as well).

Issue 23's check: while the user's tab holds the annotator's cookie, a page of another origin (another port of
127.0.0.1, whose requests the browser sends with that cookie) tries to read an image, post a mask, post a gold
answer and press Finish; a DNS-rebinding page (`--host-resolver-rules` maps evil.test to 127.0.0.1) tries the
same from the annotator's own port under its own name. Every attempt is refused, nothing is written and both
servers keep running."""

from __future__ import annotations

import base64
import http.server
import logging
import re
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from helpers.annotate_fixtures import (
    a_mask,
    answer_request,
    answer_round,
    export_round,
    make_gold_request,
    mask_png,
    snapshot,
)
from helpers.annotate_server import chromium, chromium_page, free_port, local_access, serving
from helpers.browser import CHROMIUM, NO_CHROMIUM
from helpers.hydra_compose import compose_task
from playwright.sync_api import expect

from medal.annotate.adjust import GoldSettings, adjust
from medal.annotate.app import Annotator
from medal.annotate.request import read_request, read_settings
from medal.annotate.rounds import open_round
from medal.annotate.serve import open_annotator
from medal.data.images import as_derived, read_image
from medal.pipeline.run import run_pipeline

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)

REPO = Path(__file__).resolve().parents[1]
SHOTS = REPO / "outputs" / "annotate_screenshots"
SEGMENT = ["segment.image_size=64", "segment.steps_per_round=10", "segment.batch_size=4", "segment.net.first_conv=8",
           "segment.net.growth=4", "segment.net.down_layers=[1,1,1]", "segment.net.bottleneck_layers=2",
           "segment.roi.size=64", "al.initial=8", "al.per_round=8", "al.budget=8", "al.committee_size=2",
           "al.val_limit=8"]
ENHANCE = ["enhance.image_size=64", "enhance.epochs=1", "enhance.generator.depth=2", "enhance.generator.width=8",
           "enhance.discriminator.width=8", "enhance.batch_size=8", "enhance.gold_request.count=6"]
BONEAGE = ["model=tiny", "data.image_size=64", "trainer.max_epochs=1", "evaluation.bootstrap=50"]
BRUSH = 3  # brush radius in image pixels


def segment_distance(shape: tuple[int, int], a: tuple[float, float], b: tuple[float, float]) -> np.ndarray:
    """Distance (H, W) of every pixel centre to the segment a-b (image coordinates x, y)."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    ax, ay = a
    dx, dy = b[0] - ax, b[1] - ay
    t = np.clip(((xx - ax) * dx + (yy - ay) * dy) / (dx * dx + dy * dy), 0, 1)
    return np.hypot(xx - (ax + t * dx), yy - (ay + t * dy))


def set_range(page, selector: str, value: float) -> None:  # noqa: ANN001 - a Playwright page
    page.eval_on_selector(selector, "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }", value)


def wait_answered(page, n: int) -> None:  # noqa: ANN001
    # locator checks, not wait_for_function: the page's Content-Security-Policy forbids the eval that one needs
    expect(page.locator("#progress")).to_have_text(re.compile(f" {n} answered$"))


def shoot(page, name: str) -> None:  # noqa: ANN001
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / name))


def as_list(key: str, overrides: list[str]) -> str:
    return f"{key}=[" + ",".join(f'"{o}"' for o in overrides) + "]"


def pipeline(root: Path, tmp: Path, caplog: pytest.LogCaptureFixture) -> tuple[dict, str]:
    cfg = compose_task("pipeline", [
        "data=rsna", f"data.root={root}", "pipeline.export=false", "pipeline.cam_cohort=all",
        as_list("pipeline.common", ["trainer.precision=32-true"]), as_list("pipeline.stages.segment", SEGMENT),
        as_list("pipeline.stages.enhance", ENHANCE), as_list("pipeline.stages.boneage", BONEAGE),
        as_list("pipeline.stages.cam", ["cam.max_overlays=2"])], tmp)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        metrics = run_pipeline(cfg)
    return metrics, "\n".join(r.getMessage() for r in caplog.records)


def answer_masks(root: Path, tmp: Path) -> Path:
    """The person, in masks mode: a stroke on the first image, an empty mask refused, the rest accepted."""
    annotator = open_annotator(compose_task("annotate", ["data=rsna", f"data.root={root}"], tmp))
    rnd = annotator.masks
    assert rnd is not None and rnd.answered() == []
    with serving(annotator) as (url, thread), chromium_page() as page:
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']")
        assert page.inner_text("#progress").startswith(f"1 of {len(rnd.ids)}")
        first, second = rnd.ids[0], rnd.ids[1]
        height, width = rnd.shapes[first]
        proposal = read_image(rnd.proposal(first)) > 0.5
        set_range(page, "#size", BRUSH)
        page.wait_for_timeout(300)  # the proposal is loaded into the editor
        box = page.locator("#mask").bounding_box()
        scale = box["width"] / width
        a, b = (0.15 * width, 0.2 * height), (0.6 * width, 0.35 * height)  # image coordinates
        to_page = lambda p: (box["x"] + (p[0] + 0.5) * scale, box["y"] + (p[1] + 0.5) * scale)  # noqa: E731
        page.mouse.move(*to_page(a))
        page.mouse.down()
        page.mouse.move(*to_page(b), steps=12)
        page.mouse.up()
        shoot(page, "annotate_masks_mode.png")
        page.click("#accept")
        wait_answered(page, 1)
        saved = read_image(rnd.answer(first)) > 0.5
        dist = segment_distance((height, width), a, b)
        changed = saved != proposal
        assert changed.any() and dist[changed].max() <= BRUSH + 1  # nothing changed away from the stroke
        assert saved[dist <= BRUSH - 1].all()  # everything under the stroke is hand now
        assert (saved == proposal)[dist > BRUSH + 1].all()
        assert page.inner_text("#why").startswith(second)  # on to the next unanswered image
        page.click("#clear")
        page.click("#accept")
        page.wait_for_selector("#message.error")
        assert "the mask is empty (no white pixel)" in page.inner_text("#message")
        shoot(page, "annotate_masks_refused.png")
        assert not rnd.answer(second).exists()
        page.click("#reset")
        for n in range(2, len(rnd.ids) + 1):
            page.keyboard.press("Enter")
            wait_answered(page, n)
        assert sorted(rnd.answered()) == sorted(rnd.ids)
        page.click("#finish")
        thread.join(timeout=30)
        assert not thread.is_alive()  # Finish stopped the server
    return rnd.dir


def answer_gold(root: Path, tmp: Path) -> tuple[str, dict[str, float]]:
    """The person, in gold mode: the gamma slider moved on the first RoI and accepted, the rest as suggested."""
    annotator = open_annotator(compose_task("annotate", ["data=rsna", f"data.root={root}", "annotate.mode=gold"], tmp))
    request = annotator.gold
    assert request is not None and len(request.ids) == 6
    with serving(annotator) as (url, thread), chromium_page() as page:
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']")
        set_range(page, "#slider-gamma", 1.7)
        expect(page.locator("#after")).to_have_attribute("src", re.compile("gamma=1.7"))
        page.wait_for_timeout(300)
        shoot(page, "annotate_gold_mode.png")
        moved = page.eval_on_selector_all("#sliders input", "els => Object.fromEntries(els.map("
                                          "e => [e.id.slice(7), Number(e.value)]))")
        page.click("#accept")
        wait_answered(page, 1)
        for n in range(2, len(request.ids) + 1):
            page.keyboard.press("Enter")
            wait_answered(page, n)
        page.click("#finish")
        thread.join(timeout=30)
    return request.ids[0], moved


def test_real_data_walkthrough_in_headless_chromium(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from medal.data.phantom import generate_dataset

    root = tmp_path / "rsna"
    generate_dataset(root, n=40, seed=0, image_size=96, workers=1, progress=False)
    shutil.rmtree(root / "masks")
    shutil.rmtree(root / "gold")

    metrics, log = pipeline(root, tmp_path, caplog)
    assert metrics["pipeline/stopped"] == 1.0
    assert "oracle=folder (data=rsna: a person labels real radiographs" in log
    assert "pipeline stopped at stage segment: the folder oracle waits for 8 hand masks" in log
    assert "medal annotate data=rsna" in log

    answer_masks(root, tmp_path)
    metrics, log = pipeline(root, tmp_path, caplog)
    assert metrics["pipeline/stopped"] == 1.0
    stop = next(line for line in log.splitlines() if "pipeline stopped at stage enhance" in line)
    work_dir = Path(compose_task("annotate", ["data=rsna", f"data.root={root}"], tmp_path).data.work_dir)
    assert f"waits for 6 of 6 gold standards in {work_dir / 'roi_gold'}" in stop
    assert "annotate.mode=gold" in stop and "pipeline.enhance=clahe or pipeline.enhance=none" in stop

    first, moved = answer_gold(root, tmp_path)
    request = read_request(work_dir / "gold_request")
    assert request is not None and request.missing() == []
    recorded = read_settings(request.dir)[first]
    settings = GoldSettings.checked({k: v for k, v in recorded.items() if k != "id"})
    assert settings.gamma == 1.7 and settings.as_dict() == moved
    roi = read_image(request.input_dir / f"{first}.png")
    np.testing.assert_array_equal(read_image(request.gold_dir / f"{first}.png"), as_derived(adjust(roi, settings)))

    metrics, log = pipeline(root, tmp_path, caplog)
    assert metrics["pipeline/stopped"] == 0.0
    assert (tmp_path / "run" / "report.html").is_file()
    assert metrics["enhance/test/psnr"] > 0
    assert open_round(sorted((work_dir / "al").glob("*/round_00"))[0]).answered()


# ---------------------------------------------------------------- attacks from other pages (issue 23)

RUN_ATTACK = """async (attack) => {  // one attempt of another page's script; what that script gets to see
  const body = () => attack.png ? new Blob([Uint8Array.from(atob(attack.png), (c) => c.charCodeAt(0))],
                                           { type: "image/png" }) : attack.body;
  if (attack.kind === "fetch") {
    try {
      const r = await fetch(attack.url, { ...attack.init, body: attack.init.method === "POST" ? body() : undefined });
      return `status ${r.status} ${r.type}` + (r.type === "basic" ? `: ${await r.text()}` : "");
    } catch (e) { return `network error (${e.name})`; }
  }
  if (attack.kind === "img") {  // load the image, then try to read its pixels through a canvas
    return await new Promise((resolve) => {
      const im = new Image();
      im.onload = () => {
        const c = document.createElement("canvas");
        c.width = im.width; c.height = im.height;
        const ctx = c.getContext("2d");
        ctx.drawImage(im, 0, 0);
        try { ctx.getImageData(0, 0, 1, 1); resolve("pixels read"); } catch (e) { resolve(`tainted (${e.name})`); }
      };
      im.onerror = () => resolve("image not loaded");
      im.src = attack.url;
    });
  }
  // a form posted into a hidden frame: the oldest cross-site write, sent with no preflight
  const frame = document.createElement("iframe");
  frame.name = `sink${Math.random()}`;
  document.body.appendChild(frame);
  const form = document.createElement("form");
  Object.assign(form, { action: attack.url, method: "POST", enctype: "text/plain", target: frame.name });
  const field = document.createElement("input");
  Object.assign(field, { name: attack.body, value: "" });
  form.appendChild(field);
  document.body.appendChild(form);
  await new Promise((resolve) => { frame.onload = resolve; form.submit(); setTimeout(resolve, 3000); });
  return "form sent";
}"""


def attacks(masks: str, gold: str, gold_id: str, query: str = "") -> dict[str, dict]:
    """What another page's script tries against the masks server at `masks` and the gold server at `gold`
    (`query`: what it appends to every address, the secret itself in the rebinding case)."""
    png = base64.b64encode(mask_png(a_mask())).decode()
    settings = '{"level": 0.4, "width": 0.5, "gamma": 1.2, "sharpness": 0.5, "clahe": 0.0}'
    cors = {"credentials": "include"}
    no_cors = {"credentials": "include", "mode": "no-cors"}
    post = lambda init, **headers: {**init, "method": "POST", "headers": headers}  # noqa: E731
    return {
        "read an image (fetch)": {"kind": "fetch", "url": f"{masks}/masks/a/image.png{query}", "init": cors},
        "read an image (no-cors fetch)": {"kind": "fetch", "url": f"{masks}/masks/a/image.png{query}",
                                          "init": no_cors},
        "read an image (img + canvas)": {"kind": "img", "url": f"{masks}/masks/a/image.png{query}"},
        "read a gold RoI (img + canvas)": {"kind": "img", "url": f"{gold}/gold/{gold_id}/roi.png{query}"},
        "read the state (fetch)": {"kind": "fetch", "url": f"{masks}/api/state{query}", "init": cors},
        "post a mask (fetch, image/png)": {"kind": "fetch", "url": f"{masks}/masks/a/answer{query}",
                                           "init": post(cors, **{"Content-Type": "image/png"}), "png": png},
        "post a mask (no-cors fetch)": {"kind": "fetch", "url": f"{masks}/masks/a/answer{query}",
                                        "init": post(no_cors), "png": png},
        "post a mask (form)": {"kind": "form", "url": f"{masks}/masks/a/answer{query}", "body": "x"},
        "post a gold answer (fetch, JSON)": {"kind": "fetch", "url": f"{gold}/gold/{gold_id}/answer{query}",
                                             "init": post(cors, **{"Content-Type": "application/json"}),
                                             "body": settings},
        "post a gold answer (no-cors fetch)": {"kind": "fetch", "url": f"{gold}/gold/{gold_id}/answer{query}",
                                               "init": post(no_cors), "body": settings},
        "post a gold answer (form)": {"kind": "form", "url": f"{gold}/gold/{gold_id}/answer{query}",
                                      "body": settings},
        "press Finish (fetch)": {"kind": "fetch", "url": f"{masks}/api/finish{query}", "init": post(cors)},
        "press Finish (form)": {"kind": "form", "url": f"{gold}/api/finish{query}", "body": "x"},
    }


@contextmanager
def another_origin() -> Iterator[str]:
    """A page of another origin: a tiny http.server on another port of 127.0.0.1; yields its address."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = b"<!doctype html><title>another page</title><p>nothing to see"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        thread.join(timeout=10)


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused ")]


@pytest.fixture
def two_servers(tmp_path: Path) -> Iterator[tuple[dict, Path]]:
    """The masks server and the gold server, every item already answered (so a Finish that got through would
    stop them, and a write that got through would change a file); yields their addresses and the folder."""
    round_dir = export_round(tmp_path / "al" / "committee_qbc_seed0")
    answer_round(round_dir)
    request_dir = make_gold_request(tmp_path)
    answer_request(request_dir)
    request = read_request(request_dir)
    masks, gold = local_access(), local_access()
    with serving(Annotator("masks", masks=open_round(round_dir)), masks) as (masks_url, masks_thread), \
            serving(Annotator("gold", gold=request), gold) as (gold_url, gold_thread):
        yield {"masks": masks_url, "gold": gold_url, "gold_id": request.ids[0], "threads": (masks_thread, gold_thread),
               "accesses": (masks, gold)}, tmp_path


def test_a_page_of_another_origin_can_read_write_and_stop_nothing(two_servers: tuple[dict, Path],
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    servers, root = two_servers
    before = snapshot(root)
    masks, gold = (a.url(with_token=False).rstrip("/") for a in servers["accesses"])
    tried = attacks(masks, gold, servers["gold_id"])
    with caplog.at_level(logging.WARNING, logger="medal.annotate"), another_origin() as evil, chromium() as browser:
        context = browser.new_context()
        user = context.new_page()  # the user's tab: the annotator, opened at the printed address
        user.goto(servers["masks"])
        user.wait_for_selector("body[data-ready='1']")
        context.new_page().goto(servers["gold"])
        assert {c["name"] for c in context.cookies()} == {a.cookie for a in servers["accesses"]}
        page = context.new_page()
        page.goto(evil)
        seen = {name: page.evaluate(RUN_ATTACK, attack) for name, attack in tried.items()}
        assert user.evaluate("fetch('/api/state').then((r) => r.status)") == 200  # the user's page still works
    refused = refusals(caplog)
    assert all(o.startswith("network error") or o in ("image not loaded", "form sent") for o in seen.values()), seen
    for name, attack in tried.items():  # every attempt reached its server (a preflight at least) and was refused
        _, _, host, path = attack["url"].split("/", 3)
        assert any(f" /{path} (Host {host}," in line and "Sec-Fetch-Site: same-site" in line for line in refused), \
            (name, refused)
    assert snapshot(root) == before  # nothing written
    assert all(thread.is_alive() for thread in servers["threads"])  # Finish did not stop them


@pytest.mark.parametrize("local_network_access", ["on", "off"])
def test_a_dns_rebinding_page_is_refused_by_the_host_check(local_network_access: str, two_servers: tuple[dict, Path],
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """evil.test resolves to 127.0.0.1 (as a rebound name would); the attacker's page is served at
    http://evil.test:<the annotator's port>/ (by Playwright, standing in for the attacker's server before the
    rebinding), so its requests are same-origin and the cookie, set for 127.0.0.1, is not sent. Even knowing the
    secret (given in every address here) it is refused by the Host check. With Chromium's Local Network Access
    checks on, the browser itself blocks the page's requests to a local address; with them off (as in browsers
    without them), every request reaches the server and is answered 421."""
    servers, root = two_servers
    before = snapshot(root)
    args = ["--host-resolver-rules=MAP evil.test 127.0.0.1"]
    if local_network_access == "off":
        args.append("--disable-features=LocalNetworkAccessChecks,PrivateNetworkAccessSendPreflights,"
                    "PrivateNetworkAccessRespectPreflightResults")
    seen: dict[str, str] = {}
    tried: dict[str, dict] = {}
    with caplog.at_level(logging.WARNING, logger="medal.annotate"), chromium(args) as browser:
        page = browser.new_page()
        for mode, access in zip(("masks", "gold"), servers["accesses"], strict=True):
            origin = f"http://evil.test:{access.port}"
            opened = page.goto(f"{origin}/?token={access.token}")  # the page itself, the secret in the address
            assert opened.status == 421 and "is not the address this annotator was started on" in opened.text()
            page.route(f"{origin}/attack", lambda route: route.fulfill(
                status=200, content_type="text/html", body="<!doctype html><title>rebinding</title>"))
            page.goto(f"{origin}/attack")
            for name, attack in attacks(origin, origin, servers["gold_id"], f"?token={access.token}").items():
                if f"/{mode}/" in attack["url"] or "/api/" in attack["url"]:
                    tried[f"{name} on the {mode} server"] = attack
                    seen[f"{name} on the {mode} server"] = page.evaluate(RUN_ATTACK, attack)
    refused = refusals(caplog)
    assert refused and all("Host 'evil.test:" in line and "is not the address" in line for line in refused)
    outcomes = set(seen.values()) - {"image not loaded", "form sent"}
    if local_network_access == "off":
        assert all(o.startswith("status 421 basic: {\"error\":\"Host 'evil.test:") for o in outcomes), seen
        for name, attack in tried.items():  # each reached the server and was refused by its Host
            _, _, host, path = attack["url"].split("/", 3)
            assert any(f" /{path.split('?')[0]} (Host {host}," in line for line in refused), (name, refused)
    else:  # Chromium's own check stops them first (or, should it let one through, the Host check does)
        assert all(o.startswith(("network error", "status 421")) for o in outcomes), seen
    assert snapshot(root) == before
    assert all(thread.is_alive() for thread in servers["threads"])
