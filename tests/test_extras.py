"""Optional parts (pyproject extras: wandb, launchers, optuna): a minimal install imports and runs medal without
them, and a run that asks for one it lacks is refused in one line naming the extra."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.minimal_install import run_minimal

from medal import cli, extras
from medal.errors import MedalError
from medal.loggers import wandb_logger


@pytest.mark.parametrize(("override", "extra"), [
    ("logger=wandb", "wandb"), ("logger=[csv,wandb]", "wandb"), ("table.source=wandb", "wandb"),
    ("hydra/launcher=joblib", "launchers"), ("hydra/launcher=slurm_gpu", "launchers"),
    ("hydra/launcher=submitit_local", "launchers"), ("hparams_search=optuna_boneage", "optuna"),
    ("hydra/sweeper=optuna", "optuna"),
])
def test_an_override_needing_a_missing_extra_is_refused_naming_it(override: str, extra: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    extras.check_overrides([override])  # this environment has every extra
    monkeypatch.setattr(extras, "installed", lambda module: False)
    with pytest.raises(MedalError, match=rf"^{override.replace('[', '.').replace(']', '.')} needs .*"
                                         rf"pip install 'medal\[{extra}\]'"):
        extras.check_overrides(["trainer=cpu", override])


def test_cli_refuses_before_hydra_starts(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(extras, "installed", lambda module: module != "hydra_plugins.hydra_joblib_launcher")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["boneage", "-m", "hydra/launcher=joblib", "seed=0,1"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert err.startswith("medal boneage: hydra/launcher=joblib needs hydra_joblib_launcher")


def test_wandb_logger_without_wandb_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(extras, "installed", lambda module: module != "wandb")
    with pytest.raises(MedalError, match=r"^logger=wandb needs wandb .*medal\[wandb\]"):
        wandb_logger(tmp_path)


def test_a_minimal_install_imports_every_module_and_knows_what_it_lacks(tmp_path: Path) -> None:
    done = run_minimal(
        "import importlib, pkgutil, medal\n"
        "names = [m.name for m in pkgutil.walk_packages(medal.__path__, 'medal.') if not m.name.endswith('__main__')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "from medal.extras import check_overrides\n"
        "from medal.errors import MedalError\n"
        "for override in ['logger=wandb', 'hydra/launcher=joblib', 'hparams_search=optuna_boneage']:\n"
        "    try:\n"
        "        check_overrides([override])\n"
        "    except MedalError as err:\n"
        "        print(err)\n"
        "print(len(names), 'modules')\n", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert [line.split(" needs ")[0] for line in lines[:3]] == ["logger=wandb", "hydra/launcher=joblib",
                                                                 "hparams_search=optuna_boneage"]
    assert int(lines[-1].split()[0]) > 80  # every module of the package imported
