//! The store API: organizations, leads and their conversations, behind the admin token.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use uuid::Uuid;

use super::auth::Admin;
use super::input::{Body, Field};
use super::limits::BodyError;
use super::{ApiError, AppState, Result};
use crate::domain::{
    Channel, LeadPatch, LeadStatus, NewConversation, NewLead, NewOrganization, OrganizationPatch,
    Phone, LONG_TEXT_MAX, SHORT_TEXT_MAX,
};

/// The largest page of history one request may ask for.
const MAX_PAGE: i64 = 100;
const DEFAULT_PAGE: i64 = 20;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/organizations", post(create_organization))
        .route(
            "/api/organizations/{id}",
            get(get_organization)
                .patch(update_organization)
                .delete(delete_organization),
        )
        .route("/api/leads", post(create_lead).get(find_lead))
        .route(
            "/api/leads/{id}",
            get(get_lead).patch(update_lead).delete(delete_lead),
        )
        .route(
            "/api/leads/{id}/conversations",
            post(create_conversation).get(list_conversations),
        )
        .route("/api/leads/{id}/context", get(lead_context))
        .route("/api/leads/{id}/summary", get(lead_summary))
        .route("/api/leads/{id}/greeting", get(lead_greeting))
}

/// Reads a JSON object body, turning the extractor's rejections into JSON errors.
pub(super) fn json_body(bytes: Result<Bytes, BytesRejection>) -> Result<Body> {
    let rejection = match bytes {
        Ok(bytes) => return Body::parse(&bytes),
        Err(rejection) => rejection,
    };
    if let Some(e) = BodyError::find(&rejection) {
        return Err(e.to_api_error());
    }
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return Err(ApiError::TooLarge {
            limit: 2 * 1024 * 1024,
        });
    }
    Err(ApiError::Malformed("The body could not be read.".into()))
}

/// A path segment, taken as it comes: a segment axum cannot decode (not UTF-8) must still get a
/// JSON error, not the extractor's plain-text rejection.
pub(super) type PathParam = Result<Path<String>, PathRejection>;

/// A path id: anything that is not a UUID names nothing, so it is a 404.
fn path_id(raw: PathParam) -> Result<Uuid> {
    let Path(raw) = raw.map_err(|_| ApiError::NotFound)?;
    Uuid::parse_str(&raw).map_err(|_| ApiError::NotFound)
}

pub(super) type QueryParams = Result<Query<HashMap<String, String>>, QueryRejection>;

pub(super) fn query(params: QueryParams) -> Result<HashMap<String, String>> {
    params
        .map(|Query(q)| q)
        .map_err(|_| ApiError::Malformed("The query string could not be parsed.".into()))
}

fn query_i64(q: &HashMap<String, String>, name: &str, default: i64, max: i64) -> Result<i64> {
    match q.get(name) {
        None => Ok(default),
        Some(raw) => match raw.trim().parse::<i64>() {
            Ok(n) if (0..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::invalid(
                name,
                format_args!("must be a whole number from 0 to {max}"),
            )),
        },
    }
}

// Organizations

const ORG_FIELDS: &[&str] = &["name", "phone_number", "timezone", "greeting_template"];

async fn create_organization(
    _: Admin,
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse> {
    let body = json_body(bytes)?;
    body.deny_unknown(ORG_FIELDS)?;
    let region = state.settings.default_region;
    let new = NewOrganization {
        name: body
            .non_empty_text("name", SHORT_TEXT_MAX)?
            .required("name")?,
        phone_number: body
            .phone("phone_number", region)?
            .required("phone_number")?,
        timezone: body
            .timezone("timezone")?
            .into_option()
            .unwrap_or_else(|| "UTC".into()),
        greeting_template: body.text("greeting_template", LONG_TEXT_MAX)?.into_option(),
    };
    let org = state.lookup.create_organization(new).await?;
    Ok((StatusCode::CREATED, Json(org)))
}

async fn get_organization(
    _: Admin,
    State(state): State<AppState>,
    id: PathParam,
) -> Result<impl IntoResponse> {
    let org = state.lookup.organization(path_id(id)?, None).await?;
    Ok(Json(org.value))
}

async fn update_organization(
    _: Admin,
    State(state): State<AppState>,
    id: PathParam,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse> {
    let id = path_id(id)?;
    let body = json_body(bytes)?;
    body.deny_unknown(ORG_FIELDS)?;
    let region = state.settings.default_region;
    let patch = OrganizationPatch {
        name: body
            .non_empty_text("name", SHORT_TEXT_MAX)?
            .into_required_patch("name")?,
        phone_number: body
            .phone("phone_number", region)?
            .into_required_patch("phone_number")?,
        timezone: body.timezone("timezone")?.into_required_patch("timezone")?,
        greeting_template: body.text("greeting_template", LONG_TEXT_MAX)?.into_patch(),
    };
    let org = state.lookup.update_organization(id, patch).await?;
    Ok(Json(org))
}

async fn delete_organization(
    _: Admin,
    State(state): State<AppState>,
    id: PathParam,
) -> Result<StatusCode> {
    state.lookup.delete_organization(path_id(id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

// Leads

const LEAD_FIELDS: &[&str] = &[
    "organization_id",
    "phone_number",
    "customer_name",
    "email",
    "status",
    "notes",
    "metadata",
];

async fn create_lead(
    _: Admin,
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse> {
    let body = json_body(bytes)?;
    body.deny_unknown(LEAD_FIELDS)?;
    let region = state.settings.default_region;
    let new = NewLead {
        organization_id: body.uuid("organization_id")?.required("organization_id")?,
        phone_number: body
            .phone("phone_number", region)?
            .required("phone_number")?,
        customer_name: body.text("customer_name", SHORT_TEXT_MAX)?.into_option(),
        email: body.email("email")?.into_option(),
        status: body
            .parsed::<LeadStatus>("status")?
            .into_option()
            .unwrap_or_default(),
        notes: body.text("notes", LONG_TEXT_MAX)?.into_option(),
        metadata: body
            .object("metadata")?
            .into_option()
            .unwrap_or_else(|| json!({})),
    };
    let lead = state.lookup.create_lead(new).await?;
    Ok((StatusCode::CREATED, Json(lead)))
}

async fn find_lead(
    _: Admin,
    State(state): State<AppState>,
    params: QueryParams,
) -> Result<impl IntoResponse> {
    let q = query(params)?;
    let organization_id = q
        .get("organization_id")
        .ok_or_else(|| ApiError::invalid("organization_id", "is required"))?;
    let organization_id = Uuid::parse_str(organization_id)
        .map_err(|_| ApiError::invalid("organization_id", "must be a UUID"))?;
    let phone = q
        .get("phone")
        .ok_or_else(|| ApiError::invalid("phone", "is required"))?;
    let phone = Phone::parse(phone, state.settings.default_region).map_err(|e| {
        ApiError::invalid("phone", format_args!("is not a usable phone number ({e})"))
    })?;
    let lead = state
        .lookup
        .lead_by_phone(organization_id, &phone, None)
        .await?
        .value
        .ok_or(ApiError::NotFound)?;
    Ok(Json(lead))
}

async fn get_lead(
    _: Admin,
    State(state): State<AppState>,
    id: PathParam,
) -> Result<impl IntoResponse> {
    let lead = state.lookup.lead(path_id(id)?, None).await?;
    Ok(Json(lead.value))
}

async fn update_lead(
    _: Admin,
    State(state): State<AppState>,
    id: PathParam,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse> {
    let id = path_id(id)?;
    let body = json_body(bytes)?;
    body.deny_unknown(LEAD_FIELDS)?;
    if !matches!(body.uuid("organization_id"), Ok(Field::Absent)) {
        return Err(ApiError::invalid(
            "organization_id",
            "cannot be changed; create the lead in the other organization instead",
        ));
    }
    let region = state.settings.default_region;
    let patch = LeadPatch {
        phone_number: body
            .phone("phone_number", region)?
            .into_required_patch("phone_number")?,
        customer_name: body.text("customer_name", SHORT_TEXT_MAX)?.into_patch(),
        email: body.email("email")?.into_patch(),
        status: body
            .parsed::<LeadStatus>("status")?
            .into_required_patch("status")?,
        notes: body.text("notes", LONG_TEXT_MAX)?.into_patch(),
        metadata: body.object("metadata")?.into_required_patch("metadata")?,
    };
    let lead = state.lookup.update_lead(id, patch).await?;
    Ok(Json(lead))
}

async fn delete_lead(_: Admin, State(state): State<AppState>, id: PathParam) -> Result<StatusCode> {
    state.lookup.delete_lead(path_id(id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

// Conversations and derived views

const CONVERSATION_FIELDS: &[&str] = &[
    "channel",
    "external_id",
    "summary",
    "transcript",
    "started_at",
    "ended_at",
];

async fn create_conversation(
    _: Admin,
    State(state): State<AppState>,
    id: PathParam,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse> {
    let lead_id = path_id(id)?;
    let body = json_body(bytes)?;
    body.deny_unknown(CONVERSATION_FIELDS)?;
    let new = NewConversation {
        lead_id,
        channel: body.parsed::<Channel>("channel")?.required("channel")?,
        external_id: body
            .non_empty_text("external_id", SHORT_TEXT_MAX)?
            .into_option(),
        summary: body.text("summary", LONG_TEXT_MAX)?.into_option(),
        transcript: body.json("transcript")?.into_option(),
        started_at: body.timestamp("started_at")?.into_option(),
        ended_at: body.timestamp("ended_at")?.into_option(),
    };
    if let (Some(start), Some(end)) = (new.started_at, new.ended_at) {
        if end < start {
            return Err(ApiError::invalid(
                "ended_at",
                "must not be before `started_at`",
            ));
        }
    }
    let conversation = state.lookup.create_conversation(new).await?;
    Ok((StatusCode::CREATED, Json(conversation)))
}

async fn list_conversations(
    _: Admin,
    State(state): State<AppState>,
    id: PathParam,
    params: QueryParams,
) -> Result<impl IntoResponse> {
    let lead_id = path_id(id)?;
    let q = query(params)?;
    let limit = query_i64(&q, "limit", DEFAULT_PAGE, MAX_PAGE)?;
    let offset = query_i64(&q, "offset", 0, i64::from(i32::MAX))?;
    let page = state.lookup.history(lead_id, limit, offset).await?;
    Ok(Json(json!({
        "items": page.value.as_ref(),
        "limit": limit,
        "offset": offset,
    })))
}

async fn lead_context(
    _: Admin,
    State(state): State<AppState>,
    id: PathParam,
) -> Result<impl IntoResponse> {
    let context = state.lookup.context(path_id(id)?, None).await?;
    let ctx = context.value.as_ref();
    let mut body = serde_json::to_value(ctx).map_err(|e| ApiError::Internal(e.to_string()))?;
    if let Value::Object(map) = &mut body {
        map.insert("is_returning_customer".into(), json!(ctx.is_returning()));
        map.insert("last_contact_date".into(), json!(ctx.last_contact_date()));
    }
    Ok(Json(body))
}

async fn lead_summary(
    _: Admin,
    State(state): State<AppState>,
    id: PathParam,
) -> Result<impl IntoResponse> {
    let lead_id = path_id(id)?;
    let summary = state.lookup.summary(lead_id, None).await?;
    Ok(Json(
        json!({"lead_id": lead_id, "summary": summary.value.as_str()}),
    ))
}

async fn lead_greeting(
    _: Admin,
    State(state): State<AppState>,
    id: PathParam,
    params: QueryParams,
) -> Result<impl IntoResponse> {
    let lead_id = path_id(id)?;
    let q = query(params)?;
    let channel = match q.get("channel") {
        None => Channel::Voice,
        Some(raw) => raw
            .parse::<Channel>()
            .map_err(|e| ApiError::invalid("channel", e))?,
    };
    let greeting = state.lookup.greeting(lead_id, channel, None).await?;
    Ok(Json(json!({
        "lead_id": lead_id,
        "channel": channel,
        "greeting": greeting.value.as_str(),
    })))
}
