# Two entry points: `make demo` runs the embedded default study, `make test` runs the test suite
# (`make test-fast`: all but the Snakemake, SLURM and slow end-to-end tests).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CORES ?= all

.PHONY: demo test test-fast install install-test report lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[test]"
	# torchattacks pins an old `requests`; its own code needs only torch, numpy and scipy.
	$(BIN)/pip install --quiet --no-deps "torchattacks==3.5.1"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/snakemake --cores $(CORES) --configfile config/config.yaml

report: install
	$(BIN)/snakemake --cores $(CORES) --configfile config/config.yaml --report results/report.zip

test: install-test
	$(BIN)/python -m pytest

test-fast: install-test
	$(BIN)/python -m pytest -m "not workflow and not slurm and not slow"

# Style and workflow checks, run by CI before the tests.
lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile workflow/
	$(BIN)/snakemake --lint

clean:
	find results -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
	rm -rf resources/synthetic resources/broden resources/weights .snakemake
