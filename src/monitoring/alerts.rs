//! The six alerts, their hold and resolve logic, and the alert webhook.
//!
//! Evaluated once a second by the ticker (never on a request's path), from the window's summary
//! and two inputs: since when Redis has been down and since when the database has been failing.
//!
//! - `cache_hit_rate_low` (warning): hit rate < `ALERT_HIT_RATE_MIN_PCT`, with at least
//!   `ALERT_MIN_SAMPLES` cache lookups in the window.
//! - `response_time_high` (warning): p95 response time > `ALERT_RESPONSE_MS_MAX`, with at least
//!   `ALERT_MIN_SAMPLES` requests.
//! - `error_rate_high` (critical): 5xx rate > `ALERT_ERROR_RATE_MAX_PCT`, with at least
//!   `ALERT_MIN_SAMPLES` requests.
//! - `redis_down` (warning: hotline still serves from tier 1 and the database): Redis down for
//!   at least `ALERT_REDIS_DOWN_S`.
//! - `database_down` (critical): the database failing for at least `ALERT_HOLD_S`.
//! - `instance_lost` (warning): an instance stopped beating without leaving; fires at once
//!   and resolves when it beats again or is let go.
//!
//! Hold and resolve: a window condition must hold continuously for `ALERT_HOLD_S` before its
//! alert fires (0: at once); the two "down" alerts carry their duration in their input and fire
//! as soon as it is long enough. Every active alert resolves only once its condition has been
//! false continuously for `ALERT_HOLD_S` (0: at once), so a value hovering at the threshold
//! does not flap. Too few samples counts as "condition false": when traffic stops, an alert
//! about that traffic resolves rather than staying up forever.
//!
//! `since` is when the condition started to hold (for the "down" alerts, when the dependency
//! went down), `fired_at` when the alert fired, `resolved_at` when it resolved (null while
//! active). `value` is the latest value seen while the condition held.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{watch, Notify};

use super::window::WindowSummary;
use super::MonitorConfig;

pub const CACHE_HIT_RATE_LOW: &str = "cache_hit_rate_low";
pub const RESPONSE_TIME_HIGH: &str = "response_time_high";
pub const ERROR_RATE_HIGH: &str = "error_rate_high";
pub const REDIS_DOWN: &str = "redis_down";
pub const DATABASE_DOWN: &str = "database_down";
pub const INSTANCE_LOST: &str = "instance_lost";

/// The alert names, in evaluation order.
pub const ALERT_NAMES: [&str; 6] = [
    CACHE_HIT_RATE_LOW,
    RESPONSE_TIME_HIGH,
    ERROR_RATE_HIGH,
    REDIS_DOWN,
    DATABASE_DOWN,
    INSTANCE_LOST,
];

/// How many fired and resolved events `recent` keeps.
pub const RECENT: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Critical,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    pub name: &'static str,
    pub severity: Severity,
    pub value: f64,
    pub threshold: f64,
    /// RFC 3339.
    pub since: String,
    /// RFC 3339.
    pub fired_at: String,
    /// RFC 3339; null while active.
    pub resolved_at: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertStatus {
    Firing,
    Resolved,
}

/// An alert that fired or resolved: the body of the SSE `alert` event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertChange {
    pub status: AlertStatus,
    pub alert: Alert,
}

/// `GET /api/monitoring/alerts`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertsView {
    pub active: Vec<Alert>,
    pub recent: Vec<Alert>,
}

fn rfc3339(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A condition that holds, and what it measured.
struct Holds {
    value: f64,
    threshold: f64,
    /// When it started, if the input knows (the "down" alerts).
    since_ms: Option<i64>,
    /// Fire without waiting for the hold (the input already carries the duration).
    at_once: bool,
    message: String,
}

#[derive(Debug, Default)]
struct State {
    pending_since_ms: Option<i64>,
    clear_since_ms: Option<i64>,
    active: Option<Alert>,
}

/// The alert state machine. Pure: the caller passes the time.
#[derive(Debug)]
pub struct AlertEngine {
    hit_rate_min_pct: f64,
    response_ms_max: f64,
    error_rate_max_pct: f64,
    redis_down_ms: i64,
    min_samples: u64,
    hold_ms: i64,
    states: [State; 6],
    recent: VecDeque<Alert>,
    /// Instances this one found lost (how many, and since when), as last told.
    lost: Option<(usize, i64)>,
}

fn secs_ms(s: u64) -> i64 {
    i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX)
}

impl AlertEngine {
    pub fn new(config: &MonitorConfig) -> Self {
        AlertEngine {
            hit_rate_min_pct: config.hit_rate_min_pct,
            response_ms_max: config.response_ms_max as f64,
            error_rate_max_pct: config.error_rate_max_pct,
            redis_down_ms: secs_ms(config.redis_down_s),
            min_samples: config.min_samples,
            hold_ms: secs_ms(config.hold_s),
            states: Default::default(),
            recent: VecDeque::with_capacity(RECENT),
            lost: None,
        }
    }

    fn condition(
        &self,
        name: &'static str,
        now_ms: i64,
        s: &WindowSummary,
        redis_down_since_ms: Option<i64>,
        db_down_since_ms: Option<i64>,
    ) -> Option<Holds> {
        let enough_requests = s.requests >= self.min_samples;
        match name {
            CACHE_HIT_RATE_LOW => {
                let rate = s.cache.hit_rate_pct?;
                (s.cache_requests >= self.min_samples && rate < self.hit_rate_min_pct).then(|| {
                    Holds {
                        value: rate,
                        threshold: self.hit_rate_min_pct,
                        since_ms: None,
                        at_once: false,
                        message: format!(
                            "cache hit rate {rate:.1}% is below {}% over the last {} s",
                            self.hit_rate_min_pct, s.window_s
                        ),
                    }
                })
            }
            RESPONSE_TIME_HIGH => {
                let p95 = s.p95_response_ms?;
                (enough_requests && p95 > self.response_ms_max).then(|| Holds {
                    value: p95,
                    threshold: self.response_ms_max,
                    since_ms: None,
                    at_once: false,
                    message: format!(
                        "p95 response time {p95:.1} ms is above {} ms over the last {} s",
                        self.response_ms_max, s.window_s
                    ),
                })
            }
            ERROR_RATE_HIGH => {
                let rate = s.error_rate_pct?;
                (enough_requests && rate > self.error_rate_max_pct).then(|| Holds {
                    value: rate,
                    threshold: self.error_rate_max_pct,
                    since_ms: None,
                    at_once: false,
                    message: format!(
                        "error rate {rate:.1}% is above {}% over the last {} s",
                        self.error_rate_max_pct, s.window_s
                    ),
                })
            }
            REDIS_DOWN => down("Redis", now_ms, redis_down_since_ms?, self.redis_down_ms),
            DATABASE_DOWN => down("the database", now_ms, db_down_since_ms?, self.hold_ms),
            INSTANCE_LOST => {
                let (n, since_ms) = self.lost?;
                Some(Holds {
                    value: n as f64,
                    threshold: 0.0,
                    since_ms: Some(since_ms),
                    at_once: true,
                    message: format!("{n} instance(s) stopped beating without leaving"),
                })
            }
            _ => None,
        }
    }

    /// Tells the engine about instances this one found lost: `instance_lost` holds while there
    /// are any, and resolves as soon as there are none (they beat again, or the instance that
    /// found them let them go after the alert hold).
    pub fn set_lost(&mut self, lost: Option<(usize, i64)>) {
        self.lost = lost;
    }

    /// Advances every alert to `now_ms` and returns what fired or resolved.
    pub fn evaluate(
        &mut self,
        now_ms: i64,
        summary: &WindowSummary,
        redis_down_since_ms: Option<i64>,
        db_down_since_ms: Option<i64>,
    ) -> Vec<AlertChange> {
        let mut changes = Vec::new();
        for (i, name) in ALERT_NAMES.into_iter().enumerate() {
            let holds =
                self.condition(name, now_ms, summary, redis_down_since_ms, db_down_since_ms);
            // A lost instance is let go after the hold already: no second wait to resolve.
            let hold_ms = if name == INSTANCE_LOST {
                0
            } else {
                self.hold_ms
            };
            let state = &mut self.states[i];
            let change = match (holds, &mut state.active) {
                (Some(h), None) => {
                    let pending = *state.pending_since_ms.get_or_insert(now_ms);
                    state.clear_since_ms = None;
                    (h.at_once || now_ms - pending >= hold_ms).then(|| {
                        let alert = Alert {
                            name,
                            severity: severity(name),
                            value: h.value,
                            threshold: h.threshold,
                            since: rfc3339(h.since_ms.unwrap_or(pending)),
                            fired_at: rfc3339(now_ms),
                            resolved_at: None,
                            message: h.message,
                        };
                        state.active = Some(alert.clone());
                        AlertChange {
                            status: AlertStatus::Firing,
                            alert,
                        }
                    })
                }
                (Some(h), Some(active)) => {
                    state.clear_since_ms = None;
                    active.value = h.value;
                    active.message = h.message;
                    None
                }
                (None, None) => {
                    state.pending_since_ms = None;
                    None
                }
                (None, Some(_)) => {
                    let clear = *state.clear_since_ms.get_or_insert(now_ms);
                    if now_ms - clear >= hold_ms {
                        let mut alert = state.active.take().expect("active");
                        alert.resolved_at = Some(rfc3339(now_ms));
                        state.pending_since_ms = None;
                        state.clear_since_ms = None;
                        Some(AlertChange {
                            status: AlertStatus::Resolved,
                            alert,
                        })
                    } else {
                        None
                    }
                }
            };
            if let Some(change) = change {
                // One entry per alert: a resolution takes the place of its firing.
                self.recent.retain(|a| {
                    !(a.name == change.alert.name
                        && a.fired_at == change.alert.fired_at
                        && a.resolved_at.is_none())
                });
                if self.recent.len() == RECENT {
                    self.recent.pop_back();
                }
                self.recent.push_front(change.alert.clone());
                changes.push(change);
            }
        }
        changes
    }

    /// Active alerts, critical first, then oldest first.
    pub fn active(&self) -> Vec<Alert> {
        let mut active: Vec<Alert> = self
            .states
            .iter()
            .filter_map(|s| s.active.clone())
            .collect();
        active.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.since.cmp(&b.since)));
        active
    }

    /// The last [`RECENT`] fired and resolved events, newest first.
    pub fn recent(&self) -> Vec<Alert> {
        self.recent.iter().cloned().collect()
    }

    pub fn view(&self) -> AlertsView {
        AlertsView {
            active: self.active(),
            recent: self.recent(),
        }
    }
}

fn down(what: &str, now_ms: i64, since_ms: i64, after_ms: i64) -> Option<Holds> {
    let down_ms = now_ms.saturating_sub(since_ms).max(0);
    (down_ms >= after_ms).then(|| {
        let down_s = down_ms as f64 / 1000.0;
        Holds {
            value: (down_s * 10.0).round() / 10.0,
            threshold: after_ms as f64 / 1000.0,
            since_ms: Some(since_ms),
            at_once: true,
            message: format!("{what} has been down for {down_s:.0} s"),
        }
    })
}

fn severity(name: &str) -> Severity {
    match name {
        ERROR_RATE_HIGH | DATABASE_DOWN => Severity::Critical,
        _ => Severity::Warning,
    }
}

/// Posts alert changes to `ALERT_WEBHOOK_URL` from one background task: a bounded queue that
/// drops the oldest entry (with a warning) when full, so a dead receiver never grows memory or
/// slows anything else.
#[derive(Debug)]
pub struct WebhookSender {
    url: String,
    queue: Mutex<VecDeque<Value>>,
    notify: Notify,
    capacity: usize,
    retry: RetryPolicy,
}

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub first_backoff: Duration,
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    /// 5 attempts, 200 ms doubling between them (200, 400, 800, 1600 ms), 5 s per attempt.
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            first_backoff: Duration::from_millis(200),
            timeout: Duration::from_secs(5),
        }
    }
}

impl WebhookSender {
    pub const CAPACITY: usize = 256;

    pub fn new(url: String, retry: RetryPolicy) -> Arc<Self> {
        Arc::new(WebhookSender {
            url,
            queue: Mutex::new(VecDeque::new()),
            notify: Notify::new(),
            capacity: Self::CAPACITY,
            retry,
        })
    }

    /// Queues one payload; never waits.
    pub fn push(&self, payload: Value) {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if queue.len() >= self.capacity {
            queue.pop_front();
            tracing::warn!("alert webhook queue full: dropped the oldest alert notification");
        }
        queue.push_back(payload);
        drop(queue);
        self.notify.notify_one();
    }

    fn pop(&self) -> Option<Value> {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()
    }

    /// Sends queued payloads until `shutdown` turns true (what is still queued then is dropped).
    pub fn spawn(
        self: Arc<Self>,
        mut shutdown: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let client = match reqwest::Client::builder()
                .timeout(self.retry.timeout)
                .build()
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "alert webhook disabled: no HTTP client");
                    return;
                }
            };
            loop {
                if *shutdown.borrow() {
                    return;
                }
                match self.pop() {
                    Some(payload) => {
                        tokio::select! {
                            () = self.send(&client, &payload) => {}
                            _ = shutdown.changed() => return,
                        }
                    }
                    None => {
                        tokio::select! {
                            () = self.notify.notified() => {}
                            r = shutdown.changed() => if r.is_err() { return },
                        }
                    }
                }
            }
        })
    }

    async fn send(&self, client: &reqwest::Client, payload: &Value) {
        let alert = payload["alert"]["name"].as_str().unwrap_or("?").to_string();
        let status = payload["status"].as_str().unwrap_or("?").to_string();
        let mut backoff = self.retry.first_backoff;
        for attempt in 1..=self.retry.attempts {
            // The URL may carry a token: it is never logged.
            let outcome = match client.post(&self.url).json(payload).send().await {
                Ok(r) if r.status().is_success() => return,
                Ok(r) => {
                    let code = r.status();
                    let permanent = code.is_client_error()
                        && code != reqwest::StatusCode::REQUEST_TIMEOUT
                        && code != reqwest::StatusCode::TOO_MANY_REQUESTS;
                    if permanent {
                        tracing::warn!(%alert, %status, http_status = code.as_u16(), "alert webhook refused the notification");
                        return;
                    }
                    format!("HTTP {}", code.as_u16())
                }
                Err(e) if e.is_timeout() => "timed out".to_string(),
                Err(e) if e.is_connect() => "connection failed".to_string(),
                Err(_) => "request failed".to_string(),
            };
            if attempt == self.retry.attempts {
                tracing::warn!(%alert, %status, attempts = attempt, error = %outcome, "alert webhook failed: notification dropped");
                return;
            }
            tracing::debug!(%alert, %status, attempt, error = %outcome, "alert webhook failed: retrying");
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitoring::window::Window;

    const T0: i64 = 1_700_000_000_000;

    fn config(hold_s: u64) -> MonitorConfig {
        MonitorConfig {
            hit_rate_min_pct: 50.0,
            response_ms_max: 100,
            error_rate_max_pct: 5.0,
            redis_down_s: 30,
            min_samples: 20,
            hold_s,
            ..MonitorConfig::default()
        }
    }

    /// A summary with `n` requests of `ms` each, `errors` of them 5xx.
    fn traffic(n: u64, ms: u64, errors: u64) -> WindowSummary {
        let w = Window::new();
        for i in 0..n {
            let status = if i < errors { 500 } else { 200 };
            w.record_request_at(0, "/x", "GET", status, Duration::from_millis(ms));
        }
        w.summary_at(0)
    }

    fn lookups(hits: u64, misses: u64) -> WindowSummary {
        let w = Window::new();
        for _ in 0..hits {
            w.record_cache_at(0, "lead", "l1_hit");
        }
        for _ in 0..misses {
            w.record_cache_at(0, "lead", "miss");
        }
        w.summary_at(0)
    }

    fn names(changes: &[AlertChange]) -> Vec<(&'static str, AlertStatus)> {
        changes.iter().map(|c| (c.alert.name, c.status)).collect()
    }

    #[test]
    fn min_samples_respected() {
        let mut e = AlertEngine::new(&config(0));
        // 3 requests, all slow and failing, no hits: nothing fires.
        let mut s = traffic(3, 900, 3);
        let few = lookups(0, 3);
        s.cache = few.cache.clone();
        s.cache_requests = few.cache_requests;
        for t in 0..100 {
            assert!(e.evaluate(T0 + t * 1000, &s, None, None).is_empty());
        }
        assert!(e.active().is_empty());
    }

    #[test]
    fn fires_after_hold_and_resolves_after_hold() {
        let mut e = AlertEngine::new(&config(10));
        let slow = traffic(50, 500, 0);
        let fast = traffic(50, 5, 0);
        assert!(e.evaluate(T0, &slow, None, None).is_empty());
        assert!(e.evaluate(T0 + 9_999, &slow, None, None).is_empty());
        let fired = e.evaluate(T0 + 10_000, &slow, None, None);
        assert_eq!(names(&fired), [(RESPONSE_TIME_HIGH, AlertStatus::Firing)]);
        let alert = &fired[0].alert;
        assert_eq!(alert.severity, Severity::Warning);
        assert_eq!(alert.threshold, 100.0);
        assert!(alert.value > 100.0);
        assert_eq!(alert.since, "2023-11-14T22:13:20.000Z");
        assert_eq!(alert.fired_at, "2023-11-14T22:13:30.000Z");
        assert_eq!(alert.resolved_at, None);
        assert_eq!(e.active().len(), 1);

        // Fast again, but only for 9 s, then slow: it stays active, no event.
        assert!(e.evaluate(T0 + 11_000, &fast, None, None).is_empty());
        assert!(e.evaluate(T0 + 20_000, &fast, None, None).is_empty());
        assert!(e.evaluate(T0 + 20_500, &slow, None, None).is_empty());
        // Fast for 10 s: resolved.
        assert!(e.evaluate(T0 + 21_000, &fast, None, None).is_empty());
        let resolved = e.evaluate(T0 + 31_000, &fast, None, None);
        assert_eq!(
            names(&resolved),
            [(RESPONSE_TIME_HIGH, AlertStatus::Resolved)]
        );
        assert_eq!(
            resolved[0].alert.resolved_at.as_deref(),
            Some("2023-11-14T22:13:51.000Z")
        );
        assert!(e.active().is_empty());
        // Listed once, resolved.
        let recent = e.recent();
        assert_eq!(recent.len(), 1, "{recent:?}");
        assert!(recent[0].resolved_at.is_some());
    }

    #[test]
    fn a_blip_shorter_than_the_hold_never_fires() {
        let mut e = AlertEngine::new(&config(5));
        let failing = traffic(40, 1, 10);
        let fine = traffic(40, 1, 0);
        assert!(e.evaluate(T0, &failing, None, None).is_empty());
        assert!(e.evaluate(T0 + 4_000, &failing, None, None).is_empty());
        assert!(e.evaluate(T0 + 5_000, &fine, None, None).is_empty());
        // The hold starts again from scratch.
        assert!(e.evaluate(T0 + 6_000, &failing, None, None).is_empty());
        assert!(e.evaluate(T0 + 10_999, &failing, None, None).is_empty());
        let fired = e.evaluate(T0 + 11_000, &failing, None, None);
        assert_eq!(names(&fired), [(ERROR_RATE_HIGH, AlertStatus::Firing)]);
        assert_eq!(fired[0].alert.severity, Severity::Critical);
        assert_eq!(fired[0].alert.value, 25.0);
    }

    #[test]
    fn hold_zero_fires_and_resolves_at_once() {
        let mut e = AlertEngine::new(&config(0));
        let fired = e.evaluate(T0, &lookups(5, 20), None, None);
        assert_eq!(names(&fired), [(CACHE_HIT_RATE_LOW, AlertStatus::Firing)]);
        assert_eq!(fired[0].alert.value, 20.0);
        let resolved = e.evaluate(T0 + 1, &lookups(20, 5), None, None);
        assert_eq!(
            names(&resolved),
            [(CACHE_HIT_RATE_LOW, AlertStatus::Resolved)]
        );
    }

    #[test]
    fn redis_and_database_down() {
        let mut e = AlertEngine::new(&config(10));
        let idle = traffic(0, 0, 0);
        let redis_since = Some(T0);
        assert!(e.evaluate(T0 + 29_999, &idle, redis_since, None).is_empty());
        let fired = e.evaluate(T0 + 30_000, &idle, redis_since, Some(T0 + 25_000));
        assert_eq!(names(&fired), [(REDIS_DOWN, AlertStatus::Firing)]);
        assert_eq!(fired[0].alert.since, rfc3339(T0));
        assert_eq!(fired[0].alert.value, 30.0);
        let fired = e.evaluate(T0 + 35_000, &idle, redis_since, Some(T0 + 25_000));
        assert_eq!(names(&fired), [(DATABASE_DOWN, AlertStatus::Firing)]);
        assert_eq!(fired[0].alert.severity, Severity::Critical);
        assert_eq!(e.active()[0].name, DATABASE_DOWN, "critical first");
        // Both come back: resolved after the hold.
        assert!(e.evaluate(T0 + 40_000, &idle, None, None).is_empty());
        let resolved = e.evaluate(T0 + 50_000, &idle, None, None);
        assert_eq!(
            names(&resolved),
            [
                (REDIS_DOWN, AlertStatus::Resolved),
                (DATABASE_DOWN, AlertStatus::Resolved)
            ]
        );
    }

    #[test]
    fn recent_is_bounded() {
        let mut e = AlertEngine::new(&config(0));
        let low = lookups(0, 30);
        let ok = lookups(30, 0);
        for i in 0..100 {
            e.evaluate(T0 + i * 2, &low, None, None);
            e.evaluate(T0 + i * 2 + 1, &ok, None, None);
        }
        assert_eq!(e.recent().len(), RECENT);
    }

    #[test]
    fn change_serialises_for_the_stream() {
        let mut e = AlertEngine::new(&config(0));
        let fired = e.evaluate(T0, &lookups(0, 30), None, None);
        let v = serde_json::to_value(&fired[0]).unwrap();
        assert_eq!(v["status"], "firing");
        assert_eq!(v["alert"]["name"], CACHE_HIT_RATE_LOW);
        assert_eq!(v["alert"]["severity"], "warning");
        assert_eq!(v["alert"]["resolved_at"], Value::Null);
        let view = serde_json::to_value(e.view()).unwrap();
        assert_eq!(view["active"].as_array().unwrap().len(), 1);
        assert_eq!(view["recent"].as_array().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn webhook_retries_then_delivers() {
        use axum::extract::State;
        use axum::http::StatusCode;
        use axum::Json;
        use std::sync::atomic::{AtomicUsize, Ordering};

        type Seen = Arc<(AtomicUsize, Mutex<Vec<Value>>)>;
        async fn hook(State(seen): State<Seen>, Json(body): Json<Value>) -> StatusCode {
            // The first attempt fails.
            if seen.0.fetch_add(1, Ordering::SeqCst) == 0 {
                return StatusCode::SERVICE_UNAVAILABLE;
            }
            seen.1.lock().unwrap().push(body);
            StatusCode::NO_CONTENT
        }
        let seen: Seen = Arc::default();
        // A stand-in for the operator's alert receiver, not a route of hotline's API.
        #[allow(clippy::disallowed_methods)]
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

        let sender = WebhookSender::new(
            url,
            RetryPolicy {
                attempts: 3,
                first_backoff: Duration::from_millis(10),
                timeout: Duration::from_secs(2),
            },
        );
        let (stop, shutdown) = watch::channel(false);
        let task = sender.clone().spawn(shutdown);
        sender.push(serde_json::json!({"status": "firing", "alert": {"name": "redis_down"}}));
        sender.push(serde_json::json!({"status": "resolved", "alert": {"name": "redis_down"}}));
        tokio::time::timeout(Duration::from_secs(10), async {
            while seen.1.lock().unwrap().len() < 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("both delivered");
        let got = seen.1.lock().unwrap().clone();
        assert_eq!(
            got[0]["status"], "firing",
            "in order, the first after a retry"
        );
        assert_eq!(got[1]["status"], "resolved");
        assert_eq!(seen.0.load(Ordering::SeqCst), 3);
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the sender stops on shutdown")
            .unwrap();
    }

    #[test]
    fn webhook_queue_drops_oldest_when_full() {
        let sender = WebhookSender::new("http://127.0.0.1:9/".into(), RetryPolicy::default());
        for i in 0..(WebhookSender::CAPACITY + 3) {
            sender.push(serde_json::json!({ "i": i }));
        }
        assert_eq!(sender.queue.lock().unwrap().len(), WebhookSender::CAPACITY);
        assert_eq!(sender.pop().unwrap()["i"], 3);
    }
}
