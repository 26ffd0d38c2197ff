# Two commands on a fresh machine (Python >= 3.10 and Java 17+):
#   make run    install, then run the reference pipeline `synapse_pipeline` on the embedded defaults
#   make test   install (with test tools and the Azurite emulator), then run the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: install install-test run ui serve cluster cluster-down test bench lint

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -c "import dagster, dagster_pyspark, pyspark; print('dagster', dagster.__version__, '| pyspark', pyspark.__version__)"
	touch $@

install: $(BIN)/.installed

tools/azurite/node_modules/.bin/azurite-blob: tools/azurite/package.json tools/azurite/package-lock.json
	npm ci --prefix tools/azurite --no-audit --no-fund
	touch $@

install-test: install tools/azurite/node_modules/.bin/azurite-blob
	@command -v chromium >/dev/null || echo "note: chromium is not installed; browser tests skip locally (CI installs it: apt-get install -y chromium)"

# Create $(DAGSTER_HOME) (copying dagster.yaml when it has none or an older one) and its storage
# once, under a lock: Dagster commands starting together on a fresh home corrupt its SQLite
# storage. Instant once done.
INSTANCE := $(BIN)/python -m aml_assets.service.instance "$(DAGSTER_HOME)" --default-config dagster.yaml

run ui serve: export DAGSTER_HOME := $(DAGSTER_HOME)

# Ends with the run's summary: each step ran (why) or reused, registered versions, metrics, paths.
run: install
	$(INSTANCE)
	$(BIN)/aml-assets run -f definitions.py -j synapse_pipeline

ui: install
	$(INSTANCE)
	$(BIN)/dagster dev -w workspace.yaml

# The service on loopback: the UI (:3000), the dagster-daemon and the HTTP API (:8787).
serve: install
	$(INSTANCE)
	$(BIN)/aml-assets up

# A local cluster on loopback (PostgreSQL, Redis, Azurite, Spark standalone, the UI and daemon,
# two Celery workers), in ./.aml_cluster; prints where each listens and the exports for
# `aml-assets run`. Ctrl-C (or `make cluster-down` from another terminal) stops it.
cluster: install-test
	$(BIN)/aml-assets up --cluster

cluster-down:
	$(BIN)/aml-assets down --cluster

test: install-test
	$(BIN)/python -m pytest --durations=15

bench: install-test
	$(BIN)/python bench/reuse.py
	$(BIN)/python bench/datastore.py
	$(BIN)/python bench/helper_edit.py
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/rerun.py
	$(BIN)/python bench/service.py

lint: install
	$(BIN)/ruff check aml_assets amlrun tests bench definitions.py resources code
