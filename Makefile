# mawex developer commands. Needs Python 3.11+ (python3, or set PYTHON=...) and make.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint format bench bench-failover bench-sandbox bench-compare bench-scale chaos clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "mawex needs Python 3.11+, found " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e .
	@touch $@

$(VENV)/.installed-dev: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@ $(VENV)/.installed

## demo: a complete local cluster on SQLite: 2 masters, workers in 2 pods, a failover
demo: $(VENV)/.installed
	$(BIN)/mawex demo

## test: the whole suite (PostgreSQL/Redis tests skip with a reason when unreachable)
test: $(VENV)/.installed-dev
	$(BIN)/pytest

## bench-compare: mawex side by side with celery, huey, dramatiq, rq and arq on the local Redis
## (the peers go into their own environment, bench/compare/.venv); Markdown + JSON in bench/results/
COMPARE_VENV := bench/compare/.venv
$(COMPARE_VENV)/.installed: bench/compare/requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "mawex needs Python 3.11+")'
	$(PYTHON) -m venv $(COMPARE_VENV)
	$(COMPARE_VENV)/bin/python -m pip install -q --upgrade pip
	$(COMPARE_VENV)/bin/pip install -q -e . -r bench/compare/requirements.txt
	@touch $@

bench-compare: $(COMPARE_VENV)/.installed
	$(COMPARE_VENV)/bin/python bench/compare/run.py $(COMPARE_ARGS)

## bench-scale: 1,000 workers in 100 groups, 1M pending tasks, takeover, result-topic fan-out
bench-scale: $(VENV)/.installed-dev
	$(BIN)/python bench/scale.py $(SCALE_ARGS)

## chaos: the long chaos run on SQLite, PostgreSQL and Redis (5,000 tasks, 75 events: 50 leader
## SIGKILL/SIGSTOP, random worker kills, PostgreSQL server restarts); history files in chaos-history/
CHAOS_TASKS   ?= 5000
CHAOS_EVENTS  ?= 75
CHAOS_HISTORY ?= chaos-history
chaos: $(VENV)/.installed-dev
	MAWEX_CHAOS_LONG=1 MAWEX_CHAOS_TASKS=$(CHAOS_TASKS) MAWEX_CHAOS_EVENTS=$(CHAOS_EVENTS) \
	MAWEX_CHAOS_HISTORY=$(CHAOS_HISTORY) $(BIN)/pytest -p no:cacheprovider -s -ra tests/chaos/test_chaos_long.py

## lint: ruff (lint + format check), mypy --strict and the import layering contracts
lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(VENV)/.installed-dev
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

## bench: end-to-end throughput and round-trip latency on SQLite
bench: $(VENV)/.installed-dev
	$(BIN)/python bench/throughput.py

## bench-failover: failover time and replay speed (SQLite, PostgreSQL; 10k and 1M events)
bench-failover: $(VENV)/.installed-dev
	$(BIN)/python bench/failover.py

## bench-sandbox: per-task overhead of the local, forked (warm) and forked (spawn) sandboxes
bench-sandbox: $(VENV)/.installed-dev
	$(BIN)/python bench/sandbox_overhead.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
