# The two commands of the README: `make demo` and `make test`. Each sets up .venv first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.PHONY: install demo demo-isic shortcut-demo test test-fast lint format slurm-start slurm-stop report clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(STAMP)

## demo: the whole DAG on the CheXpert twin (config/demo.yaml), then the report (one start)
demo: install
	snakemake --profile profiles/local --configfile config/demo.yaml \
	  --report results/demo/report.html --report-after-run
	@echo "Report: $(CURDIR)/results/demo/report.html"

## demo-isic: the same on the ISIC twin (config/demo-isic.yaml)
demo-isic: install
	snakemake --profile profiles/local --configfile config/demo-isic.yaml \
	  --report results/demo-isic/report.html --report-after-run
	@echo "Report: $(CURDIR)/results/demo-isic/report.html"

## shortcut-demo: the shortcut study on the CheXpert twin (config/shortcut-demo.yaml)
shortcut-demo: install
	snakemake --profile profiles/local --configfile config/shortcut-demo.yaml -- shortcut_study
	@echo "Tables and figure: $(CURDIR)/results/shortcut-demo/shortcut/chexpert/report"

## test: lint, then the whole test suite, on a local SLURM cluster when this machine can start one
test: install lint
	@started=0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  scripts/slurm-start.sh && started=1; \
	  command -v chromium >/dev/null 2>&1 || { echo "make test: installing chromium (the report's browser test)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
	    || echo "make test: chromium could not be installed: the report's browser test will be skipped"; }; \
	else echo "make test: not root, no local SLURM cluster: its tests will be skipped"; fi; \
	status=0; $(VENV)/bin/pytest -q --durations=20 || status=$$?; \
	if [ $$started = 1 ]; then scripts/slurm-stop.sh; fi; \
	exit $$status

## test-fast: unit tests only (no workflow runs, no SLURM)
test-fast: install
	$(VENV)/bin/pytest -q -m "not slow and not slurm"

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/lint-imports
	$(VENV)/bin/snakefmt --check Snakefile workflow/rules
	snakemake --lint --configfile config/demo.yaml > /dev/null

format: install
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/snakefmt Snakefile workflow/rules

slurm-start:
	scripts/slurm-start.sh

slurm-stop:
	scripts/slurm-stop.sh

clean:
	rm -rf results/demo results/demo-isic results/smoke .snakemake
