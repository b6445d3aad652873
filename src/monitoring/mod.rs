//! Monitoring: Prometheus metrics, rolling one-minute statistics, alerts, and the live stream.
//!
//! A [`Monitor`] is a cheap handle (an `Arc` inside) owning the Prometheus handle, the rolling
//! [`Window`], the [`AlertEngine`] and the SSE [`Broadcaster`]. Request, cache, load and Redis
//! timings go to both Prometheus (cumulative, for scraping) and the window (the last minute,
//! for `/api/monitoring/metrics`, the dashboard and the alerts) through one call each.
//!
//! Definitions:
//! - hit rate = (l1 hits + l2 hits) / (l1 hits + l2 hits + misses + stale); a stale answer is
//!   not a hit. The l1 and l2 rates share that denominator. See [`window`].
//! - a figure over no data is `null` ("—" on the dashboard), never 0.
//! - alerts fire once their condition has held for `ALERT_HOLD_S` and resolve once it has been
//!   false for `ALERT_HOLD_S`. See [`alerts`].
//!
//! Background work, none of it on a request's path: [`Monitor::spawn`] starts the one-second
//! ticker (metrics event, alert evaluation), the alert webhook sender (when a URL is set) and
//! the exporter's upkeep. [`Monitor::shutdown`] ends every SSE stream and stops the ticker and
//! the webhook sender.

pub mod alerts;
pub mod metrics;
pub mod stream;
pub mod window;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::response::sse::{Event, Sse};
use futures_util::stream::Stream;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use alerts::{
    Alert, AlertChange, AlertEngine, AlertStatus, AlertsView, RetryPolicy, Severity, WebhookSender,
    ALERT_NAMES,
};
pub use stream::{spawn_ticker, Broadcaster, DownProbe, DownSince, StreamEvent};
pub use window::{CacheSummary, CallsSummary, RedisSummary, Window, WindowSummary, WINDOW_S};

/// The dashboard page, self-contained (served at `GET /dashboard`).
pub const DASHBOARD_HTML: &str = include_str!("dashboard.html");

/// Alert thresholds and the webhook (from [`crate::config::AlertArgs`]).
#[derive(Debug, Clone, PartialEq)]
pub struct MonitorConfig {
    pub hit_rate_min_pct: f64,
    pub response_ms_max: u64,
    pub error_rate_max_pct: f64,
    pub redis_down_s: u64,
    pub min_samples: u64,
    pub hold_s: u64,
    /// May carry a token: never logged.
    pub webhook_url: Option<String>,
    /// This instance's name in alert webhooks and events.
    pub instance_id: String,
}

impl Default for MonitorConfig {
    /// The defaults of the `ALERT_*` variables.
    fn default() -> Self {
        MonitorConfig {
            hit_rate_min_pct: 50.0,
            response_ms_max: 100,
            error_rate_max_pct: 5.0,
            redis_down_s: 30,
            min_samples: 20,
            hold_s: 10,
            webhook_url: None,
            instance_id: instance_name(),
        }
    }
}

impl From<&crate::config::AlertArgs> for MonitorConfig {
    fn from(a: &crate::config::AlertArgs) -> Self {
        MonitorConfig {
            hit_rate_min_pct: a.alert_hit_rate_min_pct,
            response_ms_max: a.alert_response_ms_max,
            error_rate_max_pct: a.alert_error_rate_max_pct,
            redis_down_s: a.alert_redis_down_s,
            min_samples: a.alert_min_samples,
            hold_s: a.alert_hold_s,
            webhook_url: a.alert_webhook_url.as_ref().map(|u| u.as_str().to_string()),
            instance_id: instance_name(),
        }
    }
}

struct Inner {
    config: MonitorConfig,
    prometheus: PrometheusHandle,
    window: Window,
    alerts: Mutex<AlertEngine>,
    stream: Broadcaster,
    webhook: Option<Arc<WebhookSender>>,
    instance: String,
    shutdown: watch::Sender<bool>,
    /// Where each alert change also goes (the event bus), once set.
    alert_sink: std::sync::OnceLock<AlertSink>,
    /// The call figures for the summary, once calls are on.
    calls_probe: std::sync::OnceLock<CallsProbe>,
}

/// Reads the call figures: cheap and synchronous.
pub type CallsProbe = Box<dyn Fn() -> CallsSummary + Send + Sync>;

/// Called with every alert change, on the ticker's task: must not wait.
pub type AlertSink = Box<dyn Fn(&AlertChange) + Send + Sync>;

/// The monitoring handle; clone it freely.
#[derive(Clone)]
pub struct Monitor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("instance", &self.inner.instance)
            .finish_non_exhaustive()
    }
}

impl Monitor {
    /// Installs the Prometheus recorder (once per process) and builds an idle monitor; call
    /// [`Monitor::spawn`] inside the runtime to start its background tasks.
    pub fn new(config: MonitorConfig) -> Monitor {
        let prometheus = metrics::install();
        let webhook = config
            .webhook_url
            .clone()
            .map(|url| WebhookSender::new(url, RetryPolicy::default()));
        let (shutdown, _) = watch::channel(false);
        let instance = config.instance_id.clone();
        Monitor {
            inner: Arc::new(Inner {
                alerts: Mutex::new(AlertEngine::new(&config)),
                config,
                prometheus,
                window: Window::new(),
                stream: Broadcaster::default(),
                webhook,
                instance,
                shutdown,
                alert_sink: std::sync::OnceLock::new(),
                calls_probe: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Adds the call figures to every later summary (once).
    pub fn on_calls(&self, probe: CallsProbe) {
        let _ = self.inner.calls_probe.set(probe);
    }

    /// Sends every later alert change to `sink` too (once; a second sink is ignored).
    pub fn on_alert(&self, sink: AlertSink) {
        let _ = self.inner.alert_sink.set(sink);
    }

    pub fn config(&self) -> &MonitorConfig {
        &self.inner.config
    }

    /// This instance's name in alert notifications: host name and process id.
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    pub fn prometheus(&self) -> &PrometheusHandle {
        &self.inner.prometheus
    }

    pub fn window(&self) -> &Window {
        &self.inner.window
    }

    pub fn broadcaster(&self) -> &Broadcaster {
        &self.inner.stream
    }

    // Recording: Prometheus and the window in one call.

    /// An HTTP response, by route template (`MatchedPath`), method and status.
    pub fn record_request(&self, route: &str, method: &str, status: u16, d: Duration) {
        metrics::http_request(route, method, status, d);
        self.inner.window.record_request(route, method, status, d);
    }

    /// A cache lookup: `result` one of `l1_hit`, `l2_hit`, `miss`, `stale`.
    pub fn record_cache(&self, kind: &str, result: &str) {
        metrics::cache_request(kind, result);
        // The hit rate the alert watches is the callers' one.
        if !in_background() {
            self.inner.window.record_cache(kind, result);
        }
    }

    /// A load from the store after a miss.
    pub fn record_load(&self, kind: &str, d: Duration) {
        metrics::cache_load(kind, d);
        self.inner.window.record_load(kind, d);
    }

    /// A Redis command.
    pub fn record_redis(&self, d: Duration) {
        metrics::redis_command(d);
        self.inner.window.record_redis(d);
    }

    // Reading.

    /// `GET /api/monitoring/metrics`.
    pub fn summary(&self) -> WindowSummary {
        let mut summary = self.inner.window.summary();
        summary.calls = self.inner.calls_probe.get().map(|probe| probe());
        summary
    }

    /// `GET /api/monitoring/metrics/performance`.
    pub fn performance(&self) -> Value {
        self.inner.window.performance()
    }

    /// `GET /api/monitoring/alerts`.
    pub fn alerts(&self) -> AlertsView {
        self.engine().view()
    }

    /// `GET /metrics` (Prometheus text format, `text/plain; version=0.0.4`).
    pub fn render_prometheus(&self) -> String {
        metrics::render(&self.inner.prometheus)
    }

    /// `GET /api/monitoring/stream`: ends on [`Monitor::shutdown`].
    pub fn subscribe(
        &self,
    ) -> Sse<impl Stream<Item = Result<Event, std::convert::Infallible>> + Send + 'static> {
        self.inner.stream.subscribe(self.shutdown_signal())
    }

    // Lifecycle.

    /// A receiver that turns true on [`Monitor::shutdown`].
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.inner.shutdown.subscribe()
    }

    /// Ends every SSE stream and stops the ticker and the webhook sender. Call it when the
    /// server starts its graceful shutdown (before waiting for connections).
    pub fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }

    /// Starts the ticker, the webhook sender (if a URL is set) and the exporter's upkeep.
    /// Must be called inside a Tokio runtime.
    pub fn spawn(&self, probe: DownProbe) -> Vec<JoinHandle<()>> {
        let mut tasks = vec![
            spawn_ticker(self.clone(), probe, self.shutdown_signal()),
            metrics::spawn_upkeep(self.inner.prometheus.clone()),
        ];
        if let Some(webhook) = &self.inner.webhook {
            tasks.push(webhook.clone().spawn(self.shutdown_signal()));
        }
        tasks
    }

    fn engine(&self) -> MutexGuard<'_, AlertEngine> {
        self.inner
            .alerts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// One tick: publishes the `metrics` event and evaluates the alerts at `now_ms`.
    pub fn tick(&self, now_ms: i64, down: DownSince) -> Vec<AlertChange> {
        let summary = self.summary();
        self.inner.stream.publish_metrics(&summary);
        self.evaluate(now_ms, &summary, down)
    }

    /// Evaluates the alerts; for each change sets the gauge, publishes an `alert` event and
    /// queues the webhook notification.
    pub fn evaluate(
        &self,
        now_ms: i64,
        summary: &WindowSummary,
        down: DownSince,
    ) -> Vec<AlertChange> {
        let changes = {
            let mut engine = self.engine();
            engine.set_lost(down.instances_lost);
            engine.evaluate(now_ms, summary, down.redis_ms, down.database_ms)
        };
        for change in &changes {
            let firing = change.status == AlertStatus::Firing;
            metrics::alert_firing(change.alert.name, firing);
            self.inner.stream.publish_alert(change);
            if let Some(sink) = self.inner.alert_sink.get() {
                sink(change);
            }
            if firing {
                tracing::warn!(alert = change.alert.name, message = %change.alert.message, "alert firing");
            } else {
                tracing::info!(alert = change.alert.name, "alert resolved");
            }
            if let Some(webhook) = &self.inner.webhook {
                webhook.push(json!({
                    "status": change.status,
                    "alert": change.alert,
                    "instance": self.inner.instance,
                    "sent_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                }));
            }
        }
        changes
    }
}

/// Hostname, process id and a random suffix: unique even for two containers that share a
/// hostname and a pid.
pub fn default_instance_id() -> String {
    use rand::Rng as _;
    let suffix: u32 = rand::rng().random();
    format!("{}-{suffix:08x}", instance_name())
}

tokio::task_local! {
    static BACKGROUND: ();
}

/// Runs `work` as the service's own background work (warming the cache at start): its cache
/// lookups count in Prometheus, but not in the rolling window the hit-rate alert reads, so
/// that an instance nobody calls yet does not alert about its own warming.
pub async fn as_background<F: std::future::Future>(work: F) -> F::Output {
    BACKGROUND.scope((), work).await
}

fn in_background() -> bool {
    BACKGROUND.try_with(|_| ()).is_ok()
}

fn instance_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "hotline".to_string());
    format!("{host}:{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn a_change_reaches_the_stream_the_gauge_and_the_alerts_view() {
        let monitor = Monitor::new(MonitorConfig {
            hold_s: 0,
            min_samples: 1,
            ..MonitorConfig::default()
        });
        let mut events = Box::pin(monitor.broadcaster().events(monitor.shutdown_signal()));
        monitor.record_cache("lead", "miss");
        let changes = monitor.tick(crate::cache::now_ms(), DownSince::default());
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].alert.name, alerts::CACHE_HIT_RATE_LOW);
        let metrics_event = events.next().await.unwrap();
        assert_eq!(metrics_event.name, "metrics");
        let v: Value = serde_json::from_str(&metrics_event.data).unwrap();
        assert_eq!(v["cache"]["hit_rate_pct"], 0.0);
        let alert_event = events.next().await.unwrap();
        assert_eq!(alert_event.name, "alert");
        let v: Value = serde_json::from_str(&alert_event.data).unwrap();
        assert_eq!(v["status"], "firing");
        assert_eq!(monitor.alerts().active.len(), 1);
        let text = monitor.render_prometheus();
        assert!(text.contains("hotline_alert_firing{alert=\"cache_hit_rate_low\"}"));

        monitor.shutdown();
        assert_eq!(events.next().await, None);
    }

    #[tokio::test]
    async fn spawned_tasks_stop_on_shutdown() {
        let monitor = Monitor::new(MonitorConfig {
            webhook_url: Some("http://127.0.0.1:9/hook".into()),
            ..MonitorConfig::default()
        });
        let mut tasks = monitor.spawn(Box::new(DownSince::default));
        let upkeep = tasks.remove(1);
        monitor.shutdown();
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(2), task)
                .await
                .expect("stops on shutdown")
                .unwrap();
        }
        upkeep.abort();
    }

    #[test]
    fn config_from_alert_args() {
        use clap::Parser;
        #[derive(Parser)]
        struct Args {
            #[command(flatten)]
            alerts: crate::config::AlertArgs,
        }
        let args = Args::parse_from([
            "x",
            "--alert-hold-s",
            "0",
            "--alert-webhook-url",
            "https://example.com/h",
        ]);
        let c = MonitorConfig::from(&args.alerts);
        assert_eq!(c.hold_s, 0);
        assert_eq!(c.webhook_url.as_deref(), Some("https://example.com/h"));
    }
}
