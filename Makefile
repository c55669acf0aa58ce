# One entry point for set-up, demo, tests and benchmarks. Everything is installed
# into .venv from the project's own files (pyproject.toml, Cargo.toml).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.deps-installed

.PHONY: demo test test-rust test-python build bench bench-python bench-rust clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "maturin>=1.9,<2"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# Build the Rust extension (release) into the venv; incremental after the first time.
build: $(STAMP)
	$(VENV)/bin/maturin develop --release -q

demo: build
	$(VENV)/bin/projroute demo

test: test-rust test-python

# The core crate with and without its optional candle feature.
test-rust:
	cargo test --release -p projroute
	cargo test --release -p projroute --features candle

test-python: build
	$(PY) -m pytest -q

bench: bench-python bench-rust

bench-python: build
	$(PY) -m pytest benches -q --benchmark-only --benchmark-json=benchmark.json

bench-rust:
	cargo bench -p projroute

clean:
	rm -rf $(VENV) target
