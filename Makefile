# The README's two commands: `make demo` and `make test`. Both install what they need first.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
RUN := $(UV) run --locked
PYTEST_WORKERS ?= 2
# `make wheels`: the target machine of an offline install (README "Air-gapped install")
PY ?= 3.12
PLATFORM ?= manylinux_2_28_x86_64
WHEELS ?= wheels
EXTRAS ?=
EXCLUDE_INSTALLED_FROM ?=
# `make gpu-check`: the Python that runs it (on an offline GPU server: GPU_PYTHON=python3) and its arguments
GPU_PYTHON ?= $(RUN) python
GPU_CHECK_ARGS ?=
# `make bench-scale`: e.g. BENCH_SCALE_ARGS="--stages check_data --force check_data"
BENCH_SCALE_ARGS ?=

.PHONY: setup browser demo test test-slow test-full bench bench-scale figure12-smoke figure12 lint clean wheels gpu-check

setup:  ## install uv if missing, then the locked environment
	@command -v uv >/dev/null 2>&1 || test -x $(HOME)/.local/bin/uv || python3 -m pip install --user --quiet uv
	$(UV) sync --locked

browser:  ## Debian's headless Chromium for the browser tests: report, predictions page, medal annotate (skipped with a reason where it can't be installed)
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1; } || \
	  echo "chromium not installed: the browser tests (report, predictions, annotate) will be skipped"

demo: setup  ## the main job: the whole pipeline on freshly generated phantoms (5-7 min on 2 idle cores)
	$(RUN) medal pipeline experiment=demo

test: setup browser  ## fast tests (no `slow` marker)
	$(RUN) pytest -q -n $(PYTEST_WORKERS) --timeout 900

test-slow: setup browser  ## only the `slow` tests (CI runs them after `make test`)
	$(RUN) pytest -q -n $(PYTEST_WORKERS) -m slow --timeout 3600

test-full: setup browser  ## every test, `slow` ones included
	$(RUN) pytest -q -n $(PYTEST_WORKERS) -m "slow or not slow" --timeout 3600

bench: setup  ## every benchmark but the scale one -> outputs/bench/*.json, *.md and summary.md
	@for s in $(filter-out scripts/bench_summary.py scripts/bench_scale.py,$(wildcard scripts/bench_*.py)); do \
	  echo "== $$s"; $(RUN) python $$s || exit 1; done
	$(RUN) python scripts/bench_summary.py

bench-scale: setup  ## every stage's time and memory up to 12,611 and 100,000 images (hours; resumes) -> outputs/bench/scale.*
	nice -n 5 $(RUN) python scripts/bench_scale.py $(BENCH_SCALE_ARGS)

figure12-smoke: setup  ## Figure 12 (54 runs) on phantoms, tiny model; tables from the folder and offline W&B must match
	$(RUN) python scripts/figure12_smoke.py --root outputs/figure12_smoke --n 96 --epochs 3

wheels: setup  ## wheels for an offline install: make wheels PY=3.12 PLATFORM=manylinux_2_28_x86_64 [EXCLUDE_INSTALLED_FROM=base-freeze.txt] [EXTRAS=wandb,launchers,optuna]
	$(RUN) python scripts/make_wheels.py --python $(PY) --platform $(PLATFORM) --out $(WHEELS) \
	  $(if $(EXCLUDE_INSTALLED_FROM),--exclude-installed-from $(EXCLUDE_INSTALLED_FROM)) $(if $(EXTRAS),--extras $(EXTRAS))

gpu-check:  ## medal at the paper's sizes on one GPU in <= 8 min -> outputs/bench/gpu/ (GPU_CHECK_ARGS="--device cpu --tiny" on a CPU)
	$(GPU_PYTHON) scripts/gpu_check.py $(GPU_CHECK_ARGS)

figure12: setup  ## Figure 12 on phantoms with signal: 5 fixed modes + 4 PTL readings, GAN-enhanced RoIs, 270 runs (5 seeds)
	nice -n 5 $(RUN) python scripts/figure12_phantoms.py --root outputs/figure12_ptl

lint: setup
	$(RUN) ruff check medal tests scripts

clean:  ## remove run outputs and caches (keeps outputs/.gitkeep)
	find outputs -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
	rm -rf .pytest_cache .ruff_cache
