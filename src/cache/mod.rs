//! The two-tier read-through cache: tier 1 in process (moka), tier 2 shared (Redis), the store
//! behind them. Every entry is stamped with the generations it was read under (see [`gens`]),
//! so that a write invalidates everything derived from it, on every instance, without listing
//! keys, and a fill that raced a write is never served.

mod answers;
mod changes;
mod entry;
mod gens;
mod heap;
mod keys;
mod local;
mod mirror;
pub mod remote;
pub(crate) mod tasks;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt, Shared};

pub use answers::{Answer, AnswerKey};
pub use changes::{kinds_of, lead_derived_keys, plan_all, Change, Notification, Plan};
pub use entry::{now_ms, Entry, Value};
pub use gens::{Generations, Message, LEAD_PATTERNS};
pub use heap::{entry_weight, HeapSize, ALLOCATOR_SLACK, MOKA_ENTRY_BYTES, TIER1_ENTRY_OVERHEAD};
pub use keys::{lead_hash, CacheKey, GenKey, Kind, PhoneTag, PhoneTagger, Ttls};
pub use local::LocalTier;
pub use remote::{Circuit, Handshake, Remote, RemoteError, ServerInfo};
pub use tasks::{spawn_background, BackgroundConfig};

use arc_swap::ArcSwap;
use bytes::Bytes;
use mirror::Stamp;

use crate::domain::Phone;
use crate::monitoring::{metrics, Monitor};
use crate::store::StoreError;

/// Tier-1 entries are trusted only this long while invalidations from other instances cannot
/// reach this one (Redis unreachable and no Postgres LISTEN).
pub const DEGRADED_L1_AGE: Duration = Duration::from_secs(2);
/// After a load finds the database unavailable, stale values are served at once for this long
/// instead of waiting on it again.
const DB_FAILING_FOR_MS: i64 = 2_000;

/// How `L1_MAX_MB` is shared between tier 1's entries and the generation mirror they are
/// checked against (each caller in tier 1 needs about two generations of its own, a quarter of
/// what its entries weigh).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierOneBudget {
    /// Bytes for tier-1 entries; 0 when tier 1 is off.
    pub entries: u64,
    /// Bytes for the generation mirror (needed by tier 2 too, so never 0).
    pub mirror: u64,
}

impl TierOneBudget {
    /// The mirror's share when tier 1 is off: generations tier-2 reads are checked against.
    const MIRROR_WITHOUT_TIER_ONE: u64 = 8 << 20;
    const MIRROR_AT_LEAST: u64 = 256 << 10;

    pub fn of(total_bytes: u64) -> TierOneBudget {
        if total_bytes == 0 {
            return TierOneBudget {
                entries: 0,
                mirror: Self::MIRROR_WITHOUT_TIER_ONE,
            };
        }
        let mirror = (total_bytes / 4).max(Self::MIRROR_AT_LEAST);
        TierOneBudget {
            entries: total_bytes.saturating_sub(mirror).max(1),
            mirror,
        }
    }
}

/// Where a looked-up value came from, least fresh first (the order of `X-Hotline-Source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    Default,
    Stale,
    Db,
    L2,
    L1,
}

impl Source {
    pub const ALL: [Source; 5] = [
        Source::Default,
        Source::Stale,
        Source::Db,
        Source::L2,
        Source::L1,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::Stale => "stale",
            Source::Db => "db",
            Source::L2 => "l2",
            Source::L1 => "l1",
        }
    }
}

/// Why an invalidation happened (the `source` label of the invalidation counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidationSource {
    /// A write through this instance.
    Write,
    /// A message from another instance.
    PubSub,
    /// A Postgres NOTIFY (writes that bypass the service).
    Notify,
    /// The cache administration endpoint.
    Manual,
    /// Continuity was in doubt (a Redis server that is not the one the generations were set
    /// under, or database changes no instance may have heard): everything was invalidated.
    Continuity,
}

impl InvalidationSource {
    pub const ALL: [InvalidationSource; 5] = [
        InvalidationSource::Write,
        InvalidationSource::PubSub,
        InvalidationSource::Notify,
        InvalidationSource::Manual,
        InvalidationSource::Continuity,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InvalidationSource::Write => "write",
            InvalidationSource::PubSub => "pubsub",
            InvalidationSource::Notify => "notify",
            InvalidationSource::Manual => "manual",
            InvalidationSource::Continuity => "continuity",
        }
    }
}

/// Counters per kind, for the stats endpoint and metrics.
#[derive(Debug, Default)]
pub struct KindStats {
    pub hits_l1: AtomicU64,
    pub hits_l2: AtomicU64,
    pub misses: AtomicU64,
    pub stale: AtomicU64,
    pub loads: AtomicU64,
    pub load_errors: AtomicU64,
    pub invalidations: AtomicU64,
}

/// Counters of rendered answers, since start.
#[derive(Debug, Default)]
pub struct AnswerStats {
    /// Answers served as rendered before.
    pub served: AtomicU64,
    /// Answers rendered and kept for the next call.
    pub kept: AtomicU64,
}

/// Which invalidation channels are connected right now, and which are expected.
#[derive(Debug, Default)]
pub struct Liveness {
    pub pubsub: AtomicBool,
    pub listen: AtomicBool,
    /// The database listener has settled that every change made before it connected was
    /// heard by some instance, or has invalidated everything (see `tasks::Coverage`).
    pub listen_settled: AtomicBool,
    /// Whether tier 2 may be read: false while a database listener is connected but has not
    /// settled (Redis may hold what changes nobody heard made old); true otherwise, and while
    /// the database cannot be listened to at all (what Redis holds is then the best there is).
    pub l2_gate: AtomicBool,
    /// The database's change counter up to which this instance last claimed to have heard
    /// every change (see `tasks::settle`).
    pub claimed_seq: AtomicI64,
    /// Whether a Redis pub/sub subscription is expected (tier 2 is configured).
    pub expects_pubsub: bool,
    /// Whether a Postgres LISTEN connection is expected (the store is Postgres).
    pub expects_listen: bool,
}

impl Liveness {
    /// Neither Redis nor LISTEN is expected (a single embedded instance): nothing can be missed.
    pub fn standalone(&self) -> bool {
        !self.expects_pubsub && !self.expects_listen
    }

    /// Whether invalidations from elsewhere reach this instance.
    pub fn invalidations_live(&self) -> bool {
        self.standalone()
            || self.pubsub.load(Ordering::Acquire)
            || self.listen.load(Ordering::Acquire)
    }

    /// Whether tier 2 may be read (see `l2_gate`).
    pub fn l2_trusted(&self) -> bool {
        !self.expects_listen || self.l2_gate.load(Ordering::Acquire)
    }

    /// Whether every expected channel is connected (and the listener has settled what it may
    /// have missed). Each one flushes tier 1 when it connects, and settling may invalidate
    /// everything, so work that fills the cache on purpose (warming) waits for this.
    pub fn all_connected(&self) -> bool {
        (!self.expects_pubsub || self.pubsub.load(Ordering::Acquire))
            && (!self.expects_listen
                || (self.listen.load(Ordering::Acquire)
                    && self.listen_settled.load(Ordering::Acquire)))
    }
}

/// Records the dependencies a loader reads under: call [`LoadCtx::observe`] for a generation
/// *before* reading the rows it covers.
pub struct LoadCtx {
    gens: Arc<Generations>,
    deps: Mutex<Vec<(GenKey, u64)>>,
}

impl LoadCtx {
    pub async fn observe(&self, key: GenKey) {
        let value = self.gens.current(std::slice::from_ref(&key), false).await[0];
        self.deps.lock().expect("not poisoned").push((key, value));
    }
}

type LoadOutput = Result<Arc<Entry>, Arc<StoreError>>;

/// Which running load a miss may join.
enum Join {
    Any,
    /// Any; and when none runs, a fresh value in tier 1 (a load that just finished put it
    /// there) instead of a new load.
    AnyOrFilled,
    /// Only one started after the load with this id (which turned out too old).
    NewerThan(u64),
}

/// What a miss waits for.
enum Pending {
    /// A load: the id of the one joined, or 0 when this call started it.
    Load(Shared<BoxFuture<'static, LoadOutput>>, u64),
    /// No load ran any more: the one that just finished filled tier 1 with this.
    Filled(Arc<Entry>),
}

/// A running load, joined by concurrent misses on its key.
struct InFlight {
    id: u64,
    result: Shared<BoxFuture<'static, LoadOutput>>,
}

/// Removes a finished (or panicked) load from the map, if it is still the one there.
struct InFlightGuard {
    cache: std::sync::Weak<Cache>,
    key: CacheKey,
    id: u64,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if let Some(cache) = self.cache.upgrade() {
            let mut map = cache.inflight.lock().expect("not poisoned");
            if map.get(&self.key).is_some_and(|f| f.id == self.id) {
                map.remove(&self.key);
            }
        }
    }
}

/// A hook run between a load's database read and its fill (tests force races with it).
pub type FillHook = Arc<dyn Fn(&CacheKey) -> BoxFuture<'static, ()> + Send + Sync>;

pub struct Cache {
    local: Option<LocalTier>,
    remote: Option<Arc<Remote>>,
    gens: Arc<Generations>,
    ttls: Ttls,
    inflight: Mutex<HashMap<CacheKey, InFlight>>,
    stats: [KindStats; 7],
    answers: AnswerStats,
    invalidations_by_source: [AtomicU64; 5],
    /// Turns phone numbers into the tags that name them in Redis (the deployment's key, from
    /// the Redis handshake; this process's own until then).
    tagger: ArcSwap<PhoneTagger>,
    /// The Redis server the mirror was last verified against.
    server: Mutex<Option<String>>,
    liveness: Arc<Liveness>,
    db_failing_until_ms: AtomicI64,
    fill_hook: Mutex<Option<FillHook>>,
    monitor: Monitor,
}

/// A value and where it came from.
#[derive(Debug, Clone)]
pub struct Hit {
    pub entry: Arc<Entry>,
    pub source: Source,
}

/// Why a lookup has no value.
#[derive(Debug, Clone)]
pub enum Miss {
    /// The store failed (or had no such row); nothing usable was cached.
    Store(Arc<StoreError>),
    /// The deadline passed before the store answered, and nothing usable was cached.
    Deadline,
}

impl Cache {
    /// `max_trust` is how long a mirrored generation is trusted without Redis confirming it
    /// (the tier-1 maximum age): a tier-1 entry is served only while every generation it was
    /// read under is mirrored, so no entry outlives its last confirmation by more than that.
    pub fn new(
        local: Option<LocalTier>,
        remote: Option<Arc<Remote>>,
        ttls: Ttls,
        liveness: Arc<Liveness>,
        max_trust: Duration,
        mirror_bytes: u64,
        monitor: Monitor,
    ) -> Cache {
        Cache {
            local,
            gens: Arc::new(Generations::new(remote.clone(), max_trust, mirror_bytes)),
            remote,
            ttls,
            inflight: Mutex::new(HashMap::new()),
            stats: Default::default(),
            answers: AnswerStats::default(),
            invalidations_by_source: Default::default(),
            tagger: ArcSwap::from_pointee(PhoneTagger::random()),
            server: Mutex::new(None),
            liveness,
            db_failing_until_ms: AtomicI64::new(0),
            fill_hook: Mutex::new(None),
            monitor,
        }
    }

    pub fn ttls(&self) -> &Ttls {
        &self.ttls
    }

    pub fn remote(&self) -> Option<&Arc<Remote>> {
        self.remote.as_ref()
    }

    pub fn generations(&self) -> &Arc<Generations> {
        &self.gens
    }

    /// The tag that names `phone` in Redis.
    pub fn phone_tag(&self, phone: &Phone) -> PhoneTag {
        self.tagger.load().tag(phone)
    }

    /// The tagger in use (the one the next change is planned with).
    pub fn tagger(&self) -> Arc<PhoneTagger> {
        self.tagger.load_full()
    }

    /// Verifies the Redis server before it is trusted (see [`Remote::handshake`]) and takes
    /// the deployment's phone-tag key. When the server is not the one the mirror was verified
    /// against, or the handshake renewed the generations, the mirror and tier 1 are dropped
    /// (and what waited to be replayed is moot, but for deletions). Called by the probe before
    /// it closes the breaker, and on every probe after.
    pub async fn handshake(
        &self,
        remote: &Remote,
        timeout: Duration,
    ) -> Result<Handshake, RemoteError> {
        let proposed = self.tagger.load().key_hex().to_string();
        let found = remote
            .handshake(&proposed, &self.gens.flush_message(), timeout)
            .await?;
        let tags_changed = found.phone_key != proposed;
        if tags_changed {
            match PhoneTagger::from_hex(&found.phone_key) {
                Some(tagger) => self.tagger.store(Arc::new(tagger)),
                None => {
                    return Err(RemoteError::Redis(redis::RedisError::from((
                        redis::ErrorKind::UnexpectedReturnType,
                        "the phone-tag key in Redis is not 64 hex digits",
                    ))))
                }
            }
        }
        let new_server = {
            let mut known = self.server.lock().expect("not poisoned");
            let new = known.as_deref() != Some(found.run_id.as_str());
            let had_one = known.is_some();
            *known = Some(found.run_id.clone());
            new && had_one
        };
        if found.renewed || new_server {
            tracing::warn!(
                renewed = found.renewed,
                "redis is not the server the cache was verified against; every cached entry is invalid"
            );
            self.count_invalidation(&Kind::ALL.map(GenKey::Kind), InvalidationSource::Continuity);
            self.gens.forget_for_new_server(found.renewed, tags_changed);
            if let Some(local) = &self.local {
                local.clear();
            }
            if found.replaced_server {
                // A restored snapshot may hold the data of leads deleted since it was taken:
                // every entry is invalid now anyway, so every lead's cached data goes.
                if let Some(remote) = self.remote.clone() {
                    tokio::spawn(async move {
                        for pattern in LEAD_PATTERNS {
                            if let Err(e) = remote.purge(pattern).await {
                                tracing::warn!(error = %e, "could not purge restored lead data from Redis");
                            }
                        }
                    });
                }
            }
        } else if tags_changed {
            // The first handshake of this process (or a key lost from Redis): changes planned
            // with this process's own tags cannot be replayed under their names.
            self.gens.retag_pending();
            self.flush_local();
        }
        Ok(found)
    }

    pub fn liveness(&self) -> &Arc<Liveness> {
        &self.liveness
    }

    pub fn stats(&self, kind: Kind) -> &KindStats {
        &self.stats[kind.index()]
    }

    pub fn invalidations(&self, source: InvalidationSource) -> u64 {
        self.invalidations_by_source[source as usize].load(Ordering::Relaxed)
    }

    pub fn answer_stats(&self) -> &AnswerStats {
        &self.answers
    }

    /// (entries, bytes) in the generation mirror.
    pub fn mirror_usage(&self) -> (u64, u64) {
        self.gens.mirror().usage()
    }

    /// (entries, bytes) in tier 1.
    pub fn local_usage(&self) -> (u64, u64) {
        self.local.as_ref().map_or((0, 0), LocalTier::usage)
    }

    /// Installs a hook run after each load's read and before its fill. For tests.
    pub fn set_fill_hook(&self, hook: Option<FillHook>) {
        *self.fill_hook.lock().expect("not poisoned") = hook;
    }

    /// Drops every tier-1 entry (by forgetting the generations they were validated against).
    pub fn flush_local(&self) {
        self.gens.flush();
        if let Some(local) = &self.local {
            local.clear();
        }
    }

    /// Whether the database failed recently (stale values are then served without waiting).
    pub fn db_failing(&self) -> bool {
        now_ms() < self.db_failing_until_ms.load(Ordering::Acquire)
    }

    /// The rendered answer kept for `key`, if it may be served: rendered from entries that are
    /// all still current, trusted, and before its time of day changes. Counts as a tier-1 hit
    /// of each kind it was rendered from.
    pub async fn answer(&self, key: &AnswerKey) -> Option<Arc<Answer>> {
        let local = self.local.as_ref()?;
        let answer = local.answer(key)?;
        let now = now_ms();
        let trusted =
            self.liveness.invalidations_live() || answer.inserted.elapsed() < DEGRADED_L1_AGE;
        if !(trusted && answer.is_fresh(now)) {
            return None;
        }
        if !self.deps_current(&answer.stamp, answer.deps(), now).await {
            local.remove_answer(key);
            return None;
        }
        self.answers.served.fetch_add(1, Ordering::Relaxed);
        for kind in answer.kinds() {
            self.stats(*kind).hits_l1.fetch_add(1, Ordering::Relaxed);
            self.monitor.record_cache(kind.as_str(), "l1_hit");
        }
        Some(answer)
    }

    /// Keeps an answer rendered from `entries` (served until `valid_until_ms` at most), unless
    /// tier 1 is off or a write has already made one of them old.
    pub fn keep_answer(
        &self,
        key: AnswerKey,
        body: Bytes,
        entries: &[&Entry],
        valid_until_ms: i64,
        lead: Option<uuid::Uuid>,
        organization: Option<uuid::Uuid>,
    ) {
        let Some(local) = &self.local else {
            return;
        };
        let Some(answer) = Answer::new(body, entries, valid_until_ms, lead, organization) else {
            return;
        };
        if !self.gens.any_changed_locally(answer.deps()) {
            local.insert_answer(key, answer);
            self.answers.kept.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Reads `key` through the tiers, loading it with `load` on a miss. Concurrent misses on one
    /// key share one load, which runs on its own task: a caller that gives up (its deadline
    /// passed) does not cancel it, and it fills the cache for the next caller. When the store
    /// fails or the deadline passes, a stale value within the grace period is served.
    pub async fn get<F, Fut>(
        self: &Arc<Self>,
        key: CacheKey,
        deadline: Option<Instant>,
        load: F,
    ) -> Result<Hit, Miss>
    where
        F: FnOnce(Arc<LoadCtx>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Value, StoreError>> + Send + 'static,
    {
        let kind = key.kind();
        let stats = self.stats(kind);
        let now = now_ms();
        let mut stale: Option<Arc<Entry>> = None;

        if let Some(local) = &self.local {
            if let Some(found) = local.get(&key) {
                if self
                    .deps_current(&found.stamp, &found.entry.deps, now)
                    .await
                {
                    let trusted = self.liveness.invalidations_live()
                        || found.inserted.elapsed() < DEGRADED_L1_AGE;
                    if trusted && found.entry.is_fresh(now) {
                        stats.hits_l1.fetch_add(1, Ordering::Relaxed);
                        self.monitor.record_cache(kind.as_str(), "l1_hit");
                        if found.entry.wants_refresh(now) {
                            self.refresh(key, load);
                        }
                        return Ok(Hit {
                            entry: found.entry.clone(),
                            source: Source::L1,
                        });
                    }
                    if found.entry.is_servable_stale(now) {
                        stale = Some(found.entry.clone());
                    }
                } else {
                    local.remove(&key);
                }
            }
        }

        let remote = self
            .remote
            .as_ref()
            .filter(|r| r.breaker.is_closed() && self.liveness.l2_trusted());
        if let Some(remote) = remote {
            if let Some(entry) = self.read_remote(remote, &key).await {
                let entry = Arc::new(entry);
                if entry.is_fresh(now) {
                    stats.hits_l2.fetch_add(1, Ordering::Relaxed);
                    self.monitor.record_cache(kind.as_str(), "l2_hit");
                    if let Some(local) = &self.local {
                        local.insert(key.clone(), entry.clone());
                    }
                    if entry.wants_refresh(now) {
                        self.refresh(key, load);
                    }
                    return Ok(Hit {
                        entry,
                        source: Source::L2,
                    });
                }
                if entry.is_servable_stale(now) && stale.is_none() {
                    stale = Some(entry);
                }
            }
        }

        if let Some(entry) = stale.clone().filter(|_| self.db_failing()) {
            stats.stale.fetch_add(1, Ordering::Relaxed);
            self.monitor.record_cache(kind.as_str(), "stale");
            self.refresh(key, load);
            return Ok(Hit {
                entry,
                source: Source::Stale,
            });
        }

        let mut load = Some(load);
        // A load of this key may have finished (and filled tier 1) since tier 1 was read above,
        // while Redis was being asked: that is checked under the in-flight lock, so that
        // concurrent misses cost one load, not one per load that finishes meanwhile.
        let (pending, joined) = match self.load_shared(key.clone(), &mut load, Join::AnyOrFilled) {
            Some(Pending::Load(pending, joined)) => (pending, joined),
            Some(Pending::Filled(entry)) => {
                stats.hits_l1.fetch_add(1, Ordering::Relaxed);
                self.monitor.record_cache(kind.as_str(), "l1_hit");
                return Ok(Hit {
                    entry,
                    source: Source::L1,
                });
            }
            None => unreachable!("a load is started when none runs"),
        };
        stats.misses.fetch_add(1, Ordering::Relaxed);
        self.monitor.record_cache(kind.as_str(), "miss");
        let wait = |pending: Shared<BoxFuture<'static, LoadOutput>>| async move {
            match deadline {
                Some(at) => tokio::time::timeout_at(at.into(), pending).await.ok(),
                None => Some(pending.await),
            }
        };
        let mut outcome = wait(pending).await;
        // A joined load may have read before a write that completed before this call began:
        // its generations are no longer current. Load again, ourselves.
        if let Some(Ok(entry)) = &outcome {
            if joined != 0 && self.gens.any_changed_locally(&entry.deps) {
                if let Some(Pending::Load(pending, _)) =
                    self.load_shared(key, &mut load, Join::NewerThan(joined))
                {
                    outcome = wait(pending).await;
                }
            }
        }
        match outcome {
            Some(Ok(entry)) => Ok(Hit {
                entry,
                source: Source::Db,
            }),
            Some(Err(e)) => match stale {
                Some(entry) if e.is_unavailable() => {
                    stats.stale.fetch_add(1, Ordering::Relaxed);
                    self.monitor.record_cache(kind.as_str(), "stale");
                    Ok(Hit {
                        entry,
                        source: Source::Stale,
                    })
                }
                _ => Err(Miss::Store(e)),
            },
            None => match stale {
                Some(entry) => {
                    stats.stale.fetch_add(1, Ordering::Relaxed);
                    self.monitor.record_cache(kind.as_str(), "stale");
                    Ok(Hit {
                        entry,
                        source: Source::Stale,
                    })
                }
                None => Err(Miss::Deadline),
            },
        }
    }

    /// Whether every generation of `deps` is current: by the entry's stamp when the mirror has
    /// not changed since it was taken (one atomic load), else by the mirror, else, for
    /// generations the mirror no longer holds or no longer trusts, by asking for them (from
    /// Redis, as a tier-2 read does). A tier-1 entry whose generations were evicted from the
    /// mirror's byte budget is thus confirmed, not thrown away.
    async fn deps_current(&self, stamp: &Stamp, deps: &[(GenKey, u64)], now: i64) -> bool {
        if stamp.check(self.gens.mirror(), deps, now) {
            return true;
        }
        if self.gens.any_changed_locally(deps) {
            return false;
        }
        let keys: Vec<GenKey> = deps.iter().map(|(k, _)| k.clone()).collect();
        let current = self.gens.current(&keys, false).await;
        deps.iter().zip(&current).all(|((_, v), c)| v == c)
    }

    /// The tier-2 value of `key`, if it was built under the current generations.
    async fn read_remote(&self, remote: &Remote, key: &CacheKey) -> Option<Entry> {
        let entry = remote.get(key).await.ok()??;
        let dep_keys: Vec<GenKey> = entry.deps.iter().map(|(k, _)| k.clone()).collect();
        // While invalidations may not be reaching us, confirm with Redis itself.
        let confirm = !self.liveness.invalidations_live();
        let current = self.gens.current(&dep_keys, confirm).await;
        let valid = entry.deps.iter().zip(&current).all(|((_, v), c)| v == c);
        valid.then_some(entry)
    }

    /// Starts a background load of `key` unless one is running.
    fn refresh<F, Fut>(self: &Arc<Self>, key: CacheKey, load: F)
    where
        F: FnOnce(Arc<LoadCtx>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Value, StoreError>> + Send + 'static,
    {
        drop(self.load_shared(key, &mut Some(load), Join::Any));
    }

    /// The running load of `key`, joined, or a new one started with `load` (taken only then).
    /// Returns the id of the load joined, or 0 when this call started it. The load runs on its
    /// own task, so no caller's cancellation stops it.
    fn load_shared<F, Fut>(
        self: &Arc<Self>,
        key: CacheKey,
        load: &mut Option<F>,
        join: Join,
    ) -> Option<Pending>
    where
        F: FnOnce(Arc<LoadCtx>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Value, StoreError>> + Send + 'static,
    {
        let mut inflight = self.inflight.lock().expect("not poisoned");
        if let Some(running) = inflight.get(&key) {
            let joinable = match join {
                Join::Any | Join::AnyOrFilled => true,
                Join::NewerThan(old) => running.id != old,
            };
            if joinable {
                return Some(Pending::Load(running.result.clone(), running.id));
            }
        } else if matches!(join, Join::AnyOrFilled) {
            // A load leaves this map only after its fill: if it filled tier 1, that shows now.
            if let Some(entry) = self.fresh_local(&key) {
                return Some(Pending::Filled(entry));
            }
        }
        let load = load.take()?;
        let id = rand::random::<u64>().max(1);
        let guard = InFlightGuard {
            cache: Arc::downgrade(self),
            key: key.clone(),
            id,
        };
        let cache = self.clone();
        let task_key = key.clone();
        let handle = tokio::spawn(async move {
            let _guard = guard;
            cache.load_and_fill(&task_key, load).await
        });
        let result = async move {
            match handle.await {
                Ok(result) => result,
                Err(e) => Err(Arc::new(StoreError::Other(format!(
                    "load task failed: {e}"
                )))),
            }
        }
        .boxed()
        .shared();
        inflight.insert(
            key,
            InFlight {
                id,
                result: result.clone(),
            },
        );
        Some(Pending::Load(result, 0))
    }

    /// The tier-1 value of `key` if it may be served as fresh: built under current
    /// generations, trusted, and within its time to live.
    fn fresh_local(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        let found = self.local.as_ref()?.get(key)?;
        let now = now_ms();
        let trusted =
            self.liveness.invalidations_live() || found.inserted.elapsed() < DEGRADED_L1_AGE;
        (trusted
            && found.entry.is_fresh(now)
            && found
                .stamp
                .check(self.gens.mirror(), &found.entry.deps, now))
        .then(|| found.entry.clone())
    }

    async fn load_and_fill<F, Fut>(&self, key: &CacheKey, load: F) -> LoadOutput
    where
        F: FnOnce(Arc<LoadCtx>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Value, StoreError>> + Send + 'static,
    {
        let kind = key.kind();
        let stats = self.stats(kind);
        stats.loads.fetch_add(1, Ordering::Relaxed);
        let ctx = Arc::new(LoadCtx {
            gens: self.gens.clone(),
            deps: Mutex::new(Vec::with_capacity(3)),
        });
        ctx.observe(GenKey::Kind(kind)).await;
        let started = Instant::now();
        let value = match load(ctx.clone()).await {
            Ok(v) => v,
            Err(e) => {
                if !matches!(e, StoreError::NotFound) {
                    stats.load_errors.fetch_add(1, Ordering::Relaxed);
                }
                if e.is_unavailable() {
                    self.db_failing_until_ms
                        .store(now_ms() + DB_FAILING_FOR_MS, Ordering::Release);
                }
                return Err(Arc::new(e));
            }
        };
        self.monitor.record_load(kind.as_str(), started.elapsed());
        self.db_failing_until_ms.store(0, Ordering::Release);
        let hook = self.fill_hook.lock().expect("not poisoned").clone();
        if let Some(hook) = hook {
            hook(key).await;
        }

        let deps = std::mem::take(&mut *ctx.deps.lock().expect("not poisoned"));
        let ttl = if value.is_negative() {
            self.ttls.negative
        } else {
            self.ttls.of(kind)
        };
        // Up to 10% shorter, so that entries filled together do not expire together.
        let ttl_ms = ttl.as_millis() as i64;
        let jittered = ttl_ms - (ttl_ms as f64 * 0.1 * rand::random::<f64>()) as i64;
        let now = now_ms();
        let entry = Arc::new(Entry {
            value,
            deps,
            fresh_until_ms: now + jittered,
            stale_until_ms: now + jittered + self.ttls.stale_grace.as_millis() as i64,
            ttl_ms,
        });
        if ttl_ms > 0 {
            self.fill(key, &entry);
        }
        Ok(entry)
    }

    /// Stores a freshly loaded entry in both tiers, unless a write has made it old already.
    fn fill(&self, key: &CacheKey, entry: &Arc<Entry>) {
        // A generation the mirror no longer holds (its byte budget evicted it) is checked when
        // the entry is read; Redis checks its own before it stores the entry.
        if self.gens.any_changed_locally(&entry.deps) {
            return;
        }
        let bytes = entry.encode();
        if let Some(local) = &self.local {
            local.insert(key.clone(), entry.clone());
        }
        if let Some(remote) = self.remote.as_ref().filter(|r| r.breaker.is_closed()) {
            let remote = remote.clone();
            let key = key.clone();
            let entry = entry.clone();
            tokio::spawn(async move {
                let _ = remote.fill(&key, &entry, &bytes).await;
            });
        }
    }

    /// Invalidates what `changes` touched, everywhere: the writer calls this after its commit,
    /// before it answers. What each change invalidates is decided in one place
    /// ([`Change::plan`]).
    pub async fn invalidate(&self, changes: &[Change], source: InvalidationSource) -> Plan {
        let plan = plan_all(changes, &self.tagger.load());
        if plan.is_empty() {
            return plan;
        }
        let gens: Vec<GenKey> = plan.generations().cloned().collect();
        self.count_invalidation(&gens, source);
        if let Some(local) = &self.local {
            for key in &plan.forget {
                local.remove(key);
            }
        }
        self.drop_answers_of_deleted(&plan.remove);
        let mut delete: Vec<String> = plan.forget.iter().map(|k| k.redis_location().0).collect();
        delete.sort();
        delete.dedup();
        self.gens
            .bump(&plan.bump, &plan.bump_present, &plan.remove, &delete)
            .await;
        if plan.purge_leads {
            self.purge_leads().await;
        }
        plan
    }

    /// Drops the rendered answers of deleted leads (named by the generations removed with them):
    /// stale answers are never served, but these carry personal data, which leaves memory now
    /// rather than when the answers would have aged out.
    fn drop_answers_of_deleted(&self, removed: &[GenKey]) {
        if let Some(local) = &self.local {
            let leads: Vec<uuid::Uuid> = removed
                .iter()
                .filter_map(|g| match g {
                    GenKey::Lead(id) => Some(*id),
                    _ => None,
                })
                .collect();
            local.remove_answers_of(&leads);
        }
    }

    /// Counts what a change of `gens` invalidates, per kind.
    pub fn count_invalidation(&self, gens: &[GenKey], source: InvalidationSource) {
        self.invalidations_by_source[source as usize].fetch_add(1, Ordering::Relaxed);
        metrics::invalidation(source.as_str());
        let mut kinds: Vec<Kind> = gens
            .iter()
            .flat_map(|g| kinds_of(g).iter().copied())
            .collect();
        kinds.sort();
        kinds.dedup();
        for kind in kinds {
            self.stats(kind)
                .invalidations
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Removes every lead's cached data from Redis (after a TRUNCATE).
    pub async fn purge_leads(&self) {
        if let Some(remote) = &self.remote {
            let mut purged = remote.breaker.is_closed();
            if purged {
                for pattern in LEAD_PATTERNS {
                    if let Err(e) = remote.purge(pattern).await {
                        tracing::warn!(error = %e, "could not purge cached leads from Redis");
                        purged = false;
                    }
                }
            }
            if !purged {
                // Personal data must not stay: purged once Redis answers.
                self.gens.owe_purge();
            }
        }
        if let Some(local) = &self.local {
            local.clear();
        }
    }

    /// Applies a message from another instance.
    pub fn apply_message(&self, message: &Message) {
        if self.gens.apply(message) {
            let gens: Vec<GenKey> = message
                .gens
                .iter()
                .map(|(k, _)| k.clone())
                .chain(message.removed.iter().cloned())
                .collect();
            self.count_invalidation(&gens, InvalidationSource::PubSub);
            self.drop_answers_of_deleted(&message.removed);
            if message.flush {
                if let Some(local) = &self.local {
                    local.clear();
                }
            }
        }
    }
}
