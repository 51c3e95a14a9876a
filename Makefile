# One command per task, the same for a developer and CI.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DATA ?= data/movielens-100k
STORE ?= store
HOST ?= 127.0.0.1
PORT ?= 8000
TRAIN_ARGS ?=
INDEX_ARGS ?=
SERVE_ARGS ?=
FUSIONREC := $(VENV)/bin/fusionrec
# every cache inside the repository: nothing is written outside it and the virtualenv
export FUSIONREC_CACHE_DIR ?= $(CURDIR)/.cache/fusionrec
export PIP_CACHE_DIR ?= $(CURDIR)/.cache/pip
export MPLCONFIGDIR ?= $(CURDIR)/.cache/matplotlib
export HF_HOME ?= $(CURDIR)/.cache/huggingface

.PHONY: install install-system run retrain data mpnet train index serve report test lint typecheck bench bench-quality bench-index bench-serve loadtest reliability soak rehearsal clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch first: 2.13.0 is a local CPU build; letting pip choose would pull a CUDA build
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# redis-server and PostgreSQL are used by the tests (they start their own on free ports),
# chromium by the demo page's browser test (Playwright drives the system browser; it
# downloads none), nginx by the rehearsal (its own on a free port: the distribution's
# service on port 80 is stopped and disabled)
install-system:
	@command -v redis-server >/dev/null && command -v chromium >/dev/null \
		&& { command -v nginx >/dev/null || test -x /usr/sbin/nginx; } \
		&& ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		{ apt-get update -qq && apt-get install -y -qq redis-server chromium postgresql nginx \
		&& { systemctl disable --now nginx >/dev/null 2>&1 || service nginx stop >/dev/null 2>&1 \
		|| true; }; }

# The main job: fetch MovieLens-100k, train, index, serve on http://$(HOST):$(PORT).
# A second `make run` serves the store's CURRENT again when it is indexed and was trained on
# the same data with the same config (TRAIN_ARGS included); `make retrain` trains anyway.
# How long each step takes on 2 CPU cores: README, Quick start.
run: data
	@echo "train: skipped when CURRENT matches the data and config (make retrain forces it)"
	$(FUSIONREC) train --data $(DATA) --store $(STORE) $(if $(RETRAIN),,--reuse-current) $(TRAIN_ARGS)
	$(FUSIONREC) index --store $(STORE) --if-unindexed $(INDEX_ARGS)
	$(FUSIONREC) serve --store $(STORE) --host $(HOST) --port $(PORT) $(SERVE_ARGS)

retrain:
	$(MAKE) --no-print-directory run RETRAIN=1

# The steps one by one: `make data train index serve` always trains and indexes
data: install
	@if [ ! -e "$(DATA)/interactions.csv" ] && [ ! -e "$(DATA)/interactions.parquet" ]; then \
		$(FUSIONREC) data movielens-100k --out $(DATA); \
	else echo "data: using $(DATA)"; fi

# all-mpnet-base-v2 for text.model (a stronger, 4× slower encoder than the default MiniLM)
mpnet: install
	$(FUSIONREC) data mpnet

train: data
	$(FUSIONREC) train --data $(DATA) --store $(STORE) $(TRAIN_ARGS)

index: install
	$(FUSIONREC) index --store $(STORE) $(INDEX_ARGS)

serve: install
	$(FUSIONREC) serve --store $(STORE) --host $(HOST) --port $(PORT) $(SERVE_ARGS)

# the training report of the CURRENT bundle (report.html in it): its path, opened when a
# browser is there
report: install
	$(VENV)/bin/fusionrec report --store $(STORE) --open

# lint and type checks first: CI fails on any of them before the tests run
test: install install-system
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy

bench-quality: install
	$(PY) bench/quality.py

bench-index: install
	$(PY) bench/index.py

bench-serve: install
	$(PY) bench/serve.py

bench: bench-quality bench-index bench-serve

# Load, reliability and soak; figures in docs/BENCHMARKS.md (sections Load and Soak)
LOADTEST_DURATION ?= 60
LOADTEST_USERS ?= 20
SOAK_MINUTES ?= 10
SOAK_RATE ?= 40

# headless locust mix against a locally started server -> reports/loadtest{.html,.png,_*.csv}
loadtest: install
	$(PY) loadtest/run.py --store $(STORE) --data $(DATA) --duration $(LOADTEST_DURATION) \
		--users $(LOADTEST_USERS) --out reports

# faults under load, schema fuzzing, the containers' commands (also part of `make test`)
reliability: install install-system
	$(VENV)/bin/pytest -q tests/reliability

soak: install
	$(PY) bench/soak.py --store $(STORE) --data $(DATA) --minutes $(SOAK_MINUTES) \
		--rate $(SOAK_RATE) --out reports

# the deployed shape under traffic, catalog edits, retraining and faults, with checks
# (README: Rehearsal) -> reports/rehearsal.{html,json}. Its store is trained once on the
# data without the held-out interactions the shoppers replay (.cache/rehearsal/);
# REHEARSAL_ARGS="--store S" serves another one (a copy: S is never changed)
DURATION ?= 600
REHEARSAL_ARGS ?=
rehearsal: install install-system data
	$(PY) bench/rehearsal.py --duration $(DURATION) --data $(DATA) --out reports $(REHEARSAL_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache reports
