"""`medal annotate`'s web app: a small Starlette app serving one page, the round's (or the gold request's) images
by id, and two write endpoints.

Why Starlette and a hand-written page rather than gradio's ImageEditor: the mask must be edited as exact pixels at
the image's full size (whole-pixel brush discs, fill holes, keep largest component, undo, reset to the proposal,
keyboard shortcuts), and what the person accepted must be what is written, checked by the folder oracle's own
code. A canvas with one byte per pixel gives that exactly and keeps the browser test simple; Starlette adds
routing and nothing else (no queue, no websocket, no network access, nothing downloaded at run time).

Safety: every request passes the gate first (`guard.py`: the bound Host names, the page's own origin, the launch's
secret, the content type the page sends and a size cap), files are addressed by id, and an id is looked up in the
round's manifest or the gold request (never joined to a path as given), and the static files are a fixed list.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from medal.annotate.access import Access
from medal.annotate.adjust import RANGES, GoldSettings, adjust, suggest
from medal.annotate.guard import Guard, Upload
from medal.annotate.request import GoldRequest, read_settings, record_settings
from medal.annotate.rounds import MaskRound, accept_mask
from medal.data.images import DERIVED_BITS, read_image, write_png
from medal.errors import MedalError

STATIC = {"annotate.js": "text/javascript", "annotate.css": "text/css"}
GOLD_JSON_BYTES = 16 * 1024  # the page sends five numbers: {"level": ..., "width": ..., ...}


def uploads(access: Access) -> list[Upload]:
    """The routes that change state and what each takes: exactly what annotate.js sends (`acceptMask`: the mask as
    image/png; `acceptGold`: the slider values as application/json; Finish: no body)."""
    return [Upload("/masks/{id}/answer", "image/png", access.max_upload_bytes,
                   f"annotate.max_upload_mib={access.max_upload_mib} ({access.max_upload_bytes} bytes)"),
            Upload("/gold/{id}/answer", "application/json", GOLD_JSON_BYTES,
                   f"{GOLD_JSON_BYTES} bytes (the gold settings are five numbers)"),
            Upload("/api/finish", None, 0, "0 bytes (Finish takes no body)")]


def png_bytes(image: np.ndarray) -> bytes:
    """(H, W) float in [0, 1] as an 8-bit greyscale PNG for the page."""
    buf = io.BytesIO()
    Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def display_window(image: np.ndarray) -> np.ndarray:
    """A radiograph windowed for the eye: its 0.5th to 99.5th percentile stretched to [0, 1]."""
    lo, hi = np.percentile(image, [0.5, 99.5])
    return np.clip((image - lo) / (hi - lo), 0, 1) if hi > lo else image


def png(data: bytes) -> Response:
    return Response(data, media_type="image/png")  # `no-store` and the other headers: guard.SECURITY_HEADERS


def refused(err: MedalError, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": str(err)}, status_code=status)


@dataclass
class Annotator:
    """What one `medal annotate` serves: a mask round or a gold request; `on_finish` stops the server."""

    mode: str
    masks: MaskRound | None = None
    gold: GoldRequest | None = None
    on_finish: Callable[[], None] = lambda: None
    suggested: dict[str, GoldSettings] = field(default_factory=dict)

    def items(self) -> list[dict[str, Any]]:
        if self.masks is not None:
            rnd = self.masks
            answered = set(rnd.answered())
            return [{"id": i, "width": rnd.shapes[i][1], "height": rnd.shapes[i][0], "answered": i in answered,
                     "score": rnd.scores.get(i) if rnd.scores else None,
                     "rank": rnd.ranks.get(i) if rnd.ranks else None, "pool": rnd.pool_size,
                     "has_proposal": rnd.proposal(i) is not None,
                     "has_disagreement": rnd.disagreement(i) is not None} for i in rnd.ids]
        assert self.gold is not None
        saved = read_settings(self.gold.dir)
        answered = set(self.gold.answered())
        return [{"id": i, "stratum": self.gold.strata[i], "answered": i in answered,
                 "suggested": self.suggestion(i).as_dict(),
                 "settings": ({k: float(v) for k, v in saved[i].items() if k != "id"}
                              if i in saved and i in answered else None)} for i in self.gold.ids]

    def done(self) -> bool:
        if self.masks is not None:
            return len(self.masks.answered()) == len(self.masks.ids)
        assert self.gold is not None
        return not self.gold.missing()

    def roi(self, image_id: str) -> np.ndarray:
        assert self.gold is not None
        if image_id not in self.gold.strata:
            raise KeyError(image_id)
        return read_image(self.gold.input_dir / f"{image_id}.png")

    def suggestion(self, image_id: str) -> GoldSettings:
        if image_id not in self.suggested:
            self.suggested[image_id] = suggest(self.roi(image_id))
        return self.suggested[image_id]


def build_app(annotator: Annotator, access: Access) -> Starlette:
    """The app over `annotator`, behind the gate of `access` (tests drive it with Starlette's TestClient or a real
    browser)."""
    static = files("medal.annotate") / "static"

    def page(request: Request) -> Response:
        return HTMLResponse((static / "index.html").read_text())

    def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            return JSONResponse({"error": "not found"}, status_code=404)
        return Response((static / name).read_text(), media_type=STATIC[name])

    def state(request: Request) -> Response:
        body: dict[str, Any] = {"mode": annotator.mode, "items": annotator.items(), "done": annotator.done()}
        if annotator.masks is not None:
            body.update(round=annotator.masks.round_no, strategy=annotator.masks.strategy)
        else:
            body.update(ranges={k: list(v) for k, v in RANGES.items()})
        return JSONResponse(body)

    def mask_file(request: Request) -> Response:
        rnd, image_id, kind = annotator.masks, request.path_params["id"], request.path_params["kind"]
        if rnd is None or kind not in ("image.png", "proposal.png", "disagreement.png"):
            return JSONResponse({"error": "not found"}, status_code=404)
        try:
            if kind == "image.png":
                return png(png_bytes(display_window(read_image(rnd.image(image_id)))))
            path = rnd.proposal(image_id) if kind == "proposal.png" else rnd.disagreement(image_id)
        except KeyError:
            return JSONResponse({"error": f"{image_id!r} is not queried in this round"}, status_code=404)
        if path is None:
            return JSONResponse({"error": "not found"}, status_code=404)
        return png(path.read_bytes())

    async def mask_answer(request: Request) -> Response:
        rnd, image_id = annotator.masks, request.path_params["id"]
        if rnd is None or image_id not in rnd.shapes:
            return JSONResponse({"error": f"{image_id!r} is not queried in this round"}, status_code=404)
        try:
            saved = accept_mask(rnd, image_id, await request.body())
        except MedalError as err:
            return refused(err)
        return JSONResponse({"saved": saved.name, "done": annotator.done()})

    def gold_file(request: Request) -> Response:
        image_id, kind = request.path_params["id"], request.path_params["kind"]
        if annotator.gold is None or kind not in ("roi.png", "preview.png"):
            return JSONResponse({"error": "not found"}, status_code=404)
        try:
            roi = annotator.roi(image_id)
        except KeyError:
            return JSONResponse({"error": f"{image_id!r} is not in the gold request"}, status_code=404)
        if kind == "roi.png":
            return png(png_bytes(roi))
        try:
            settings = GoldSettings.checked(dict(request.query_params))
        except MedalError as err:
            return refused(err)
        return png(png_bytes(adjust(roi, settings)))

    async def gold_answer(request: Request) -> Response:
        gold, image_id = annotator.gold, request.path_params["id"]
        if gold is None or image_id not in gold.strata:
            return JSONResponse({"error": f"{image_id!r} is not in the gold request"}, status_code=404)
        try:
            settings = GoldSettings.checked(await request.json())
        except MedalError as err:
            return refused(err)
        except ValueError:
            return refused(MedalError("the page sent no JSON settings; reload the page"))
        target = write_png(gold.gold_dir / f"{image_id}.png", adjust(annotator.roi(image_id), settings),
                           bits=DERIVED_BITS)
        record_settings(gold.dir, image_id, settings.as_dict())
        return JSONResponse({"saved": f"{Path(target).parent.name}/{target.name}", "done": annotator.done()})

    def finish(request: Request) -> Response:
        if not annotator.done():
            left = sum(not item["answered"] for item in annotator.items())
            return JSONResponse({"done": False, "message": f"{left} item(s) still unanswered; answer them first"})
        annotator.on_finish()
        return JSONResponse({"done": True, "message": "All answered; the server stops. Rerun the command that "
                                                      "stopped (e.g. medal pipeline ...) to continue."})

    return Starlette(routes=[
        Route("/", page), Route("/static/{name}", asset), Route("/api/state", state),
        Route("/masks/{id}/{kind}", mask_file), Route("/masks/{id}/answer", mask_answer, methods=["POST"]),
        Route("/gold/{id}/{kind}", gold_file), Route("/gold/{id}/answer", gold_answer, methods=["POST"]),
        Route("/api/finish", finish, methods=["POST"]),
    ], middleware=[Middleware(Guard, access=access, uploads=uploads(access))])
