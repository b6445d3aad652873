//! Bearer-token extractors, compared in constant time.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};
use crate::config::Secret;

/// Proof that the request carried `Authorization: Bearer <ADMIN_TOKEN>`.
pub struct Admin;

/// Proof that the request carried `Authorization: Bearer <WEBHOOK_SECRET>`.
pub struct WebhookCaller;

fn bearer_matches(parts: &Parts, secret: &Secret) -> bool {
    let Some(value) = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, token)) = value.trim().split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer")
        && bool::from(token.trim().as_bytes().ct_eq(secret.expose().as_bytes()))
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if bearer_matches(parts, &state.settings.admin_token) {
            Ok(Admin)
        } else {
            Err(ApiError::Unauthorized)
        }
    }
}

impl FromRequestParts<AppState> for WebhookCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if bearer_matches(parts, &state.settings.webhook_secret) {
            Ok(WebhookCaller)
        } else {
            Err(ApiError::Unauthorized)
        }
    }
}
