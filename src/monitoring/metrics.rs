//! Prometheus metrics: names, HELP text, and the recording functions.
//!
//! One recorder per process (`metrics` has one global recorder): [`install`] builds it once and
//! every later call, from any app instance in the process, gets the same handle. Every family is
//! described (HELP text, which `promtool check metrics` requires) and registered at zero at
//! install, so a fresh instance already exposes all of them. The label sets that are closed
//! (kinds, results, sources, alert names) are resolved to handles once, so recording one of them
//! is an atomic add with no lookup; anything outside those sets is dropped, never exported, so
//! no caller can put a phone number or an id into a label by mistake. HTTP labels are the route
//! template (`MatchedPath`), the method and the status.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{OnceLock, PoisonError, RwLock};
use std::time::Duration;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Gauge, Histogram, Unit,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use super::alerts::ALERT_NAMES;
use super::window::{CACHE_RESULTS, KINDS};

pub const CACHE_REQUESTS: &str = "hotline_cache_requests_total";
pub const CACHE_LOAD_DURATION: &str = "hotline_cache_load_duration_seconds";
pub const CACHE_INVALIDATIONS: &str = "hotline_cache_invalidations_total";
pub const HTTP_REQUEST_DURATION: &str = "hotline_http_request_duration_seconds";
pub const REDIS_UP: &str = "hotline_redis_up";
pub const REDIS_ENABLED: &str = "hotline_redis_enabled";
pub const REDIS_COMMAND_DURATION: &str = "hotline_redis_command_duration_seconds";
pub const DB_QUERY_DURATION: &str = "hotline_db_query_duration_seconds";
pub const DATABASE_UP: &str = "hotline_database_up";
pub const ALERT_FIRING: &str = "hotline_alert_firing";
pub const WEBHOOK_ANSWERS: &str = "hotline_webhook_answers_total";
pub const POST_CALL_EVENTS: &str = "hotline_post_call_events_total";
pub const BACKGROUND_RESTARTS: &str = "hotline_background_restarts_total";
pub const SPOOL_DEPTH: &str = "hotline_spool_depth";
pub const SPOOL_BYTES: &str = "hotline_spool_bytes";
pub const BODY_BYTES_IN_FLIGHT: &str = "hotline_http_body_bytes_in_flight";
pub const BODIES_REFUSED: &str = "hotline_http_bodies_refused_total";
pub const CONNECTIONS_OPEN: &str = "hotline_http_connections_open";
pub const PANICS: &str = "hotline_panics_total";
pub const CALLS_STARTED: &str = "hotline_calls_started_total";
pub const CALLS_ENDED: &str = "hotline_calls_ended_total";
pub const CALLS_ACTIVE: &str = "hotline_calls_active";
pub const CALLS_DROPPED: &str = "hotline_calls_dropped_total";
pub const EVENTS_PUBLISHED: &str = "hotline_events_published_total";
pub const SSE_CLIENTS: &str = "hotline_sse_clients";
pub const SSE_DROPPED: &str = "hotline_sse_clients_dropped_total";
pub const INSTANCES_LIVE: &str = "hotline_instances_live";
pub const ADMIN_MESSAGES: &str = "hotline_admin_messages_total";

/// Every family this module exports.
pub const FAMILIES: [&str; 28] = [
    CACHE_REQUESTS,
    CACHE_LOAD_DURATION,
    CACHE_INVALIDATIONS,
    HTTP_REQUEST_DURATION,
    REDIS_UP,
    REDIS_ENABLED,
    REDIS_COMMAND_DURATION,
    DB_QUERY_DURATION,
    DATABASE_UP,
    ALERT_FIRING,
    WEBHOOK_ANSWERS,
    POST_CALL_EVENTS,
    BACKGROUND_RESTARTS,
    SPOOL_DEPTH,
    SPOOL_BYTES,
    BODY_BYTES_IN_FLIGHT,
    BODIES_REFUSED,
    CONNECTIONS_OPEN,
    PANICS,
    CALLS_STARTED,
    CALLS_ENDED,
    CALLS_ACTIVE,
    CALLS_DROPPED,
    EVENTS_PUBLISHED,
    SSE_CLIENTS,
    SSE_DROPPED,
    INSTANCES_LIVE,
    ADMIN_MESSAGES,
];

/// The `status` label of the ended-calls counter.
pub const CALL_END_STATUSES: [&str; 2] = ["ended", "failed"];
/// The `stream` label of the SSE gauges: `/api/events`, `/api/calls/{id}/stream`,
/// `/api/monitoring/stream`.
pub const SSE_STREAMS: [&str; 3] = ["events", "call", "monitoring"];

/// The `source` label of the invalidation counter.
pub const INVALIDATION_SOURCES: [&str; 5] = ["write", "pubsub", "notify", "manual", "continuity"];
/// The `task` label of the background restart counter: every supervised task.
pub const BACKGROUND_TASKS: [&str; 12] = [
    "admin_receiver",
    "heartbeat",
    "call_writer",
    "call_upkeep",
    "event_subscriber",
    "event_forwarder",
    "redis_probe",
    "redis_subscriber",
    "generation_sweep",
    "database_listener",
    "database_probe",
    "spool_drainer",
];
/// The `source` label of the webhook answer counter (as in `X-Hotline-Source`).
pub const ANSWER_SOURCES: [&str; 5] = ["l1", "l2", "db", "stale", "default"];
/// The `outcome` label of the post-call event counter: what the event was acknowledged as.
pub const POST_CALL_OUTCOMES: [&str; 5] =
    ["recorded", "duplicate", "unmatched", "spooled", "ignored"];
/// The `reason` label of the refused body counter.
pub const BODY_REFUSAL_REASONS: [&str; 2] = ["over_budget", "timed_out"];

/// Histogram buckets in seconds: fine enough for microsecond cache hits, wide enough for a
/// database timing out.
pub const BUCKETS: [f64; 19] = [
    0.000_01, 0.000_02, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often [`spawn_upkeep`] drains histogram samples into their buckets.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Handles for the closed label sets, resolved once at install.
struct Handles {
    cache_requests: [[Counter; 4]; KINDS.len()],
    cache_load: [Histogram; KINDS.len()],
    invalidations: [Counter; 5],
    answers: [Counter; 5],
    post_call: [Counter; 5],
    alert_firing: [Gauge; 6],
    bodies_refused: [Counter; 2],
    body_bytes_in_flight: Gauge,
    connections_open: Gauge,
    panics: Counter,
    redis_up: Gauge,
    redis_enabled: Gauge,
    database_up: Gauge,
    redis_command: Histogram,
    spool_depth: Gauge,
    spool_bytes: Gauge,
}

struct Installed {
    handle: PrometheusHandle,
    handles: Handles,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

/// Builds the recorder and installs it as the process's global recorder, once; every call
/// returns the same handle.
pub fn install() -> PrometheusHandle {
    INSTALLED
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&BUCKETS)
                .expect("buckets are not empty")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!(
                    "another metrics recorder is installed: /metrics will not show hotline's metrics"
                );
            }
            describe();
            let handles = register();
            Installed { handle, handles }
        })
        .handle
        .clone()
}

fn describe() {
    describe_counter!(
        CACHE_REQUESTS,
        Unit::Count,
        "Cache lookups by kind and result: l1_hit, l2_hit, miss (loaded from the database), stale (served past its TTL because the database failed)."
    );
    describe_histogram!(
        CACHE_LOAD_DURATION,
        Unit::Seconds,
        "Time to load a cache miss from the database, by kind."
    );
    describe_counter!(
        CACHE_INVALIDATIONS,
        Unit::Count,
        "Cache invalidations by source: write (through this instance), pubsub (from another instance), notify (Postgres NOTIFY), manual (admin endpoint), continuity (everything, because Redis was not the server the cache was verified against, or database changes may have gone unheard)."
    );
    describe_counter!(
        BACKGROUND_RESTARTS,
        Unit::Count,
        "Background tasks restarted after they panicked or stopped, by task."
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION,
        Unit::Seconds,
        "HTTP request duration by route template, method and status."
    );
    describe_gauge!(
        REDIS_UP,
        "1 while Redis answers (circuit closed), 0 while it does not or is disabled."
    );
    describe_gauge!(
        REDIS_ENABLED,
        "1 when this instance is set up to use Redis (REDIS_URL set, REDIS_ENABLED not false), else 0: tells Redis down from Redis turned off."
    );
    describe_gauge!(
        DATABASE_UP,
        "1 while the database answers hotline's probe (once a second), 0 while it fails or before it first answered."
    );
    describe_histogram!(
        REDIS_COMMAND_DURATION,
        Unit::Seconds,
        "Duration of Redis commands."
    );
    describe_histogram!(
        DB_QUERY_DURATION,
        Unit::Seconds,
        "Duration of database queries by query name."
    );
    describe_gauge!(ALERT_FIRING, "1 while the named alert is firing, else 0.");
    describe_counter!(
        WEBHOOK_ANSWERS,
        Unit::Count,
        "Conversation-initiation webhook answers by source (as in X-Hotline-Source): l1, l2, db, stale, default."
    );
    describe_counter!(
        POST_CALL_EVENTS,
        Unit::Count,
        "Signed post-call events acknowledged, by outcome: recorded, duplicate (already stored), unmatched (no organization matched; not stored), spooled (database down; kept to apply later), ignored (not a transcription)."
    );
    describe_gauge!(
        SPOOL_DEPTH,
        Unit::Count,
        "Post-call events in the local spool, waiting for the database to take them."
    );
    describe_gauge!(
        SPOOL_BYTES,
        Unit::Bytes,
        "Bytes of the post-call events waiting in the local spool (bounded by SPOOL_MAX_MB)."
    );
    describe_gauge!(
        BODY_BYTES_IN_FLIGHT,
        Unit::Bytes,
        "Bytes of request bodies held in memory now, across all requests (bounded by BODY_BUDGET_MB)."
    );
    describe_counter!(
        BODIES_REFUSED,
        Unit::Count,
        "Request bodies cut short, by reason: over_budget (BODY_BUDGET_MB was full; answered 503), timed_out (not in full within BODY_TIMEOUT_S; answered 408)."
    );
    describe_gauge!(
        CONNECTIONS_OPEN,
        "HTTP connections open now (at most MAX_CONNECTIONS)."
    );
    describe_counter!(
        CALLS_STARTED,
        Unit::Count,
        "Calls started by an initiation webhook on this instance."
    );
    describe_counter!(
        CALLS_ENDED,
        Unit::Count,
        "Calls this instance moved out of active, by status: ended (hung up, or ended through the API), failed (call_initiation_failure)."
    );
    describe_gauge!(
        CALLS_ACTIVE,
        Unit::Count,
        "Calls active across all instances, as this instance last counted them (every 5 s)."
    );
    describe_counter!(
        CALLS_DROPPED,
        Unit::Count,
        "Call changes from the webhooks dropped because the call writer's queue was full."
    );
    describe_counter!(
        EVENTS_PUBLISHED,
        Unit::Count,
        "Events this instance published on the bus, by type (hotline's own types; custom for those integrations post)."
    );
    describe_gauge!(
        SSE_CLIENTS,
        Unit::Count,
        "Server-sent event clients connected to this instance, by stream: events, call, monitoring."
    );
    describe_counter!(
        SSE_DROPPED,
        Unit::Count,
        "Server-sent event clients disconnected because they did not keep up, by stream."
    );
    describe_gauge!(
        INSTANCES_LIVE,
        Unit::Count,
        "Live instances (this one included), as this instance last listed them (every heartbeat)."
    );
    describe_counter!(
        ADMIN_MESSAGES,
        Unit::Count,
        "Admin messages sent through this instance, by command."
    );
    describe_counter!(
        PANICS,
        Unit::Count,
        "Request handlers that panicked (each answered 500 and logged with its route)."
    );
}

/// Registers every family at zero. A histogram with labels we cannot know in advance (routes,
/// query names) is registered with one zero-count series so that its HELP and TYPE are there
/// from the start: `/healthz GET 200` and query `ping`.
fn register() -> Handles {
    let cache_requests = KINDS.map(|kind| {
        CACHE_RESULTS.map(|result| counter!(CACHE_REQUESTS, "kind" => kind, "result" => result))
    });
    let cache_load = KINDS.map(|kind| histogram!(CACHE_LOAD_DURATION, "kind" => kind));
    let invalidations =
        INVALIDATION_SOURCES.map(|source| counter!(CACHE_INVALIDATIONS, "source" => source));
    let answers = ANSWER_SOURCES.map(|source| counter!(WEBHOOK_ANSWERS, "source" => source));
    let post_call =
        POST_CALL_OUTCOMES.map(|outcome| counter!(POST_CALL_EVENTS, "outcome" => outcome));
    let alert_firing = ALERT_NAMES.map(|alert| gauge!(ALERT_FIRING, "alert" => alert));
    let bodies_refused =
        BODY_REFUSAL_REASONS.map(|reason| counter!(BODIES_REFUSED, "reason" => reason));
    let panics = counter!(PANICS);
    for c in cache_requests
        .iter()
        .flatten()
        .chain(&invalidations)
        .chain(&answers)
        .chain(&post_call)
        .chain(&bodies_refused)
        .chain(std::iter::once(&panics))
    {
        c.increment(0);
    }
    let body_bytes_in_flight = gauge!(BODY_BYTES_IN_FLIGHT);
    body_bytes_in_flight.increment(0.0);
    let connections_open = gauge!(CONNECTIONS_OPEN);
    connections_open.increment(0.0);
    for g in &alert_firing {
        g.set(0.0);
    }
    for task in BACKGROUND_TASKS {
        counter!(BACKGROUND_RESTARTS, "task" => task).increment(0);
    }
    let redis_up = gauge!(REDIS_UP);
    redis_up.set(0.0);
    let (redis_enabled, database_up) = (gauge!(REDIS_ENABLED), gauge!(DATABASE_UP));
    redis_enabled.set(0.0);
    database_up.set(0.0);
    let (spool_depth, spool_bytes) = (gauge!(SPOOL_DEPTH), gauge!(SPOOL_BYTES));
    spool_depth.set(0.0);
    spool_bytes.set(0.0);
    counter!(CALLS_STARTED).increment(0);
    for status in CALL_END_STATUSES {
        counter!(CALLS_ENDED, "status" => status).increment(0);
    }
    gauge!(CALLS_ACTIVE).set(0.0);
    counter!(CALLS_DROPPED).increment(0);
    for kind in crate::calls::model::types::OWN.iter().chain(&["custom"]) {
        counter!(EVENTS_PUBLISHED, "type" => *kind).increment(0);
    }
    for stream in SSE_STREAMS {
        gauge!(SSE_CLIENTS, "stream" => stream).increment(0.0);
        counter!(SSE_DROPPED, "stream" => stream).increment(0);
    }
    gauge!(INSTANCES_LIVE).set(1.0);
    for command in crate::admin::COMMANDS {
        counter!(ADMIN_MESSAGES, "command" => command).increment(0);
    }
    let _ = histogram!(HTTP_REQUEST_DURATION, "route" => "/healthz", "method" => "GET", "status" => "200");
    let _ = histogram!(DB_QUERY_DURATION, "query" => "ping");
    Handles {
        cache_requests,
        cache_load,
        invalidations,
        answers,
        post_call,
        alert_firing,
        bodies_refused,
        body_bytes_in_flight,
        connections_open,
        panics,
        redis_up,
        redis_enabled,
        database_up,
        redis_command: histogram!(REDIS_COMMAND_DURATION),
        spool_depth,
        spool_bytes,
    }
}

fn handles() -> Option<&'static Handles> {
    INSTALLED.get().map(|i| &i.handles)
}

fn index(set: &[&str], value: &str) -> Option<usize> {
    set.iter().position(|v| *v == value)
}

/// A cache lookup: `kind` a cache kind, `result` one of `l1_hit`, `l2_hit`, `miss`, `stale`.
pub fn cache_request(kind: &str, result: &str) {
    if let (Some(h), Some(k), Some(r)) = (
        handles(),
        index(&KINDS, kind),
        index(&CACHE_RESULTS, result),
    ) {
        h.cache_requests[k][r].increment(1);
    }
}

/// A load from the store after a miss.
pub fn cache_load(kind: &str, d: Duration) {
    if let (Some(h), Some(k)) = (handles(), index(&KINDS, kind)) {
        h.cache_load[k].record(d.as_secs_f64());
    }
}

/// An invalidation: `source` one of [`INVALIDATION_SOURCES`].
pub fn invalidation(source: &str) {
    if let (Some(h), Some(s)) = (handles(), index(&INVALIDATION_SOURCES, source)) {
        h.invalidations[s].increment(1);
    }
}

/// An HTTP response. `route` must be a route template (`MatchedPath`, or a fixed name such as
/// `unmatched` for a 404 without a route), never a raw path.
pub fn http_request(route: &str, method: &str, status: u16, d: Duration) {
    if let Some(histogram) = http_histogram(route, method, status) {
        histogram.record(d.as_secs_f64());
    }
}

/// HTTP histogram handles by (route, method, status), so that recording a request is a hash
/// and an atomic push rather than allocating labels and looking the key up in the registry.
type HttpHandles = HashMap<u64, Vec<(Box<str>, Box<str>, u16, Histogram)>>;
static HTTP_HANDLES: RwLock<Option<HttpHandles>> = RwLock::new(None);
/// Past this many label sets, handles are no longer cached (still recorded).
const HTTP_HANDLES_MAX: usize = 1024;

fn http_histogram(route: &str, method: &str, status: u16) -> Option<Histogram> {
    handles()?;
    let mut hasher = std::hash::DefaultHasher::new();
    (route, method, status).hash(&mut hasher);
    let hash = hasher.finish();
    let matches = |(r, m, s, _): &&(Box<str>, Box<str>, u16, Histogram)| {
        &**r == route && &**m == method && *s == status
    };
    if let Some(h) = HTTP_HANDLES
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .and_then(|map| map.get(&hash))
        .and_then(|v| v.iter().find(matches))
        .map(|(.., h)| h.clone())
    {
        return Some(h);
    }
    let histogram = histogram!(
        HTTP_REQUEST_DURATION,
        "route" => route.to_owned(),
        "method" => method.to_owned(),
        "status" => status.to_string(),
    );
    let mut guard = HTTP_HANDLES.write().unwrap_or_else(PoisonError::into_inner);
    let map = guard.get_or_insert_with(HashMap::new);
    if map.len() < HTTP_HANDLES_MAX {
        let entry = map.entry(hash).or_default();
        if !entry.iter().any(|e| matches(&e)) {
            entry.push((route.into(), method.into(), status, histogram.clone()));
        }
    }
    Some(histogram)
}

/// Whether Redis answers.
pub fn redis_up(up: bool) {
    if let Some(h) = handles() {
        h.redis_up.set(if up { 1.0 } else { 0.0 });
    }
}

/// Whether this instance is set up to use Redis.
pub fn redis_enabled(enabled: bool) {
    if let Some(h) = handles() {
        h.redis_enabled.set(if enabled { 1.0 } else { 0.0 });
    }
}

/// Whether the database answered the last probe.
pub fn database_up(up: bool) {
    if let Some(h) = handles() {
        h.database_up.set(if up { 1.0 } else { 0.0 });
    }
}

/// One Redis command.
pub fn redis_command(d: Duration) {
    if let Some(h) = handles() {
        h.redis_command.record(d.as_secs_f64());
    }
}

/// One database query, named by a fixed string (the store method: `lead_by_phone`, `ping`…).
pub fn db_query(query: &'static str, d: Duration) {
    if handles().is_none() {
        return;
    }
    histogram!(DB_QUERY_DURATION, "query" => query).record(d.as_secs_f64());
}

/// Sets `hotline_alert_firing{alert}`.
pub fn alert_firing(name: &str, firing: bool) {
    if let (Some(h), Some(a)) = (handles(), index(&ALERT_NAMES, name)) {
        h.alert_firing[a].set(if firing { 1.0 } else { 0.0 });
    }
}

/// A conversation-initiation answer: `source` one of `l1`, `l2`, `db`, `stale`, `default`.
pub fn webhook_answer(source: &str) {
    if let (Some(h), Some(s)) = (handles(), index(&ANSWER_SOURCES, source)) {
        h.answers[s].increment(1);
    }
}

/// A background task's failure (`n` = 1), or its registration at zero (`n` = 0).
pub fn background_restart(task: &'static str, n: u64) {
    if handles().is_some() {
        counter!(BACKGROUND_RESTARTS, "task" => task).increment(n);
    }
}

/// A signed post-call event acknowledged: `outcome` one of [`POST_CALL_OUTCOMES`].
pub fn post_call_event(outcome: &str) {
    if let (Some(h), Some(o)) = (handles(), index(&POST_CALL_OUTCOMES, outcome)) {
        h.post_call[o].increment(1);
    }
}

/// What the post-call spool holds: events waiting, and their bytes.
pub fn spool_usage(depth: u64, bytes: u64) {
    if let Some(h) = handles() {
        h.spool_depth.set(depth as f64);
        h.spool_bytes.set(bytes as f64);
    }
}

/// Request body bytes taken from (positive) or given back to (negative) the budget. Several
/// instances in one process add up.
pub fn body_bytes_in_flight(delta: f64) {
    if let Some(h) = handles() {
        h.body_bytes_in_flight.increment(delta);
    }
}

/// A request body cut short: `reason` one of [`BODY_REFUSAL_REASONS`].
pub fn body_refused(reason: &str) {
    if let (Some(h), Some(r)) = (handles(), index(&BODY_REFUSAL_REASONS, reason)) {
        h.bodies_refused[r].increment(1);
    }
}

/// A connection opened (`1.0`) or closed (`-1.0`).
pub fn connections_open(delta: f64) {
    if let Some(h) = handles() {
        h.connections_open.increment(delta);
    }
}

/// A request handler panicked.
pub fn panicked() {
    if let Some(h) = handles() {
        h.panics.increment(1);
    }
}

/// A call started by this instance's webhook.
pub fn call_started() {
    if handles().is_some() {
        counter!(CALLS_STARTED).increment(1);
    }
}

/// A call moved out of active: `status` one of [`CALL_END_STATUSES`].
pub fn call_ended(status: &str) {
    if let (Some(_), Some(i)) = (handles(), index(&CALL_END_STATUSES, status)) {
        counter!(CALLS_ENDED, "status" => CALL_END_STATUSES[i]).increment(1);
    }
}

/// Calls active across all instances, as last counted.
pub fn calls_active(n: i64) {
    if handles().is_some() {
        gauge!(CALLS_ACTIVE).set(n as f64);
    }
}

/// A call change dropped at the writer's full queue.
pub fn call_dropped() {
    if handles().is_some() {
        counter!(CALLS_DROPPED).increment(1);
    }
}

/// An event published on the bus; types outside hotline's own count as `custom`.
pub fn event_published(kind: &str) {
    if handles().is_some() {
        counter!(EVENTS_PUBLISHED, "type" => crate::calls::bus::type_label(kind)).increment(1);
    }
}

/// An SSE client of `stream` (one of [`SSE_STREAMS`]) connected (`1.0`) or gone (`-1.0`).
pub fn sse_clients(stream: &'static str, delta: f64) {
    if handles().is_some() && SSE_STREAMS.contains(&stream) {
        gauge!(SSE_CLIENTS, "stream" => stream).increment(delta);
    }
}

/// Counts one SSE client of `stream` in `hotline_sse_clients` for as long as it lives.
#[derive(Debug)]
pub struct SseClientGauge(&'static str);

impl SseClientGauge {
    pub fn connected(stream: &'static str) -> SseClientGauge {
        sse_clients(stream, 1.0);
        SseClientGauge(stream)
    }
}

impl Drop for SseClientGauge {
    fn drop(&mut self) {
        sse_clients(self.0, -1.0);
    }
}

/// An SSE client of `stream` disconnected for falling behind.
pub fn sse_dropped(stream: &'static str) {
    if handles().is_some() && SSE_STREAMS.contains(&stream) {
        counter!(SSE_DROPPED, "stream" => stream).increment(1);
    }
}

/// How many instances are live, as last listed.
pub fn instances_live(n: usize) {
    if handles().is_some() {
        gauge!(INSTANCES_LIVE).set(n as f64);
    }
}

/// An admin message sent: `command` one of [`crate::admin::COMMANDS`].
pub fn admin_message(command: &str) {
    if let (Some(_), Some(i)) = (handles(), index(&crate::admin::COMMANDS, command)) {
        counter!(ADMIN_MESSAGES, "command" => crate::admin::COMMANDS[i]).increment(1);
    }
}

/// The Prometheus text exposition.
pub fn render(handle: &PrometheusHandle) -> String {
    handle.render()
}

/// Drains histogram samples into buckets every [`UPKEEP_EVERY`]; without it they pile up
/// between scrapes. Harmless when several instances in one process each run one.
pub fn spawn_upkeep(handle: PrometheusHandle) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            handle.run_upkeep();
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_is_idempotent_and_every_family_has_help_and_type() {
        let handle = install();
        let again = install();
        let text = render(&again);
        for family in FAMILIES {
            assert!(
                text.contains(&format!("# HELP {family} ")),
                "no HELP for {family}:\n{text}"
            );
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "no TYPE for {family}:\n{text}"
            );
        }
        for kind in KINDS {
            for result in CACHE_RESULTS {
                let series = format!("{CACHE_REQUESTS}{{kind=\"{kind}\",result=\"{result}\"}}");
                assert!(text.contains(&series), "no {series}");
            }
            let series = format!("{CACHE_LOAD_DURATION}_count{{kind=\"{kind}\"}}");
            assert!(text.contains(&series), "no {series}");
        }
        for source in INVALIDATION_SOURCES {
            assert!(text.contains(&format!("{CACHE_INVALIDATIONS}{{source=\"{source}\"}}")));
        }
        for source in ANSWER_SOURCES {
            assert!(text.contains(&format!("{WEBHOOK_ANSWERS}{{source=\"{source}\"}}")));
        }
        for alert in ALERT_NAMES {
            assert!(text.contains(&format!("{ALERT_FIRING}{{alert=\"{alert}\"}}")));
        }
        assert!(text.contains("# TYPE hotline_http_request_duration_seconds histogram"));
        assert!(text.contains("# TYPE hotline_spool_depth gauge"));
        assert!(text.contains("# TYPE hotline_spool_bytes gauge"));
        assert!(text.contains("le=\"0.00002\""), "fine buckets:\n{text}");
        drop(handle);
    }

    #[test]
    fn recording_shows_in_the_render() {
        let handle = install();
        webhook_answer("stale");
        webhook_answer("not-a-source");
        http_request("/api/leads/{id}", "GET", 200, Duration::from_micros(30));
        db_query("lead", Duration::from_millis(3));
        alert_firing("redis_down", true);
        alert_firing("redis_down", false);
        handle.run_upkeep();
        let text = render(&handle);
        assert!(text.contains("hotline_http_request_duration_seconds_count{route=\"/api/leads/{id}\",method=\"GET\",status=\"200\"}"));
        assert!(text.contains("hotline_db_query_duration_seconds_count{query=\"lead\"}"));
        assert!(!text.contains("not-a-source"));
        let answered = text
            .lines()
            .find(|l| l.starts_with("hotline_webhook_answers_total{source=\"stale\"}"))
            .unwrap();
        let n: u64 = answered.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(n >= 1);
    }
}
