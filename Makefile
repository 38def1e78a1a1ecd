# The two set-up commands: `make train` and `make test`. Both create .venv if missing, install only when
# setup.cfg changed, and are fast the second time.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TRAIN_FLAGS ?=

.PHONY: train test data bench doctor tensorboard clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip

$(VENV)/.installed: setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install -q --disable-pip-version-check -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

data: $(VENV)/.installed
	$(PY) -m distmnist.data

train: data
	$(PY) -m distmnist.train $(TRAIN_FLAGS)

test: $(VENV)/.installed-test
	$(PY) -m pytest -q tests

doctor: $(VENV)/.installed
	$(PY) -m distmnist.doctor

bench: $(VENV)/.installed
	$(PY) -m distmnist.bench

tensorboard: $(VENV)/.installed
	$(VENV)/bin/tensorboard --logdir logs --host 127.0.0.1 --port 6006

clean:
	rm -rf $(VENV) build *.egg-info
