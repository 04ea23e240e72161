"""`medal pipeline` with `pipeline.cv.folds=K`, planned: each cohort's bone age stage becomes K fold stages with
every fine-tune mode, cohort and enhancer; the CAM and export stages take the folds; `pipeline.cv.refit=[enhance]`
plans one enhancer per fold that leaves its fold out. (tests/test_pipeline_task.py runs one end to end.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.hydra_compose import compose_task

from medal.config import options_from
from medal.data.images import write_png
from medal.data.rsna import read_index
from medal.data.split import CVOptions, HoldoutOptions, SplitOptions, fixed_holdout, load_or_make_split
from medal.enhance.experiment import held_out_pairs
from medal.errors import MedalError
from medal.models.stages import FINETUNE_MODES
from medal.pipeline.plan import StageBuilder

COHORTS = ("all", "male", "female")
ENHANCERS = ("gan", "gan_l1", "clahe", "none")


def _builder(root: Path, *overrides: str) -> StageBuilder:
    return StageBuilder(compose_task("pipeline", ["experiment=smoke", *overrides], root))


def test_the_demo_and_the_default_pipeline_train_one_model_per_cohort(tmp_path: Path) -> None:
    for experiment in ("smoke", "demo"):
        cfg = compose_task("pipeline", [f"experiment={experiment}"], tmp_path)
        assert cfg.pipeline.cv.folds is None and list(cfg.pipeline.cv.refit) == []
        names = [p.name for p in StageBuilder(cfg).plan()]
        assert "boneage_all" in names and not [n for n in names if "fold" in n], experiment


@pytest.mark.parametrize(("mode", "cohort", "enhancer"),
                         [(mode, COHORTS[i % 3], ENHANCERS[i % 4]) for i, mode in enumerate(FINETUNE_MODES)])
def test_fold_stages_compose_their_fold_with_every_finetune_mode_cohort_and_enhancer(
        tmp_path: Path, mode: str, cohort: str, enhancer: str) -> None:
    """Nine modes, each with one of the three cohorts and four enhancers, together every one of each."""
    builder = _builder(tmp_path, "pipeline.cv.folds=3", "pipeline.cv.seed=4", f"pipeline.cohorts=[{cohort}]",
                       f"pipeline.cam_cohort={cohort}", f"pipeline.enhance={enhancer}",
                       f'pipeline.stages.boneage=["model=tiny","finetune={mode}","cv.inner_val=0.2"]')
    plan = {p.name: p for p in builder.plan()}
    names, folds = list(plan), [f"boneage_{cohort}_fold{i}" for i in range(3)]
    assert [n for n in names if n.startswith("boneage_")] == folds
    assert names.index(folds[-1]) < names.index("cam") < names.index("export") < names.index("predict")
    assert not [n for n in names if n.startswith("enhance_fold")]  # fitted once unless pipeline.cv.refit says
    cfg = builder.task_config(plan[folds[1]])
    options = options_from(CVOptions, cfg.cv, "cv")
    assert (options.folds, options.fold, options.seed, options.inner_val) == (3, 1, 4, 0.2)
    assert (cfg.finetune.name, cfg.cohort.name, cfg.enhance.name) == (mode, cohort, enhancer)
    assert cfg.data.images == cfg.enhance.images_dir and cfg.paths.output_dir == str(builder.stage_dir(folds[1]))
    export = builder.task_config(plan["export"]).export
    assert export.conformal.source == "cv_plus" and list(export.regressors) == [str(builder.stage_dir(f)) for f in folds]
    checkpoint = builder.stage_dir(folds[0]) / "checkpoints" / "best-001.ckpt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.touch()
    assert plan["cam"].late() == [f"ckpt={checkpoint}"]  # the CAM explains fold 0's model


def test_every_cohort_gets_its_folds_and_one_bundle_holds_them_all(tmp_path: Path) -> None:
    builder = _builder(tmp_path, "pipeline.cv.folds=2", "pipeline.cohorts=[all,male,female]")
    names = [p.name for p in builder.plan()]
    folds = {c: [f"boneage_{c}_fold{i}" for i in range(2)] for c in COHORTS}
    assert [n for n in names if n.startswith("boneage_")] == [n for c in COHORTS for n in folds[c]]
    assert builder.fold_stage_dirs() == {c: [builder.stage_dir(n) for n in folds[c]] for c in COHORTS}
    export = builder.task_config(next(p for p in builder.plan() if p.name == "export")).export
    assert list(export.regressors) == [str(builder.stage_dir(n)) for c in COHORTS for n in folds[c]]
    plain = _builder(tmp_path, "pipeline.cohorts=[all,male]")
    assert plain.fold_stage_dirs() == {} and "export.conformal.source=cv_plus" not in " ".join(
        next(p for p in plain.plan() if p.name == "export").fixed)


@pytest.mark.parametrize("enhancer", ["gan", "gan_l1"])
def test_a_refitted_enhancer_is_planned_per_fold_and_each_fold_reads_its_own(tmp_path: Path, enhancer: str) -> None:
    builder = _builder(tmp_path, "pipeline.cv.folds=3", "pipeline.cv.refit=[enhance]", f"pipeline.enhance={enhancer}",
                       "pipeline.export=false")
    plan = builder.plan()
    names = [p.name for p in plan]
    enhancers = [f"enhance_fold{i}" for i in range(3)]
    assert [n for n in names if n.startswith("enhance_fold")] == enhancers
    assert names.index("enhance_fold2") < names.index("boneage_all_fold0") and "export" not in names
    by_name = {p.name: p for p in plan}
    images = set()
    for fold in range(3):
        enhance = builder.task_config(by_name[f"enhance_fold{fold}"])
        boneage = builder.task_config(by_name[f"boneage_all_fold{fold}"])
        assert enhance.enhance.name == enhancer and enhance.enhance.pairs.exclude is None  # set late, at run time
        assert boneage.data.images == enhance.enhance.images_dir == builder.fold_images(fold)
        images.add(boneage.data.images)
    assert len(images) == 3 and builder.task_config(by_name["enhance"]).enhance.images_dir not in images


@pytest.mark.parametrize(("overrides", "message"), [
    (["pipeline.cv.folds=1"], r"pipeline.cv.folds=1: must be >= 2"),
    (["pipeline.cv.refit=[enhance]"], r"pipeline.cv.refit=\['enhance'\]: needs pipeline.cv.folds=K"),
    (["pipeline.cv.folds=3", "pipeline.cv.refit=[segment]"],
     r"only enhance can be refitted per fold; segment is fitted once on every image"),
    (["pipeline.cv.folds=3", "pipeline.cv.refit=[enhance]", "pipeline.enhance=clahe", "pipeline.export=false"],
     r"pipeline.enhance=clahe: it learns nothing from gold standards"),
    (["pipeline.cv.folds=3", "pipeline.cv.refit=[enhance]"],
     r"pipeline.cv.refit=\[enhance\] with pipeline.export=true: .* a bundle holds one enhancer; set "
     r"pipeline.export=false"),
    (["pipeline.cv.folds=3", 'pipeline.stages.boneage=["model=tiny","cv.fold=1"]'],
     r"pipeline.stages.boneage: cv.fold=1 with pipeline.cv.folds=3: the plan sets each fold stage's"),
])
def test_a_k_fold_pipeline_setting_that_cannot_work_is_refused_before_anything_runs(
        tmp_path: Path, overrides: list[str], message: str) -> None:
    with pytest.raises(MedalError, match=message) as err:
        _builder(tmp_path, *overrides).stages()
    assert "\n" not in str(err.value)


def test_each_folds_exclusion_is_that_fold_as_its_bone_age_stages_draw_it(tiny_phantoms: Path, tmp_path: Path) -> None:
    builder = _builder(tmp_path, f"data.root={tiny_phantoms}", "pipeline.phantoms=null", "pipeline.cv.folds=3",
                       "pipeline.cv.seed=2", "pipeline.cv.refit=[enhance]", "pipeline.export=false",
                       "pipeline.cohorts=[male,female]", "pipeline.cam_cohort=null")
    cfg = builder.cfg
    index = read_index(tiny_phantoms, strict=False)
    holdout = fixed_holdout(index, cfg.data.work_dir, HoldoutOptions())
    drawn = [set(index.loc[(roles := load_or_make_split(index, SplitOptions(), None, holdout,
                                                        CVOptions(folds=3, fold=f, seed=2))).index[roles == "oof"], "id"])
             for f in range(3)]
    excluded = []
    for fold in range(3):
        path = builder.fold_exclusion(fold)
        assert builder.fold_exclusion(fold) == path and path.parent == builder.root / "cv"  # the same ids, one file
        excluded.append(set(pd.read_csv(path, dtype={"id": str})["id"]))
    assert excluded == drawn and not set.intersection(*excluded) and not set().union(*excluded) & set(holdout)

    # the enhancer's pairs (train, val and test alike) leave the fold out
    pairs = tmp_path / "pairs"
    for image_id in index["id"]:
        for folder in ("roi", "gold"):
            write_png(pairs / folder / f"{image_id}.png", np.full((8, 8), 0.5, np.float32), bits=8)
    enhance = compose_task("enhance", [f"data.root={tiny_phantoms}", f"data.work_dir={cfg.data.work_dir}",
                                       f"enhance.pairs.input_dir={pairs / 'roi'}",
                                       f"enhance.pairs.gold_dir={pairs / 'gold'}"], tmp_path / "enh")
    everything = held_out_pairs(enhance.enhance.pairs, enhance.data)
    enhance.enhance.pairs.exclude = str(builder.fold_exclusion(1))
    split = held_out_pairs(enhance.enhance.pairs, enhance.data)
    kept = set(split.train) | set(split.val) | set(split.test)
    assert kept == (set(everything.train) | set(everything.val) | set(everything.test)) - excluded[1]
    assert excluded[1] & set(everything.train) and not kept & excluded[1]
