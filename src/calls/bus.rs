//! One event bus for every instance.
//!
//! Publishing appends the event to two Redis Streams in one script: the global one (every
//! event, `MAXLEN ~` ten times `CALL_EVENTS_MAX`) and the call's own (`MAXLEN ~
//! CALL_EVENTS_MAX`, expiring with the call), under one id that Redis assigns; the same script
//! publishes the event on the bus channel. The id is the stream id, so ids are ordered the
//! same way on every instance and a replay from a stream continues exactly where a live feed
//! left off.
//!
//! Each instance runs one subscriber ([`run_subscriber`]) that feeds a bounded broadcast to its
//! local SSE clients. After a reconnect it first reads the global stream from the last event it
//! forwarded, so that a broken subscription loses nothing that Redis kept. While Redis is
//! down (or absent) events get a local id and are fanned out and kept in this process only.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use bytes::Bytes;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use redis::Script;
use tokio::sync::{broadcast, watch};

use super::model::{types, Event, EventId};
use crate::cache::tasks::stopping;
use crate::cache::{now_ms, Remote, RemoteError};
use crate::monitoring::metrics;

/// Events buffered for this instance's SSE clients; a client that falls further behind is
/// dropped (it resumes with `Last-Event-ID`).
pub const BROADCAST_CAPACITY: usize = 4096;
/// The global stream keeps this many times `CALL_EVENTS_MAX` events.
pub const GLOBAL_FACTOR: usize = 10;
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);
/// The subscriber pings its own channel this often, and treats silence for
/// [`SUBSCRIPTION_SILENCE`] as a dead connection.
const PING_EVERY: Duration = Duration::from_secs(2);
const SUBSCRIPTION_SILENCE: Duration = Duration::from_secs(7);
const PING: &str = "ping";
/// Events read per round trip when the subscriber catches up.
const CATCH_UP_PAGE: usize = 500;

/// KEYS: the global stream, the call's stream. ARGV: the event's JSON after its opening brace,
/// the global bound, the per-call bound, the call's TTL in ms, the channel, whether the event
/// belongs to a call (`1`). Returns the id.
const PUBLISH_LUA: &str = r#"
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[1])
if ARGV[6] == '1' then
  redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], id, 'e', ARGV[1])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
redis.call('PUBLISH', ARGV[5], '{"id":"' .. id .. '",' .. ARGV[1])
return id
"#;

/// An event as the bus carries it: its full JSON (per-call streams) and its public JSON
/// (`GET /api/events`), each serialised once.
#[derive(Debug)]
pub struct BusEvent {
    pub id: EventId,
    pub kind: String,
    pub call_id: Option<String>,
    /// The instance that published it.
    pub instance_id: String,
    /// When it was created, on that instance.
    pub at: DateTime<Utc>,
    pub full: Arc<str>,
    pub public: Arc<str>,
    /// The SSE frames of the two forms, rendered once for every client that sends them.
    frames: [OnceLock<Bytes>; 2],
}

impl BusEvent {
    fn from_event(event: &Event) -> Option<BusEvent> {
        let id: EventId = event.id.parse().ok()?;
        let full: Arc<str> = serde_json::to_string(event).ok()?.into();
        let public_event = event.public();
        let public = if public_event == *event {
            full.clone()
        } else {
            serde_json::to_string(&public_event).ok()?.into()
        };
        Some(BusEvent {
            id,
            kind: event.kind.clone(),
            call_id: event.call_id.clone(),
            instance_id: event.instance_id.clone(),
            at: event.at,
            full,
            public,
            frames: Default::default(),
        })
    }

    /// Parses an event's full JSON as the bus channel or a stream carries it; the JSON is
    /// kept as it came, and serialised again only when its public form differs.
    pub fn parse(json: &str) -> Option<BusEvent> {
        let event = serde_json::from_str::<Event>(json).ok()?;
        let full: Arc<str> = json.into();
        let public_event = event.public();
        let public = if public_event == event {
            full.clone()
        } else {
            serde_json::to_string(&public_event).ok()?.into()
        };
        Some(BusEvent {
            id: event.id.parse().ok()?,
            kind: event.kind,
            call_id: event.call_id,
            instance_id: event.instance_id,
            at: event.at,
            full,
            public,
            frames: Default::default(),
        })
    }

    /// The event as an SSE frame (`event:` its type, `id:` its id, `data:` its full or public
    /// JSON), rendered the first time a client asks and shared by every other.
    pub fn frame(&self, public: bool) -> Bytes {
        self.frames[usize::from(public)]
            .get_or_init(|| {
                let json = if public { &self.public } else { &self.full };
                // Compact JSON has no line breaks: one `data:` line carries it whole.
                Bytes::from(format!(
                    "event: {}\nid: {}\ndata: {json}\n\n",
                    self.kind, self.id
                ))
            })
            .clone()
    }

    /// The event itself (`None` only if its JSON was not the bus's own).
    pub fn event(&self) -> Option<Event> {
        serde_json::from_str(&self.full).ok()
    }
}

/// What the bus keeps in this process: the events published while Redis was not there.
#[derive(Debug, Default)]
struct LocalLog {
    last: EventId,
    events: VecDeque<Arc<BusEvent>>,
}

pub struct Bus {
    remote: Option<Arc<Remote>>,
    instance_id: String,
    per_call_max: usize,
    global_max: usize,
    call_ttl: Duration,
    channel: String,
    publish: Script,
    tx: broadcast::Sender<Arc<BusEvent>>,
    local: Mutex<LocalLog>,
    /// The subscriber is connected (or there is no Redis): live events reach local clients.
    live: AtomicBool,
    /// The subscriber forwards events after this id (at first, from this instance's start).
    started: EventId,
}

/// Which events a reader wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every event, public form.
    All,
    /// One call's events, full form.
    Call(String),
}

impl Scope {
    pub fn matches(&self, event: &BusEvent) -> bool {
        match self {
            Scope::All => true,
            Scope::Call(id) => event.call_id.as_deref() == Some(id.as_str()),
        }
    }

    pub fn json<'a>(&self, event: &'a BusEvent) -> &'a str {
        match self {
            Scope::All => &event.public,
            Scope::Call(_) => &event.full,
        }
    }
}

impl Bus {
    pub fn new(
        remote: Option<Arc<Remote>>,
        instance_id: String,
        per_call_max: usize,
        call_ttl: Duration,
    ) -> Bus {
        let (tx, _) = broadcast::channel(BROADCAST_CAPACITY);
        let channel = remote.as_ref().map(|r| r.key("events")).unwrap_or_default();
        Bus {
            live: AtomicBool::new(remote.is_none()),
            remote,
            instance_id,
            per_call_max,
            global_max: per_call_max * GLOBAL_FACTOR,
            call_ttl,
            channel,
            publish: Script::new(PUBLISH_LUA),
            tx,
            local: Mutex::new(LocalLog::default()),
            started: EventId {
                ms: now_ms().max(0) as u64,
                seq: 0,
            },
        }
    }

    /// Whether events travel through Redis to every instance (else they stay in this one).
    pub fn is_shared(&self) -> bool {
        self.remote.is_some()
    }

    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    pub fn per_call_max(&self) -> usize {
        self.per_call_max
    }

    fn global_key(&self, remote: &Remote) -> String {
        remote.key("{events}:all")
    }

    fn call_key(&self, remote: &Remote, call_id: &str) -> String {
        remote.key(&format!("{{events}}:call:{call_id}"))
    }

    /// A receiver of every event reaching this instance from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<BusEvent>> {
        self.tx.subscribe()
    }

    /// Publishes `event` on every instance (through Redis), or on this one alone while Redis
    /// is not there. Returns the event with its id.
    pub async fn publish(&self, mut event: Event) -> Event {
        metrics::event_published(&event.kind);
        if let Some(remote) = &self.remote {
            match self.publish_redis(remote, &event).await {
                Ok(id) => {
                    event.id = id;
                    return event;
                }
                // Redis was not reached: the event stays in this instance.
                Err(e) if matches!(e, RemoteError::Open) || e.broke_connection() => {
                    tracing::debug!(error = %e, kind = %event.kind, "event kept in this instance: redis is down");
                }
                // It may have been published (a timeout after the script ran): publishing it
                // here too could deliver it twice, under two ids.
                Err(e) => {
                    tracing::warn!(error = %e, kind = %event.kind, "event may not have been published");
                    return event;
                }
            }
        }
        self.publish_local(event)
    }

    async fn publish_redis(&self, remote: &Remote, event: &Event) -> Result<String, RemoteError> {
        let json = serde_json::to_string(event).expect("an event serialises");
        let rest = &json[1..];
        let mut conn = remote.connection();
        let call = event.call_id.as_deref();
        let mut invocation = self.publish.prepare_invoke();
        invocation
            .key(self.global_key(remote))
            .key(self.call_key(remote, call.unwrap_or("")))
            .arg(rest)
            .arg(self.global_max)
            .arg(self.per_call_max)
            .arg(self.call_ttl.as_millis() as u64)
            .arg(&self.channel)
            .arg(if call.is_some() { "1" } else { "0" });
        remote
            .run_within(REDIS_TIMEOUT, invocation.invoke_async(&mut conn))
            .await
    }

    fn publish_local(&self, mut event: Event) -> Event {
        let mut log = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        let now = now_ms().max(0) as u64;
        let id = if now > log.last.ms {
            EventId { ms: now, seq: 0 }
        } else {
            EventId {
                ms: log.last.ms,
                seq: log.last.seq + 1,
            }
        };
        log.last = id;
        event.id = id.to_string();
        if let Some(bus_event) = BusEvent::from_event(&event).map(Arc::new) {
            log.events.push_back(bus_event.clone());
            while log.events.len() > self.global_max {
                log.events.pop_front();
            }
            let _ = self.tx.send(bus_event);
        }
        event
    }

    /// The events of `scope` that are kept: after `after`, every one kept (read a page at a
    /// time); without it, the newest `limit`. Oldest first. An error when Redis holds them and
    /// cannot be read: what is missed must not pass for nothing.
    pub async fn replay(
        &self,
        scope: &Scope,
        after: Option<EventId>,
        limit: usize,
    ) -> Result<Vec<Arc<BusEvent>>, RemoteError> {
        if let Some(remote) = &self.remote {
            if remote.breaker.is_closed() {
                let Some(mut cursor) = after else {
                    return self.replay_redis(remote, scope, None, limit).await;
                };
                // `MAXLEN ~` keeps a little more than its bound: read until the end.
                let mut events: Vec<Arc<BusEvent>> = Vec::new();
                loop {
                    let page = self
                        .replay_redis(remote, scope, Some(cursor), CATCH_UP_PAGE)
                        .await?;
                    let n = page.len();
                    if let Some(last) = page.last() {
                        cursor = last.id;
                    }
                    events.extend(page);
                    if n < CATCH_UP_PAGE || events.len() >= limit.saturating_mul(2) {
                        return Ok(events);
                    }
                }
            }
            if self.local_is_empty() {
                return Err(RemoteError::Open);
            }
        }
        Ok(self.replay_local(scope, after, limit))
    }

    fn local_is_empty(&self) -> bool {
        self.local
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .events
            .is_empty()
    }

    fn replay_local(
        &self,
        scope: &Scope,
        after: Option<EventId>,
        limit: usize,
    ) -> Vec<Arc<BusEvent>> {
        let log = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        let mut events: Vec<Arc<BusEvent>> = log
            .events
            .iter()
            .rev()
            .filter(|e| scope.matches(e) && after.is_none_or(|a| e.id > a))
            .take(limit)
            .cloned()
            .collect();
        events.reverse();
        events
    }

    async fn replay_redis(
        &self,
        remote: &Remote,
        scope: &Scope,
        after: Option<EventId>,
        limit: usize,
    ) -> Result<Vec<Arc<BusEvent>>, RemoteError> {
        let key = match scope {
            Scope::All => self.global_key(remote),
            Scope::Call(id) => self.call_key(remote, id),
        };
        let mut conn = remote.connection();
        // After an id: the oldest kept after it. Without one: the newest `limit`.
        let entries: Vec<(String, Vec<(String, String)>)> = match after {
            Some(after) => {
                remote
                    .run_within(
                        REDIS_TIMEOUT,
                        redis::cmd("XRANGE")
                            .arg(&key)
                            .arg(format!("({after}"))
                            .arg("+")
                            .arg("COUNT")
                            .arg(limit)
                            .query_async(&mut conn),
                    )
                    .await?
            }
            None => {
                let mut newest: Vec<(String, Vec<(String, String)>)> = remote
                    .run_within(
                        REDIS_TIMEOUT,
                        redis::cmd("XREVRANGE")
                            .arg(&key)
                            .arg("+")
                            .arg("-")
                            .arg("COUNT")
                            .arg(limit)
                            .query_async(&mut conn),
                    )
                    .await?;
                newest.reverse();
                newest
            }
        };
        Ok(entries
            .into_iter()
            .filter_map(|(id, fields)| {
                let rest = fields.into_iter().find(|(k, _)| k == "e")?.1;
                BusEvent::parse(&format!("{{\"id\":\"{id}\",{rest}"))
            })
            .map(Arc::new)
            .collect())
    }

    /// Whether live events currently reach this instance's clients.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    fn forward(&self, event: BusEvent) {
        let _ = self.tx.send(Arc::new(event));
    }
}

/// The type label of the published counter: hotline's own types, or `custom`.
pub fn type_label(kind: &str) -> &'static str {
    types::OWN
        .iter()
        .find(|t| **t == kind)
        .copied()
        .unwrap_or("custom")
}

/// Forwards what the global stream kept after `last`, a page at a time (at most what it
/// keeps).
async fn catch_up(bus: &Bus, remote: &Remote, last: &mut EventId) -> Result<(), RemoteError> {
    let mut forwarded = 0;
    while forwarded < bus.global_max {
        let page = bus
            .replay_redis(remote, &Scope::All, Some(*last), CATCH_UP_PAGE)
            .await?;
        let n = page.len();
        for event in page {
            if event.id > *last {
                *last = event.id;
                let _ = bus.tx.send(event);
            }
        }
        forwarded += n;
        if n < CATCH_UP_PAGE {
            break;
        }
    }
    Ok(())
}

/// This instance's one subscriber to the bus channel: forwards every event to the local
/// broadcast, once, in order. See the module's documentation.
pub async fn run_subscriber(bus: Arc<Bus>, mut shutdown: watch::Receiver<bool>) {
    let Some(remote) = bus.remote.clone() else {
        return;
    };
    let mut last = bus.started;
    let mut backoff = Duration::from_millis(100);
    loop {
        let connected = tokio::time::timeout(Duration::from_secs(2), async {
            let mut pubsub = remote.client().get_async_pubsub().await?;
            pubsub.subscribe(&bus.channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await;
        if let Ok(Ok(pubsub)) = connected {
            backoff = Duration::from_millis(100);
            let mut messages = pubsub.into_on_message();
            // Subscribed first, then what the stream kept since the last event forwarded:
            // nothing falls between the two, and what both bring is forwarded once.
            match catch_up(&bus, &remote, &mut last).await {
                Ok(()) => {
                    bus.live.store(true, Ordering::Release);
                    tracing::info!("subscribed to the event bus");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "event bus catch-up failed; reconnecting");
                    if stopping(&mut shutdown, backoff).await {
                        return;
                    }
                    continue;
                }
            }
            let mut ping = tokio::time::interval(PING_EVERY);
            ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Every message counts as a sign of life, the subscriber's own pings included: a
            // connection that died without closing hears nothing, and is replaced.
            let mut last_heard = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    msg = messages.next() => match msg {
                        None => break,
                        Some(msg) => {
                            last_heard = tokio::time::Instant::now();
                            let payload = msg.get_payload_bytes();
                            if payload == PING.as_bytes() {
                                continue;
                            }
                            match std::str::from_utf8(payload).ok().and_then(BusEvent::parse) {
                                Some(event) if event.id > last => {
                                    last = event.id;
                                    bus.forward(event);
                                }
                                Some(_) => {}
                                None => tracing::warn!("ignoring a malformed bus message"),
                            }
                        }
                    },
                    _ = ping.tick() => {
                        if last_heard.elapsed() > SUBSCRIPTION_SILENCE {
                            break;
                        }
                        let mut conn = remote.connection();
                        let _: Result<i64, _> = remote
                            .run_within(REDIS_TIMEOUT, redis::cmd("PUBLISH").arg(&bus.channel).arg(PING).query_async(&mut conn))
                            .await;
                    }
                    _ = shutdown.changed() => return,
                }
            }
            bus.live.store(false, Ordering::Release);
            tracing::warn!("event bus subscription lost; reconnecting");
        }
        if stopping(&mut shutdown, backoff).await {
            return;
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
