//! Instances that know each other: heartbeats and the live list.
//!
//! Every `HEARTBEAT_INTERVAL_S` an instance writes its record (a key that lives three
//! intervals) and its beat (a sorted set scored by the time of the last beat), and in the same
//! script removes every instance whose last beat is older than three intervals. `ZREM` tells
//! which caller removed an id, so exactly one live instance publishes `instance.lost` for a
//! crashed one and fires `instance_lost`. A graceful stop removes its own record and beat at
//! once and publishes `instance.left`.
//!
//! Without Redis (or while its breaker is open) an instance knows only itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::Script;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::watch;

use crate::cache::{now_ms, Remote, RemoteError};
use crate::calls::model::types;
use crate::calls::{Bus, Event};

const REDIS_TIMEOUT: Duration = Duration::from_millis(500);
/// Beats missed before an instance is gone.
pub const MISSED_BEATS: u32 = 3;

/// KEYS: the live set, this instance's record, its "left" mark. ARGV: this instance's id, its record, now (ms),
/// the record's TTL (ms), the cut-off (ms): beats older are lost, this process's incarnation
/// (a restart under the same id is another one, and beats). Returns whether this beat
/// added the instance to the set, and the ids this call removed.
const BEAT_LUA: &str = r"
if redis.call('GET', KEYS[3]) == ARGV[6] then
  return {0, {}}
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[4])
local joined = redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[5])
local lost = {}
for _, id in ipairs(stale) do
  if id ~= ARGV[1] and redis.call('ZREM', KEYS[1], id) == 1 then
    table.insert(lost, id)
  end
end
return {joined, lost}
";

/// One instance as the list shows it (no personal data).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub instance_id: String,
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub draining: bool,
    /// `up`, `down` or `disabled`.
    pub redis: String,
    /// `up` or `down`.
    pub database: String,
    pub requests_per_s: f64,
    pub calls_active: i64,
}

/// What the record says about this instance's state now: cheap and synchronous.
pub type StateProbe = Box<dyn Fn() -> LocalState + Send + Sync>;

#[derive(Debug, Clone, Default)]
pub struct LocalState {
    pub redis: &'static str,
    pub database: &'static str,
    pub requests_per_s: f64,
    pub calls_active: i64,
}

pub struct Instances {
    remote: Option<Arc<Remote>>,
    bus: Arc<Bus>,
    started_at: DateTime<Utc>,
    interval: Duration,
    draining: AtomicBool,
    /// Set once this instance has left: no beat may bring it back.
    left: AtomicBool,
    /// Tells this process from a later one under the same `INSTANCE_ID`.
    incarnation: String,
    probe: StateProbe,
    beat: Script,
    /// Instances this one found lost, and when: the `instance_lost` alert holds while any is
    /// here (until it beats again, or for the alert hold).
    lost: Mutex<HashMap<String, i64>>,
    lost_hold_ms: i64,
}

impl Instances {
    pub fn new(
        remote: Option<Arc<Remote>>,
        bus: Arc<Bus>,
        interval: Duration,
        lost_hold: Duration,
        probe: StateProbe,
    ) -> Instances {
        Instances {
            remote,
            bus,
            started_at: Utc::now(),
            interval,
            draining: AtomicBool::new(false),
            left: AtomicBool::new(false),
            incarnation: uuid::Uuid::new_v4().to_string(),
            probe,
            beat: Script::new(BEAT_LUA),
            lost: Mutex::new(HashMap::new()),
            lost_hold_ms: lost_hold.as_millis().max(1000) as i64,
        }
    }

    pub fn id(&self) -> &str {
        self.bus.instance_id()
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Release);
    }

    fn live_key(remote: &Remote) -> String {
        remote.key("{instances}:live")
    }

    fn record_key(remote: &Remote, id: &str) -> String {
        remote.key(&format!("{{instances}}:record:{id}"))
    }

    /// Set by a graceful stop: a beat still on its way must not bring the instance back.
    fn left_key(remote: &Remote, id: &str) -> String {
        remote.key(&format!("{{instances}}:left:{id}"))
    }

    /// This instance's record as of now.
    pub fn own_record(&self) -> InstanceRecord {
        let state = (self.probe)();
        InstanceRecord {
            instance_id: self.id().to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: self.started_at,
            last_seen: Utc::now(),
            draining: self.is_draining(),
            redis: state.redis.to_string(),
            database: state.database.to_string(),
            requests_per_s: state.requests_per_s,
            calls_active: state.calls_active,
        }
    }

    /// Whether the others can be known: Redis is there and answering.
    fn shared(&self) -> Option<&Arc<Remote>> {
        self.remote.as_ref().filter(|r| r.breaker.is_closed())
    }

    /// Every live instance, and whether the list is shared (`false`: this instance alone,
    /// Redis being absent or down).
    pub async fn live(&self) -> (Vec<InstanceRecord>, bool) {
        if let Some(remote) = self.shared() {
            match self.live_from(remote).await {
                Ok(mut records) => {
                    // This instance, as it is now (its last beat may be seconds old).
                    let own = self.own_record();
                    match records
                        .iter_mut()
                        .find(|r| r.instance_id == own.instance_id)
                    {
                        Some(r) => *r = own,
                        None => records.push(own),
                    }
                    records.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
                    return (records, true);
                }
                Err(e) => tracing::debug!(error = %e, "instance list from this instance alone"),
            }
        }
        (vec![self.own_record()], false)
    }

    async fn live_from(&self, remote: &Remote) -> Result<Vec<InstanceRecord>, RemoteError> {
        let cutoff = now_ms() - self.gone_after().as_millis() as i64;
        let mut conn = remote.connection();
        let ids: Vec<String> = remote
            .run_within(
                REDIS_TIMEOUT,
                redis::cmd("ZRANGEBYSCORE")
                    .arg(Self::live_key(remote))
                    .arg(cutoff)
                    .arg("+inf")
                    .query_async(&mut conn),
            )
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| Self::record_key(remote, id)).collect();
        let records: Vec<Option<String>> = remote
            .run_within(
                REDIS_TIMEOUT,
                redis::cmd("MGET").arg(&keys).query_async(&mut conn),
            )
            .await?;
        Ok(records
            .into_iter()
            .flatten()
            .filter_map(|json| serde_json::from_str(&json).ok())
            .collect())
    }

    fn gone_after(&self) -> Duration {
        self.interval * MISSED_BEATS
    }

    /// One beat: writes the record, and publishes `instance.lost` for every instance this beat
    /// found gone.
    pub async fn beat(&self) -> Result<(), RemoteError> {
        let Some(remote) = &self.remote else {
            return Ok(());
        };
        if self.left.load(Ordering::Acquire) {
            return Ok(());
        }
        let record = serde_json::to_string(&self.own_record()).expect("a record serialises");
        let now = now_ms();
        let gone_after = self.gone_after().as_millis() as i64;
        let mut invocation = self.beat.prepare_invoke();
        invocation
            .key(Self::live_key(remote))
            .key(Self::record_key(remote, self.id()))
            .key(Self::left_key(remote, self.id()))
            .arg(self.id())
            .arg(record)
            .arg(now)
            .arg(gone_after)
            .arg(now - gone_after)
            .arg(&self.incarnation);
        let mut conn = remote.connection();
        let (joined, lost): (i64, Vec<String>) = remote
            .run_within(REDIS_TIMEOUT, invocation.invoke_async(&mut conn))
            .await?;
        if joined == 1 {
            self.publish(types::INSTANCE_JOINED, self.id()).await;
        }
        for id in lost {
            tracing::warn!(instance = %id, "an instance stopped beating without leaving");
            self.lost
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(id.clone(), now);
            self.publish(types::INSTANCE_LOST, &id).await;
        }
        self.forget_lost(remote).await;
        Ok(())
    }

    /// Lost instances leave the alert when they beat again, or after the alert hold.
    async fn forget_lost(&self, remote: &Remote) {
        let ids: Vec<String> = {
            let now = now_ms();
            let mut lost = self.lost.lock().unwrap_or_else(PoisonError::into_inner);
            lost.retain(|_, at| now - *at < self.lost_hold_ms);
            lost.keys().cloned().collect()
        };
        if ids.is_empty() {
            return;
        }
        if let Ok(live) = self.live_from(remote).await {
            let mut lost = self.lost.lock().unwrap_or_else(PoisonError::into_inner);
            for record in live {
                lost.remove(&record.instance_id);
            }
        }
    }

    /// How many instances this one found lost recently, and since when (for the alert).
    pub fn lost_now(&self) -> Option<(usize, i64)> {
        let now = now_ms();
        let mut lost = self.lost.lock().unwrap_or_else(PoisonError::into_inner);
        lost.retain(|_, at| now - *at < self.lost_hold_ms);
        let since = lost.values().min().copied()?;
        Some((lost.len(), since))
    }

    async fn publish(&self, kind: &str, id: &str) {
        let event = Event::new(kind, None, self.id(), json!({"instance_id": id}));
        self.bus.publish(event).await;
    }

    /// A graceful stop: gone from the list at once, and `instance.left` published.
    pub async fn leave(&self) {
        self.left.store(true, Ordering::Release);
        if let Some(remote) = &self.remote {
            let mut conn = remote.connection();
            let mut pipe = redis::pipe();
            let mark_for = (self.gone_after().as_millis() as u64).max(1000);
            pipe.set_options(
                Self::left_key(remote, self.id()),
                &self.incarnation,
                redis::SetOptions::default().with_expiration(redis::SetExpiry::PX(mark_for)),
            )
            .ignore()
            .zrem(Self::live_key(remote), self.id())
            .del(Self::record_key(remote, self.id()));
            let left: Result<(i64, i64), _> = remote
                .run_within(REDIS_TIMEOUT, pipe.query_async(&mut conn))
                .await;
            if let Err(e) = left {
                tracing::warn!(error = %e, "could not leave the instance list; the others will find this instance lost");
            }
        }
        self.publish(types::INSTANCE_LEFT, self.id()).await;
    }

    /// Beats every interval until shutdown.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut every = tokio::time::interval(self.interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {
                    if let Err(e) = self.beat().await {
                        tracing::debug!(error = %e, "heartbeat not written");
                    }
                    crate::monitoring::metrics::instances_live(self.live().await.0.len());
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
