//! ElevenLabs' webhooks: conversation initiation (answered within the deadline, always 200 with
//! every dynamic variable) and post-call (HMAC-verified, recorded once per conversation).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body as RawBody;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use chrono::Utc;
use futures_util::{FutureExt, StreamExt};
use hmac::{Hmac, Mac};
use serde_json::{json, Map, Value};
use sha2::Sha256;

use super::auth::WebhookCaller;
use super::input::Body;
use super::{ApiError, AppState, Result};
use crate::domain::{build_summary, Channel, Lead, LeadContext, Organization, Phone};
use crate::lookup::Source;
use crate::monitoring::metrics;
use crate::postcall::{self, Applied, ApplyError};
use crate::store::StoreError;

pub const INITIATION_PATH: &str = "/webhooks/elevenlabs/conversation-initiation";
pub const POST_CALL_PATH: &str = "/webhooks/elevenlabs/post-call";

/// The initiation webhook's body limit.
pub const INITIATION_BODY_LIMIT: usize = 64 * 1024;
/// Post-call bodies up to this size are read; larger ones (audio) are hashed but not kept.
pub const POST_CALL_BODY_LIMIT: usize = 16 * 1024 * 1024;
/// How old (or how far ahead) a post-call signature's timestamp may be.
pub const SIGNATURE_TOLERANCE: Duration = Duration::from_secs(30 * 60);

pub fn router() -> Router<AppState> {
    Router::new()
        .route(INITIATION_PATH, post(conversation_initiation))
        .route(POST_CALL_PATH, post(post_call))
}

/// 413 from `Content-Length` alone, before reading a byte; else reads at most `limit` bytes.
async fn read_limited(
    headers: &HeaderMap,
    body: RawBody,
    limit: usize,
) -> Result<axum::body::Bytes> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::TooLarge { limit });
    }
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::TooLarge { limit })
}

// Conversation initiation

/// What is known about a caller when the answer is due.
#[derive(Default)]
struct Known {
    caller: Option<Phone>,
    organization: Option<Arc<Organization>>,
    lead: Option<Arc<Lead>>,
    context: Option<Arc<LeadContext>>,
    /// The least fresh source of the lookups made; `None` before any.
    source: Option<Source>,
    /// False when a lookup failed or the deadline cut the lookups short.
    complete: bool,
}

impl Known {
    fn saw(&mut self, source: Source) {
        self.source = Some(self.source.map_or(source, |s| s.min(source)));
    }

    fn answer_source(&self) -> Source {
        match self.source {
            Some(s) if self.complete => s,
            _ => Source::Default,
        }
    }
}

/// A string field of the webhook body, or `None` when absent or of another type.
fn lenient_str<'a>(body: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    body.get(name).and_then(Value::as_str)
}

async fn conversation_initiation(
    _: WebhookCaller,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: RawBody,
) -> Result<Response> {
    let started = Instant::now();
    let bytes = read_limited(&headers, body, INITIATION_BODY_LIMIT).await?;
    let body = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => map,
        Ok(_) => {
            return Err(ApiError::Malformed(
                "The body must be a JSON object.".into(),
            ))
        }
        Err(_) => return Err(ApiError::Malformed("The body is not valid JSON.".into())),
    };
    let region = state.settings.default_region;
    let caller = lenient_str(&body, "caller_id").and_then(|c| Phone::from_caller_id(c, region));
    let called = lenient_str(&body, "called_number").and_then(|c| Phone::from_caller_id(c, region));

    // Leave a little of the budget for building and writing the answer.
    let deadline = state.settings.webhook_deadline;
    let budget = deadline
        .saturating_sub(started.elapsed())
        .saturating_sub((deadline / 10).min(Duration::from_millis(20)));
    let mut known = Known {
        caller,
        ..Known::default()
    };
    // Each lookup gives up at `deadline` (serving a stale value if it has one); the outer
    // timeout is the backstop for anything else that could hold the answer up.
    let deadline = Instant::now() + budget.saturating_sub(Duration::from_millis(2));
    let lookups = look_up_caller(&state, called, deadline, &mut known);
    if tokio::time::timeout(budget, lookups).await.is_err() {
        tracing::warn!(
            budget_ms = budget.as_millis() as u64,
            "conversation initiation answered with defaults: lookups missed the deadline"
        );
    }
    let source = known.answer_source();
    metrics::webhook_answer(source.as_str());
    let answer = initiation_answer(&state, &known);
    let mut response = Json(answer).into_response();
    response.headers_mut().insert(
        "x-hotline-source",
        HeaderValue::from_static(source.as_str()),
    );
    Ok(response)
}

/// Fills `known` step by step, so that whatever was found before the deadline is used.
async fn look_up_caller(
    state: &AppState,
    called: Option<Phone>,
    deadline: Instant,
    known: &mut Known,
) {
    let lookup = &state.lookup;
    let Some(called) = called else {
        // Without the number that was called there is no organization to look in.
        return;
    };
    let result: Result<(), StoreError> = async {
        let org = lookup
            .organization_by_phone(&called, Some(deadline))
            .await?;
        known.saw(org.source);
        known.organization = org.value;
        let (Some(org), Some(caller)) = (&known.organization, &known.caller) else {
            return Ok(());
        };
        let lead = lookup.lead_by_phone(org.id, caller, Some(deadline)).await?;
        known.saw(lead.source);
        known.lead = lead.value;
        let Some(lead) = &known.lead else {
            return Ok(());
        };
        let context = lookup.context(lead.id, Some(deadline)).await?;
        known.saw(context.source);
        known.context = Some(context.value);
        Ok(())
    }
    .await;
    match result {
        Ok(()) => known.complete = true,
        Err(e) => {
            tracing::warn!(error = %e, "conversation initiation lookup failed; answering with what is known")
        }
    }
}

fn initiation_answer(state: &AppState, known: &Known) -> Value {
    let org = known.organization.as_deref();
    let lead = known.lead.as_deref();
    let ctx = known.context.as_deref();
    let greeting = match ctx {
        Some(c) => crate::domain::build_greeting(
            Some(&c.organization),
            Some(c),
            Channel::Voice,
            Utc::now(),
        ),
        None => state.lookup.anonymous_greeting(org, Channel::Voice),
    };
    let organization_name = ctx
        .map(|c| c.organization.name.clone())
        .or_else(|| org.map(|o| o.name.clone()))
        .unwrap_or_default();
    let mut answer = json!({
        "type": "conversation_initiation_client_data",
        "dynamic_variables": {
            "customer_name": lead.and_then(|l| l.customer_name.clone()).unwrap_or_default(),
            "lead_id": lead.map(|l| l.id.to_string()).unwrap_or_default(),
            "lead_status": lead.map(|l| l.status.as_str()).unwrap_or("new"),
            "organization_name": organization_name,
            "is_returning_customer": ctx.is_some_and(LeadContext::is_returning),
            "conversation_count": ctx.map_or(0, |c| c.conversation_count),
            "last_contact_date": ctx.and_then(LeadContext::last_contact_date).unwrap_or_default(),
            "previous_summary": ctx.map(|c| build_summary(&c.recent_conversations)).unwrap_or_default(),
            "greeting": greeting,
            "caller_phone": known.caller.as_ref().map(|p| p.to_string()).unwrap_or_default(),
        },
    });
    if state.settings.override_first_message {
        answer["conversation_config_override"] = json!({"agent": {"first_message": greeting}});
    }
    answer
}

// Post-call

type HmacSha256 = Hmac<Sha256>;

/// The parsed `ElevenLabs-Signature: t=<unix seconds>,v0=<hex>` header.
struct Signature {
    timestamp: i64,
    candidates: Vec<Vec<u8>>,
}

fn parse_signature(headers: &HeaderMap) -> Option<Signature> {
    let raw = headers.get("elevenlabs-signature")?.to_str().ok()?;
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in raw.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.trim().parse::<i64>().ok(),
            Some(("v0", sig)) => candidates.extend(hex::decode(sig.trim()).ok()),
            _ => {}
        }
    }
    Some(Signature {
        timestamp: timestamp?,
        candidates,
    })
    .filter(|s| !s.candidates.is_empty())
}

/// How much of a post-call body was kept.
enum PostCallBody {
    Kept(Vec<u8>),
    /// Too large to keep; the first and the last bytes, to tell what kind of event it was
    /// (JSON keys have no order: `type` may come before or after the large `data`).
    Dropped {
        head: Vec<u8>,
        tail: Vec<u8>,
    },
}

/// How many bytes of each end of a dropped post-call body are kept.
const DROPPED_WINDOW: usize = 4096;

/// Keeps only the last `DROPPED_WINDOW` bytes.
fn keep_tail(tail: &mut Vec<u8>) {
    if tail.len() > DROPPED_WINDOW {
        tail.drain(..tail.len() - DROPPED_WINDOW);
    }
}

async fn post_call(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: RawBody,
) -> Result<Response> {
    let Some(secret) = state.settings.elevenlabs_webhook_secret.as_ref() else {
        return Err(ApiError::NotConfigured(
            "The post-call webhook is not configured (ELEVENLABS_WEBHOOK_SECRET is unset).".into(),
        ));
    };
    let signature = parse_signature(&headers).ok_or(ApiError::Unauthorized)?;
    let age = Utc::now().timestamp().abs_diff(signature.timestamp);
    if age > SIGNATURE_TOLERANCE.as_secs() {
        return Err(ApiError::Unauthorized);
    }

    // Hash the whole body as it streams in, keeping it only while it is of a sane size.
    let mut mac = HmacSha256::new_from_slice(secret.expose().as_bytes())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    mac.update(signature.timestamp.to_string().as_bytes());
    mac.update(b".");
    let mut kept = PostCallBody::Kept(Vec::new());
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| ApiError::Malformed("The body could not be read.".into()))?;
        mac.update(&chunk);
        match &mut kept {
            PostCallBody::Kept(buf) if buf.len() + chunk.len() > POST_CALL_BODY_LIMIT => {
                let mut tail = buf.split_off(buf.len().saturating_sub(DROPPED_WINDOW));
                tail.extend_from_slice(&chunk);
                keep_tail(&mut tail);
                buf.truncate(DROPPED_WINDOW);
                kept = PostCallBody::Dropped {
                    head: std::mem::take(buf),
                    tail,
                };
            }
            PostCallBody::Kept(buf) => buf.extend_from_slice(&chunk),
            PostCallBody::Dropped { tail, .. } => {
                tail.extend_from_slice(&chunk);
                keep_tail(tail);
            }
        }
    }
    let verified = signature
        .candidates
        .iter()
        .any(|candidate| mac.clone().verify_slice(candidate).is_ok());
    if !verified {
        return Err(ApiError::Unauthorized);
    }

    let bytes = match kept {
        PostCallBody::Kept(bytes) => bytes,
        PostCallBody::Dropped { head, tail } => {
            // Audio events are large and not kept; anything else this large is refused.
            let is_audio = [head, tail]
                .iter()
                .any(|end| String::from_utf8_lossy(end).contains("\"post_call_audio\""));
            if is_audio {
                return Ok(acknowledge("ignored"));
            }
            return Err(ApiError::TooLarge {
                limit: POST_CALL_BODY_LIMIT,
            });
        }
    };
    let envelope = Body::parse(&bytes)?.into_map();
    let event_type = envelope.get("type").and_then(Value::as_str).unwrap_or("");
    if event_type != "post_call_transcription" {
        tracing::info!(event_type = %sanitize_label(event_type), "post-call event acknowledged and ignored");
        return Ok(acknowledge("ignored"));
    }
    // Applying and, failing that, spooling run on a task of their own: ElevenLabs sends each
    // event once, so a dropped connection must not stop it half-way.
    let task_state = state.clone();
    let task = tokio::spawn(async move { apply_or_spool(&task_state, &envelope, bytes).await });
    task.await
        .unwrap_or_else(|e| Err(ApiError::Internal(format!("post-call task failed: {e}"))))
}

/// Records the event now, or keeps it in the spool for the drainer: ElevenLabs never sends an
/// event twice, so whatever kept the store from recording it (the database down or refusing
/// writes, a race, even a panic) it is kept durably, and answered 200 only once kept. Only an
/// event that can never be recorded (422) or one that can be neither recorded nor kept (503)
/// is answered otherwise.
async fn apply_or_spool(
    state: &AppState,
    envelope: &Map<String, Value>,
    bytes: Vec<u8>,
) -> Result<Response> {
    let region = state.settings.default_region;
    let applied = AssertUnwindSafe(postcall::apply_event(&state.lookup, envelope, region))
        .catch_unwind()
        .await;
    let error = match applied {
        Ok(Ok(applied)) => {
            if applied == Applied::Unmatched {
                tracing::info!(
                    "post-call transcription matched no organization or caller; not stored"
                );
            }
            return Ok(acknowledge(applied.as_str()));
        }
        Ok(Err(ApplyError::Invalid(message))) => return Err(ApiError::Invalid(message)),
        Ok(Err(ApplyError::Store(e))) => e.to_string(),
        Err(_) => "applying it panicked".to_string(),
    };
    match state.spool.append(bytes).await {
        Ok(_) => {
            tracing::warn!(error = %error, "post-call event not recorded now; spooled");
            Ok(acknowledge("spooled"))
        }
        Err(spool) => Err(ApiError::Unavailable(format!(
            "post-call event not recorded ({error}) and not spooled ({spool})"
        ))),
    }
}

/// Event types are ElevenLabs' words; keep the log line short and printable.
fn sanitize_label(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(40)
        .collect()
}

/// The 200 of a signed post-call event, counted by what it was acknowledged as.
fn acknowledge(status: &'static str) -> Response {
    metrics::post_call_event(status);
    (StatusCode::OK, Json(json!({"status": status}))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_header_parsing() {
        let mut h = HeaderMap::new();
        h.insert(
            "elevenlabs-signature",
            HeaderValue::from_static("t=1700000000,v0=abcd"),
        );
        let s = parse_signature(&h).unwrap();
        assert_eq!(s.timestamp, 1_700_000_000);
        assert_eq!(s.candidates, vec![vec![0xab, 0xcd]]);
        for bad in ["", "t=1", "v0=abcd", "t=x,v0=abcd", "t=1,v0=zz"] {
            h.insert("elevenlabs-signature", HeaderValue::from_static(bad));
            assert!(parse_signature(&h).is_none(), "{bad}");
        }
    }
}
