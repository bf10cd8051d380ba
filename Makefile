# Developer entry points. `make run` and `make test` are the README's two set-up commands.
# Dependencies come from uv.lock (exact versions and hashes); `make lock` refreshes it after a
# change to pyproject.toml (`make lock ARGS=--upgrade` moves every pin to the newest release).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Two installs from the same lock: the runtime (what `make run` needs) and the development
# tools on top (what `make test` and `make lint` need). Each stamp says which is in .venv.
RUN_STAMP := $(VENV)/.runtime-stamp
DEV_STAMP := $(VENV)/.dev-stamp
# Independent test files run in this many processes (pytest-xdist; each has its own
# redis-server and databases); `make test PYTEST_WORKERS=0` runs them in one. Four on two
# cores: most of the suite waits on the processes it starts, not on the CPU.
PYTEST_WORKERS ?= 4
ARGS   ?=
# uv, pinned, in a virtualenv of its own under .tools/ (the project's venv stays uv-free).
UV_VERSION := 0.13.8
UV     := .tools/uv/bin/uv
export UV_PYTHON_DOWNLOADS := never
# The system CA store (where a TLS-inspecting egress installs its CA), not uv's bundled one.
export UV_SYSTEM_CERTS := 1

.PHONY: install install-runtime lock run test test-fast lint clean

install: $(DEV_STAMP)  ## the development venv: runtime, ops extra and dev tools

install-runtime: $(RUN_STAMP)  ## only what the platform runs on (no ops extra, no dev tools)

$(UV):
	$(PYTHON) -m venv .tools/uv
	.tools/uv/bin/python -m pip install --quiet "uv==$(UV_VERSION)"

# --frozen: install exactly the lock, never re-resolve; fails when pyproject.toml and uv.lock
# disagree (tests/test_lock.py says so too). --inexact keeps pip in the venv for the scripts,
# and keeps the dev tools when `make run` follows `make test`.
$(RUN_STAMP): pyproject.toml uv.lock | $(UV)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --frozen --inexact --python $(BIN)/python
	@touch $(RUN_STAMP)

$(DEV_STAMP): pyproject.toml uv.lock | $(UV)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --frozen --inexact --extra dev --python $(BIN)/python
	@touch $(DEV_STAMP) $(RUN_STAMP)

lock: $(UV)
	$(UV) lock --python $(PYTHON) $(ARGS)

run: $(RUN_STAMP)  ## the platform on embedded defaults; audits the sample batch, serves until Ctrl-C
	$(BIN)/condo-audit run $(ARGS)

# The whole suite against real Redis, SQLite, PostgreSQL (when it answers) and workers.
# --dist loadfile keeps each file in one process, so a module's platform starts once; files
# go out in collection order, which tests/conftest.py starts with the longest.
test: $(DEV_STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder $(ARGS)

test-fast: $(DEV_STAMP)  ## the tests that start no process (under a minute)
	$(BIN)/python -m pytest -m "not slow" -n $(PYTEST_WORKERS) $(ARGS)

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

clean:
	rm -rf .local .pytest_cache .mypy_cache .ruff_cache
