//! Applying a verified ElevenLabs post-call event: a `post_call_transcription` becomes a voice
//! conversation of the caller's lead (created when new), once per `conversation_id`. Used by
//! the webhook and by the spool drainer, which applies events kept while the database was down.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::domain::{CallRecord, Lead, Phone, Region, LONG_TEXT_MAX, SHORT_TEXT_MAX};
use crate::lookup::Lookup;
use crate::spool::Spool;
use crate::store::StoreError;

/// What applying an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Recorded,
    /// A conversation with this `conversation_id` was stored already.
    Duplicate,
    /// No organization or caller matched: acknowledged, not stored.
    Unmatched,
    /// Not a transcription event: acknowledged, not kept.
    Ignored,
}

impl Applied {
    pub fn as_str(self) -> &'static str {
        match self {
            Applied::Recorded => "recorded",
            Applied::Duplicate => "duplicate",
            Applied::Unmatched => "unmatched",
            Applied::Ignored => "ignored",
        }
    }
}

/// Why an event could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The event is not one we can store (a required field is missing); final.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Strips NUL characters, which Postgres refuses, from every string of a JSON document.
fn strip_nul(v: &mut Value) {
    match v {
        Value::String(s) if s.contains('\0') => *s = s.replace('\0', ""),
        Value::Array(items) => items.iter_mut().for_each(strip_nul),
        Value::Object(map) => map.values_mut().for_each(strip_nul),
        _ => {}
    }
}

fn pointer_str<'a>(data: &'a Value, pointer: &str) -> Option<&'a str> {
    data.pointer(pointer)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Applies a whole event envelope (`{"type", "event_timestamp", "data"}`).
pub async fn apply_event(
    lookup: &Lookup,
    envelope: &Map<String, Value>,
    region: Region,
) -> Result<Applied, ApplyError> {
    if envelope.get("type").and_then(Value::as_str) != Some("post_call_transcription") {
        return Ok(Applied::Ignored);
    }
    let data = envelope
        .get("data")
        .filter(|d| d.is_object())
        .ok_or_else(|| ApplyError::Invalid("`data` must be an object".into()))?;
    apply_transcription(lookup, data, region).await
}

async fn apply_transcription(
    lookup: &Lookup,
    data: &Value,
    region: Region,
) -> Result<Applied, ApplyError> {
    let mut data = data.clone();
    strip_nul(&mut data);
    let external_id: String = pointer_str(&data, "/conversation_id")
        .ok_or_else(|| ApplyError::Invalid("`data.conversation_id` is required".into()))?
        .chars()
        .take(SHORT_TEXT_MAX)
        .collect();

    // The lead hotline named at the start of the call, if it still exists.
    let echoed = pointer_str(
        &data,
        "/conversation_initiation_client_data/dynamic_variables/lead_id",
    )
    .and_then(|s| Uuid::parse_str(s).ok());
    let mut lead: Option<Arc<Lead>> = None;
    if let Some(id) = echoed {
        match lookup.lead(id, None).await {
            Ok(found) => lead = Some(found.value),
            Err(StoreError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let caller = match &lead {
        Some(l) => Some(l.phone_number.clone()),
        None => pointer_str(&data, "/metadata/phone_call/external_number")
            .and_then(|c| Phone::from_caller_id(c, region)),
    };
    let organization_id = match &lead {
        Some(l) => Some(l.organization_id),
        None => match pointer_str(&data, "/metadata/phone_call/agent_number")
            .and_then(|n| Phone::from_caller_id(n, region))
        {
            Some(number) => lookup
                .organization_by_phone(&number, None)
                .await?
                .value
                .map(|o| o.id),
            None => None,
        },
    };
    let (Some(organization_id), Some(caller)) = (organization_id, caller) else {
        return Ok(Applied::Unmatched);
    };

    let started_at = data
        .pointer("/metadata/start_time_unix_secs")
        .and_then(Value::as_i64)
        .and_then(|t| Utc.timestamp_opt(t, 0).single());
    let ended_at: Option<DateTime<Utc>> = started_at.and_then(|start| {
        data.pointer("/metadata/call_duration_secs")
            .and_then(Value::as_i64)
            .filter(|d| (0..=7 * 24 * 3600).contains(d))
            .and_then(|d| start.checked_add_signed(chrono::Duration::seconds(d)))
    });
    let summary = pointer_str(&data, "/analysis/transcript_summary")
        .map(|s| s.chars().take(LONG_TEXT_MAX).collect::<String>());
    let transcript = data.get("transcript").filter(|t| t.is_array()).cloned();
    let outcome = lookup
        .record_call(CallRecord {
            organization_id,
            lead_id: lead.as_ref().map(|l| l.id),
            caller,
            external_id,
            summary,
            transcript,
            started_at,
            ended_at,
        })
        .await?;
    tracing::info!(
        lead_created = outcome.lead_created,
        conversation_created = outcome.conversation_created,
        "post-call transcription recorded"
    );
    Ok(if outcome.conversation_created {
        Applied::Recorded
    } else {
        Applied::Duplicate
    })
}

/// How often the drainer looks at the spool while the database takes what it holds.
const DRAIN_EVERY: Duration = Duration::from_secs(1);
/// The longest wait between two attempts while the database keeps failing.
const DRAIN_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How many passes an event that lost a race with another writer (a conflict, a row deleted
/// meanwhile) is tried again before it is set aside.
const RACE_RETRIES: u32 = 3;

/// What one pass over the spool did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Applied (recorded, duplicate, unmatched or ignored) and removed.
    pub applied: usize,
    /// Still waiting: the database failed in a way that may pass, or the pass stopped first.
    pub kept: usize,
    /// Can never be applied: renamed `.rejected`, for an operator.
    pub set_aside: usize,
    /// The pass stopped on an error that means "try again later" (the database is down or
    /// refusing writes); the drainer backs off.
    pub database_failing: bool,
}

/// What to do with an event that failed.
enum Verdict {
    /// The database cannot take it now: keep it, stop the pass, try again later.
    Wait,
    /// A race with another writer: try again in the next pass, a few times.
    Retry,
    /// Never applicable: set it aside.
    Reject,
}

fn verdict(e: &ApplyError) -> Verdict {
    match e {
        ApplyError::Invalid(_) => Verdict::Reject,
        ApplyError::Store(e) if e.is_unavailable() => Verdict::Wait,
        ApplyError::Store(
            StoreError::Conflict(_) | StoreError::InvalidReference(_) | StoreError::NotFound,
        ) => Verdict::Retry,
        ApplyError::Store(StoreError::Other(_) | StoreError::Unavailable(_)) => Verdict::Reject,
    }
}

/// Applies spooled events, oldest first, whenever the database takes them. Only an event that
/// can never be applied is set aside (renamed `.rejected`, never dropped); one that fails
/// because the database is down or refusing writes waits, and is tried again with backoff.
pub struct Drainer {
    lookup: Arc<Lookup>,
    spool: Spool,
    region: Region,
    /// Passes each racing event has been tried in.
    races: HashMap<PathBuf, u32>,
}

impl Drainer {
    pub fn new(lookup: Arc<Lookup>, spool: Spool, region: Region) -> Drainer {
        Drainer {
            lookup,
            spool,
            region,
            races: HashMap::new(),
        }
    }

    /// One pass over the spool, oldest first. It stops at the first event the database cannot
    /// take now: the next ones would fail the same way, and arrival order is kept.
    pub async fn pass(&mut self) -> DrainReport {
        let mut report = DrainReport::default();
        let files = match self.spool.pending() {
            Ok(files) => files,
            Err(e) => {
                tracing::error!(error = %e, "the spool directory cannot be read");
                return report;
            }
        };
        let total = files.len();
        for (path, _) in files {
            let Ok(bytes) = self.spool.read(&path).await else {
                continue;
            };
            let outcome = match serde_json::from_slice::<Value>(&bytes) {
                Ok(Value::Object(envelope)) => self.apply(envelope).await,
                _ => Err(ApplyError::Invalid("not a JSON object".into())),
            };
            match outcome {
                Ok(applied) => {
                    tracing::info!(
                        outcome = applied.as_str(),
                        "spooled post-call event applied"
                    );
                    self.races.remove(&path);
                    report.applied += 1;
                    if let Err(e) = self.spool.remove(&path).await {
                        tracing::error!(error = %e, "could not remove an applied spool file");
                    }
                }
                Err(e) => match verdict(&e) {
                    Verdict::Wait => {
                        tracing::warn!(error = %e, "the database cannot take spooled post-call events yet; they wait");
                        report.database_failing = true;
                        break;
                    }
                    Verdict::Retry
                        if {
                            let tries = self.races.entry(path.clone()).or_default();
                            *tries += 1;
                            *tries <= RACE_RETRIES
                        } =>
                    {
                        tracing::warn!(error = %e, "spooled post-call event raced another write; trying again");
                    }
                    Verdict::Retry | Verdict::Reject => {
                        tracing::error!(error = %e, "spooled post-call event cannot be applied; set aside");
                        self.races.remove(&path);
                        report.set_aside += 1;
                        if let Err(e) = self.spool.set_aside(&path).await {
                            tracing::error!(error = %e, "could not set a spool file aside");
                        }
                    }
                },
            }
        }
        report.kept = total - report.applied - report.set_aside;
        report
    }

    /// Each event on a task of its own: one that panics is set aside, not the drainer.
    async fn apply(&self, envelope: Map<String, Value>) -> Result<Applied, ApplyError> {
        let lookup = self.lookup.clone();
        let region = self.region;
        tokio::spawn(async move { apply_event(&lookup, &envelope, region).await })
            .await
            .unwrap_or_else(|_| Err(ApplyError::Invalid("applying the event panicked".into())))
    }

    /// Passes every [`DRAIN_EVERY`] while the database takes events; while it fails, waits
    /// longer each time (exponential with jitter, up to [`DRAIN_BACKOFF_MAX`]).
    pub async fn run(mut self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(DRAIN_EVERY)
            .with_max_delay(DRAIN_BACKOFF_MAX)
            .with_jitter()
            .without_max_times();
        let mut delays = backoff.build();
        let mut wait = DRAIN_EVERY;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            wait = if self.pass().await.database_failing {
                delays.next().unwrap_or(DRAIN_BACKOFF_MAX)
            } else {
                delays = backoff.build();
                DRAIN_EVERY
            };
        }
    }
}

/// Runs a [`Drainer`] until `shutdown`.
pub async fn drain_spool(
    lookup: Arc<Lookup>,
    spool: Spool,
    region: Region,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    Drainer::new(lookup, spool, region).run(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_characters_are_stripped_deeply() {
        let mut v = serde_json::json!({"a": "x\u{0}y", "b": [{"c": "\u{0}"}]});
        strip_nul(&mut v);
        assert_eq!(v, serde_json::json!({"a": "xy", "b": [{"c": ""}]}));
    }
}
