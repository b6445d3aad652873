//! Tier 1: an in-process moka cache bounded by bytes, whose entries never outlive their stale
//! window. (The tier-1 maximum age is kept by the generations an entry is checked against on
//! every hit: see `Generations`.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;
use moka::Expiry;

use super::entry::{now_ms, Entry};
use super::heap::entry_weight;
use super::keys::CacheKey;

#[derive(Debug)]
pub struct LocalEntry {
    pub entry: Arc<Entry>,
    pub inserted: Instant,
    weight: u32,
    expires_in: Duration,
}

struct EntryExpiry;

impl Expiry<CacheKey, Arc<LocalEntry>> for EntryExpiry {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &Arc<LocalEntry>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.expires_in)
    }

    fn expire_after_update(
        &self,
        _key: &CacheKey,
        value: &Arc<LocalEntry>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.expires_in)
    }
}

pub struct LocalTier {
    cache: Cache<CacheKey, Arc<LocalEntry>>,
}

impl LocalTier {
    pub fn new(max_bytes: u64) -> LocalTier {
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_k: &CacheKey, v: &Arc<LocalEntry>| v.weight)
            .expire_after(EntryExpiry)
            .build();
        LocalTier { cache }
    }

    pub fn get(&self, key: &CacheKey) -> Option<Arc<LocalEntry>> {
        self.cache.get(key)
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
            key,
            Arc::new(LocalEntry {
                entry,
                inserted: Instant::now(),
                weight,
                expires_in,
            }),
        );
    }

    pub fn remove(&self, key: &CacheKey) {
        self.cache.invalidate(key);
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
