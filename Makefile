# Developer entry points. `make run` and `make test` are the README's two set-up commands.
# Dependencies come from uv.lock (exact versions and hashes); `make lock` refreshes it after a
# change to pyproject.toml (`make lock ARGS=--upgrade` moves every pin to the newest release).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
ARGS   ?=
# uv, pinned, in a virtualenv of its own under .tools/ (the project's venv stays uv-free).
UV_VERSION := 0.13.8
UV     := .tools/uv/bin/uv
export UV_PYTHON_DOWNLOADS := never
# The system CA store (where a TLS-inspecting egress installs its CA), not uv's bundled one.
export UV_SYSTEM_CERTS := 1

.PHONY: install lock run test lint clean

install: $(STAMP)

$(UV):
	$(PYTHON) -m venv .tools/uv
	.tools/uv/bin/python -m pip install --quiet "uv==$(UV_VERSION)"

# --frozen: install exactly the lock, never re-resolve; fails when pyproject.toml and uv.lock
# disagree (tests/test_lock.py says so too). --inexact keeps pip in the venv for the scripts.
$(STAMP): pyproject.toml uv.lock | $(UV)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --frozen --inexact --extra dev --python $(BIN)/python
	@touch $(STAMP)

lock: $(UV)
	$(UV) lock --python $(PYTHON) $(ARGS)

run: $(STAMP)  ## the platform on embedded defaults; audits the sample batch, serves until Ctrl-C
	$(BIN)/condo-audit run $(ARGS)

test: $(STAMP)  ## the test suite against real Redis, SQLite, PostgreSQL (when it answers) and workers
	$(BIN)/python -m pytest $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

clean:
	rm -rf .local .pytest_cache .mypy_cache .ruff_cache
