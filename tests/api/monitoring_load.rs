//! Watching the service costs it little: the public health endpoints share one database check
//! per second between all their callers, however many poll at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::app::spawn_app_full;
use crate::support::counting::{Calls, CountingStore, Method};
use crate::support::db::TestDb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_health_checks_share_one_database_ping_per_second() {
    let calls = Arc::new(Calls::default());
    let app = spawn_app_full(Arc::new(TestDb::postgres().await), &[], |_| {}, {
        let calls = calls.clone();
        move |store| Arc::new(CountingStore::new(store, calls))
    })
    .await;
    let before = calls.get(Method::Ping);
    let started = Instant::now();
    // 20 pollers, each asking again as soon as it has its answer, for two seconds.
    let pollers: Vec<_> = (0..20)
        .map(|i| {
            let client = app.client.clone();
            let url = app.url(if i % 4 == 0 {
                "/api/monitoring/health/redis"
            } else {
                "/api/monitoring/health"
            });
            tokio::spawn(async move {
                let mut answered = 0u64;
                while started.elapsed() < Duration::from_secs(2) {
                    let r = client.get(&url).send().await.unwrap();
                    assert_eq!(r.status(), 200);
                    let body: Value = r.json().await.unwrap();
                    assert!(
                        body.get("status").is_some() || body.get("enabled").is_some(),
                        "{body}"
                    );
                    answered += 1;
                }
                answered
            })
        })
        .collect();
    let mut answered = 0;
    for poller in pollers {
        answered += poller.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64().ceil() as u64;
    let pings = calls.get(Method::Ping) - before;
    // One check per second for the endpoints, plus the background probe's one per second (the
    // alerts read it); a second of slack on each for the edges of the interval.
    assert!(answered >= 40, "the pollers were answered: {answered}");
    assert!(
        pings <= 2 * (elapsed + 1),
        "{pings} database pings for {answered} health answers in {elapsed} s"
    );

    // And the figures stay current: a second later, the check is made again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = calls.get(Method::Ping);
    let r = app
        .client
        .get(app.url("/api/monitoring/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        calls.get(Method::Ping) > before,
        "a fresh check after a second"
    );
}
