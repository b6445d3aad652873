"""Schemathesis hooks for fuzzing hotline (loaded by scripts/fuzz.sh).

- Signs post-call webhooks the way ElevenLabs does, over the exact bytes sent, so that the
  fuzzer reaches the handler behind the signature; a request whose signature header was removed
  or replaced (the `ignored_auth` check) is left alone and must be refused.
- Adds a check: a refused request (4xx) changes no stored data, in Postgres or in Redis.
"""

import hashlib
import hmac
import os
import time
from datetime import datetime

import psycopg
import redis
import schemathesis
from hypothesis import strategies as st
from requests.auth import AuthBase

POST_CALL = "/webhooks/elevenlabs/post-call"
# The value schemathesis puts in `ElevenLabs-Signature` (schemathesis.toml); replaced by a real
# signature on the way out.
PLACEHOLDER = "sign-me"

SECRET = os.environ["ELEVENLABS_WEBHOOK_SECRET"].encode()
DATABASE_URL = os.environ["FUZZ_DATABASE_URL"]
REDIS_URL = os.environ["FUZZ_REDIS_URL"]
PREFIX = os.environ["REDIS_KEY_PREFIX"]


# `format: phone`: numbers libphonenumber finds valid (San Francisco and London fixed lines), in
# E.164 and with the spacing people type.
schemathesis.openapi.format(
    "phone",
    st.one_of(
        st.integers(2_000_000, 9_999_999).map(lambda n: f"+1415{n}"),
        st.integers(2_000_000, 9_999_999).map(lambda n: f"+1 (415) {str(n)[:3]}-{str(n)[3:]}"),
        st.integers(0, 9_999).map(lambda n: f"+44 20 7946 {n:04d}"),
    ),
)


class ElevenLabsSignature(AuthBase):
    """`t=<unix seconds>,v0=<hex HMAC-SHA256 of "<t>.<body>">`, over the prepared body."""

    def __call__(self, request):
        if request.headers.get("ElevenLabs-Signature") != PLACEHOLDER:
            return request
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode()
        t = str(int(time.time()))
        mac = hmac.new(SECRET, t.encode() + b"." + body, hashlib.sha256).hexdigest()
        request.headers["ElevenLabs-Signature"] = f"t={t},v0={mac}"
        return request


# Stored data: every row of the store, and every call, call event stream and admin message in
# Redis (heartbeats, cache entries, acks and the global event stream change on their own).
TABLES = ("organizations", "leads", "conversations")
KEPT = ("{calls}:call:", "{calls}:conversation:", "{events}:call:", "{admin}:message:")

_db = None
_redis = None


def _connections():
    global _db, _redis
    if _db is None:
        _db = psycopg.connect(DATABASE_URL, autocommit=True)
        _redis = redis.Redis.from_url(REDIS_URL)
    return _db, _redis


def fingerprint():
    db, r = _connections()
    digest = hashlib.sha256()
    with db.cursor() as cur:
        for table in TABLES:
            cur.execute(f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t.id), '')) FROM {table} t")
            digest.update(cur.fetchone()[0].encode())
    keys = sorted(
        k for k in r.scan_iter(match=f"{PREFIX}:*", count=1000) if any(p.encode() in k for p in KEPT)
    )
    for key in keys:
        kind = r.type(key)
        if kind == b"stream":
            value = repr((r.xlen(key), r.xinfo_stream(key)["last-generated-id"]))
        else:
            value = r.dump(key) or b""
        digest.update(key + b"=" + (value if isinstance(value, bytes) else value.encode()))
    return digest.hexdigest()


# Whether writes a request queued may still be landing: the webhooks queue call changes for the
# call writer, and admin messages are acked in the background. Every other write is done by the
# time its answer arrives.
QUEUES_WRITES = ("/webhooks/", "/api/admin/messages")
_unsettled = True


def settled_fingerprint():
    """The fingerprint once writes an earlier request queued (a call's ring) have landed."""
    global _unsettled
    last = fingerprint()
    if not _unsettled:
        return last
    for _ in range(50):
        time.sleep(0.02)
        now = fingerprint()
        if now == last:
            break
        last = now
    _unsettled = False
    return last


@schemathesis.hook
def filter_body(context, body):
    """What JSON Schema cannot say: a conversation's `ended_at` is not before its `started_at`."""
    operation = context.operation
    if operation is None or operation.path != "/api/leads/{id}/conversations":
        return True
    if not isinstance(body, dict):
        return True
    started, ended = body.get("started_at"), body.get("ended_at")
    if not (isinstance(started, str) and isinstance(ended, str)):
        return True
    try:
        return datetime.fromisoformat(ended) >= datetime.fromisoformat(started)
    except ValueError:
        return True


# The stored data before each request that may change it, by case (one worker: one at a time).
_before = {}


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.path == POST_CALL:
        kwargs["auth"] = ElevenLabsSignature()
    _before.clear()
    if case.method.upper() != "GET":
        _before[id(case)] = settled_fingerprint()


@schemathesis.hook
def after_call(context, case, response):
    global _unsettled
    if case.path.startswith(QUEUES_WRITES):
        _unsettled = True


@schemathesis.check
def refused_request_changes_nothing(ctx, response, case):
    before = _before.get(id(case))
    if before is None or not 400 <= response.status_code < 500:
        return None
    if settled_fingerprint() != before:
        raise AssertionError(
            f"{case.method} {case.path} was refused with {response.status_code}, "
            "yet stored data changed"
        )
    return None
