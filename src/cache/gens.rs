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

use serde::{Deserialize, Serialize};

use super::keys::{GenKey, Kind};
use super::mirror::Mirror;
use super::remote::Remote;

/// Generations reconfirmed per Redis call.
const RECONFIRM_BATCH: usize = 500;
/// Changes kept while Redis is unreachable; past this many, every kind is invalidated instead.
const PENDING_MAX: usize = 10_000;
/// Generations (and deletions) replayed per Redis script.
const REPLAY_CHUNK: usize = 256;

/// An invalidation message on the Redis channel.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Message {
    /// The instance that sent it.
    #[serde(rename = "o")]
    pub origin: u64,
    /// New generations.
    #[serde(rename = "g", default)]
    pub gens: Vec<(GenKey, u64)>,
    /// Generations removed from Redis (they named a deleted row).
    #[serde(rename = "r", default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<GenKey>,
    /// Drop every mirrored generation (and with them every tier-1 entry).
    #[serde(rename = "f", default)]
    pub flush: bool,
}

/// Changes that could not reach Redis, replayed when it answers again. Bounded: past
/// [`PENDING_MAX`] keys it degrades to "every kind" (and, for deletions, to purging every lead's
/// cached data), which costs misses but loses nothing.
#[derive(Default, Clone)]
struct Pending {
    gens: HashSet<GenKey>,
    /// Generations to remove from Redis (they named a deleted row).
    removed: HashSet<GenKey>,
    /// Redis keys to delete.
    deletes: HashSet<String>,
    /// Too many generations to keep: invalidate every kind on replay.
    overflow: bool,
    /// Too many deletions to keep: purge every lead's cached data on replay.
    purge: bool,
    /// Generations made up here while Redis was unreachable (dropped from the mirror on
    /// replay, so that they are read from Redis again).
    local_only: HashSet<GenKey>,
    /// Too many of those to list: the whole mirror is dropped on replay.
    local_overflow: bool,
}

impl Pending {
    /// Whether a change made here has not reached Redis yet.
    fn owes_redis(&self) -> bool {
        !self.gens.is_empty()
            || !self.removed.is_empty()
            || !self.deletes.is_empty()
            || self.overflow
            || self.purge
    }

    fn is_empty(&self) -> bool {
        !self.owes_redis() && self.local_only.is_empty() && !self.local_overflow
    }

    fn keeps_local(&self, key: &GenKey) -> bool {
        self.gens.contains(key) || self.removed.contains(key)
    }

    fn add(&mut self, gens: &[GenKey], removed: &[GenKey], deletes: &[String]) {
        if self.gens.len() + self.removed.len() + gens.len() + removed.len() > PENDING_MAX {
            self.overflow = true;
            // A removed generation must leave Redis: with too many to list, every lead's
            // cached data is purged instead.
            self.purge |= !removed.is_empty();
        } else {
            self.gens.extend(gens.iter().cloned());
            self.removed.extend(removed.iter().cloned());
        }
        if self.deletes.len() + deletes.len() > PENDING_MAX {
            self.purge = true;
            self.deletes.clear();
        } else if !self.purge {
            self.deletes.extend(deletes.iter().cloned());
        }
    }

    fn add_local_only(&mut self, key: GenKey) {
        if self.local_only.len() >= PENDING_MAX {
            self.local_overflow = true;
        } else {
            self.local_only.insert(key);
        }
    }

    /// Forgets what `replayed` held (it reached Redis); what was added since stays.
    fn settle(&mut self, replayed: &Pending) {
        self.gens.retain(|k| !replayed.gens.contains(k));
        self.removed.retain(|k| !replayed.removed.contains(k));
        self.deletes.retain(|k| !replayed.deletes.contains(k));
        self.local_only.retain(|k| !replayed.local_only.contains(k));
        self.overflow &= !replayed.overflow;
        self.purge &= !replayed.purge;
        self.local_overflow &= !replayed.local_overflow;
    }
}

/// Stands for "removed" among the bumps awaiting their echo.
const REMOVED: u64 = 0;

/// Redis key patterns (under the prefix) of every lead's cached data (generations, which hold
/// only ids and tags, are left: deleting them under instances that mirror them would keep
/// fills out of Redis until the mirrors are reconfirmed).
pub const LEAD_PATTERNS: [&str; 2] = ["lead:*", "leadphone:*"];

pub struct Generations {
    mirror: Mirror,
    remote: Option<Arc<Remote>>,
    origin: u64,
    pending: Mutex<Pending>,
    /// Keys this instance bumped whose own message has not come back yet, with the value
    /// ([`REMOVED`] for a removal). Every change to the mirror by a bump, a message or a flush
    /// is made under this lock.
    awaiting_echo: Mutex<HashMap<GenKey, u64>>,
    /// Counts flushes: a fetch that raced one is not cached (its reply may predate whatever
    /// made the flush necessary). A message that raced a fetch needs no counter: the fetch
    /// inserts only where the mirror is still empty.
    flushes: AtomicU64,
    mirror_ttl: Duration,
    /// A replay to Redis is running (its changes still count as owed until it succeeds).
    replaying: AtomicBool,
}

impl Generations {
    /// `mirror_ttl` bounds how long a mirrored generation is trusted without Redis confirming
    /// it (the tier-1 maximum age), so a lost message costs no more than that; `mirror_bytes`
    /// bounds the mirror's memory (a generation it no longer holds is fetched again).
    pub fn new(
        remote: Option<Arc<Remote>>,
        mirror_ttl: Duration,
        mirror_bytes: u64,
    ) -> Generations {
        let mirror_ttl = mirror_ttl.max(Duration::from_secs(1));
        Generations {
            mirror: Mirror::new(mirror_ttl, mirror_bytes),
            mirror_ttl,
            remote,
            origin: rand::random(),
            pending: Mutex::new(Pending::default()),
            awaiting_echo: Mutex::new(HashMap::new()),
            flushes: AtomicU64::new(0),
            replaying: AtomicBool::new(false),
        }
    }

    pub fn origin(&self) -> u64 {
        self.origin
    }

    fn message(&self, gens: Vec<(GenKey, u64)>, removed: Vec<GenKey>, flush: bool) -> String {
        serde_json::to_string(&Message {
            origin: self.origin,
            gens,
            removed,
            flush,
        })
        .expect("messages serialise")
    }

    /// A message that carries nothing: sent periodically so that every subscriber can tell a
    /// live subscription from a silently dead one.
    pub fn heartbeat(&self) -> String {
        self.message(Vec::new(), Vec::new(), false)
    }

    /// A message that tells every other instance to drop its mirror (and tier 1).
    pub fn flush_message(&self) -> String {
        self.message(Vec::new(), Vec::new(), true)
    }

    fn flush_count(&self) -> u64 {
        self.flushes.load(Ordering::Acquire)
    }

    /// Whether a change made here has not reached Redis yet (or is being replayed).
    pub fn owes_redis(&self) -> bool {
        self.replaying.load(Ordering::Acquire)
            || self.pending.lock().expect("not poisoned").owes_redis()
    }

    /// Whether nothing waits to be replayed to Redis (nor is being replayed).
    pub fn reconciled(&self) -> bool {
        !self.replaying.load(Ordering::Acquire)
            && self.pending.lock().expect("not poisoned").is_empty()
    }

    /// Whether every dependency is current by the mirror alone.
    pub fn all_current_locally(&self, deps: &[(GenKey, u64)]) -> bool {
        self.mirror.all_current(deps)
    }

    /// Whether a write has moved one of `deps` as far as the mirror knows (a generation it does
    /// not hold is no evidence either way).
    pub fn any_changed_locally(&self, deps: &[(GenKey, u64)]) -> bool {
        self.mirror.any_changed(deps)
    }

    /// The mirror, for checks against a [`super::mirror::Stamp`].
    pub fn mirror(&self) -> &Mirror {
        &self.mirror
    }

    fn usable_remote(&self) -> Option<&Arc<Remote>> {
        self.remote.as_ref().filter(|r| r.breaker.is_closed())
    }

    /// The current generations of `keys`: mirrored ones at once, the others from Redis (which
    /// creates those it lacks) or, without Redis, created here. With `confirm`, every key is
    /// read from Redis, and what Redis says replaces the mirrored value (used while
    /// invalidations may not be reaching this instance).
    pub async fn current(&self, keys: &[GenKey], confirm: bool) -> Vec<u64> {
        let confirm = confirm && self.usable_remote().is_some();
        let mut out: Vec<Option<u64>> = if confirm {
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
                .partition(|i| !pending.keeps_local(&keys[*i]))
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
                            // Cache only if no flush happened meanwhile.
                            let cacheable = self.flush_count() == before;
                            let awaiting = self.awaiting_echo.lock().expect("not poisoned");
                            let pending = self.pending.lock().expect("not poisoned");
                            for (n, i) in fetch.into_iter().enumerate() {
                                let (key, v) = (&keys[i], values[n]);
                                out[i] = Some(if !cacheable {
                                    v
                                } else if confirm {
                                    // Our own bump in flight is newer than what Redis said.
                                    match awaiting.get(key) {
                                        Some(_) => self.local_value(key),
                                        None if pending.keeps_local(key) => self.local_value(key),
                                        None => {
                                            self.mirror.insert(key.clone(), v);
                                            v
                                        }
                                    }
                                } else {
                                    // Only where the mirror is still empty: a message may
                                    // have brought a newer value meanwhile.
                                    self.mirror.get_or_insert(key, || v)
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
                    let mut pending = self.pending.lock().expect("not poisoned");
                    for i in fetch {
                        pending.add_local_only(keys[i].clone());
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
        self.mirror.get_or_insert(key, new_value)
    }

    /// Gives each key of `bump` a new generation and removes those of `remove` (they named a
    /// deleted row), here, then in Redis together with `delete` (Redis key names) and a message
    /// to every other instance. Without Redis reachable, the change is kept and replayed when
    /// it returns. A removed generation gets a throwaway value here, so that nothing mirrored
    /// validates what was read before.
    /// Generations in `bump_present` are changed only where Redis has them (see
    /// [`Remote::bump`]).
    pub async fn bump(
        &self,
        bump: &[GenKey],
        bump_present: &[GenKey],
        remove: &[GenKey],
        delete: &[String],
    ) {
        let gens: Vec<(GenKey, u64)> = bump
            .iter()
            .chain(bump_present)
            .map(|k| (k.clone(), new_value()))
            .collect();
        let usable = self.usable_remote().cloned();
        {
            let mut awaiting = self.awaiting_echo.lock().expect("not poisoned");
            if usable.is_some() {
                // Before the mirror changes, so that no older message from another instance
                // can overwrite the new value in between.
                for (k, v) in &gens {
                    awaiting.insert(k.clone(), *v);
                }
                for k in remove {
                    awaiting.insert(k.clone(), REMOVED);
                }
            }
            for (k, v) in &gens {
                self.mirror.insert(k.clone(), *v);
            }
            for k in remove {
                self.mirror.insert(k.clone(), new_value());
            }
        }
        if self.remote.is_none() {
            return;
        }
        let sent = match usable {
            Some(remote) => {
                let text = self.message(gens.clone(), remove.to_vec(), false);
                let ok = remote
                    .bump(&gens, bump_present.len(), remove, delete, &text)
                    .await
                    .is_ok();
                if !ok {
                    let mut awaiting = self.awaiting_echo.lock().expect("not poisoned");
                    let mine = gens
                        .iter()
                        .cloned()
                        .chain(remove.iter().map(|k| (k.clone(), REMOVED)));
                    for (k, v) in mine {
                        if awaiting.get(&k) == Some(&v) {
                            awaiting.remove(&k);
                        }
                    }
                }
                ok
            }
            None => false,
        };
        if !sent {
            tracing::debug!("invalidation kept until Redis answers");
            let all: Vec<GenKey> = bump.iter().chain(bump_present).cloned().collect();
            self.pending
                .lock()
                .expect("not poisoned")
                .add(&all, remove, delete);
        }
    }

    /// Applies a message from the channel (this instance's own included, as the echo that
    /// confirms its bump). Returns whether it came from another instance.
    pub fn apply(&self, message: &Message) -> bool {
        if message.gens.is_empty() && message.removed.is_empty() && !message.flush {
            // A heartbeat: proof that the subscription is alive, nothing to apply.
            return false;
        }
        let mine = message.origin == self.origin;
        if message.flush && !mine {
            self.flush();
        }
        let mut awaiting = self.awaiting_echo.lock().expect("not poisoned");
        let pending = self.pending.lock().expect("not poisoned");
        let changes = message
            .gens
            .iter()
            .map(|(k, v)| (k, *v))
            .chain(message.removed.iter().map(|k| (k, REMOVED)));
        for (k, v) in changes {
            if mine {
                if awaiting.get(k) == Some(&v) {
                    awaiting.remove(k);
                }
            } else if !awaiting.contains_key(k) && !pending.keeps_local(k) {
                // While our own bump of `k` is in flight, anything from others that arrives
                // first ran before it in Redis: older than ours. A bump of ours that waits to
                // be replayed will be newer than anything Redis holds now.
                let v = if v == REMOVED { new_value() } else { v };
                self.mirror.insert(k.clone(), v);
            }
        }
        !mine
    }

    /// Forgets every mirrored generation: every tier-1 entry becomes invalid at once.
    pub fn flush(&self) {
        let mut awaiting = self.awaiting_echo.lock().expect("not poisoned");
        self.mirror.clear();
        awaiting.clear();
        self.flushes.fetch_add(1, Ordering::AcqRel);
    }

    /// Continuity with Redis was broken (a new server, a failover): the mirror is dropped. When
    /// this instance's own handshake gave every kind a new generation (`renewed_here`), what
    /// waited to be replayed is moot (every entry filled before is invalid), except deletions
    /// of personal data, which are still owed.
    pub fn forget_for_new_server(&self, renewed_here: bool, tags_changed: bool) {
        self.flush();
        if !renewed_here {
            // Another instance renewed the generations first: changes made here since may be
            // newer than entries it filled, so they are still replayed.
            if tags_changed {
                self.retag_pending();
            }
            return;
        }
        let mut pending = self.pending.lock().expect("not poisoned");
        let deletes = std::mem::take(&mut pending.deletes);
        let removed = std::mem::take(&mut pending.removed);
        let purge = pending.purge;
        *pending = Pending::default();
        if tags_changed {
            // Removed generations named with the old phone tags cannot be found again.
            pending.purge = purge || !removed.is_empty() || !deletes.is_empty();
        } else {
            pending.removed = removed;
            pending.deletes = deletes;
            pending.purge = purge;
        }
    }

    /// The phone tags changed while changes waited for Redis: they cannot be replayed under
    /// their names, so every kind is invalidated instead.
    pub fn retag_pending(&self) {
        let mut pending = self.pending.lock().expect("not poisoned");
        if pending.owes_redis() {
            pending.overflow = true;
            pending.purge |= !pending.removed.is_empty() || !pending.deletes.is_empty();
            pending.gens.clear();
            pending.removed.clear();
        }
    }

    /// How often [`Generations::reconfirm_all`] should run: three times per time to live, so
    /// that a generation Redis still holds is confirmed before it ages out of the mirror.
    pub fn reconfirm_every(&self) -> Duration {
        self.mirror_ttl / 3
    }

    /// Reconfirms every mirrored generation with Redis, in batches. Returns how many were
    /// confirmed unchanged, and how many were mirrored.
    pub async fn reconfirm_all(&self) -> (usize, usize) {
        let keys = self.mirror.keys();
        let mut confirmed = 0;
        for batch in keys.chunks(RECONFIRM_BATCH) {
            confirmed += self.reconfirm(batch).await;
        }
        (confirmed, keys.len())
    }

    /// Reads mirrored generations from Redis again, so that a tier-1 entry that depends on them
    /// may be trusted for another maximum age. Each key is updated by compare-and-set: only
    /// where the mirror still holds the value it held before the read, it takes Redis's value
    /// (the same, now confirmed, with a fresh time to live; or a newer one this instance
    /// missed) or, when Redis no longer has the key, is dropped. Generation values never
    /// repeat, so a mirror that still holds its old value has seen nothing newer than Redis's
    /// answer. Keys bumped here and not yet echoed, or waiting to be replayed to Redis, are left
    /// alone. Returns how many keys were confirmed unchanged.
    pub async fn reconfirm(&self, keys: &[GenKey]) -> usize {
        let Some(remote) = self.usable_remote() else {
            return 0;
        };
        let before: Vec<Option<u64>> = keys.iter().map(|k| self.mirror.get(k)).collect();
        let Ok(values) = remote.peek_generations(keys).await else {
            return 0;
        };
        let awaiting = self.awaiting_echo.lock().expect("not poisoned");
        let pending = self.pending.lock().expect("not poisoned");
        let mut confirmed = 0;
        for ((key, value), before) in keys.iter().zip(values).zip(before) {
            let Some(before) = before else {
                continue;
            };
            if awaiting.contains_key(key)
                || pending.keeps_local(key)
                || pending.local_only.contains(key)
            {
                continue;
            }
            if self.mirror.compare_and_set(key, before, value) {
                confirmed += 1;
            }
        }
        confirmed
    }

    /// Called on every successful probe: replays what Redis missed, in chunks, and forgets what
    /// was decided locally meanwhile. What was replayed is forgotten only once every chunk has
    /// reached Redis; a failure leaves it owed. Returns whether anything was replayed.
    pub async fn reconcile(&self) -> bool {
        let Some(remote) = self.usable_remote().cloned() else {
            return false;
        };
        let snapshot = {
            let pending = self.pending.lock().expect("not poisoned");
            if pending.is_empty() {
                return false;
            }
            pending.clone()
        };
        if self.replaying.swap(true, Ordering::AcqRel) {
            return false;
        }
        let done = self.replay(&remote, &snapshot).await;
        if done {
            self.pending.lock().expect("not poisoned").settle(&snapshot);
        }
        self.replaying.store(false, Ordering::Release);
        done
    }

    async fn replay(&self, remote: &Remote, owed: &Pending) -> bool {
        if owed.local_overflow {
            self.flush();
        } else {
            for key in &owed.local_only {
                self.mirror.remove(key);
            }
        }
        let gens: Vec<GenKey> = if owed.overflow {
            Kind::ALL.iter().map(|k| GenKey::Kind(*k)).collect()
        } else {
            owed.gens.iter().cloned().collect()
        };
        let removed: Vec<GenKey> = owed.removed.iter().cloned().collect();
        let deletes: Vec<String> = owed.deletes.iter().cloned().collect();
        let chunks = gens
            .len()
            .max(removed.len())
            .max(deletes.len())
            .div_ceil(REPLAY_CHUNK);
        for n in 0..chunks {
            let part = |v: &[GenKey]| -> Vec<GenKey> {
                v.iter()
                    .skip(n * REPLAY_CHUNK)
                    .take(REPLAY_CHUNK)
                    .cloned()
                    .collect()
            };
            let bump: Vec<(GenKey, u64)> =
                part(&gens).into_iter().map(|k| (k, new_value())).collect();
            let remove = part(&removed);
            let delete: Vec<String> = deletes
                .iter()
                .skip(n * REPLAY_CHUNK)
                .take(REPLAY_CHUNK)
                .cloned()
                .collect();
            let text = self.message(bump.clone(), remove.clone(), false);
            {
                let mut awaiting = self.awaiting_echo.lock().expect("not poisoned");
                for (k, v) in &bump {
                    awaiting.insert(k.clone(), *v);
                    self.mirror.insert(k.clone(), *v);
                }
                for k in &remove {
                    awaiting.insert(k.clone(), REMOVED);
                }
            }
            if remote
                .bump(&bump, 0, &remove, &delete, &text)
                .await
                .is_err()
            {
                let mut awaiting = self.awaiting_echo.lock().expect("not poisoned");
                for k in bump.iter().map(|(k, _)| k).chain(&remove) {
                    awaiting.remove(k);
                }
                return false;
            }
        }
        // After the bumps: a purge scans the keyspace, and until the generations are
        // replayed, entries in Redis could be read as current.
        if owed.purge {
            for pattern in LEAD_PATTERNS {
                if remote.purge(pattern).await.is_err() {
                    return false;
                }
            }
        }
        true
    }

    /// Every lead's cached data must leave Redis and could not now: owed until it answers.
    pub fn owe_purge(&self) {
        self.pending.lock().expect("not poisoned").purge = true;
    }
}

/// A new generation value: random, never [`REMOVED`].
fn new_value() -> u64 {
    rand::random::<u64>().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn gens() -> Generations {
        Generations::new(None, Duration::from_secs(60), 1 << 20)
    }

    #[tokio::test]
    async fn local_generations_are_stable_until_bumped() {
        let g = gens();
        let k = GenKey::Lead(Uuid::new_v4());
        let a = g.current(std::slice::from_ref(&k), false).await[0];
        assert_eq!(g.current(std::slice::from_ref(&k), false).await[0], a);
        g.bump(std::slice::from_ref(&k), &[], &[], &[]).await;
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
            removed: Vec::new(),
            flush: false,
        };
        assert!(g.apply(&other));
        assert!(g.all_current_locally(&[(k.clone(), 7)]));
        let echo = Message {
            origin: g.origin(),
            gens: vec![(k.clone(), 9)],
            removed: Vec::new(),
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
            removed: Vec::new(),
            flush: false,
        });
        assert!(g.all_current_locally(&[(k.clone(), 2)]));
        // Our echo arrives: later values from others apply again.
        g.apply(&Message {
            origin: g.origin(),
            gens: vec![(k.clone(), 2)],
            removed: Vec::new(),
            flush: false,
        });
        g.apply(&Message {
            origin: g.origin() ^ 1,
            gens: vec![(k.clone(), 3)],
            removed: Vec::new(),
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
