# Two commands on a fresh machine with only python3:  make demo   and   make test
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
export UV_PYTHON_DOWNLOADS := never

.PHONY: setup demo test bench clean

setup:  ## install uv if missing, then the locked environment (.venv)
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	@$(UV) sync --frozen --quiet --compile-bytecode  # compiled once: every process (CLI, Prefect server, Dask workers) starts faster

demo: setup  ## simulator + ingest a few hundred series into data/demo.duckdb
	$(UV) run --frozen python -m fredflow.demo

test: setup  ## the lock file in step with pyproject.toml, then the whole test suite
	@$(UV) lock --check
	$(UV) run --frozen pytest

bench: setup  ## runner benchmark against the simulator (see benchmarks/README.md)
	$(UV) run --frozen python benchmarks/run_runners.py

clean:
	rm -rf .venv data/demo.duckdb data/demo.staging .pytest_cache
