//! The live instance list (no personal data, no token) and admin messages (admin token).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Map, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::api::{json_body, PathParam};
use super::auth::Admin;
use super::openapi::{ErrorBody, InstanceList, MessageCreate, MessageSent, MessageView};
use super::{ApiError, AppState, Result};
use crate::admin::{SendError, COMMANDS, FILTER_MAX};
use crate::calls::model::valid_call_id;
use crate::monitoring::metrics;
#[allow(unused_imports)]
use uuid::Uuid;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(instances))
        .routes(routes!(send_message))
        .routes(routes!(get_message))
}

#[utoipa::path(get, path = "/api/monitoring/instances", tag = "admin",
    responses((status = 200, description = "Every live instance.", body = InstanceList)))]
async fn instances(State(state): State<AppState>) -> impl IntoResponse {
    let (live, shared) = state.instances.live().await;
    metrics::instances_live(live.len());
    Json(json!({
        "self": state.instances.id(),
        "instances": live,
        // `false`: Redis is absent or down, and this instance knows only itself.
        "shared": shared,
    }))
}

#[utoipa::path(post, path = "/api/admin/messages", tag = "admin",
    security(("admin_token" = [])),
    request_body = MessageCreate,
    responses(
        (status = 202, description = "Sent; each instance acts once and acks.", body = MessageSent),
        (status = 404, description = "`to` names no live instance.", body = ErrorBody),
        (status = 422, description = "A field is missing or wrong.", body = ErrorBody),
    ))]
async fn send_message(
    _: Admin,
    State(state): State<AppState>,
    bytes: std::result::Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse> {
    let body = json_body(bytes)?;
    body.deny_unknown(&["to", "command", "args"])?;
    let map = body.into_map();
    let to = match map.get("to") {
        Some(Value::String(to)) if to == "all" || valid_call_id(to) => to.clone(),
        Some(Value::String(_)) => {
            return Err(ApiError::invalid("to", "must be `all` or an instance id"))
        }
        Some(_) => return Err(ApiError::invalid("to", "must be a string")),
        None => return Err(ApiError::invalid("to", "is required")),
    };
    let command = match map.get("command").and_then(Value::as_str) {
        Some(c) if COMMANDS.contains(&c) => c.to_string(),
        Some(_) | None => {
            return Err(ApiError::invalid(
                "command",
                format_args!("must be one of: {}", COMMANDS.join(", ")),
            ))
        }
    };
    let args = match map.get("args") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(args)) => args.clone(),
        Some(_) => return Err(ApiError::invalid("args", "must be an object")),
    };
    if command == "log_level" {
        match args.get("filter") {
            Some(Value::String(f)) if f.chars().count() <= FILTER_MAX && !f.contains('\0') => {}
            _ => {
                return Err(ApiError::invalid(
                    "args",
                    format_args!(
                        "must carry `filter`, a log filter of at most {FILTER_MAX} characters"
                    ),
                ))
            }
        }
        if args.len() > 1 {
            return Err(ApiError::invalid("args", "may only carry `filter`"));
        }
    } else if !args.is_empty() {
        return Err(ApiError::invalid(
            "args",
            format_args!("`{command}` takes no arguments"),
        ));
    }
    let (message, shared) = match state.admin.send(&to, &command, args).await {
        Ok(sent) => sent,
        Err(SendError::UnknownInstance) => return Err(ApiError::NotFound),
    };
    metrics::admin_message(&command);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "id": message.id,
            "to": message.to,
            "command": message.command,
            "sent_at": message.sent_at,
            "expected": message.expected,
            // `false`: Redis is absent or down, and the message reached this instance alone.
            "shared": shared,
        })),
    ))
}

#[utoipa::path(get, path = "/api/admin/messages/{id}", tag = "admin",
    security(("admin_token" = [])),
    params(("id" = Uuid, Path, description = "The message's id.")),
    responses(
        (status = 200, description = "The message, its acks and who has not acked.", body = MessageView),
        (status = 404, description = "No such message (they are kept for an hour).", body = ErrorBody),
    ))]
async fn get_message(
    _: Admin,
    State(state): State<AppState>,
    id: PathParam,
) -> Result<impl IntoResponse> {
    let Path(id) = id.map_err(|_| ApiError::NotFound)?;
    let id = uuid::Uuid::parse_str(&id).map_err(|_| ApiError::NotFound)?;
    let (message, acks) = state
        .admin
        .get(&id.to_string())
        .await
        .ok_or(ApiError::NotFound)?;
    let missing: Vec<&String> = message
        .expected
        .iter()
        .filter(|i| !acks.contains_key(*i))
        .collect();
    Ok(Json(json!({
        "id": message.id,
        "to": message.to,
        "command": message.command,
        "args": message.args,
        "sent_at": message.sent_at,
        "expected": message.expected,
        "acks": acks,
        "missing": missing,
    })))
}
