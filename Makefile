# txfast developer commands. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
TEST_VENV := .venv-test
PY := $(VENV)/bin/python
DIST := dist

.PHONY: help venv build install demo test test-rust test-python bench lint fmt clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

venv: ## Create .venv with the build and dev tools
	@bash scripts/bootstrap.sh $(VENV)

build: venv ## Build the wheel (Rust extension included) into dist/
	@rm -rf $(DIST) && $(VENV)/bin/maturin build --release --out $(DIST) -q

install: build ## Install the wheel (with the train extra) into .venv
	@$(VENV)/bin/pip install -q --force-reinstall --no-deps $(DIST)/txfast-*.whl
	@$(VENV)/bin/pip install -q "$$(ls $(DIST)/txfast-*.whl)[train]"

demo: install ## Simulate, train, score into DuckDB, then serve the live dashboard (Ctrl-C stops)
	@bash scripts/demo.sh $(VENV)

test: build ## Run every test (cargo test, then pytest against the wheel in a fresh venv)
	@bash scripts/test.sh $(VENV) $(TEST_VENV) $(DIST)

bench: install ## Run every benchmark: bench/results/<date>.json + the table in bench/README.md
	@$(PY) bench/run_all.py $(BENCH_ARGS)

lint: venv ## ruff, mypy, cargo fmt --check, cargo clippy -D warnings
	@$(VENV)/bin/ruff check python tests bench
	@$(VENV)/bin/ruff format --check python tests bench
	@$(VENV)/bin/mypy python/txfast
	@cargo fmt --check
	@cargo clippy --all-targets -- -D warnings

fmt: venv ## Format Python and Rust sources
	@$(VENV)/bin/ruff format python tests bench
	@$(VENV)/bin/ruff check --fix -q python tests bench || true
	@cargo fmt

clean: ## Remove build outputs and local state (var/)
	@rm -rf $(DIST) target $(TEST_VENV) var .pytest_cache .mypy_cache .ruff_cache
