# Two entry points: `make run` (bridge + local Kafka) and `make test` (whole suite, real broker).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test bench kafka clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Installs are pinned by constraints.txt; the stamp reruns them when either file changes.
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/scalekit-bridge dev

test: $(VENV)/.installed
	$(BIN)/python -m pytest

bench: $(VENV)/.installed
	$(BIN)/python bench/run.py

kafka: $(VENV)/.installed
	$(BIN)/python -m bridge.devkafka

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info
