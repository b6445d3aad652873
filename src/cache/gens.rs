//! Generations: the in-process mirror of the generation numbers that stamp every cache entry,
//! backed by Redis when it is configured.
//!
//! A reader reads a generation before it reads the database; a writer commits, then sets a new
//! random generation (in Redis and here) and publishes it. An entry filled from an old read
//! carries an old generation, and nobody accepts it again.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use moka::sync::Cache;
use serde::{Deserialize, Serialize};

use super::keys::GenKey;
use super::remote::Remote;

/// Generations mirrored in process at most (older ones are fetched again from Redis).
const MIRROR_CAPACITY: u64 = 262_144;
/// A mirrored generation is re-read from Redis after this long, so that a missed message
/// heals even if no reconnect was noticed.
const MIRROR_TTL: Duration = Duration::from_secs(600);
/// Bumps made while Redis was unreachable, replayed when it returns; past this many, every
/// generation is flushed instead.
const PENDING_MAX: usize = 10_000;

/// An invalidation message on the Redis channel.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Message {
    /// The instance that sent it (it has applied it already).
    #[serde(rename = "o")]
    pub origin: u64,
    /// New generations.
    #[serde(rename = "g", default)]
    pub gens: Vec<(GenKey, u64)>,
    /// Drop every mirrored generation (and with them every tier-1 entry).
    #[serde(rename = "f", default)]
    pub flush: bool,
}

pub struct Generations {
    mirror: Cache<GenKey, u64>,
    remote: Option<Arc<Remote>>,
    origin: u64,
    /// Generations bumped, and Redis keys to delete, while Redis was unreachable.
    pending: Mutex<(HashSet<GenKey>, HashSet<String>)>,
    /// Set when something was decided locally while Redis was unreachable.
    diverged: std::sync::atomic::AtomicBool,
}

impl Generations {
    pub fn new(remote: Option<Arc<Remote>>) -> Generations {
        Generations {
            mirror: Cache::builder()
                .max_capacity(MIRROR_CAPACITY)
                .time_to_live(MIRROR_TTL)
                .build(),
            remote,
            origin: rand::random(),
            pending: Mutex::new((HashSet::new(), HashSet::new())),
            diverged: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn origin(&self) -> u64 {
        self.origin
    }

    /// The mirrored generation, without waiting (tier-1 validation).
    pub fn mirrored(&self, key: &GenKey) -> Option<u64> {
        self.mirror.get(key)
    }

    /// Whether every dependency is current by the mirror alone.
    pub fn all_current_locally(&self, deps: &[(GenKey, u64)]) -> bool {
        deps.iter().all(|(k, v)| self.mirror.get(k) == Some(*v))
    }

    fn usable_remote(&self) -> Option<&Arc<Remote>> {
        self.remote.as_ref().filter(|r| r.breaker.is_closed())
    }

    /// The current generations of `keys`: mirrored ones at once, the others from Redis (which
    /// creates those it lacks) or, without Redis, created here.
    pub async fn current(&self, keys: &[GenKey]) -> Vec<u64> {
        let mut out: Vec<Option<u64>> = keys.iter().map(|k| self.mirror.get(k)).collect();
        let missing: Vec<usize> = (0..keys.len()).filter(|i| out[*i].is_none()).collect();
        if missing.is_empty() {
            return out.into_iter().map(|v| v.unwrap_or_default()).collect();
        }
        let wanted: Vec<GenKey> = missing.iter().map(|i| keys[*i].clone()).collect();
        let fetched = match self.usable_remote() {
            Some(remote) => remote.generations(&wanted).await.ok(),
            None => None,
        };
        if fetched.is_none() && self.remote.is_some() {
            self.diverged
                .store(true, std::sync::atomic::Ordering::Release);
        }
        for (n, i) in missing.into_iter().enumerate() {
            let key = &keys[i];
            // Insert only if absent: a message that arrived meanwhile carries a newer value.
            let value = match &fetched {
                Some(values) => {
                    let v = values[n];
                    self.mirror.entry(key.clone()).or_insert(v).into_value()
                }
                None => self
                    .mirror
                    .entry(key.clone())
                    .or_insert_with(rand::random)
                    .into_value(),
            };
            out[i] = Some(value);
        }
        out.into_iter().map(|v| v.unwrap_or_default()).collect()
    }

    /// Gives each key a new generation here, then in Redis with `delete` (Redis key names) and a
    /// message to every other instance. Without Redis reachable, the change is kept and replayed
    /// when it returns.
    pub async fn bump(&self, keys: &[GenKey], delete: &[String]) {
        let gens: Vec<(GenKey, u64)> = keys.iter().map(|k| (k.clone(), rand::random())).collect();
        for (k, v) in &gens {
            self.mirror.insert(k.clone(), *v);
        }
        let Some(remote) = &self.remote else {
            return;
        };
        let sent = match self.usable_remote() {
            Some(remote) => {
                let message = Message {
                    origin: self.origin,
                    gens: gens.clone(),
                    flush: false,
                };
                let text = serde_json::to_string(&message).expect("messages serialise");
                remote.bump(&gens, delete, &text).await.is_ok()
            }
            None => false,
        };
        if !sent {
            tracing::debug!(
                redis = remote.channel(),
                "invalidation kept until Redis returns"
            );
            self.diverged
                .store(true, std::sync::atomic::Ordering::Release);
            let mut pending = self.pending.lock().expect("not poisoned");
            pending.0.extend(keys.iter().cloned());
            pending.1.extend(delete.iter().cloned());
        }
    }

    /// Applies a message from another instance.
    pub fn apply(&self, message: &Message) -> bool {
        if message.origin == self.origin {
            return false;
        }
        if message.flush {
            self.mirror.invalidate_all();
        }
        for (k, v) in &message.gens {
            self.mirror.insert(k.clone(), *v);
        }
        true
    }

    /// Forgets every mirrored generation: every tier-1 entry becomes invalid at once.
    pub fn flush(&self) {
        self.mirror.invalidate_all();
    }

    /// Asks every instance (and this one) to flush.
    pub async fn broadcast_flush(&self) {
        self.flush();
        if let Some(remote) = self.usable_remote() {
            let message = Message {
                origin: self.origin,
                gens: Vec::new(),
                flush: true,
            };
            let text = serde_json::to_string(&message).expect("messages serialise");
            if remote.bump(&[], &[], &text).await.is_err() {
                self.diverged
                    .store(true, std::sync::atomic::Ordering::Release);
            }
        }
    }

    /// Called when Redis answers again: replays the bumps it missed and drops what was decided
    /// locally meanwhile. Returns whether anything had diverged.
    pub async fn reconcile(&self) -> bool {
        if !self
            .diverged
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            return false;
        }
        let (gens, deletes): (Vec<GenKey>, Vec<String>) = {
            let mut p = self.pending.lock().expect("not poisoned");
            (p.0.drain().collect(), p.1.drain().collect())
        };
        for chunk in deletes.chunks(256) {
            self.bump(&[], chunk).await;
        }
        if gens.len() > PENDING_MAX {
            self.broadcast_flush().await;
        } else {
            for chunk in gens.chunks(256) {
                self.bump(chunk, &[]).await;
            }
        }
        self.flush();
        true
    }
}
