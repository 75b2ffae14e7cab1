# pyshelf: `make run` serves on port 3141 with data in ./data; `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export DATA_DIR ?= ./data

.PHONY: help run test test-fast lint format bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 14

$(VENV)/.installed: requirements.txt requirements-dev.txt
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	@touch $@

run: $(VENV)/.installed ## start the server on port 3141 (data in ./data)
	./entrypoint.sh serve

test: $(VENV)/.installed ## install what the tests need, then run them all
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: $(VENV)/.installed ## the tests without the end-to-end ones
	$(PY) -m pytest -q -p no:cacheprovider -m "not e2e"

lint: $(VENV)/.installed ## ruff check and format check
	$(VENV)/bin/ruff check app tests bench migrations/env.py
	$(VENV)/bin/ruff format --check app tests bench

format: $(VENV)/.installed ## apply ruff format and fixes
	$(VENV)/bin/ruff format app tests bench
	$(VENV)/bin/ruff check --fix app tests bench

bench: $(VENV)/.installed ## run the benchmarks in bench/ (never part of make test)
	$(PY) bench/mirror_install.py

clean: ## remove the venv and caches (not ./data)
	rm -rf $(VENV) .pytest_cache .ruff_cache
