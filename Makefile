# Two commands for a newcomer: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch, pinned and installed first, so that the `torch` extra (pulled in
# by `dev`) is already satisfied; an unpinned torch would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test setup lint typecheck bench fuzz clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# Lint first: CI runs exactly `make test`, so the lint gate runs in CI too.
test: $(STAMP) lint
	$(PY) -m pytest -n 2 $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) examples/demo.py

# ruff, then the layer contracts in .importlinter (import-linter).
lint: $(STAMP)
	$(PY) -m ruff check safehub tests benchmarks
	$(VENV)/bin/lint-imports --no-logo

typecheck: $(STAMP)
	$(PY) -m mypy

# The differential fuzzer (scanner against the loaders' own parsers) for FUZZ_SECONDS;
# `make test` runs it with fixed seeds and a fixed budget (tests/scanner/test_oracle.py).
FUZZ_SECONDS ?= 300
fuzz: $(STAMP)
	$(PY) -m tests.scanner.oracle.fuzz --seconds $(FUZZ_SECONDS)

# The competing scanners get their own virtualenvs under benchmarks/.work/venvs (created
# by --setup), so their dependencies cannot change .venv.
bench: $(STAMP)
	$(PY) benchmarks/run.py --setup

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .import_linter_cache
