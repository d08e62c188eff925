# Discograph: `make run` starts the whole local stack, `make test` runs every check.
# Both install what they need first (Python venv + npm packages), so a fresh clone needs nothing else.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY_STAMP := $(VENV)/.installed
NPM_STAMP := node_modules/.installed

.PHONY: run test lint format install browser compile-contracts check-contracts clean distclean

install: $(PY_STAMP) $(NPM_STAMP)

$(PY_STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	PYTHONWARNINGS=ignore $(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

$(NPM_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

run: install
	$(BIN)/discograph dev

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The live page's test runs in Debian's chromium. Installed where we may (root with apt);
# elsewhere, or if apt fails, that one test is skipped and says why.
browser:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium (apt) for the live page's browser test"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends chromium >/dev/null) || echo "chromium not installed: its test will skip"; \
	fi

test: install lint browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

compile-contracts: $(NPM_STAMP)
	node contracts/compile.js

check-contracts: $(NPM_STAMP)
	node contracts/compile.js --check

clean:
	rm -rf .discograph

distclean: clean
	rm -rf $(VENV) node_modules .mypy_cache .ruff_cache .pytest_cache .hypothesis *.egg-info
