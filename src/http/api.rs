//! The store API: organizations, leads and their conversations, behind the admin token.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::auth::Admin;
use super::input::{Body, Field};
use super::limits::BodyError;
use super::openapi::{
    ConversationCreate, ConversationPage, ErrorBody, LeadContextView, LeadCreate, LeadGreeting,
    LeadSummary, LeadUpdate, OrganizationCreate, OrganizationUpdate,
};
use super::{ApiError, AppState, Result};
use crate::domain::{
    Channel, LeadPatch, LeadStatus, NewConversation, NewLead, NewOrganization, OrganizationPatch,
    Phone, LONG_TEXT_MAX, SHORT_TEXT_MAX,
};
#[allow(unused_imports)]
use crate::domain::{Conversation, Lead, Organization};

/// The largest page of history one request may ask for.
const MAX_PAGE: i64 = 100;
const DEFAULT_PAGE: i64 = 20;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_organization))
        .routes(routes!(
            get_organization,
            update_organization,
            delete_organization
        ))
        .routes(routes!(create_lead, find_lead))
        .routes(routes!(get_lead, update_lead, delete_lead))
        .routes(routes!(create_conversation, list_conversations))
        .routes(routes!(lead_context))
        .routes(routes!(lead_summary))
        .routes(routes!(lead_greeting))
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

#[utoipa::path(post, path = "/api/organizations", tag = "store",
    security(("admin_token" = [])),
    request_body = OrganizationCreate,
    responses(
        (status = 201, description = "Created.", body = Organization),
        (status = 409, description = "Another organization has this phone number.", body = ErrorBody),
        (status = 422, description = "A field is missing or wrong.", body = ErrorBody),
    ))]
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

#[utoipa::path(get, path = "/api/organizations/{id}", tag = "store",
    security(("admin_token" = [])),
    params(("id" = Uuid, Path, description = "The organization's id.")),
    responses(
        (status = 200, description = "The organization (read through the cache).", body = Organization),
        (status = 404, description = "No such organization.", body = ErrorBody),
        (status = 503, description = "The database is down and nothing is cached.", body = ErrorBody),
    ))]
async fn get_organization(
    _: Admin,
    State(state): State<AppState>,
    id: PathParam,
) -> Result<impl IntoResponse> {
    let org = state.lookup.organization(path_id(id)?, None).await?;
    Ok(Json(org.value))
}

#[utoipa::path(patch, path = "/api/organizations/{id}", tag = "store",
    security(("admin_token" = [])),
    params(("id" = Uuid, Path, description = "The organization's id.")),
    request_body = OrganizationUpdate,
    responses(
        (status = 200, description = "The organization as changed.", body = Organization),
        (status = 404, description = "No such organization.", body = ErrorBody),
        (status = 409, description = "Another organization has this phone number.", body = ErrorBody),
        (status = 422, description = "A field is wrong.", body = ErrorBody),
    ))]
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

#[utoipa::path(delete, path = "/api/organizations/{id}", tag = "store",
    security(("admin_token" = [])),
    params(("id" = Uuid, Path, description = "The organization's id.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "No such organization.", body = ErrorBody),
        (status = 409, description = "The organization still has leads.", body = ErrorBody),
        (status = 503, description = "The database is down; nothing was changed.", body = ErrorBody),
    ))]
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

#[utoipa::path(post, path = "/api/leads", tag = "store",
    security(("admin_token" = [])),
    request_body = LeadCreate,
    responses(
        (status = 201, description = "Created.", body = Lead),
        (status = 409, description = "The organization already has a lead with this phone number.", body = ErrorBody),
        (status = 422, description = "A field is missing or wrong, or the organization does not exist.", body = ErrorBody),
    ))]
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

#[utoipa::path(get, path = "/api/leads", tag = "store",
    security(("admin_token" = [])),
    params(
        ("organization_id" = Uuid, Query, description = "The organization's id."),
        ("phone" = String, Query, format = "phone", description = "The lead's phone number."),
    ),
    responses(
        (status = 200, description = "The lead (read through the cache).", body = Lead),
        (status = 404, description = "No such lead.", body = ErrorBody),
        (status = 400, description = "The query string could not be parsed.", body = ErrorBody),
        (status = 422, description = "A parameter is missing or wrong.", body = ErrorBody),
        (status = 503, description = "The database is down and nothing is cached.", body = ErrorBody),
    ))]
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

#[utoipa::path(get, path = "/api/leads/{id}", tag = "store",
    security(("admin_token" = [])),
    params(("id" = Uuid, Path, description = "The lead's id.")),
    responses(
        (status = 200, description = "The lead (read through the cache).", body = Lead),
        (status = 404, description = "No such lead.", body = ErrorBody),
        (status = 503, description = "The database is down and nothing is cached.", body = ErrorBody),
    ))]
async fn get_lead(
    _: Admin,
    State(state): State<AppState>,
    id: PathParam,
) -> Result<impl IntoResponse> {
    let lead = state.lookup.lead(path_id(id)?, None).await?;
    Ok(Json(lead.value))
}

#[utoipa::path(patch, path = "/api/leads/{id}", tag = "store",
    security(("admin_token" = [])),
    params(("id" = Uuid, Path, description = "The lead's id.")),
    request_body = LeadUpdate,
    responses(
        (status = 200, description = "The lead as changed.", body = Lead),
        (status = 404, description = "No such lead.", body = ErrorBody),
        (status = 409, description = "The organization already has a lead with this phone number.", body = ErrorBody),
        (status = 422, description = "A field is wrong.", body = ErrorBody),
    ))]
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

#[utoipa::path(delete, path = "/api/leads/{id}", tag = "store",
    security(("admin_token" = [])),
    params(("id" = Uuid, Path, description = "The lead's id.")),
    responses(
        (status = 204, description = "Deleted, with its conversations."),
        (status = 404, description = "No such lead.", body = ErrorBody),
        (status = 503, description = "The database is down; nothing was changed.", body = ErrorBody),
    ))]
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

#[utoipa::path(post, path = "/api/leads/{id}/conversations", tag = "store",
    security(("admin_token" = [])),
    params(("id" = Uuid, Path, description = "The lead's id.")),
    request_body = ConversationCreate,
    responses(
        (status = 201, description = "Recorded.", body = Conversation),
        (status = 404, description = "No such lead.", body = ErrorBody),
        (status = 409, description = "A conversation with this `external_id` is already recorded.", body = ErrorBody),
        (status = 422, description = "A field is missing or wrong.", body = ErrorBody),
    ))]
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

#[utoipa::path(get, path = "/api/leads/{id}/conversations", tag = "store",
    security(("admin_token" = [])),
    params(
        ("id" = Uuid, Path, description = "The lead's id."),
        ("limit" = Option<i64>, Query, minimum = 0, maximum = 100, description = "At most this many (20 when absent)."),
        ("offset" = Option<i64>, Query, minimum = 0, maximum = 2147483647, description = "Skip this many, newest first."),
    ),
    responses(
        (status = 200, description = "A page of the lead's conversations, newest first (cached).", body = ConversationPage),
        (status = 404, description = "No such lead.", body = ErrorBody),
        (status = 400, description = "The query string could not be parsed.", body = ErrorBody),
        (status = 422, description = "A parameter is out of range.", body = ErrorBody),
        (status = 503, description = "The database is down and nothing is cached.", body = ErrorBody),
    ))]
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

#[utoipa::path(get, path = "/api/leads/{id}/context", tag = "store",
    security(("admin_token" = [])),
    params(("id" = Uuid, Path, description = "The lead's id.")),
    responses(
        (status = 200, description = "The lead's conversation context (cached).", body = LeadContextView),
        (status = 404, description = "No such lead.", body = ErrorBody),
        (status = 503, description = "The database is down and nothing is cached.", body = ErrorBody),
    ))]
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

#[utoipa::path(get, path = "/api/leads/{id}/summary", tag = "store",
    security(("admin_token" = [])),
    params(("id" = Uuid, Path, description = "The lead's id.")),
    responses(
        (status = 200, description = "A bounded summary of the lead's recent conversations (cached).", body = LeadSummary),
        (status = 404, description = "No such lead.", body = ErrorBody),
        (status = 503, description = "The database is down and nothing is cached.", body = ErrorBody),
    ))]
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

#[utoipa::path(get, path = "/api/leads/{id}/greeting", tag = "store",
    security(("admin_token" = [])),
    params(
        ("id" = Uuid, Path, description = "The lead's id."),
        ("channel" = Option<Channel>, Query, description = "`voice` when absent."),
    ),
    responses(
        (status = 200, description = "The greeting an agent opens with (cached).", body = LeadGreeting),
        (status = 404, description = "No such lead.", body = ErrorBody),
        (status = 400, description = "The query string could not be parsed.", body = ErrorBody),
        (status = 422, description = "`channel` is not a channel.", body = ErrorBody),
        (status = 503, description = "The database is down and nothing is cached.", body = ErrorBody),
    ))]
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
