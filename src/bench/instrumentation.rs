//! What instrumenting a webhook costs, measured in process: the recordings a tier-1 webhook
//! makes (its request into Prometheus and the rolling window, its three cache lookups, its
//! answer's source), timed in a loop against the same loop without them, on one thread and on
//! every core at once (the window's counters are shared, so contention is part of the cost).

use std::hint::black_box;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::monitoring::{metrics, Monitor, MonitorConfig};

const ROUTE: &str = "/webhooks/elevenlabs/conversation-initiation";
/// The lookups behind a known caller's answer.
const LOOKUPS: [&str; 3] = ["organization", "lead_by_phone", "context"];

/// One webhook's recordings, with a latency that varies as real ones do.
fn record_webhook(monitor: &Monitor, i: u64) {
    let latency = Duration::from_micros(40 + i % 400);
    for kind in LOOKUPS {
        monitor.record_cache(kind, "l1_hit");
    }
    metrics::webhook_answer("l1");
    monitor.record_request(ROUTE, "POST", 200, latency);
}

/// The same loop with nothing recorded.
fn record_nothing(i: u64) {
    black_box(Duration::from_micros(40 + i % 400));
}

/// Nanoseconds per iteration of `f` over `iterations`, on `threads` threads at once.
fn per_iteration(threads: usize, iterations: u64, f: &(dyn Fn(u64) + Sync)) -> f64 {
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                for i in 0..iterations {
                    f(black_box(i));
                }
            });
        }
    });
    started.elapsed().as_nanos() as f64 / iterations as f64
}

/// Measures with and without instrumentation; the JSON report.
pub fn measure(iterations: u64) -> Value {
    let monitor = Monitor::new(MonitorConfig::default());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let with = |i| record_webhook(&monitor, i);
    // A first pass creates the label handles and warms the caches; it is not counted.
    per_iteration(1, iterations / 10 + 1, &with);
    let mut runs = Vec::new();
    for t in [1, threads] {
        let without_ns = per_iteration(t, iterations, &record_nothing);
        let with_ns = per_iteration(t, iterations, &with);
        runs.push(json!({
            "threads": t,
            "with_ns_per_webhook": with_ns,
            "without_ns_per_webhook": without_ns,
            "instrumentation_ns_per_webhook": (with_ns - without_ns).max(0.0),
        }));
        if threads == 1 {
            break;
        }
    }
    let window = monitor.summary();
    json!({
        "label": "instrumentation",
        "scenario": "instrumentation",
        "iterations": iterations,
        "recordings_per_webhook": LOOKUPS.len() + 2,
        "runs": runs,
        // What the rolling window counted: every recorded webhook, when the run took under
        // its 60 seconds.
        "window_requests": window.requests,
        "window_cache_lookups": window.cache_requests,
    })
}

/// One line for people.
pub fn human_line(report: &Value) -> String {
    let runs: Vec<String> = report["runs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            format!(
                "{} thread(s): {:.0} ns per webhook ({:.0} ns with, {:.0} ns without)",
                r["threads"],
                r["instrumentation_ns_per_webhook"]
                    .as_f64()
                    .unwrap_or(f64::NAN),
                r["with_ns_per_webhook"].as_f64().unwrap_or(f64::NAN),
                r["without_ns_per_webhook"].as_f64().unwrap_or(f64::NAN),
            )
        })
        .collect();
    format!("instrumentation: {}", runs.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_counts_every_recording_and_never_goes_negative() {
        let report = measure(2_000);
        assert_eq!(report["iterations"], 2_000);
        assert_eq!(report["recordings_per_webhook"], 5);
        let runs = report["runs"].as_array().expect("runs");
        assert!(!runs.is_empty());
        for r in runs {
            assert!(r["instrumentation_ns_per_webhook"].as_f64().unwrap() >= 0.0);
            assert!(r["with_ns_per_webhook"].as_f64().unwrap() > 0.0);
        }
        // The recordings reached the window: it counted every webhook and lookup.
        let recorded: u64 = 2_000 / 10
            + 1
            + runs
                .iter()
                .map(|r| 2_000 * r["threads"].as_u64().unwrap())
                .sum::<u64>();
        assert_eq!(report["window_requests"], recorded);
        assert_eq!(report["window_cache_lookups"], recorded * 3);
        let line = human_line(&report);
        assert!(line.starts_with("instrumentation: 1 thread(s): "), "{line}");
    }
}
