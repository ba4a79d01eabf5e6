# Two commands a newcomer needs: `make run` (local demo) and `make test` (whole suite).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: help venv dev run test lint typecheck unit bench bench-quick smoke clean

help:
	@echo "make run        - local S3 server + s3spool on ./spool (Ctrl-C stops both)"
	@echo "make test       - lint, type-check and run the whole test suite"
	@echo "make bench      - side-by-side benchmark (see bench/README.md)"
	@echo "make smoke      - build and try the container image (needs podman or docker)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall when the project metadata changes.
$(VENV)/.installed-%: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[$*]'
	@touch $@

venv: $(VENV)/.installed-test
dev: $(VENV)/.installed-test

run: $(VENV)/.installed-bench
	@$(BIN)/python scripts/run_local.py

lint: $(VENV)/.installed-test
	$(BIN)/lint-imports
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src

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

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache spool .s3data
