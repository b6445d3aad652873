//! Tier 1: an in-process moka cache bounded by bytes, holding looked-up entries and rendered
//! webhook answers under one budget, none of which outlive their stale window. (The tier-1
//! maximum age is kept by the generations an entry is checked against on every hit: see
//! `Generations` and `mirror::Stamp`.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;
use moka::Expiry;
use uuid::Uuid;

use super::answers::{Answer, AnswerKey};
use super::entry::{now_ms, Entry};
use super::heap::entry_weight;
use super::keys::CacheKey;
use super::mirror::Stamp;

#[derive(Debug)]
pub struct LocalEntry {
    pub entry: Arc<Entry>,
    pub inserted: Instant,
    /// What the last check against the generation mirror found.
    pub stamp: Stamp,
    weight: u32,
    expires_in: Duration,
}

/// What tier 1 is keyed by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum LocalKey {
    Entry(CacheKey),
    Answer(AnswerKey),
}

/// What tier 1 holds under a key.
#[derive(Debug, Clone)]
pub(super) enum Held {
    Entry(Arc<LocalEntry>),
    Answer(Arc<Answer>),
}

impl Held {
    fn weight(&self) -> u32 {
        match self {
            Held::Entry(e) => e.weight,
            Held::Answer(a) => a.weight,
        }
    }

    fn expires_in(&self) -> Duration {
        match self {
            Held::Entry(e) => e.expires_in,
            Held::Answer(a) => a.expires_in(),
        }
    }
}

struct EntryExpiry;

impl Expiry<LocalKey, Held> for EntryExpiry {
    fn expire_after_create(
        &self,
        _key: &LocalKey,
        value: &Held,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.expires_in())
    }

    fn expire_after_update(
        &self,
        _key: &LocalKey,
        value: &Held,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.expires_in())
    }
}

pub struct LocalTier {
    cache: Cache<LocalKey, Held>,
}

impl LocalTier {
    pub fn new(max_bytes: u64) -> LocalTier {
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_k: &LocalKey, v: &Held| v.weight())
            .expire_after(EntryExpiry)
            .support_invalidation_closures()
            .build();
        LocalTier { cache }
    }

    pub fn get(&self, key: &CacheKey) -> Option<Arc<LocalEntry>> {
        match self.cache.get(&LocalKey::Entry(key.clone()))? {
            Held::Entry(e) => Some(e),
            Held::Answer(_) => None,
        }
    }

    /// Stores an entry until the end of its stale window, weighed by the heap it keeps alive
    /// (see [`entry_weight`]).
    pub fn insert(&self, key: CacheKey, entry: Arc<Entry>) {
        let expires_in = Duration::from_millis((entry.stale_until_ms - now_ms()).max(0) as u64);
        if expires_in.is_zero() {
            return;
        }
        let weight = entry_weight(&key, &entry);
        self.cache.insert(
            LocalKey::Entry(key),
            Held::Entry(Arc::new(LocalEntry {
                entry,
                inserted: Instant::now(),
                stamp: Stamp::default(),
                weight,
                expires_in,
            })),
        );
    }

    pub fn remove(&self, key: &CacheKey) {
        self.cache.invalidate(&LocalKey::Entry(key.clone()));
    }

    pub fn answer(&self, key: &AnswerKey) -> Option<Arc<Answer>> {
        match self.cache.get(&LocalKey::Answer(*key))? {
            Held::Answer(a) => Some(a),
            Held::Entry(_) => None,
        }
    }

    pub fn insert_answer(&self, key: AnswerKey, answer: Answer) {
        if answer.expires_in().is_zero() {
            return;
        }
        self.cache
            .insert(LocalKey::Answer(key), Held::Answer(Arc::new(answer)));
    }

    pub fn remove_answer(&self, key: &AnswerKey) {
        self.cache.invalidate(&LocalKey::Answer(*key));
    }

    /// Drops every answer that carries one of `leads` (their rows were deleted: their personal
    /// data leaves memory now, not when it would have been evicted).
    pub fn remove_answers_of(&self, leads: &[Uuid]) {
        if leads.is_empty() {
            return;
        }
        let leads = leads.to_vec();
        let dropped = self.cache.invalidate_entries_if(move |_, held| match held {
            Held::Answer(a) => a.lead().is_some_and(|id| leads.contains(&id)),
            Held::Entry(_) => false,
        });
        if let Err(e) = dropped {
            // Only when closures are not supported, which the builder above enables.
            tracing::error!(error = %e, "could not drop a deleted lead's answers; flushing tier 1");
            self.clear();
        }
    }

    pub fn clear(&self) {
        self.cache.invalidate_all();
    }

    /// (entries, bytes by weight), after applying pending maintenance.
    pub fn usage(&self) -> (u64, u64) {
        self.cache.run_pending_tasks();
        (self.cache.entry_count(), self.cache.weighted_size())
    }
}
