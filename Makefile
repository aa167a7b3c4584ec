# The two commands: `make demo` (main job on embedded servers) and `make test` (whole suite).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PKGS   := market_data_core market_data_pipeline market_data_store
# Development and CI install exactly these versions (with their hashes); pyproject.toml keeps the
# ranges the published package declares. `make lock` refreshes the lock on purpose.
LOCK       := requirements/dev.lock
LOCK_VENV  := .venv-lock
UV_VERSION := 0.13.9

.PHONY: install lock demo test test-unit test-integration lint docs format bench clean

$(STAMP): pyproject.toml $(LOCK)
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "mdp needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	@# the distribution was called `mdp` before it became `mdp-streaming`: drop it from older venvs
	$(BIN)/python -m pip uninstall --quiet --yes mdp 2>/dev/null || true
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

install: $(STAMP)

# Re-resolve every runtime, dev and build dependency to the newest release the ranges in
# pyproject.toml allow, for every platform and Python >= 3.11; then `make install` and commit.
lock:
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet uv==$(UV_VERSION)
	$(LOCK_VENV)/bin/uv pip compile pyproject.toml requirements/build.in --extra dev \
		--universal --python-version 3.11 --generate-hashes --upgrade --quiet -o $(LOCK)

demo: install
	$(BIN)/mdp demo

test: install
	$(BIN)/python -m pytest

test-unit: install
	$(BIN)/python -m pytest tests/unit

test-integration: install
	$(BIN)/python -m pytest tests/integration

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/mypy benchmarks
	$(BIN)/lint-imports

# The site in docs/ (tutorial, guides, the API reference generated from the docstrings by
# mkdocstrings) into site/; --strict: a broken link or reference fails the build (CI runs it).
docs: install
	$(BIN)/mkdocs build --strict --quiet

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install
	$(BIN)/mdp bench

clean:
	rm -rf $(VENV) $(LOCK_VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis site
