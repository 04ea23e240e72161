"""Open what `medal annotate` should serve (a waiting mask round, or the gold request) and serve it locally."""

from __future__ import annotations

import logging
from pathlib import Path

import uvicorn
from omegaconf import DictConfig

from medal.annotate.app import Annotator, build_app
from medal.annotate.request import read_request, write_request
from medal.annotate.rounds import open_round, waiting_round
from medal.data.rsna import read_index
from medal.errors import MedalError

log = logging.getLogger("medal.annotate")

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def open_annotator(cfg: DictConfig) -> Annotator:
    """The round or request `cfg.annotate` names, refused in one line when there is nothing to annotate."""
    ann = cfg.annotate
    if ann.mode == "masks":
        round_dir = Path(ann.round_dir) if ann.round_dir else waiting_round(Path(ann.al_root))
        rnd = open_round(round_dir)
        log.info("masks: round %d of %s, %d images (%d answered)", rnd.round_no, round_dir.parent, len(rnd.ids),
                 len(rnd.answered()))
        return Annotator("masks", masks=rnd)
    if ann.mode == "gold":
        gold = ann.gold
        request = read_request(Path(gold.request_dir))
        if request is None:
            if gold.count is None:
                raise MedalError(f"annotate.gold.request_dir={gold.request_dir}: no gold request recorded; run "
                                 "`medal pipeline` until its enhance stage asks for gold standards, or set "
                                 "annotate.gold.count=N to choose N RoIs here")
            index = read_index(cfg.data.root, strict=cfg.data.strict)
            request = write_request(Path(gold.request_dir), index, Path(cfg.data.work_dir), Path(gold.input_dir),
                                    Path(gold.gold_dir), int(gold.count), int(cfg.seed))
        log.info("gold: %d RoIs requested (%d answered) from %s into %s", len(request.ids),
                 len(request.answered()), request.input_dir, request.gold_dir)
        return Annotator("gold", gold=request)
    raise MedalError(f"annotate.mode={ann.mode}: choose masks or gold")


def serve(annotator: Annotator, host: str, port: int) -> uvicorn.Server:
    """A uvicorn server for the app (not started); Finish in the page stops it."""
    if host not in LOCAL_HOSTS:
        log.warning("annotate.host=%s: the page (and the images it serves) is reachable from the network", host)
    server = uvicorn.Server(uvicorn.Config(build_app(annotator), host=host, port=port, log_level="warning"))
    annotator.on_finish = lambda: setattr(server, "should_exit", True)
    return server


def run_annotate(cfg: DictConfig) -> dict[str, float]:
    """Serve until Finish (or Ctrl+C); the metrics say how much was answered."""
    annotator = open_annotator(cfg)
    server = serve(annotator, str(cfg.annotate.host), int(cfg.annotate.port))
    log.info("open http://%s:%d/ in a browser (Finish stops this server)", cfg.annotate.host, cfg.annotate.port)
    server.run()
    items = annotator.items()
    answered = sum(item["answered"] for item in items)
    if answered < len(items):
        log.warning("%d of %d items answered; run the same command again to go on", answered, len(items))
    return {"annotate/answered": float(answered), "annotate/requested": float(len(items))}

