//! A handler that panics (a bug) answers a JSON 500, and is logged at error with its route (and
//! nothing personal from the panic's message), counted in `hotline_panics_total`, and counted
//! as a 500 in the rolling window. The bug is a store method that panics, wrapped around the
//! real store; nothing in the app panics on purpose.

use std::sync::Arc;

use serde_json::{json, Value};

use crate::support::app::{assert_error, spawn_app_full};
use crate::support::capture::Capture;
use crate::support::counting::{Calls, CountingStore, Method};
use crate::support::db::TestDb;
use crate::support::raw::metric;

const NAME: &str = "Zebulon Quixote";
const CALLER: &str = "+16129782029";

async fn panics_total(app: &crate::support::app::TestApp) -> f64 {
    let text = app.metrics_text().await;
    metric(&text, "hotline_panics_total").expect("exported from start")
}

// A current-thread runtime: the app runs on this thread, so the log capture below (this
// thread's default subscriber) sees every line it writes, and no other test's.
#[tokio::test]
async fn a_panicking_handler_is_logged_counted_and_answered_500() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(capture.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let calls = Arc::new(Calls::default());
    let message = format!("unexpected row for {NAME} at {CALLER}");
    let app = spawn_app_full(Arc::new(TestDb::postgres().await), &[], |_| {}, {
        let calls = calls.clone();
        move |store| {
            Arc::new(CountingStore::panicking(
                store,
                calls,
                Method::UpdateLead,
                message,
            ))
        }
    })
    .await;
    let org = app.create_org("Acme Dental", "+16123241623").await;
    let lead = app
        .create_lead(org["id"].as_str().unwrap(), CALLER, Some(NAME))
        .await;
    let path = format!("/api/leads/{}", lead["id"].as_str().unwrap());
    let before = panics_total(&app).await;

    let r = app.patch_admin(&path, &json!({"notes": "call back"})).await;
    assert_eq!(assert_error(r, 500).await, "internal_error");
    assert_eq!(calls.get(Method::UpdateLead), 1);

    // Counted.
    assert_eq!(panics_total(&app).await - before, 1.0);
    let perf: Value = app
        .client
        .get(app.url("/api/monitoring/metrics/performance"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let route = perf["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == "/api/leads/{id}" && r["method"] == "PATCH")
        .unwrap_or_else(|| panic!("the PATCH is in the window: {perf}"));
    assert_eq!(route["count"], 1, "{route}");
    assert_eq!(route["error_rate_pct"], 100.0, "{route}");

    // The app serves on.
    let r = app.get_admin(&path).await;
    assert_eq!(r.status(), 200);
    app.stop().await;

    // Logged, at error, with the route template and the method.
    let log = capture.text();
    let line = log
        .lines()
        .find(|l| l.contains("handler panicked"))
        .unwrap_or_else(|| panic!("a line for the panic:\n{log}"));
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains("/api/leads/{id}"), "{line}");
    assert!(line.contains("PATCH"), "{line}");
    assert!(line.contains("500"), "{line}");
    // The panic's message carried personal data: it is not in the log.
    for secret in [NAME, CALLER, "6129782029", "unexpected row"] {
        let found = log.lines().find(|l| l.contains(secret));
        assert!(found.is_none(), "{secret:?} in the log: {found:?}");
    }
}
