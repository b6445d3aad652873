//! Generations: the in-process mirror of the generation numbers that stamp every cache entry,
//! backed by Redis when it is configured.
//!
//! A reader reads a generation before it reads the database; a writer commits, then sets a new
//! random generation (in Redis and here) and publishes it. An entry filled from an old read
//! carries an old generation, and nobody accepts it again.
//!
//! Ordering: Redis runs each bump (set, delete, publish) as one script, and pub/sub delivers
//! messages in the order the scripts ran. An instance that bumped a key ignores other
//! instances' values for it until its own message comes back (anything before it is older),
//! so that every mirror converges on the value Redis holds.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use moka::ops::compute::{CompResult, Op};
use moka::sync::Cache;
use serde::{Deserialize, Serialize};

use super::keys::{GenKey, Kind};
use super::remote::Remote;

/// Generations mirrored in process at most (others are fetched again from Redis).
const MIRROR_CAPACITY: u64 = 1 << 20;
/// Generations reconfirmed per Redis call.
const RECONFIRM_BATCH: usize = 500;
/// Bumps kept while Redis is unreachable; past this many, every kind is invalidated instead.
const PENDING_MAX: usize = 10_000;

/// An invalidation message on the Redis channel.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Message {
    /// The instance that sent it.
    #[serde(rename = "o")]
    pub origin: u64,
    /// New generations.
    #[serde(rename = "g", default)]
    pub gens: Vec<(GenKey, u64)>,
    /// Drop every mirrored generation (and with them every tier-1 entry).
    #[serde(rename = "f", default)]
    pub flush: bool,
}

/// Changes that could not reach Redis, replayed when it answers again.
#[derive(Default)]
struct Pending {
    gens: HashSet<GenKey>,
    deletes: HashSet<String>,
    /// Too many to keep: invalidate every kind on replay.
    overflow: bool,
    /// Generations made up here while Redis was unreachable (dropped from the mirror on
    /// replay, so that they are read from Redis again).
    local_only: HashSet<GenKey>,
}

pub struct Generations {
    mirror: Cache<GenKey, u64>,
    remote: Option<Arc<Remote>>,
    origin: u64,
    pending: Mutex<Pending>,
    diverged: AtomicBool,
    /// Keys this instance bumped whose own message has not come back yet, with the value.
    awaiting_echo: Mutex<HashMap<GenKey, u64>>,
    /// Counts flushes: a fetch that raced one is not cached (its reply may predate whatever
    /// made the flush necessary). A message that raced a fetch needs no counter: the fetch
    /// inserts only where the mirror is still empty.
    flushes: AtomicU64,
    mirror_ttl: Duration,
    /// Counts every change to the mirror by a bump, a message or a flush (under the
    /// `awaiting_echo` lock): a reconfirmation that raced one keeps nothing.
    changes: AtomicU64,
}

impl Generations {
    /// `mirror_ttl` bounds how long a mirrored generation is trusted without Redis confirming
    /// it (the tier-1 maximum age), so a lost message costs no more than that.
    pub fn new(remote: Option<Arc<Remote>>, mirror_ttl: Duration) -> Generations {
        let mirror_ttl = mirror_ttl.max(Duration::from_secs(1));
        Generations {
            mirror: Cache::builder()
                .max_capacity(MIRROR_CAPACITY)
                .time_to_live(mirror_ttl)
                .build(),
            mirror_ttl,
            remote,
            origin: rand::random(),
            pending: Mutex::new(Pending::default()),
            diverged: AtomicBool::new(false),
            awaiting_echo: Mutex::new(HashMap::new()),
            flushes: AtomicU64::new(0),
            changes: AtomicU64::new(0),
        }
    }

    pub fn origin(&self) -> u64 {
        self.origin
    }

    /// A message that carries nothing: sent periodically so that every subscriber can tell a
    /// live subscription from a silently dead one.
    pub fn heartbeat(&self) -> String {
        serde_json::to_string(&Message {
            origin: self.origin,
            gens: Vec::new(),
            flush: false,
        })
        .expect("messages serialise")
    }

    fn flush_count(&self) -> u64 {
        self.flushes.load(Ordering::Acquire)
    }

    /// Whether every dependency is current by the mirror alone.
    pub fn all_current_locally(&self, deps: &[(GenKey, u64)]) -> bool {
        deps.iter().all(|(k, v)| self.mirror.get(k) == Some(*v))
    }

    fn usable_remote(&self) -> Option<&Arc<Remote>> {
        self.remote.as_ref().filter(|r| r.breaker.is_closed())
    }

    /// The current generations of `keys`: mirrored ones at once, the others from Redis (which
    /// creates those it lacks) or, without Redis, created here. With `confirm`, every key is
    /// read from Redis (used while invalidations may not be reaching this instance).
    pub async fn current(&self, keys: &[GenKey], confirm: bool) -> Vec<u64> {
        let mut out: Vec<Option<u64>> = if confirm && self.usable_remote().is_some() {
            vec![None; keys.len()]
        } else {
            keys.iter().map(|k| self.mirror.get(k)).collect()
        };
        let missing: Vec<usize> = (0..keys.len()).filter(|i| out[*i].is_none()).collect();
        if missing.is_empty() {
            return out.into_iter().map(Option::unwrap_or_default).collect();
        }
        let (fetch, keep_local): (Vec<usize>, Vec<usize>) = {
            let pending = self.pending.lock().expect("not poisoned");
            missing
                .into_iter()
                .partition(|i| !pending.gens.contains(&keys[*i]))
        };
        // Bumps Redis has not heard of yet: only the local value is right.
        for i in keep_local {
            out[i] = Some(self.local_value(&keys[i]));
        }
        if !fetch.is_empty() {
            match self.usable_remote() {
                Some(remote) => {
                    let wanted: Vec<GenKey> = fetch.iter().map(|i| keys[*i].clone()).collect();
                    let before = self.flush_count();
                    match remote.generations(&wanted).await {
                        Ok(values) => {
                            // Cache only if no flush happened meanwhile, and only where the
                            // mirror is still empty (a message may have brought a newer value).
                            let cacheable = self.flush_count() == before;
                            for (n, i) in fetch.into_iter().enumerate() {
                                let v = values[n];
                                out[i] = Some(if cacheable {
                                    self.mirror.entry(keys[i].clone()).or_insert(v).into_value()
                                } else {
                                    v
                                });
                            }
                        }
                        // Unknown for now: a throwaway value matches nothing stored, and is
                        // not remembered.
                        Err(_) => {
                            for i in fetch {
                                out[i] = Some(rand::random());
                            }
                        }
                    }
                }
                None if self.remote.is_some() => {
                    // Redis unreachable: decide locally (stable while it lasts), and read it
                    // from Redis again once it is back.
                    self.diverged.store(true, Ordering::Release);
                    let mut pending = self.pending.lock().expect("not poisoned");
                    for i in fetch {
                        pending.local_only.insert(keys[i].clone());
                        out[i] = Some(self.local_value(&keys[i]));
                    }
                }
                None => {
                    for i in fetch {
                        out[i] = Some(self.local_value(&keys[i]));
                    }
                }
            }
        }
        out.into_iter().map(Option::unwrap_or_default).collect()
    }

    fn local_value(&self, key: &GenKey) -> u64 {
        self.mirror
            .entry(key.clone())
            .or_insert_with(rand::random)
            .into_value()
    }

    /// Gives each key a new generation here, then in Redis with `delete` (Redis key names) and a
    /// message to every other instance. Without Redis reachable, the change is kept and replayed
    /// when it returns.
    pub async fn bump(&self, keys: &[GenKey], delete: &[String]) {
        let gens: Vec<(GenKey, u64)> = keys.iter().map(|k| (k.clone(), rand::random())).collect();
        let usable = self.usable_remote().cloned();
        {
            let mut awaiting = self.awaiting_echo.lock().expect("not poisoned");
            self.changes.fetch_add(1, Ordering::AcqRel);
            if usable.is_some() {
                // Before the mirror changes, so that no older message from another instance
                // can overwrite the new value in between.
                for (k, v) in &gens {
                    awaiting.insert(k.clone(), *v);
                }
            }
        }
        for (k, v) in &gens {
            self.mirror.insert(k.clone(), *v);
        }
        let Some(remote) = &self.remote else {
            return;
        };
        let sent = match usable {
            Some(remote) => {
                let message = Message {
                    origin: self.origin,
                    gens: gens.clone(),
                    flush: false,
                };
                let text = serde_json::to_string(&message).expect("messages serialise");
                let ok = remote.bump(&gens, delete, &text).await.is_ok();
                if !ok {
                    let mut awaiting = self.awaiting_echo.lock().expect("not poisoned");
                    for (k, v) in &gens {
                        if awaiting.get(k) == Some(v) {
                            awaiting.remove(k);
                        }
                    }
                }
                ok
            }
            None => false,
        };
        if !sent {
            tracing::debug!(
                channel = remote.channel(),
                "invalidation kept until Redis answers"
            );
            self.diverged.store(true, Ordering::Release);
            let mut pending = self.pending.lock().expect("not poisoned");
            if pending.gens.len() + keys.len() > PENDING_MAX {
                pending.overflow = true;
            } else {
                pending.gens.extend(keys.iter().cloned());
            }
            pending.deletes.extend(delete.iter().cloned());
        }
    }

    /// Applies a message from the channel (this instance's own included, as the echo that
    /// confirms its bump). Returns whether it came from another instance.
    pub fn apply(&self, message: &Message) -> bool {
        if message.gens.is_empty() && !message.flush {
            // A heartbeat: proof that the subscription is alive, nothing to apply.
            return false;
        }
        let mine = message.origin == self.origin;
        if message.flush && !mine {
            self.flush();
        }
        {
            let mut awaiting = self.awaiting_echo.lock().expect("not poisoned");
            self.changes.fetch_add(1, Ordering::AcqRel);
            for (k, v) in &message.gens {
                if mine {
                    if awaiting.get(k) == Some(v) {
                        awaiting.remove(k);
                    }
                } else if !awaiting.contains_key(k) {
                    // While our own bump of `k` is in flight, anything from others that
                    // arrives first ran before it in Redis: older than ours.
                    self.mirror.insert(k.clone(), *v);
                }
            }
        }
        !mine
    }

    /// Forgets every mirrored generation: every tier-1 entry becomes invalid at once.
    pub fn flush(&self) {
        // Under the lock, so that a reconfirmation either finishes before (and what it kept
        // is forgotten here) or sees the change and keeps nothing.
        let mut awaiting = self.awaiting_echo.lock().expect("not poisoned");
        self.changes.fetch_add(1, Ordering::AcqRel);
        self.mirror.invalidate_all();
        awaiting.clear();
        self.flushes.fetch_add(1, Ordering::AcqRel);
    }

    /// How often [`Generations::reconfirm_all`] should run: three times per time to live, so
    /// that a generation Redis still holds is confirmed before it ages out of the mirror.
    pub fn reconfirm_every(&self) -> Duration {
        self.mirror_ttl / 3
    }

    /// Reconfirms every mirrored generation with Redis, in batches. Returns how many were
    /// confirmed unchanged, and how many were mirrored.
    pub async fn reconfirm_all(&self) -> (usize, usize) {
        let keys: Vec<GenKey> = self.mirror.iter().map(|(k, _)| GenKey::clone(&k)).collect();
        let mut confirmed = 0;
        for batch in keys.chunks(RECONFIRM_BATCH) {
            confirmed += self.reconfirm(batch).await;
        }
        (confirmed, keys.len())
    }

    /// Reads mirrored generations from Redis again, so that a tier-1 entry that depends on them
    /// may be trusted for another maximum age: where nothing changed the mirror meanwhile, it
    /// takes Redis's value (the same, now confirmed, with a fresh time to live; or a newer one
    /// this instance missed). Keys no longer mirrored, bumped here and not yet echoed, or
    /// waiting to be replayed to Redis are left alone. Returns how many keys were confirmed
    /// unchanged.
    pub async fn reconfirm(&self, keys: &[GenKey]) -> usize {
        let Some(remote) = self.usable_remote() else {
            return 0;
        };
        let changes = self.changes.load(Ordering::Acquire);
        let before: Vec<Option<u64>> = keys.iter().map(|k| self.mirror.get(k)).collect();
        let Ok(values) = remote.generations(keys).await else {
            return 0;
        };
        // Under the lock every bump, message and flush takes to change the mirror: nothing can
        // slip between the check and the update.
        let awaiting = self.awaiting_echo.lock().expect("not poisoned");
        if self.changes.load(Ordering::Acquire) != changes {
            return 0;
        }
        let pending = self.pending.lock().expect("not poisoned");
        let mut confirmed = 0;
        for ((key, value), before) in keys.iter().zip(values).zip(before) {
            let Some(before) = before else {
                continue;
            };
            if awaiting.contains_key(key)
                || pending.gens.contains(key)
                || pending.local_only.contains(key)
            {
                continue;
            }
            let result = self
                .mirror
                .entry(key.clone())
                .and_compute_with(|current| match current {
                    Some(e) if *e.value() == before => Op::Put(value),
                    _ => Op::Nop,
                });
            if matches!(result, CompResult::ReplacedWith(_)) && value == before {
                confirmed += 1;
            }
        }
        confirmed
    }

    /// Called on every successful probe: replays what Redis missed and forgets what was
    /// decided locally meanwhile. Returns whether anything had diverged.
    pub async fn reconcile(&self) -> bool {
        if self.usable_remote().is_none() || !self.diverged.swap(false, Ordering::AcqRel) {
            return false;
        }
        let pending = std::mem::take(&mut *self.pending.lock().expect("not poisoned"));
        let deletes: Vec<String> = pending.deletes.into_iter().collect();
        let gens: Vec<GenKey> = if pending.overflow {
            Kind::ALL.iter().map(|k| GenKey::Kind(*k)).collect()
        } else {
            pending.gens.into_iter().collect()
        };
        for key in &pending.local_only {
            self.mirror.invalidate(key);
        }
        let mut first = true;
        for chunk in gens.chunks(256) {
            let del: &[String] = if first { &deletes } else { &[] };
            first = false;
            self.bump(chunk, del).await;
        }
        if first && !deletes.is_empty() {
            self.bump(&[], &deletes).await;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn gens() -> Generations {
        Generations::new(None, Duration::from_secs(60))
    }

    #[tokio::test]
    async fn local_generations_are_stable_until_bumped() {
        let g = gens();
        let k = GenKey::Lead(Uuid::new_v4());
        let a = g.current(std::slice::from_ref(&k), false).await[0];
        assert_eq!(g.current(std::slice::from_ref(&k), false).await[0], a);
        g.bump(std::slice::from_ref(&k), &[]).await;
        let b = g.current(std::slice::from_ref(&k), false).await[0];
        assert_ne!(a, b);
        assert!(g.all_current_locally(&[(k.clone(), b)]));
        assert!(!g.all_current_locally(&[(k, a)]));
    }

    #[test]
    fn messages_from_others_apply_and_own_echoes_do_not_count() {
        let g = gens();
        let k = GenKey::Lead(Uuid::new_v4());
        let other = Message {
            origin: g.origin() ^ 1,
            gens: vec![(k.clone(), 7)],
            flush: false,
        };
        assert!(g.apply(&other));
        assert!(g.all_current_locally(&[(k.clone(), 7)]));
        let echo = Message {
            origin: g.origin(),
            gens: vec![(k.clone(), 9)],
            flush: false,
        };
        assert!(!g.apply(&echo));
    }

    #[test]
    fn while_awaiting_an_echo_older_messages_are_ignored() {
        let g = gens();
        let k = GenKey::Lead(Uuid::new_v4());
        g.mirror.insert(k.clone(), 2);
        g.awaiting_echo.lock().unwrap().insert(k.clone(), 2);
        // Another instance's bump that ran before ours.
        g.apply(&Message {
            origin: g.origin() ^ 1,
            gens: vec![(k.clone(), 1)],
            flush: false,
        });
        assert!(g.all_current_locally(&[(k.clone(), 2)]));
        // Our echo arrives: later values from others apply again.
        g.apply(&Message {
            origin: g.origin(),
            gens: vec![(k.clone(), 2)],
            flush: false,
        });
        g.apply(&Message {
            origin: g.origin() ^ 1,
            gens: vec![(k.clone(), 3)],
            flush: false,
        });
        assert!(g.all_current_locally(&[(k, 3)]));
    }

    #[test]
    fn a_flush_forgets_everything_and_is_counted() {
        let g = gens();
        let k = GenKey::Kind(Kind::Lead);
        g.mirror.insert(k.clone(), 1);
        let before = g.flush_count();
        g.flush();
        assert!(!g.all_current_locally(&[(k, 1)]));
        assert!(g.flush_count() > before);
    }
}
