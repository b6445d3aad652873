#!/usr/bin/env bash
# Runs hotline's whole test suite against real Postgres and Redis on this machine.
# Starts the installed servers when they are down; says clearly what is missing otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_HOST=127.0.0.1
PG_PORT=5432
REDIS_PORT=6379
# Set these to use servers elsewhere; then nothing local is checked or started.
own_pg=${HOTLINE_TEST_DATABASE_URL:-}
own_redis=${HOTLINE_TEST_REDIS_URL:-}
export HOTLINE_TEST_DATABASE_URL="${HOTLINE_TEST_DATABASE_URL:-postgres://root@${PG_HOST}:${PG_PORT}/postgres}"
export HOTLINE_TEST_REDIS_URL="${HOTLINE_TEST_REDIS_URL:-redis://127.0.0.1:${REDIS_PORT}}"

say() { printf 'test.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

can_install() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }

apt_install() {
  can_install || return 1
  say "installing $* with apt-get"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

pg_up() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT" 2>/dev/null; }

ensure_postgres() {
  if ! command -v pg_isready >/dev/null 2>&1 || ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    apt_install postgresql postgresql-client ||
      die "PostgreSQL is not installed; install it (apt-get install postgresql) or point HOTLINE_TEST_DATABASE_URL at a server"
  fi
  pg_up && return 0
  say "PostgreSQL is not answering on ${PG_HOST}:${PG_PORT}; starting it"
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 50); do pg_up && break; sleep 0.2; done
  pg_up || die "PostgreSQL did not start; see /var/log/postgresql"
  # A fresh cluster: let the current user in as a superuser, as the tests expect.
  if ! psql -h "$PG_HOST" -p "$PG_PORT" -d postgres -c 'select 1' >/dev/null 2>&1; then
    su postgres -c "psql -c \"create role $(id -un) superuser login\"" >/dev/null 2>&1 || true
  fi
}

redis_up() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; }

ensure_redis() {
  if ! command -v redis-server >/dev/null 2>&1; then
    apt_install redis-server || die "redis-server is not installed; install it (apt-get install redis-server)"
  fi
  redis_up && return 0
  say "Redis is not answering on 127.0.0.1:${REDIS_PORT}; starting it"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 1 50); do redis_up && break; sleep 0.1; done
  redis_up || die "Redis did not start; see /var/log/redis/ci.log"
}

# The monitoring tests check /metrics with promtool and load the dashboard in headless Chromium;
# they fail (never skip) without them.
ensure_test_tools() {
  local missing=()
  command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  [ ${#missing[@]} -eq 0 ] && return 0
  apt_install "${missing[@]}" ||
    die "promtool or chromium is missing; install them (apt-get install ${missing[*]})"
}

ensure_nextest() {
  command -v cargo-nextest >/dev/null 2>&1 && return 0
  say "installing cargo-nextest"
  cargo install cargo-nextest --locked
}

[ -n "$own_pg" ] || ensure_postgres
[ -n "$own_redis" ] || ensure_redis
ensure_test_tools
ensure_nextest

cargo nextest run --all-targets --no-fail-fast "$@"
