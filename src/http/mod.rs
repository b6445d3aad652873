//! The HTTP layer: one router per module, merged here, with request logging that records the
//! route template (never the URI, which may carry personal data).

mod admin;
mod api;
mod auth;
pub mod calls;
pub mod error;
pub mod input;
pub mod limits;
mod monitoring;
pub mod openapi;
pub mod server;
mod webhooks;

use std::sync::atomic::AtomicI64;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::admin::Admin;
use crate::calls::{Bus, Calls};
use crate::config::Secret;
use crate::domain::Region;
use crate::instances::Instances;
use crate::lookup::Lookup;
use crate::monitoring::{metrics, Monitor};
use crate::spool::Spool;
use crate::supervise::Tasks;

pub use error::{ApiError, Result};
pub use limits::Limits;

/// What the handlers share: cheap handles only.
#[derive(Clone)]
pub struct AppState {
    pub lookup: Arc<Lookup>,
    pub settings: Arc<Settings>,
    /// Where post-call events wait while the database is down.
    pub spool: Spool,
    pub monitor: Monitor,
    /// Since when (unix ms) the database has been failing its probe; 0 while it answers.
    pub db_down_since_ms: Arc<AtomicI64>,
    /// The supervised background tasks, and whether each is running.
    pub tasks: Tasks,
    /// Calls from ring to hang-up; `None` with `CALLS_ENABLED=false`.
    pub calls: Option<Arc<Calls>>,
    /// The event bus every instance shares.
    pub bus: Arc<Bus>,
    /// This instance among the others: heartbeats, the live list, draining.
    pub instances: Arc<Instances>,
    /// Admin messages to one instance or all.
    pub admin: Arc<Admin>,
}

/// The settings the HTTP layer needs, resolved at start (secrets generated where unset).
#[derive(Debug)]
pub struct Settings {
    pub admin_token: Secret,
    pub webhook_secret: Secret,
    pub elevenlabs_webhook_secret: Option<Secret>,
    pub override_first_message: bool,
    pub default_region: Region,
    pub webhook_deadline: Duration,
    pub started_at: Instant,
    /// Timeouts, the connection cap and the request body budget.
    pub limits: Limits,
}

/// Every route, each with its OpenAPI operation.
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(webhooks::router())
        .merge(api::router())
        .merge(monitoring::router())
        .merge(calls::router())
        .merge(admin::router())
}

/// The OpenAPI document of every route, as `GET /api/openapi.json` serves it.
pub fn openapi_document() -> &'static serde_json::Value {
    static DOCUMENT: OnceLock<serde_json::Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| openapi::finish(routes().split_for_parts().1))
}

pub fn router(state: AppState) -> Router {
    let guard = limits::BodyGuard {
        budget: limits::BodyBudget::new(state.settings.limits.body_budget),
        body_timeout: state.settings.limits.body_timeout,
    };
    let (routes, _) = routes().split_for_parts();
    routes
        .fallback(|| async { ApiError::NotFound })
        // After every merge: it applies to the routes registered before it.
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        // Innermost, so that a panic becomes a 500 that the request log below still sees.
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(middleware::from_fn_with_state(guard, limits::guard_body))
        .layer(middleware::from_fn_with_state(state.clone(), log_request))
        .with_state(state)
}

/// Marks the 500 that stands for a panicked handler, for the request log.
#[derive(Clone, Copy, Debug)]
struct Panicked;

/// The 500 of a panicked handler. Its message may hold anything the code formatted into it
/// (personal data included), so it is logged at debug only; the request log records the route.
fn panic_response(payload: Box<dyn std::any::Any + Send + 'static>) -> Response {
    metrics::panicked();
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::debug!(panic = %message, "handler panicked");
    let mut response =
        axum::response::IntoResponse::into_response(ApiError::Internal("handler panicked".into()));
    response.extensions_mut().insert(Panicked);
    response
}

/// One log line per request: method, route template, status, latency; a 5xx carries its
/// internal detail here, and only here.
async fn log_request(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "<unmatched>".to_owned());
    let method = req.method().clone();
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    // Monitoring's own traffic (dashboards polling, health probes) is kept out of the rolling
    // window, so that watching the service never moves its figures or fires its alerts.
    if is_monitoring_route(&route) {
        metrics::http_request(&route, method.as_str(), status, elapsed);
    } else {
        state
            .monitor
            .record_request(&route, method.as_str(), status, elapsed);
    }
    if response.extensions().get::<Panicked>().is_some() {
        tracing::error!(%method, %route, status, latency_ms, "handler panicked");
    } else if let Some(detail) = response.extensions().get::<error::InternalDetail>() {
        tracing::error!(%method, %route, status, latency_ms, error = %detail.0, "request failed");
    } else if route == "/healthz" {
        tracing::debug!(%method, %route, status, latency_ms, "request");
    } else {
        tracing::info!(%method, %route, status, latency_ms, "request");
    }
    response
}

fn is_monitoring_route(route: &str) -> bool {
    route == "/healthz"
        || route == "/metrics"
        || route == "/api/openapi.json"
        || route == "/dashboard"
        || route.starts_with("/api/monitoring/")
}
