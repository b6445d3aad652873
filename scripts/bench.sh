#!/usr/bin/env bash
# Benchmarks hotline on this machine, in one run: (a) /healthz; (b) the webhook with both cache
# tiers warm; (i) the same with calls off (CALLS_ENABLED=false); (c) tier 2 only (L1_MAX_MB=0);
# (d) the cache off (L1_MAX_MB=0, REDIS_ENABLED=false); (e) a cold start; (f) a stampede of
# concurrent requests for one cold caller; then (b) again, paced at half the rate (b) reached,
# for the latency of an instance with headroom; (j) call-heavy: the webhook on instance A while
# SSE_CLIENTS clients stream GET /api/events from instance B (the two share Redis and the
# database, with their own INSTANCE_ID), for events delivered per second and each event's
# latency from creation on A to arrival at a client of B, as fast as the webhook goes (B drops
# the clients it cannot keep up with: they show as disconnected); (k) the same paced at
# CALLS_RATE new calls per second, for the latency of a pair with headroom; and (g) what
# recording a webhook's metrics costs, in process.
# Every webhook carries a new call_sid, so that each starts a call where calls are on (the
# default): b/i is what tracking calls costs.
# Writes bench-results/results.json and bench-results/results.md and prints b/a, b/c, b/d, and
# the rps and p99 of calls on over calls off (b/i).
#
# Pinning: with taskset (util-linux) and at least two CPUs, the server runs on the first half
# of the CPUs this script may use (CPU 0 of two) and the load generator, `hotline bench`, on the
# rest, so that neither takes the other's time. PostgreSQL and Redis (shared services), the
# seeding and (g) are not pinned. Without taskset, or with one CPU, nothing is (the script says).
# Server CPU: for (a) to (e) and (b½), the server's CPU time (user + system, all threads, from
# /proc/<pid>/stat) over the measured requests alone (not the warm pass), per request in µs;
# "CPU b/a" is the warm webhook's over /healthz's; for (j), instance A's alone (B, which serves
# the streams, is pinned with it). Null where there is no /proc.
#
#   bash scripts/bench.sh            # 100,000 leads, 15 s per scenario, 32 workers
#   bash scripts/bench.sh --quick    # 2,000 leads, 3 s per scenario, 8 workers (CI)
#   bash scripts/bench.sh --scale    # 1,000,000 leads, tier 1 at 64 MB, 60 s of Zipf load:
#                                    # hit rates per tier and the process's resident memory
#
# Overrides (environment): LEADS, DURATION_S, CONCURRENCY, STAMPEDE, UNKNOWN_PCT, ZIPF_S,
# SSE_CLIENTS (default 50), CALLS_RATE (default 200), L1_MAX_MB (--scale), PG_URL (a server where
# a database may be created; default postgres://root@127.0.0.1:5432), REDIS_URL (default
# redis://127.0.0.1:6379).
# Needs psql, redis-cli, curl and jq; taskset to pin.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=full
for arg in "$@"; do
  case "$arg" in
    --quick) mode=quick ;;
    --scale) mode=scale ;;
    -h | --help) sed -n '2,/^[^#]/{/^#/p}' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done

case $mode in
  quick) LEADS=${LEADS:-2000} DURATION_S=${DURATION_S:-3} CONCURRENCY=${CONCURRENCY:-8} STAMPEDE=${STAMPEDE:-200} ;;
  scale) LEADS=${LEADS:-1000000} DURATION_S=${DURATION_S:-60} CONCURRENCY=${CONCURRENCY:-32} STAMPEDE=${STAMPEDE:-1000} ;;
  *) LEADS=${LEADS:-100000} DURATION_S=${DURATION_S:-15} CONCURRENCY=${CONCURRENCY:-32} STAMPEDE=${STAMPEDE:-1000} ;;
esac
quick=$([ $mode = quick ] && echo true || echo false)
L1_MAX_MB=${L1_MAX_MB:-64}
UNKNOWN_PCT=${UNKNOWN_PCT:-10}
ZIPF_S=${ZIPF_S:-1.0}
SSE_CLIENTS=${SSE_CLIENTS:-50}
CALLS_RATE=${CALLS_RATE:-200}
PG_URL=${PG_URL:-postgres://root@127.0.0.1:5432}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}

say() { printf 'bench.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

for tool in psql redis-cli curl jq; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
done
# The CPUs this script may use, split: the first half to the server, the rest to the generator.
server_pin=() bench_pin=() server_cpus= bench_cpus=
if ! command -v taskset >/dev/null 2>&1; then
  say "taskset (util-linux) is not installed: the server and the load generator are not pinned"
else
  cpus=()
  IFS=, read -ra parts <<<"$(taskset -cp $$ | sed 's/.*: *//')"
  for part in "${parts[@]}"; do
    case "$part" in
      *-*) for c in $(seq "${part%-*}" "${part#*-}"); do cpus+=("$c"); done ;;
      *) cpus+=("$part") ;;
    esac
  done
  if [ ${#cpus[@]} -lt 2 ]; then
    say "fewer than two CPUs to use: the server and the load generator are not pinned"
  else
    n_server=$((${#cpus[@]} / 2))
    server_cpus=$(IFS=,; echo "${cpus[*]:0:n_server}")
    bench_cpus=$(IFS=,; echo "${cpus[*]:n_server}")
    server_pin=(taskset -c "$server_cpus")
    bench_pin=(taskset -c "$bench_cpus")
    say "pinning the server to CPU $server_cpus and the load generator to CPU $bench_cpus"
  fi
fi
if [ -n "$server_cpus" ]; then
  pinning="Server on CPU $server_cpus, load generator on CPU $bench_cpus (taskset); PostgreSQL and Redis not pinned."
else
  pinning="Server and load generator not pinned."
fi
machine=$(jq -n --arg cpus "$(nproc)" --arg s "$server_cpus" --arg b "$bench_cpus" \
  '{cpus: ($cpus | tonumber), server_cpus: (if $s == "" then null else $s end),
    bench_cpus: (if $b == "" then null else $b end)}')

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
export WEBHOOK_SECRET ADMIN_TOKEN
# The instance under test, and a second one beside it (calls scenario), with their Redis prefixes.
server_pid= peer_pid= server_prefix= peer_prefix=

stop_pid() {
  local pid=$1
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# forget_keys PREFIX: drops a run's keys, so that the calls every run starts (one per request)
# do not pile up in Redis until the end.
forget_keys() {
  redis-cli -u "$REDIS_URL" --scan --pattern "$1*" 2>/dev/null |
    xargs -r -n 500 redis-cli -u "$REDIS_URL" del >/dev/null 2>&1 || true
}

stop_server() {
  local pid prefix
  for pid in "$server_pid" "$peer_pid"; do
    [ -z "$pid" ] || stop_pid "$pid"
  done
  for prefix in "$server_prefix" "$peer_prefix"; do
    [ -z "$prefix" ] || forget_keys "$prefix"
  done
  server_pid= peer_pid= server_prefix= peer_prefix=
}

cleanup() {
  stop_server
  forget_keys "$PREFIX"
  psql "$PG_URL/postgres" -Atqc "drop database if exists $DB with (force)" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A port nothing listens on (nothing answers a connect to it), below the kernel's ephemeral
# range: a port in that range may be the local end of one of the many connections a run opens,
# and the server could not bind it.
free_port() {
  local port low
  low=$(awk '{ print $1 }' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
  [ "$low" -gt 12000 ] 2>/dev/null || low=32768
  for _ in $(seq 1 100); do
    port=$((10000 + RANDOM % (low - 10000)))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  die "no free port found"
}

# start_server NAME [ENV=VALUE ...]: a fresh instance with its own Redis prefix (unless given
# REDIS_KEY_PREFIX=…, as instances that share their state are); sets $url and $server_pid.
start_server() {
  local name=$1
  shift
  local port prefix="$PREFIX-$name:" arg
  for arg in "$@"; do
    case "$arg" in REDIS_KEY_PREFIX=*) prefix=${arg#REDIS_KEY_PREFIX=} ;; esac
  done
  port=$(free_port)
  url="http://127.0.0.1:$port"
  env LISTEN_ADDR="127.0.0.1:$port" DATABASE_URL="$DATABASE_URL" REDIS_URL="$REDIS_URL" \
    REDIS_KEY_PREFIX="$prefix" ADMIN_TOKEN="$ADMIN_TOKEN" WEBHOOK_SECRET="$WEBHOOK_SECRET" \
    SPOOL_DIR="$WORK/spool-$name" RUST_LOG=warn WARM_LEADS=0 L1_MAX_MB=64 REDIS_ENABLED=true \
    "$@" ${server_pin[@]+"${server_pin[@]}"} "$BIN" serve >"$WORK/server-$name.log" 2>&1 &
  server_pid=$! # env and taskset exec: this is the server's own pid
  server_prefix=$prefix
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "$url/healthz" 2>/dev/null && return 0
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  cat "$WORK/server-$name.log" >&2
  die "the server for $name did not come up"
}

# bench LABEL [ARG ...]: one measured run against $url, appended to runs.jsonl ($workers
# workers, default $CONCURRENCY), with the server's CPU time over it unless server_cpu=off.
bench() {
  local label=$1
  shift
  local cpu=()
  [ "${server_cpu:-on}" = off ] || cpu=(--server-pid "$server_pid")
  ${bench_pin[@]+"${bench_pin[@]}"} "$BIN" bench --url "$url" --label "$label" \
    --database-url "$DATABASE_URL" --duration-s "$DURATION_S" \
    --concurrency "${workers:-$CONCURRENCY}" --callers "$LEADS" --unknown-pct "$UNKNOWN_PCT" \
    --zipf-s "$ZIPF_S" --json-out "$OUT/runs.jsonl" ${cpu[@]+"${cpu[@]}"} "$@"
}

# no_cpu_note FILE JQ-PATH: says so when a run's server CPU time could not be read.
no_cpu_note() {
  if jq -e "[$2] | any(. == null)" "$1" >/dev/null; then
    say "the server's CPU time could not be read (no /proc/<pid>/stat here?): its column shows –"
  fi
}

mkdir -p "$OUT"
rm -f "$OUT/runs.jsonl" "$OUT/instrumentation.jsonl"

say "creating $DB and seeding $LEADS leads"
psql "$PG_URL/postgres" -Atqc "create database $DB" >/dev/null
RUST_LOG=info "$BIN" seed --database-url "$DATABASE_URL" --leads "$LEADS" --organizations 50 \
  --conversations-per-lead 3 --seed 7

# rss_kib NAME: a field of the server's /proc status (VmRSS, VmHWM), in KiB.
rss_kib() { awk -v f="$1:" '$1 == f { print $2 }' "/proc/$server_pid/status"; }

if [ $mode = scale ]; then
  say "scale: tier 1 at $L1_MAX_MB MB, $DURATION_S s of Zipf load over $LEADS callers"
  start_server s L1_MAX_MB="$L1_MAX_MB"
  idle_kib=$(rss_kib VmRSS)
  bench s_scale --scenario webhook
  stats=$(curl -fsS "$url/api/monitoring/stats/cache")
  jq -n --argjson run "$(tail -n 1 "$OUT/runs.jsonl")" --argjson stats "$stats" \
    --arg idle "$idle_kib" --arg rss "$(rss_kib VmRSS)" --arg hwm "$(rss_kib VmHWM)" \
    --arg budget "$L1_MAX_MB" --arg leads "$LEADS" --argjson machine "$machine" '{
      machine: $machine, leads: ($leads | tonumber), l1_max_mb: ($budget | tonumber),
      run: $run,
      l1: {entries: $stats.l1_entries, bytes: $stats.l1_bytes},
      memory_mib: {idle: (($idle | tonumber) / 1024), rss: (($rss | tonumber) / 1024),
                   peak: (($hwm | tonumber) / 1024)}
    }' >"$OUT/scale.json"
  stop_server
  jq -r '
    def f($d): if . == null then "–" else (. * pow(10; $d) | round / pow(10; $d) | tostring) end;
    "| leads | tier-1 budget | requests | rps | p50 ms | p99 ms | server CPU µs/request | answers from L1 % | L2 % | db % | lookups L1 % | L2 % | tier-1 entries | tier-1 MiB | RSS idle MiB | RSS MiB | peak RSS MiB |",
    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    "| \(.leads) | \(.l1_max_mb) MB | \(.run.requests) | \(.run.rps | f(0)) | \(.run.latency_ms.p50 | f(2)) | \(.run.latency_ms.p99 | f(2)) | \(.run.server.cpu_us_per_request | f(1)) | \(.run.client_hit_pct.l1 | f(1)) | \(.run.client_hit_pct.l2 | f(1)) | \(.run.client_hit_pct.db | f(1)) | \(.run.server.l1_hit_pct | f(1)) | \(.run.server.l2_hit_pct | f(1)) | \(.l1.entries) | \(.l1.bytes / 1048576 | f(1)) | \(.memory_mib.idle | f(0)) | \(.memory_mib.rss | f(0)) | \(.memory_mib.peak | f(0)) |"
  ' "$OUT/scale.json" >"$OUT/scale.md"
  printf '\n%s\n' "$pinning" >>"$OUT/scale.md"
  no_cpu_note "$OUT/scale.json" .run.server.cpu_us_per_request
  echo
  echo "hotline bench --scale: $LEADS leads, $DURATION_S s, $CONCURRENCY workers, $(nproc) CPUs"
  echo
  cat "$OUT/scale.md"
  say "wrote $OUT/scale.json and $OUT/scale.md"
  exit 0
fi

say "(a) /healthz"
start_server a
bench a_healthz --scenario healthz
stop_server

say "(b) webhook, both tiers warm (calls on: each request starts a call)"
start_server b
bench b_warm --scenario webhook --warm-pass
stop_server

say "(i) webhook, both tiers warm, calls off"
start_server i CALLS_ENABLED=false
bench i_warm_calls_off --scenario webhook --warm-pass
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
# Every request of the stampede holds a connection of its own.
start_server f MAX_CONNECTIONS=$((STAMPEDE + 64))
# Its measured phase opens the connections too, so CPU per request would not compare.
server_cpu=off bench f_stampede --scenario stampede --stampede-requests "$STAMPEDE"
stop_server

half=$(jq -rs 'map(select(.label == "b_warm"))[0].rps / 2 | floor | if . < 1 then 1 else . end' "$OUT/runs.jsonl")
say "(b½) webhook, both tiers warm, paced at $half requests per second (half of b)"
start_server h
# Enough workers that the schedule never waits for a free one.
workers=$((CONCURRENCY * 4)) bench h_warm_half_rate --scenario webhook --warm-pass --rate "$half"
stop_server

# start_pair NAME: instances A ($url, $server_pid) and B ($url_b, $peer_pid) that share Redis
# (one prefix) and the database, as the instances of one deployment do.
start_pair() {
  start_server "$1_b" REDIS_KEY_PREFIX="$PREFIX-$1:" INSTANCE_ID=bench-b
  peer_pid=$server_pid peer_prefix=$server_prefix url_b=$url
  start_server "$1_a" REDIS_KEY_PREFIX="$PREFIX-$1:" INSTANCE_ID=bench-a
}

say "(j) calls: webhooks to instance A, $SSE_CLIENTS SSE clients of /api/events on instance B"
start_pair j
bench j_calls --scenario calls --warm-pass --sse-url "$url_b" --sse-clients "$SSE_CLIENTS"
stop_server

say "(k) calls, paced at $CALLS_RATE new calls per second"
start_pair k
workers=$((CONCURRENCY * 4)) bench k_calls_paced --scenario calls --warm-pass --rate "$CALLS_RATE" \
  --sse-url "$url_b" --sse-clients "$SSE_CLIENTS"
stop_server

say "(g) instrumentation: recording one webhook's metrics, in process"
"$BIN" bench --scenario instrumentation --json-out "$OUT/instrumentation.jsonl" \
  --iterations "$([ $mode = quick ] && echo 100000 || echo 2000000)"

jq -s --arg leads "$LEADS" --arg quick "$quick" '
  def rate($x; $y): if ($y.rps // 0) > 0 then ($x.rps / $y.rps) else null end;
  def cpu($x; $y): ($x.server.cpu_us_per_request) as $cx | ($y.server.cpu_us_per_request) as $cy
    | if $cx != null and ($cy // 0) > 0 then $cx / $cy else null end;
  def p99($x; $y): ($x.latency_ms.p99) as $px | ($y.latency_ms.p99) as $py
    | if $px != null and ($py // 0) > 0 then $px / $py else null end;
  (map({(.label[0:1]): .}) | add) as $r
  | {
      machine: $machine,
      leads: ($leads | tonumber), quick: ($quick == "true"),
      runs: .,
      instrumentation: $instrumentation[0],
      ratios: {"b/a": rate($r.b; $r.a), "b/c": rate($r.b; $r.c), "b/d": rate($r.b; $r.d),
               "CPU b/a": cpu($r.b; $r.a),
               "calls on/off rps": rate($r.b; $r.i),
               "calls on/off p99": p99($r.b; $r.i),
               "calls on/off CPU": cpu($r.b; $r.i)}
    }' --argjson machine "$machine" --slurpfile instrumentation "$OUT/instrumentation.jsonl" "$OUT/runs.jsonl" >"$OUT/results.json"

jq -r --arg pinning "$pinning" '
  def f($d): if . == null then "–" else (. * pow(10; $d) | round / pow(10; $d) | tostring) end;
  "| scenario | requests | errors | rps | p50 ms | p95 ms | p99 ms | max ms | server CPU µs/request | L1 % | L2 % | loads/request |",
  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  (.runs[] | "| \(.label) | \(.requests) | \(.errors) | \(.rps | f(0)) | \(.latency_ms.p50 | f(2)) | \(.latency_ms.p95 | f(2)) | \(.latency_ms.p99 | f(2)) | \(.latency_ms.max | f(2)) | \(.server.cpu_us_per_request | f(1)) | \(.client_hit_pct.l1 | f(1)) | \(.client_hit_pct.l2 | f(1)) | \(.server.loads_per_request | f(4)) |"),
  "",
  "Ratios of requests per second: b/a \(.ratios["b/a"] | f(2)), b/c \(.ratios["b/c"] | f(2)), b/d \(.ratios["b/d"] | f(2)). Server CPU per request, CPU b/a: \(.ratios["CPU b/a"] | f(2)) (the warm webhook over /healthz).",
  "",
  "Calls on over calls off (b/i, the warm webhook, a new call per request): rps \(.ratios["calls on/off rps"] | f(2)), p99 \(.ratios["calls on/off p99"] | f(2)), server CPU per request \(.ratios["calls on/off CPU"] | f(2)).",
  "",
  "Event streams (webhooks to instance A, SSE clients of /api/events on instance B; latency: arrival at the client minus the event'"'"'s `at`, stamped on A):",
  "",
  "| scenario | webhooks/s | SSE clients | events delivered | events/s | latency p50 ms | p99 ms | max ms | call.started delivered % | disconnected |",
  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  (.runs[] | select(.sse != null) | "| \(.label) | \(.rps | f(0)) | \(.sse.clients) | \(.sse.events) | \(.sse.events_per_s | f(0)) | \(.sse.latency_ms.p50 | f(2)) | \(.sse.latency_ms.p99 | f(2)) | \(.sse.latency_ms.max | f(2)) | \(.sse.call_started_delivered_pct | f(1)) | \(.sse.disconnected) |"),
  "",
  $pinning,
  "",
  "Instrumentation per webhook: \(.instrumentation.runs | map("\(.instrumentation_ns_per_webhook | f(0)) ns on \(.threads) thread(s)") | join(", ")).",
  "",
  "Stampede store loads by kind: \(.runs[] | select(.scenario == "stampede") | .server.loads | to_entries | map("\(.key) \(.value)") | join(", "))."
' "$OUT/results.json" >"$OUT/results.md"
no_cpu_note "$OUT/results.json" '.runs[] | select(.scenario != "stampede") | .server.cpu_us_per_request'

echo
echo "hotline bench: $LEADS leads, $DURATION_S s per scenario, $CONCURRENCY workers, $(nproc) CPUs"
echo
cat "$OUT/results.md"
say "wrote $OUT/results.json and $OUT/results.md"
