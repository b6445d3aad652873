#!/usr/bin/env bash
# Measures how fast instances that share Redis and PostgreSQL learn about each other:
#
#   1. loss: three instances (A, B, C); one of B and C (in turn) is killed with SIGKILL, and the
#      time from the kill to the `instance.lost` event for it on A's `GET /api/events` stream is
#      measured. The killed one is then started again under a new INSTANCE_ID, and the next run
#      waits until `GET /api/monitoring/instances` lists all three. Each B and C starts, and
#      each kill comes, after a random fraction of a heartbeat interval, so that the instances
#      beat at independent phases and kills fall at every phase of the beats. An instance is gone after 3 missed beats (3 intervals after its last beat), and it
#      is found gone on the first beat of a survivor after that, so a kill is seen between 2 and
#      4 intervals later (10 to 20 s at the default HEARTBEAT_INTERVAL_S=5). The table also
#      shows, per run, how long before the kill the victim last beat (read from Redis) and which
#      survivor found it.
#   2. admin round trip: `POST /api/admin/messages {"to":"all","command":"ping"}` (to A, B and C
#      in turn), and the time from sending it to the last of the three `admin.ack` events for it
#      on A's stream; each is cross-checked with `GET /api/admin/messages/{id}` (every instance
#      acked, none missing).
#
# Prints a markdown table and writes bench-results/instances.md and bench-results/instances.json.
# Everything it starts (the instances, a database, Redis keys under its own prefix, a temporary
# directory) is removed on exit, also on failure or Ctrl-C.
#
#   bash scripts/instances-bench.sh
#
# Environment: BIN (default target/release/hotline; build it with `cargo build --release`),
# KILL_RUNS (default 5), PING_RUNS (default 20), HEARTBEAT_INTERVAL_S (default 5, the
# instances' default), PG_URL (a server where a database may be created; default
# postgres://root@127.0.0.1:5432), REDIS_URL (default redis://127.0.0.1:6379).
# Needs psql, redis-cli and python3 (standard library only).
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
  "") ;;
  -h | --help) sed -n '2,/^[^#]/{/^#/p}' "$0"; exit 0 ;;
  *) echo "instances-bench.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
esac

BIN=${BIN:-target/release/hotline}
KILL_RUNS=${KILL_RUNS:-5}
PING_RUNS=${PING_RUNS:-20}
HEARTBEAT_INTERVAL_S=${HEARTBEAT_INTERVAL_S:-5}
PG_URL=${PG_URL:-postgres://root@127.0.0.1:5432}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}

say() { printf 'instances-bench.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

for tool in psql redis-cli python3; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
done
[ -x "$BIN" ] || die "no binary at $BIN (cargo build --release, or set BIN)"
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")

suffix=$(python3 -c 'import secrets; print(secrets.token_hex(4))')
DB=hotline_meas_$suffix
PREFIX=hotline-meas-$suffix
WORK=$(mktemp -d)
OUT=bench-results

# The instances' pids, one a line, as the measurement starts them: killed here whatever happens.
PIDS=$WORK/pids
: >"$PIDS"

cleanup() {
  local pid
  while read -r pid; do
    [ -n "$pid" ] || continue
    kill -9 "$pid" 2>/dev/null || true
  done <"$PIDS"
  redis-cli -u "$REDIS_URL" --scan --pattern "$PREFIX*" 2>/dev/null |
    xargs -r -n 500 redis-cli -u "$REDIS_URL" del >/dev/null 2>&1 || true
  psql "$PG_URL/postgres" -Atqc "drop database if exists $DB with (force)" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

psql "$PG_URL/postgres" -Atqc "create database $DB" >/dev/null || die "could not create database $DB"
mkdir -p "$OUT"
say "database $DB, Redis prefix $PREFIX, heartbeat every ${HEARTBEAT_INTERVAL_S}s"

export BIN KILL_RUNS PING_RUNS HEARTBEAT_INTERVAL_S REDIS_URL PREFIX WORK PIDS OUT
export DATABASE_URL="$PG_URL/$DB"
python3 - <<'PY'
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

BIN = os.environ["BIN"]
KILL_RUNS = int(os.environ["KILL_RUNS"])
PING_RUNS = int(os.environ["PING_RUNS"])
INTERVAL = float(os.environ["HEARTBEAT_INTERVAL_S"])
PREFIX = os.environ["PREFIX"]
WORK = os.environ["WORK"]
PIDS = os.environ["PIDS"]
OUT = os.environ["OUT"]
ADMIN_TOKEN = "meas-admin-token-0123456789"
WEBHOOK_SECRET = "meas-webhook-secret-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def say(msg):
    print(f"instances-bench.sh: {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, method, path, body=None, headers=None, timeout=5):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        h = dict(headers or {})
        if data is not None:
            h["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=h)
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, (json.loads(raw) if raw else None)
    finally:
        conn.close()


class Instance:
    def __init__(self, name):
        self.name = name
        self.port = free_port()
        spool = os.path.join(WORK, f"spool-{name}")
        os.makedirs(spool, exist_ok=True)
        env = dict(os.environ)
        env.update(
            DATABASE_URL=os.environ["DATABASE_URL"],
            REDIS_URL=os.environ["REDIS_URL"],
            REDIS_KEY_PREFIX=PREFIX,
            LISTEN_ADDR=f"127.0.0.1:{self.port}",
            ADMIN_TOKEN=ADMIN_TOKEN,
            WEBHOOK_SECRET=WEBHOOK_SECRET,
            INSTANCE_ID=name,
            HEARTBEAT_INTERVAL_S=os.environ["HEARTBEAT_INTERVAL_S"],
            WARM_LEADS="0",
            SPOOL_DIR=spool,
            LOG_FORMAT="json",
        )
        self.log = open(os.path.join(WORK, f"{name}.log"), "wb")
        self.proc = subprocess.Popen([BIN, "serve"], env=env, stdout=self.log, stderr=subprocess.STDOUT)
        with open(PIDS, "a") as f:
            f.write(f"{self.proc.pid}\n")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if request(self.port, "GET", "/healthz", timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        self.log.flush()
        sys.stderr.write(open(self.log.name).read())
        raise SystemExit(f"instance {name} did not come up")

    def kill(self):
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


class Stream:
    """One `GET /api/events` stream, read on a thread; every frame kept with its arrival time."""

    def __init__(self, port):
        self.cond = threading.Condition()
        self.frames = []  # (monotonic arrival, type, event JSON)
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=None)
        self.conn.request("GET", "/api/events", headers={**AUTH, "Accept": "text/event-stream"})
        resp = self.conn.getresponse()
        if resp.status != 200:
            raise SystemExit(f"GET /api/events answered {resp.status}")
        self.resp = resp
        threading.Thread(target=self.read, daemon=True).start()

    def read(self):
        kind, data = None, []
        for raw in self.resp:
            line = raw.decode().rstrip("\r\n")
            if line == "":
                if data:
                    now = time.monotonic()
                    try:
                        event = json.loads("\n".join(data))
                    except ValueError:
                        event = None
                    with self.cond:
                        self.frames.append((now, kind, event))
                        self.cond.notify_all()
                kind, data = None, []
            elif line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip(" ") if line[5:6] == " " else line[5:])
        with self.cond:
            self.frames.append((time.monotonic(), "__closed__", None))
            self.cond.notify_all()

    def wait_for(self, pred, timeout):
        """The arrival time and event of the first frame pred accepts, waiting up to timeout."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for at, kind, event in self.frames:
                    if kind == "__closed__":
                        raise SystemExit("the event stream closed")
                    if pred(kind, event):
                        return at, event
                left = deadline - time.monotonic()
                if left <= 0:
                    return None, None
                self.cond.wait(left)

    def matching(self, pred):
        with self.cond:
            return [(at, e) for at, k, e in self.frames if pred(k, e)]


def listed(port):
    status, body = request(port, "GET", "/api/monitoring/instances")
    return {i["instance_id"] for i in body["instances"]} if status == 200 else set()


def wait_listed(port, ids, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if listed(port) == set(ids):
            return
        time.sleep(0.1)
    raise SystemExit(f"instances never listed as {sorted(ids)}: {sorted(listed(port))}")


def redis(*args):
    return subprocess.run(
        ["redis-cli", "-u", os.environ["REDIS_URL"], *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def last_beat_ms(instance_id):
    """When the instance last beat (ms), from the live set the instances keep in Redis."""
    keys = redis("--scan", "--pattern", f"{PREFIX}:*{{instances}}:live").split()
    if len(keys) != 1:
        raise SystemExit(f"expected one live set under {PREFIX}, found {keys}")
    out = redis("zscore", keys[0], instance_id)
    return float(out) if out else None


def pct(values, p):
    """Nearest-rank percentile."""
    s = sorted(values)
    return s[max(0, min(len(s) - 1, -(-len(s) * p // 100) - 1))]


generation = {"B": 0, "C": 0}


rng = random.Random()


def start(slot):
    """A new instance in a slot, after a random fraction of an interval: an instance beats from
    its start, so this keeps the instances' beats at independent phases (started right after a
    survivor found a loss, it would beat just after that survivor, run after run)."""
    time.sleep(rng.uniform(0, INTERVAL))
    generation[slot] += 1
    return Instance(f"meas-{slot.lower()}{generation[slot]}")


say("starting three instances")
a = Instance("meas-a")  # the first one migrates the fresh database alone
slots = {"B": start("B"), "C": start("C")}
wait_listed(a.port, [a.name] + [i.name for i in slots.values()], 4 * INTERVAL)
stream = Stream(a.port)
time.sleep(0.5)

# 1. loss
loss = []
for run in range(1, KILL_RUNS + 1):
    slot = "BC"[(run - 1) % 2]
    victim = slots[slot]
    time.sleep(rng.uniform(0, INTERVAL))
    beat_before = last_beat_ms(victim.name)
    wall = time.time()
    t0 = time.monotonic()
    victim.kill()
    at, event = stream.wait_for(
        lambda k, e: k == "instance.lost" and e and e.get("data", {}).get("instance_id") == victim.name,
        6 * INTERVAL,
    )
    if at is None:
        raise SystemExit(f"run {run}: no instance.lost for {victim.name} within {6 * INTERVAL}s")
    took = at - t0
    since_beat = None if beat_before is None else wall - beat_before / 1000
    loss.append({"run": run, "killed": victim.name, "seconds": round(took, 3),
                 "last_beat_before_kill_s": None if since_beat is None else round(since_beat, 3),
                 "found_by": event.get("instance_id")})
    say(f"loss run {run}: {victim.name} killed, instance.lost after {took:.3f}s "
        f"(last beat {since_beat:.3f}s before the kill, found by {event.get('instance_id')})")
    slots[slot] = start(slot)
    wait_listed(a.port, [a.name] + [i.name for i in slots.values()], 4 * INTERVAL)

# 2. admin round trip
instances = [a, slots["B"], slots["C"]]
names = {i.name for i in instances}
pings = []
for run in range(1, PING_RUNS + 1):
    target = instances[(run - 1) % 3]
    t0 = time.monotonic()
    status, body = request(target.port, "POST", "/api/admin/messages", {"to": "all", "command": "ping"}, AUTH)
    posted = time.monotonic() - t0
    if status != 202:
        raise SystemExit(f"ping run {run}: POST answered {status} {body}")
    mid = body["id"]
    if set(body["expected"]) != names:
        raise SystemExit(f"ping run {run}: expected {body['expected']}, not {sorted(names)}")

    def ack(k, e, mid=mid):
        return k == "admin.ack" and e and e.get("data", {}).get("message_id") == mid

    deadline = time.monotonic() + 10
    while True:
        acks = stream.matching(ack)
        if len({e["data"]["instance_id"] for _, e in acks}) >= 3:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"ping run {run}: {len(acks)} acks after 10s")
        stream.wait_for(lambda k, e: False, 0.01)
    last = max(at for at, _ in acks) - t0
    status, got = request(target.port, "GET", f"/api/admin/messages/{mid}", headers=AUTH)
    ok = status == 200 and got["missing"] == [] and set(got["acks"]) == names
    if not ok:
        raise SystemExit(f"ping run {run}: GET answered {status} {got}")
    pings.append({"run": run, "posted_to": target.name, "seconds": round(last, 6),
                  "post_answered_s": round(posted, 6), "acks": len(acks), "missing": got["missing"]})
    time.sleep(0.2)

lost_s = [r["seconds"] for r in loss]
ping_ms = [r["seconds"] * 1000 for r in pings]
post_ms = [r["post_answered_s"] * 1000 for r in pings]
lines = [
    f"Three instances, HEARTBEAT_INTERVAL_S={INTERVAL:g}, shared Redis and PostgreSQL; "
    f"events read on {a.name}'s `GET /api/events`.",
    "",
    "| kill run | killed | SIGKILL → `instance.lost` (s) | its last beat before the kill (s) "
    "| its last beat → `instance.lost` (s) | found by |",
    "|---|---|---|---|---|---|",
]
for r in loss:
    b = r["last_beat_before_kill_s"]
    lines.append(f"| {r['run']} | {r['killed']} | {r['seconds']:.3f} | {b:.3f} | {b + r['seconds']:.3f} | {r['found_by']} |")
lines += [
    "",
    "| measure | runs | p50 | p99 | min | max |",
    "|---|---|---|---|---|---|",
    f"| SIGKILL → `instance.lost` (s) | {len(lost_s)} | {pct(lost_s, 50):.3f} | {pct(lost_s, 99):.3f} | {min(lost_s):.3f} | {max(lost_s):.3f} |",
    f"| ping POST → last of 3 `admin.ack` (ms) | {len(ping_ms)} | {pct(ping_ms, 50):.2f} | {pct(ping_ms, 99):.2f} | {min(ping_ms):.2f} | {max(ping_ms):.2f} |",
    f"| ping POST answered 202 (ms) | {len(post_ms)} | {pct(post_ms, 50):.2f} | {pct(post_ms, 99):.2f} | {min(post_ms):.2f} | {max(post_ms):.2f} |",
    "",
    f"An instance is gone {3 * INTERVAL:g} s after its last beat and found on a survivor's next beat, "
    f"so the kill is seen {2 * INTERVAL:g} to {4 * INTERVAL:g} s later.",
    f"Every ping: 3 acks on the stream, and `GET /api/admin/messages/{{id}}` with 3 acks and `missing: []`. "
    f"Percentiles are nearest-rank (p99 of {len(ping_ms)} runs is the maximum).",
]
table = "\n".join(lines)
print(table)
with open(os.path.join(OUT, "instances.md"), "w") as f:
    f.write(table + "\n")
with open(os.path.join(OUT, "instances.json"), "w") as f:
    json.dump({"heartbeat_interval_s": INTERVAL, "loss": loss, "pings": pings}, f, indent=2)
for i in [a, *slots.values()]:
    i.kill()
PY
