# Two commands a newcomer needs: `make run` (local demo) and `make test` (whole suite).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: help venv dev run test lint typecheck unit bench bench-quick smoke lock clean

help:
	@echo "make run        - local S3 server + s3spool on ./spool (Ctrl-C stops both)"
	@echo "make test       - lint, type-check and run the whole test suite"
	@echo "make bench      - side-by-side benchmark (see bench/README.md)"
	@echo "make smoke      - build and try the container image (needs podman or docker)"
	@echo "make lock       - resolve constraints.txt afresh from pyproject.toml's ranges"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall when the project metadata or the lock changes.  constraints.txt pins every
# package (pyproject.toml keeps ranges), so tests and benchmarks name exact versions.
$(VENV)/.installed-%: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[$*,compress]'
	@touch $@

venv: $(VENV)/.installed-test
dev: $(VENV)/.installed-test

run: $(VENV)/.installed-bench
	@$(BIN)/python scripts/run_local.py

lint: $(VENV)/.installed-test
	$(BIN)/lint-imports
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy --strict src

test: lint typecheck
	$(BIN)/python -m pytest $(PYTEST_ARGS)

unit: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench: $(VENV)/.installed-bench
	$(BIN)/python -m bench

bench-quick: $(VENV)/.installed-bench
	$(BIN)/python -m bench --quick --reps 1

smoke: $(VENV)/.installed-test
	bash docker/smoke.sh

# The newest versions within pyproject.toml's ranges, resolved in a scratch venv.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet '.[test,bench,compress]'
	{ sed -n '1,2p' constraints.txt; .lock-venv/bin/python -m pip freeze --exclude s3spool; } \
		> constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) .lock-venv .pytest_cache .mypy_cache .ruff_cache spool .s3data
