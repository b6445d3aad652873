//! Monitoring, end to end: the Prometheus text (checked by `promtool`, free of personal data),
//! the rolling-window JSON, per-kind cache stats, the SSE stream, an alert firing and
//! resolving (SSE, alerts list, webhook, gauge), health with Redis or the database down, bus
//! events reaching the stream bare, and the dashboard rendering live numbers, calls and events in
//! headless Chromium.
//!
//! Prometheus metrics live in one recorder per process; nextest runs each test in a process of
//! its own, so a test's instance is the only one feeding `/metrics` and exact counts hold.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::app::{spawn_app_on, TestApp};
use crate::support::browser::{Browser, Page};
use crate::support::db::TestDb;
use crate::support::hook::AlertHook;
use crate::support::infra::{
    eventually, redis_flags, redis_url, unique_prefix, RedisServer, TcpProxy,
};
use crate::support::sse::SseClient;
use crate::webhooks::{
    initiation_body, initiation_ok, known_caller, KnownCaller, CALLER, CALL_SID, ORG_PHONE,
};

/// The families the contract requires.
const FAMILIES: [&str; 9] = [
    "hotline_cache_requests_total",
    "hotline_cache_load_duration_seconds",
    "hotline_cache_invalidations_total",
    "hotline_http_request_duration_seconds",
    "hotline_redis_up",
    "hotline_redis_command_duration_seconds",
    "hotline_db_query_duration_seconds",
    "hotline_alert_firing",
    "hotline_webhook_answers_total",
];
const KINDS: [&str; 7] = [
    "organization",
    "lead",
    "lead_by_phone",
    "context",
    "summary",
    "greeting",
    "history",
];
const ALERTS: [&str; 6] = [
    "cache_hit_rate_low",
    "response_time_high",
    "error_rate_high",
    "redis_down",
    "database_down",
    "instance_lost",
];
const INITIATION_ROUTE: &str = "/webhooks/elevenlabs/conversation-initiation";
/// Every request a test makes to a monitoring endpoint must be answered within this.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Flags for an instance on the shared Redis under a prefix of its own, with a webhook deadline
/// that a cold lookup on a busy machine does not miss.
fn flags_with_redis() -> Vec<String> {
    let mut flags = redis_flags(&redis_url(), &unique_prefix());
    flags.extend(["--webhook-deadline-ms", "2000"].map(String::from));
    flags
}

async fn spawn_with(extra: &[String]) -> TestApp {
    spawn_app_on(Arc::new(TestDb::postgres().await), &strs(extra)).await
}

/// A client whose every request must be answered within [`ANSWER_WITHIN`].
fn bounded_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(ANSWER_WITHIN)
        .build()
        .expect("an HTTP client")
}

/// `GET path`: status and JSON body, answered within [`ANSWER_WITHIN`].
async fn get_json(app: &TestApp, path: &str) -> (u16, Value) {
    let r = bounded_client()
        .get(app.url(path))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path} answered within {ANSWER_WITHIN:?}: {e}"));
    let status = r.status().as_u16();
    let text = r.text().await.expect("a body");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {text}"));
    (status, body)
}

async fn get_ok(app: &TestApp, path: &str) -> Value {
    let (status, body) = get_json(app, path).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

/// The Prometheus text of `/metrics`, checking its content type.
async fn metrics_text(app: &TestApp) -> String {
    let r = bounded_client()
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("/metrics answers");
    assert_eq!(r.status(), 200);
    let content_type = r
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("text/plain") && content_type.contains("version=0.0.4"),
        "Prometheus text format: {content_type:?}"
    );
    r.text().await.expect("a body")
}

/// Runs `promtool check metrics` with `text` on its standard input; fails the test with
/// promtool's findings, or with how to install it when it is missing (never a silent skip).
fn promtool_check(text: &str, when: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not installed, so /metrics cannot be checked: run scripts/test.sh, \
             which installs it (Debian package `prometheus`), or `apt-get install prometheus`"
        ),
        Err(e) => panic!("promtool could not be started: {e}"),
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool ends");
    assert!(
        out.status.success(),
        "promtool check metrics fails {when} ({}):\n{}{}\n--- the text:\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

/// Every contract family with HELP and TYPE, and its series from the start.
fn assert_families(text: &str, when: &str) {
    for family in FAMILIES {
        let help = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("# HELP {family} ")))
            .unwrap_or_else(|| panic!("{when}: no HELP for {family}"));
        assert!(!help.trim().is_empty(), "{when}: empty HELP for {family}");
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{when}: no TYPE for {family}"
        );
    }
    for kind in KINDS {
        for result in ["l1_hit", "l2_hit", "miss", "stale"] {
            let series =
                format!("hotline_cache_requests_total{{kind=\"{kind}\",result=\"{result}\"}}");
            assert!(sample(text, &series).is_some(), "{when}: no {series}");
        }
    }
    for alert in ALERTS {
        let series = format!("hotline_alert_firing{{alert=\"{alert}\"}}");
        assert!(sample(text, &series).is_some(), "{when}: no {series}");
    }
    for source in ["l1", "l2", "db", "stale", "default"] {
        let series = format!("hotline_webhook_answers_total{{source=\"{source}\"}}");
        assert!(sample(text, &series).is_some(), "{when}: no {series}");
    }
    assert!(
        sample(text, "hotline_redis_up").is_some(),
        "{when}: no hotline_redis_up"
    );
}

/// The value of one exact series (`name{labels}` as rendered), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        let value = rest.strip_prefix(' ')?;
        Some(value.trim().parse().expect("a sample value"))
    })
}

/// The sum of every series of `name` whose labels contain `with` (`""`: all of them).
fn sum_of(text: &str, name: &str, with: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let labels = series.strip_prefix(name)?;
            (labels.is_empty() || labels.starts_with('{')).then_some(())?;
            labels
                .contains(with)
                .then(|| value.parse::<f64>().expect("a value"))
        })
        .sum()
}

/// The keys of a JSON object, sorted.
fn keys(v: &Value) -> Vec<String> {
    let mut keys: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("an object: {v}"))
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

fn sorted(names: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

fn is_rfc3339(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| chrono::DateTime::parse_from_rfc3339(s).is_ok())
}

/// A conversation-initiation call for `caller` to the known organization: the source header.
async fn call(app: &TestApp, caller: &str) -> String {
    initiation_ok(app.initiate(&initiation_body(caller, ORG_PHONE)).await)
        .await
        .1
}

/// `n` distinct callers nobody knows, from a block of numbers of the test's own.
fn strangers(block: u32, n: u32) -> Vec<String> {
    (0..n)
        .map(|i| format!("+1612765{}{:03}", block % 10, i))
        .collect()
}

/// Waits until the instance's Redis breaker is closed (it starts open and closes once Redis
/// answers).
async fn wait_redis(app: &TestApp) {
    let remote = app.cache.remote().expect("an instance with Redis");
    let closed = eventually(Duration::from_secs(10), || async {
        remote.breaker.is_closed()
    })
    .await;
    assert!(closed, "the instance connected to Redis");
}

/// What traffic touched that must never show in monitoring output.
struct Secrets(Vec<String>);

impl Secrets {
    fn assert_absent(&self, text: &str, what: &str) {
        for secret in &self.0 {
            assert!(
                !text.contains(secret.as_str()),
                "{what} carries personal data or an id ({secret:?})"
            );
        }
    }
}

/// Webhooks for known and unknown callers (and an unknown organization), store API reads and
/// writes, and 404s (one on a matched route, one unmatched, both with ids and numbers in the
/// path). Returns what must not leak, and how many initiation calls were made.
async fn drive_traffic(app: &TestApp, known: &KnownCaller) -> (Secrets, usize) {
    let (org_id, lead_id) = (known.org_id().to_string(), known.lead_id().to_string());
    let unknown = strangers(1, 3);
    let second_phone = "+16125550177";
    let nobodys_number = "+17633334455";
    let mut initiations = 0;
    for _ in 0..4 {
        call(app, CALLER).await;
        initiations += 1;
    }
    for caller in &unknown {
        call(app, caller).await;
        initiations += 1;
    }
    initiation_ok(app.initiate(&initiation_body(CALLER, nobodys_number)).await).await;
    initiations += 1;

    let second = app
        .create_lead(&org_id, second_phone, Some("Jonas Okafor"))
        .await;
    let second_id = second["id"].as_str().unwrap().to_string();
    for path in [
        format!("/api/leads/{lead_id}"),
        format!(
            "/api/leads?organization_id={org_id}&phone=%2B{}",
            &CALLER[1..]
        ),
        format!("/api/leads/{lead_id}/context"),
        format!("/api/leads/{lead_id}/summary"),
        format!("/api/leads/{lead_id}/greeting?channel=voice"),
        format!("/api/leads/{lead_id}/conversations?limit=5&offset=0"),
        format!("/api/organizations/{org_id}"),
        format!("/api/leads/{second_id}/context"),
    ] {
        let r = app.get_admin(&path).await;
        assert_eq!(r.status(), 200, "GET {path}");
    }
    let r = app
        .patch_admin(
            &format!("/api/leads/{second_id}"),
            &json!({"email": "jonas.okafor@example.com", "notes": "prefers mornings"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let r = app
        .post_admin(
            &format!("/api/leads/{second_id}/conversations"),
            &json!({"channel": "voice", "summary": "Asked for a callback"}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let missing = Uuid::new_v4();
    let r = app.get_admin(&format!("/api/leads/{missing}")).await;
    assert_eq!(r.status(), 404);
    let r = app
        .client
        .get(app.url(&format!("/no/such/{}/{missing}", &CALLER[1..])))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let mut secrets: Vec<String> = vec![
        "Maria".into(),
        "Lopez".into(),
        "Jonas".into(),
        "Okafor".into(),
        "jonas.okafor".into(),
    ];
    for phone in
        unknown
            .iter()
            .map(String::as_str)
            .chain([CALLER, ORG_PHONE, second_phone, nobodys_number])
    {
        secrets.push(phone.to_string());
        secrets.push(phone[1..].to_string());
        // The national number alone (as a label might carry it).
        secrets.push(phone[2..].to_string());
    }
    for id in [&org_id, &lead_id, &second_id, &missing.to_string()] {
        secrets.push(id.clone());
        secrets.push(id.replace('-', ""));
    }
    (Secrets(secrets), initiations)
}

// 1. Prometheus text

#[tokio::test]
async fn prometheus_text_passes_promtool_fresh_and_after_traffic_without_personal_data() {
    let app = spawn_with(&flags_with_redis()).await;

    let fresh = metrics_text(&app).await;
    promtool_check(&fresh, "on a fresh instance");
    assert_families(&fresh, "fresh");
    assert_eq!(sum_of(&fresh, "hotline_webhook_answers_total", ""), 0.0);
    assert_eq!(sum_of(&fresh, "hotline_alert_firing", ""), 0.0);

    wait_redis(&app).await;
    let known = known_caller(&app).await;
    let (secrets, initiations) = drive_traffic(&app, &known).await;

    let after = metrics_text(&app).await;
    promtool_check(&after, "after traffic");
    assert_families(&after, "after traffic");
    secrets.assert_absent(&after, "/metrics");

    // The traffic shows, under route templates and closed label sets.
    assert_eq!(
        sum_of(&after, "hotline_webhook_answers_total", ""),
        initiations as f64,
        "every initiation answer is counted once, by source"
    );
    let webhook_count = format!(
        "hotline_http_request_duration_seconds_count{{route=\"{INITIATION_ROUTE}\",method=\"POST\",status=\"200\"}}"
    );
    assert_eq!(
        sample(&after, &webhook_count),
        Some(initiations as f64),
        "{webhook_count}"
    );
    assert!(
        sample(
            &after,
            "hotline_http_request_duration_seconds_count{route=\"/api/leads/{id}\",method=\"GET\",status=\"404\"}"
        ) >= Some(1.0),
        "a 404 on a matched route is labelled by its template"
    );
    assert!(
        sum_of(
            &after,
            "hotline_http_request_duration_seconds_count",
            "status=\"404\""
        ) >= 2.0,
        "the unmatched 404 is counted too"
    );
    assert!(sum_of(&after, "hotline_cache_requests_total", "result=\"miss\"") > 0.0);
    assert!(
        sum_of(&after, "hotline_cache_requests_total", "result=\"l1_hit\"")
            + sum_of(&after, "hotline_cache_requests_total", "result=\"l2_hit\"")
            > 0.0
    );
    assert!(sum_of(&after, "hotline_cache_load_duration_seconds_count", "") > 0.0);
    assert!(sum_of(&after, "hotline_db_query_duration_seconds_count", "") > 0.0);
    assert!(sum_of(&after, "hotline_redis_command_duration_seconds_count", "") > 0.0);
    assert!(
        sum_of(
            &after,
            "hotline_cache_invalidations_total",
            "source=\"write\""
        ) > 0.0,
        "the API writes invalidated"
    );
    assert_eq!(sample(&after, "hotline_redis_up"), Some(1.0));
    for line in after
        .lines()
        .filter(|l| l.starts_with("hotline_http_request_duration_seconds"))
    {
        let route = line
            .split("route=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_else(|| panic!("a route label: {line}"));
        assert!(
            route.starts_with('<') || route.starts_with('/') && !route.contains("/no/such"),
            "route labels are templates, never raw paths: {line}"
        );
    }

    // The JSON endpoints carry none of it either.
    for path in [
        "/api/monitoring/metrics",
        "/api/monitoring/metrics/performance",
        "/api/monitoring/stats/cache",
        "/api/monitoring/alerts",
        "/api/monitoring/health",
        "/api/monitoring/health/redis",
    ] {
        let body = get_ok(&app, path).await;
        secrets.assert_absent(&body.to_string(), path);
    }
}

// 2. The rolling window, per route and per kind

#[tokio::test]
async fn window_metrics_have_exactly_the_contract_fields_and_sensible_values() {
    let app = spawn_with(&flags_with_redis()).await;
    let contract = sorted(&[
        "window_s",
        "requests_per_s",
        "avg_response_ms",
        "p50_response_ms",
        "p95_response_ms",
        "p99_response_ms",
        "error_rate_pct",
        "cache",
        "redis",
        // The contract's fields, and the call figures (calls are on by default).
        "calls",
    ]);

    // Fresh: no data is null, not 0; and watching the service does not move its figures.
    for _ in 0..10 {
        get_ok(&app, "/api/monitoring/metrics").await;
        get_ok(&app, "/api/monitoring/health").await;
        metrics_text(&app).await;
    }
    let fresh = get_ok(&app, "/api/monitoring/metrics").await;
    assert_eq!(keys(&fresh), contract, "{fresh}");
    assert_eq!(fresh["window_s"], 60);
    assert_eq!(
        fresh["requests_per_s"], 0.0,
        "monitoring traffic is not counted: {fresh}"
    );
    for field in [
        "avg_response_ms",
        "p50_response_ms",
        "p95_response_ms",
        "p99_response_ms",
        "error_rate_pct",
    ] {
        assert_eq!(fresh[field], Value::Null, "{field} over nothing: {fresh}");
    }
    assert_eq!(
        fresh["cache"],
        json!({"hit_rate_pct": null, "l1_hit_rate_pct": null, "l2_hit_rate_pct": null})
    );
    assert_eq!(keys(&fresh["redis"]), ["latency_ms"]);

    wait_redis(&app).await;
    let known = known_caller(&app).await;
    let unknown = strangers(2, 5);
    let mut initiations = 0u64;
    for round in 0..6 {
        call(&app, CALLER).await;
        call(&app, &unknown[round % unknown.len()]).await;
        initiations += 2;
    }
    let r = app
        .get_admin(&format!("/api/leads/{}", Uuid::new_v4()))
        .await;
    assert_eq!(r.status(), 404);
    let r = app
        .get_admin(&format!("/api/leads/{}/summary", known.lead_id()))
        .await;
    assert_eq!(r.status(), 200);

    let m = get_ok(&app, "/api/monitoring/metrics").await;
    assert_eq!(keys(&m), contract, "{m}");
    assert_eq!(
        keys(&m["cache"]),
        sorted(&["hit_rate_pct", "l1_hit_rate_pct", "l2_hit_rate_pct"])
    );
    assert_eq!(keys(&m["redis"]), ["latency_ms"]);
    assert_eq!(m["window_s"], 60);
    let num = |v: &Value| v.as_f64().unwrap_or_else(|| panic!("a number: {v} in {m}"));
    assert!(num(&m["requests_per_s"]) > 0.0, "{m}");
    let (avg, p50, p95, p99) = (
        num(&m["avg_response_ms"]),
        num(&m["p50_response_ms"]),
        num(&m["p95_response_ms"]),
        num(&m["p99_response_ms"]),
    );
    assert!(avg > 0.0 && p50 > 0.0, "{m}");
    assert!(p50 <= p95 && p95 <= p99, "percentiles are ordered: {m}");
    assert_eq!(num(&m["error_rate_pct"]), 0.0, "a 404 is not an error: {m}");
    let (hit, l1, l2) = (
        num(&m["cache"]["hit_rate_pct"]),
        num(&m["cache"]["l1_hit_rate_pct"]),
        num(&m["cache"]["l2_hit_rate_pct"]),
    );
    for rate in [hit, l1, l2] {
        assert!((0.0..=100.0).contains(&rate), "{m}");
    }
    assert!(
        hit > 0.0 && hit < 100.0,
        "hits and misses both happened: {m}"
    );
    assert!(
        (l1 + l2 - hit).abs() <= 0.02,
        "the tiers add up to the hit rate: {m}"
    );
    assert!(num(&m["redis"]["latency_ms"]) >= 0.0, "{m}");

    let p = get_ok(&app, "/api/monitoring/metrics/performance").await;
    let routes = p["routes"]
        .as_array()
        .unwrap_or_else(|| panic!("routes: {p}"));
    let webhook = routes
        .iter()
        .find(|r| r["route"] == INITIATION_ROUTE && r["method"] == "POST")
        .unwrap_or_else(|| panic!("the webhook route is reported: {p}"));
    assert_eq!(webhook["count"], initiations, "{webhook}");
    let (p50, p95, p99) = (
        num(&webhook["p50_ms"]),
        num(&webhook["p95_ms"]),
        num(&webhook["p99_ms"]),
    );
    assert!(0.0 < p50 && p50 <= p95 && p95 <= p99, "{webhook}");
    assert!(
        routes
            .iter()
            .all(|r| !r["route"].as_str().unwrap().starts_with("/api/monitoring")),
        "monitoring routes stay out of the window: {p}"
    );
    assert!(
        routes
            .iter()
            .any(|r| r["route"] == "/api/leads/{id}" && r["method"] == "GET"),
        "{p}"
    );
    assert_eq!(keys(&p["kinds"]), sorted(&KINDS), "{p}");
    assert!(
        p["kinds"]["lead_by_phone"]["requests"].as_u64() > Some(0),
        "{p}"
    );
}

/// Per-kind stats of `/api/monitoring/stats/cache`, as numbers.
async fn cache_stats(app: &TestApp) -> Value {
    get_ok(app, "/api/monitoring/stats/cache").await
}

fn count(stats: &Value, kind: &str, field: &str) -> u64 {
    stats[kind][field]
        .as_u64()
        .unwrap_or_else(|| panic!("{kind}.{field} is a count: {stats}"))
}

#[tokio::test]
async fn cache_stats_count_a_miss_then_a_hit_and_agree_with_prometheus() {
    let mut flags = flags_with_redis();
    flags.extend(["--ttl-summary-s", "1234"].map(String::from));
    let app = spawn_with(&flags).await;

    let fresh = cache_stats(&app).await;
    for kind in KINDS {
        let mut fields = keys(&fresh[kind]);
        fields.retain(|f| f != "stale");
        assert_eq!(
            fields,
            sorted(&[
                "hits_l1",
                "hits_l2",
                "misses",
                "hit_rate_pct",
                "loads",
                "load_errors",
                "invalidations",
                "ttl_s"
            ]),
            "{kind}: {fresh}"
        );
        for field in ["hits_l1", "hits_l2", "misses", "loads", "load_errors"] {
            assert_eq!(
                count(&fresh, kind, field),
                0,
                "{kind}.{field} on a fresh instance"
            );
        }
        assert_eq!(
            fresh[kind]["hit_rate_pct"],
            Value::Null,
            "no lookups: null, not 0"
        );
    }
    assert!(
        fresh["l1_entries"].is_u64() && fresh["l1_bytes"].is_u64(),
        "{fresh}"
    );
    assert_eq!(fresh["summary"]["ttl_s"], 1234, "the configured TTL");
    assert_eq!(fresh["organization"]["ttl_s"], 1800, "the default TTL");

    wait_redis(&app).await;
    let known = known_caller(&app).await;
    let summary = format!("/api/leads/{}/summary", known.lead_id());

    // A miss: loaded once.
    let before = cache_stats(&app).await;
    assert_eq!(app.get_admin(&summary).await.status(), 200);
    let after_miss = cache_stats(&app).await;
    assert_eq!(
        count(&after_miss, "summary", "misses"),
        count(&before, "summary", "misses") + 1
    );
    assert_eq!(
        count(&after_miss, "summary", "loads"),
        count(&before, "summary", "loads") + 1
    );
    assert_eq!(
        count(&after_miss, "summary", "hits_l1") + count(&after_miss, "summary", "hits_l2"),
        count(&before, "summary", "hits_l1") + count(&before, "summary", "hits_l2")
    );
    assert_eq!(after_miss["summary"]["hit_rate_pct"], 0.0, "{after_miss}");
    assert!(after_miss["l1_entries"].as_u64() > Some(0), "{after_miss}");
    assert!(after_miss["l1_bytes"].as_u64() > Some(0), "{after_miss}");

    // Then a hit: nothing loaded.
    assert_eq!(app.get_admin(&summary).await.status(), 200);
    let after_hit = cache_stats(&app).await;
    assert_eq!(
        count(&after_hit, "summary", "hits_l1"),
        count(&after_miss, "summary", "hits_l1") + 1
    );
    assert_eq!(
        count(&after_hit, "summary", "misses"),
        count(&after_miss, "summary", "misses")
    );
    assert_eq!(
        count(&after_hit, "summary", "loads"),
        count(&after_miss, "summary", "loads")
    );
    assert_eq!(after_hit["summary"]["hit_rate_pct"], 50.0, "{after_hit}");

    // A write invalidates it, and the next read is a miss again.
    let r = app
        .patch_admin(
            &format!("/api/leads/{}", known.lead_id()),
            &json!({"status": "customer"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let invalidated = eventually(Duration::from_secs(5), || async {
        count(&cache_stats(&app).await, "summary", "invalidations")
            > count(&after_hit, "summary", "invalidations")
    })
    .await;
    assert!(
        invalidated,
        "the write counted an invalidation of the summary"
    );
    assert_eq!(app.get_admin(&summary).await.status(), 200);
    let after_write = cache_stats(&app).await;
    assert_eq!(
        count(&after_write, "summary", "misses"),
        count(&after_hit, "summary", "misses") + 1
    );

    // Readers of keys being loaded, arriving a millisecond apart (some join the load, some
    // find it just filled): every lookup is counted once, the same way in the stats, in
    // Prometheus and in the window.
    for round in 0..10 {
        let r = app
            .patch_admin(
                &format!("/api/leads/{}", known.lead_id()),
                &json!({"notes": format!("round {round}")}),
            )
            .await;
        assert_eq!(r.status(), 200);
        join_all((0..24u64).map(|i| {
            let app = &app;
            let path = if i % 2 == 0 {
                summary.clone()
            } else {
                format!("/api/leads/{}/context", known.lead_id())
            };
            async move {
                tokio::time::sleep(Duration::from_millis(i)).await;
                assert_eq!(app.get_admin(&path).await.status(), 200)
            }
        }))
        .await;
    }
    let stats = cache_stats(&app).await;
    let text = metrics_text(&app).await;
    let window = get_ok(&app, "/api/monitoring/metrics/performance").await;
    for kind in KINDS {
        for (field, result) in [
            ("hits_l1", "l1_hit"),
            ("hits_l2", "l2_hit"),
            ("misses", "miss"),
            ("stale", "stale"),
        ] {
            let series =
                format!("hotline_cache_requests_total{{kind=\"{kind}\",result=\"{result}\"}}");
            assert_eq!(
                sample(&text, &series),
                Some(count(&stats, kind, field) as f64),
                "{series} agrees with the stats' {kind}.{field}"
            );
            assert_eq!(
                window["kinds"][kind][field].as_u64(),
                Some(count(&stats, kind, field)),
                "the window's {kind}.{field} agrees with the stats (all within the minute)"
            );
        }
    }
}

// 3. The live stream

#[tokio::test]
async fn stream_sends_metrics_about_every_second() {
    let app = spawn_with(&[]).await;
    let mut stream = SseClient::connect(&app.url("/api/monitoring/stream")).await;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(6);
    let mut events = Vec::new();
    while events.len() < 5 {
        match stream.next_named("metrics", deadline).await {
            Some(e) => events.push(e),
            None => break,
        }
    }
    // The first may be the latest metrics replayed at once on connecting; the others are live.
    assert!(
        events.len() >= 4,
        "at least 3 live `metrics` events within 6 s (got {} in all)",
        events.len()
    );
    let live = &events[1..];
    for pair in live.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(500),
            "`metrics` events come about a second apart, not {gap:?}"
        );
    }
    let contract = sorted(&[
        "window_s",
        "requests_per_s",
        "avg_response_ms",
        "p50_response_ms",
        "p95_response_ms",
        "p99_response_ms",
        "error_rate_pct",
        "cache",
        "redis",
        // The contract's fields, and the call figures (calls are on by default).
        "calls",
    ]);
    for event in &events {
        let m = event.json();
        assert_eq!(keys(&m), contract, "the /api/monitoring/metrics JSON: {m}");
    }
}

// 4. An alert, from firing to resolved

/// Drives the known caller (every lookup a hit once its first call filled the cache) until
/// `done`, in bounded rounds.
async fn drive_hits_until<F, Fut>(
    app: &TestApp,
    within: Duration,
    max_calls: usize,
    mut done: F,
) -> (bool, usize)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + within;
    let mut calls = 0;
    while calls < max_calls && Instant::now() < until {
        join_all((0..4).map(|_| call(app, CALLER))).await;
        calls += 4;
        if calls % 100 == 0 && done().await {
            return (true, calls);
        }
    }
    (done().await, calls)
}

fn alert_named<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|a| a["name"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hit_rate_alert_fires_everywhere_then_resolves() {
    let hook = AlertHook::start().await;
    let mut flags = flags_with_redis();
    flags.extend(
        [
            "--alert-hit-rate-min-pct",
            "99",
            "--alert-min-samples",
            "5",
            "--alert-hold-s",
            "0",
            "--alert-webhook-url",
            &hook.url,
        ]
        .map(String::from),
    );
    let app = spawn_with(&flags).await;
    // Subscribed first, so that no alert event can come before the stream is read.
    let mut stream = SseClient::connect(&app.url("/api/monitoring/stream")).await;
    wait_redis(&app).await;
    known_caller(&app).await;

    // New callers: each one a miss, so the hit rate falls well below 99 %.
    for caller in strangers(3, 12) {
        call(&app, &caller).await;
    }
    let fired = loop {
        let event = stream
            .next_named("alert", Instant::now() + Duration::from_secs(10))
            .await
            .expect("an `alert` event on the stream within 10 s");
        let change = event.json();
        if change["alert"]["name"] == "cache_hit_rate_low" {
            break change;
        }
    };
    assert_eq!(fired["status"], "firing", "{fired}");
    let alert = &fired["alert"];
    assert_eq!(alert["severity"], "warning", "{alert}");
    assert_eq!(alert["threshold"], 99.0, "{alert}");
    assert!(
        alert["value"]
            .as_f64()
            .is_some_and(|v| (0.0..99.0).contains(&v)),
        "{alert}"
    );
    assert!(is_rfc3339(&alert["since"]), "{alert}");

    let alerts = get_ok(&app, "/api/monitoring/alerts").await;
    assert_eq!(keys(&alerts), ["active", "recent"]);
    let active = alert_named(&alerts["active"], "cache_hit_rate_low")
        .unwrap_or_else(|| panic!("listed as active: {alerts}"));
    for field in ["name", "severity", "value", "threshold", "since"] {
        assert!(!active[field].is_null(), "`{field}` in {active}");
    }
    assert_eq!(active["severity"], "warning");
    assert_eq!(active["threshold"], 99.0);
    assert!(active["value"].as_f64() < Some(99.0), "{active}");
    assert!(is_rfc3339(&active["since"]), "{active}");

    let notified = eventually(Duration::from_secs(10), || async {
        hook.find("cache_hit_rate_low", "firing").is_some()
    })
    .await;
    assert!(
        notified,
        "the alert webhook got the firing notification: {:?}",
        hook.received()
    );
    let notification = hook.find("cache_hit_rate_low", "firing").unwrap();
    assert_eq!(notification["alert"]["threshold"], 99.0, "{notification}");
    assert!(
        notification["instance"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{notification}"
    );

    let text = metrics_text(&app).await;
    assert_eq!(
        sample(&text, "hotline_alert_firing{alert=\"cache_hit_rate_low\"}"),
        Some(1.0),
        "the gauge is up"
    );

    // The misses stop; hits lift the window's hit rate back above 99 %.
    let resolved_in_list = || async {
        let alerts = get_ok(&app, "/api/monitoring/alerts").await;
        alert_named(&alerts["active"], "cache_hit_rate_low").is_none()
    };
    let (resolved, calls) =
        drive_hits_until(&app, Duration::from_secs(90), 4000, resolved_in_list).await;
    let window = get_ok(&app, "/api/monitoring/metrics").await;
    assert!(
        resolved,
        "the alert resolved after {calls} calls of a known caller: {window}"
    );

    let change = loop {
        let event = stream
            .next_named("alert", Instant::now() + Duration::from_secs(10))
            .await
            .expect("an `alert` event for the resolution on the stream");
        let change = event.json();
        if change["alert"]["name"] == "cache_hit_rate_low" {
            break change;
        }
    };
    assert_eq!(change["status"], "resolved", "{change}");
    assert!(is_rfc3339(&change["alert"]["resolved_at"]), "{change}");

    let notified = eventually(Duration::from_secs(10), || async {
        hook.find("cache_hit_rate_low", "resolved").is_some()
    })
    .await;
    assert!(
        notified,
        "the alert webhook got the resolved notification: {:?}",
        hook.received()
    );
    let alerts = get_ok(&app, "/api/monitoring/alerts").await;
    assert!(
        alert_named(&alerts["active"], "cache_hit_rate_low").is_none(),
        "{alerts}"
    );
    let recent = alert_named(&alerts["recent"], "cache_hit_rate_low")
        .unwrap_or_else(|| panic!("moved to recent: {alerts}"));
    assert!(is_rfc3339(&recent["resolved_at"]), "{recent}");
    let text = metrics_text(&app).await;
    assert_eq!(
        sample(&text, "hotline_alert_firing{alert=\"cache_hit_rate_low\"}"),
        Some(0.0),
        "the gauge is down"
    );
}

// 5. Health with a dependency down

const REDIS_HEALTH_FIELDS: [&str; 9] = [
    "enabled",
    "connected",
    "circuit",
    "latency_ms",
    "redis_version",
    "used_memory_human",
    "connected_clients",
    "last_error",
    "down_since",
];

fn assert_redis_health_fields(h: &Value) {
    let present: BTreeSet<String> = keys(h).into_iter().collect();
    for field in REDIS_HEALTH_FIELDS {
        assert!(present.contains(field), "`{field}` in {h}");
    }
    assert!(
        ["closed", "open", "half_open"].contains(&h["circuit"].as_str().unwrap_or_default()),
        "{h}"
    );
}

#[tokio::test]
async fn health_is_degraded_without_redis_and_says_why() {
    let mut redis = RedisServer::start().await;
    let mut flags = redis_flags(&redis.url(), &unique_prefix());
    flags.extend(
        [
            "--alert-redis-down-s",
            "1",
            "--alert-hold-s",
            "0",
            "--warm-leads",
            "0",
        ]
        .map(String::from),
    );
    let app = spawn_with(&flags).await;
    wait_redis(&app).await;

    let (status, health) = get_json(&app, "/api/monitoring/health").await;
    assert_eq!(
        (status, health["status"].as_str()),
        (200, Some("healthy")),
        "{health}"
    );
    assert_eq!(
        keys(&health["checks"]),
        ["background", "database", "redis"],
        "{health}"
    );
    assert!(
        health["version"].is_string() && health["uptime_s"].is_u64(),
        "{health}"
    );
    let up = get_ok(&app, "/api/monitoring/health/redis").await;
    assert_redis_health_fields(&up);
    assert_eq!(up["enabled"], true, "{up}");
    assert_eq!(up["connected"], true, "{up}");
    assert_eq!(up["circuit"], "closed", "{up}");
    assert!(up["latency_ms"].as_f64().is_some_and(|l| l >= 0.0), "{up}");
    assert!(
        up["redis_version"].as_str().is_some_and(|v| !v.is_empty()),
        "{up}"
    );
    assert!(
        up["used_memory_human"]
            .as_str()
            .is_some_and(|v| !v.is_empty()),
        "{up}"
    );
    assert!(up["connected_clients"].as_u64() >= Some(1), "{up}");
    assert_eq!(up["down_since"], Value::Null, "{up}");
    assert_eq!(
        sample(&metrics_text(&app).await, "hotline_redis_up"),
        Some(1.0)
    );

    redis.kill();
    let degraded = eventually(Duration::from_secs(10), || async {
        let (status, health) = get_json(&app, "/api/monitoring/health").await;
        status == 200 && health["status"] == "degraded"
    })
    .await;
    let (status, health) = get_json(&app, "/api/monitoring/health").await;
    assert!(
        degraded,
        "degraded (HTTP 200) with Redis down: {status} {health}"
    );
    assert_eq!(health["checks"]["database"]["status"], "up", "{health}");

    let open = eventually(Duration::from_secs(10), || async {
        get_ok(&app, "/api/monitoring/health/redis").await["circuit"] == "open"
    })
    .await;
    let down = get_ok(&app, "/api/monitoring/health/redis").await;
    assert!(open, "the breaker opened: {down}");
    assert_redis_health_fields(&down);
    assert_eq!(down["enabled"], true, "{down}");
    assert_eq!(down["connected"], false, "{down}");
    assert!(is_rfc3339(&down["down_since"]), "{down}");
    assert!(
        down["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{down}"
    );
    for field in [
        "latency_ms",
        "redis_version",
        "used_memory_human",
        "connected_clients",
    ] {
        assert_eq!(
            down[field],
            Value::Null,
            "no {field} from a dead server: {down}"
        );
    }
    assert_eq!(
        sample(&metrics_text(&app).await, "hotline_redis_up"),
        Some(0.0)
    );
    let alerted = eventually(Duration::from_secs(10), || async {
        let alerts = get_ok(&app, "/api/monitoring/alerts").await;
        alert_named(&alerts["active"], "redis_down").is_some()
    })
    .await;
    assert!(
        alerted,
        "redis_down fired: {}",
        get_ok(&app, "/api/monitoring/alerts").await
    );

    // Back: healthy again, the alert resolved.
    redis.restart().await;
    let healthy = eventually(Duration::from_secs(15), || async {
        let (status, health) = get_json(&app, "/api/monitoring/health").await;
        status == 200 && health["status"] == "healthy"
    })
    .await;
    assert!(
        healthy,
        "healthy once Redis is back: {}",
        get_json(&app, "/api/monitoring/health").await.1
    );
    let back = get_ok(&app, "/api/monitoring/health/redis").await;
    assert_eq!(
        (back["connected"].as_bool(), back["circuit"].as_str()),
        (Some(true), Some("closed")),
        "{back}"
    );
    assert_eq!(back["down_since"], Value::Null, "{back}");
    let resolved = eventually(Duration::from_secs(10), || async {
        let alerts = get_ok(&app, "/api/monitoring/alerts").await;
        alert_named(&alerts["active"], "redis_down").is_none()
            && alert_named(&alerts["recent"], "redis_down")
                .is_some_and(|a| is_rfc3339(&a["resolved_at"]))
    })
    .await;
    assert!(
        resolved,
        "redis_down resolved: {}",
        get_ok(&app, "/api/monitoring/alerts").await
    );
}

#[tokio::test]
async fn health_is_unhealthy_without_the_database_and_database_down_fires() {
    let db = Arc::new(TestDb::postgres().await);
    let proxy = TcpProxy::start(db.pg_addr()).await;
    let via = db.pg_url_via(proxy.addr);
    let app = crate::support::app::spawn_app_with(db, &["--alert-hold-s", "0"], move |args| {
        args.db.database_url = via.parse().expect("a database URL")
    })
    .await;

    let (status, health) = get_json(&app, "/api/monitoring/health").await;
    assert_eq!(
        (status, health["status"].as_str()),
        (200, Some("healthy")),
        "{health}"
    );
    assert_eq!(health["checks"]["database"]["status"], "up", "{health}");
    assert_eq!(
        health["checks"]["redis"]["enabled"], false,
        "no Redis configured: {health}"
    );

    proxy.cut();
    // Every request is answered within 5 s (get_json's bound), down or not.
    let unhealthy = eventually(Duration::from_secs(15), || async {
        let (status, health) = get_json(&app, "/api/monitoring/health").await;
        status == 503 && health["status"] == "unhealthy"
    })
    .await;
    let (status, health) = get_json(&app, "/api/monitoring/health").await;
    assert!(
        unhealthy,
        "unhealthy (HTTP 503) with the database down: {status} {health}"
    );
    assert_eq!(health["checks"]["database"]["status"], "down", "{health}");
    assert!(health["checks"]["redis"].is_object(), "{health}");
    // The load balancer's probe checks nothing: the instance stays in rotation.
    assert_eq!(get_json(&app, "/healthz").await.0, 200);

    let fired = eventually(Duration::from_secs(15), || async {
        let alerts = get_ok(&app, "/api/monitoring/alerts").await;
        alert_named(&alerts["active"], "database_down").is_some()
    })
    .await;
    let alerts = get_ok(&app, "/api/monitoring/alerts").await;
    assert!(fired, "database_down fired: {alerts}");
    let alert = alert_named(&alerts["active"], "database_down").unwrap();
    assert_eq!(alert["severity"], "critical", "{alert}");
    assert!(is_rfc3339(&alert["since"]), "{alert}");
    assert!(alert["value"].as_f64().is_some_and(|v| v >= 0.0), "{alert}");
    assert!(alert["threshold"].as_f64().is_some(), "{alert}");
    assert_eq!(
        sample(
            &metrics_text(&app).await,
            "hotline_alert_firing{alert=\"database_down\"}"
        ),
        Some(1.0)
    );

    proxy.restore();
    let healthy = eventually(Duration::from_secs(20), || async {
        let (status, health) = get_json(&app, "/api/monitoring/health").await;
        status == 200 && health["status"] == "healthy"
    })
    .await;
    assert!(
        healthy,
        "healthy once the database is back: {}",
        get_json(&app, "/api/monitoring/health").await.1
    );
    let resolved = eventually(Duration::from_secs(10), || async {
        let alerts = get_ok(&app, "/api/monitoring/alerts").await;
        alert_named(&alerts["active"], "database_down").is_none()
            && alert_named(&alerts["recent"], "database_down")
                .is_some_and(|a| is_rfc3339(&a["resolved_at"]))
    })
    .await;
    assert!(
        resolved,
        "database_down resolved: {}",
        get_ok(&app, "/api/monitoring/alerts").await
    );
}

// 6. The dashboard, as a person sees it

/// Where the dashboard screenshot goes: `target/dashboard.png`.
fn screenshot_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("dashboard.png")
}

/// What the dashboard shows: per element id, its text, `data-value` and `data-tone`.
const READ_DASHBOARD: &str = r#"(() => {
  const out = {};
  for (const id of ["req-rate", "avg-response", "hit-rate", "l1-hit-rate", "l2-hit-rate", "p50", "p95",
                    "p99", "error-rate", "redis-latency", "window-s", "stream-state", "health-status",
                    "db-state", "redis-state", "alert-count", "updated", "tile-hit-rate",
                    "calls-active", "calls-per-minute", "event-count"]) {
    const el = document.getElementById(id);
    out[id] = el ? { text: el.textContent.trim(), value: el.dataset.value ?? null, tone: el.dataset.tone ?? null } : null;
  }
  return out;
})()"#;

/// The dashboard's live list of bus events, newest first.
const READ_EVENTS: &str = r##"(() => [...document.querySelectorAll("#bus-events li[data-id]")].map((li) => ({
  id: li.dataset.id, type: li.dataset.type, instance: li.dataset.instance, text: li.textContent,
})))()"##;

/// The dashboard's instance list: per row, the instance id, whether it is the page's own
/// instance, whether it drains, and the cells' text.
const READ_INSTANCES: &str = r##"(() => [...document.querySelectorAll("#instances tr[data-instance]")].map((tr) => ({
  id: tr.dataset.instance, self: tr.dataset.self === "true", draining: tr.dataset.draining === "true",
  cells: [...tr.cells].map((td) => td.textContent.trim()),
})))()"##;

/// The row of `id` in the dashboard's instance list, once `ready` holds for it (or the last
/// list seen, after 10 s).
async fn instance_row(
    browser: &mut Browser,
    page: &Page,
    id: &str,
    ready: impl Fn(&Value) -> bool,
) -> (Option<Value>, Value) {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = browser.eval(page, READ_INSTANCES).await;
        let row = rows
            .as_array()
            .and_then(|list| list.iter().find(|r| r["id"] == id))
            .cloned();
        if row.as_ref().is_some_and(&ready) || Instant::now() > until {
            return (row, rows);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The name of the instance under test in the bus event tests, as its events carry it.
const DASHBOARD_INSTANCE: &str = "dashboard-test-1";

/// The text of element `id` ("" while it is not on the page, as before the page has loaded).
fn shown<'a>(dom: &'a Value, id: &str) -> &'a str {
    dom[id]["text"].as_str().unwrap_or_default()
}

fn has_number(dom: &Value, id: &str) -> bool {
    let text = shown(dom, id);
    !text.is_empty() && text != "—" && text.chars().any(|c| c.is_ascii_digit())
}

/// The stream is live, the headline figures hold numbers, and health has been loaded.
fn dashboard_live(dom: &Value) -> bool {
    shown(dom, "stream-state") == "live"
        && ["req-rate", "hit-rate", "p99", "avg-response"]
            .iter()
            .all(|id| has_number(dom, id))
        && shown(dom, "health-status") == "healthy"
}

/// Every bus event reaches the monitoring stream as `event: bus` with its id, type, time and
/// instance alone: no call id, no data, so nothing that names a caller.
#[tokio::test]
async fn bus_events_reach_the_monitoring_stream_bare() {
    let mut flags = flags_with_redis();
    flags.extend(["--instance-id", DASHBOARD_INSTANCE].map(String::from));
    let app = spawn_with(&flags).await;
    wait_redis(&app).await;
    known_caller(&app).await;
    let mut stream = SseClient::connect(&app.url("/api/monitoring/stream")).await;
    let call_sid = "CAbus00000000000000000000000000001";
    let mut body = initiation_body(CALLER, ORG_PHONE);
    body["call_sid"] = json!(call_sid);
    initiation_ok(app.initiate(&body).await).await;
    let event = stream
        .next_named("bus", Instant::now() + Duration::from_secs(10))
        .await
        .expect("a `bus` event within 10 s");
    let bus = event.json();
    let keys: BTreeSet<&str> = bus
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["id", "type", "at", "instance_id"]),
        "{bus}"
    );
    assert_eq!(bus["type"], "call.started", "{bus}");
    assert_eq!(bus["instance_id"], DASHBOARD_INSTANCE, "{bus}");
    assert!(
        bus["id"].as_str().is_some_and(|id| id.contains('-')),
        "a stream id: {bus}"
    );
    let at = bus["at"].as_str().expect("a time");
    let at = chrono::DateTime::parse_from_rfc3339(at).expect("RFC 3339");
    let age = chrono::Utc::now().signed_duration_since(at);
    assert!(
        age >= chrono::Duration::zero() && age < chrono::Duration::seconds(10),
        "{bus}"
    );
    for secret in [call_sid, CALLER, ORG_PHONE] {
        assert!(!event.data.contains(secret), "{secret} in {bus}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_live_numbers_in_headless_chromium() {
    // Fails at once, saying how to install it, when Chromium is missing.
    crate::support::browser::chromium();
    let mut flags = flags_with_redis();
    flags.extend(["--instance-id", DASHBOARD_INSTANCE].map(String::from));
    let app = Arc::new(spawn_with(&flags).await);
    wait_redis(&app).await;
    known_caller(&app).await;

    // Load in the background, bounded in time and count: known and unknown callers.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let load = {
        let (app, stop, sent) = (app.clone(), stop.clone(), sent.clone());
        tokio::spawn(async move {
            let unknown = strangers(4, 40);
            let until = Instant::now() + Duration::from_secs(90);
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) && Instant::now() < until && i < 6000 {
                let caller = if i % 4 == 3 {
                    unknown[i % unknown.len()].as_str()
                } else {
                    CALLER
                };
                let r = app.initiate(&initiation_body(caller, ORG_PHONE)).await;
                assert_eq!(r.status(), 200);
                i += 1;
                sent.store(i, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        })
    };

    let mut browser = Browser::launch().await;
    let page = browser.open(&app.url("/dashboard"), 1400, 1000).await;

    // Live numbers appear.
    let until = Instant::now() + Duration::from_secs(20);
    let first = loop {
        let dom = browser.eval(&page, READ_DASHBOARD).await;
        if dashboard_live(&dom) || Instant::now() > until {
            break dom;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        dashboard_live(&first),
        "the dashboard shows live numbers: {first:#}"
    );
    assert!(sent.load(Ordering::Relaxed) > 0, "the load is running");
    for (id, element) in first.as_object().unwrap() {
        assert!(element.is_object(), "#{id} is on the page");
    }
    assert_eq!(shown(&first, "db-state"), "up", "{first:#}");
    assert_eq!(shown(&first, "redis-state"), "up", "{first:#}");
    assert!(
        first["req-rate"]["value"]
            .as_str()
            .is_some_and(|v| v.parse::<f64>().is_ok_and(|v| v > 0.0)),
        "{first:#}"
    );

    // The instance list names this instance, marked as the page's own and serving.
    let (row, rows) = instance_row(&mut browser, &page, DASHBOARD_INSTANCE, |_| true).await;
    let row =
        row.unwrap_or_else(|| panic!("the instance list names {DASHBOARD_INSTANCE}: {rows:#}"));
    assert_eq!(row["self"], true, "marked as this instance: {row:#}");
    assert_eq!(row["draining"], false, "{row:#}");
    let cells: Vec<&str> = row["cells"]
        .as_array()
        .expect("cells")
        .iter()
        .map(|c| c.as_str().unwrap_or_default())
        .collect();
    assert!(cells[0].starts_with(DASHBOARD_INSTANCE), "{row:#}");
    assert_eq!(
        cells[1],
        format!("v{}", env!("CARGO_PKG_VERSION")),
        "{row:#}"
    );
    assert_eq!(cells[2..5], ["serving", "up", "up"], "{row:#}");
    assert!(cells[7].ends_with("ago"), "last seen: {row:#}");

    // And they change as the load goes on.
    let figures = |dom: &Value| -> Vec<String> {
        [
            "req-rate",
            "avg-response",
            "p50",
            "p95",
            "p99",
            "hit-rate",
            "l1-hit-rate",
            "redis-latency",
        ]
        .iter()
        .map(|id| dom[id]["value"].as_str().unwrap_or_default().to_string())
        .collect()
    };
    let until = Instant::now() + Duration::from_secs(15);
    let second = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let dom = browser.eval(&page, READ_DASHBOARD).await;
        if (shown(&dom, "stream-state") == "live" && figures(&dom) != figures(&first))
            || Instant::now() > until
        {
            break dom;
        }
    };
    let changed = shown(&second, "stream-state") == "live" && figures(&second) != figures(&first);
    assert!(
        changed,
        "the figures move under load:\nbefore {first:#}\nafter {second:#}"
    );
    // Let the charts gather a few seconds of points for the picture.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let path = screenshot_path();
    browser.screenshot(&page, &path).await;
    assert!(
        std::fs::metadata(&path)
            .map(|m| m.len() > 10_000)
            .unwrap_or(false),
        "{}",
        path.display()
    );
    let last = browser.eval(&page, READ_DASHBOARD).await;
    assert_eq!(shown(&last, "stream-state"), "live", "{last:#}");

    // Calls: the load's webhooks name a call; one more, for a call never seen, shows at the top
    // of the live events, and the calls figure counts them (every few seconds).
    stop.store(true, Ordering::Relaxed);
    load.await.expect("the load task");
    let call_sid = "CAdashboard0000000000000000000001";
    let mut body = initiation_body(CALLER, ORG_PHONE);
    body["call_sid"] = json!(call_sid);
    assert_eq!(app.initiate(&body).await.status(), 200);
    let until = Instant::now() + Duration::from_secs(10);
    let events = loop {
        let events = browser.eval(&page, READ_EVENTS).await;
        let started = events.as_array().is_some_and(|list| {
            list.first()
                .is_some_and(|e| e["type"] == "call.started" && e["instance"] == DASHBOARD_INSTANCE)
        });
        if started || Instant::now() > until {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let list = events.as_array().expect("a list");
    assert_eq!(
        list.first().map(|e| (&e["type"], &e["instance"])),
        Some((&json!("call.started"), &json!(DASHBOARD_INSTANCE))),
        "the new call's event tops the live list: {events:#}"
    );
    assert!(list.len() <= 20, "at most 20 events listed: {events:#}");
    for secret in [call_sid, CALL_SID, CALLER, ORG_PHONE] {
        assert!(
            !events.to_string().contains(secret),
            "the list shows no call id or number ({secret}): {events:#}"
        );
    }
    let until = Instant::now() + Duration::from_secs(15);
    let calls = loop {
        let dom = browser.eval(&page, READ_DASHBOARD).await;
        let at_least = |id: &str, n: f64| {
            dom[id]["value"]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| v >= n)
        };
        if (at_least("calls-active", 2.0) && at_least("calls-per-minute", 1.0))
            || Instant::now() > until
        {
            break dom;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // The load's call and the new one (the load's may have started over a minute ago).
    assert_eq!(
        shown(&calls, "calls-active"),
        "2",
        "both calls are active: {calls:#}"
    );
    assert!(
        ["1", "2"].contains(&shown(&calls, "calls-per-minute")),
        "{calls:#}"
    );
    assert!(has_number(&calls, "event-count"), "{calls:#}");

    // Drained, the instance is marked so within a refresh; resumed, it serves again.
    for (command, draining) in [("drain", true), ("resume", false)] {
        let r = app
            .post_admin(
                "/api/admin/messages",
                &json!({"to": DASHBOARD_INSTANCE, "command": command}),
            )
            .await;
        assert_eq!(r.status(), 202, "{command}");
        let (row, rows) = instance_row(&mut browser, &page, DASHBOARD_INSTANCE, |r| {
            r["draining"] == draining
        })
        .await;
        let row = row.unwrap_or_else(|| panic!("{DASHBOARD_INSTANCE} is listed: {rows:#}"));
        assert_eq!(row["draining"], draining, "after {command}: {row:#}");
        let text = row["cells"].to_string();
        assert_eq!(
            text.contains("draining"),
            draining,
            "after {command}: {row:#}"
        );
    }

    let errors = browser.page_errors(&page).await;
    assert!(
        errors.is_empty(),
        "the page's scripts ran without errors: {errors:?}"
    );
    browser.close().await;
}
