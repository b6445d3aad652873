//! What a call and an event are, as the contract writes them.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// The most a call id may be: ids come from Twilio (`CA` and 32 hex digits) or a SIP trunk.
pub const CALL_ID_MAX: usize = 128;
/// The most a call's `state`, or an event's `data`, may weigh as JSON.
pub const STATE_MAX_BYTES: usize = 16 * 1024;

/// Whether `id` can name a call: 1 to [`CALL_ID_MAX`] visible ASCII characters.
pub fn valid_call_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= CALL_ID_MAX && id.bytes().all(|b| b.is_ascii_graphic())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CallStatus {
    Active,
    Ended,
    Failed,
}

impl CallStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CallStatus::Active => "active",
            CallStatus::Ended => "ended",
            CallStatus::Failed => "failed",
        }
    }
}

impl FromStr for CallStatus {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "active" => Ok(CallStatus::Active),
            "ended" => Ok(CallStatus::Ended),
            "failed" => Ok(CallStatus::Failed),
            _ => Err(()),
        }
    }
}

/// Who is speaking for us on the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Control {
    Agent,
    Human,
}

impl FromStr for Control {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "agent" => Ok(Control::Agent),
            "human" => Ok(Control::Human),
            _ => Err(()),
        }
    }
}

/// A call from ring to hang-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Call {
    pub call_id: String,
    pub status: CallStatus,
    pub organization_id: Option<Uuid>,
    pub lead_id: Option<Uuid>,
    pub agent_id: Option<String>,
    /// The caller's number in E.164, or `""` when withheld or unusable.
    pub caller_phone: String,
    pub called_number: String,
    pub conversation_id: Option<String>,
    pub control: Control,
    pub state: Map<String, Value>,
    /// Where the initiation webhook's answer came from (as in `X-Hotline-Source`).
    pub answer_source: String,
    /// The instance that answered the ring.
    pub instance_id: String,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    /// Why ElevenLabs could not start the call (`call_initiation_failure`), when it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
}

impl Call {
    /// The call without what identifies the caller (`caller_phone`, `state`): what
    /// `GET /api/events` may carry.
    pub fn public_json(&self) -> Value {
        let mut v = serde_json::to_value(self).expect("a call serialises");
        if let Some(map) = v.as_object_mut() {
            map.remove("caller_phone");
            map.remove("state");
        }
        v
    }
}

/// What the initiation webhook resolved about a ringing call.
#[derive(Debug, Clone, PartialEq)]
pub struct Ring {
    pub call_id: String,
    pub organization_id: Option<Uuid>,
    pub lead_id: Option<Uuid>,
    pub agent_id: Option<String>,
    pub caller_phone: String,
    pub called_number: String,
    pub conversation_id: Option<String>,
    pub answer_source: &'static str,
    pub at: DateTime<Utc>,
}

impl Ring {
    /// The call this ring starts.
    pub fn start(&self, instance_id: &str) -> Call {
        Call {
            call_id: self.call_id.clone(),
            status: CallStatus::Active,
            organization_id: self.organization_id,
            lead_id: self.lead_id,
            agent_id: self.agent_id.clone(),
            caller_phone: self.caller_phone.clone(),
            called_number: self.called_number.clone(),
            conversation_id: self.conversation_id.clone(),
            control: Control::Agent,
            state: Map::new(),
            answer_source: self.answer_source.to_string(),
            instance_id: instance_id.to_string(),
            started_at: self.at,
            updated_at: self.at,
            ended_at: None,
            failure_reason: None,
        }
    }

    /// A repeated ring (ElevenLabs retried): what the webhook resolved replaces what the first
    /// one did; the call's status, control and state stay.
    pub fn apply(&self, call: &mut Call) {
        call.organization_id = self.organization_id;
        call.lead_id = self.lead_id;
        if self.agent_id.is_some() {
            call.agent_id = self.agent_id.clone();
        }
        call.caller_phone = self.caller_phone.clone();
        call.called_number = self.called_number.clone();
        if self.conversation_id.is_some() {
            call.conversation_id = self.conversation_id.clone();
        }
        call.answer_source = self.answer_source.to_string();
    }
}

/// An event id: a Redis stream id (`<unix ms>-<sequence>`), ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EventId {
    pub ms: u64,
    pub seq: u64,
}

impl PartialOrd for EventId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for EventId {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.ms, self.seq).cmp(&(other.ms, other.seq))
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for EventId {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let (ms, seq) = s.trim().split_once('-').ok_or(())?;
        let digits = |t: &str| {
            if t.is_empty() || t.len() > 20 || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(());
            }
            t.parse::<u64>().map_err(|_| ())
        };
        Ok(EventId {
            ms: digits(ms)?,
            seq: digits(seq)?,
        })
    }
}

/// An event on the bus, as the contract writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    /// Empty until the bus gives it one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub call_id: Option<String>,
    pub instance_id: String,
    pub at: DateTime<Utc>,
    pub data: Value,
}

/// hotline's own event types.
pub mod types {
    pub const CALL_STARTED: &str = "call.started";
    pub const CALL_UPDATED: &str = "call.updated";
    pub const CALL_ENDED: &str = "call.ended";
    pub const CALL_FAILED: &str = "call.failed";
    pub const ALERT_FIRING: &str = "alert.firing";
    pub const ALERT_RESOLVED: &str = "alert.resolved";
    pub const INSTANCE_JOINED: &str = "instance.joined";
    pub const INSTANCE_LEFT: &str = "instance.left";
    pub const INSTANCE_LOST: &str = "instance.lost";
    pub const ADMIN_MESSAGE: &str = "admin.message";
    pub const ADMIN_ACK: &str = "admin.ack";

    /// Every type hotline publishes itself: the label values of the published counter, beside
    /// `custom` for the types integrations post.
    pub const OWN: [&str; 11] = [
        CALL_STARTED,
        CALL_UPDATED,
        CALL_ENDED,
        CALL_FAILED,
        ALERT_FIRING,
        ALERT_RESOLVED,
        INSTANCE_JOINED,
        INSTANCE_LEFT,
        INSTANCE_LOST,
        ADMIN_MESSAGE,
        ADMIN_ACK,
    ];
}

/// Whether `kind` may be posted to a call: `^[a-z][a-z0-9_.]{0,63}$`, not under `call.`.
pub fn valid_custom_type(kind: &str) -> bool {
    let mut bytes = kind.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z'))
        && kind.len() <= 64
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.'))
        && !kind.starts_with("call.")
}

impl Event {
    pub fn new(kind: &str, call_id: Option<&str>, instance_id: &str, data: Value) -> Event {
        Event {
            id: String::new(),
            kind: kind.to_string(),
            call_id: call_id.map(str::to_string),
            instance_id: instance_id.to_string(),
            at: Utc::now(),
            data,
        }
    }

    /// The event as `GET /api/events` carries it: a call event's call without `caller_phone`
    /// and `state`; an event an integration posted to a call without its `data` (it is theirs,
    /// and may name the caller).
    pub fn public(&self) -> Event {
        let mut event = self.clone();
        if self.kind.starts_with("call.") {
            if let Some(map) = event.data.as_object_mut() {
                map.remove("caller_phone");
                map.remove("state");
            }
        } else if self.call_id.is_some() && !types::OWN.contains(&self.kind.as_str()) {
            event.data = Value::Object(Map::new());
        }
        event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_order_as_redis_orders_them() {
        let a: EventId = "1700000000000-2".parse().unwrap();
        let b: EventId = "1700000000000-10".parse().unwrap();
        let c: EventId = "1700000000001-0".parse().unwrap();
        assert!(a < b && b < c);
        assert_eq!(b.to_string(), "1700000000000-10");
        for bad in [
            "",
            "1",
            "-1",
            "1-",
            "a-1",
            "1-b",
            "1--1",
            "+1-1",
            "1-1-1",
            "99999999999999999999999-1",
        ] {
            assert!(bad.parse::<EventId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn custom_types() {
        for ok in ["note", "tool.lookup", "a", "x_1.y2"] {
            assert!(valid_custom_type(ok), "{ok}");
        }
        let long = "a".repeat(65);
        for bad in ["", "Note", "1a", "call.x", "a-b", "a b", "é", long.as_str()] {
            assert!(!valid_custom_type(bad), "{bad}");
        }
        assert!(valid_custom_type(&"a".repeat(64)));
    }

    #[test]
    fn the_public_event_names_no_caller() {
        let ring = Ring {
            call_id: "CA1".into(),
            organization_id: None,
            lead_id: None,
            agent_id: None,
            caller_phone: "+16125550100".into(),
            called_number: "+16125550199".into(),
            conversation_id: None,
            answer_source: "db",
            at: Utc::now(),
        };
        let mut call = ring.start("i1");
        call.state.insert("note".into(), "Maria".into());
        let event = Event::new(
            types::CALL_STARTED,
            Some("CA1"),
            "i1",
            serde_json::to_value(&call).unwrap(),
        );
        let public = serde_json::to_string(&event.public()).unwrap();
        assert!(
            !public.contains("+16125550100") && !public.contains("Maria"),
            "{public}"
        );
        assert!(public.contains("+16125550199"), "{public}");
        let custom = Event::new(
            "tool.note",
            Some("CA1"),
            "i1",
            serde_json::json!({"who": "Maria"}),
        );
        assert!(!serde_json::to_string(&custom.public())
            .unwrap()
            .contains("Maria"));
    }
}
