"""The pipeline's plan: which stages run, in order, each one task with its own config in a folder of its own.

Every stage runs a task's own primary config (`conf/<task>.yaml`), composed with the pipeline's data set,
seed and paths, the overrides the plan itself sets (`enhance=clahe`, `cohort=male`, the CAM checkpoint), and
the `pipeline.common` and `pipeline.stages.<task>` overrides that apply to it, into `<pipeline.dir>/<stage>/`.

A stage override applies to a stage whose config has its key, so GAN settings don't break the CLAHE stage and
`trainer=gpu` leaves check-data alone. Before any stage runs, `StageBuilder.stages` checks every override: one
that matches no key of any stage's config is refused in one line (a typo must not turn the 5-minute demo into
a full-size run); one that names a real key of a config this run does not compose (GAN settings with
`pipeline.enhance=none`, bone age settings with `pipeline.cohorts=[]`) is logged as unused.

With `pipeline.cv.folds=K` (k-fold cross-validation; off by default and in the demo) each cohort's bone age
stage becomes K fold stages, `boneage_<cohort>_fold<i>` (`cv.folds=K cv.fold=i cv.seed=pipeline.cv.seed`), whose
out-of-fold predictions `run_pipeline` pools (`medal.boneage.cv.pool_runs`); the CAM stage explains fold 0's model and
the export stage bundles every fold's models with CV+ intervals (`export.conformal.source=cv_plus`). The stages
before them (segmentation, the enhancer) are fitted once on every image; `pipeline.cv.refit=[enhance]` adds one
enhancer per fold, `enhance_fold<i>`, trained without the fold's images, whose images that fold's stages read.

Each stage carries the artefacts its task declares (`ARTIFACTS` in the producing module: name -> path or glob
relative to the run folder), so the report finds files by name without knowing any task's file layout.
"""

from __future__ import annotations

import importlib
import logging
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf

from medal.atomic import write_text
from medal.config import CONF_DIR, options_from
from medal.data.rsna import read_index
from medal.data.split import CVOptions, HoldoutOptions, SplitOptions, fixed_holdout, load_or_make_split
from medal.errors import MedalError
from medal.overrides import composition_problem
from medal.pipeline.stages import Stage, StopPipeline
from medal.resume import fingerprint
from medal.runs import write_metrics
from medal.tasks.runner import task_function

log = logging.getLogger("medal.pipeline")

# The tasks a pipeline runs (`pipeline.stages.<task>` keys), with their primary config's name.
PIPELINE_TASKS: dict[str, str] = {"phantoms": "phantoms", "check-data": "check_data", "segment": "segment",
                                  "enhance": "enhance", "boneage": "boneage", "cam": "cam", "export": "export",
                                  "predict": "predict"}
# The module in which each task declares its artefacts (`ARTIFACTS`), imported only when the stage is planned.
ARTIFACT_MODULES: dict[str, str] = {"segment": "medal.segment.experiment", "enhance": "medal.enhance.module",
                                    "boneage": "medal.boneage.experiment", "cam": "medal.boneage.cam_experiment",
                                    "export": "medal.bundle.export", "predict": "medal.predict.run"}
#: Tasks that read no data set of their own (their configs have no `data` group): they share only the paths.
NO_DATA_TASKS = ("phantoms", "export", "predict")
#: Enhancement methods that learn from gold standards (the enhance stage waits for a person's where there are none).
GOLD_METHODS = ("gan", "gan_l1")
#: Stages a k-fold pipeline can refit per fold (`pipeline.cv.refit`); the others are fitted once on every image.
REFITTABLE = ("enhance",)

_MISSING = object()


def compose_task_config(task_config: str, overrides: list[str]) -> DictConfig:
    """Compose `conf/<task_config>.yaml` with `overrides`, inside a running Hydra app or outside one."""
    if GlobalHydra.instance().is_initialized():
        return compose(config_name=task_config, overrides=overrides)
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        return compose(config_name=task_config, overrides=overrides)


def _placeholders(value: Any, folders: dict[str, str]) -> Any:
    """`value` (nested dicts and lists) with every string that lies in one of `folders` (placeholder -> folder,
    the first match wins) written relative to its placeholder.

    Examples:
        >>> _placeholders({"out": "/home/a/medal/outputs/x", "n": [1, "/data/rsna"]}, {"<root>": "/home/a/medal"})
        {'out': '<root>/outputs/x', 'n': [1, '/data/rsna']}
    """
    if isinstance(value, dict):
        return {key: _placeholders(item, folders) for key, item in value.items()}
    if isinstance(value, list):
        return [_placeholders(item, folders) for item in value]
    if isinstance(value, str):
        for name, folder in folders.items():
            folder = folder.rstrip("/")
            if value == folder or value.startswith(folder + "/"):
                return name + value[len(folder):]
    return value


def task_artifacts(task: str) -> dict[str, str]:
    """The artefacts task `task` declares in its run folder (none for tasks that write none others read)."""
    module = ARTIFACT_MODULES.get(task)
    return dict(importlib.import_module(module).ARTIFACTS) if module else {}


def override_list(value: Any, key: str) -> list[str]:
    """Stage overrides as a list: a YAML/Hydra list as it is, or one string split like a shell line.

    Examples:
        >>> override_list("oracle=folder 'segment.net.down_layers=[2,2,2]'", "pipeline.stages.segment")
        ['oracle=folder', 'segment.net.down_layers=[2,2,2]']
        >>> override_list(["trainer.precision=32-true"], "pipeline.common")
        ['trainer.precision=32-true']
    """
    if value is None:
        return []
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as err:
            raise MedalError(f"{key}={value!r}: {err}; give space-separated overrides") from None
    if isinstance(value, ListConfig | list | tuple):
        return [str(v) for v in value]
    raise MedalError(f"{key}={value!r}: give a list of overrides or one string of space-separated overrides")


def applies(cfg: DictConfig, override: str) -> bool:
    """Whether stage override `override` concerns `cfg`: `key=v`, `++key=v` and `~key` where the key or group
    exists; `+key=v`, which adds a key, and `experiment=<name>`, which selects an experiment file of the task
    (e.g. the bone age recipe `experiment=boneage_cpu`; a task without experiments refuses it when composed),
    to every stage it is given for.

    Examples:
        >>> cfg = OmegaConf.create({"trainer": {"max_epochs": 3}})
        >>> [applies(cfg, o) for o in ("trainer.max_epochs=1", "++trainer.max_epochs=1", "enhance.epochs=1",
        ...                            "+trainer.fast_dev_run=true", "experiment=boneage_cpu")]
        [True, True, False, True, True]
    """
    key = override.split("=", 1)[0]
    if (key.startswith("+") and not key.startswith("++")) or key == "experiment":
        return True
    return OmegaConf.select(cfg, key.lstrip("+~"), default=_MISSING) is not _MISSING


def _data_choice(cfg: DictConfig) -> str:
    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get("data")
        if choice:
            return str(choice)
    return "rsna" if cfg.data.name == "rsna" else "phantom"


def annotate_command(cfg: DictConfig, *extra: str) -> str:
    """The `medal annotate` command line for this pipeline's data set (what a stop message tells the person)."""
    return " ".join(["medal annotate", f"data={_data_choice(cfg)}", f"data.root={cfg.data.root}", *extra])


def stop_for_oracle(task_cfg: DictConfig, metrics: dict[str, Any]) -> None:
    """The folder oracle waits for a person's masks: stop the pipeline with where to put them and the tool."""
    if metrics.get("al/waiting"):
        rounds = sorted(Path(task_cfg.al.dir).glob("round_*"))
        where = rounds[-1] if rounds else Path(task_cfg.al.dir)
        raise StopPipeline(f"the folder oracle waits for {int(metrics['al/waiting'])} hand masks in {where}: draw "
                           f"them in the browser with `{annotate_command(task_cfg, f'annotate.round_dir={where}')}`, "
                           "or save each as <id>_bin.png (white hand on black, the image's size) there; then rerun "
                           "this command")


def oracle_choice(cfg: DictConfig, requested: list[str]) -> tuple[str, ...]:
    """The segmentation stage's oracle: the user's `oracle=` override where given; else the folder oracle (a person
    labels) on real data (`data=rsna`) or where the data set has no reference masks (`<data.root>/masks`), else the
    simulated one; the log says which and why."""
    if any(o.split("=", 1)[0].lstrip("+") == "oracle" for o in requested):
        return ()
    masks = Path(cfg.data.root) / "masks"
    if _data_choice(cfg) == "rsna":
        reason = "data=rsna: a person labels real radiographs"
    elif not cfg.pipeline.phantoms and not masks.is_dir():
        reason = f"{masks} not found: no reference masks to simulate a person with"
    else:
        return ()
    log.info("segmentation: oracle=folder (%s; pipeline.stages.segment=\"oracle=simulated\" to answer from "
             "reference masks instead)", reason)
    return ("oracle=folder",)


def wait_for_gold(task_cfg: DictConfig) -> None:
    """Before the GAN trains: with no gold standard in `enhance.pairs.gold_dir`, record which RoIs a person should
    adjust (`medal.annotate.request`) and stop, naming the folder, the count and the two ways on; an unfinished
    request stops again, so the GAN never trains on part of what was asked."""
    from medal.annotate.request import read_request, write_request
    from medal.config import options_from
    from medal.data.rsna import read_index
    from medal.data.split import HoldoutOptions

    enh = task_cfg.enhance
    gold_dir, request_dir = Path(enh.pairs.gold_dir), Path(enh.gold_request.dir)
    request = read_request(request_dir)
    if request is None:
        if gold_dir.is_dir() and any(gold_dir.glob("*.png")):
            return  # gold standards made elsewhere (a phantom set's gold/, a person's own folder)
        index = read_index(task_cfg.data.root, strict=task_cfg.data.strict)
        request = write_request(request_dir, index, Path(task_cfg.data.work_dir), Path(enh.pairs.input_dir), gold_dir,
                                int(enh.gold_request.count), int(task_cfg.seed),
                                options_from(HoldoutOptions, task_cfg.data.holdout, "data.holdout"))
    missing = request.missing()
    if missing:
        raise StopPipeline(
            f"the enhancer waits for {len(missing)} of {len(request.ids)} gold standards in {gold_dir} (the RoIs "
            f"listed in {request_dir / 'request.json'}): make them in the browser with "
            f"`{annotate_command(task_cfg, 'annotate.mode=gold', f'annotate.gold.request_dir={request_dir}')}` "
            "and rerun this command, or go on without a GAN with pipeline.enhance=clahe or pipeline.enhance=none")


def best_checkpoint(run_dir: Path) -> Path:
    """The best-by-val-MAE checkpoint a `medal boneage` run kept (`checkpoints/best-*.ckpt`)."""
    found = sorted((run_dir / "checkpoints").glob("best-*.ckpt"))
    if not found:
        raise MedalError(f"{run_dir}/checkpoints: no best-*.ckpt; rerun the bone age stage "
                         f"(pipeline.force=[{run_dir.name}])")
    return found[-1]


@dataclass(frozen=True)
class PlannedStage:
    """One stage of the plan: task `task` with the plan's `fixed` overrides, and `late` ones that exist only
    once the stages before it have run (the CAM stage's checkpoint)."""

    name: str
    task: str
    fixed: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()  # config subtrees besides data, seed and the stage overrides that define it
    late: Callable[[], list[str]] | None = None
    check: Callable[[DictConfig, dict[str, Any]], None] | None = None  # after the task: may stop the pipeline
    before: Callable[[DictConfig], None] | None = None  # before the task (its config): may stop the pipeline

    @property
    def config_name(self) -> str:
        return PIPELINE_TASKS[self.task]


class StageBuilder:
    """Makes the pipeline's stages from its config: one task call each, in a folder of its own."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.root = Path(cfg.pipeline.dir)
        self._composed: dict[tuple[str, tuple[str, ...]], DictConfig] = {}

    def stage_dir(self, name: str) -> Path:
        return self.root / name

    def shared_overrides(self, task: str) -> list[str]:
        """The data set, seed and paths every stage shares (the phantom generator takes only the paths)."""
        if task in NO_DATA_TASKS:
            return [f"paths.root={self.cfg.paths.root}"]
        data = self.cfg.data
        return [f"data={_data_choice(self.cfg)}", f"data.name={data.name}", f"data.root={data.root}",
                f"data.work_dir={data.work_dir}", f"data.strict={data.strict}", f"++seed={self.cfg.seed}",
                f"paths.root={self.cfg.paths.root}"]

    def overrides(self, source: str) -> list[str]:
        """`pipeline.common` or `pipeline.stages.<task>` as a list of overrides."""
        return override_list(OmegaConf.select(self.cfg, source), source)

    def _compose(self, config_name: str, overrides: Iterable[str]) -> DictConfig:
        key = (config_name, tuple(overrides))
        if key not in self._composed:
            self._composed[key] = compose_task_config(config_name, list(key[1]))
        return self._composed[key]

    def applicable(self, planned: PlannedStage) -> list[str]:
        """The stage overrides (`pipeline.common`, then `pipeline.stages.<task>`) that concern this stage, in order.

        Each is checked against the config as the ones before it leave it, so a key that only a selected option
        brings (`experiment=boneage_cpu model.timm_kwargs.output_stride=8`: the recipe's model has the kwargs)
        applies; checked against the bare task config it would be dropped. Recomposed only after an option
        selection (a key without a dot), since a value override cannot add keys.
        """
        requested = [*self.overrides("pipeline.common"), *self.overrides(f"pipeline.stages.{planned.task}")]
        base = [*self.shared_overrides(planned.task), *planned.fixed]
        cfg, chosen = self._compose(planned.config_name, base), []
        for override in requested:
            if not applies(cfg, override):
                continue
            chosen.append(override)
            if "." not in override.split("=", 1)[0]:
                cfg = self._compose_stage(planned, [*base, *chosen], chosen)
        return chosen

    def _compose_stage(self, planned: PlannedStage, overrides: list[str], chosen: list[str]) -> DictConfig:
        """Compose a stage's config; an error is one line naming the stage and the fix."""
        try:
            return self._compose(planned.config_name, overrides)
        except HydraException as err:
            problem = composition_problem(err, chosen, f"medal {planned.task}")
            raise MedalError(f"pipeline stage {planned.name}: {problem}") from None

    def plan(self) -> list[PlannedStage]:
        pipe = self.cfg.pipeline
        stages: list[PlannedStage] = []
        if pipe.phantoms:
            p = pipe.phantoms
            stages.append(PlannedStage("phantoms", "phantoms",
                                       (f"out={self.cfg.data.root}", f"n={p.n}", f"seed={p.seed}",
                                        f"image_size={p.image_size}"), keys=("pipeline.phantoms",)))
        stages.append(PlannedStage("check_data", "check-data"))
        oracle = oracle_choice(self.cfg, [*self.overrides("pipeline.common"), *self.overrides("pipeline.stages.segment")])
        stages.append(PlannedStage("segment", "segment", oracle, check=stop_for_oracle))
        stages.append(PlannedStage("enhance", "enhance", (f"enhance={pipe.enhance}",), keys=("pipeline.enhance",),
                                   before=wait_for_gold if pipe.enhance in GOLD_METHODS else None))
        for baseline in ("clahe", "none"):  # the report compares the enhancer with both on the same pairs
            if pipe.enhance != baseline:
                stages.append(PlannedStage(f"enhance_{baseline}", "enhance", (f"enhance={baseline}",)))
        stages += self._fold_enhancers()
        stages += [self._boneage_stage(cohort, name, fold) for cohort in pipe.cohorts
                   for name, fold in self.boneage_names(cohort)]
        if pipe.cam_cohort:
            if pipe.cam_cohort not in pipe.cohorts:
                raise MedalError(f"pipeline.cam_cohort={pipe.cam_cohort} is not in pipeline.cohorts="
                                 f"{list(pipe.cohorts)}; add it there or set pipeline.cam_cohort=null")
            run_dir = self.stage_dir(self.boneage_names(pipe.cam_cohort)[0][0])  # k-fold: fold 0's model explains
            stages.append(PlannedStage("cam", "cam", (f"enhance={pipe.enhance}", f"cohort={pipe.cam_cohort}"),
                                       keys=("pipeline.enhance", "pipeline.cam_cohort"),
                                       late=lambda: [f"ckpt={best_checkpoint(run_dir)}"]))
        stages += self._use_stages()
        return stages

    # -- k-fold cross-validation (pipeline.cv) -----------------------------------------------------------------
    def folds(self) -> int | None:
        """`pipeline.cv.folds`, checked with `pipeline.cv.refit` and the stage overrides; None when the bone age
        stages are not folded."""
        cv = self.cfg.pipeline.cv
        unknown = sorted(set(cv.refit) - set(REFITTABLE))
        if unknown:
            raise MedalError(f"pipeline.cv.refit={list(cv.refit)}: only {', '.join(REFITTABLE)} can be refitted per "
                             f"fold; {unknown[0]} is fitted once on every image (docs/experiments.md, \"k-fold "
                             "cross-validation\", says what that means for the folds)")
        if cv.folds is None:
            if cv.refit:
                raise MedalError(f"pipeline.cv.refit={list(cv.refit)}: needs pipeline.cv.folds=K (e.g. 5)")
            return None
        if int(cv.folds) < 2:
            raise MedalError(f"pipeline.cv.folds={cv.folds}: must be >= 2 (or null for one model per cohort)")
        for source in ("pipeline.common", "pipeline.stages.boneage"):
            for override in self.overrides(source):
                key = override.split("=", 1)[0].lstrip("+~")
                if key in ("cv.folds", "cv.fold", "cv.seed", "cv"):
                    raise MedalError(f"{source}: {override} with pipeline.cv.folds={cv.folds}: the plan sets each fold "
                                     "stage's cv.folds, cv.fold and cv.seed; set pipeline.cv.folds / pipeline.cv.seed")
        return int(cv.folds)

    def boneage_names(self, cohort: str) -> list[tuple[str, int | None]]:
        """(stage name, fold) of a cohort's bone age stages: `boneage_<cohort>`, or one per fold."""
        folds = self.folds()
        if folds is None:
            return [(f"boneage_{cohort}", None)]
        return [(f"boneage_{cohort}_fold{i}", i) for i in range(folds)]

    def _refits_enhancer(self) -> bool:
        return self.folds() is not None and "enhance" in self.cfg.pipeline.cv.refit

    def fold_images(self, fold: int) -> str:
        """Where fold `fold`'s own enhancer writes its images (`pipeline.cv.refit=[enhance]`)."""
        cv = self.cfg.pipeline.cv
        return (f"{self.cfg.data.work_dir}/enhanced/{self.cfg.pipeline.enhance}_cv{int(cv.folds)}s{int(cv.seed)}"
                f"_fold{fold}")

    def _fold_overrides(self, fold: int | None) -> tuple[str, ...]:
        """A fold stage's overrides: its fold, and the images of its own enhancer where the enhancer is refitted."""
        if fold is None:
            return ()
        cv = self.cfg.pipeline.cv
        images = (f"enhance.images_dir={self.fold_images(fold)}",) if self._refits_enhancer() else ()
        return (f"cv.folds={int(cv.folds)}", f"cv.fold={fold}", f"cv.seed={int(cv.seed)}", *images)

    def _boneage_stage(self, cohort: str, name: str, fold: int | None) -> PlannedStage:
        return PlannedStage(name, "boneage", (f"enhance={self.cfg.pipeline.enhance}", f"cohort={cohort}",
                                              *self._fold_overrides(fold)), keys=("pipeline.enhance", "pipeline.cv"))

    def _fold_enhancers(self) -> list[PlannedStage]:
        """With `pipeline.cv.refit=[enhance]`: one enhancer per fold, trained without its fold's images
        (`enhance.pairs.exclude`, `fold_exclusion`), enhancing every RoI into a folder of its own
        (`fold_images`) that the fold's bone age stages read."""
        pipe = self.cfg.pipeline
        if not self._refits_enhancer() or not pipe.cohorts:
            return []
        if pipe.enhance not in GOLD_METHODS:
            raise MedalError(f"pipeline.cv.refit=[enhance] with pipeline.enhance={pipe.enhance}: it learns nothing from "
                             "gold standards, so there is nothing to refit per fold; drop pipeline.cv.refit")
        return [PlannedStage(f"enhance_fold{fold}", "enhance",
                             (f"enhance={pipe.enhance}", f"enhance.images_dir={self.fold_images(fold)}"),
                             # the fold's ids follow the bone age stages' data.split: their overrides define it too
                             keys=("pipeline.enhance", "pipeline.cv", "pipeline.stages.boneage"), before=wait_for_gold,
                             late=lambda fold=fold: [f"enhance.pairs.exclude={self.fold_exclusion(fold)}"])
                for fold in range(int(pipe.cv.folds))]

    def fold_exclusion(self, fold: int) -> Path:
        """A CSV of the ids of fold `fold`, drawn as its bone age stages draw it (`load_or_make_split` on their
        data set, `data.split` and `cv`; the folds do not depend on the cohort), at
        `<pipeline.dir>/cv/exclude_fold<i>_<hash of the ids>.csv`."""
        cohort = str(self.cfg.pipeline.cohorts[0])
        cfg = self.task_config(self._boneage_stage(cohort, f"boneage_{cohort}_fold{fold}", fold))
        index = read_index(cfg.data.root, strict=cfg.data.strict)
        holdout = fixed_holdout(index, cfg.data.work_dir, options_from(HoldoutOptions, cfg.data.holdout, "data.holdout"))
        roles = load_or_make_split(index, options_from(SplitOptions, cfg.data.split, "data.split"), None, holdout,
                                   options_from(CVOptions, cfg.cv, "cv"))
        ids = sorted(index.loc[roles.index[roles == "oof"], "id"].astype(str))
        path = self.root / "cv" / f"exclude_fold{fold}_{fingerprint(ids)}.csv"
        if not path.is_file():
            write_text(path, "id\n" + "".join(f"{i}\n" for i in ids))
        return path

    def fold_stage_dirs(self) -> dict[str, list[Path]]:
        """The fold stages' folders of each cohort (none without `pipeline.cv.folds`): what `run_pipeline` pools."""
        if self.folds() is None:
            return {}
        return {str(c): [self.stage_dir(name) for name, _ in self.boneage_names(str(c))] for c in self.cfg.pipeline.cohorts}

    def heldout_root(self) -> Path:
        """Where `pipeline.heldout` generates its phantoms: beside the data set, `<data.root>_heldout`."""
        return Path(f"{Path(self.cfg.data.root).expanduser().resolve()}_heldout")

    def _use_stages(self) -> list[PlannedStage]:
        """Export the bone age stages' bundle and predict with it on images it never saw (held-out phantoms made
        here, or `pipeline.predict_input`): what a user of the trained system does."""
        pipe = self.cfg.pipeline
        if not pipe.export or not pipe.cohorts:
            return []
        if self._refits_enhancer():
            raise MedalError("pipeline.cv.refit=[enhance] with pipeline.export=true: each fold's models read the images "
                             "of their own enhancer, and a bundle holds one enhancer; set pipeline.export=false")
        runs = ",".join(f"'{self.stage_dir(name)}'" for c in pipe.cohorts for name, _ in self.boneage_names(c))
        # the K folds' bundle takes CV+ intervals from their out-of-fold residuals (a stage override may say otherwise)
        source = ("export.conformal.source=cv_plus",) if self.folds() is not None else ()
        stages = [PlannedStage("export", "export", (f"export.regressors=[{runs}]", *source),
                               keys=("pipeline.enhance", "pipeline.cohorts", "pipeline.export", "pipeline.cv"))]
        source = pipe.predict_input
        if pipe.heldout:
            if not pipe.phantoms:
                raise MedalError("pipeline.heldout: generates held-out phantoms like pipeline.phantoms, which is "
                                 "null; set pipeline.predict_input=<folder> for other data")
            source = str(self.heldout_root())
            stages.append(PlannedStage("heldout_phantoms", "phantoms",
                                       (f"out={source}", f"n={pipe.heldout.n}", f"seed={pipe.heldout.seed}",
                                        f"image_size={pipe.phantoms.image_size}"),
                                       keys=("pipeline.heldout", "pipeline.phantoms")))
        if source:
            stages.append(PlannedStage("predict", "predict",
                                       (f"bundle={self.stage_dir('export') / 'bundle'}", f"input={source}"),
                                       keys=("pipeline.heldout", "pipeline.predict_input")))
        return stages

    def check_overrides(self, plan: list[PlannedStage]) -> None:
        """Refuse (one line) a stage override that matches no key of any stage it could apply to; log one that
        names a real key of a config this run does not compose."""
        unknown = sorted(set(self.cfg.pipeline.stages) - set(PIPELINE_TASKS))
        if unknown:
            raise MedalError(f"pipeline.stages.{unknown[0]}: not a pipeline task; choose from "
                             f"{', '.join(PIPELINE_TASKS)}")
        applicable = {p.name: self.applicable(p) for p in plan}
        sources = [("pipeline.common", list(PIPELINE_TASKS))]
        sources += [(f"pipeline.stages.{task}", [task]) for task in self.cfg.pipeline.stages]
        for source, tasks in sources:
            targets = [p for p in plan if p.task in tasks]
            for override in self.overrides(source):
                if any(override in applicable[p.name] for p in targets):
                    continue
                used_by = self._config_with_key(override, tasks)
                if used_by is None:
                    stages = ", ".join(p.name for p in targets) or "none planned"
                    task = tasks[0] if len(tasks) == 1 else "<task>"
                    raise MedalError(f"{source}: {override} matches no key of any stage's config ({stages}); "
                                     f"check its spelling (`medal {task} --cfg job` prints every key)")
                log.warning("%s: %s is not used: no stage of this run has that key (%s has it)", source, override,
                            used_by)
        for planned in plan:  # a bad value or option (model=tinyy) fails here, before the first stage runs
            self.task_config(planned)

    def _config_with_key(self, override: str, tasks: list[str]) -> str | None:
        """Which config the pipeline could compose has the override's key: the task's own (`conf/enhance.yaml`),
        or it with some options of the group the key starts with (`conf/enhance.yaml with enhance=gan or gan_l1`)."""
        key = override.split("=", 1)[0].lstrip("+~")
        group = key.split(".", 1)[0]
        options = sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml")) if "." in key else []
        for task in tasks:
            name, shared = PIPELINE_TASKS[task], self.shared_overrides(task)
            base = self._compose(name, shared)
            if not options or group not in base:
                if applies(base, override):
                    return f"conf/{name}.yaml"
                continue
            having = [o for o in options if self._applies_with(name, [*shared, f"{group}={o}"], override)]
            if having:
                return f"conf/{name}.yaml" + ("" if having == options else f" with {group}={' or '.join(having)}")
        return None

    def _applies_with(self, config_name: str, overrides: list[str], override: str) -> bool:
        try:
            return applies(self._compose(config_name, overrides), override)
        except HydraException:  # an option that does not compose on its own (e.g. a base file)
            return False

    def task_config(self, planned: PlannedStage, late: Iterable[str] = ()) -> DictConfig:
        """The stage's task config: its base, the `late` overrides, the stage overrides that apply to it, and
        its folder as the run's output dir. A composition error is one line naming the stage and the fix."""
        chosen = self.applicable(planned)
        overrides = [*self.shared_overrides(planned.task), *planned.fixed, *late, *chosen,
                     f"paths.output_dir={self.stage_dir(planned.name)}"]
        return self._compose_stage(planned, overrides, chosen)

    def stage(self, planned: PlannedStage) -> Stage:
        """The runnable stage: run the task on its composed config; keep its metrics.json in the stage folder."""
        out = self.stage_dir(planned.name)

        def run(cfg: DictConfig) -> dict[str, Any]:
            task_cfg = self.task_config(planned, planned.late() if planned.late else ())
            if planned.before:
                planned.before(task_cfg)
            metrics = dict(task_function(planned.task)(task_cfg) or {})
            write_metrics(out, metrics)
            if planned.check:
                planned.check(task_cfg, metrics)
            return metrics

        keys = ("data", "seed", "pipeline.common", f"pipeline.stages.{planned.task}", *planned.keys)
        return Stage(planned.name, run, keys, dir=out, artifacts=task_artifacts(planned.task),
                     settings=lambda: self.settings(planned))

    def settings(self, planned: PlannedStage) -> dict[str, Any]:
        """The stage's composed task config as plain data: interpolations unresolved, `paths` left out, and the
        pipeline's folder, the data set's work folder and the project root written `<pipeline>`, `<work>` and
        `<root>` (the first two are named after a hash of the data set's absolute path; the pipeline's `data`
        key holds them unresolved). So it holds what the config files say, not where this machine keeps the
        project: moving the project redoes nothing. The `late` overrides (a checkpoint of an earlier stage)
        are left out too; the upstream fingerprint holds them."""
        chosen = self.applicable(planned)
        composed = self._compose_stage(planned, [*self.shared_overrides(planned.task), *planned.fixed, *chosen], chosen)
        settings = OmegaConf.to_container(composed, resolve=False)
        settings.pop("paths", None)
        return _placeholders(settings, {"<pipeline>": str(self.root), "<work>": str(self.cfg.data.work_dir),
                                        "<root>": str(self.cfg.paths.root)})

    def stages(self) -> list[Stage]:
        """The runnable stages, after every stage override has been checked (nothing runs before that)."""
        plan = self.plan()
        self.check_overrides(plan)
        return [self.stage(p) for p in plan]
