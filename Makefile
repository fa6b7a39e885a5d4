# Every target installs what it needs first, so `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# empty: the data dir's images/, else ../shared/data/images, else scikit-image's sample photos
DEMO_IMAGES ?=
DEMO_ARGS ?=

# test-jax-next: the newer stack (Python 3.12, jax 0.11.2 on CPU, no torch) in its own venv. Python 3.12
# comes from pyenv when it has one, else python3.12 on the PATH.
PYTHON_NEXT ?= $(or $(shell ls -d $(HOME)/.pyenv/versions/3.12.*/bin/python 2>/dev/null | sort -V | tail -n1),$(shell command -v python3.12))
JAX_NEXT ?= 0.11.2
VENV_NEXT := .venv-next
PY_NEXT := $(VENV_NEXT)/bin/python
STAMP_NEXT := $(VENV_NEXT)/.installed
# extra pytest arguments for test-jax-next (e.g. -x, -k EXPR)
NEXT_PYTEST_ARGS ?=

.PHONY: install install-next test test-bench-smoke test-jax-next gpu-dry-run demo lint bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[convert,test]"
	# torchattacks (a test reference) without its torchvision requirement, which has no wheel
	# beside the CPU torch 2.13; it imports and runs without it
	$(PY) -m pip install -q --no-deps "torchattacks==3.5.1"
	# facenet-pytorch carries MTCNN's trained weights (the faces task's real judge); it pins torch<2.3,
	# numpy<2 and torchvision, none of which its nets need, so it goes in without its requirements
	$(PY) -m pip install -q --no-deps "facenet-pytorch==2.6.0"
	touch $(STAMP)

install: $(STAMP)

$(STAMP_NEXT): pyproject.toml Makefile
	@test -n "$(PYTHON_NEXT)" || { echo "test-jax-next needs Python 3.12 (pyenv or python3.12 on the PATH)"; exit 2; }
	$(PYTHON_NEXT) -m venv $(VENV_NEXT)
	$(PY_NEXT) -m pip install -q --upgrade pip
	$(PY_NEXT) -m pip install -q -e ".[test-core]" "jax==$(JAX_NEXT)" "jaxlib==$(JAX_NEXT)"
	@! $(PY_NEXT) -c "import torch" 2>/dev/null || { echo "$(VENV_NEXT) must not hold torch"; exit 2; }
	touch $(STAMP_NEXT)

install-next: $(STAMP_NEXT)

test: $(STAMP)
	$(PY) -m pytest -q tests

# every benchmark module at tiny sizes (each one's --smoke), so a change that breaks a benchmark fails
# CI; minutes, hence outside `make test` (.ci/run runs it)
test-bench-smoke: $(STAMP)
	$(PY) -m pytest -q tests/test_benchmarks.py -m bench_smoke

# every test that needs no torch, keras or TFDS, on jax $(JAX_NEXT) / Python 3.12 (the GPU machine's
# stack); the others are skipped there with the missing package named (tests/conftest.py)
test-jax-next: $(STAMP_NEXT)
	$(PY_NEXT) -m pytest -q tests $(NEXT_PYTEST_ARGS)

# benchmarks/gpu_check.sh's whole path on CPU, in $(VENV_NEXT), at tiny sizes (docs/gpu.md)
gpu-dry-run: $(STAMP_NEXT)
	PATH="$(CURDIR)/$(VENV_NEXT)/bin:$$PATH" bash benchmarks/gpu_check.sh --cpu-dry-run

# The main job: protect a folder of photos against the 2019 judge, write PNGs + report.md to out/demo/.
# Uses the real converted weights when present; otherwise says so and runs on a clearly-labelled stand-in.
demo: $(STAMP)
	$(PY) -m ppjax.runs.demo --out out/demo $(if $(DEMO_IMAGES),--images "$(DEMO_IMAGES)") $(DEMO_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check ppjax benchmarks tests

bench: $(STAMP)
	$(PY) -m benchmarks.run_all --json out/bench/all.json

clean:
	rm -rf out .pytest_cache
