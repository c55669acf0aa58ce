# One entry point for set-up, demo, tests and benchmarks. Everything is installed
# into .venv from the project's own files (pyproject.toml, Cargo.toml).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.deps-installed

# The real data sets (slow tests, benchmarks, scripts): read in place, never copied.
export PROJROUTE_DATA ?= $(abspath ../shared/data)

.PHONY: demo test test-rust test-python lint build bench bench-python bench-rust bench-serve fuzz clean

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

# The core crate without features, with candle, with candle and text (the static
# encoder and the Searcher), and with ann too (approximate indexes, usearch's C++; the
# wheel enables all three); then the HTTP service (`projroute serve`).
test-rust:
	cargo test --release -p projroute
	cargo test --release -p projroute --features candle
	cargo test --release -p projroute --features candle,text
	cargo test --release -p projroute --features candle,text,ann
	cargo test --release -p projroute-serve

test-python: build
	$(PY) -m pytest -q

# Every habit CI checks: ruff lint and format, the type check of the public Python
# API (py.typed, _core.pyi), rustfmt and clippy (without features, with candle, with
# candle and text, and with ann too; the workspace run covers the HTTP service).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p projroute --all-targets --features candle -- -D warnings
	cargo clippy -p projroute --all-targets --features candle,text -- -D warnings
	cargo clippy -p projroute --all-targets --features candle,text,ann -- -D warnings

bench: bench-python bench-rust

bench-python: build
	$(PY) -m pytest benches -q --benchmark-only --benchmark-json=benchmark.json

bench-rust:
	cargo bench -p projroute

# Load test of the HTTP service (not part of CI): oha, from crates.io, into target/tools;
# a federated model at D=384 with 10,000 answers, 1, 8 and 64 connections, micro-batching
# on and off. Prints the README's table.
OHA := target/tools/bin/oha
$(OHA):
	cargo install oha --version 1.16.0 --locked --root target/tools

bench-serve: build $(OHA)
	cargo build --release -p projroute-serve
	$(PY) benches/serve_load.py --rounds 3

# Fuzz every target for FUZZ_SECONDS each (cargo-fuzz targets on the model loader and
# the projection entry points, atheris on the Python data readers); prints executions
# and coverage. Not part of CI: CI replays the kept corpus in `make test`.
FUZZ_SECONDS ?= 30
fuzz: build
	PYTHON=$(abspath $(PY)) fuzz/run.sh $(FUZZ_SECONDS)

clean:
	rm -rf $(VENV) target
