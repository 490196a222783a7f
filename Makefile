# Jumpgate developer tasks. `make test` works on a fresh Debian machine (run as root for deps).
SHELL := /bin/bash
.DEFAULT_GOAL := test

PYTHON3 ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed

.PHONY: venv deps test check fmt demo docs-gen bench

venv: $(STAMP)

$(PY):
	$(PYTHON3) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

deps:
	bash scripts/install-system-deps.sh

test: deps venv
	$(PY) -m pytest -n auto -q

check: venv
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(MAKE) test

fmt: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

demo: deps venv
	bash scripts/demo.sh

docs-gen: venv
	$(PY) scripts/gen_cli_docs.py

bench: venv
	bash bench/run_all.sh
