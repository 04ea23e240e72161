"""The one resume mechanism: reuse finished work, continue a crashed attempt, rebuild or refuse on a change."""

from __future__ import annotations

from pathlib import Path

import pytest

from medal.errors import MedalError
from medal.resume import Marker, fingerprint


def test_finished_work_with_the_same_parts_is_reused(tmp_path: Path) -> None:
    marker = Marker.in_folder(tmp_path / "out", "coarse", outputs=[tmp_path / "out" / "masks"])
    parts = {"size": 64, "version": 2}
    assert marker.begin(parts) == "fresh"
    (tmp_path / "out" / "masks").mkdir()
    (tmp_path / "out" / "masks" / "a.png").write_text("x")
    marker.finish(parts, images=1)
    assert marker.begin(parts) == "done"
    assert marker.read()["images"] == 1
    assert (tmp_path / "out" / "masks" / "a.png").is_file()


def test_a_crashed_attempt_of_the_same_parts_resumes_and_keeps_its_outputs(tmp_path: Path) -> None:
    out = tmp_path / "stage"
    marker = Marker.in_folder(tmp_path, "stage", outputs=[out])
    assert marker.begin({"k": 1}) == "fresh"
    out.mkdir()
    (out / "last.ckpt").write_text("partial")
    assert marker.begin({"k": 1}) == "resume"  # no finish(): the first attempt crashed
    assert (out / "last.ckpt").read_text() == "partial"


def test_other_parts_rebuild_clears_the_old_outputs(tmp_path: Path) -> None:
    out = tmp_path / "stage"
    marker = Marker.in_folder(tmp_path, "stage", outputs=[out])
    marker.begin({"k": 1})
    out.mkdir()
    (out / "old.png").write_text("old config")
    marker.finish({"k": 1})
    assert marker.begin({"k": 2}) == "fresh"
    assert not out.exists()
    # and a crashed attempt of the *old* parts is not resumed under the new ones either
    marker.begin({"k": 3})
    out.mkdir()
    (out / "partial").write_text("k=3")
    assert marker.begin({"k": 4}) == "fresh" and not out.exists()


def test_force_redoes_finished_work(tmp_path: Path) -> None:
    out = tmp_path / "enhanced"
    marker = Marker.in_folder(tmp_path, "enhanced", outputs=[out])
    marker.begin({"k": 1})
    out.mkdir()
    marker.finish({"k": 1})
    assert marker.begin({"k": 1}, force=True) == "fresh"
    assert not out.exists()


def test_refuse_names_the_first_changed_part_and_deletes_nothing(tmp_path: Path) -> None:
    labels = tmp_path / "al" / "labels"
    marker = Marker.in_folder(tmp_path / "al", "settings", policy="refuse", outputs=[labels], what="an AL run")
    marker.begin({"net": {"width": 8}, "lr": 0.001})
    labels.mkdir(parents=True)
    (labels / "a.png").write_text("a person's mask")
    with pytest.raises(MedalError, match=r"an AL run made with other settings \(net.width\)"):
        marker.begin({"net": {"width": 16}, "lr": 0.001})
    assert (labels / "a.png").is_file()
    assert marker.begin({"net": {"width": 8}, "lr": 0.001}) == "resume"


def test_an_unreadable_record_counts_as_none(tmp_path: Path) -> None:
    marker = Marker.in_folder(tmp_path, "x")
    marker.path.parent.mkdir(parents=True)
    marker.path.write_text("{not json")
    assert marker.begin({"a": 1}) == "fresh"


def test_fingerprint_resolves_configs_and_ignores_key_order() -> None:
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"a": 1, "b": "${a}"})
    assert fingerprint(cfg) == fingerprint({"b": 1, "a": 1})
    assert fingerprint(Path("/x")) == fingerprint("/x")


def test_unknown_policy_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(MedalError, match="resume policy 'keep'"):
        Marker(tmp_path / "m.json", policy="keep")  # type: ignore[arg-type]


def test_clear_unrecorded_treats_outputs_without_a_record_as_unknown_work(tmp_path: Path) -> None:
    out = tmp_path / "stage"
    out.mkdir()
    (out / "last.ckpt").write_text("whose?")
    kept = Marker(tmp_path / "state" / "kept.json", outputs=[out])
    assert kept.begin({"k": 1}) == "fresh" and (out / "last.ckpt").is_file()  # default: a folder may be a person's
    cleared = Marker(tmp_path / "state" / "cleared.json", outputs=[out], clear_unrecorded=True)
    assert cleared.begin({"k": 1}) == "fresh" and not out.exists()
    out.mkdir()
    (out / "partial").write_text("k=1")
    assert cleared.begin({"k": 1}) == "resume" and (out / "partial").is_file()  # its own crashed attempt


def test_clear_unrecorded_needs_the_rebuild_policy(tmp_path: Path) -> None:
    with pytest.raises(MedalError, match="clear_unrecorded needs policy 'rebuild'"):
        Marker(tmp_path / "m.json", policy="refuse", clear_unrecorded=True)
