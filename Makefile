# The two set-up commands: `make train` and `make test`. Both create .venv if missing, install only when
# setup.cfg changed, and are fast the second time.
# TensorFlow 2.21 has wheels for Python 3.10-3.13 only: the venv is made with the first of these in that range
# (PYTHON=... overrides).
PYTHON ?= $(shell for p in python3 python3.13 python3.12 python3.11 python3.10; do command -v $$p >/dev/null && \
  $$p -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 13))' 2>/dev/null && { echo $$p; break; }; \
  done)
VENV ?= .venv
PY := $(VENV)/bin/python
TRAIN_FLAGS ?=
SWEEP_FLAGS ?= --learning_rate=0.5,1.0,1.5 --batch_size=64,128 --epochs=2

.PHONY: train test test-fast test-fuzz lint format data bench sweep doctor tensorboard image image-lock clean

$(PY):
	$(if $(strip $(PYTHON)),,$(error no Python 3.10-3.13 here (TensorFlow 2.21 has wheels for those only): \
	  install one (python3.12 for example) or name it with make PYTHON=/path/to/python3.12))
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip

$(VENV)/.installed: setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install -q --disable-pip-version-check -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

$(VENV)/.installed-lint: $(VENV)/.installed
	$(PY) -m pip install -q --disable-pip-version-check -e '.[lint]'
	touch $@

$(VENV)/.installed-lock: $(VENV)/.installed
	$(PY) -m pip install -q --disable-pip-version-check -e '.[lock]'
	touch $@

$(VENV)/.installed-bench: $(VENV)/.installed
	$(PY) -m pip install -q --disable-pip-version-check -e '.[bench]'
	touch $@

data: $(VENV)/.installed
	$(PY) -m distmnist.data

train: data
	$(PY) -m distmnist.train $(TRAIN_FLAGS)

# One run per point of the grid into logs/sweep, then a table, sweep.json and sweep.svg there.
sweep: data
	$(PY) -m distmnist.sweep $(SWEEP_FLAGS)

# The tools of the lint extra, from the venv (never whichever ones the PATH offers): ruff's linter and formatter
# over the package, the bench and the tests (pyproject.toml), mypy over the package, and ShellCheck over the launch
# scripts and the scripts they write for the VMs (.ci/shellcheck). `make format` applies ruff's formatting and fixes.
lint: $(VENV)/.installed-lint
	$(VENV)/bin/ruff check distmnist bench tests
	$(VENV)/bin/ruff format --check distmnist bench tests
	$(VENV)/bin/mypy
	.ci/shellcheck $(VENV)/bin/shellcheck

format: $(VENV)/.installed-lint
	$(VENV)/bin/ruff format distmnist bench tests
	$(VENV)/bin/ruff check --fix distmnist bench tests

# Two test processes (pytest-xdist): most tests wait on processes they start (TensorFlow's import is mostly one
# core), so two at a time fill both cores. TESTS_N=1 runs them one at a time.
TESTS_N ?= 2
test: lint $(VENV)/.installed-test
	$(PY) -m pytest -q -n $(TESTS_N) --durations=15 tests

# No cluster, network or real-MNIST training, few subprocesses: under a minute on 2 cores.
test-fast: $(VENV)/.installed-test
	$(PY) -m pytest -q -n $(TESTS_N) -m "not slow and not cluster and not network and not gpu" tests

# The fuzz tier at size (make test runs it small: 3 mutated files per seed, one process per kind): mutated files of
# every kind distmnist reads, in this process and through the entry points (tests/test_fuzz.py, docs/testing.md).
FUZZ_CASES ?= 200
FUZZ_PROCESSES ?= 4
test-fuzz: $(VENV)/.installed-test
	DISTMNIST_FUZZ_CASES=$(FUZZ_CASES) DISTMNIST_FUZZ_PROCESSES=$(FUZZ_PROCESSES) \
	  $(PY) -m pytest -q -n $(TESTS_N) --durations=10 -m fuzz tests

doctor: $(VENV)/.installed
	$(PY) -m distmnist.doctor

bench: $(VENV)/.installed-bench
	$(PY) -m bench

tensorboard: $(VENV)/.installed
	$(VENV)/bin/tensorboard --logdir logs --host 127.0.0.1 --port 6006

clean:
	rm -rf $(VENV) build *.egg-info

# The job image (Dockerfile) for Kubernetes and Vertex AI, where Docker is installed.
VERSION = $(shell sed -n 's/^version = //p' setup.cfg)
IMAGE ?= distmnist:$(VERSION)
image:
	@docker info >/dev/null 2>&1 || { echo "make image: no Docker here (docker info fails): run it where Docker runs, or docker build -t $(IMAGE) . there" >&2; exit 2; }
	docker build -t $(IMAGE) .

# The image's Python packages, each pinned with the hashes of its files (the Dockerfile installs them with pip
# --require-hashes): uv resolves setup.cfg's dependencies with the gpu extra and requirements/image.in for the
# base image's Python (read from the Dockerfile's FROM) on linux x86_64 and aarch64 (glibc 2.36: Debian bookworm).
# Run it to take newer releases, and commit the two files.
IMAGE_PYTHON = $(shell sed -n 's/^FROM python:\([0-9.]*\)-.*/\1/p' Dockerfile)
image-lock: $(VENV)/.installed-lock
	for target in amd64:x86_64 arm64:aarch64; do \
	  $(VENV)/bin/uv pip compile --quiet setup.cfg requirements/image.in --extra gpu --generate-hashes \
	    --only-binary :all: --python-version $(IMAGE_PYTHON) --python-platform $${target#*:}-manylinux_2_36 \
	    --custom-compile-command "make image-lock" -o requirements/image-$${target%%:*}.txt || exit 2; \
	done
