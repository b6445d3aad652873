//! Liveness, health and cache administration. `/healthz` checks nothing (an instance serving
//! from cache during a database outage must stay in rotation); `/api/monitoring/health` checks
//! the dependencies, each under a short timeout so that it never hangs when one does.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{TimeZone, Utc};
use serde_json::{json, Value};

use super::api::json_body;
use super::auth::Admin;
use super::{ApiError, AppState, Result};
use crate::cache::Kind;

/// No health check waits longer than this on a dependency.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/monitoring/health", get(health))
        .route("/api/monitoring/health/redis", get(redis_health))
        .route("/api/monitoring/cache/invalidate", post(invalidate))
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

fn rfc3339_ms(ms: i64) -> Option<String> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// The Redis report shared by `/health` and `/health/redis`.
async fn redis_report(state: &AppState) -> Value {
    let Some(remote) = state.lookup.cache().remote() else {
        return json!({
            "enabled": false, "connected": false, "circuit": "closed", "latency_ms": null,
            "redis_version": null, "used_memory_human": null, "connected_clients": null,
            "last_error": null, "down_since": null,
        });
    };
    let info = remote.info(CHECK_TIMEOUT).await;
    let connected = info.is_ok() && remote.breaker.is_closed();
    let info = info.ok();
    json!({
        "enabled": true,
        "connected": connected,
        "circuit": remote.breaker.state().as_str(),
        "latency_ms": remote.latency_ms(),
        "redis_version": info.as_ref().map(|i| i.redis_version.clone()),
        "used_memory_human": info.as_ref().map(|i| i.used_memory_human.clone()),
        "connected_clients": info.as_ref().map(|i| i.connected_clients),
        "last_error": remote.breaker.last_error(),
        "down_since": remote.breaker.down_since_ms().and_then(rfc3339_ms),
        "subscribed": state.lookup.cache().liveness().pubsub.load(std::sync::atomic::Ordering::Acquire),
    })
}

async fn redis_health(State(state): State<AppState>) -> impl IntoResponse {
    Json(redis_report(&state).await)
}

async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let started = Instant::now();
    let (db, redis) = tokio::join!(
        tokio::time::timeout(CHECK_TIMEOUT, state.lookup.ping()),
        redis_report(&state)
    );
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let (db_ok, db_error) = match db {
        Ok(Ok(())) => (true, None),
        Ok(Err(e)) if e.is_unavailable() => (false, Some("unreachable")),
        Ok(Err(_)) => (false, Some("error")),
        Err(_) => (false, Some("timed out")),
    };
    let redis_enabled = redis["enabled"].as_bool().unwrap_or(false);
    let redis_ok = !redis_enabled || redis["connected"].as_bool().unwrap_or(false);
    // Without the database hotline can only serve what it has cached: unhealthy. Without
    // Redis it serves from tier 1 and the database: degraded.
    let status = match (db_ok, redis_ok) {
        (false, _) => "unhealthy",
        (true, false) => "degraded",
        (true, true) => "healthy",
    };
    let code = if db_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut redis_check = redis;
    redis_check["status"] = json!(match (redis_enabled, redis_ok) {
        (false, _) => "disabled",
        (true, true) => "up",
        (true, false) => "down",
    });
    let body = json!({
        "status": status,
        "checks": {
            "database": {
                "status": if db_ok { "up" } else { "down" },
                "backend": state.lookup.store().backend(),
                "latency_ms": latency_ms,
                "error": db_error,
            },
            "redis": redis_check,
        },
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": state.settings.started_at.elapsed().as_secs(),
    });
    (code, Json(body))
}

/// `{"lead_id"}`, `{"organization_id"}`, `{"kind"}` or `{"all": true}`: invalidated on every
/// instance (through Redis pub/sub).
async fn invalidate(
    _: Admin,
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse> {
    let body = json_body(bytes)?;
    body.deny_unknown(&["lead_id", "organization_id", "kind", "all"])?;
    let lead = body.uuid("lead_id")?.into_option();
    let org = body.uuid("organization_id")?.into_option();
    let kind = body.parsed::<Kind>("kind")?.into_option();
    let all = match body.json("all")?.into_option() {
        None => false,
        Some(Value::Bool(true)) => true,
        Some(_) => return Err(ApiError::invalid("all", "must be true")),
    };
    let given = [lead.is_some(), org.is_some(), kind.is_some(), all]
        .iter()
        .filter(|x| **x)
        .count();
    if given != 1 {
        return Err(ApiError::Invalid(
            "Give exactly one of `lead_id`, `organization_id`, `kind` or `all: true`.".into(),
        ));
    }
    let lookup = &state.lookup;
    let invalidated = if let Some(id) = lead {
        lookup.invalidate_lead(id).await?;
        json!({"lead_id": id})
    } else if let Some(id) = org {
        lookup.invalidate_organization(id).await?;
        json!({"organization_id": id})
    } else if let Some(kind) = kind {
        lookup.invalidate_kinds(&[kind]).await;
        json!({"kind": kind})
    } else {
        lookup.invalidate_kinds(&Kind::ALL).await;
        json!({"all": true, "kinds": Kind::ALL})
    };
    Ok(Json(
        json!({"invalidated": invalidated, "scope": "all_instances"}),
    ))
}
