"""`medal annotate` without a browser: the page's API over a round folder and a gold request (what is served, what
is refused, what is written), the gold request's spread, the one gold transform, and the pipeline's waiting."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.annotate_fixtures import SHAPE, answer_round, export_round, make_gold_request, mask_png
from helpers.annotate_server import page_client
from helpers.hydra_compose import compose_task
from omegaconf import OmegaConf
from PIL import Image
from starlette.testclient import TestClient

from medal.active.oracles import DISAGREEMENT_SUFFIX
from medal.annotate.access import TOKEN_ENV, launch_access
from medal.annotate.adjust import GoldSettings, adjust, suggest
from medal.annotate.app import Annotator, png_bytes
from medal.annotate.request import choose, read_request, read_settings, write_request
from medal.annotate.rounds import open_round, waiting_round
from medal.data.images import as_derived, read_image, write_png
from medal.data.split import HoldoutOptions
from medal.errors import MedalError
from medal.pipeline.plan import StageBuilder, wait_for_gold
from medal.pipeline.stages import StopPipeline

PNG = {"Content-Type": "image/png"}  # what the page's acceptMask sends


@pytest.fixture
def round_dir(tmp_path: Path) -> Path:
    return export_round(tmp_path / "work" / "al" / "committee_qbc_seed0")


@pytest.fixture
def client(round_dir: Path) -> TestClient:
    return page_client(Annotator("masks", masks=open_round(round_dir)))


def test_the_folder_oracle_exports_the_disagreement_map_beside_the_proposal(round_dir: Path) -> None:
    assert np.allclose(read_image(round_dir / f"a{DISAGREEMENT_SUFFIX}"), 0.25, atol=1 / 255)


def test_masks_state_lists_the_round_in_query_order_with_scores_and_ranks(client: TestClient) -> None:
    state = client.get("/api/state").json()
    assert state["mode"] == "masks" and state["round"] == 1 and state["strategy"] == "committee_qbc_seed0"
    items = state["items"]
    assert [i["id"] for i in items] == ["b", "a", "c"]
    assert [(i["score"], i["rank"]) for i in items] == [(0.9, 1), (0.5, 3), (0.1, 4)]  # rank among the pool's 4
    assert all(i["has_proposal"] and i["has_disagreement"] and not i["answered"] for i in items)
    assert (items[0]["width"], items[0]["height"]) == (SHAPE[1], SHAPE[0])


def test_an_accepted_mask_is_written_as_the_person_drew_it(client: TestClient, round_dir: Path) -> None:
    mask = np.zeros(SHAPE, bool)
    mask[3:20, 4:12] = True
    reply = client.post("/masks/a/answer", content=mask_png(mask), headers=PNG)
    assert reply.status_code == 200 and reply.json() == {"saved": "a_bin.png", "done": False}
    np.testing.assert_array_equal(read_image(round_dir / "a_bin.png") > 0.5, mask)
    assert [i["answered"] for i in client.get("/api/state").json()["items"]] == [False, True, False]


@pytest.mark.parametrize(("mask", "reason"), [
    (np.zeros(SHAPE, bool), "a_bin.png: the mask is empty (no white pixel); paint the hand white on black"),
    (np.ones(SHAPE, bool), "a_bin.png: the mask is all white; paint the hand white on a black background"),
    (np.ones((5, 5), bool), "a_bin.png: mask is 5x5 (WxH) but the image is 20x24; save it at the image's size"),
    (np.indices(SHAPE)[1] % 3 * 0.5, "a_bin.png: mask is not binary (3 grey levels); save it with only black (0) "
                                     "and white (255)"),
])
def test_a_refused_mask_gets_the_folder_oracles_reason_and_writes_nothing(
        mask: np.ndarray, reason: str, client: TestClient, round_dir: Path) -> None:
    reply = client.post("/masks/a/answer", content=mask_png(mask), headers=PNG)
    assert reply.status_code == 400 and reply.json() == {"error": reason}
    assert not (round_dir / "a_bin.png").exists()
    assert sorted(p.name for p in round_dir.iterdir() if p.name.startswith(".")) == []  # no temporary left


def test_bytes_that_are_no_png_are_refused(client: TestClient, round_dir: Path) -> None:
    reply = client.post("/masks/a/answer", content=b"not a png", headers=PNG)
    assert reply.status_code == 400 and "no readable PNG" in reply.json()["error"]
    assert not (round_dir / "a_bin.png").exists()


@pytest.mark.parametrize("url", [
    "/masks/..%2Fpool.json/image.png", "/masks/..%2F..%2F..%2Fetc%2Fpasswd/proposal.png", "/masks/../pool.json",
    "/masks/d/image.png",  # scored in the pool, but not queried in this round
    "/masks/a/a_bin.png", "/masks/a/..%2F..%2Fpool.json", "/static/..%2Fapp.py", "/static/index.html%2F..%2F..%2Fapp.py",
    "/gold/a/roi.png", "/../../etc/passwd",
])
def test_a_file_outside_the_round_is_refused(url: str, client: TestClient) -> None:
    reply = client.get(url)
    assert reply.status_code == 404
    assert b"scores" not in reply.content and b"root:" not in reply.content and b"import" not in reply.content


def test_an_answer_for_an_id_outside_the_round_is_refused_and_writes_nothing(client: TestClient, round_dir: Path,
                                                                            tmp_path: Path) -> None:
    mask = np.zeros(SHAPE, bool)
    mask[5:10, 5:10] = True
    for image_id in ("..%2F..%2Fevil", "d"):
        assert client.post(f"/masks/{image_id}/answer", content=mask_png(mask), headers=PNG).status_code == 404
    assert not list(tmp_path.rglob("*evil*")) and not (round_dir / "d_bin.png").exists()


def test_the_page_serves_the_round_windowed_and_the_proposal_as_exported(client: TestClient, round_dir: Path) -> None:
    image = np.asarray(Image.open(io.BytesIO(client.get("/masks/a/image.png").content)))
    assert image.shape == SHAPE and image.min() == 0 and image.max() == 255  # stretched for display
    assert client.get("/masks/a/proposal.png").content == (round_dir / "a_start.png").read_bytes()
    page = client.get("/").text
    assert "/static/annotate.js" in page and client.get("/static/annotate.js").status_code == 200


def test_finish_is_refused_until_everything_is_answered(round_dir: Path) -> None:
    stopped = []
    annotator = Annotator("masks", masks=open_round(round_dir), on_finish=lambda: stopped.append(1))
    client = page_client(annotator)
    assert client.post("/api/finish").json()["done"] is False and stopped == []
    mask = np.zeros(SHAPE, bool)
    mask[5:10, 5:10] = True
    for image_id in ("a", "b", "c"):
        client.post(f"/masks/{image_id}/answer", content=mask_png(mask), headers=PNG)
    assert client.post("/api/finish").json()["done"] is True and stopped == [1]


def test_the_waiting_round_is_found_and_an_answered_one_is_not(round_dir: Path) -> None:
    al_root = round_dir.parents[1]
    assert waiting_round(al_root) == round_dir
    for image_id in ("a", "b", "c"):
        write_png(round_dir / f"{image_id}_bin.png", np.ones(SHAPE, np.float32))
    with pytest.raises(MedalError, match="no round waits for masks"):
        waiting_round(al_root)


# ---------------------------------------------------------------- gold standards

def test_the_gold_request_is_spread_over_sex_age_and_acquisition() -> None:
    rng = np.random.default_rng(1)
    table = pd.DataFrame({"id": [str(i) for i in range(60)], "boneage": rng.uniform(1, 228, 60),
                          "male": rng.random(60) < 0.5, "acquisition": ["8-bit"] * 50 + ["16-bit"] * 10})
    strata = choose(table, 60, seed=0)["stratum"]  # every row: all strata that exist
    k = strata.nunique()
    picked = choose(table, 12, seed=0)
    assert len(picked) == 12 and picked["id"].is_unique and 6 < k <= 12
    assert picked["stratum"].iloc[:k].nunique() == k  # every stratum once before any twice
    assert set(strata[strata.str.endswith("16-bit")]) <= set(picked["stratum"])  # the rare acquisition is in
    assert choose(table, 12, seed=0)["id"].tolist() == picked["id"].tolist()


@pytest.fixture
def gold_request(tmp_path: Path) -> Path:
    return make_gold_request(tmp_path)


def test_the_gold_request_is_recorded_once_and_leaves_the_test_split_alone(gold_request: Path) -> None:
    request = read_request(gold_request)
    assert request is not None and len(request.ids) == 5 and not {"8", "9"} & set(request.ids)
    index = pd.read_csv(gold_request.parent / "index.csv", dtype={"id": str})
    again = write_request(gold_request, index, gold_request.parent / "work", Path("x"), Path("y"), count=3, seed=1,
                          holdout=HoldoutOptions())
    assert again.ids == request.ids  # an existing request is kept as recorded


def test_accepted_gold_equals_the_roi_transformed_by_the_recorded_sliders(gold_request: Path) -> None:
    request = read_request(gold_request)
    client = page_client(Annotator("gold", gold=request))
    first = request.ids[0]
    item = client.get("/api/state").json()["items"][0]
    roi = read_image(request.input_dir / f"{first}.png")
    assert item["suggested"] == suggest(roi).as_dict() and item["settings"] is None
    values = {"level": 0.41, "width": 0.37, "gamma": 1.3, "sharpness": 0.75, "clahe": 0.01}
    preview = client.get(f"/gold/{first}/preview.png", params=values)
    assert preview.content == png_bytes(adjust(roi, GoldSettings(**values)))  # the page shows the same transform
    reply = client.post(f"/gold/{first}/answer", json=values)
    assert reply.status_code == 200 and reply.json()["saved"] == f"roi_gold/{first}.png"
    recorded = read_settings(gold_request)[first]
    settings = GoldSettings.checked({k: v for k, v in recorded.items() if k != "id"})
    assert settings == GoldSettings(**values)
    gold = read_image(request.gold_dir / f"{first}.png")
    np.testing.assert_array_equal(gold, as_derived(adjust(roi, settings)))
    with Image.open(request.gold_dir / f"{first}.png") as img:
        assert img.mode.startswith("I")  # 16-bit kept


@pytest.mark.parametrize(("values", "reason"), [
    ({"level": 0.5, "width": 1.0, "gamma": 9.0, "sharpness": 0.0, "clahe": 0.0}, "gamma=9.0 is outside [0.3, 3.0]"),
    ({"level": 0.5, "width": 1.0, "gamma": 1.0, "sharpness": 0.0}, "slider 'clahe' missing"),
    ({"level": "x", "width": 1.0, "gamma": 1.0, "sharpness": 0.0, "clahe": 0.0}, "level='x' is not a number"),
])
def test_bad_slider_values_are_refused_and_nothing_is_written(values: dict, reason: str, gold_request: Path) -> None:
    request = read_request(gold_request)
    client = page_client(Annotator("gold", gold=request))
    reply = client.post(f"/gold/{request.ids[0]}/answer", json=values)
    assert reply.status_code == 400 and reason in reply.json()["error"]
    assert not request.gold_dir.exists() and read_settings(gold_request) == {}


def test_a_gold_file_outside_the_request_is_refused(gold_request: Path) -> None:
    request = read_request(gold_request)
    client = page_client(Annotator("gold", gold=request))
    outside = next(i for i in "0123456789" if i not in request.ids)
    for url in (f"/gold/{outside}/roi.png", "/gold/..%2Froi%2F0/roi.png", "/masks/0/image.png"):
        assert client.get(url).status_code == 404
    assert client.post(f"/gold/{outside}/answer", json=GoldSettings().as_dict()).status_code == 404


# ---------------------------------------------------------------- the pipeline waits

def segment_fixed(tmp_path: Path, *overrides: str) -> tuple[str, ...]:
    cfg = compose_task("pipeline", ["experiment=smoke", *overrides], tmp_path)
    return next(p for p in StageBuilder(cfg).plan() if p.name == "segment").fixed


def test_real_data_or_no_reference_masks_choose_the_folder_oracle(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="medal.pipeline"):
        assert segment_fixed(tmp_path) == ()  # the smoke pipeline makes phantoms with masks/
        assert segment_fixed(tmp_path, "data=rsna", f"data.root={tmp_path}") == ("oracle=folder",)
        assert segment_fixed(tmp_path, "pipeline.phantoms=null", "pipeline.heldout=null",
                             f"data.root={tmp_path}") == ("oracle=folder",)
    assert "oracle=folder (data=rsna: a person labels real radiographs" in caplog.text
    assert f"{tmp_path / 'masks'} not found: no reference masks" in caplog.text
    # the person's own choice stands
    assert segment_fixed(tmp_path, "data=rsna", f"data.root={tmp_path}", 'pipeline.stages.segment=["oracle=simulated"]') == ()


def enhance_cfg(tmp_path: Path, gold: Path, request: Path, count: int = 4) -> OmegaConf:
    return OmegaConf.create({"enhance": {"pairs": {"gold_dir": str(gold), "input_dir": str(tmp_path / "roi")},
                                         "gold_request": {"dir": str(request), "count": count}},
                             "data": {"name": "rsna", "root": str(tmp_path), "strict": True, "work_dir": str(tmp_path)},
                             "seed": 0})


def test_the_enhancer_waits_for_the_gold_standards_it_asked_for(gold_request: Path, tmp_path: Path) -> None:
    request = read_request(gold_request)
    cfg = enhance_cfg(tmp_path, request.gold_dir, gold_request)
    with pytest.raises(StopPipeline) as stop:
        wait_for_gold(cfg)
    message = str(stop.value)
    assert f"waits for 5 of 5 gold standards in {request.gold_dir}" in message
    assert "medal annotate data=" in message and "annotate.mode=gold" in message
    assert "pipeline.enhance=clahe or pipeline.enhance=none" in message
    for image_id in request.ids[:-1]:  # a part is not enough
        write_png(request.gold_dir / f"{image_id}.png", np.ones((32, 32), np.float32), bits=16)
    with pytest.raises(StopPipeline, match="waits for 1 of 5 gold standards"):
        wait_for_gold(cfg)
    write_png(request.gold_dir / f"{request.ids[-1]}.png", np.ones((32, 32), np.float32), bits=16)
    wait_for_gold(cfg)  # all there: the GAN trains


def test_gold_standards_made_elsewhere_need_no_request(tmp_path: Path) -> None:
    gold = tmp_path / "roi_gold"
    write_png(gold / "1.png", np.ones((8, 8), np.float32), bits=16)
    wait_for_gold(enhance_cfg(tmp_path, gold, tmp_path / "request"))
    assert read_request(tmp_path / "request") is None


def test_gold_mode_without_a_request_says_how_to_get_one(tmp_path: Path) -> None:
    from medal.annotate.serve import open_annotator

    cfg = compose_task("annotate", ["annotate.mode=gold", f"data.root={tmp_path}"], tmp_path)
    with pytest.raises(MedalError, match=r"no gold request recorded; run `medal pipeline` until its enhance stage asks "
                                         r"for gold standards, or set annotate.gold.count=N"):
        open_annotator(cfg)
    with pytest.raises(MedalError, match="no round waits for masks"):
        open_annotator(compose_task("annotate", [f"data.root={tmp_path}"], tmp_path))


def test_the_server_binds_127_0_0_1_with_a_new_secret_each_launch(round_dir: Path, tmp_path: Path) -> None:
    from medal.annotate.serve import serve

    cfg = compose_task("annotate", [f"data.root={tmp_path}"], tmp_path)
    assert cfg.annotate.host == "127.0.0.1"
    first, second = (launch_access(cfg.annotate.host, cfg.annotate.port, cfg.annotate.max_upload_mib, {})
                     for _ in range(2))
    assert first.token != second.token and len(first.token) >= 43  # 32 random bytes, URL-safe base64
    assert first.url() == f"http://127.0.0.1:8765/?token={first.token}"
    assert first.hosts == {"127.0.0.1:8765", "localhost:8765", "[::1]:8765"}
    assert serve(Annotator("masks", masks=open_round(round_dir)), first).config.host == "127.0.0.1"


def test_a_network_address_needs_a_secret_the_user_chose_and_the_log_says_plain_http(
        caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture) -> None:
    from medal.annotate.serve import announce

    with pytest.raises(MedalError, match=r"annotate.host=192.168.1.5 is not this machine's loopback: the page would "
                                         r"be plain HTTP .* set the secret yourself in MEDAL_ANNOTATE_TOKEN"):
        launch_access("192.168.1.5", 8765, 64, {})
    for wildcard in ("0.0.0.0", "::"):
        with pytest.raises(MedalError, match="answers on every interface, so no Host name can be checked"):
            launch_access(wildcard, 8765, 64, {TOKEN_ENV: "x" * 43})
    for weak in ("short", "x" * 40 + " ;="):
        with pytest.raises(MedalError, match=r"MEDAL_ANNOTATE_TOKEN: the secret must be at least 32 characters"):
            launch_access("192.168.1.5", 8765, 64, {TOKEN_ENV: weak})
    chosen = "k" * 20 + "-_" + "9" * 21
    access = launch_access("192.168.1.5", 8765, 64, {TOKEN_ENV: chosen})
    assert access.token == chosen and not access.loopback
    assert access.hosts == {"192.168.1.5:8765"} and access.origins == {"http://192.168.1.5:8765"}
    assert launch_access("fe80::1", 8765, 64, {TOKEN_ENV: chosen}).hosts == {"[fe80::1]:8765"}
    with caplog.at_level(logging.INFO, logger="medal.annotate"):
        announce(access)
    assert "annotate.host=192.168.1.5: the page is plain HTTP on the network: anyone on the path can read" in caplog.text
    assert chosen not in caplog.text  # the log file keeps no secret
    assert f"open http://192.168.1.5:8765/?token={chosen} in a browser" in capsys.readouterr().out


def test_the_largest_mask_png_fits_the_default_upload_cap(tmp_path: Path) -> None:
    """The default cap (annotate.max_upload_mib) holds a mask PNG of a 4000 x 4000 image even stored without
    compression, as RGBA (what a canvas may encode); real radiographs are about 1500-2500 px a side."""
    cfg = compose_task("annotate", [f"data.root={tmp_path}"], tmp_path)
    rng = np.random.default_rng(0)
    stored = io.BytesIO()  # a noise mask no compressor can shrink, as a measure of the per-pixel size
    Image.fromarray(rng.integers(0, 256, (400, 400, 4), dtype=np.uint8), mode="RGBA").save(stored, format="PNG",
                                                                                              compress_level=0)
    per_pixel = len(stored.getvalue()) / (400 * 400)
    assert 4.0 < per_pixel < 4.01
    assert per_pixel * 4000 * 4000 < cfg.annotate.max_upload_mib * 2 ** 20


def test_medal_annotate_serves_until_finish_and_exits_0(round_dir: Path, tmp_path: Path) -> None:
    """The real command: it serves the round on 127.0.0.1 and prints the address with a new secret on the terminal
    only (not in the run's log file); without it nothing is served; Finish (everything answered, from the page's
    origin) stops it, exit status 0."""
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    from helpers.annotate_server import free_port

    answer_round(round_dir)
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "medal", "annotate", f"annotate.round_dir={round_dir}",
                                f"annotate.port={port}", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path,
                               env={"PATH": "/usr/bin:/bin", "MEDAL_ROOT": str(tmp_path), "HOME": str(tmp_path)},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}/"
    try:
        printed = []
        while not any("?token=" in line for line in printed):
            line = process.stdout.readline()
            if not line:
                raise AssertionError("".join(printed))
            printed.append(line)
        url = next(line for line in printed if "?token=" in line).split()[1]
        assert url.startswith(f"{base}?token=")
        token = url.split("?token=")[1]
        deadline = time.monotonic() + 120
        while True:
            try:
                state = json.load(urllib.request.urlopen(f"{base}api/state?token={token}", timeout=5))
                break
            except urllib.error.URLError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise AssertionError(process.communicate(timeout=10)[0]) from None
                time.sleep(0.5)
        assert state["done"] is True
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}api/state", timeout=5)
        assert refused.value.code == 403
        request = urllib.request.Request(f"{base}api/finish?token={token}", method="POST",
                                         headers={"Origin": base.rstrip("/")})
        assert json.load(urllib.request.urlopen(request, timeout=10))["done"] is True
        out, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    out = "".join(printed) + out
    assert process.returncode == 0, out
    assert f"serving on {base} (Finish stops this server)" in out
    assert token not in (tmp_path / "run" / "annotate.log").read_text()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["annotate/answered"] == metrics["annotate/requested"] == 3.0
