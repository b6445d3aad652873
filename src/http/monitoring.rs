//! Liveness, health and cache administration. `/healthz` checks nothing (an instance serving
//! from cache during a database outage must stay in rotation); `/api/monitoring/health` checks
//! the dependencies, each under a short timeout so that it never hangs when one does, and
//! shares each check's result for a second between every caller.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use chrono::{TimeZone, Utc};
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::api::json_body;
use super::auth::Admin;
use super::openapi::{
    Alerts, ErrorBody, Health, Invalidated, Invalidation, Liveness, RedisHealth, SseEvent,
};
use super::{ApiError, AppState, Result};
use crate::cache::Kind;

/// No health check waits longer than this on a dependency.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// A health check's result is reused this long: probes and dashboards polling the public
/// health endpoints cost the database and Redis one round trip per second between them, not
/// one per request.
const CHECK_REUSE: Duration = Duration::from_secs(1);

/// A value computed at most once per [`CHECK_REUSE`], whoever asks: concurrent callers wait
/// for the computation in progress and share its result. A result is reused only under the
/// same key: what is known for free (the Redis breaker's state) is never reported stale.
struct Shared<K, T> {
    last: tokio::sync::Mutex<Option<(Instant, K, T)>>,
}

impl<K: PartialEq, T: Clone> Shared<K, T> {
    fn new() -> Self {
        Shared {
            last: tokio::sync::Mutex::new(None),
        }
    }

    async fn get<F: std::future::Future<Output = T>>(
        &self,
        key: K,
        check: impl FnOnce() -> F,
    ) -> T {
        let mut last = self.last.lock().await;
        if let Some((at, k, value)) = &*last {
            if *k == key && at.elapsed() < CHECK_REUSE {
                return value.clone();
            }
        }
        let value = check().await;
        *last = Some((Instant::now(), key, value.clone()));
        value
    }
}

/// The database check's result.
#[derive(Clone, Copy)]
struct DatabaseCheck {
    error: Option<&'static str>,
    latency_ms: f64,
}

/// The latest dependency checks, shared by the health endpoints.
struct Checks {
    database: Shared<(), DatabaseCheck>,
    /// Keyed by the breaker's state and whether invalidations are subscribed.
    redis: Shared<(&'static str, bool), Value>,
}

type SharedChecks = Extension<Arc<Checks>>;

pub fn router() -> OpenApiRouter<AppState> {
    let checks = Arc::new(Checks {
        database: Shared::new(),
        redis: Shared::new(),
    });
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(health))
        .routes(routes!(redis_health))
        .routes(routes!(invalidate))
        .routes(routes!(metrics_summary))
        .routes(routes!(performance))
        .routes(routes!(cache_stats))
        .routes(routes!(alerts))
        .routes(routes!(stream))
        .routes(routes!(prometheus))
        .routes(routes!(dashboard))
        .routes(routes!(openapi_json))
        .layer(Extension(checks))
}

#[utoipa::path(get, path = "/api/monitoring/metrics", tag = "monitoring",
    responses((status = 200, description = "Requests, latency, hit rates and calls over the rolling window.", body = Object)))]
async fn metrics_summary(State(state): State<AppState>) -> impl IntoResponse {
    Json(state.monitor.summary())
}

#[utoipa::path(get, path = "/api/monitoring/metrics/performance", tag = "monitoring",
    responses((status = 200, description = "Latency percentiles by route and by cache kind.", body = Object)))]
async fn performance(State(state): State<AppState>) -> impl IntoResponse {
    Json(state.monitor.performance())
}

#[utoipa::path(get, path = "/api/monitoring/alerts", tag = "monitoring",
    responses((status = 200, description = "Active and recently resolved alerts.", body = Alerts)))]
async fn alerts(State(state): State<AppState>) -> impl IntoResponse {
    Json(state.monitor.alerts())
}

#[utoipa::path(get, path = "/api/monitoring/stream", tag = "monitoring",
    responses((status = 200, description = "Server-sent events: `metrics` every second, `alert` on firing and resolving, `bus` for the newest events.", content_type = "text/event-stream", body = SseEvent)))]
async fn stream(State(state): State<AppState>) -> impl IntoResponse {
    state.monitor.subscribe()
}

#[utoipa::path(get, path = "/metrics", tag = "monitoring",
    responses((status = 200, description = "Prometheus' text format.", content_type = "text/plain", body = String)))]
async fn prometheus(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.monitor.render_prometheus(),
    )
}

#[utoipa::path(get, path = "/api/openapi.json", tag = "monitoring",
    responses((status = 200, description = "This document.", body = Object)))]
async fn openapi_json() -> impl IntoResponse {
    Json(super::openapi_document())
}

#[utoipa::path(get, path = "/dashboard", tag = "monitoring",
    responses((status = 200, description = "The live monitoring page.", content_type = "text/html", body = String)))]
async fn dashboard() -> impl IntoResponse {
    axum::response::Html(crate::monitoring::DASHBOARD_HTML)
}

/// One object per kind (since start: tier hits, misses, loads, invalidations, the kind's TTL),
/// the size of tier 1 and of the generation mirror, and how many rendered webhook answers were
/// kept and served.
#[utoipa::path(get, path = "/api/monitoring/stats/cache", tag = "monitoring",
    responses((status = 200, description = "Per kind since start: tier hits, misses, loads, invalidations, TTL; tier 1's size.", body = Object)))]
async fn cache_stats(State(state): State<AppState>) -> impl IntoResponse {
    use std::sync::atomic::Ordering::Relaxed;
    let cache = state.lookup.cache();
    let mut kinds = serde_json::Map::new();
    for kind in Kind::ALL {
        let s = cache.stats(kind);
        let (l1, l2, misses, stale) = (
            s.hits_l1.load(Relaxed),
            s.hits_l2.load(Relaxed),
            s.misses.load(Relaxed),
            s.stale.load(Relaxed),
        );
        let lookups = l1 + l2 + misses + stale;
        let hit_rate = (lookups > 0).then(|| (l1 + l2) as f64 * 100.0 / lookups as f64);
        kinds.insert(
            kind.as_str().into(),
            json!({
                "hits_l1": l1,
                "hits_l2": l2,
                "misses": misses,
                "stale": stale,
                "hit_rate_pct": hit_rate,
                "loads": s.loads.load(Relaxed),
                "load_errors": s.load_errors.load(Relaxed),
                "invalidations": s.invalidations.load(Relaxed),
                "ttl_s": cache.ttls().of(kind).as_secs(),
            }),
        );
    }
    let (entries, bytes) = cache.local_usage();
    kinds.insert("l1_entries".into(), json!(entries));
    kinds.insert("l1_bytes".into(), json!(bytes));
    let (mirror_entries, mirror_bytes) = cache.mirror_usage();
    kinds.insert("mirror_entries".into(), json!(mirror_entries));
    kinds.insert("mirror_bytes".into(), json!(mirror_bytes));
    let answers = cache.answer_stats();
    kinds.insert(
        "answers".into(),
        json!({"served": answers.served.load(Relaxed), "kept": answers.kept.load(Relaxed)}),
    );
    kinds.insert(
        "negative_ttl_s".into(),
        json!(cache.ttls().negative.as_secs()),
    );
    let warming = state.lookup.warming();
    kinds.insert(
        "warming".into(),
        json!({"state": warming.state().as_str(), "leads": warming.leads()}),
    );
    Json(Value::Object(kinds))
}

/// 200 while the process serves; 503 `draining` once told to drain, so that load balancers
/// take the instance out while it still serves everything else.
#[utoipa::path(get, path = "/healthz", tag = "monitoring",
    responses(
        (status = 200, description = "The process serves (no dependency is checked).", body = Liveness),
        (status = 503, description = "The instance was told to drain.", body = Liveness),
    ))]
async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    if state.instances.is_draining() {
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining"})),
        );
    }
    (axum::http::StatusCode::OK, Json(json!({"status": "ok"})))
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
        // This check's own round trip: none when Redis did not answer (not the last one seen).
        "latency_ms": info.as_ref().and_then(|_| remote.latency_ms()),
        "redis_version": info.as_ref().map(|i| i.redis_version.clone()),
        "used_memory_human": info.as_ref().map(|i| i.used_memory_human.clone()),
        "connected_clients": info.as_ref().map(|i| i.connected_clients),
        "last_error": remote.breaker.last_error(),
        "down_since": remote.breaker.down_since_ms().and_then(rfc3339_ms),
        "subscribed": state.lookup.cache().liveness().pubsub.load(std::sync::atomic::Ordering::Acquire),
    })
}

#[utoipa::path(get, path = "/api/monitoring/health/redis", tag = "monitoring",
    responses((status = 200, description = "Redis as this instance sees it.", body = RedisHealth)))]
async fn redis_health(
    State(state): State<AppState>,
    Extension(checks): SharedChecks,
) -> impl IntoResponse {
    Json(shared_redis_report(&state, &checks).await)
}

/// The Redis report, shared for a second while the breaker's state stays the same.
async fn shared_redis_report(state: &AppState, checks: &Checks) -> Value {
    let cache = state.lookup.cache();
    let key = (
        cache.remote().map_or("off", |r| r.breaker.state().as_str()),
        cache
            .liveness()
            .pubsub
            .load(std::sync::atomic::Ordering::Acquire),
    );
    checks.redis.get(key, || redis_report(state)).await
}

async fn database_check(state: &AppState) -> DatabaseCheck {
    let started = Instant::now();
    let result = tokio::time::timeout(CHECK_TIMEOUT, state.lookup.ping()).await;
    let error = match result {
        Ok(Ok(())) => None,
        Ok(Err(e)) if e.is_unavailable() => Some("unreachable"),
        Ok(Err(_)) => Some("error"),
        Err(_) => Some("timed out"),
    };
    DatabaseCheck {
        error,
        latency_ms: started.elapsed().as_secs_f64() * 1000.0,
    }
}

#[utoipa::path(get, path = "/api/monitoring/health", tag = "monitoring",
    responses(
        (status = 200, description = "Healthy or degraded.", body = Health),
        (status = 503, description = "Unhealthy: the database is down.", body = Health),
    ))]
async fn health(
    State(state): State<AppState>,
    Extension(checks): SharedChecks,
) -> impl IntoResponse {
    let (db, redis) = tokio::join!(
        checks.database.get((), || database_check(&state)),
        shared_redis_report(&state, &checks)
    );
    let (db_ok, db_error, latency_ms) = (db.error.is_none(), db.error, db.latency_ms);
    let redis_enabled = redis["enabled"].as_bool().unwrap_or(false);
    let redis_ok = !redis_enabled || redis["connected"].as_bool().unwrap_or(false);
    // Without the database hotline can only serve what it has cached: unhealthy. Without
    // Redis it serves from tier 1 and the database: degraded.
    // A background task that is not running (it panicked and waits to be restarted) leaves
    // the instance serving, but without something it relies on: degraded.
    let tasks_ok = state.tasks.all_running();
    let status = match (db_ok, redis_ok && tasks_ok) {
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
            "background": {
                "status": if tasks_ok { "up" } else { "down" },
                "tasks": state.tasks.report(),
            },
        },
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": state.settings.started_at.elapsed().as_secs(),
    });
    (code, Json(body))
}

/// `{"lead_id"}`, `{"organization_id"}`, `{"kind"}` or `{"all": true}`: invalidated on every
/// instance (through Redis pub/sub).
#[utoipa::path(post, path = "/api/monitoring/cache/invalidate", tag = "monitoring",
    security(("admin_token" = [])),
    request_body = Invalidation,
    responses(
        (status = 200, description = "Invalidated on every instance.", body = Invalidated),
        (status = 422, description = "Not exactly one of the four, or a field is wrong.", body = ErrorBody),
    ))]
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
