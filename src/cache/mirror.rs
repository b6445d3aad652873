//! The in-process mirror of generation values, and the stamps that let a tier-1 entry skip
//! checking them one by one.
//!
//! Each mirrored generation carries the moment its trust runs out (the tier-1 maximum age after
//! Redis last confirmed it, or after it was set here). The mirror has a version that moves on
//! every change to it (a new value, a removal, a flush). An entry checked against the mirror
//! keeps a [`Stamp`]: the version it was checked at and the earliest moment one of its
//! generations runs out of trust. While the version has not moved and that moment has not come,
//! nothing the entry depends on can have changed, and the check costs one atomic load instead of
//! a concurrent-map lookup (with its clock read) per generation.
//!
//! Ordering: a writer changes the map, then moves the version; a checker reads the version, then
//! the map. A checker that read the old version may have seen the old values: its stamp carries
//! the old version, which no longer matches. A checker that read the new version sees the new
//! values. Either way no stamp vouches for a value the mirror no longer holds.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use moka::ops::compute::{CompResult, Op};
use moka::sync::Cache;

use super::entry::now_ms;
use super::keys::GenKey;

/// What one mirrored generation costs beyond its key and value: moka's entry node, its place
/// in the access deque and hash table, the frequency sketch's share, the expiry timer, and the
/// allocator's rounding (a conservative figure; see the tier-1 weigher for the same parts).
const ENTRY_OVERHEAD: u32 = 160;

/// The weight of one mirrored generation, in bytes.
pub const ENTRY_WEIGHT: u32 =
    (std::mem::size_of::<GenKey>() + std::mem::size_of::<Gen>()) as u32 + ENTRY_OVERHEAD;

#[derive(Debug, Clone, Copy)]
struct Gen {
    value: u64,
    /// Unix milliseconds after which the value is no longer trusted.
    trusted_until_ms: i64,
}

/// Generation values by key, bounded by bytes, each trusted for a time to live from its last
/// confirmation.
pub struct Mirror {
    map: Cache<GenKey, Gen>,
    ttl_ms: i64,
    version: AtomicU64,
}

impl Mirror {
    pub fn new(ttl: Duration, max_bytes: u64) -> Mirror {
        Mirror {
            map: Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_: &GenKey, _: &Gen| ENTRY_WEIGHT)
                .time_to_live(ttl)
                .build(),
            ttl_ms: ttl.as_millis() as i64,
            // Stamps start at 0, which no checked version ever is.
            version: AtomicU64::new(1),
        }
    }

    /// The mirror's version: it moves after every change.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    fn changed(&self) {
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    fn fresh(&self, value: u64) -> Gen {
        Gen {
            value,
            trusted_until_ms: now_ms() + self.ttl_ms,
        }
    }

    /// The trusted value of `key`.
    pub fn get(&self, key: &GenKey) -> Option<u64> {
        self.map
            .get(key)
            .filter(|g| now_ms() < g.trusted_until_ms)
            .map(|g| g.value)
    }

    /// Sets `key` (trusted for a full time to live from now).
    pub fn insert(&self, key: GenKey, value: u64) {
        self.map.insert(key, self.fresh(value));
        self.changed();
    }

    /// The trusted value of `key`, or `value` set as it when there is none.
    pub fn get_or_insert(&self, key: &GenKey, value: impl FnOnce() -> u64) -> u64 {
        let now = now_ms();
        let mut inserted = false;
        let result = self
            .map
            .entry(key.clone())
            .and_compute_with(|current| match current {
                Some(g) if now < g.value().trusted_until_ms => Op::Nop,
                _ => {
                    inserted = true;
                    Op::Put(self.fresh(value()))
                }
            });
        if inserted {
            self.changed();
        }
        match result {
            CompResult::Unchanged(g) | CompResult::Inserted(g) | CompResult::ReplacedWith(g) => {
                g.into_value().value
            }
            CompResult::Removed(_) | CompResult::StillNone(_) => {
                unreachable!("the computation keeps or puts a value")
            }
        }
    }

    /// Where `key` still holds `before`: takes `after` (a confirmation, or a newer value) or,
    /// for `None`, drops the key. Returns whether the key now holds `before`, confirmed.
    pub fn compare_and_set(&self, key: &GenKey, before: u64, after: Option<u64>) -> bool {
        let result =
            self.map
                .entry(key.clone())
                .and_compute_with(|current| match (current, after) {
                    (Some(g), Some(v)) if g.value().value == before => Op::Put(self.fresh(v)),
                    (Some(g), None) if g.value().value == before => Op::Remove,
                    _ => Op::Nop,
                });
        match result {
            CompResult::ReplacedWith(_) | CompResult::Removed(_) => {
                self.changed();
                after == Some(before)
            }
            _ => false,
        }
    }

    pub fn remove(&self, key: &GenKey) {
        self.map.invalidate(key);
        self.changed();
    }

    pub fn clear(&self) {
        self.map.invalidate_all();
        self.changed();
    }

    /// Every mirrored key.
    pub fn keys(&self) -> Vec<GenKey> {
        self.map.iter().map(|(k, _)| GenKey::clone(&k)).collect()
    }

    /// Whether the mirror holds another value for one of the dependencies (a write moved it).
    /// A generation the mirror does not hold (evicted, never read here) is not a change.
    pub fn any_changed(&self, deps: &[(GenKey, u64)]) -> bool {
        deps.iter()
            .any(|(key, value)| self.map.get(key).is_some_and(|g| g.value != *value))
    }

    /// Whether every dependency is current and trusted.
    pub fn all_current(&self, deps: &[(GenKey, u64)]) -> bool {
        self.trusted_until(deps, now_ms()).is_some()
    }

    /// When every dependency is current and trusted at `now`: the earliest moment one of them
    /// stops being trusted (`i64::MAX` for none).
    pub fn trusted_until(&self, deps: &[(GenKey, u64)], now: i64) -> Option<i64> {
        let mut until = i64::MAX;
        for (key, value) in deps {
            let g = self.map.get(key)?;
            if g.value != *value || now >= g.trusted_until_ms {
                return None;
            }
            until = until.min(g.trusted_until_ms);
        }
        Some(until)
    }

    /// (entries, bytes by weight), after pending maintenance.
    pub fn usage(&self) -> (u64, u64) {
        self.map.run_pending_tasks();
        (self.map.entry_count(), self.map.weighted_size())
    }
}

/// What an entry last learned from the mirror: the version it was checked at, and until when
/// its generations were trusted then.
#[derive(Debug, Default)]
pub struct Stamp {
    version: AtomicU64,
    until_ms: AtomicI64,
}

impl Stamp {
    /// Whether `deps` are all current at `now`: from the stamp alone when the mirror has not
    /// changed since it was taken, else by looking each up (and stamping the answer).
    ///
    /// Two checkers may stamp at once; a reader may then pair one's version with the other's
    /// moment. That is safe: a stamp is only written after a successful check, versions only
    /// grow, and for unchanged values the moments only grow, so a moment paired with a newer
    /// version is never later than that version's own.
    pub fn check(&self, mirror: &Mirror, deps: &[(GenKey, u64)], now: i64) -> bool {
        let version = mirror.version();
        if self.version.load(Ordering::Acquire) == version
            && now < self.until_ms.load(Ordering::Relaxed)
        {
            return true;
        }
        match mirror.trusted_until(deps, now) {
            Some(until) => {
                self.until_ms.store(until, Ordering::Relaxed);
                self.version.store(version, Ordering::Release);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::keys::Kind;
    use uuid::Uuid;

    fn lead() -> GenKey {
        GenKey::Lead(Uuid::new_v4())
    }

    #[test]
    fn a_stamp_holds_until_the_mirror_changes() {
        let mirror = Mirror::new(Duration::from_secs(60), 1 << 20);
        let (a, b) = (lead(), lead());
        mirror.insert(a.clone(), 1);
        mirror.insert(b.clone(), 2);
        let deps = vec![(a.clone(), 1), (b.clone(), 2)];
        let stamp = Stamp::default();
        let now = now_ms();
        assert!(stamp.check(&mirror, &deps, now));
        assert!(stamp.check(&mirror, &deps, now));
        mirror.insert(b.clone(), 3);
        assert!(!stamp.check(&mirror, &deps, now), "a new value is seen");
        mirror.insert(b.clone(), 2);
        assert!(stamp.check(&mirror, &deps, now));
        mirror.remove(&a);
        assert!(!stamp.check(&mirror, &deps, now), "a removal is seen");
        mirror.insert(a.clone(), 1);
        assert!(stamp.check(&mirror, &deps, now));
        mirror.clear();
        assert!(!stamp.check(&mirror, &deps, now), "a flush is seen");
    }

    #[test]
    fn a_stamp_runs_out_with_the_trust_of_its_generations() {
        let mirror = Mirror::new(Duration::from_secs(60), 1 << 20);
        let k = GenKey::Kind(Kind::Context);
        mirror.insert(k.clone(), 5);
        let deps = vec![(k, 5)];
        let stamp = Stamp::default();
        let now = now_ms();
        assert!(stamp.check(&mirror, &deps, now));
        assert!(stamp.check(&mirror, &deps, now + 59_000));
        assert!(
            !stamp.check(&mirror, &deps, now + 61_000),
            "not past the maximum age, even with the version unchanged"
        );
    }

    #[test]
    fn get_or_insert_keeps_a_trusted_value() {
        let mirror = Mirror::new(Duration::from_secs(60), 1 << 20);
        let k = lead();
        assert_eq!(mirror.get_or_insert(&k, || 7), 7);
        let version = mirror.version();
        assert_eq!(mirror.get_or_insert(&k, || 8), 7);
        assert_eq!(mirror.version(), version, "nothing changed");
    }

    #[test]
    fn compare_and_set_only_where_the_value_is_unchanged() {
        let mirror = Mirror::new(Duration::from_secs(60), 1 << 20);
        let k = lead();
        mirror.insert(k.clone(), 1);
        assert!(mirror.compare_and_set(&k, 1, Some(1)));
        assert!(!mirror.compare_and_set(&k, 9, Some(2)));
        assert_eq!(mirror.get(&k), Some(1));
        assert!(
            !mirror.compare_and_set(&k, 1, Some(2)),
            "a newer value is not a confirmation"
        );
        assert_eq!(mirror.get(&k), Some(2));
        assert!(!mirror.compare_and_set(&k, 2, None));
        assert_eq!(mirror.get(&k), None);
    }

    #[test]
    fn the_mirror_stays_within_its_bytes() {
        let budget = 64 * 1024;
        let mirror = Mirror::new(Duration::from_secs(60), budget);
        for n in 0..10_000u64 {
            mirror.insert(lead(), n + 1);
        }
        let (entries, bytes) = mirror.usage();
        assert!(bytes <= budget, "{bytes} bytes in a budget of {budget}");
        assert!(entries > 0 && entries <= budget / u64::from(ENTRY_WEIGHT));
    }
}
