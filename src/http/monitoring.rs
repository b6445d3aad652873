//! Liveness and health. `/healthz` checks nothing (an instance serving from cache during a
//! database outage must stay in rotation); `/api/monitoring/health` checks the dependencies.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::AppState;

/// No health check waits longer than this on a dependency.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/monitoring/health", get(health))
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let started = Instant::now();
    let db = tokio::time::timeout(CHECK_TIMEOUT, state.lookup.ping()).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let (db_ok, db_error) = match db {
        Ok(Ok(())) => (true, None),
        Ok(Err(e)) => (false, Some(public_reason(&e))),
        Err(_) => (false, Some("timed out".to_string())),
    };
    let status = if db_ok { "healthy" } else { "unhealthy" };
    let code = if db_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": status,
        "checks": {
            "database": {
                "status": if db_ok { "up" } else { "down" },
                "backend": state.lookup.store().backend(),
                "latency_ms": latency_ms,
                "error": db_error,
            },
            "redis": {"status": "disabled", "enabled": false},
        },
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": state.settings.started_at.elapsed().as_secs(),
    });
    (code, Json(body))
}

/// A short, non-sensitive reason for a failed check.
fn public_reason(e: &crate::store::StoreError) -> String {
    match e {
        crate::store::StoreError::Unavailable(_) => "unreachable".into(),
        _ => "error".into(),
    }
}
