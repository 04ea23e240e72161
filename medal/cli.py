"""`medal <task> [hydra overrides]`: dispatch to the task's own Hydra app."""

from __future__ import annotations

import importlib
import sys
from importlib.machinery import ModuleSpec

from medal.errors import MedalError
from medal.extras import check_overrides
from medal.overrides import override_problem, stage_override_args
from medal.tasks import TASKS

USAGE = "usage: medal <task> [hydra overrides] [-m] [--help] [--cfg job]"


def _print_help() -> None:
    width = max(len(name) for name in TASKS)
    print(USAGE)
    print("\ntasks:")
    for name, (_, text) in TASKS.items():
        print(f"  {name:<{width}}  {text}")
    print("\n`medal <task> --help` shows a task's config groups and options (Hydra).")


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        _print_help()
        return
    task, rest = args[0], args[1:]
    if task not in TASKS:
        print(f"medal: unknown task {task!r}; choose one of: {', '.join(TASKS)} (see `medal --help`)",
              file=sys.stderr)
        raise SystemExit(2)
    try:  # stage-override lists typed the natural way -> Hydra's quoted form (medal.overrides); an optional
        rest = stage_override_args(rest)  # part this install lacks (W&B, a launcher, Optuna): one line, up front
        check_overrides(rest)
    except MedalError as err:
        print(f"medal {task}: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    module = importlib.import_module(TASKS[task][0])
    if not any(arg.startswith("-") for arg in rest):  # a plain run: flags (-m, --cfg, --help) go to Hydra
        problem = override_problem(module.main.config_name, rest, f"medal {task}")
        if problem:
            print(f"medal {task}: {problem}", file=sys.stderr)
            raise SystemExit(2)
    sys.argv = [f"medal {task}", *rest]
    if argv is None:  # medal is the main program (not called in-process, e.g. by a test)
        _launch_ddp_children_as(module.__spec__)
    module.main()


def _launch_ddp_children_as(spec: ModuleSpec | None) -> None:
    """Make Lightning's DDP launcher start each extra rank as `python -m medal.tasks.<task> <overrides>`.

    Lightning re-runs the main program once per extra device: `python -m <__main__.__spec__.name>` with this
    process's `sys.argv[1:]` plus the rank's Hydra run dir. Started as the `medal` console script, the main
    program has no spec and `sys.argv[0]` is not a file, so `trainer=ddp` could not start its ranks. The task
    module is a Hydra app of its own, so it is what every rank runs.
    """
    import __main__

    __main__.__spec__ = spec


if __name__ == "__main__":
    main()
