"""The annotator's gate: an ASGI middleware that answers only the annotator's own page in its user's browser.

Every request, in this order (the first failure answers, nothing reaches the app, nothing is written):

1. **Host** must be one the server was bound to (`Access.hosts`), else 421: a DNS-rebinding page reaches
   127.0.0.1 under its own name and is refused here, whatever else it knows.
2. **Fetch metadata**: a request the browser marks as coming from another site or another port of this host
   (`Sec-Fetch-Site: same-site | cross-site`) is refused (403) unless it is a plain top-level navigation (a link
   followed, which shows the page to the user and gives the linking page nothing). This keeps a page on another
   port from loading the images even in an `<img>`, where the cookie would be sent along.
3. **Origin**, on every request that may change state (any method but GET and HEAD): present and one of the
   page's own origins (`Access.origins`), and `Sec-Fetch-Site`, where sent, `same-origin`; else 403.
4. **Secret**: `?token=` in the address or the launch's cookie, compared in constant time (`secrets.compare_digest`),
   else 403. A good `?token=` sets the cookie (HttpOnly, SameSite=Strict, Path=/) and is taken out of the query
   the app sees; on the page itself (`GET /`) the answer is a redirect to the address without it.
5. **Body**, on the routes that take one (`Upload`): exactly the content type the page sends, else 415; at most
   the route's cap in bytes, counted as it arrives (a missing or false Content-Length does not help), else 413
   naming the cap. A route declared with no content type takes no body.

Every answer also carries headers that keep the page out of other pages' reach: `Content-Security-Policy`
(nothing loaded from elsewhere, no framing), `Cross-Origin-Resource-Policy: same-origin`,
`Cross-Origin-Opener-Policy`, `Referrer-Policy: no-referrer`, `X-Content-Type-Options: nosniff` and
`Cache-Control: no-store` (no patient image left in the browser's cache).

A pure ASGI middleware rather than Starlette's `BaseHTTPMiddleware`: the body cap has to sit in front of the app's
own read of the stream.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import cookie_parser
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medal.annotate.access import Access

log = logging.getLogger("medal.annotate")

SAFE_METHODS = ("GET", "HEAD")
OWN_SITE = ("same-origin", "none")  # `none`: the user typed the address or opened a bookmark
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; "
                               "form-action 'none'",
    "cross-origin-resource-policy": "same-origin",
    "cross-origin-opener-policy": "same-origin",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}


@dataclass(frozen=True)
class Upload:
    """What one route that changes state takes: its path (Starlette's `{param}` syntax), the one content type the
    page sends (None: no body at all), the most bytes, and the cap's name for the 413 message."""

    path: str
    content_type: str | None
    max_bytes: int
    cap: str


class Refusal(Exception):
    """A request the gate refuses: the status and the one-line reason (returned as `{"error": reason}`)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def media_type(value: str | None) -> str | None:
    """The media type of a Content-Type header, without parameters, lower case.

    Examples:
        >>> media_type("Application/JSON; charset=utf-8"), media_type(None)
        ('application/json', None)
    """
    return None if value is None else value.split(";", 1)[0].strip().lower()


class Guard:
    """The middleware (`Starlette(middleware=[Middleware(Guard, access=..., uploads=...)])`)."""

    def __init__(self, app: ASGIApp, access: Access, uploads: Sequence[Upload]) -> None:
        self.app = app
        self.access = access
        self.uploads = [(compile_path(u.path)[0], u) for u in uploads]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # the annotator has no websocket
            await send({"type": "websocket.close", "code": 1008})
            return
        cookie: list[str] = []  # the Set-Cookie value, once the secret came in the query
        send = self.with_headers(send, cookie)
        headers = Headers(scope=scope)
        query = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        try:
            self.check_origin(scope["method"], headers)
            from_query = self.check_token(query, headers)
            receive = await self.check_body(scope, headers, receive)
        except Refusal as refusal:
            log.warning("refused %s %s (Host %s, Origin %s): %s", scope["method"], scope["path"],
                        headers.get("host"), headers.get("origin"), refusal.reason)
            await JSONResponse({"error": refusal.reason}, status_code=refusal.status)(scope, receive, send)
            return
        if from_query:
            cookie.append(self.cookie_value())
            kept = urlencode([(k, v) for k, v in query if k != "token"])
            if scope["method"] == "GET" and scope["path"] == "/":  # the address bar loses the secret
                await RedirectResponse("/" + (f"?{kept}" if kept else ""), status_code=303)(scope, receive, send)
                return
            scope = {**scope, "query_string": kept.encode("latin-1")}
        await self.app(scope, receive, send)

    def check_origin(self, method: str, headers: Headers) -> None:
        """Steps 1-3: the Host, the fetch metadata and, when the request may change state, the Origin."""
        host = headers.get("host", "").lower()
        if host not in self.access.hosts:
            raise Refusal(421, f"Host {host!r} is not the address this annotator was started on "
                               f"({self.access.url(with_token=False)}); open the address `medal annotate` printed")
        site = headers.get("sec-fetch-site")
        navigation = (method in SAFE_METHODS and headers.get("sec-fetch-mode") == "navigate"
                      and headers.get("sec-fetch-dest") == "document")
        if site is not None and site not in OWN_SITE and not navigation:
            raise Refusal(403, f"a request from another page (Sec-Fetch-Site: {site}) is refused; only the "
                               "annotator's own page may use it")
        if method in SAFE_METHODS:
            return
        origin = headers.get("origin")
        if origin is None:
            raise Refusal(403, f"a {method} without an Origin header is refused; only the annotator's own page may "
                               "change anything")
        if origin.lower() not in self.access.origins:
            raise Refusal(403, f"Origin {origin!r} is not the annotator's own page; only it may change anything")
        if site is not None and site != "same-origin":
            raise Refusal(403, f"a {method} from Sec-Fetch-Site: {site} is refused; only the annotator's own page "
                               "may change anything")

    def check_token(self, query: list[tuple[str, str]], headers: Headers) -> bool:
        """Step 4; True when the secret came in the query (the cookie is then set)."""
        given = [v for k, v in query if k == "token"]
        cookie = cookie_parser(headers.get("cookie", "")).get(self.access.cookie)
        presented = given[-1] if given else cookie
        if presented is None:
            raise Refusal(403, "no token: open the address `medal annotate` printed (the one ending in ?token=...)")
        if not secrets.compare_digest(presented.encode(), self.access.token.encode()):
            raise Refusal(403, "wrong token (from an earlier launch?): open the address this `medal annotate` "
                               "printed (the one ending in ?token=...)")
        return bool(given)

    async def check_body(self, scope: Scope, headers: Headers, receive: Receive) -> Receive:
        """Step 5: on a route that changes state, the content type and the size, the body read here (at most the
        cap) and handed on to the app as one message."""
        if scope["method"] in SAFE_METHODS:
            return receive
        upload = next((u for pattern, u in self.uploads if pattern.match(scope["path"])), None)
        if upload is None:
            return receive  # the router answers 404 / 405
        sent = media_type(headers.get("content-type"))
        if sent != upload.content_type:
            expected = upload.content_type or "no body"
            raise Refusal(415, f"{scope['path']} takes {expected}, not {sent or 'a body without a type'}")
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > upload.max_bytes:
            raise Refusal(413, f"the upload ({int(length)} bytes) is over {upload.cap}")
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise Refusal(400, "the client went away before the whole body arrived")
            body.extend(message.get("body", b""))
            more = message.get("more_body", False)
            if len(body) > upload.max_bytes:
                raise Refusal(413, f"the upload (over {len(body)} bytes so far) is over {upload.cap}")
        whole: Message = {"type": "http.request", "body": bytes(body), "more_body": False}
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return whole

        return replay

    def cookie_value(self) -> str:
        """The Set-Cookie value keeping the secret: HttpOnly (no script reads it), SameSite=Strict (no other site's
        request carries it), Path=/; no Secure flag, the page being plain HTTP on loopback."""
        response = Response()
        response.set_cookie(self.access.cookie, self.access.token, path="/", httponly=True, samesite="strict")
        return response.headers["set-cookie"]

    @staticmethod
    def with_headers(send: Send, cookie: list[str]) -> Send:
        """`send` adding the security headers (and the cookie, once `cookie` holds it) to the response's start."""

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
                for value in cookie:
                    headers.append("set-cookie", value)
            await send(message)

        return wrapped
