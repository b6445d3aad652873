//! ElevenLabs' webhooks: conversation initiation (answered within the deadline, always 200 with
//! every dynamic variable) and post-call (HMAC-verified, recorded once per conversation).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body as RawBody;
use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::{FutureExt, StreamExt};
use hmac::{Hmac, Mac};
use serde_json::{json, Map, Value};
use sha2::Sha256;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::WebhookCaller;
use super::calls::webhook_call_id;
use super::input::Body;
use super::limits::{BodyError, BodyLedger};
use super::openapi::{ErrorBody, InitiationAnswer, InitiationBody, PostCallAnswer, PostCallBody};
use super::{ApiError, AppState, Result};
use crate::cache::{AnswerKey, Entry};
use crate::calls::model::valid_call_id;
use crate::calls::{CallRef, Ring, Work};
use crate::domain::{
    build_summary, next_time_of_day_change, Channel, Lead, LeadContext, Organization, Phone,
};
use crate::lookup::{Source, Sourced};
use crate::monitoring::metrics;
use crate::postcall::{self, Applied, ApplyError};
use crate::store::StoreError;

pub const INITIATION_PATH: &str = "/webhooks/elevenlabs/conversation-initiation";
pub const POST_CALL_PATH: &str = "/webhooks/elevenlabs/post-call";

/// The initiation webhook's body limit.
pub const INITIATION_BODY_LIMIT: usize = 64 * 1024;
/// Post-call bodies that may be a transcription are kept up to this size; larger ones, and
/// every body that names another type, are hashed as they stream past and not kept.
pub const POST_CALL_BODY_LIMIT: usize = 16 * 1024 * 1024;
/// The one post-call event type that is recorded.
const TRANSCRIPTION: &str = "post_call_transcription";
/// The call could not start: its call is marked failed.
const INITIATION_FAILURE: &str = "call_initiation_failure";
/// The post-call event types whose bodies are kept to be read; every other one is hashed as it
/// streams past and acknowledged.
const KEPT_TYPES: [&str; 2] = [TRANSCRIPTION, INITIATION_FAILURE];
/// How old (or how far ahead) a post-call signature's timestamp may be.
pub const SIGNATURE_TOLERANCE: Duration = Duration::from_secs(30 * 60);

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(conversation_initiation))
        .routes(routes!(post_call))
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
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        BodyError::find(&e).map_or(ApiError::TooLarge { limit }, BodyError::to_api_error)
    })
}

// Conversation initiation

/// What is known about a caller when the answer is due.
#[derive(Default)]
struct Known {
    caller: Option<Phone>,
    organization: Option<Arc<Organization>>,
    lead: Option<Arc<Lead>>,
    context: Option<Arc<LeadContext>>,
    /// The cache entries the answer is built from.
    entries: Vec<Arc<Entry>>,
    /// The least fresh source of the lookups made; `None` before any.
    source: Option<Source>,
    /// False when a lookup failed or the deadline cut the lookups short.
    complete: bool,
}

impl Known {
    fn saw<T>(&mut self, found: &Sourced<T>) {
        let source = found.source;
        self.source = Some(self.source.map_or(source, |s| s.min(source)));
        self.entries.push(found.entry.clone());
    }

    fn organization_id(&self) -> Option<uuid::Uuid> {
        self.context
            .as_deref()
            .map(|c| c.organization.id)
            .or(self.organization.as_deref().map(|o| o.id))
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

#[utoipa::path(post, path = INITIATION_PATH, tag = "webhooks",
    security(("webhook_secret" = [])),
    request_body(content = InitiationBody, description = "ElevenLabs' initiation payload. Every field is read leniently: a missing or mistyped one is an unknown caller, never an error."),
    responses(
        (status = 200, description = "Every dynamic variable, within `WEBHOOK_DEADLINE_MS`; a default answer when lookups fail or run late.", body = InitiationAnswer),
    ))]
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

    // The call this ring starts, when calls are on and the body names one.
    let ring = state
        .calls
        .as_ref()
        .and_then(|_| RingDraft::of(&body, caller.as_ref(), called.as_ref()));

    // A warm call: the answer rendered for this pair before, if nothing it shows has changed.
    let key = called.as_ref().map(|c| AnswerKey::new(c, caller.as_ref()));
    if let Some(rendered) = match key {
        Some(k) => state.lookup.cache().answer(&k).await,
        None => None,
    } {
        metrics::webhook_answer(Source::L1.as_str());
        if let Some(ring) = ring {
            ring.queue(&state, rendered.organization(), rendered.lead(), Source::L1);
        }
        return Ok(answer_response(rendered.body().clone(), Source::L1));
    }

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
    let now = Utc::now();
    let answer = initiation_answer(&state, &known, now);
    let body = Bytes::from(serde_json::to_vec(&answer).expect("JSON values serialise"));
    // Kept for the next call of this pair when every lookup succeeded with current data.
    if let Some(key) = key.filter(|_| source >= Source::Db) {
        let entries: Vec<&Entry> = known.entries.iter().map(AsRef::as_ref).collect();
        let changes_at = next_time_of_day_change(greeting_timezone(&known), now);
        state.lookup.cache().keep_answer(
            key,
            body.clone(),
            &entries,
            changes_at.timestamp_millis(),
            known.lead.as_ref().map(|l| l.id),
            known.organization_id(),
        );
    }
    if let Some(ring) = ring {
        ring.queue(
            &state,
            known.organization_id(),
            known.lead.as_ref().map(|l| l.id),
            source,
        );
    }
    Ok(answer_response(body, source))
}

/// What the webhook body says about the call it rings, read before the lookups.
struct RingDraft {
    call_id: String,
    agent_id: Option<String>,
    caller_phone: String,
    called_number: String,
    conversation_id: Option<String>,
}

impl RingDraft {
    fn of(
        body: &Map<String, Value>,
        caller: Option<&Phone>,
        called: Option<&Phone>,
    ) -> Option<Self> {
        let id_field = |name: &str| {
            lenient_str(body, name)
                .filter(|v| valid_call_id(v))
                .map(str::to_string)
        };
        Some(RingDraft {
            call_id: webhook_call_id(body)?,
            agent_id: id_field("agent_id"),
            caller_phone: caller.map(Phone::to_string).unwrap_or_default(),
            called_number: called.map(Phone::to_string).unwrap_or_default(),
            conversation_id: id_field("conversation_id"),
        })
    }

    /// Hands the call to the writer: never waits, never fails the answer.
    fn queue(
        self,
        state: &AppState,
        organization_id: Option<uuid::Uuid>,
        lead_id: Option<uuid::Uuid>,
        source: Source,
    ) {
        if let Some(calls) = &state.calls {
            calls.queue(Work::Ring(Ring {
                call_id: self.call_id,
                organization_id,
                lead_id,
                agent_id: self.agent_id,
                caller_phone: self.caller_phone,
                called_number: self.called_number,
                conversation_id: self.conversation_id,
                answer_source: source.as_str(),
                at: Utc::now(),
            }));
        }
    }
}

fn answer_response(body: Bytes, source: Source) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                HeaderName::from_static("x-hotline-source"),
                HeaderValue::from_static(source.as_str()),
            ),
        ],
        body,
    )
        .into_response()
}

/// The timezone whose time of day the greeting names.
fn greeting_timezone(known: &Known) -> chrono_tz::Tz {
    known
        .context
        .as_deref()
        .map(|c| &c.organization)
        .or(known.organization.as_deref())
        .map_or(chrono_tz::UTC, Organization::tz)
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
        known.saw(&org);
        known.organization = org.value;
        let (Some(org), Some(caller)) = (&known.organization, &known.caller) else {
            return Ok(());
        };
        let lead = lookup.lead_by_phone(org.id, caller, Some(deadline)).await?;
        known.saw(&lead);
        known.lead = lead.value;
        let Some(lead) = &known.lead else {
            return Ok(());
        };
        let context = lookup.context(lead.id, Some(deadline)).await?;
        known.saw(&context);
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

fn initiation_answer(state: &AppState, known: &Known, now: DateTime<Utc>) -> Value {
    let org = known.organization.as_deref();
    let lead = known.lead.as_deref();
    let ctx = known.context.as_deref();
    let greeting = match ctx {
        Some(c) => {
            crate::domain::build_greeting(Some(&c.organization), Some(c), Channel::Voice, now)
        }
        None => crate::domain::build_greeting(org, None, Channel::Voice, now),
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

/// What is kept of a post-call body as it streams in.
enum Kept {
    /// Every chunk so far: the body may be a transcription of a sane size.
    Chunks {
        chunks: Vec<axum::body::Bytes>,
        len: usize,
    },
    /// Nothing: the body names another type, or is larger than a transcription may be.
    Nothing { oversize: bool },
}

#[utoipa::path(post, path = POST_CALL_PATH, tag = "webhooks",
    security(("elevenlabs_signature" = [])),
    request_body(content = PostCallBody, description = "A signed ElevenLabs post-call event. `post_call_transcription` is recorded once per conversation; `call_initiation_failure` fails its call; other types are acknowledged."),
    responses(
        (status = 200, description = "Acknowledged: recorded, kept for later (database down), or ignored.", body = PostCallAnswer),
        (status = 422, description = "A transcription that cannot be recorded (no organization for the number called, say).", body = ErrorBody),
    ))]
async fn post_call(
    State(state): State<AppState>,
    ledger: Option<Extension<BodyLedger>>,
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
    // Bytes this handler drops go back to the request body budget at once.
    let release = |n: usize| {
        if let Some(Extension(ledger)) = &ledger {
            ledger.release(n);
        }
    };

    // Hash the whole body as it streams in (the signature covers all of it), and keep it only
    // while it may be a transcription of a sane size: the sender is not known to be ElevenLabs
    // until the last byte, and audio events are large.
    let mut mac = HmacSha256::new_from_slice(secret.expose().as_bytes())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    mac.update(signature.timestamp.to_string().as_bytes());
    mac.update(b".");
    let mut scanner = TypeScanner::default();
    let mut kept = Kept::Chunks {
        chunks: Vec::new(),
        len: 0,
    };
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| match BodyError::find(&e) {
            Some(b) => b.to_api_error(),
            None => ApiError::Malformed("The body could not be read.".into()),
        })?;
        mac.update(&chunk);
        scanner.feed(&chunk);
        let other_type = scanner
            .event_type()
            .is_some_and(|t| !KEPT_TYPES.contains(&t));
        match &mut kept {
            Kept::Chunks { len, .. } if other_type || *len + chunk.len() > POST_CALL_BODY_LIMIT => {
                release(*len + chunk.len());
                kept = Kept::Nothing {
                    oversize: !other_type,
                };
            }
            Kept::Chunks { chunks, len } => {
                *len += chunk.len();
                chunks.push(chunk);
            }
            Kept::Nothing { .. } => release(chunk.len()),
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
        Kept::Chunks { chunks, len } => {
            let mut bytes = Vec::with_capacity(len);
            for chunk in chunks {
                bytes.extend_from_slice(&chunk);
            }
            bytes
        }
        Kept::Nothing { oversize } => {
            // Another type: acknowledged, never kept. A body too large to keep that does not
            // say it is another type is refused.
            return match scanner.event_type() {
                Some(t) if !KEPT_TYPES.contains(&t) => {
                    tracing::info!(event_type = %sanitize_label(t), "post-call event acknowledged and ignored");
                    Ok(acknowledge("ignored"))
                }
                _ => {
                    debug_assert!(oversize);
                    Err(ApiError::TooLarge {
                        limit: POST_CALL_BODY_LIMIT,
                    })
                }
            };
        }
    };
    let envelope = Body::parse(&bytes)?.into_map();
    let event_type = envelope.get("type").and_then(Value::as_str).unwrap_or("");
    // The call changes only with an event that is acknowledged: a refused one changes nothing.
    let change = state.calls.clone().zip(call_change(event_type, &envelope));
    if event_type != TRANSCRIPTION {
        if let Some((calls, work)) = change {
            calls.queue(work);
        }
        tracing::info!(event_type = %sanitize_label(event_type), "post-call event acknowledged and ignored");
        return Ok(acknowledge("ignored"));
    }
    // Applying and, failing that, spooling run on a task of their own: ElevenLabs sends each
    // event once, so a dropped connection must not stop it half-way.
    let task_state = state.clone();
    let task = tokio::spawn(async move {
        let answer = apply_or_spool(&task_state, &envelope, bytes).await;
        if let (Ok(_), Some((calls, work))) = (&answer, change) {
            calls.queue(work);
        }
        answer
    });
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

/// What a signed post-call event does to its call: a transcription ends it (and links the
/// conversation it recorded), an initiation failure fails it. The call is named by
/// `data.metadata.phone_call.call_sid` (or `call_id`), else by the Twilio or SIP body ElevenLabs
/// forwards in `data.metadata.body`, else through the conversation the call recorded.
fn call_change(event_type: &str, envelope: &Map<String, Value>) -> Option<Work> {
    let data = envelope.get("data")?.as_object()?;
    let conversation_id = data
        .get("conversation_id")
        .and_then(Value::as_str)
        .filter(|c| valid_call_id(c))
        .map(str::to_string);
    let metadata = data.get("metadata").and_then(Value::as_object);
    let named = |section: &str, fields: &[&str]| {
        let section = metadata?.get(section)?.as_object()?;
        fields
            .iter()
            .filter_map(|f| section.get(*f).and_then(Value::as_str))
            .find(|id| valid_call_id(id))
            .map(str::to_string)
    };
    let call = named("phone_call", &["call_sid", "call_id"])
        .or_else(|| named("body", &["call_sid", "CallSid", "call_id"]))
        .map(CallRef::Id)
        .or_else(|| conversation_id.clone().map(CallRef::Conversation))?;
    match event_type {
        TRANSCRIPTION => Some(Work::End {
            call,
            conversation_id,
        }),
        INITIATION_FAILURE => Some(Work::Fail {
            call,
            reason: data
                .get("failure_reason")
                .and_then(Value::as_str)
                .map(|r| r.chars().filter(|c| !c.is_control()).take(200).collect()),
        }),
        _ => None,
    }
}

/// Finds the `type` of a JSON object (its top-level `"type"` string) as the bytes stream
/// past, without keeping them, wherever the key comes (JSON keys have no order: `type` may come
/// before or after a large `data`). Only a plain string (no escapes, at most
/// [`TypeScanner::MAX`] bytes) counts; anything else leaves the type unknown.
#[derive(Debug, Default)]
struct TypeScanner {
    depth: u32,
    top_is_object: bool,
    in_string: bool,
    escaped: bool,
    /// Inside the top-level object, the next string is a key.
    expect_key: bool,
    /// The top-level key just read is `type`: its value comes next.
    type_value_next: bool,
    /// What the string being read is captured as.
    capturing: Option<Capture>,
    buf: Vec<u8>,
    /// The string being captured cannot be taken as it is (escaped or too long).
    spoiled: bool,
    found: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Capture {
    Key,
    TypeValue,
}

impl TypeScanner {
    const MAX: usize = 64;

    fn event_type(&self) -> Option<&str> {
        self.found.as_deref()
    }

    fn feed(&mut self, bytes: &[u8]) {
        if self.found.is_some() {
            return;
        }
        for &b in bytes {
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                    continue;
                }
                match b {
                    b'\\' => {
                        self.escaped = true;
                        self.spoiled = true;
                    }
                    b'"' => {
                        self.in_string = false;
                        self.end_string();
                        if self.found.is_some() {
                            return;
                        }
                    }
                    _ if self.capturing.is_some() => {
                        if self.buf.len() < Self::MAX {
                            self.buf.push(b);
                        } else {
                            self.spoiled = true;
                        }
                    }
                    _ => {}
                }
                continue;
            }
            let top = self.depth == 1 && self.top_is_object;
            match b {
                b'"' => {
                    self.in_string = true;
                    self.buf.clear();
                    self.spoiled = false;
                    self.capturing = if top && self.expect_key {
                        Some(Capture::Key)
                    } else if top && self.type_value_next {
                        Some(Capture::TypeValue)
                    } else {
                        None
                    };
                }
                b'{' | b'[' => {
                    if self.depth == 0 {
                        self.top_is_object = b == b'{';
                        self.expect_key = self.top_is_object;
                    }
                    if top {
                        self.type_value_next = false;
                    }
                    self.depth += 1;
                }
                b'}' | b']' => self.depth = self.depth.saturating_sub(1),
                b',' if top => self.expect_key = true,
                b' ' | b'\t' | b'\n' | b'\r' | b':' | b',' => {}
                // A number or literal as the value of `type`: not a type.
                _ if top => self.type_value_next = false,
                _ => {}
            }
        }
    }

    fn end_string(&mut self) {
        match self.capturing.take() {
            Some(Capture::Key) => {
                self.expect_key = false;
                self.type_value_next = !self.spoiled && self.buf == b"type";
            }
            Some(Capture::TypeValue) => {
                self.type_value_next = false;
                if !self.spoiled {
                    self.found = std::str::from_utf8(&self.buf).ok().map(str::to_owned);
                }
            }
            None => {}
        }
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

    fn scan(body: &str) -> Option<String> {
        let mut s = TypeScanner::default();
        s.feed(body.as_bytes());
        s.event_type().map(str::to_owned)
    }

    #[test]
    fn the_type_is_found_wherever_it_is_and_only_at_the_top() {
        let cases: [(&str, Option<&str>); 12] = [
            (
                r#"{"type":"post_call_audio","data":{}}"#,
                Some("post_call_audio"),
            ),
            (
                r#"{"data":{"type":"twilio","x":[1,{"type":"no"}]}, "type" : "post_call_transcription"}"#,
                Some("post_call_transcription"),
            ),
            (r#"{"data":"a \"type\": \"x\"","type":"t"}"#, Some("t")),
            (r#"{"type":42,"x":"type"}"#, None),
            (r#"{"type":{"a":"b"},"c":"d"}"#, None),
            (r#"{"typ\u0065":"x"}"#, None),
            (r#"{"type":"a\u005fb"}"#, None),
            (r#"["type","x"]"#, None),
            (r#"{"a":"type","b":"x"}"#, None),
            (r#"{"a":["type","x"]}"#, None),
            (r#"{"type":"x"#, None),
            (r#"not json"#, None),
        ];
        for (body, expected) in cases {
            assert_eq!(scan(body).as_deref(), expected, "{body}");
        }
    }

    #[test]
    fn the_type_is_found_across_chunk_boundaries() {
        let body = r#"{"data":{"full_audio":"QUJD\"","type":"inner"},"type":"post_call_audio"}"#;
        for split in 0..body.len() {
            let mut s = TypeScanner::default();
            s.feed(&body.as_bytes()[..split]);
            s.feed(&body.as_bytes()[split..]);
            assert_eq!(s.event_type(), Some("post_call_audio"), "split at {split}");
        }
        for size in 1..5 {
            let mut s = TypeScanner::default();
            for chunk in body.as_bytes().chunks(size) {
                s.feed(chunk);
            }
            assert_eq!(s.event_type(), Some("post_call_audio"), "chunks of {size}");
        }
    }

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
