# Quick start: `make demo` (set up, run the embedded demo study, print the report's path) and
# `make test` (set up, run the whole test suite). Everything installs with pip into $(VENV).

VENV ?= .venv
PYTHON ?= python3
CORES ?= 2
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[workflow,cluster,test,ants,elastix]'
	touch $@

.PHONY: setup demo test test-fast benchmark clean-demo

setup: $(STAMP)

demo: setup
	$(BIN)/snakemake --cores $(CORES)
	@echo "Report: $(CURDIR)/reports/demo/index.html"

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

benchmark: setup
	$(BIN)/python benchmarks/nodeo_speed.py
	$(BIN)/python benchmarks/workflow_dryrun.py

clean-demo:
	rm -rf results/demo reports/demo logs/demo
