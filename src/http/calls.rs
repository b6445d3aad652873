//! The calls API and the live event streams, behind the admin token (calls carry personal
//! data). Every answer about calls says which backend gave it in `X-Hotline-Calls-Backend`
//! (`redis`: shared by every instance; `memory`: this instance alone, Redis being down or
//! absent).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Map, Value};
use tokio::sync::{broadcast, mpsc, watch};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::api::{json_body, query, PathParam, QueryParams};
use super::auth::Admin;
use super::openapi::{CallChange, CallList, ErrorBody, EventCreate, EventList, SseEvent};
use super::server::CloseConnection;
use super::{ApiError, AppState, Result};
use crate::calls::model::{valid_call_id, valid_custom_type, Call, STATE_MAX_BYTES};
use crate::calls::{
    Backend, Bus, BusEvent, CallStatus, Calls, Control, Event, EventId, Filter, Scope, Step,
    UpdateError,
};
use crate::monitoring::metrics;
use crate::monitoring::stream::{KEEP_ALIVE, RETRY};

/// The largest page of calls one request may ask for.
const LIST_MAX: usize = 1000;
const LIST_DEFAULT: usize = 50;
/// Events queued for one SSE client; a client further behind is disconnected.
const CLIENT_BUFFER: usize = 256;
/// How deep `state` and `data` may nest: the events that carry them nest deeper still, and
/// must stay within what a JSON parser takes.
const STATE_MAX_DEPTH: usize = 32;
/// How long a client may take to accept its replay before it is disconnected.
const REPLAY_SEND_AT_MOST: Duration = Duration::from_secs(10);

const BACKEND_HEADER: HeaderName = HeaderName::from_static("x-hotline-calls-backend");

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_calls))
        .routes(routes!(get_call, patch_call))
        .routes(routes!(list_events, post_event))
        .routes(routes!(call_stream))
        .routes(routes!(all_events))
}

fn calls(state: &AppState) -> Result<&Arc<Calls>> {
    state.calls.as_ref().ok_or_else(|| {
        ApiError::NotConfigured(
            "Calls are turned off on this instance (CALLS_ENABLED=false).".into(),
        )
    })
}

/// A call id from the path: anything that cannot be one names nothing.
fn call_id(raw: PathParam) -> Result<String> {
    let Path(id) = raw.map_err(|_| ApiError::NotFound)?;
    if valid_call_id(&id) {
        Ok(id)
    } else {
        Err(ApiError::NotFound)
    }
}

/// A call this instance cannot find: 404, unless Redis holds the calls and is down, when the
/// call may well exist (503: try again).
fn not_found(calls: &Calls) -> ApiError {
    if calls.book().shared() && !calls.book().redis_up() {
        ApiError::Unavailable(
            "Redis is unreachable and this instance does not hold the call; try again".into(),
        )
    } else {
        ApiError::NotFound
    }
}

fn with_backend(backend: Backend, response: impl IntoResponse) -> Response {
    let mut response = response.into_response();
    response
        .headers_mut()
        .insert(BACKEND_HEADER, HeaderValue::from_static(backend.as_str()));
    response
}

#[utoipa::path(get, path = "/api/calls", tag = "calls",
    security(("admin_token" = [])),
    params(
        ("status" = Option<CallStatus>, Query, description = "Only calls with this status."),
        ("organization_id" = Option<Uuid>, Query, description = "Only this organization's calls."),
        ("lead_id" = Option<Uuid>, Query, description = "Only this lead's calls."),
        ("since" = Option<String>, Query, format = DateTime, description = "Only calls started at or after this time (RFC 3339)."),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "At most this many, newest first (50 when absent)."),
    ),
    responses(
        (status = 200, description = "Live calls, newest first, and how many match.", body = CallList, headers(("X-Hotline-Calls-Backend" = String, description = "`redis` (shared by every instance) or `memory` (this instance alone)."))),
        (status = 400, description = "The query string could not be parsed.", body = ErrorBody),
        (status = 422, description = "A parameter is wrong or unknown.", body = ErrorBody),
        (status = 503, description = "Calls are off (`CALLS_ENABLED=false`).", body = ErrorBody),
    ))]
async fn list_calls(
    _: Admin,
    State(state): State<AppState>,
    params: QueryParams,
) -> Result<Response> {
    let calls = calls(&state)?;
    let q = query(params)?;
    let (filter, limit) = list_filter(&q)?;
    let (items, count, backend) = calls.list(&filter, limit).await;
    Ok(with_backend(
        backend,
        Json(json!({"items": items, "count": count})),
    ))
}

fn list_filter(q: &HashMap<String, String>) -> Result<(Filter, usize)> {
    const KNOWN: [&str; 5] = ["status", "organization_id", "lead_id", "since", "limit"];
    if let Some(unknown) = q.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        let name: String = unknown
            .chars()
            .take(64)
            .filter(|c| !c.is_control())
            .collect();
        return Err(ApiError::Invalid(format!(
            "Unknown query parameter `{name}`; expected one of: {}.",
            KNOWN.join(", ")
        )));
    }
    let uuid = |name: &str| -> Result<Option<Uuid>> {
        q.get(name)
            .map(|v| {
                Uuid::parse_str(v.trim()).map_err(|_| ApiError::invalid(name, "must be a UUID"))
            })
            .transpose()
    };
    let filter = Filter {
        status: q
            .get("status")
            .map(|s| {
                s.parse::<CallStatus>().map_err(|_| {
                    ApiError::invalid("status", "must be one of: active, ended, failed")
                })
            })
            .transpose()?,
        organization_id: uuid("organization_id")?,
        lead_id: uuid("lead_id")?,
        since: q
            .get("since")
            .map(|s| {
                chrono::DateTime::parse_from_rfc3339(s.trim())
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| ApiError::invalid("since", "must be an RFC 3339 time"))
            })
            .transpose()?,
    };
    let limit = match q.get("limit") {
        None => LIST_DEFAULT,
        Some(raw) => match raw.trim().parse::<usize>() {
            Ok(n) if (1..=LIST_MAX).contains(&n) => n,
            _ => {
                return Err(ApiError::invalid(
                    "limit",
                    format_args!("must be a whole number from 1 to {LIST_MAX}"),
                ))
            }
        },
    };
    Ok((filter, limit))
}

#[utoipa::path(get, path = "/api/calls/{call_id}", tag = "calls",
    security(("admin_token" = [])),
    params(("call_id" = String, Path, pattern = "^[!-~]{1,128}$", example = "CA0123456789abcdef0123456789abcdef", description = "The call id the ring carried (`call_sid` or `call_id`).")),
    responses(
        (status = 200, description = "The call.", body = Call, headers(("X-Hotline-Calls-Backend" = String, description = "`redis` (shared by every instance) or `memory` (this instance alone)."))),
        (status = 404, description = "No such call (or it expired).", body = ErrorBody),
        (status = 503, description = "Calls are off (`CALLS_ENABLED=false`), or Redis is down and this instance does not hold the call.", body = ErrorBody),
    ))]
async fn get_call(_: Admin, State(state): State<AppState>, id: PathParam) -> Result<Response> {
    let calls = calls(&state)?;
    let id = call_id(id)?;
    let (call, backend) = calls.book().get(&id).await;
    let call = call.ok_or_else(|| not_found(calls))?;
    Ok(with_backend(backend, Json(call)))
}

/// A checked `PATCH /api/calls/{id}` body.
struct CallPatch {
    state: Option<Map<String, Value>>,
    control: Option<Control>,
    end: bool,
}

fn parse_patch(bytes: std::result::Result<Bytes, BytesRejection>) -> Result<CallPatch> {
    let body = json_body(bytes)?;
    body.deny_unknown(&["state", "control", "status"])?;
    let map = body.into_map();
    let state = match map.get("state") {
        None => None,
        Some(Value::Object(patch)) => {
            check_free_json("state", &Value::Object(patch.clone()))?;
            Some(patch.clone())
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "state",
                "must be an object (a JSON Merge Patch of the call's state)",
            ))
        }
    };
    let control = match map.get("control") {
        None => None,
        Some(v) => Some(
            v.as_str()
                .and_then(|s| s.parse::<Control>().ok())
                .ok_or_else(|| ApiError::invalid("control", "must be `agent` or `human`"))?,
        ),
    };
    let end = match map.get("status") {
        None => false,
        Some(Value::String(s)) if s == "ended" => true,
        Some(_) => {
            return Err(ApiError::invalid(
                "status",
                "may only be `ended` (a call is started by its webhook)",
            ))
        }
    };
    Ok(CallPatch {
        state,
        control,
        end,
    })
}

/// Free JSON from an integration (`state`, `data`): at most 16 KiB, no NUL anywhere.
fn check_free_json(name: &str, value: &Value) -> Result<()> {
    fn has_nul(v: &Value) -> bool {
        match v {
            Value::String(s) => s.contains('\0'),
            Value::Array(a) => a.iter().any(has_nul),
            Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
            _ => false,
        }
    }
    fn depth(v: &Value) -> usize {
        match v {
            Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
            Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }
    if has_nul(value) {
        return Err(ApiError::invalid(name, "must not contain NUL characters"));
    }
    if depth(value) > STATE_MAX_DEPTH {
        return Err(ApiError::invalid(
            name,
            format_args!("must not nest deeper than {STATE_MAX_DEPTH} levels"),
        ));
    }
    let size = serde_json::to_vec(value).map_or(usize::MAX, |v| v.len());
    if size > STATE_MAX_BYTES {
        return Err(ApiError::invalid(
            name,
            format_args!("must be at most {} KiB as JSON", STATE_MAX_BYTES / 1024),
        ));
    }
    Ok(())
}

/// Why a patch was not applied to the call read.
enum Refused {
    NotFound,
    Invalid(ApiError),
}

#[utoipa::path(patch, path = "/api/calls/{call_id}", tag = "calls",
    security(("admin_token" = [])),
    params(("call_id" = String, Path, pattern = "^[!-~]{1,128}$", example = "CA0123456789abcdef0123456789abcdef", description = "The call id the ring carried (`call_sid` or `call_id`).")),
    request_body = CallChange,
    responses(
        (status = 200, description = "The call as changed.", body = Call, headers(("X-Hotline-Calls-Backend" = String, description = "`redis` (shared by every instance) or `memory` (this instance alone)."))),
        (status = 404, description = "No such call (or it expired).", body = ErrorBody),
        (status = 422, description = "A field is wrong, or the merged state is too large or too deep.", body = ErrorBody),
        (status = 503, description = "Calls are off (`CALLS_ENABLED=false`), or Redis is down and this instance does not hold the call.", body = ErrorBody),
    ))]
async fn patch_call(
    _: Admin,
    State(state): State<AppState>,
    id: PathParam,
    bytes: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let calls = calls(&state)?;
    let id = call_id(id)?;
    let patch = parse_patch(bytes)?;
    let updated = calls
        .book()
        .update(&id, |current| {
            let Some(mut call) = current else {
                return Err(Refused::NotFound);
            };
            let before = call.clone();
            if let Some(state_patch) = &patch.state {
                let mut merged = Value::Object(std::mem::take(&mut call.state));
                json_patch::merge(&mut merged, &Value::Object(state_patch.clone()));
                check_free_json("state", &merged).map_err(Refused::Invalid)?;
                call.state = match merged {
                    Value::Object(m) => m,
                    _ => Map::new(),
                };
            }
            if let Some(control) = patch.control {
                call.control = control;
            }
            if patch.end && call.status == CallStatus::Active {
                call.status = CallStatus::Ended;
                call.ended_at = Some(Utc::now());
            }
            if call == before {
                return Ok(Step::Leave);
            }
            call.updated_at = Utc::now();
            Ok(Step::Write(call))
        })
        .await;
    let updated = match updated {
        Ok(u) => u,
        Err(UpdateError::Refused(Refused::NotFound)) => return Err(not_found(calls)),
        Err(UpdateError::Refused(Refused::Invalid(e))) => return Err(e),
        Err(UpdateError::Unavailable(e)) => {
            return Err(ApiError::Unavailable(format!(
                "the call was not updated ({e})"
            )))
        }
    };
    let call = match (updated.written, updated.before) {
        (Some(written), before) => {
            let ended = written.status == CallStatus::Ended
                && before.is_some_and(|b| b.status == CallStatus::Active);
            let kind = if ended {
                metrics::call_ended("ended");
                crate::calls::model::types::CALL_ENDED
            } else {
                crate::calls::model::types::CALL_UPDATED
            };
            calls.announce(kind, Some(written.clone())).await;
            written
        }
        (None, Some(unchanged)) => unchanged,
        (None, None) => return Err(ApiError::NotFound),
    };
    Ok(with_backend(updated.backend, Json(call)))
}

#[utoipa::path(post, path = "/api/calls/{call_id}/events", tag = "calls",
    security(("admin_token" = [])),
    params(("call_id" = String, Path, pattern = "^[!-~]{1,128}$", example = "CA0123456789abcdef0123456789abcdef", description = "The call id the ring carried (`call_sid` or `call_id`).")),
    request_body = EventCreate,
    responses(
        (status = 201, description = "Published on the bus.", body = Event, headers(("X-Hotline-Calls-Backend" = String, description = "`redis` (shared by every instance) or `memory` (this instance alone)."))),
        (status = 404, description = "No such call (or it expired).", body = ErrorBody),
        (status = 422, description = "A field is wrong, or `data` is too large or too deep.", body = ErrorBody),
        (status = 503, description = "Calls are off (`CALLS_ENABLED=false`), or Redis is down and this instance does not hold the call.", body = ErrorBody),
    ))]
async fn post_event(
    _: Admin,
    State(state): State<AppState>,
    id: PathParam,
    bytes: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let calls = calls(&state)?;
    let id = call_id(id)?;
    let body = json_body(bytes)?;
    body.deny_unknown(&["type", "data"])?;
    let map = body.into_map();
    let kind = match map.get("type") {
        Some(Value::String(t)) if valid_custom_type(t) => t.clone(),
        Some(Value::String(_)) => {
            return Err(ApiError::invalid(
                "type",
                "must match ^[a-z][a-z0-9_.]{0,63}$ and not start with `call.`",
            ))
        }
        Some(_) => return Err(ApiError::invalid("type", "must be a string")),
        None => return Err(ApiError::invalid("type", "is required")),
    };
    let data = match map.get("data") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => {
            check_free_json("data", v)?;
            v.clone()
        }
        Some(_) => return Err(ApiError::invalid("data", "must be an object")),
    };
    let (call, backend) = calls.book().get(&id).await;
    if call.is_none() {
        return Err(not_found(calls));
    }
    let event = state
        .bus
        .publish(Event::new(&kind, Some(&id), state.bus.instance_id(), data))
        .await;
    Ok(with_backend(backend, (StatusCode::CREATED, Json(event))))
}

#[utoipa::path(get, path = "/api/calls/{call_id}/events", tag = "calls",
    security(("admin_token" = [])),
    params(("call_id" = String, Path, pattern = "^[!-~]{1,128}$", example = "CA0123456789abcdef0123456789abcdef", description = "The call id the ring carried (`call_sid` or `call_id`).")),
    responses(
        (status = 200, description = "The call's events, oldest first (the last `CALL_EVENTS_MAX`).", body = EventList, headers(("X-Hotline-Calls-Backend" = String, description = "`redis` (shared by every instance) or `memory` (this instance alone)."))),
        (status = 404, description = "No such call (or it expired).", body = ErrorBody),
        (status = 503, description = "Calls are off (`CALLS_ENABLED=false`), or Redis is down and this instance does not hold the call.", body = ErrorBody),
    ))]
async fn list_events(_: Admin, State(state): State<AppState>, id: PathParam) -> Result<Response> {
    let calls = calls(&state)?;
    let id = call_id(id)?;
    let (call, backend) = calls.book().get(&id).await;
    if call.is_none() {
        return Err(not_found(calls));
    }
    let events = state
        .bus
        .replay(&Scope::Call(id), None, state.bus.per_call_max())
        .await
        .map_err(|e| ApiError::Unavailable(format!("the call's events cannot be read ({e})")))?;
    let items: Vec<Event> = events.iter().filter_map(|e| e.event()).collect();
    Ok(with_backend(backend, Json(json!({"items": items}))))
}

/// `Last-Event-ID`, when the client sent one; 400 when it is not an event id.
fn last_event_id(headers: &HeaderMap) -> Result<Option<EventId>> {
    let Some(raw) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let raw = raw.to_str().unwrap_or_default().trim();
    if raw.is_empty() {
        return Ok(None);
    }
    raw.parse::<EventId>().map(Some).map_err(|_| {
        ApiError::Malformed("`Last-Event-ID` is not an event id (`<ms>-<sequence>`).".into())
    })
}

#[utoipa::path(get, path = "/api/calls/{call_id}/stream", tag = "calls",
    security(("admin_token" = [])),
    params(
        ("call_id" = String, Path, pattern = "^[!-~]{1,128}$", example = "CA0123456789abcdef0123456789abcdef", description = "The call id the ring carried (`call_sid` or `call_id`)."),
        ("Last-Event-ID" = Option<String>, Header, pattern = "^([0-9]{1,19}-[0-9]{1,19})?$", description = "Resume after this event."),
    ),
    responses(
        (status = 200, description = "Server-sent events of this call: what was missed after `Last-Event-ID`, then live.", content_type = "text/event-stream", body = SseEvent),
        (status = 400, description = "`Last-Event-ID` is not an event id.", body = ErrorBody),
        (status = 404, description = "No such call (or it expired).", body = ErrorBody),
        (status = 503, description = "Calls are off (`CALLS_ENABLED=false`), or Redis is down and this instance does not hold the call.", body = ErrorBody),
    ))]
async fn call_stream(
    _: Admin,
    State(state): State<AppState>,
    close: Option<Extension<CloseConnection>>,
    headers: HeaderMap,
    id: PathParam,
) -> Result<Response> {
    let calls = calls(&state)?;
    let id = call_id(id)?;
    let after = last_event_id(&headers)?;
    let (call, _) = calls.book().get(&id).await;
    if call.is_none() {
        return Err(not_found(calls));
    }
    Ok(stream_events(
        &state,
        Scope::Call(id),
        after,
        close.map(|c| c.0),
        "call",
    ))
}

#[utoipa::path(get, path = "/api/events", tag = "calls",
    security(("admin_token" = [])),
    params(
        ("Last-Event-ID" = Option<String>, Header, pattern = "^([0-9]{1,19}-[0-9]{1,19})?$", description = "Resume after this event."),
    ),
    responses(
        (status = 200, description = "Server-sent events of every instance (calls without personal data, alerts, instances, admin messages).", content_type = "text/event-stream", body = SseEvent),
        (status = 400, description = "`Last-Event-ID` is not an event id.", body = ErrorBody),
    ))]
async fn all_events(
    _: Admin,
    State(state): State<AppState>,
    close: Option<Extension<CloseConnection>>,
    headers: HeaderMap,
) -> Result<Response> {
    let after = last_event_id(&headers)?;
    Ok(stream_events(
        &state,
        Scope::All,
        after,
        close.map(|c| c.0),
        "events",
    ))
}

/// The SSE response for `scope`: what was missed after `after` (from what is kept), then
/// every new event, each once and in order; it ends on shutdown, and a client that does not
/// keep up is disconnected (it resumes with `Last-Event-ID`).
fn stream_events(
    state: &AppState,
    scope: Scope,
    after: Option<EventId>,
    close: Option<CloseConnection>,
    label: &'static str,
) -> Response {
    let bus = state.bus.clone();
    // Subscribed before the replay is read, so that nothing falls between the two.
    let live = bus.subscribe();
    let (tx, rx) = mpsc::channel(CLIENT_BUFFER);
    let client = Client {
        bus,
        scope,
        tx,
        close,
        label,
        shutdown: state.monitor.shutdown_signal(),
    };
    tokio::spawn(client.pump(after, live));
    // Frames are rendered once per event for every client (see `BusEvent::frame`): the body
    // is those bytes, with a retry hint first and a comment line when the stream is idle.
    let hello = Bytes::from(format!("retry: {}\n: hotline\n\n", RETRY.as_millis()));
    let idle = tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
    let body = stream::once(async move { Ok::<_, Infallible>(hello) }).chain(stream::unfold(
        (rx, idle),
        |(mut rx, mut idle)| async move {
            tokio::select! {
                frame = rx.recv() => frame.map(|f| (Ok(f), (rx, idle))),
                _ = idle.tick() => Some((Ok(Bytes::from_static(b":\n\n")), (rx, idle))),
            }
        },
    ));
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

/// One SSE client's feed, on a task of its own: it never makes the bus wait.
struct Client {
    bus: Arc<Bus>,
    scope: Scope,
    tx: mpsc::Sender<Bytes>,
    close: Option<CloseConnection>,
    label: &'static str,
    shutdown: watch::Receiver<bool>,
}

impl Client {
    fn frame(&self, event: &BusEvent) -> Bytes {
        event.frame(matches!(self.scope, Scope::All))
    }

    fn drop_slow(&self) {
        metrics::sse_dropped(self.label);
        tracing::info!(
            stream = self.label,
            "event stream client fell behind; disconnected"
        );
        if let Some(close) = &self.close {
            close.close();
        }
    }

    async fn pump(mut self, after: Option<EventId>, mut live: broadcast::Receiver<Arc<BusEvent>>) {
        let _connected = metrics::SseClientGauge::connected(self.label);
        let mut last = after;
        if let Some(after) = after {
            let limit = match self.scope {
                Scope::All => self.bus.per_call_max() * crate::calls::bus::GLOBAL_FACTOR,
                Scope::Call(_) => self.bus.per_call_max(),
            };
            let missed = match self.bus.replay(&self.scope, Some(after), limit).await {
                Ok(missed) => missed,
                Err(e) => {
                    // Ending the stream is honest: the client reconnects with the same id,
                    // and gets what it missed once the events can be read.
                    tracing::warn!(error = %e, "event replay failed; the stream ends");
                    return;
                }
            };
            for event in missed {
                if last.is_some_and(|l| event.id <= l) {
                    continue;
                }
                let frame = self.frame(&event);
                let sent = tokio::time::timeout(REPLAY_SEND_AT_MOST, self.tx.send(frame));
                tokio::select! {
                    sent = sent => match sent {
                        Ok(Ok(())) => last = Some(event.id),
                        Ok(Err(_)) => return,
                        Err(_) => return self.drop_slow(),
                    },
                    _ = self.shutdown.changed() => return,
                }
            }
        }
        if *self.shutdown.borrow_and_update() {
            return;
        }
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => return,
                _ = self.tx.closed() => return,
                received = live.recv() => match received {
                    Ok(event) => {
                        if !self.scope.matches(&event) || last.is_some_and(|l| event.id <= l) {
                            continue;
                        }
                        match self.tx.try_send(self.frame(&event)) {
                            Ok(()) => last = Some(event.id),
                            Err(mpsc::error::TrySendError::Full(_)) => return self.drop_slow(),
                            Err(mpsc::error::TrySendError::Closed(_)) => return,
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => return self.drop_slow(),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }
}

/// The call a webhook's `call_sid`/`call_id` names, if it can name one.
pub fn webhook_call_id(body: &Map<String, Value>) -> Option<String> {
    ["call_sid", "call_id"]
        .iter()
        .filter_map(|k| body.get(*k).and_then(Value::as_str))
        .find(|id| valid_call_id(id))
        .map(str::to_string)
}
