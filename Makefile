# Two commands do everything on a fresh Linux machine with Python and pip:
#   make demo   - create .venv, install torch + the package, run the demo on a tiny built-in model
#   make test   - create .venv, install torch + the package + test deps, run the test suite
# On a GPU machine whose python3 already has torch: `make gpu-check` (see scripts/gpu_check.sh).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.14.1
DEPS := "transformers>=5.0" numpy tqdm pytest pytest-benchmark sentencepiece protobuf accelerate matplotlib ninja setuptools wheel

.PHONY: venv build test test-gpu demo bench gpu-check doctor clean

$(VENV)/.deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q $(DEPS)
	touch $@

venv: $(VENV)/.deps

# Builds autoglm_kernels._C in place (CUDA where a toolkit is found, else C++ only) and
# installs the package in editable mode. --no-build-isolation: use the torch already installed.
build: $(VENV)/.deps
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .

test: build
	$(PY) -m pytest tests -q

demo: build
	$(PY) -m autoglm_kernels demo

doctor: build
	$(PY) -m autoglm_kernels doctor

bench: build
	$(PY) -m pytest bench --benchmark-only -q

# GPU machine: uses the python3 that already has a CUDA torch (no venv).
gpu-check:
	bash scripts/gpu_check.sh

clean:
	rm -rf build dist *.egg-info autoglm_kernels/_C*.so .pytest_cache .benchmarks
