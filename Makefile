# pyshelf: `make run` serves on port 3141 with data in ./data; `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEVPI_VENV := .venv-devpi
export DATA_DIR ?= ./data

.PHONY: help run test test-robustness test-fast test-container chromium lint format bench bench-quick bench-mirror clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 16

$(VENV)/.installed: requirements.txt requirements-dev.txt
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	@touch $@

$(DEVPI_VENV)/.installed: requirements-devpi.txt
	$(PYTHON) -m venv $(DEVPI_VENV)
	$(DEVPI_VENV)/bin/python -m pip install -q -r requirements-devpi.txt
	@touch $@

run: $(VENV)/.installed ## start the server on port 3141 (data in ./data)
	./entrypoint.sh serve

test: $(VENV)/.installed $(DEVPI_VENV)/.installed chromium ## install what the tests need, then run them all (the image's: test-container)
	$(PY) -m pytest -q -p no:cacheprovider

test-robustness: $(VENV)/.installed ## the hostile-input fuzz tests with 1000 cases per property (make test runs 30)
	FUZZ_EXAMPLES=1000 $(PY) -m pytest -q -p no:cacheprovider tests/robustness

test-fast: $(VENV)/.installed ## the tests without the end-to-end ones
	$(PY) -m pytest -q -p no:cacheprovider -m "not e2e"

chromium: ## install Debian's chromium for the browser tests when missing (apt-get, as root)
	@[ -n "$$CHROMIUM" ] || command -v chromium >/dev/null || if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; else echo "chromium is missing and only root can apt-get it: the browser tests will be skipped"; fi

test-container: export CONTAINERS_CONF := $(CURDIR)/tests/container/containers.conf
test-container: $(VENV)/.installed ## build the image with podman (installed if missing) and test it as a container
	bash tests/container/prepare.sh && $(PY) -m pytest -q -p no:cacheprovider tests/container

lint: $(VENV)/.installed ## ruff check and format check
	$(VENV)/bin/ruff check app tests bench migrations/env.py gunicorn.conf.py
	$(VENV)/bin/ruff format --check app tests bench gunicorn.conf.py

format: $(VENV)/.installed ## apply ruff format and fixes
	$(VENV)/bin/ruff format app tests bench gunicorn.conf.py
	$(VENV)/bin/ruff check --fix app tests bench gunicorn.conf.py

bench: $(VENV)/.installed ## pyshelf vs devpi-server vs proxpi, about 25 minutes: writes bench/RESULTS.md (never part of make test)
	$(PY) -m bench.compare

bench-quick: $(VENV)/.installed ## the same comparison in a few minutes: a smoke test, not numbers to quote
	$(PY) -m bench.compare --quick

bench-mirror: $(VENV)/.installed ## pip through pyshelf's mirror, cold and warm, against the bare upstream
	$(PY) bench/mirror_install.py

clean: ## remove the venv and caches (not ./data)
	rm -rf $(VENV) $(DEVPI_VENV) .pytest_cache .ruff_cache
