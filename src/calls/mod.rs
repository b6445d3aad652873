//! Calls from ring to hang-up, and the event bus that tells everyone what happens to them.
//!
//! The initiation webhook hands each ring to [`Calls::ring`], which only queues it (bounded;
//! an overflow is counted and dropped, never waited for): a background writer creates or
//! updates the call in the [`CallBook`] and publishes `call.started` or `call.updated` on the
//! [`Bus`]. The post-call webhook ends or fails calls the same way. The calls API reads and
//! updates the book directly, so that a write it answers 2xx is seen by the next read on any
//! instance.

pub mod bus;
pub mod model;
pub mod store;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch, Mutex};

pub use bus::{Bus, BusEvent, Scope};
pub use model::{Call, CallStatus, Control, Event, EventId, Ring};
pub use store::{Backend, CallBook, Step, UpdateError, Updated};

use crate::monitoring::{metrics, CallsSummary};
use crate::supervise::Tasks;

/// Rings, ends and failures waiting for the writer; beyond this they are dropped and counted.
pub const QUEUE_CAPACITY: usize = 8192;
/// How many queued changes the writer applies at once.
const WRITERS: usize = 16;
/// How many queued changes the writer takes at a time.
const BATCH: usize = 64;
/// How often the calls of every instance are counted (`hotline_calls_active`).
const COUNT_EVERY: Duration = Duration::from_secs(5);
/// How often calls kept in memory during a Redis outage are offered back to Redis.
const WRITE_BACK_EVERY: Duration = Duration::from_millis(500);
/// How long a stopping instance keeps writing what is queued.
const DRAIN_AT_MOST: Duration = Duration::from_secs(3);

/// How the post-call webhook names a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallRef {
    Id(String),
    Conversation(String),
}

/// A change the webhooks queue for the writer.
#[derive(Debug, Clone)]
pub enum Work {
    Ring(Ring),
    /// `post_call_transcription`: ended, and linked to the conversation it recorded.
    End {
        call: CallRef,
        conversation_id: Option<String>,
    },
    /// `call_initiation_failure`.
    Fail {
        call: CallRef,
        reason: Option<String>,
    },
}

impl Work {
    /// What names the call this change is about (an id, or a conversation for a hang-up
    /// that names no id).
    fn call_key(&self) -> &str {
        match self {
            Work::Ring(ring) => &ring.call_id,
            Work::End { call, .. } | Work::Fail { call, .. } => match call {
                CallRef::Id(id) | CallRef::Conversation(id) => id,
            },
        }
    }
}

pub struct Calls {
    book: CallBook,
    bus: Arc<Bus>,
    queue: mpsc::Sender<Work>,
    receiver: Mutex<mpsc::Receiver<Work>>,
    active: AtomicI64,
    started_last_minute: AtomicI64,
    /// How many of the writer and the upkeep have finished their last work on shutdown.
    finished: watch::Sender<u8>,
}

impl Calls {
    pub fn new(book: CallBook, bus: Arc<Bus>) -> Calls {
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        Calls {
            book,
            bus,
            queue,
            receiver: Mutex::new(receiver),
            active: AtomicI64::new(0),
            started_last_minute: AtomicI64::new(0),
            finished: watch::channel(0).0,
        }
    }

    pub fn book(&self) -> &CallBook {
        &self.book
    }

    pub fn bus(&self) -> &Arc<Bus> {
        &self.bus
    }

    /// The figures the dashboard and `/api/monitoring/metrics` show, as last counted.
    pub fn counts(&self) -> CallsSummary {
        CallsSummary {
            active: self.active.load(Ordering::Relaxed),
            started_last_minute: self.started_last_minute.load(Ordering::Relaxed),
        }
    }

    /// Queues a change for the writer; never waits.
    pub fn queue(&self, work: Work) {
        if self.queue.try_send(work).is_err() {
            metrics::call_dropped();
            tracing::warn!("call change dropped: the call writer's queue is full");
        }
    }

    /// Starts the writer, the counter and the write-back, supervised.
    pub fn spawn(self: &Arc<Self>, tasks: &Tasks, shutdown: watch::Receiver<bool>) {
        let (calls, stop) = (self.clone(), shutdown.clone());
        tasks.spawn("call_writer", shutdown.clone(), move || {
            calls.clone().write(stop.clone())
        });
        let (calls, stop) = (self.clone(), shutdown.clone());
        tasks.spawn("call_upkeep", shutdown, move || {
            calls.clone().upkeep(stop.clone())
        });
    }

    async fn write(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut receiver = self.receiver.lock().await;
        loop {
            let mut batch = Vec::new();
            tokio::select! {
                n = receiver.recv_many(&mut batch, BATCH) => if n == 0 { return },
                _ = shutdown.changed() => break,
            }
            self.apply_batch(batch).await;
        }
        // Stopping: what is queued is written, for a little while.
        let mut rest = Vec::new();
        while let Ok(work) = receiver.try_recv() {
            rest.push(work);
        }
        let drained = self.apply_batch(rest);
        if tokio::time::timeout(DRAIN_AT_MOST, drained).await.is_err() {
            tracing::warn!("stopped before every queued call change was written");
        }
        self.finished.send_modify(|n| *n += 1);
    }

    /// Applies a batch: the changes of different calls at once, those of one call in the
    /// order they came (a ring before the hang-up that follows it).
    async fn apply_batch(&self, batch: Vec<Work>) {
        let mut by_call: Vec<(String, Vec<Work>)> = Vec::new();
        for work in batch {
            let key = work.call_key().to_string();
            match by_call.iter_mut().find(|(k, _)| *k == key) {
                Some((_, works)) => works.push(work),
                None => by_call.push((key, vec![work])),
            }
        }
        futures_util::stream::iter(by_call)
            .for_each_concurrent(WRITERS, |(_, works)| async move {
                for work in works {
                    self.apply(work).await;
                }
            })
            .await;
    }

    async fn upkeep(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut count = tokio::time::interval(COUNT_EVERY);
        let mut write_back = tokio::time::interval(WRITE_BACK_EVERY);
        loop {
            tokio::select! {
                _ = count.tick() => self.count().await,
                _ = write_back.tick() => {
                    if self.book.pending_count() > 0 {
                        match self.book.write_back().await {
                            Ok(0) => {}
                            Ok(n) => tracing::info!(calls = n, "calls kept in memory during a redis outage written back"),
                            Err(e) => tracing::debug!(error = %e, "calls not written back yet"),
                        }
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
        // Stopping: what memory holds goes back to Redis, if it answers now.
        if self.book.pending_count() > 0 {
            match tokio::time::timeout(DRAIN_AT_MOST, self.book.write_back()).await {
                Ok(Ok(n)) => tracing::info!(calls = n, "calls kept in memory written back on stop"),
                _ => tracing::warn!(
                    calls = self.book.pending_count(),
                    "stopped with calls only this instance held; they are lost"
                ),
            }
        }
        self.finished.send_modify(|n| *n += 1);
    }

    /// Waits (at most `within`) for the writer and the upkeep to finish their last work after
    /// shutdown began.
    pub async fn stopped(&self, within: Duration) {
        let mut finished = self.finished.subscribe();
        if tokio::time::timeout(within, finished.wait_for(|n| *n >= 2))
            .await
            .is_err()
        {
            tracing::warn!("stopped before the call writer finished");
        }
    }

    /// Counts the calls of every instance (two sorted sets in Redis, not a read of every call).
    pub async fn count(&self) {
        let (active, recent) = self.book.counts().await;
        self.active.store(active, Ordering::Relaxed);
        self.started_last_minute.store(recent, Ordering::Relaxed);
        metrics::calls_active(active);
    }

    /// Applies one queued change and publishes what it did.
    pub async fn apply(&self, work: Work) {
        let instance = self.bus.instance_id().to_string();
        match work {
            Work::Ring(ring) => {
                let updated = self
                    .book
                    .create_or_update(ring.start(&instance), |current| {
                        Ok::<_, std::convert::Infallible>(Step::Write(match current {
                            None => ring.start(&instance),
                            Some(mut call) => {
                                ring.apply(&mut call);
                                call.updated_at = Utc::now();
                                call
                            }
                        }))
                    })
                    .await;
                let updated = match updated {
                    Ok(updated) => updated,
                    Err(e) => {
                        tracing::warn!(error = ?e, "a ringing call was not recorded");
                        return;
                    }
                };
                if updated.before.is_none() {
                    metrics::call_started();
                }
                let kind = if updated.before.is_none() {
                    model::types::CALL_STARTED
                } else {
                    model::types::CALL_UPDATED
                };
                self.announce(kind, updated.written).await;
            }
            Work::End {
                call,
                conversation_id,
            } => {
                let Some(id) = self.resolve(&call).await else {
                    return;
                };
                let updated = self
                    .finish(
                        &id,
                        CallStatus::Ended,
                        matches!(call, CallRef::Id(_)),
                        |call| {
                            if let Some(c) = &conversation_id {
                                call.conversation_id = Some(c.clone());
                            }
                        },
                    )
                    .await;
                self.announce(model::types::CALL_ENDED, updated).await;
            }
            Work::Fail { call, reason } => {
                let Some(id) = self.resolve(&call).await else {
                    return;
                };
                let updated = self
                    .finish(
                        &id,
                        CallStatus::Failed,
                        matches!(call, CallRef::Id(_)),
                        |call| {
                            if reason.is_some() {
                                call.failure_reason = reason.clone();
                            }
                        },
                    )
                    .await;
                self.announce(model::types::CALL_FAILED, updated).await;
            }
        }
    }

    async fn resolve(&self, call: &CallRef) -> Option<String> {
        match call {
            CallRef::Id(id) => Some(id.clone()),
            CallRef::Conversation(c) => self.book.by_conversation(c).await,
        }
    }

    /// Moves a call to `status` (once: a call already ended or failed is left). A call not
    /// known (its ring not written yet, or written to another instance's memory during a
    /// Redis outage) is recorded as over when `record_unknown`: ElevenLabs sends each post-call
    /// event once, and a ring written later keeps the status it finds.
    pub async fn finish(
        &self,
        id: &str,
        status: CallStatus,
        record_unknown: bool,
        also: impl Fn(&mut Call),
    ) -> Option<Call> {
        let instance = self.bus.instance_id();
        let updated = self
            .book
            .update(id, |current| {
                let now = Utc::now();
                let mut call = match current {
                    Some(call) if call.status == CallStatus::Active => call,
                    Some(_) => return Ok::<_, std::convert::Infallible>(Step::Leave),
                    None if record_unknown => Ring {
                        call_id: id.to_string(),
                        organization_id: None,
                        lead_id: None,
                        agent_id: None,
                        caller_phone: String::new(),
                        called_number: String::new(),
                        conversation_id: None,
                        answer_source: "",
                        at: now,
                    }
                    .start(instance),
                    None => return Ok(Step::Leave),
                };
                call.status = status;
                call.ended_at = Some(now);
                call.updated_at = now;
                also(&mut call);
                Ok(Step::Write(call))
            })
            .await;
        let updated = match updated {
            Ok(updated) => updated,
            Err(e) => {
                tracing::warn!(error = ?e, "a call's end was not recorded");
                return None;
            }
        };
        if updated.written.is_some() {
            metrics::call_ended(status.as_str());
        }
        updated.written
    }

    /// Publishes a call event with the call as its data.
    pub async fn announce(&self, kind: &str, call: Option<Call>) -> Option<Event> {
        let call = call?;
        let data = serde_json::to_value(&call).expect("a call serialises");
        Some(
            self.bus
                .publish(Event::new(
                    kind,
                    Some(&call.call_id),
                    self.bus.instance_id(),
                    data,
                ))
                .await,
        )
    }

    /// Lists calls of every instance: newest first, filtered, at most `limit`, with the total.
    pub async fn list(&self, filter: &Filter, limit: usize) -> (Vec<Call>, usize, Backend) {
        let (mut calls, backend) = self.book.all().await;
        calls.retain(|c| filter.matches(c));
        calls.sort_by(|a, b| {
            b.started_at
                .cmp(&a.started_at)
                .then_with(|| b.call_id.cmp(&a.call_id))
        });
        let count = calls.len();
        calls.truncate(limit);
        (calls, count, backend)
    }
}

/// The filters of `GET /api/calls`.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub status: Option<CallStatus>,
    pub organization_id: Option<uuid::Uuid>,
    pub lead_id: Option<uuid::Uuid>,
    pub since: Option<DateTime<Utc>>,
}

impl Filter {
    pub fn matches(&self, call: &Call) -> bool {
        self.status.is_none_or(|s| call.status == s)
            && self
                .organization_id
                .is_none_or(|o| call.organization_id == Some(o))
            && self.lead_id.is_none_or(|l| call.lead_id == Some(l))
            && self.since.is_none_or(|t| call.started_at >= t)
    }
}
