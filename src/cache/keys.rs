//! What is cached, under which names, and what each entry depends on.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::TtlArgs;
use crate::domain::{Channel, Phone};

/// A cache kind: the `kind` label of metrics and the rows of the cache stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Organization,
    Lead,
    LeadByPhone,
    Context,
    Summary,
    Greeting,
    History,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Organization,
        Kind::Lead,
        Kind::LeadByPhone,
        Kind::Context,
        Kind::Summary,
        Kind::Greeting,
        Kind::History,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Organization => "organization",
            Kind::Lead => "lead",
            Kind::LeadByPhone => "lead_by_phone",
            Kind::Context => "context",
            Kind::Summary => "summary",
            Kind::Greeting => "greeting",
            Kind::History => "history",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::str::FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("must be one of: {}", Kind::ALL.map(Kind::as_str).join(", ")))
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Per-kind time to live, plus the negative TTL for "no such caller/organization".
#[derive(Debug, Clone)]
pub struct Ttls {
    per_kind: [Duration; 7],
    pub negative: Duration,
    /// How long past its TTL an entry may be served while the database fails.
    pub stale_grace: Duration,
}

impl Ttls {
    pub fn from_args(ttl: &TtlArgs, stale_grace_s: u64) -> Ttls {
        let s = Duration::from_secs;
        Ttls {
            per_kind: [
                s(ttl.ttl_org_s),
                s(ttl.ttl_lead_s),
                s(ttl.ttl_lead_s),
                s(ttl.ttl_context_s),
                s(ttl.ttl_summary_s),
                s(ttl.ttl_greeting_s),
                s(ttl.ttl_history_s),
            ],
            negative: s(ttl.ttl_negative_s),
            stale_grace: s(stale_grace_s),
        }
    }

    pub fn of(&self, kind: Kind) -> Duration {
        self.per_kind[kind.index()]
    }
}

/// One cached lookup.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CacheKey {
    Organization(Uuid),
    OrganizationByPhone(Phone),
    Lead(Uuid),
    LeadByPhone(Uuid, Phone),
    Context(Uuid),
    Summary(Uuid),
    Greeting(Uuid, Channel),
    History { lead: Uuid, limit: i64, offset: i64 },
}

impl CacheKey {
    pub fn kind(&self) -> Kind {
        match self {
            CacheKey::Organization(_) | CacheKey::OrganizationByPhone(_) => Kind::Organization,
            CacheKey::Lead(_) => Kind::Lead,
            CacheKey::LeadByPhone(..) => Kind::LeadByPhone,
            CacheKey::Context(_) => Kind::Context,
            CacheKey::Summary(_) => Kind::Summary,
            CacheKey::Greeting(..) => Kind::Greeting,
            CacheKey::History { .. } => Kind::History,
        }
    }

    /// Where the entry lives in Redis: a key and a hash field. Everything derived from one lead
    /// shares that lead's hash, so deleting the lead removes all of it with one `DEL`.
    pub fn redis_location(&self) -> (String, String) {
        match self {
            CacheKey::Organization(id) => (format!("org:{id}"), "org".into()),
            CacheKey::OrganizationByPhone(phone) => (format!("orgphone:{phone}"), "org".into()),
            CacheKey::Lead(id) => (lead_hash(*id), "lead".into()),
            CacheKey::LeadByPhone(org, phone) => {
                (format!("leadphone:{org}:{phone}"), "lead".into())
            }
            CacheKey::Context(id) => (lead_hash(*id), "context".into()),
            CacheKey::Summary(id) => (lead_hash(*id), "summary".into()),
            CacheKey::Greeting(id, channel) => (lead_hash(*id), format!("greeting:{channel}")),
            CacheKey::History {
                lead,
                limit,
                offset,
            } => (lead_hash(*lead), format!("history:{limit}:{offset}")),
        }
    }

    /// The lead whose data this entry carries, if any.
    pub fn lead(&self) -> Option<Uuid> {
        match self {
            CacheKey::Lead(id)
            | CacheKey::Context(id)
            | CacheKey::Summary(id)
            | CacheKey::Greeting(id, _)
            | CacheKey::History { lead: id, .. } => Some(*id),
            _ => None,
        }
    }
}

/// The Redis hash holding everything cached about one lead.
pub fn lead_hash(id: Uuid) -> String {
    format!("lead:{id}")
}

/// A generation: a random 64-bit value that changes on every write to what it covers. An entry
/// records the generations it was built under and is valid only while they are all current.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GenKey {
    /// Everything of one kind (bumped by a manual invalidation of that kind, or of all).
    Kind(Kind),
    /// An organization's row (name, timezone, template, phone).
    Organization(Uuid),
    /// Which organization a phone number belongs to.
    OrganizationPhone(Phone),
    /// A lead's row and its conversations.
    Lead(Uuid),
    /// Which lead, if any, an (organization, phone) pair belongs to.
    LeadPhone(Uuid, Phone),
}

impl GenKey {
    /// The suffix of its Redis key (`gen:…`).
    pub fn redis_name(&self) -> String {
        match self {
            GenKey::Kind(kind) => format!("gen:kind:{kind}"),
            GenKey::Organization(id) => format!("gen:org:{id}"),
            GenKey::OrganizationPhone(phone) => format!("gen:orgphone:{phone}"),
            GenKey::Lead(id) => format!("gen:lead:{id}"),
            GenKey::LeadPhone(org, phone) => format!("gen:leadphone:{org}:{phone}"),
        }
    }
}
