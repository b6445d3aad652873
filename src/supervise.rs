//! Supervised background tasks: each runs on a task of its own, is restarted with backoff when
//! it panics or returns while the service still runs, and reports whether it is running, so
//! that a dead subscriber never passes for a live one.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::FutureExt;
use serde::Serialize;
use tokio::sync::watch;

use crate::monitoring::metrics;

/// A restart waits at least this long, doubling up to [`RESTART_MAX`].
const RESTART_MIN: Duration = Duration::from_millis(100);
const RESTART_MAX: Duration = Duration::from_secs(10);
/// A task that ran this long before it failed starts its backoff afresh.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// How one background task is doing.
#[derive(Debug, Default)]
pub struct TaskHealth {
    running: AtomicBool,
    restarts: AtomicU64,
    last_failure: Mutex<Option<String>>,
}

/// What the health endpoint shows of a task.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TaskReport {
    pub running: bool,
    pub restarts: u64,
    pub last_failure: Option<String>,
}

/// Every supervised task of the process, by name.
#[derive(Debug, Clone, Default)]
pub struct Tasks {
    tasks: Arc<Mutex<BTreeMap<&'static str, Arc<TaskHealth>>>>,
}

impl Tasks {
    pub fn new() -> Tasks {
        Tasks::default()
    }

    /// Each task's state, by name.
    pub fn report(&self) -> BTreeMap<&'static str, TaskReport> {
        self.tasks
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|(name, h)| {
                (
                    *name,
                    TaskReport {
                        running: h.running.load(Ordering::Acquire),
                        restarts: h.restarts.load(Ordering::Acquire),
                        last_failure: h.last_failure.lock().expect("not poisoned").clone(),
                    },
                )
            })
            .collect()
    }

    /// Whether every task is running.
    pub fn all_running(&self) -> bool {
        self.tasks
            .lock()
            .expect("not poisoned")
            .values()
            .all(|h| h.running.load(Ordering::Acquire))
    }

    /// Runs `make()` on a task of its own until `shutdown` turns true, restarting it with
    /// exponential backoff whenever it panics or returns before then. Each failure is logged
    /// and counted (`hotline_background_restarts_total{task}`).
    pub fn spawn<F, Fut>(&self, name: &'static str, shutdown: watch::Receiver<bool>, make: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let health = Arc::new(TaskHealth::default());
        self.tasks
            .lock()
            .expect("not poisoned")
            .insert(name, health.clone());
        metrics::background_restart(name, 0);
        tokio::spawn(supervise(name, health, shutdown, make));
    }
}

fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(RESTART_MIN)
        .with_max_delay(RESTART_MAX)
        .with_jitter()
        .without_max_times()
        .build()
}

async fn supervise<F, Fut>(
    name: &'static str,
    health: Arc<TaskHealth>,
    mut shutdown: watch::Receiver<bool>,
    make: F,
) where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut delays = backoff();
    loop {
        if *shutdown.borrow() {
            break;
        }
        health.running.store(true, Ordering::Release);
        let started = tokio::time::Instant::now();
        // Caught here rather than by a JoinHandle, so that the task's own state (flags it
        // resets on drop) is unwound before it counts as stopped.
        let outcome = std::panic::AssertUnwindSafe(make()).catch_unwind().await;
        health.running.store(false, Ordering::Release);
        if *shutdown.borrow() {
            break;
        }
        // A panic's message may carry data the task was handling: it goes to the debug log
        // only, never to the health report.
        let failure = match outcome {
            Ok(()) => "returned while the service runs",
            Err(panic) => {
                tracing::debug!(task = name, message = %panic_message(&*panic), "background task panic");
                "panicked"
            }
        };
        tracing::error!(task = name, failure, "background task failed; restarting");
        health.restarts.fetch_add(1, Ordering::AcqRel);
        *health.last_failure.lock().expect("not poisoned") = Some(failure.to_string());
        metrics::background_restart(name, 1);
        if started.elapsed() >= HEALTHY_RUN {
            delays = backoff();
        }
        let pause = delays.next().unwrap_or(RESTART_MAX);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => {}
        }
    }
    health.running.store(false, Ordering::Release);
}

/// The text of a panic's payload, when it has one.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[tokio::test]
    async fn a_task_that_panics_is_restarted_and_reported() {
        let tasks = Tasks::new();
        let (stop, shutdown) = watch::channel(false);
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        tasks.spawn("flaky", shutdown, move || {
            let runs = counted.clone();
            async move {
                if runs.fetch_add(1, Ordering::AcqRel) < 2 {
                    panic!("boom");
                }
                std::future::pending::<()>().await;
            }
        });
        for _ in 0..200 {
            if runs.load(Ordering::Acquire) >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            runs.load(Ordering::Acquire),
            3,
            "restarted after each panic"
        );
        let report = &tasks.report()["flaky"];
        assert_eq!(report.restarts, 2);
        assert!(report.running);
        assert_eq!(report.last_failure.as_deref(), Some("panicked"));
        stop.send(true).unwrap();
    }

    #[tokio::test]
    async fn a_task_that_ends_at_shutdown_is_not_restarted() {
        let tasks = Tasks::new();
        let (stop, shutdown) = watch::channel(false);
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        let mut outer = shutdown.clone();
        let inner = shutdown.clone();
        tasks.spawn("quiet", shutdown, move || {
            let runs = counted.clone();
            let mut rx = inner.clone();
            async move {
                runs.fetch_add(1, Ordering::AcqRel);
                let _ = rx.changed().await;
            }
        });
        while runs.load(Ordering::Acquire) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.send(true).unwrap();
        let _ = outer.changed().await;
        for _ in 0..50 {
            if !tasks.report()["quiet"].running {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let report = &tasks.report()["quiet"];
        assert!(!report.running);
        assert_eq!(report.restarts, 0);
        assert_eq!(runs.load(Ordering::Acquire), 1);
    }
}
