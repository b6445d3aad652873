//! Rolling statistics over the last minute, for `/api/monitoring/metrics`, the dashboard and
//! the alerts.
//!
//! A ring of [`WINDOW_S`] one-second slots. A slot is keyed by its second; a slot whose second
//! has left the window is reset when it is reused, so nothing older than the window is ever
//! read. Seconds are counted on a monotonic clock from the window's creation (a wall-clock step
//! cannot mis-key a slot); every method has an `_at` twin that takes that second explicitly,
//! for tests and replays.
//!
//! Latencies go into real histograms (log-scaled buckets from 1 µs to 60 s, each 5 % wider than
//! the one before) that are merged across slots before a percentile is read: a percentile is
//! never an average of per-second percentiles, and an average is a true sum over a count.
//! Percentiles are exact to within a bucket (±2.5 %), and clamped to the observed min and max.
//!
//! Definitions (also in the module docs of [`super`]):
//! - `requests_per_s`: requests in the window over the seconds the window covers (fewer than 60
//!   just after start); 0 when there are none.
//! - `error_rate_pct`: responses with a 5xx status over all responses.
//! - `cache.hit_rate_pct` = (l1 hits + l2 hits) / (l1 hits + l2 hits + misses + stale). A stale
//!   answer (served past its TTL because the database failed) is not a hit: the cache could not
//!   answer freshly. `l1_hit_rate_pct` and `l2_hit_rate_pct` share that denominator, so they add
//!   up to `hit_rate_pct`.
//! - `redis.latency_ms`: mean Redis command latency in the window.
//! - Any figure computed over nothing (no requests, no cache lookups, no Redis commands) is
//!   `null`, not 0: "no data" must not read as "0 % hit rate" or "0 ms".

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Map, Value};

/// Seconds covered by the window.
pub const WINDOW_S: u64 = 60;
/// Distinct (route, method) pairs tracked per route; more go into `other`.
pub const MAX_ROUTES: usize = 64;
/// The cache kinds, in the order of [`crate::cache::Kind::ALL`].
pub const KINDS: [&str; 7] = [
    "organization",
    "lead",
    "lead_by_phone",
    "context",
    "summary",
    "greeting",
    "history",
];
/// The results of a cache lookup (the `result` label).
pub const CACHE_RESULTS: [&str; 4] = ["l1_hit", "l2_hit", "miss", "stale"];

/// The route name for requests past [`MAX_ROUTES`].
const OTHER_ROUTE: &str = "other";
const OTHER_METHOD: &str = "*";

// Histogram buckets: bucket 0 holds everything up to 1 µs, bucket i holds
// (1 µs · 1.05^(i-1), 1 µs · 1.05^i], the last one everything above 60 s.
const BUCKET_MIN_NS: f64 = 1_000.0;
const BUCKET_GROWTH: f64 = 1.05;
/// 1 / ln(1.05)
const INV_LN_GROWTH: f64 = 20.495_934_314_287_85;
const BUCKETS: usize = 369;

fn bucket_of(ns: u64) -> usize {
    let x = ns as f64 / BUCKET_MIN_NS;
    if x <= 1.0 {
        return 0;
    }
    ((x.ln() * INV_LN_GROWTH).ceil() as usize).min(BUCKETS - 1)
}

/// A value that stands for bucket `i`: the geometric middle of its bounds.
fn bucket_value_ns(i: usize) -> f64 {
    if i == 0 {
        return BUCKET_MIN_NS;
    }
    BUCKET_MIN_NS * BUCKET_GROWTH.powf(i as f64 - 0.5)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn kind_index(kind: &str) -> Option<usize> {
    KINDS.iter().position(|k| *k == kind)
}

fn result_index(result: &str) -> Option<usize> {
    CACHE_RESULTS.iter().position(|r| *r == result)
}

fn ms(ns: f64) -> f64 {
    round(ns / 1e6, 3)
}

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

fn pct(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| round(part as f64 * 100.0 / whole as f64, 2))
}

/// A latency histogram. Counts are per bucket; `lo..=hi` bounds the buckets in use so that
/// merging and resetting touch only those.
#[derive(Debug, Clone)]
struct Hist {
    counts: Box<[u32]>,
    count: u64,
    sum_ns: u64,
    min_ns: u64,
    max_ns: u64,
    lo: usize,
    hi: usize,
}

impl Hist {
    fn new() -> Self {
        Hist {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            count: 0,
            sum_ns: 0,
            min_ns: u64::MAX,
            max_ns: 0,
            lo: BUCKETS,
            hi: 0,
        }
    }

    fn record(&mut self, ns: u64, bucket: usize) {
        self.counts[bucket] = self.counts[bucket].saturating_add(1);
        self.count += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
        self.min_ns = self.min_ns.min(ns);
        self.max_ns = self.max_ns.max(ns);
        self.lo = self.lo.min(bucket);
        self.hi = self.hi.max(bucket);
    }

    fn reset(&mut self) {
        if self.count > 0 {
            self.counts[self.lo..=self.hi].fill(0);
        }
        self.count = 0;
        self.sum_ns = 0;
        self.min_ns = u64::MAX;
        self.max_ns = 0;
        self.lo = BUCKETS;
        self.hi = 0;
    }

    fn merge(&mut self, other: &Hist) {
        if other.count == 0 {
            return;
        }
        for i in other.lo..=other.hi {
            self.counts[i] = self.counts[i].saturating_add(other.counts[i]);
        }
        self.count += other.count;
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
        self.min_ns = self.min_ns.min(other.min_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
        self.lo = self.lo.min(other.lo);
        self.hi = self.hi.max(other.hi);
    }

    /// The nearest-rank `q` quantile (0 < q ≤ 1), in nanoseconds.
    fn quantile_ns(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0u64;
        for i in self.lo..=self.hi {
            seen += u64::from(self.counts[i]);
            if seen >= rank {
                let v = bucket_value_ns(i).clamp(self.min_ns as f64, self.max_ns as f64);
                return Some(v);
            }
        }
        Some(self.max_ns as f64)
    }

    fn mean_ns(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum_ns as f64 / self.count as f64)
    }

    fn quantile_ms(&self, q: f64) -> Option<f64> {
        self.quantile_ns(q).map(ms)
    }

    fn mean_ms(&self) -> Option<f64> {
        self.mean_ns().map(ms)
    }

    fn max_ms(&self) -> Option<f64> {
        (self.count > 0).then(|| ms(self.max_ns as f64))
    }
}

#[derive(Debug)]
struct RouteStat {
    hist: Hist,
    errors: u64,
}

const EMPTY: u64 = u64::MAX;

#[derive(Debug)]
struct Slot {
    second: u64,
    requests: Hist,
    errors: u64,
    /// Indexed by route id; allocated on first use and kept (zeroed) across reuse, so memory
    /// is bounded by `WINDOW_S × (MAX_ROUTES + 1)` histograms of 1.5 kB.
    routes: Vec<Option<RouteStat>>,
    cache: [[u64; 4]; KINDS.len()],
    loads: [Option<Hist>; KINDS.len()],
    redis: Option<Hist>,
}

impl Slot {
    fn new() -> Self {
        Slot {
            second: EMPTY,
            requests: Hist::new(),
            errors: 0,
            routes: Vec::new(),
            cache: [[0; 4]; KINDS.len()],
            loads: Default::default(),
            redis: None,
        }
    }

    fn reset(&mut self, second: u64) {
        self.second = second;
        self.requests.reset();
        self.errors = 0;
        for r in self.routes.iter_mut().flatten() {
            r.hist.reset();
            r.errors = 0;
        }
        self.cache = [[0; 4]; KINDS.len()];
        for h in self.loads.iter_mut().flatten() {
            h.reset();
        }
        if let Some(h) = &mut self.redis {
            h.reset();
        }
    }

    fn in_window(&self, now_s: u64) -> bool {
        self.second != EMPTY && self.second <= now_s && now_s - self.second < WINDOW_S
    }
}

/// (route, method) pairs to small ids, bounded.
#[derive(Debug, Default)]
struct Routes {
    by_route: HashMap<Box<str>, Vec<(Box<str>, usize)>>,
    names: Vec<(Box<str>, Box<str>)>,
}

impl Routes {
    fn find(&self, route: &str, method: &str) -> Option<usize> {
        self.by_route
            .get(route)
            .and_then(|ms| ms.iter().find(|(m, _)| &**m == method))
            .map(|(_, id)| *id)
    }

    fn id(&mut self, route: &str, method: &str) -> usize {
        if let Some(id) = self
            .by_route
            .get(route)
            .and_then(|ms| ms.iter().find(|(m, _)| &**m == method))
            .map(|(_, id)| *id)
        {
            return id;
        }
        let (route, method) = if self.names.len() < MAX_ROUTES {
            (route, method)
        } else {
            (OTHER_ROUTE, OTHER_METHOD)
        };
        if let Some(id) = self
            .by_route
            .get(route)
            .and_then(|ms| ms.iter().find(|(m, _)| &**m == method))
            .map(|(_, id)| *id)
        {
            return id;
        }
        let id = self.names.len();
        self.names.push((route.into(), method.into()));
        self.by_route
            .entry(route.into())
            .or_default()
            .push((method.into(), id));
        id
    }
}

impl Slot {
    /// This slot as the one for `now_s`: reset first if it still holds an older second.
    fn claim(&mut self, now_s: u64) -> &mut Slot {
        if self.second == EMPTY || self.second < now_s {
            self.reset(now_s);
        }
        self
    }
}

/// Cache figures of [`WindowSummary`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CacheSummary {
    pub hit_rate_pct: Option<f64>,
    pub l1_hit_rate_pct: Option<f64>,
    pub l2_hit_rate_pct: Option<f64>,
}

/// Redis figures of [`WindowSummary`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RedisSummary {
    pub latency_ms: Option<f64>,
}

/// The call figures of the monitoring summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CallsSummary {
    pub active: i64,
    pub started_last_minute: i64,
}

/// The `/api/monitoring/metrics` body (exactly the contract's fields; the sample counts the
/// alerts need are not serialised).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowSummary {
    pub window_s: u64,
    pub requests_per_s: f64,
    pub avg_response_ms: Option<f64>,
    pub p50_response_ms: Option<f64>,
    pub p95_response_ms: Option<f64>,
    pub p99_response_ms: Option<f64>,
    pub error_rate_pct: Option<f64>,
    pub cache: CacheSummary,
    pub redis: RedisSummary,
    /// Calls across every instance, as this one last counted them; absent when calls are off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calls: Option<CallsSummary>,
    /// Requests in the window.
    #[serde(skip)]
    pub requests: u64,
    /// Cache lookups in the window (hits, misses and stale answers).
    #[serde(skip)]
    pub cache_requests: u64,
}

/// Rolling one-minute statistics.
///
/// Each one-second slot has a lock of its own, and the route names another: a record takes the
/// lock of the current second's slot (and, once per new route, the names' write lock) for a few
/// dozen nanoseconds (`hotline bench --scenario instrumentation` measures it). A reader takes
/// one slot's lock at a time, merges that slot and lets go, so building a snapshot (sixty
/// slots of histograms) never holds up the requests being recorded: at worst one waits while
/// the reader merges the current second's slot.
#[derive(Debug)]
pub struct Window {
    started: Instant,
    slots: Box<[Mutex<Slot>]>,
    routes: RwLock<Routes>,
}

impl Default for Window {
    fn default() -> Self {
        Self::new()
    }
}

impl Window {
    pub fn new() -> Self {
        Window {
            started: Instant::now(),
            slots: (0..WINDOW_S).map(|_| Mutex::new(Slot::new())).collect(),
            routes: RwLock::new(Routes::default()),
        }
    }

    /// The current second on the window's clock.
    pub fn now_s(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    // A panic while holding a lock leaves at worst a half-counted record: keep going.

    fn lock(slot: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
        slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The slot of `now_s`, locked.
    fn slot(&self, now_s: u64) -> MutexGuard<'_, Slot> {
        let mut slot = Self::lock(&self.slots[(now_s % WINDOW_S) as usize]);
        slot.claim(now_s);
        slot
    }

    /// Runs `f` on each slot in the window at `now_s`, one lock at a time, and `between` after
    /// each with no lock held.
    fn each_live(&self, now_s: u64, mut f: impl FnMut(&Slot), mut between: impl FnMut()) {
        for slot in self.slots.iter() {
            {
                let slot = Self::lock(slot);
                if slot.in_window(now_s) {
                    f(&slot);
                }
            }
            between();
        }
    }

    fn route_id(&self, route: &str, method: &str) -> usize {
        let known = self
            .routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .find(route, method);
        known.unwrap_or_else(|| {
            self.routes
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .id(route, method)
        })
    }

    /// One HTTP response: `route` is the route template (never a raw path), a 5xx counts as
    /// an error.
    pub fn record_request(&self, route: &str, method: &str, status: u16, d: Duration) {
        self.record_request_at(self.now_s(), route, method, status, d);
    }

    pub fn record_request_at(
        &self,
        now_s: u64,
        route: &str,
        method: &str,
        status: u16,
        d: Duration,
    ) {
        let ns = nanos(d);
        let bucket = bucket_of(ns);
        let error = status >= 500;
        let id = self.route_id(route, method);
        let mut slot = self.slot(now_s);
        slot.requests.record(ns, bucket);
        slot.errors += u64::from(error);
        if slot.routes.len() <= id {
            slot.routes.resize_with(id + 1, || None);
        }
        let stat = slot.routes[id].get_or_insert_with(|| RouteStat {
            hist: Hist::new(),
            errors: 0,
        });
        stat.hist.record(ns, bucket);
        stat.errors += u64::from(error);
    }

    /// One cache lookup: `kind` one of [`KINDS`], `result` one of [`CACHE_RESULTS`]; anything
    /// else is ignored.
    pub fn record_cache(&self, kind: &str, result: &str) {
        self.record_cache_at(self.now_s(), kind, result);
    }

    pub fn record_cache_at(&self, now_s: u64, kind: &str, result: &str) {
        let (Some(k), Some(r)) = (kind_index(kind), result_index(result)) else {
            return;
        };
        self.slot(now_s).cache[k][r] += 1;
    }

    /// One load from the store for a cache kind.
    pub fn record_load(&self, kind: &str, d: Duration) {
        self.record_load_at(self.now_s(), kind, d);
    }

    pub fn record_load_at(&self, now_s: u64, kind: &str, d: Duration) {
        let Some(k) = kind_index(kind) else {
            return;
        };
        let ns = nanos(d);
        let bucket = bucket_of(ns);
        self.slot(now_s).loads[k]
            .get_or_insert_with(Hist::new)
            .record(ns, bucket);
    }

    /// One Redis command.
    pub fn record_redis(&self, d: Duration) {
        self.record_redis_at(self.now_s(), d);
    }

    pub fn record_redis_at(&self, now_s: u64, d: Duration) {
        let ns = nanos(d);
        let bucket = bucket_of(ns);
        self.slot(now_s)
            .redis
            .get_or_insert_with(Hist::new)
            .record(ns, bucket);
    }

    /// Requests in the window (the alerts' sample count).
    pub fn requests_in_window(&self) -> u64 {
        self.requests_in_window_at(self.now_s())
    }

    pub fn requests_in_window_at(&self, now_s: u64) -> u64 {
        let mut requests = 0;
        self.each_live(now_s, |slot| requests += slot.requests.count, || {});
        requests
    }

    /// Seconds the window covers at `now_s`: the full window, or less just after start.
    fn span_s(now_s: u64) -> u64 {
        (now_s + 1).min(WINDOW_S)
    }

    pub fn summary(&self) -> WindowSummary {
        self.summary_at(self.now_s())
    }

    pub fn summary_at(&self, now_s: u64) -> WindowSummary {
        let mut requests = Hist::new();
        let mut redis = Hist::new();
        let mut errors = 0;
        let mut cache = [0u64; 4];
        self.each_live(
            now_s,
            |slot| {
                requests.merge(&slot.requests);
                errors += slot.errors;
                for per_kind in &slot.cache {
                    for (total, n) in cache.iter_mut().zip(per_kind) {
                        *total += n;
                    }
                }
                if let Some(h) = &slot.redis {
                    redis.merge(h);
                }
            },
            || {},
        );
        let [l1, l2, miss, stale] = cache;
        let lookups = l1 + l2 + miss + stale;
        WindowSummary {
            window_s: WINDOW_S,
            requests_per_s: round(requests.count as f64 / Self::span_s(now_s) as f64, 3),
            avg_response_ms: requests.mean_ms(),
            p50_response_ms: requests.quantile_ms(0.50),
            p95_response_ms: requests.quantile_ms(0.95),
            p99_response_ms: requests.quantile_ms(0.99),
            error_rate_pct: pct(errors, requests.count),
            cache: CacheSummary {
                hit_rate_pct: pct(l1 + l2, lookups),
                l1_hit_rate_pct: pct(l1, lookups),
                l2_hit_rate_pct: pct(l2, lookups),
            },
            redis: RedisSummary {
                latency_ms: redis.mean_ms(),
            },
            calls: None,
            requests: requests.count,
            cache_requests: lookups,
        }
    }

    /// `/api/monitoring/metrics/performance`: per route and method (busiest first) and per
    /// cache kind, over the window.
    pub fn performance(&self) -> Value {
        self.performance_at(self.now_s())
    }

    pub fn performance_at(&self, now_s: u64) -> Value {
        self.performance_observed(now_s, || {})
    }

    /// [`Window::performance_at`], calling `between` after each slot is merged, with no lock
    /// held (the tests record from there).
    fn performance_observed(&self, now_s: u64, between: impl FnMut()) -> Value {
        let span = Self::span_s(now_s) as f64;
        // By route id: the merged histogram and the errors.
        let mut by_route: Vec<Option<(Hist, u64)>> = Vec::new();
        let mut loads: Vec<Hist> = (0..KINDS.len()).map(|_| Hist::new()).collect();
        let mut cache = [[0u64; 4]; KINDS.len()];
        let mut redis = Hist::new();
        self.each_live(
            now_s,
            |slot| {
                for (id, stat) in slot.routes.iter().enumerate() {
                    let Some(stat) = stat else { continue };
                    if stat.hist.count == 0 {
                        continue;
                    }
                    if by_route.len() <= id {
                        by_route.resize_with(id + 1, || None);
                    }
                    let (h, e) = by_route[id].get_or_insert_with(|| (Hist::new(), 0));
                    h.merge(&stat.hist);
                    *e += stat.errors;
                }
                for (total, h) in loads.iter_mut().zip(&slot.loads) {
                    if let Some(h) = h {
                        total.merge(h);
                    }
                }
                for (total, per_kind) in cache.iter_mut().zip(&slot.cache) {
                    for (t, n) in total.iter_mut().zip(per_kind) {
                        *t += n;
                    }
                }
                if let Some(h) = &slot.redis {
                    redis.merge(h);
                }
            },
            between,
        );
        let mut routes: Vec<(usize, Hist, u64)> = by_route
            .into_iter()
            .enumerate()
            .filter_map(|(id, stat)| stat.map(|(h, e)| (id, h, e)))
            .collect();
        routes.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(&b.0)));
        let names = self.routes.read().unwrap_or_else(PoisonError::into_inner);
        let routes: Vec<Value> = routes
            .iter()
            .map(|(id, h, errors)| {
                let (route, method) = &names.names[*id];
                json!({
                    "route": &**route,
                    "method": &**method,
                    "count": h.count,
                    "requests_per_s": round(h.count as f64 / span, 3),
                    "error_rate_pct": pct(*errors, h.count),
                    "avg_ms": h.mean_ms(),
                    "p50_ms": h.quantile_ms(0.50),
                    "p95_ms": h.quantile_ms(0.95),
                    "p99_ms": h.quantile_ms(0.99),
                    "max_ms": h.max_ms(),
                })
            })
            .collect();
        drop(names);
        let mut kinds = Map::new();
        for (i, kind) in KINDS.iter().enumerate() {
            let [l1, l2, miss, stale] = cache[i];
            let lookups = l1 + l2 + miss + stale;
            let h = &loads[i];
            kinds.insert(
                (*kind).to_string(),
                json!({
                    "requests": lookups,
                    "hits_l1": l1,
                    "hits_l2": l2,
                    "misses": miss,
                    "stale": stale,
                    "hit_rate_pct": pct(l1 + l2, lookups),
                    "loads": h.count,
                    "load_avg_ms": h.mean_ms(),
                    "load_p50_ms": h.quantile_ms(0.50),
                    "load_p95_ms": h.quantile_ms(0.95),
                    "load_p99_ms": h.quantile_ms(0.99),
                    "load_max_ms": h.max_ms(),
                }),
            );
        }
        json!({
            "window_s": WINDOW_S,
            "routes": routes,
            "kinds": kinds,
            "redis": {
                "commands": redis.count,
                "avg_ms": redis.mean_ms(),
                "p50_ms": redis.quantile_ms(0.50),
                "p95_ms": redis.quantile_ms(0.95),
                "p99_ms": redis.quantile_ms(0.99),
                "max_ms": redis.max_ms(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms_d(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn close(actual: Option<f64>, expected: f64) {
        let a = actual.expect("a value");
        let tolerance = expected * 0.026 + 1e-9;
        assert!(
            (a - expected).abs() <= tolerance,
            "{a} is not within a bucket of {expected}"
        );
    }

    #[test]
    fn kinds_match_the_cache() {
        let names: Vec<&str> = crate::cache::Kind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names, KINDS);
    }

    #[test]
    fn buckets_cover_1us_to_60s_at_5_percent() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1_000), 0);
        assert_eq!(bucket_of(1_001), 1);
        assert_eq!(bucket_of(60_000_000_000), BUCKETS - 1);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        for ns in [
            1_500u64,
            20_000,
            999_999,
            5_000_000,
            123_456_789,
            30_000_000_000,
        ] {
            let v = bucket_value_ns(bucket_of(ns));
            assert!((v - ns as f64).abs() / ns as f64 <= 0.025, "{ns} -> {v}");
        }
    }

    #[test]
    fn percentiles_from_known_inputs() {
        let w = Window::new();
        // 1..=100 ms, one request each: p50 = 50 ms, p95 = 95 ms, p99 = 99 ms, mean 50.5 ms.
        for i in 1..=100 {
            w.record_request_at(10, "/x", "GET", 200, ms_d(i));
        }
        let s = w.summary_at(10);
        close(s.p50_response_ms, 50.0);
        close(s.p95_response_ms, 95.0);
        close(s.p99_response_ms, 99.0);
        assert_eq!(s.avg_response_ms, Some(50.5));
        assert_eq!(s.requests, 100);
        assert_eq!(s.error_rate_pct, Some(0.0));
    }

    #[test]
    fn percentiles_merge_across_slots_not_average_of_averages() {
        let w = Window::new();
        // Second 1: 90 fast requests (1 ms); second 2: 10 slow ones (500 ms).
        for _ in 0..90 {
            w.record_request_at(1, "/x", "GET", 200, ms_d(1));
        }
        for _ in 0..10 {
            w.record_request_at(2, "/x", "GET", 200, ms_d(500));
        }
        let s = w.summary_at(2);
        close(s.p50_response_ms, 1.0);
        close(s.p95_response_ms, 500.0);
        // The mean is over requests, (90·1 + 10·500) / 100, not (1 + 500) / 2.
        assert_eq!(s.avg_response_ms, Some(50.9));
        close(s.p99_response_ms, 500.0);
        // Clamped to what was observed: never above the max.
        assert!(s.p99_response_ms.unwrap() <= 500.0);
        assert_eq!(s.requests_per_s, 33.333);
    }

    #[test]
    fn slots_older_than_the_window_drop_out() {
        let w = Window::new();
        w.record_request_at(100, "/x", "GET", 500, ms_d(10));
        w.record_cache_at(100, "lead", "miss");
        w.record_redis_at(100, ms_d(2));
        assert_eq!(w.requests_in_window_at(100), 1);
        assert_eq!(w.requests_in_window_at(159), 1);
        assert_eq!(w.requests_in_window_at(160), 0);
        let s = w.summary_at(160);
        assert_eq!(s.requests, 0);
        assert_eq!(s.requests_per_s, 0.0);
        assert_eq!(s.p99_response_ms, None);
        assert_eq!(s.error_rate_pct, None);
        assert_eq!(s.cache.hit_rate_pct, None);
        assert_eq!(s.redis.latency_ms, None);

        // Reusing the slot (160 % 60 == 100 % 60) resets it.
        w.record_request_at(160, "/x", "GET", 200, ms_d(1));
        let s = w.summary_at(160);
        assert_eq!(s.requests, 1);
        assert_eq!(s.error_rate_pct, Some(0.0));
        assert_eq!(s.cache.hit_rate_pct, None);
        // A stale slot is not read even if its index is not reused yet.
        w.record_request_at(161, "/y", "GET", 200, ms_d(1));
        assert_eq!(w.requests_in_window_at(220), 1);
        assert_eq!(w.requests_in_window_at(221), 0);
    }

    #[test]
    fn hit_rate_math() {
        let w = Window::new();
        for _ in 0..6 {
            w.record_cache_at(5, "lead", "l1_hit");
        }
        for _ in 0..2 {
            w.record_cache_at(5, "context", "l2_hit");
        }
        w.record_cache_at(5, "greeting", "miss");
        w.record_cache_at(6, "lead", "stale");
        // Unknown kinds and results are ignored.
        w.record_cache_at(6, "phone", "l1_hit");
        w.record_cache_at(6, "lead", "hit");
        let s = w.summary_at(6);
        assert_eq!(s.cache_requests, 10);
        assert_eq!(s.cache.hit_rate_pct, Some(80.0));
        assert_eq!(s.cache.l1_hit_rate_pct, Some(60.0));
        assert_eq!(s.cache.l2_hit_rate_pct, Some(20.0));
        let p = w.performance_at(6);
        assert_eq!(p["kinds"]["lead"]["requests"], 7);
        assert_eq!(p["kinds"]["lead"]["stale"], 1);
        assert_eq!(p["kinds"]["greeting"]["hit_rate_pct"], 0.0);
        assert_eq!(p["kinds"]["summary"]["hit_rate_pct"], Value::Null);
    }

    #[test]
    fn error_rate_counts_5xx_only() {
        let w = Window::new();
        for status in [200, 201, 404, 422, 500, 503, 200, 200, 200, 200] {
            w.record_request_at(0, "/x", "GET", status, ms_d(1));
        }
        assert_eq!(w.summary_at(0).error_rate_pct, Some(20.0));
    }

    #[test]
    fn summary_serialises_exactly_the_contract_fields() {
        let w = Window::new();
        let v = serde_json::to_value(w.summary_at(0)).unwrap();
        let mut keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "avg_response_ms",
                "cache",
                "error_rate_pct",
                "p50_response_ms",
                "p95_response_ms",
                "p99_response_ms",
                "redis",
                "requests_per_s",
                "window_s"
            ]
        );
        assert_eq!(
            v["cache"],
            json!({"hit_rate_pct": null, "l1_hit_rate_pct": null, "l2_hit_rate_pct": null})
        );
        assert_eq!(v["redis"], json!({"latency_ms": null}));
        assert_eq!(v["window_s"], 60);
    }

    #[test]
    fn performance_per_route_and_kind() {
        let w = Window::new();
        for i in 1..=10 {
            w.record_request_at(3, "/api/leads/{id}", "GET", 200, ms_d(i));
        }
        w.record_request_at(3, "/api/leads/{id}", "PATCH", 503, ms_d(40));
        for i in 1..=4 {
            w.record_load_at(3, "lead", ms_d(i * 10));
        }
        w.record_redis_at(3, Duration::from_micros(300));
        let p = w.performance_at(3);
        let routes = p["routes"].as_array().unwrap();
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[0]["method"], "GET");
        assert_eq!(routes[0]["count"], 10);
        assert_eq!(routes[0]["max_ms"], 10.0);
        assert_eq!(routes[1]["method"], "PATCH");
        assert_eq!(routes[1]["error_rate_pct"], 100.0);
        assert_eq!(p["kinds"]["lead"]["loads"], 4);
        assert_eq!(p["kinds"]["lead"]["load_max_ms"], 40.0);
        close(p["kinds"]["lead"]["load_p50_ms"].as_f64(), 20.0);
        assert_eq!(p["kinds"]["context"]["load_p99_ms"], Value::Null);
        assert_eq!(p["redis"]["commands"], 1);
        assert_eq!(p["redis"]["max_ms"], 0.3);
    }

    #[test]
    fn recording_goes_on_while_a_snapshot_is_being_built() {
        // The reader calls back after each slot it merged; from there this thread records
        // into the current second (the slot a reader would hold last) and a route never seen
        // (the names' write lock). Were any lock held across the snapshot, the record would
        // wait for it forever: the thread would never answer.
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let w = Window::new();
            for s in 0..WINDOW_S {
                w.record_request_at(s, "/old", "GET", 200, ms_d(1));
            }
            let now = WINDOW_S - 1;
            let mut recorded = 0u64;
            let p = w.performance_observed(now, || {
                w.record_request_at(now, "/during", "POST", 500, ms_d(2));
                w.record_cache_at(now, "lead", "l1_hit");
                recorded += 1;
            });
            // The snapshot is consistent with some moment of its build: whole slots.
            let old = p["routes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["route"] == "/old")
                .unwrap()["count"]
                .as_u64()
                .unwrap();
            let after = w.performance_at(now);
            done.send((old, recorded, after)).unwrap();
        });
        let (old, recorded, after) = finished
            .recv_timeout(Duration::from_secs(60))
            .expect("recording never waited for the snapshot");
        assert_eq!(old, WINDOW_S);
        assert_eq!(recorded, WINDOW_S);
        let during = after["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["route"] == "/during")
            .unwrap()
            .clone();
        assert_eq!(during["count"], WINDOW_S);
        assert_eq!(during["error_rate_pct"], 100.0);
        assert_eq!(after["kinds"]["lead"]["hits_l1"], WINDOW_S);
    }

    #[test]
    fn routes_are_bounded() {
        let w = Window::new();
        for i in 0..(MAX_ROUTES + 10) {
            w.record_request_at(0, &format!("/r{i}"), "GET", 200, ms_d(1));
        }
        let p = w.performance_at(0);
        let routes = p["routes"].as_array().unwrap();
        assert_eq!(routes.len(), MAX_ROUTES + 1);
        assert_eq!(routes[0]["route"], "other");
        assert_eq!(routes[0]["count"], 10);
    }
}
