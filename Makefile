# The two commands: `make demo` and `make test`. Both set up .venv on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: demo test test-fast services lint format clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch==2.13.0 (CPU) is pinned in pyproject.toml: pip takes it from the local wheel, no CUDA download.
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/donut-hole demo

test: lint services
	$(BIN)/pytest -q
	$(BIN)/pytest -q -p no:cacheprovider --doctest-modules donut_hole --ignore=donut_hole/db/migrations
	./scripts/check_interop.sh
	./scripts/check_readme_examples.sh

# The fast loop: what needs no service and runs in seconds (tests marked services or slow are left out;
# tests/conftest.py marks every test that uses a service's fixture). `make test` stays the whole suite.
test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not services and not slow" -p no:cacheprovider

# PostgreSQL and Redis started, the compose parser installed, when missing (one script, also for .ci/run).
services:
	./scripts/test_services.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy donut_hole benchmarks

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf var .pytest_cache .ruff_cache .mypy_cache
