"""Wheels for an offline install: medal's locked dependencies for another machine's Python and platform, and medal.

Run on a machine with network (`make wheels PY=3.12 PLATFORM=manylinux_2_28_x86_64`); carry the folder to the
air-gapped one and install there without any index:

    pip install --no-index --find-links wheels medal                        # into that environment
    pip install --no-index --no-deps --target SITE wheels/*.whl; export PYTHONPATH=SITE   # or beside it

Steps: `uv export --locked` gives the lock's pins for every platform, each with its environment marker -> the pins
whose marker holds on the target (its Python version, OS, machine) -> minus what the target's base environment
already has (`--exclude-installed-from FILE`, a `pip freeze` of it, e.g. a CUDA image that holds torch, timm,
Lightning and torchmetrics) -> `pip download --no-deps --only-binary=:all:` of each pin for the target's wheel tags
(a package with no wheel at all is built here from its sdist and kept only if it is pure Python) -> medal's own wheel
(`uv build`, configs included). The folder then holds exactly one wheel per package: `requirements.txt` lists
them, `excluded.txt` what was left to the base environment. Rerunning keeps the wheels already there.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

REPO = Path(__file__).resolve().parents[1]
PURE_TAGS = ("none-any",)  # a wheel `<name>-<ver>-py3-none-any.whl` runs on any platform
MANYLINUX_ALIASES = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}  # PEP 600's legacy names


class WheelsError(RuntimeError):
    """A problem the user must fix (bad argument, a package without a usable wheel); printed as one line."""


@dataclass(frozen=True)
class Pin:
    """One locked requirement: `name==version`, applying where `marker` holds (None: everywhere), required by
    the packages in `via` (uv's annotation; `medal` for medal's own requirements)."""

    name: str
    version: str
    marker: str | None = None
    via: tuple[str, ...] = ()

    @property
    def spec(self) -> str:
        return f"{self.name}=={self.version}"


@dataclass
class Selection:
    """What the folder will hold (`download`), what is left to the base environment (`excluded`: pin and the
    base's version, None when the freeze file names the package without one), and what only excluded packages
    require (`unneeded`: the base environment already satisfies its own packages' needs)."""

    download: list[Pin] = field(default_factory=list)
    excluded: list[tuple[Pin, str | None]] = field(default_factory=list)
    unneeded: list[Pin] = field(default_factory=list)


def parse_pins(text: str) -> list[Pin]:
    """Pins of a `uv export` requirements file (`name==version ; marker`, then `# via` lines naming who needs it).

    Examples:
        >>> pins = parse_pins("numpy==2.5.5 ; python_full_version >= '3.12'\\n    # via\\n    #   medal\\n    #   torch\\n"
        ...                   "torch==2.15.0\\n    # via medal\\n")
        >>> [(p.spec, p.marker, p.via) for p in pins]
        [('numpy==2.5.5', 'python_full_version >= "3.12"', ('medal', 'torch')), ('torch==2.15.0', None, ('medal',))]
    """
    pins: list[Pin] = []
    via: list[str] = []

    def close() -> None:
        if pins:
            pins[-1] = replace(pins[-1], via=tuple(via))
        via.clear()

    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#"):
            name = line.lstrip("#").strip()
            if raw.startswith((" ", "\t")) and name and name != "via":
                via.append(canonicalize_name(name.removeprefix("via ").strip()))
            continue
        if not line or line.startswith("-"):
            continue
        close()
        requirement = Requirement(line)
        specs = list(requirement.specifier)
        if len(specs) != 1 or specs[0].operator not in ("==", "==="):
            raise WheelsError(f"{line!r}: not a pinned requirement (uv export --locked pins every package)")
        pins.append(Pin(canonicalize_name(requirement.name), specs[0].version,
                        str(requirement.marker) if requirement.marker else None))
    close()
    return pins


def target_environment(python: str, platform: str) -> dict[str, str]:
    """PEP 508 marker values of the target machine, from its Python version and wheel platform tag.

    Examples:
        >>> env = target_environment("3.12", "manylinux_2_28_x86_64")
        >>> env["python_full_version"], env["sys_platform"], env["platform_machine"]
        ('3.12.0', 'linux', 'x86_64')
    """
    parts = python.split(".")
    if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts):
        raise WheelsError(f"--python {python}: give the target's Python as X.Y or X.Y.Z (e.g. 3.12)")
    full = python if len(parts) == 3 else f"{python}.0"
    if platform.startswith(("manylinux", "musllinux", "linux")):
        system, sys_platform, os_name = "Linux", "linux", "posix"
    elif platform.startswith("macosx"):
        system, sys_platform, os_name = "Darwin", "darwin", "posix"
    elif platform.startswith("win"):
        system, sys_platform, os_name = "Windows", "win32", "nt"
    else:
        raise WheelsError(f"--platform {platform}: not a wheel platform tag (e.g. manylinux_2_28_x86_64)")
    machine = re.sub(r"^(manylinux_\d+_\d+|manylinux\d+|musllinux_\d+_\d+|linux|macosx_\d+_\d+|win)_?", "",
                     platform) or "x86_64"
    machine = {"amd64": "AMD64", "32": "x86", "arm64": "ARM64"}.get(machine, machine) if os_name == "nt" else machine
    return {"python_version": ".".join(parts[:2]), "python_full_version": full, "sys_platform": sys_platform,
            "platform_system": system, "platform_machine": machine, "os_name": os_name,
            "implementation_name": "cpython", "platform_python_implementation": "CPython",
            "implementation_version": full, "platform_release": "", "platform_version": ""}


def platform_tags(platform: str) -> list[str]:
    """Every tag a wheel for `platform` may carry: pip matches `--platform` exactly, and a manylinux_2_28
    machine also runs wheels built for older glibc (2_27 ... 2_5 and the legacy manylinux2014/2010/1 names).

    Examples:
        >>> tags = platform_tags("manylinux_2_28_x86_64")
        >>> tags[:2], "manylinux2014_x86_64" in tags, tags[-1]
        (['manylinux_2_28_x86_64', 'manylinux_2_27_x86_64'], True, 'manylinux1_x86_64')
        >>> platform_tags("macosx_11_0_arm64")
        ['macosx_11_0_arm64']
    """
    match = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", platform)
    if not match:
        return [platform]
    glibc, arch = int(match.group(1)), match.group(2)
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(glibc, 4, -1)]
    for minor, alias in MANYLINUX_ALIASES.items():
        if glibc >= minor and (minor == 17 or arch in ("x86_64", "i686")):
            tags.append(f"{alias}_{arch}")
    return tags


def read_freeze(text: str) -> dict[str, str | None]:
    """Packages of a `pip freeze` (or `pip list --format=freeze`, or bare names): name -> version or None.

    Examples:
        >>> read_freeze("torch==2.11.0\\nTimm==1.0.20\\nmedal @ file:///src\\n-e git+https://x#egg=y\\nnumpy\\n")
        {'torch': '2.11.0', 'timm': '1.0.20', 'medal': None, 'numpy': None}
    """
    installed: dict[str, str | None] = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        if " @ " in line:
            installed[canonicalize_name(line.split(" @ ", 1)[0])] = None
            continue
        name, _, version = line.partition("===") if "===" in line else line.partition("==")
        installed[canonicalize_name(name.strip())] = version.strip() or None
    return installed


def select(pins: Iterable[Pin], environment: Mapping[str, str], installed: Mapping[str, str | None],
           root: str = "medal") -> Selection:
    """The pins whose marker holds on the target and that `root` needs through packages the base environment
    lacks, split into the folder's and the base environment's.

    Examples:
        >>> pins = parse_pins("numpy==2.4.6 ; python_full_version < '3.12'\\n    # via medal\\n"
        ...                   "numpy==2.5.5 ; python_full_version >= '3.12'\\n    # via medal\\n"
        ...                   "colorama==0.4.6 ; sys_platform == 'win32'\\n    # via tqdm\\n"
        ...                   "torch==2.15.0\\n    # via medal\\nnvidia-cccl==13.3\\n    # via torch\\n"
        ...                   "kornia==0.9.0\\n    # via medal\\n")
        >>> chosen = select(pins, target_environment("3.12", "manylinux_2_28_x86_64"), {"torch": "2.11.0"})
        >>> [p.spec for p in chosen.download], [(p.name, v) for p, v in chosen.excluded], [p.name for p in chosen.unneeded]
        (['numpy==2.5.5', 'kornia==0.9.0'], [('torch', '2.11.0')], ['nvidia-cccl'])
    """
    applying: dict[str, Pin] = {}
    for pin in pins:
        if pin.marker and not Marker(pin.marker).evaluate(dict(environment)):
            continue
        if pin.name in applying:
            raise WheelsError(f"{pin.name}: the lock pins {applying[pin.name].version} and {pin.version} for this "
                              "target; run `uv lock` and try again")
        applying[pin.name] = pin
    children: dict[str, list[str]] = {}
    for pin in applying.values():
        for parent in pin.via:
            children.setdefault(parent, []).append(pin.name)
    needed, todo = set(), [root]
    while todo:  # walk down from medal, not through what the base environment has: it brings its own needs
        for child in children.get(todo.pop(), []):
            if child not in needed:
                needed.add(child)
                if child not in installed:
                    todo.append(child)
    chosen = Selection()
    for pin in applying.values():
        if pin.name not in needed:
            chosen.unneeded.append(pin)
        elif pin.name in installed:
            chosen.excluded.append((pin, installed[pin.name]))
        else:
            chosen.download.append(pin)
    return chosen


def base_conflicts(excluded: Iterable[tuple[Pin, str | None]], requirements: Iterable[str]) -> list[str]:
    """Base-environment versions that break one of medal's own requirements (pyproject `dependencies`).

    Examples:
        >>> base_conflicts([(Pin("torch", "2.15.0"), "2.4.1"), (Pin("timm", "1.0.31"), "1.0.20")], ["torch>=2.5", "timm>=1.0"])
        ['torch 2.4.1 in the base environment, but medal needs torch>=2.5']
    """
    needs = {canonicalize_name(r.name): r for r in map(Requirement, requirements)}
    problems = []
    for pin, version in excluded:
        need = needs.get(pin.name)
        if need is not None and version is not None and not need.specifier.contains(version, prereleases=True):
            problems.append(f"{pin.name} {version} in the base environment, but medal needs {need}")
    return problems


def wheels_in(folder: Path) -> dict[str, tuple[str, Path]]:
    """The wheels a folder holds: name -> (version, path)."""
    found = {}
    for path in folder.glob("*.whl"):
        name, version, _, _ = parse_wheel_filename(path.name)
        found[str(name)] = (str(version), path)
    return found


def pip_command() -> list[str]:
    """pip of this interpreter if it has one, else uv's (`uvx pip`)."""
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    if shutil.which("uvx"):
        return ["uvx", "pip"]
    raise WheelsError("no pip here: install uv (it brings `uvx pip`) or pip")


def fetch_command(pip: list[str], python: str, tags: list[str], out: Path) -> list[str]:
    """`pip download` of wheels for the target (its Python, CPython ABIs, every tag of its platform), no deps."""
    platforms = [arg for tag in tags for arg in ("--platform", tag)]
    return [*pip, "download", "--quiet", "--no-deps", "--only-binary=:all:", "--implementation", "cp",
            "--python-version", python, *platforms, "--dest", str(out)]


def download(pin: Pin, out: Path, python: str, tags: list[str], pip: list[str]) -> Path:
    """The target's wheel of `pin` into `out`; a package with no wheel at all is built from its sdist here and
    kept only if that wheel is pure Python (`none-any`), which runs on the target too."""
    done = subprocess.run([*fetch_command(pip, python, tags, out), pin.spec], capture_output=True, text=True)
    if done.returncode == 0:
        return wheels_in(out)[pin.name][1]
    if "No matching distribution" not in done.stderr and "from versions: none" not in done.stderr:
        raise WheelsError(f"{pin.spec}: pip download failed: {done.stderr.strip().splitlines()[-1]}")
    with tempfile.TemporaryDirectory() as tmp:
        build = subprocess.run([*pip, "wheel", "--quiet", "--no-deps", "--no-binary", pin.name, "--wheel-dir", tmp,
                                pin.spec], capture_output=True, text=True)
        built = list(Path(tmp).glob("*.whl"))
        if build.returncode != 0 or len(built) != 1:
            raise WheelsError(f"{pin.spec}: no wheel for {tags[0]} and building one from the sdist failed")
        if not built[0].name.endswith(tuple(f"-{tag}.whl" for tag in PURE_TAGS)):
            raise WheelsError(f"{pin.spec}: no wheel for {tags[0]} on the index, and the one built here "
                              f"({built[0].name}) is for this machine; build it on a machine like the target")
        return Path(shutil.move(str(built[0]), out / built[0].name))


def download_all(pins: list[Pin], out: Path, python: str, tags: list[str]) -> None:
    """Every pin's wheel not in `out` yet: one pip call for all of them (fast), and where that fails (a package
    without a wheel for the target stops the whole call) one call per package, which finds it and says why."""
    pip = pip_command()
    todo = [pin for pin in pins if pin.name not in wheels_in(out)]
    if len(todo) > 1:
        print(f"downloading {len(todo)} wheels")
        subprocess.run([*fetch_command(pip, python, tags, out), *[pin.spec for pin in todo]], capture_output=True)
    have = wheels_in(out)
    for n, pin in enumerate(todo, start=1):
        if pin.name not in have:
            print(f"[{n}/{len(todo)}] {download(pin, out, python, tags, pip).name}")


def uv_binary() -> str | None:
    """The uv that runs this (`uv run` exports its own path as UV, which `make` runs need: `make setup` may
    install uv into ~/.local/bin without putting it on PATH), else the one on PATH; None without uv."""
    return os.environ.get("UV") or shutil.which("uv")


def _uv() -> str:
    found = uv_binary()
    if found is None:
        raise WheelsError("uv not found: run this with `uv run` (or `make wheels`), or put uv on PATH")
    return found


def export_pins(extras: list[str]) -> list[Pin]:
    """The lock's pins of medal's runtime dependencies (and `extras`), for every platform."""
    command = [_uv(), "export", "--locked", "--no-hashes", "--no-dev", "--no-emit-project", "--format",
               "requirements-txt", *[arg for extra in extras for arg in ("--extra", extra)]]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise WheelsError(f"{' '.join(command)}: {done.stderr.strip().splitlines()[-1]}")
    return parse_pins(done.stdout)


def build_medal(out: Path) -> Path:
    """medal's own wheel (its Hydra configs inside, as `medal/conf`), replacing an older one in `out`."""
    for old in out.glob("medal-*.whl"):
        old.unlink()
    done = subprocess.run([_uv(), "build", "--wheel", "--out-dir", str(out)], capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise WheelsError(f"uv build --wheel: {done.stderr.strip().splitlines()[-1]}")
    return wheels_in(out)["medal"][1]


def make_wheels(args: argparse.Namespace) -> Selection:
    environment, tags = target_environment(args.python, args.platform), platform_tags(args.platform)
    installed = read_freeze(args.exclude_installed_from.read_text()) if args.exclude_installed_from else {}
    extras = [e for e in args.extras.split(",") if e]
    chosen = select(export_pins(extras), environment, installed)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    needs = list(project["dependencies"]) + [r for e in extras for r in project["optional-dependencies"][e]
                                            if not r.startswith("medal[")]
    if problems := base_conflicts(chosen.excluded, needs):
        raise WheelsError("; ".join(problems) + f" (remove it from {args.exclude_installed_from} to ship the "
                          "locked version instead)")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    wanted = {pin.name: pin.version for pin in chosen.download}
    for name, (version, path) in wheels_in(out).items():  # one version of each: two stop the whole install
        if name != "medal" and wanted.get(name) != version:
            print(f"removing {path.name} (not in this selection)")
            path.unlink()
    download_all(chosen.download, out, args.python, tags)
    medal = build_medal(out)
    print(f"medal: {medal.name}")
    (out / "requirements.txt").write_text("".join(f"{p.spec}\n" for p in chosen.download)
                                          + f"medal=={wheels_in(out)['medal'][0]}\n")
    (out / "excluded.txt").write_text(
        "".join(f"{p.spec}  # the base environment has {v or 'it (version not given)'}\n" for p, v in chosen.excluded)
        + "".join(f"{p.spec}  # needed only by packages of the base environment\n" for p in chosen.unneeded))
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default="3.12", help="the target's Python version, X.Y or X.Y.Z")
    parser.add_argument("--platform", default="manylinux_2_28_x86_64",
                        help="the target's wheel platform tag (glibc 2.28 x86-64 by default)")
    parser.add_argument("--out", type=Path, default=REPO / "wheels", help="folder for the wheels (git-ignored)")
    parser.add_argument("--exclude-installed-from", type=Path, default=None, metavar="FILE",
                        help="a `pip freeze` of the target's base environment: its packages are not downloaded")
    parser.add_argument("--extras", default="", help="optional parts too, e.g. wandb,launchers,optuna (or all)")
    args = parser.parse_args()
    if args.extras == "all":
        args.extras = "wandb,launchers,optuna"
    try:
        chosen = make_wheels(args)
    except WheelsError as err:
        print(f"make_wheels: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"{len(chosen.download) + 1} wheels in {args.out} for Python {args.python} on {args.platform}; "
          f"{len(chosen.excluded) + len(chosen.unneeded)} left to the base environment (excluded.txt). "
          "On the target:\n"
          f"  pip install --no-index --find-links {args.out} medal")


if __name__ == "__main__":
    main()
