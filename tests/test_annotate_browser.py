"""Issue 14's check, end to end in a real headless browser: a small RSNA-layout set without masks/ and gold/; the
pipeline stops at segmentation; in `medal annotate` a stroke is drawn and accepted (the saved mask differs from the
proposal exactly where the stroke went), an empty mask is refused with its reason shown, the rest are answered;
the pipeline stops at the enhancer; in gold mode a slider moves and the accepted gold standard equals the RoI
transformed by the recorded slider values; the pipeline then runs to its report. The screenshots are the ones
docs/annotate.md shows (written to outputs/annotate_screenshots/ as well)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers.annotate_server import chromium_page, serving
from helpers.browser import CHROMIUM, NO_CHROMIUM
from helpers.hydra_compose import compose_task

from medal.annotate.adjust import GoldSettings, adjust
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
    page.wait_for_function(f"document.getElementById('progress').innerText.endsWith(' {n} answered')")


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
        page.wait_for_function("document.getElementById('after').src.includes('gamma=1.7')")
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
