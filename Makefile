# `make run` runs the quick sweep, `make test` the test suite; both set up .venv when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SWEEP ?= sweeps/quick.yaml

.PHONY: run test report lint ui clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m aipray.sweep $(SWEEP)

test: $(STAMP)
	$(PY) -m pytest -q

report: $(STAMP)
	$(PY) -m aipray.report $(SWEEP)

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

ui: $(STAMP)
	scripts/mlflow_ui.sh

clean:
	rm -rf .aipray mlflow/mlflow.db mlflow/artifacts reports
