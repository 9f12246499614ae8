# SemioFed — set-up and everyday commands. Every target creates .venv when missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: venv demo test lint bench clean

venv: $(STAMP)

LOCK   := configs/requirements.lock
# Two pytest workers, whole modules each (module fixtures such as a running consortium stay
# on one worker): the deployment tests mostly wait on Flower heartbeats and process start-up,
# and the other worker uses those minutes. The long end-to-end scopes are collected first
# (tests/conftest.py) and xdist keeps that order, so none of them starts last. Each worker
# runs torch on one thread (conftest).
PYTEST_WORKERS ?= -n 2 --dist loadscope --no-loadscope-reorder

# Pinned install: pyproject's exact pins, every transitive package constrained by the lock,
# then mediapipe 0.10.21 on its own with --no-deps (its wheel ships the Holistic models; its
# protobuf<5 / numpy<2 pins are stale and would break flwr).
$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools==84.2.1 -c $(LOCK)
	$(PIP) install --quiet --no-build-isolation -c $(LOCK) -e ".[dev]"
	$(PIP) install --quiet --no-deps mediapipe==0.10.21
	touch $(STAMP)

demo: venv
	$(VENV)/bin/semiofed demo

test: venv
	sh tests/setup_browser.sh
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q $(PYTEST_WORKERS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: venv
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
