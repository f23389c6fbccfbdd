# tm — build, test, lint, benchmark. Every target reuses .venv and target/ when present.
.DEFAULT_GOAL := help
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.deps-stamp
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: help
help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $(STAMP)

.PHONY: venv
venv: $(STAMP) ## create .venv with the dev dependencies

.PHONY: install
install: $(STAMP) ## build the extension (release) and install tm into .venv
	$(VENV)/bin/maturin develop --release -q

.PHONY: demo
demo: install ## build, install and run a real example on the embedded default
	$(PY) examples/demo.py

.PHONY: test-rust
test-rust: ## cargo test of the core, without Python
	cargo test --no-default-features -q

.PHONY: docs
docs: $(STAMP) ## build the documentation site (docs/) into target/site, strictly
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -q

.PHONY: lint
lint: $(STAMP) ## rustfmt, clippy, ruff, stubtest, layering check, docs build
	cargo fmt --all -- --check
	cargo clippy -q --no-default-features --all-targets -- -D warnings
	cargo clippy -q --features python --lib -- -D warnings
	$(VENV)/bin/ruff check python tests benches examples
	$(VENV)/bin/ruff format --check python tests benches examples
	$(PY) -m mypy.stubtest tm._tm --allowlist stubtest-allowlist.txt
	@! grep -rln 'pyo3' src --include='*.rs' | grep -v '^src/python/' || { echo "pyo3 used outside src/python/"; exit 1; }
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -q

.PHONY: format
format: $(STAMP) ## format Rust and Python
	cargo fmt --all
	$(VENV)/bin/ruff format python tests benches examples
	$(VENV)/bin/ruff check --fix python tests benches examples

.PHONY: pytest
pytest: install ## pytest against the installed package
	$(PY) -m pytest -q

.PHONY: test
test: install test-rust lint pytest ## every test: core, lint, Python

.PHONY: wheel
wheel: $(STAMP) ## build the abi3 release wheel into target/wheels
	$(VENV)/bin/maturin build --release -q -o target/wheels

.PHONY: bench
bench: install ## run the benchmarks against the peers; writes benches/RESULTS.md afresh
	$(PY) benches/_results.py --new
	set -o pipefail; cargo test -q --release --no-default-features --lib cron::tests::timing \
		-- --ignored --nocapture 2>&1 | grep ' ns ' | tee /dev/stderr \
		| $(PY) benches/_results.py --stdin cron-rust "Cron in the Rust core (ns per call)"
	for b in benches/bench_*.py; do $(PY) $$b || exit 1; done
