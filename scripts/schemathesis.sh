#!/usr/bin/env bash
# Property-based run of schemathesis against the LIVE OpenAPI schema of a running API:
# a private redis-server, a fresh SQLite database, a tenant with an API key and one
# condominium, the API under uvicorn. Checks: no 5xx, every response matches the schema,
# every status code is documented.
# Bounded: MAX_EXAMPLES per operation (default 100) and a fixed seed; well under a minute.
#
#   scripts/schemathesis.sh            # uses .venv/bin/python
#   PYTHON=/path/to/python scripts/schemathesis.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-.venv/bin/python}"
SCHEMATHESIS="${SCHEMATHESIS:-$(cd "$(dirname "$PYTHON")" && pwd)/schemathesis}"
MAX_EXAMPLES="${MAX_EXAMPLES:-100}"
SEED="${SEED:-20261128}"
WORK="$(mktemp -d)"
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

REDIS_PORT="$(free_port)"
API_PORT="$(free_port)"
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
  --dir "$WORK" >"$WORK/redis.log" 2>&1 &
PIDS+=($!)

export PYTHONPATH="$PWD"
# SCHEMATHESIS_DATABASE_URL runs it on another database (e.g. a scratch PostgreSQL one).
export DATABASE_URL="${SCHEMATHESIS_DATABASE_URL:-sqlite:///$WORK/condo-audit.db}"
export REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
export AUDIT_QUEUE="schemathesis"
# Webhook secrets are encrypted at rest with this key (a fresh one per run).
export WEBHOOK_SECRET_KEYS="$("$PYTHON" -c "from audit.webhooks.secretbox import new_key; print(new_key())")"
export API_RATE_PER_MINUTE=1000000
export API_RATE_BURST=100000
export AUTH_FAILURES_PER_MINUTE=1000000
export AUTH_FAILURE_BURST=100000

API_KEY="$("$PYTHON" scripts/schemathesis_setup.py "$WORK/schemathesis.toml")"

"$PYTHON" -m uvicorn api.main:app --host 127.0.0.1 --port "$API_PORT" \
  --no-access-log --log-level warning >"$WORK/api.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$API_PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.2
done

status=0
# One worker: CPython 3.11's ast.parse is not safe in two threads at once ("AST constructor
# recursion depth mismatch"), and hypothesis parses sources while describing strategies.
# Run from the scratch directory: schemathesis keeps a cache in its working directory.
(cd "$WORK" && "$SCHEMATHESIS" --config-file "$WORK/schemathesis.toml" run "http://127.0.0.1:$API_PORT/openapi.json" \
  --header "X-API-Key: $API_KEY" \
  --checks not_a_server_error,response_schema_conformance,status_code_conformance \
  --max-examples "$MAX_EXAMPLES" \
  --seed "$SEED" \
  --phases examples,coverage,fuzzing \
  --generation-database none \
  --request-timeout 10 \
  --workers 1 \
  --no-color) || status=$?
# Text the database cannot store (NUL) in every path and query parameter: never a 5xx.
"$PYTHON" scripts/probe_unstorable.py "http://127.0.0.1:$API_PORT" "$API_KEY" || status=$?
if [ "$status" -ne 0 ]; then
  echo "== API log"
  tail -n 80 "$WORK/api.log"
fi
exit "$status"
