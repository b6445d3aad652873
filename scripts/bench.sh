#!/usr/bin/env bash
# Benchmarks hotline on this machine, in one run: (a) /healthz; (b) the webhook with both cache
# tiers warm; (c) tier 2 only (L1_MAX_MB=0); (d) the cache off (L1_MAX_MB=0, REDIS_ENABLED=false);
# (e) a cold start; (f) a stampede of concurrent requests for one cold caller.
# Writes bench-results/results.json and bench-results/results.md and prints b/a, b/c, b/d.
#
#   bash scripts/bench.sh            # 100,000 leads, 15 s per scenario, 32 workers
#   bash scripts/bench.sh --quick    # 2,000 leads, 3 s per scenario, 8 workers (CI)
#
# Overrides (environment): LEADS, DURATION_S, CONCURRENCY, STAMPEDE, UNKNOWN_PCT, ZIPF_S,
# PG_URL (a server where a database may be created; default postgres://root@127.0.0.1:5432),
# REDIS_URL (default redis://127.0.0.1:6379). Needs psql, redis-cli, curl and jq.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=false
for arg in "$@"; do
  case "$arg" in
    --quick) quick=true ;;
    -h | --help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done

if $quick; then
  LEADS=${LEADS:-2000} DURATION_S=${DURATION_S:-3} CONCURRENCY=${CONCURRENCY:-8} STAMPEDE=${STAMPEDE:-200}
else
  LEADS=${LEADS:-100000} DURATION_S=${DURATION_S:-15} CONCURRENCY=${CONCURRENCY:-32} STAMPEDE=${STAMPEDE:-1000}
fi
UNKNOWN_PCT=${UNKNOWN_PCT:-10}
ZIPF_S=${ZIPF_S:-1.0}
PG_URL=${PG_URL:-postgres://root@127.0.0.1:5432}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}

say() { printf 'bench.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

for tool in psql redis-cli curl jq; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
done
psql "$PG_URL/postgres" -Atqc 'select 1' >/dev/null 2>&1 || die "PostgreSQL does not answer at $PG_URL"
redis-cli -u "$REDIS_URL" ping 2>/dev/null | grep -q PONG || die "Redis does not answer at $REDIS_URL"

say "building the release binary"
cargo build --release --locked --quiet
BIN=target/release/hotline

DB=hotline_bench_$$
DATABASE_URL="$PG_URL/$DB"
PREFIX=hotline-bench-$$
WORK=$(mktemp -d)
OUT=bench-results
ADMIN_TOKEN=bench-admin-token-0123456789
WEBHOOK_SECRET=bench-webhook-secret-0123456789
export WEBHOOK_SECRET
server_pid=

stop_server() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
  fi
}

cleanup() {
  stop_server
  redis-cli -u "$REDIS_URL" --scan --pattern "$PREFIX*" 2>/dev/null |
    xargs -r -n 500 redis-cli -u "$REDIS_URL" del >/dev/null 2>&1 || true
  psql "$PG_URL/postgres" -Atqc "drop database if exists $DB with (force)" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A port nothing listens on (nothing answers a connect to it).
free_port() {
  local port
  for _ in $(seq 1 100); do
    port=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  die "no free port found"
}

# start_server NAME [ENV=VALUE ...]: a fresh instance with its own Redis prefix; sets $url.
start_server() {
  local name=$1
  shift
  local port
  port=$(free_port)
  url="http://127.0.0.1:$port"
  env LISTEN_ADDR="127.0.0.1:$port" DATABASE_URL="$DATABASE_URL" REDIS_URL="$REDIS_URL" \
    REDIS_KEY_PREFIX="$PREFIX-$name" ADMIN_TOKEN="$ADMIN_TOKEN" WEBHOOK_SECRET="$WEBHOOK_SECRET" \
    SPOOL_DIR="$WORK/spool-$name" RUST_LOG=warn WARM_LEADS=0 L1_MAX_MB=64 REDIS_ENABLED=true \
    "$@" "$BIN" serve >"$WORK/server-$name.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "$url/healthz" 2>/dev/null && return 0
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  cat "$WORK/server-$name.log" >&2
  die "the server for $name did not come up"
}

# bench LABEL [ARG ...]: one measured run against $url, appended to runs.jsonl.
bench() {
  local label=$1
  shift
  "$BIN" bench --url "$url" --label "$label" --database-url "$DATABASE_URL" \
    --duration-s "$DURATION_S" --concurrency "$CONCURRENCY" --callers "$LEADS" \
    --unknown-pct "$UNKNOWN_PCT" --zipf-s "$ZIPF_S" --json-out "$OUT/runs.jsonl" "$@"
}

mkdir -p "$OUT"
rm -f "$OUT/runs.jsonl"

say "creating $DB and seeding $LEADS leads"
psql "$PG_URL/postgres" -Atqc "create database $DB" >/dev/null
RUST_LOG=warn "$BIN" seed --database-url "$DATABASE_URL" --leads "$LEADS" --organizations 50 \
  --conversations-per-lead 3 --seed 7

say "(a) /healthz"
start_server a
bench a_healthz --scenario healthz
stop_server

say "(b) webhook, both tiers warm"
start_server b
bench b_warm --scenario webhook --warm-pass
stop_server

say "(c) webhook, tier 2 only"
start_server c L1_MAX_MB=0
bench c_l2_only --scenario webhook --warm-pass
stop_server

say "(d) webhook, cache off"
start_server d L1_MAX_MB=0 REDIS_ENABLED=false
bench d_no_cache --scenario webhook
stop_server

say "(e) webhook from a cold start"
start_server e
bench e_cold --scenario webhook
stop_server

say "(f) stampede: $STAMPEDE concurrent requests for one cold caller"
start_server f
bench f_stampede --scenario stampede --stampede-requests "$STAMPEDE"
stop_server

jq -s --arg leads "$LEADS" --arg quick "$quick" '
  def rate($x; $y): if ($y.rps // 0) > 0 then ($x.rps / $y.rps) else null end;
  (map({(.label[0:1]): .}) | add) as $r
  | {
      machine: {cpus: '"$(nproc)"'},
      leads: ($leads | tonumber), quick: ($quick == "true"),
      runs: .,
      ratios: {"b/a": rate($r.b; $r.a), "b/c": rate($r.b; $r.c), "b/d": rate($r.b; $r.d)}
    }' "$OUT/runs.jsonl" >"$OUT/results.json"

jq -r '
  def f($d): if . == null then "–" else (. * pow(10; $d) | round / pow(10; $d) | tostring) end;
  "| scenario | requests | errors | rps | p50 ms | p95 ms | p99 ms | max ms | L1 % | L2 % | loads/request |",
  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  (.runs[] | "| \(.label) | \(.requests) | \(.errors) | \(.rps | f(0)) | \(.latency_ms.p50 | f(2)) | \(.latency_ms.p95 | f(2)) | \(.latency_ms.p99 | f(2)) | \(.latency_ms.max | f(2)) | \(.client_hit_pct.l1 | f(1)) | \(.client_hit_pct.l2 | f(1)) | \(.server.loads_per_request | f(4)) |"),
  "",
  "Ratios of requests per second: b/a \(.ratios["b/a"] | f(2)), b/c \(.ratios["b/c"] | f(2)), b/d \(.ratios["b/d"] | f(2)).",
  "",
  "Stampede store loads by kind: \(.runs[] | select(.scenario == "stampede") | .server.loads | to_entries | map("\(.key) \(.value)") | join(", "))."
' "$OUT/results.json" >"$OUT/results.md"

echo
echo "hotline bench: $LEADS leads, $DURATION_S s per scenario, $CONCURRENCY workers, $(nproc) CPUs"
echo
cat "$OUT/results.md"
say "wrote $OUT/results.json and $OUT/results.md"
