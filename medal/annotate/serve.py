"""Open what `medal annotate` should serve (a waiting mask round, or the gold request) and serve it locally."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import uvicorn
from omegaconf import DictConfig

from medal.annotate.access import TOKEN_ENV, Access, launch_access
from medal.annotate.app import Annotator, build_app
from medal.annotate.request import read_request, write_request
from medal.annotate.rounds import open_round, waiting_round
from medal.config import options_from
from medal.data.rsna import read_index
from medal.data.split import HoldoutOptions
from medal.errors import MedalError

log = logging.getLogger("medal.annotate")


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
                                    Path(gold.gold_dir), int(gold.count), int(cfg.seed),
                                    options_from(HoldoutOptions, cfg.data.holdout, "data.holdout"))
        log.info("gold: %d RoIs requested (%d answered) from %s into %s", len(request.ids),
                 len(request.answered()), request.input_dir, request.gold_dir)
        return Annotator("gold", gold=request)
    raise MedalError(f"annotate.mode={ann.mode}: choose masks or gold")


def serve(annotator: Annotator, access: Access) -> uvicorn.Server:
    """A uvicorn server for the app on `access`'s address (not started); Finish in the page stops it. Proxy
    headers are not trusted: nothing stands in front of this server."""
    config = uvicorn.Config(build_app(annotator, access), host=access.host, port=access.port, log_level="warning",
                            proxy_headers=False, server_header=False)
    server = uvicorn.Server(config)
    annotator.on_finish = lambda: setattr(server, "should_exit", True)
    return server


def announce(access: Access) -> None:
    """Say where the page is. The address with the secret goes to the terminal only (stdout), never to the run's
    log file, which outlives the launch and may be readable by others."""
    if not access.loopback:
        log.warning("annotate.host=%s: the page is plain HTTP on the network: anyone on the path can read the images, "
                    "the masks and the secret (%s); prefer annotate.host=127.0.0.1 through `ssh -L %d:127.0.0.1:%d`",
                    access.host, TOKEN_ENV, access.port, access.port)
    log.info("serving on %s (Finish stops this server); open the address with its token, printed on the terminal",
             access.url(with_token=False))
    print(f"open {access.url()} in a browser", file=sys.stdout, flush=True)


def run_annotate(cfg: DictConfig) -> dict[str, float]:
    """Serve until Finish (or Ctrl+C); the metrics say how much was answered."""
    ann = cfg.annotate
    access = launch_access(str(ann.host), int(ann.port), int(ann.max_upload_mib), os.environ)
    annotator = open_annotator(cfg)
    server = serve(annotator, access)
    announce(access)
    server.run()
    items = annotator.items()
    answered = sum(item["answered"] for item in items)
    if answered < len(items):
        log.warning("%d of %d items answered; run the same command again to go on", answered, len(items))
    return {"annotate/answered": float(answered), "annotate/requested": float(len(items))}
