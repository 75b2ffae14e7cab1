# pyshelf: `make run` serves on port 3141 with data in ./data; `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEVPI_VENV := .venv-devpi
CLIENTS_VENV := .venv-clients
export DATA_DIR ?= ./data

.PHONY: help run bench-make-run test test-robustness test-scale test-fast test-container chromium postgres lint format docs bench bench-quick bench-backends bench-backends-quick bench-mirror clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 16

# Two markers in one venv: .runtime has the server's requirements (all `make run` needs),
# .installed adds the test stack (pip, twine, Playwright, moto, ...) for `make test`.
$(VENV)/.runtime: requirements.txt
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	@touch $@

$(VENV)/.installed: $(VENV)/.runtime requirements-dev.txt
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	@touch $@

$(DEVPI_VENV)/.installed: requirements-devpi.txt
	$(PYTHON) -m venv $(DEVPI_VENV)
	$(DEVPI_VENV)/bin/python -m pip install -q -r requirements-devpi.txt
	@touch $@

$(CLIENTS_VENV)/.installed: requirements-clients.txt
	$(PYTHON) -m venv $(CLIENTS_VENV)
	$(CLIENTS_VENV)/bin/python -m pip install -q -r requirements-clients.txt
	@touch $@

run: $(VENV)/.runtime ## venv with requirements.txt only, then the server on port 3141 (data in ./data)
	./entrypoint.sh serve

# The tests where the database and the blob store do the work, run a second time on PostgreSQL
# + S3 by `make test` (all of them: `make test-scale`).
SCALE_TESTS := tests/test_upload.py tests/test_backup.py tests/test_integrity.py \
	tests/test_cache.py tests/test_storage.py tests/test_locks.py tests/test_database.py \
	tests/test_files.py \
	tests/test_pagecache.py tests/test_migrations.py tests/test_schema.py tests/test_mirror.py \
	tests/e2e/test_publish.py tests/e2e/test_mirror.py tests/e2e/test_operations.py \
	tests/e2e/test_page_cache.py tests/e2e/test_bootstrap.py tests/e2e/test_private_blobs.py \
	tests/e2e/test_sessions.py tests/test_search.py tests/test_search_snippets.py \
	tests/test_search_plans.py tests/test_advisories.py

# Two pytest-xdist workers, each taking whole test files (module-scoped servers stay shared):
# the end-to-end tests mostly wait on subprocesses, so two cores run them about twice as fast.
# Files go out slowest first (tests/conftest.py SLOWEST_FILES; no reordering by test count).
# PARALLEL= runs them in one process.
PARALLEL ?= -n 2 --dist loadfile --no-loadscope-reorder

test: $(VENV)/.installed $(DEVPI_VENV)/.installed $(CLIENTS_VENV)/.installed chromium postgres ## install what the tests need, make lint (ruff, mypy, the import contracts), then run them all: SQLite + disk, then PostgreSQL + S3 (the image's: test-container)
	$(MAKE) --no-print-directory lint
	$(PY) -m pytest -q -p no:cacheprovider $(PARALLEL)
	PYSHELF_TEST_DATABASE=postgres PYSHELF_TEST_STORAGE=s3 $(PY) -m pytest -q -p no:cacheprovider $(PARALLEL) $(SCALE_TESTS)

test-robustness: $(VENV)/.installed ## tests/robustness at full size: 1000 fuzz cases per property, 2 min of load, 3 rounds of faults (about 10 min)
	FUZZ_EXAMPLES=1000 LOAD_SECONDS=120 FAULT_ROUNDS=3 $(PY) -m pytest -q -p no:cacheprovider -s tests/robustness

test-scale: $(VENV)/.installed postgres ## every unit and end-to-end test again on PostgreSQL + S3 (moto): about 20 minutes
	PYSHELF_TEST_DATABASE=postgres PYSHELF_TEST_STORAGE=s3 $(PY) -m pytest -q -p no:cacheprovider $(PARALLEL) tests --ignore=tests/browser --ignore=tests/container --ignore=tests/robustness

test-fast: $(VENV)/.installed ## the tests without the end-to-end ones
	$(PY) -m pytest -q -p no:cacheprovider -m "not e2e"

chromium: ## install Debian's chromium for the browser tests when missing (apt-get, as root)
	@[ -n "$$CHROMIUM" ] || command -v chromium >/dev/null || if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; else echo "chromium is missing and only root can apt-get it: the browser tests will be skipped"; fi

postgres: ## install Debian's PostgreSQL server for the tests when missing (apt-get, as root)
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; else echo "PostgreSQL is missing and only root can apt-get it: its tests will be skipped"; fi

test-container: export CONTAINERS_CONF := $(CURDIR)/tests/container/containers.conf
test-container: $(VENV)/.installed ## build the image with podman (installed if missing) and test it as a container
	bash tests/container/prepare.sh && $(PY) -m pytest -q -p no:cacheprovider tests/container

lint: $(VENV)/.installed ## ruff check and format check, mypy over app/, the import contracts (settings in pyproject.toml)
	$(VENV)/bin/ruff check app tests bench migrations/env.py
	$(VENV)/bin/ruff format --check app tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

docs: $(VENV)/.installed ## write docs/configuration.md and .env.example from the settings table in app/core/config.py
	$(PY) -m app.core.config_docs markdown > docs/configuration.md && $(PY) -m app.core.config_docs env-example > .env.example

format: $(VENV)/.installed ## apply ruff format and fixes
	$(VENV)/bin/ruff format app tests bench
	$(VENV)/bin/ruff check --fix app tests bench

bench: $(VENV)/.installed ## pyshelf vs devpi-server vs proxpi, about 25 minutes: writes bench/RESULTS.md (never part of make test)
	$(PY) -m bench.compare

bench-quick: $(VENV)/.installed ## the same comparison in a few minutes: a smoke test, not numbers to quote
	$(PY) -m bench.compare --quick

bench-backends: $(VENV)/.installed postgres ## pyshelf's pages and downloads on SQLite + disk vs PostgreSQL + S3 (moto): the Backends section of bench/RESULTS.md
	$(PY) -m bench.compare.backends

bench-backends-quick: $(VENV)/.installed postgres ## the same in a few minutes
	$(PY) -m bench.compare.backends --quick

bench-make-run: ## seconds from a fresh copy of HEAD (or REF=...) to the first 200 of `make run`
	bash bench/make_run.sh $(REF)

bench-mirror: $(VENV)/.installed ## pip through pyshelf's mirror, cold and warm, against the bare upstream
	$(PY) bench/mirror_install.py

clean: ## remove the venv and caches (not ./data)
	rm -rf $(VENV) $(DEVPI_VENV) $(CLIENTS_VENV) .pytest_cache .ruff_cache .mypy_cache .import_linter_cache
