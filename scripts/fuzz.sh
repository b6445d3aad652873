#!/usr/bin/env bash
# Fuzzes a running hotline from its own OpenAPI document with schemathesis: every operation,
# every check, with the right tokens, against a release build on real Postgres and Redis.
# It must find no 5xx, no answer outside the document, and no stored data changed by a refused
# request (scripts/fuzz/hooks.py).
#
#   bash scripts/fuzz.sh [--max-time SECONDS]   (default 180)
#
# Postgres and Redis as for scripts/test.sh (HOTLINE_TEST_DATABASE_URL, HOTLINE_TEST_REDIS_URL);
# the run uses a database of its own, made fresh, and a Redis key prefix of its own.
set -euo pipefail
cd "$(dirname "$0")/.."

max_time=180
while [ $# -gt 0 ]; do
  case "$1" in
    --max-time) max_time="$2"; shift 2 ;;
    *) echo "fuzz.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

say() { printf 'fuzz.sh: %s\n' "$*" >&2; }

admin_url="${HOTLINE_TEST_DATABASE_URL:-postgres://root@127.0.0.1:5432/postgres}"
redis_url="${HOTLINE_TEST_REDIS_URL:-redis://127.0.0.1:6379}"
# A run of its own: its database, Redis keys and spool are made fresh and removed at the end,
# so that nothing from an earlier (or a concurrent) run is read or fingerprinted.
run_id=$(python3 -c 'import secrets; print(secrets.token_hex(4))')
database="hotline_fuzz_${run_id}"
database_url="${admin_url%/*}/${database}"
prefix="hotline-fuzz-${run_id}"

venv=target/fuzz-venv
. scripts/venv.sh
venv_with "$venv" scripts/fuzz/requirements.txt || { say "no schemathesis to fuzz with"; exit 1; }

cargo build --release --locked --quiet
psql "$admin_url" -q -v ON_ERROR_STOP=1 \
  -c "DROP DATABASE IF EXISTS ${database} WITH (FORCE)" -c "CREATE DATABASE ${database}"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url="http://127.0.0.1:${port}"
log=target/fuzz-server.log
export ADMIN_TOKEN="$(python3 -c "import secrets; print(secrets.token_hex(16))")"
export WEBHOOK_SECRET="$(python3 -c "import secrets; print(secrets.token_hex(16))")"
export ELEVENLABS_WEBHOOK_SECRET="$(python3 -c "import secrets; print(secrets.token_hex(16))")"
export REDIS_KEY_PREFIX="$prefix"
spool=$(mktemp -d)
DATABASE_URL="$database_url" REDIS_URL="$redis_url" LISTEN_ADDR="127.0.0.1:${port}" \
  SPOOL_DIR="$spool" RUST_LOG=warn target/release/hotline serve >"$log" 2>&1 &
server=$!
cleanup() {
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  redis-cli -u "$redis_url" --scan --pattern "${prefix}:*" 2>/dev/null |
    xargs -r -n 500 redis-cli -u "$redis_url" unlink >/dev/null 2>&1 || true
  psql "$admin_url" -q -c "DROP DATABASE IF EXISTS ${database} WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$spool"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for _ in $(seq 1 150); do
  curl -fsS "$url/healthz" >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { cat "$log" >&2; say "hotline did not start"; exit 1; }
  sleep 0.2
done
curl -fsS "$url/healthz" >/dev/null || { cat "$log" >&2; say "hotline did not answer"; exit 1; }
# A call for the calls API's operations to find: the id is the document's example.
curl -fsS -o /dev/null -H "Authorization: Bearer $WEBHOOK_SECRET" -H 'Content-Type: application/json' \
  -d '{"caller_id": "+14155550100", "called_number": "+14155550199", "agent_id": "agent_fuzz", "call_sid": "CA0123456789abcdef0123456789abcdef"}' \
  "$url/webhooks/elevenlabs/conversation-initiation"

say "fuzzing $url for at most ${max_time}s"

FUZZ_DATABASE_URL="$database_url" FUZZ_REDIS_URL="$redis_url" \
  SCHEMATHESIS_HOOKS=hooks PYTHONPATH=scripts/fuzz \
  "$venv/bin/schemathesis" --config-file scripts/fuzz/schemathesis.toml run "$url/api/openapi.json" \
  --max-time "$max_time" --workers 1 --seed "${FUZZ_SEED:-$RANDOM}" \
  --report junit --report-dir target/fuzz-report
