"""`medal annotate` answers only its own page: every header case of the gate (`medal.annotate.guard`) through
Starlette's TestClient. Each attack is a request the page really sends with one thing changed (the token, the
Host, the Origin, the fetch metadata, the content type, the size); each is refused with its status and reason, and
nothing is written (every file under the test's folder byte for byte the same) and Finish never fires. The same
requests unchanged succeed, so each refusal is the changed thing's doing. The real-browser attacks are in
tests/test_annotate_browser.py."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

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
from helpers.annotate_server import TEST_PORT, local_access, page_client
from starlette.testclient import TestClient

from medal.annotate.access import Access
from medal.annotate.app import GOLD_JSON_BYTES, Annotator, build_app
from medal.annotate.request import read_request
from medal.annotate.rounds import open_round

PAGE = f"http://127.0.0.1:{TEST_PORT}"
CAP_MIB = 1  # a small annotate.max_upload_mib, so an oversize body stays small
WRONG = "w" * 43


@dataclass
class Served:
    """The round and the gold request, every item answered (so a Finish that got through would stop the server),
    each behind an app of one launch's access."""

    root: Path
    access: Access
    apps: dict = field(default_factory=dict)
    finished: list[str] = field(default_factory=list)
    gold_id: str = ""


@pytest.fixture
def served(tmp_path: Path) -> Served:
    round_dir = export_round(tmp_path / "al" / "committee_qbc_seed0")
    answer_round(round_dir)
    request_dir = make_gold_request(tmp_path)
    answer_request(request_dir)
    out = Served(tmp_path, local_access(TEST_PORT, max_upload_mib=CAP_MIB))
    request = read_request(request_dir)
    out.gold_id = request.ids[0]
    for mode, annotator in (("masks", Annotator("masks", masks=open_round(round_dir))),
                            ("gold", Annotator("gold", gold=request))):
        annotator.on_finish = lambda mode=mode: out.finished.append(mode)
        out.apps[mode] = build_app(annotator, out.access)
    return out


@dataclass(frozen=True)
class Call:
    """One request as the annotator's page sends it (after its first visit: the secret in the cookie); TOKEN in a
    header or the query stands for the launch's secret, GOLD for a requested RoI's id."""

    mode: str
    method: str
    path: str
    headers: dict = field(default_factory=dict)
    body: bytes | None = None
    query: str = ""
    chunked: bool = False

    def send(self, served: Served) -> object:
        client = TestClient(served.apps[self.mode], base_url=PAGE)
        headers = {k: v.replace("TOKEN", served.access.token) for k, v in self.headers.items() if v is not None}
        content = (iter([self.body[i:i + 65536] for i in range(0, len(self.body), 65536)])
                   if self.chunked and self.body else self.body)
        url = (self.path + self.query).replace("GOLD", served.gold_id).replace("TOKEN", served.access.token)
        return client.request(self.method, url, headers=headers, content=content)


COOKIE = {"Cookie": f"medal_annotate_{TEST_PORT}=TOKEN"}
POST = {**COOKIE, "Origin": PAGE, "Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"}
LEGIT = {
    "mask": Call("masks", "POST", "/masks/a/answer", {**POST, "Content-Type": "image/png"}, mask_png(a_mask())),
    "gold": Call("gold", "POST", "/gold/GOLD/answer", {**POST, "Content-Type": "application/json"},
                 b'{"level": 0.4, "width": 0.5, "gamma": 1.2, "sharpness": 0.5, "clahe": 0.0}'),
    "finish": Call("masks", "POST", "/api/finish", POST),
    "image": Call("masks", "GET", "/masks/a/image.png", {**COOKIE, "Sec-Fetch-Site": "same-origin",
                                                         "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"}),
    "roi": Call("gold", "GET", "/gold/GOLD/roi.png", COOKIE),
    "state": Call("masks", "GET", "/api/state", COOKIE),
    "page": Call("masks", "GET", "/", {**COOKIE, "Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate",
                                       "Sec-Fetch-Dest": "document"}),
}


def changed(name: str, **headers: str | None) -> Call:
    """The legit request `name` with some headers changed (None: left out)."""
    call = LEGIT[name]
    return replace(call, headers={**call.headers, **headers})


OVERSIZE = b"\x89PNG\r\n\x1a\n" + bytes(CAP_MIB * 2 ** 20)
ATTACKS = {  # name: (request, status, reason)
    "mask, no token": (changed("mask", Cookie=None), 403, "no token"),
    "mask, wrong token in the address": (replace(changed("mask", Cookie=None), query=f"?token={WRONG}"), 403,
                                         "wrong token"),
    "mask, wrong token in the cookie": (changed("mask", Cookie=f"medal_annotate_{TEST_PORT}={WRONG}"), 403,
                                        "wrong token"),
    "mask, the cookie of another port's annotator": (changed("mask", Cookie="medal_annotate_8766=TOKEN"), 403,
                                                     "no token"),
    "mask, right cookie but a wrong token in the address": (replace(LEGIT["mask"], query=f"?token={WRONG}"), 403,
                                                            "wrong token"),
    "mask, foreign Host (DNS rebinding)": (changed("mask", Host=f"evil.test:{TEST_PORT}"), 421,
                                           "Host 'evil.test:8765' is not the address"),
    "mask, Host of another port": (changed("mask", Host="127.0.0.1:9999"), 421, "is not the address"),
    "mask, Origin of another port": (changed("mask", Origin="http://127.0.0.1:9999"), 403,
                                     "Origin 'http://127.0.0.1:9999' is not the annotator's own page"),
    "mask, foreign Origin": (changed("mask", Origin="http://evil.test"), 403, "is not the annotator's own page"),
    "mask, Origin null": (changed("mask", Origin="null"), 403, "is not the annotator's own page"),
    "mask, no Origin": (changed("mask", Origin=None, **{"Sec-Fetch-Site": None}), 403,
                        "a POST without an Origin header"),
    "mask, Sec-Fetch-Site same-site": (changed("mask", **{"Sec-Fetch-Site": "same-site"}), 403,
                                       "Sec-Fetch-Site: same-site"),
    "mask, text/plain (a form's or no-cors body)": (changed("mask", **{"Content-Type": "text/plain"}), 415,
                                                    "takes image/png, not text/plain"),
    "mask, multipart form": (changed("mask", **{"Content-Type": "multipart/form-data; boundary=x"}), 415,
                             "not multipart/form-data"),
    "mask, urlencoded form": (changed("mask", **{"Content-Type": "application/x-www-form-urlencoded"}), 415,
                              "not application/x-www-form-urlencoded"),
    "mask, no content type": (changed("mask", **{"Content-Type": None}), 415, "not a body without a type"),
    "mask, oversize (Content-Length)": (replace(LEGIT["mask"], body=OVERSIZE), 413,
                                        f"is over annotate.max_upload_mib={CAP_MIB} ({2 ** 20} bytes)"),
    "mask, oversize (chunked, no length)": (replace(LEGIT["mask"], body=OVERSIZE, chunked=True), 413,
                                            f"is over annotate.max_upload_mib={CAP_MIB}"),
    "gold, no token": (changed("gold", Cookie=None), 403, "no token"),
    "gold, foreign Origin": (changed("gold", Origin="http://127.0.0.1:9999"), 403, "is not the annotator's own page"),
    "gold, text/plain JSON": (changed("gold", **{"Content-Type": "text/plain"}), 415,
                              "takes application/json, not text/plain"),
    "gold, oversize": (replace(LEGIT["gold"], body=b" " * (GOLD_JSON_BYTES + 1) + b"{}"), 413,
                       f"is over {GOLD_JSON_BYTES} bytes"),
    "finish, no Origin": (changed("finish", Origin=None, **{"Sec-Fetch-Site": None}), 403,
                          "a POST without an Origin header"),
    "finish, foreign Origin": (changed("finish", Origin="http://127.0.0.1:9999", **{"Sec-Fetch-Site": "same-site"}),
                               403, "Sec-Fetch-Site: same-site"),
    "finish, a form post": (replace(changed("finish", **{"Content-Type": "application/x-www-form-urlencoded"}),
                                    body=b""), 415, "takes no body"),
    "finish, no token": (changed("finish", Cookie=None), 403, "no token"),
    "finish, CORS preflight from another port": (replace(changed(
        "finish", Origin="http://127.0.0.1:9999", **{"Access-Control-Request-Method": "POST",
                                                     "Sec-Fetch-Site": "same-site"}), method="OPTIONS"), 403,
        "Sec-Fetch-Site: same-site"),
    "image, no token": (changed("image", Cookie=None), 403, "no token"),
    "image, wrong token": (replace(changed("image", Cookie=None), query=f"?token={WRONG}"), 403, "wrong token"),
    "image, foreign Host with the right token (DNS rebinding)": (
        replace(changed("image", Cookie=None, Host=f"evil.test:{TEST_PORT}"), query="?token=TOKEN"), 421,
        "is not the address"),
    "image, <img> on a page of another port (cookie sent)": (changed("image", **{"Sec-Fetch-Site": "same-site"}),
                                                             403, "Sec-Fetch-Site: same-site"),
    "image, fetch from another site": (changed("image", Origin="http://evil.test", **{
        "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty"}), 403,
        "Sec-Fetch-Site: cross-site"),
    "roi, no token": (changed("roi", Cookie=None), 403, "no token"),
    "state, no token": (changed("state", Cookie=None), 403, "no token"),
    "state, foreign Host": (changed("state", Host="evil.test"), 421, "is not the address"),
    "page, framed by a page of another port": (changed("page", **{"Sec-Fetch-Site": "same-site",
                                                                  "Sec-Fetch-Dest": "iframe"}), 403,
                                               "Sec-Fetch-Site: same-site"),
}


@pytest.mark.parametrize("name", LEGIT)
def test_the_pages_own_requests_get_through(name: str, served: Served) -> None:
    """The control: each request unchanged succeeds (the answers are written; Finish fires)."""
    before = snapshot(served.root)
    reply = LEGIT[name].send(served)
    assert reply.status_code == 200, reply.text
    if name in ("mask", "gold"):
        assert snapshot(served.root) != before
    assert served.finished == (["masks"] if name == "finish" else [])


@pytest.mark.parametrize("name", ATTACKS)
def test_every_attack_is_refused_and_writes_nothing(name: str, served: Served) -> None:
    call, status, reason = ATTACKS[name]
    before = snapshot(served.root)
    reply = call.send(served)
    assert reply.status_code == status, reply.text
    assert reason in reply.json()["error"]
    assert not reply.content.startswith(b"\x89PNG") and b"items" not in reply.content  # nothing was read
    assert snapshot(served.root) == before  # nothing was written
    assert served.finished == []  # the server goes on


def test_the_token_in_the_address_becomes_a_strict_httponly_cookie_and_leaves_the_address(served: Served) -> None:
    client = TestClient(served.apps["masks"], base_url=PAGE, follow_redirects=False)
    first = client.get(f"/?token={served.access.token}")
    assert first.status_code == 303 and first.headers["location"] == "/"
    cookie = first.headers["set-cookie"]
    assert cookie.startswith(f"medal_annotate_{TEST_PORT}={served.access.token};")
    assert {"HttpOnly", "SameSite=strict", "Path=/"} <= {part.strip() for part in cookie.split(";")}
    page = client.get("/")  # the cookie alone from here on
    assert page.status_code == 200 and "<title>medal annotate</title>" in page.text
    assert client.get("/api/state").json()["mode"] == "masks"
    headers = page.headers
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["cross-origin-resource-policy"] == "same-origin" and headers["cache-control"] == "no-store"
    assert headers["referrer-policy"] == "no-referrer" and "set-cookie" not in headers


def test_the_token_is_taken_out_of_the_query_the_app_sees(served: Served) -> None:
    """A preview asked for with ?token=... still reads its sliders (an unknown 'token' slider would be refused)."""
    client = TestClient(served.apps["gold"], base_url=PAGE)
    sliders = "level=0.4&width=0.5&gamma=1.2&sharpness=0.5&clahe=0"
    reply = client.get(f"/gold/{served.gold_id}/preview.png?token={served.access.token}&{sliders}")
    assert reply.status_code == 200 and reply.content.startswith(b"\x89PNG")
    assert reply.headers["set-cookie"].startswith(f"medal_annotate_{TEST_PORT}=")


@pytest.mark.parametrize("host", ["localhost", "[::1]"])
def test_every_loopback_name_of_the_bound_port_is_the_page(host: str, served: Served) -> None:
    client = page_client(Annotator("masks", masks=open_round(served.root / "al" / "committee_qbc_seed0" / "round_01")),
                         served.access)
    reply = client.post("/masks/a/answer", content=mask_png(a_mask()),
                        headers={"Host": f"{host}:{TEST_PORT}", "Origin": f"http://{host}:{TEST_PORT}",
                                 "Content-Type": "image/png"})
    assert reply.status_code == 200
