//! Tier 1: an in-process moka cache bounded by bytes, whose entries never outlive their stale
//! window or the tier-1 maximum age.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::ops::compute::Op;
use moka::sync::Cache;
use moka::Expiry;

use super::entry::{now_ms, Entry};
use super::keys::CacheKey;

/// Bookkeeping moka and the allocator add to each entry, beyond its value's bytes.
const ENTRY_OVERHEAD: u32 = 256;

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
    max_age: Duration,
}

impl LocalTier {
    pub fn new(max_bytes: u64, max_age: Duration) -> LocalTier {
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_k: &CacheKey, v: &Arc<LocalEntry>| v.weight)
            .expire_after(EntryExpiry)
            .build();
        LocalTier { cache, max_age }
    }

    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    pub fn get(&self, key: &CacheKey) -> Option<Arc<LocalEntry>> {
        self.cache.get(key)
    }

    /// Stores an entry until the end of its stale window or the maximum age, whichever is
    /// first. `encoded_len` is the size of its serialised form (a fair estimate of its heap).
    pub fn insert(&self, key: CacheKey, entry: Arc<Entry>, encoded_len: usize) {
        let until_stale = Duration::from_millis((entry.stale_until_ms - now_ms()).max(0) as u64);
        let expires_in = until_stale.min(self.max_age);
        if expires_in.is_zero() {
            return;
        }
        let weight = u32::try_from(encoded_len)
            .unwrap_or(u32::MAX)
            .saturating_add(ENTRY_OVERHEAD);
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

    /// Keeps `found` for another maximum age (its generations were just confirmed), unless
    /// the entry under `key` has changed meanwhile.
    pub fn renew(&self, key: &CacheKey, found: &Arc<LocalEntry>) {
        let until_stale =
            Duration::from_millis((found.entry.stale_until_ms - now_ms()).max(0) as u64);
        let expires_in = until_stale.min(self.max_age);
        if expires_in.is_zero() {
            return;
        }
        let renewed = Arc::new(LocalEntry {
            entry: found.entry.clone(),
            inserted: Instant::now(),
            weight: found.weight,
            expires_in,
        });
        self.cache
            .entry(key.clone())
            .and_compute_with(|current| match current {
                Some(e) if Arc::ptr_eq(e.value(), found) => Op::Put(renewed),
                _ => Op::Nop,
            });
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
