//! The HTTP layer's one error type. Every error is JSON:
//! `{"error": {"code": "<snake_case>", "message": "<human sentence>"}}`, and a 5xx body never
//! carries internal error text (that goes to the request's log line instead).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::store::StoreError;

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON, or not the JSON shape expected at all.
    #[error("{0}")]
    Malformed(String),
    #[error("authentication required")]
    Unauthorized,
    #[error("not found")]
    NotFound,
    /// The path exists, but not with this method.
    #[error("This method is not allowed on this path.")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    #[error("The request body is larger than {limit} bytes.")]
    TooLarge { limit: usize },
    /// The body did not arrive in full within `BODY_TIMEOUT_S`.
    #[error("The request body did not arrive in time.")]
    RequestTimeout,
    /// Request bodies in memory are at `BODY_BUDGET_MB`.
    #[error("request body budget exhausted")]
    Overloaded,
    /// A field has a wrong type or value.
    #[error("{0}")]
    Invalid(String),
    /// A dependency (the database) is down; nothing was changed.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// The feature needs configuration that this instance lacks.
    #[error("{0}")]
    NotConfigured(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// The internal detail of a 5xx, attached to the response for the request log.
#[derive(Clone, Debug)]
pub struct InternalDetail(pub String);

impl ApiError {
    pub fn invalid(field: &str, problem: impl std::fmt::Display) -> ApiError {
        ApiError::Invalid(format!("`{field}` {problem}"))
    }

    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Malformed(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) | ApiError::NotConfigured(_) | ApiError::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::Malformed(_) => "malformed_request",
            ApiError::Unauthorized => "unauthorized",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::TooLarge { .. } => "payload_too_large",
            ApiError::RequestTimeout => "request_timeout",
            ApiError::Overloaded => "overloaded",
            ApiError::Invalid(_) => "invalid_field",
            ApiError::Unavailable(_) => "service_unavailable",
            ApiError::NotConfigured(_) => "not_configured",
            ApiError::Internal(_) => "internal_error",
        }
    }

    fn public_message(&self) -> String {
        match self {
            ApiError::Unauthorized => {
                "A valid `Authorization: Bearer <token>` header is required.".into()
            }
            ApiError::NotFound => "No such resource.".into(),
            ApiError::Unavailable(_) => {
                "A dependency is unavailable; nothing was changed. Try again shortly.".into()
            }
            ApiError::Internal(_) => "An internal error occurred.".into(),
            ApiError::Overloaded => {
                "The server is receiving too much at once; try again shortly.".into()
            }
            other => other.to_string(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::NotFound,
            StoreError::Conflict(c) => ApiError::Conflict(conflict_message(&c)),
            StoreError::InvalidReference(c) => ApiError::Invalid(reference_message(&c)),
            StoreError::Unavailable(detail) => ApiError::Unavailable(detail),
            StoreError::Other(detail) => ApiError::Internal(detail),
        }
    }
}

/// Database constraint names mapped to sentences, in one place.
fn conflict_message(constraint: &str) -> String {
    match constraint {
        "organizations_phone_number_key" => {
            "An organization with this phone number already exists.".into()
        }
        "leads_organization_id_phone_number_key" => {
            "This organization already has a lead with this phone number.".into()
        }
        "conversations_external_id_key" => {
            "A conversation with this external_id already exists.".into()
        }
        "leads_organization_id_fkey" => "The organization still has leads.".into(),
        _ => "The change conflicts with existing data.".into(),
    }
}

fn reference_message(constraint: &str) -> String {
    match constraint {
        c if c.contains("organization") => "`organization_id` names no organization.".into(),
        c if c.contains("lead") => "`lead_id` names no lead.".into(),
        _ => "A referenced record does not exist.".into(),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let body = Json(json!({
            "error": {"code": self.code(), "message": self.public_message()}
        }));
        let mut response = (status, body).into_response();
        // A feature this instance was not configured for is the caller's news, not an error
        // of the service's: logged as an ordinary request.
        if status.is_server_error() && !matches!(self, ApiError::NotConfigured(_)) {
            response
                .extensions_mut()
                .insert(InternalDetail(self.to_string()));
        }
        if matches!(self, ApiError::RequestTimeout) {
            // The rest of the body may still be on its way: this connection cannot be reused.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
