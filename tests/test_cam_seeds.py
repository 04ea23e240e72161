"""scripts/cam_seeds.py: it trains what the demo trains, and its summary and page say what the rows hold."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from omegaconf import OmegaConf

from tests.helpers.hydra_compose import compose_task
from tests.helpers.scripts import load_script

REPO = Path(__file__).resolve().parents[1]


def _script():
    return load_script("cam_seeds")


def test_it_retrains_the_demos_own_bone_age_stage(tmp_path: Path) -> None:
    root, enhancer, stage = _script().demo_settings()
    demo = OmegaConf.load(REPO / "conf" / "experiment" / "demo.yaml")
    assert stage == list(demo.pipeline.stages.boneage) and enhancer == demo.pipeline.enhance
    assert root == str(REPO / "outputs" / "data" / "demo_phantoms")
    cfg = compose_task("boneage", ["data=phantom", f"data.root={root}", f"enhance={enhancer}", *stage, "seed=3"], tmp_path)
    assert cfg.seed == 3 and cfg.model.timm_kwargs.output_stride == 8 and cfg.data.image_size == 256
    assert cfg.data.progressive.size == 128 and cfg.ema.decay == 0.99


def _row(seed: int, fraction: float, level: float) -> dict[str, float]:
    return {"seed": seed, "test/mae": 8.0, "cam/hand_fraction": fraction, "cam/hand_near": 0.9, "cam/hand_grid": 0.8,
            "cam/bone_fraction": 0.25, "cam/bone_area": 0.07, "background_level": level}


def test_the_page_counts_the_seeds_that_reach_the_goal_and_links_the_level() -> None:
    script = _script()
    rows = [_row(1, 0.75, -0.4), _row(2, 0.65, 0.1), _row(3, 0.72, -0.2), _row(4, 0.55, 0.6)]
    stats = script.summary([r["cam/hand_fraction"] for r in rows])
    assert stats["reach_goal"] == 2 and stats["n"] == 4 and stats["min"] == 0.55 and stats["max"] == 0.75
    assert math.isclose(stats["mean"], 0.6675)
    page = script.report(rows, 128, ["cohort=all"], 600.0)
    assert "2 of 4 seeds reach 0.7" in page and "| 4 | 8.00 | 0.550 | 0.900 | 0.800 | 0.250 (0.070) | +0.600 |" in page
    correlation = re.search(r"background level with the hand fraction over seeds: ([-+][0-9.]+[0-9])", page)
    assert float(correlation.group(1)) < -0.9  # planted: the higher the background level, the lower the share


def test_the_figure_draws_every_size_measured_under_the_root(tmp_path: Path) -> None:
    for size, levels in ((128, (-2.0, -1.5)), (192, (-1.0, 0.1))):
        rows = [_row(seed, 0.7 - level / 10, level) for seed, level in enumerate(levels, 1)]
        (tmp_path / f"cam_seeds_{size}px.json").write_text(json.dumps({"rows": rows}))
    figure = _script().plot(tmp_path)
    assert figure == tmp_path / "cam_seeds.png" and figure.stat().st_size > 10_000
