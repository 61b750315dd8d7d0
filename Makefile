# Developer and CI entry points. `make run` starts everything locally with no servers;
# `make test` runs the suite against the local PostgreSQL and Redis (CI runs it through .ci/run).

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
# Written after a successful install; pip runs again only when a requirements file changes.
STAMP := $(VENV)/.installed
PIP := $(VPY) -m pip --disable-pip-version-check

# Used by `make test` unless the environment already sets them.
TEST_DATABASE_URL := postgres://postgres@127.0.0.1:5432/dagger
TEST_BROKER_URL := redis://127.0.0.1:6379/15

# Extra arguments: `make test PYTEST_ARGS="-k listener -x"`, `make run RUN_ARGS="--port 8001"`.
PYTEST_ARGS ?=
RUN_ARGS ?=

.PHONY: help venv services browser test screenshot run lint migrations-check

help:
	@echo "make run               start the embedded stack (SQLite, file broker, worker, beat, web)"
	@echo "make test              run the test suite on local PostgreSQL and Redis"
	@echo "make screenshot        docs/images/workflow-page.png (the README's), from the browser test"
	@echo "make lint              ruff check and ruff format --check"
	@echo "make migrations-check  fail if models and migrations disagree"
	@echo "make faults            every fault campaign at full size, figures into docs/reliability.md"
	@echo "make venv              create or update .venv"
	@echo "make services          make sure PostgreSQL and Redis are running"

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@test -x $(VPY) || { echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	$(PIP) install -r requirements-dev.txt
	$(PIP) install -e .
	@touch $@

services:
	bash scripts/ensure_services.sh

browser:
	bash scripts/ensure_browser.sh

# The suite runs outside the embedded mode (DATABASE_URL set), where settings require a secret key.
test: venv services browser
	DATABASE_URL="$${DATABASE_URL:-$(TEST_DATABASE_URL)}" \
	DJANGO_SECRET_KEY="$${DJANGO_SECRET_KEY:-test-only-insecure-secret-key}" \
	CELERY_BROKER_URL="$${CELERY_BROKER_URL:-$(TEST_BROKER_URL)}" \
	$(VPY) -m pytest -p no:cacheprovider -ra $(PYTEST_ARGS)

# The README's screenshot of a workflow's admin page, saved by the browser test that checks it.
screenshot:
	DAGGER_SCREENSHOT=docs/images/workflow-page.png $(MAKE) test \
		PYTEST_ARGS="tests/test_admin_browser.py -k test_workflow_page_panels_and_template_page_in_a_browser"

# No DATABASE_URL/CELERY_BROKER_URL here on purpose: the launcher runs on the embedded defaults
# unless the user exported their own.
run: venv
	$(VPY) scripts/run_embedded.py $(RUN_ARGS)

lint: venv
	$(VPY) -m ruff check .
	$(VPY) -m ruff format --check .

migrations-check: venv
	$(VPY) manage.py makemigrations --check --dry-run

# Benchmarks (docs/benchmarks.md): `make bench BENCH_ARGS="--n 200 1000"`.
BENCH_ARGS ?=
.PHONY: bench
bench: venv services
	DJANGO_SECRET_KEY="$${DJANGO_SECRET_KEY:-bench-only-insecure-secret-key}" $(VPY) -m benchmarks $(BENCH_ARGS)

# Fault campaigns (docs/reliability.md): every test marked `campaign` at full size (DAGGER_FAULTS=full),
# then the table of their figures (var/faults/*.json) into docs/reliability.md, even when a campaign
# failed (its figures say why). One campaign: `make faults FAULTS_TESTS=tests/faults/test_worker_kill.py`.
# A record is replaced when its campaign runs again; the table's size column tells short from full.
FAULTS_TESTS ?= tests/faults
FAULTS_ARGS ?=
.PHONY: faults
faults: venv services
	DAGGER_FAULTS=full \
	DJANGO_SECRET_KEY="$${DJANGO_SECRET_KEY:-test-only-insecure-secret-key}" \
	DATABASE_URL="$${DATABASE_URL:-$(TEST_DATABASE_URL)}" \
	CELERY_BROKER_URL="$${CELERY_BROKER_URL:-$(TEST_BROKER_URL)}" \
	$(VPY) -m pytest -p no:cacheprovider -ra -m campaign $(FAULTS_TESTS) $(FAULTS_ARGS); status=$$?; \
	$(VPY) scripts/faults_table.py --write docs/reliability.md; exit $$status
