//! Live monitoring over server-sent events: `event: metrics` every second (the
//! `/api/monitoring/metrics` JSON), `event: alert` on each firing and resolving, and `event: bus`
//! for every event of the bus (calls, alerts, instances) reduced to its id, type, time and
//! instance: the dashboard's live list, with no personal data and so no admin token.
//!
//! Events are serialised once and fanned out through a `tokio::sync::broadcast` channel: the
//! sender never waits, and a subscriber that falls behind skips ahead to the newest events
//! instead of holding memory. Bus events go through a channel of their own, so that a flood of
//! calls makes a slow reader skip bus events, never metrics or alerts. Every stream ends when
//! the shutdown signal turns true, so that a
//! graceful shutdown (which waits for open connections) is not held up by dashboards.

use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use chrono::{DateTime, Utc};
use futures_util::stream::{self, Stream};
use serde::Serialize;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use super::alerts::AlertChange;
use super::window::WindowSummary;
use super::Monitor;
use crate::calls::{Bus, BusEvent};

/// Events buffered per subscriber before it starts skipping.
pub const CAPACITY: usize = 64;
/// Bus events buffered per subscriber before it starts skipping them.
pub const BUS_CAPACITY: usize = 256;
/// A comment line this often keeps proxies from closing an idle stream.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// What `EventSource` waits before reconnecting.
pub const RETRY: Duration = Duration::from_secs(2);

/// One pre-serialised event.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEvent {
    pub name: &'static str,
    pub data: Arc<str>,
}

impl StreamEvent {
    fn new(name: &'static str, body: &impl Serialize) -> Option<Self> {
        match serde_json::to_string(body) {
            Ok(s) => Some(StreamEvent {
                name,
                data: s.into(),
            }),
            Err(e) => {
                tracing::error!(error = %e, event = name, "could not serialise a stream event");
                None
            }
        }
    }

    fn to_sse(&self) -> Event {
        Event::default().event(self.name).data(&*self.data)
    }
}

/// The fan-out of stream events to every subscriber.
#[derive(Debug)]
pub struct Broadcaster {
    tx: broadcast::Sender<StreamEvent>,
    /// `bus` events, apart.
    bus_tx: broadcast::Sender<StreamEvent>,
    /// The latest `metrics` event, sent first to a new subscriber so that a dashboard has
    /// numbers at once.
    last_metrics: Mutex<Option<StreamEvent>>,
}

impl Default for Broadcaster {
    fn default() -> Self {
        Self::new(CAPACITY)
    }
}

impl Broadcaster {
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity);
        let (bus_tx, _) = broadcast::channel(BUS_CAPACITY);
        Broadcaster {
            tx,
            bus_tx,
            last_metrics: Mutex::new(None),
        }
    }

    /// Sends an event to every subscriber; never waits (no subscriber is fine).
    pub fn publish(&self, event: StreamEvent) {
        let _ = self.tx.send(event);
    }

    pub fn publish_metrics(&self, summary: &WindowSummary) {
        if let Some(event) = StreamEvent::new("metrics", summary) {
            *self
                .last_metrics
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(event.clone());
            self.publish(event);
        }
    }

    pub fn publish_alert(&self, change: &AlertChange) {
        if let Some(event) = StreamEvent::new("alert", change) {
            self.publish(event);
        }
    }

    /// Tells the stream's readers that `event` happened: its id, type, creation time and
    /// instance, nothing else (no call id, no data: they may name a caller). Nothing is done
    /// while no one reads the stream.
    pub fn publish_bus(&self, event: &BusEvent) {
        if self.bus_tx.receiver_count() == 0 {
            return;
        }
        let notice = BusNotice {
            id: event.id.to_string(),
            kind: &event.kind,
            at: event.at,
            instance_id: &event.instance_id,
        };
        if let Some(event) = StreamEvent::new("bus", &notice) {
            let _ = self.bus_tx.send(event);
        }
    }

    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// The raw event stream: the latest metrics first, then every event as it comes, skipping
    /// what a slow reader missed; it ends when `shutdown` turns true (or its sender is gone).
    pub fn events(
        &self,
        shutdown: watch::Receiver<bool>,
    ) -> impl Stream<Item = StreamEvent> + Send + 'static {
        let rx = self.tx.subscribe();
        let bus = self.bus_tx.subscribe();
        let first = self
            .last_metrics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        stream::unfold(
            (rx, bus, shutdown, first),
            |(mut rx, mut bus, mut shutdown, first)| async move {
                if *shutdown.borrow_and_update() {
                    return None;
                }
                if let Some(event) = first {
                    return Some((event, (rx, bus, shutdown, None)));
                }
                loop {
                    tokio::select! {
                        biased;
                        changed = shutdown.changed() => {
                            if changed.is_err() || *shutdown.borrow_and_update() {
                                return None;
                            }
                        }
                        received = rx.recv() => match received {
                            Ok(event) => return Some((event, (rx, bus, shutdown, None))),
                            Err(broadcast::error::RecvError::Lagged(_)) => continue,
                            Err(broadcast::error::RecvError::Closed) => return None,
                        },
                        received = bus.recv() => match received {
                            Ok(event) => return Some((event, (rx, bus, shutdown, None))),
                            Err(broadcast::error::RecvError::Lagged(_)) => continue,
                            Err(broadcast::error::RecvError::Closed) => return None,
                        },
                    }
                }
            },
        )
    }

    /// The SSE response for `GET /api/monitoring/stream`.
    pub fn subscribe(
        &self,
        shutdown: watch::Receiver<bool>,
    ) -> Sse<impl Stream<Item = Result<Event, Infallible>> + Send + 'static> {
        use futures_util::StreamExt;
        let hello = stream::once(async { Ok(Event::default().retry(RETRY).comment("hotline")) });
        let gauge = super::metrics::SseClientGauge::connected("monitoring");
        let events = self.events(shutdown).map(move |e| {
            let _counted_while_streaming = &gauge;
            Ok(e.to_sse())
        });
        Sse::new(hello.chain(events)).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
    }
}

/// A bus event as the monitoring stream tells it.
#[derive(Debug, Serialize)]
struct BusNotice<'a> {
    id: String,
    #[serde(rename = "type")]
    kind: &'a str,
    at: DateTime<Utc>,
    instance_id: &'a str,
}

/// Forwards every bus event reaching this instance (its own and every other's) to the
/// monitoring stream, until shutdown; supervised. A burst beyond the bus's buffer is skipped.
pub async fn forward_bus(bus: Arc<Bus>, monitor: Monitor, mut shutdown: watch::Receiver<bool>) {
    let mut events = bus.subscribe();
    if *shutdown.borrow_and_update() {
        return;
    }
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            received = events.recv() => match received {
                Ok(event) => monitor.broadcaster().publish_bus(&event),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

/// Since when each dependency has been down, in unix milliseconds (`None` while it is up, or
/// for Redis also while it is disabled).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DownSince {
    pub redis_ms: Option<i64>,
    pub database_ms: Option<i64>,
    /// Instances this one found lost lately: how many, and since when.
    pub instances_lost: Option<(usize, i64)>,
}

/// Read once a second by the ticker: cheap and synchronous (read atomics, no I/O).
pub type DownProbe = Box<dyn Fn() -> DownSince + Send + Sync>;

/// Every second: publishes the `metrics` event and evaluates the alerts (publishing an `alert`
/// event, setting the gauge and queueing the webhook for each change). Stops on shutdown.
pub fn spawn_ticker(
    monitor: Monitor,
    probe: DownProbe,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            if *shutdown.borrow_and_update() {
                return;
            }
            tokio::select! {
                _ = every.tick() => {
                    monitor.tick(crate::cache::now_ms(), probe());
                }
                changed = shutdown.changed() => if changed.is_err() { return },
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;
    use futures_util::StreamExt;

    fn event(i: usize) -> StreamEvent {
        StreamEvent {
            name: "metrics",
            data: i.to_string().into(),
        }
    }

    #[tokio::test]
    async fn stream_ends_on_shutdown() {
        let b = Broadcaster::new(8);
        let (stop, shutdown) = watch::channel(false);
        let mut events = Box::pin(b.events(shutdown));
        b.publish(event(1));
        assert_eq!(events.next().await, Some(event(1)));
        let waiting = tokio::spawn(async move { events.next().await });
        tokio::task::yield_now().await;
        stop.send(true).unwrap();
        let end = tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .expect("the stream ends")
            .unwrap();
        assert_eq!(end, None);
    }

    #[tokio::test]
    async fn sse_body_ends_on_shutdown() {
        let b = Broadcaster::new(8);
        let (stop, shutdown) = watch::channel(false);
        b.publish_metrics(&crate::monitoring::window::Window::new().summary_at(0));
        let mut body = b
            .subscribe(shutdown)
            .into_response()
            .into_body()
            .into_data_stream();
        let mut text = String::new();
        // The retry hint, then the latest metrics at once.
        while !text.contains("event: metrics") {
            let chunk = tokio::time::timeout(Duration::from_secs(2), body.next())
                .await
                .expect("a chunk")
                .expect("not ended")
                .unwrap();
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        assert!(text.contains("retry: 2000"), "{text}");
        assert!(text.contains("\"window_s\":60"), "{text}");
        stop.send(true).unwrap();
        let end = tokio::time::timeout(Duration::from_secs(2), body.next())
            .await
            .expect("the body ends");
        assert!(end.is_none());
    }

    #[tokio::test]
    async fn a_stream_started_after_shutdown_ends_at_once() {
        let b = Broadcaster::new(8);
        let (_stop, shutdown) = watch::channel(true);
        let mut events = Box::pin(b.events(shutdown));
        assert_eq!(events.next().await, None);
    }

    #[tokio::test]
    async fn a_lagging_subscriber_skips_ahead() {
        let b = Broadcaster::new(4);
        let (_stop, shutdown) = watch::channel(false);
        let mut slow = Box::pin(b.events(shutdown.clone()));
        let mut fast = Box::pin(b.events(shutdown));
        // The sender never waits for the slow reader.
        for i in 1..=20 {
            b.publish(event(i));
            assert_eq!(fast.next().await, Some(event(i)));
        }
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(slow.next().await.unwrap());
        }
        assert_eq!(got, (17..=20).map(event).collect::<Vec<_>>());
        // And it keeps up from there.
        b.publish(event(21));
        assert_eq!(slow.next().await, Some(event(21)));
    }
}
