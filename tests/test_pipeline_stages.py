"""Stage skipping, forcing, chained invalidation and resume after a crash."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from medal.errors import MedalError
from medal.pipeline.stages import Stage, StopPipeline, read_record, run_stages


def _stages(calls: list[str], crash_in: str | None = None) -> list[Stage]:
    def make(name: str):
        def run(cfg):
            if name == crash_in:
                raise RuntimeError(f"killed during {name}")
            calls.append(name)
            return {f"{name}/value": 1.0}
        return run

    return [Stage("a", make("a"), ("a",)), Stage("b", make("b"), ("b",)), Stage("c", make("c"), ("c",))]


def test_second_run_skips_finished_stages(tmp_path: Path) -> None:
    cfg = OmegaConf.create({"a": {"x": 1}, "b": {"y": 2}, "c": 3})
    calls: list[str] = []
    first = run_stages(_stages(calls), cfg, tmp_path)
    assert [r.status for r in first] == ["done"] * 3 and calls == ["a", "b", "c"]
    second = run_stages(_stages(calls), cfg, tmp_path)
    assert [r.status for r in second] == ["skipped"] * 3 and calls == ["a", "b", "c"]
    assert second[1].metrics == {"b/value": 1.0}


def test_force_redoes_only_the_named_stage(tmp_path: Path) -> None:
    cfg = OmegaConf.create({"a": 1, "b": 2, "c": 3})
    calls: list[str] = []
    run_stages(_stages(calls), cfg, tmp_path)
    calls.clear()
    results = run_stages(_stages(calls), cfg, tmp_path, force=["b"])
    assert calls == ["b"] and [r.status for r in results] == ["skipped", "done", "skipped"]


def test_changed_config_redoes_that_stage_and_everything_after(tmp_path: Path) -> None:
    calls: list[str] = []
    run_stages(_stages(calls), OmegaConf.create({"a": 1, "b": 2, "c": 3}), tmp_path)
    calls.clear()
    run_stages(_stages(calls), OmegaConf.create({"a": 1, "b": 99, "c": 3}), tmp_path)
    assert calls == ["b", "c"]


def test_changed_task_settings_redo_that_stage_even_when_the_pipeline_keys_are_the_same(tmp_path: Path) -> None:
    """What a config file says reaches the fingerprint through `Stage.settings`, not only the override strings."""
    cfg = OmegaConf.create({"a": 1, "b": 2, "c": 3})

    def stages(calls: list[str], decay: float) -> list[Stage]:
        plain = _stages(calls)
        return [plain[0], Stage("b", plain[1].run, ("b",), settings=lambda: {"scheduler": {"decay": decay}}), plain[2]]

    calls: list[str] = []
    run_stages(stages(calls, 0.05), cfg, tmp_path)
    calls.clear()
    assert [r.status for r in run_stages(stages(calls, 0.05), cfg, tmp_path)] == ["skipped"] * 3
    run_stages(stages(calls, 0.1), cfg, tmp_path)  # the same pipeline keys, another file content
    assert calls == ["b", "c"]


def test_crash_mid_pipeline_then_rerun_does_not_redo_finished_stages(tmp_path: Path) -> None:
    cfg = OmegaConf.create({"a": 1, "b": 2, "c": 3})
    calls: list[str] = []
    with pytest.raises(RuntimeError, match="killed during b"):
        run_stages(_stages(calls, crash_in="b"), cfg, tmp_path)
    assert calls == ["a"]
    results = run_stages(_stages(calls), cfg, tmp_path)
    assert calls == ["a", "b", "c"]
    assert [r.status for r in results] == ["skipped", "done", "done"]


def test_stop_pipeline_ends_cleanly_and_continues_next_time(tmp_path: Path) -> None:
    cfg = OmegaConf.create({"a": 1, "b": 2, "c": 3})
    answers = {"ready": False}

    def oracle(_cfg):
        if not answers["ready"]:
            raise StopPipeline("put answers in round_01/")
        return {}

    stages = [Stage("a", lambda c: {}, ("a",)), Stage("oracle", oracle, ("b",)), Stage("c", lambda c: {}, ("c",))]
    first = run_stages(stages, cfg, tmp_path)
    assert [r.status for r in first] == ["done", "stopped"] and "round_01" in first[1].message
    answers["ready"] = True
    second = run_stages(stages, cfg, tmp_path)
    assert [r.status for r in second] == ["skipped", "done", "done"]


def test_unknown_forced_stage_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(MedalError, match=r"pipeline.force: unknown stage\(s\) \['zzz'\]"):
        run_stages(_stages([]), OmegaConf.create({"a": 1, "b": 2, "c": 3}), tmp_path, force=["zzz"])


def test_stage_folder_is_kept_to_resume_a_crash_but_emptied_for_a_new_config(tmp_path: Path) -> None:
    """A task resumes from (or returns the finished results in) its folder: that is right after a crash of
    the same config, and wrong after a config change or `force`, which must start from an empty folder."""
    folder = tmp_path / "runs" / "b"
    seen: list[list[str]] = []

    def b(cfg):
        seen.append(sorted(p.name for p in folder.iterdir()) if folder.exists() else [])
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"ckpt_{cfg.b}").write_text("x")
        if cfg.get("crash"):
            raise RuntimeError("killed")
        return {}

    def stages():
        return [Stage("b", b, ("b",), dir=folder)]

    state = tmp_path / "state"
    with pytest.raises(RuntimeError):
        run_stages(stages(), OmegaConf.create({"b": 1, "crash": True}), state)
    run_stages(stages(), OmegaConf.create({"b": 1}), state)  # same config: resumes with what the crash left
    run_stages(stages(), OmegaConf.create({"b": 2}), state)  # new config: starts empty
    run_stages(stages(), OmegaConf.create({"b": 2}), state, force=["b"])  # forced: starts empty
    assert seen == [[], ["ckpt_1"], [], []]
    assert sorted(p.name for p in folder.iterdir()) == ["ckpt_2"]


def test_a_stage_folder_without_a_record_is_of_unknown_config_and_is_emptied(tmp_path: Path) -> None:
    """Deleting `state/` (or a folder left by an older medal) must not let a task resume what it finds."""
    folder = tmp_path / "runs" / "b"
    folder.mkdir(parents=True)
    (folder / "last.ckpt").write_text("from a config nobody recorded")
    seen: list[list[str]] = []

    def b(cfg):
        seen.append(sorted(p.name for p in folder.iterdir()) if folder.exists() else [])
        return {}

    run_stages([Stage("b", b, ("b",), dir=folder)], OmegaConf.create({"b": 1}), tmp_path / "state")
    assert seen == [[]]


def test_a_stopped_stage_is_not_recorded_as_finished_and_keeps_its_folder(tmp_path: Path) -> None:
    folder = tmp_path / "runs" / "oracle"
    state = tmp_path / "state"

    def waiting(cfg):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "round_01.json").write_text("asked")
        raise StopPipeline("answer round_01")

    run_stages([Stage("oracle", waiting, ("b",), dir=folder)], OmegaConf.create({"b": 1}), state)
    assert read_record(state, "oracle") is None
    kept: list[bool] = []
    run_stages([Stage("oracle", lambda cfg: kept.append((folder / "round_01.json").is_file()) or {"n": 2.0},
                      ("b",), dir=folder)], OmegaConf.create({"b": 1}), state)
    assert kept == [True] and read_record(state, "oracle")["metrics"] == {"n": 2.0}


def test_results_carry_the_stage_folder_and_find_declared_artefacts_by_name(tmp_path: Path) -> None:
    folder = tmp_path / "runs" / "seg"

    def seg(cfg):
        (folder / "figures").mkdir(parents=True)
        for name in ("queried_round_02.png", "queried_round_01.png", "learning_curve.png"):
            (folder / "figures" / name).write_bytes(b"png")
        return {}

    artifacts = {"curve": "figures/learning_curve.png", "queried": "figures/queried_round_*.png", "cam": "cam.png"}
    stages = [Stage("seg", seg, ("a",), dir=folder, artifacts=artifacts)]
    (done,) = run_stages(stages, OmegaConf.create({"a": 1}), tmp_path / "state")
    (skipped,) = run_stages(stages, OmegaConf.create({"a": 1}), tmp_path / "state")
    for result in (done, skipped):
        assert result.dir == folder
        assert [p.name for p in result.files("queried")] == ["queried_round_01.png", "queried_round_02.png"]
        assert result.files("curve") == [folder / "figures" / "learning_curve.png"] and result.files("cam") == []
    with pytest.raises(MedalError, match=r"stage seg: its task declares no artefact 'samples'"):
        done.files("samples")
