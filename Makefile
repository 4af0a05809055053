# Two entry points: `make run` (bridge + local Kafka) and `make test` (whole suite, real broker).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test unit lint docs docs-serve chart-docs bench bench-cpu bench-backfill bench-replay bench-dedup bench-tracing kafka asyncapi clean fuzz soak

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Installs are pinned by constraints.txt; the stamp reruns them when either file changes.
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,lint,docs]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/scalekit-bridge dev

# Under make (and so in CI) a check whose tool (helm, the AsyncAPI schemas) cannot be had fails
# instead of skipping; see tests/tools.py.
test: $(VENV)/.installed
	SCALEKIT_BRIDGE_REQUIRE_TOOLS=1 $(BIN)/python -m pytest

# The broker-free tests, for the edit-test loop (seconds, no Kafka, no tools).
unit: $(VENV)/.installed
	$(BIN)/python -m pytest -q tests/unit

# ruff (a broad rule set) over everything, mypy --strict over bridge/; configured in pyproject.toml.
lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy

# The documentation site from docs/ (MkDocs + Material), strictly: a broken link or anchor, or a page left out
# of the navigation, fails it (tests/deploy/test_docs.py builds it the same way in `make test`).
docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

# deploy/helm/scalekit-bridge/README.md from values.yaml's comments, by the pinned helm-docs.
chart-docs: $(VENV)/.installed
	$(BIN)/python -m tests.tools chart-docs

# The peers' packages (Flask, gunicorn, confluent-kafka) only where the benchmark runs.
$(VENV)/.bench-installed: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,lint,bench]'
	touch $@

# Open loop, side by side: the bridge, the ceiling forwarder and the seed-guide handler on one Kafka.
bench: $(VENV)/.bench-installed
	$(BIN)/python bench/openloop.py

# The CPU micro-benchmarks and the closed-loop end-to-end figures.
bench-cpu: $(VENV)/.installed
	$(BIN)/python bench/run.py

# Two backfill runs over 5,000 events from a local Scalekit: everything missing, then nothing.
bench-backfill: $(VENV)/.installed
	$(BIN)/python bench/backfill.py

# Two replay runs over 5,000 signed dead letters: everything to publish, then nothing left.
bench-replay: $(VENV)/.installed
	$(BIN)/python bench/replay.py

# One record per event: bytes per event id remembered, and serve's start-up with a full window of receipts.
bench-dedup: $(VENV)/.installed
	$(BIN)/python bench/dedup.py

# CPU per delivery with tracing off, and on at 0, 10 and 100 % sampling (OTLP to a local sink).
bench-tracing: $(VENV)/.installed
	$(BIN)/python bench/tracing.py

# schemas/asyncapi.yaml and the personal-data table of docs/consuming/topics.md are generated from schemas/; a test fails
# when either is out of date.
asyncapi: $(VENV)/.installed
	$(BIN)/python -m bridge.dev.asyncapi schemas/asyncapi.yaml
	$(BIN)/python -m bridge.dev.catalogue readme docs/consuming/topics.md

# BROKERS=3 starts three brokers and one controller.
BROKERS ?= 1
kafka: $(VENV)/.installed
	$(BIN)/python -m bridge.dev.kafka --brokers $(BROKERS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info site

# 100,000 hypothesis examples against a real serve and broker; prints its figures.
fuzz: $(VENV)/.installed
	BRIDGE_FUZZ_EXAMPLES=100000 $(BIN)/python -m pytest -s -p no:cacheprovider tests/integration/test_fuzz.py

# A fixed rate against a local 3-broker cluster; prints deliveries, errors, p99 and RSS over time.
SOAK_MINUTES ?= 10
SOAK_RATE ?= 200
soak: $(VENV)/.installed
	$(BIN)/python bench/soak.py --minutes $(SOAK_MINUTES) --rate $(SOAK_RATE)
