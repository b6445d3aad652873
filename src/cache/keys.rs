//! What is cached, under which names, and what each entry depends on.

use std::fmt;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Sha256;
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

/// A phone number as it appears in Redis key names and messages: a keyed hash (128 bits of
/// HMAC-SHA256), never the number itself. Personal data stays out of names that show up in
/// `SCAN`, `MONITOR`, slow logs and keyspace tools, and outlive the data they named.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PhoneTag([u8; 16]);

impl PhoneTag {
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for PhoneTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for PhoneTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhoneTag({self})")
    }
}

impl Serialize for PhoneTag {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for PhoneTag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let mut out = [0u8; 16];
        hex::decode_to_slice(text.as_bytes(), &mut out)
            .map_err(|_| serde::de::Error::custom("a phone tag is 32 hex digits"))?;
        Ok(PhoneTag(out))
    }
}

/// Turns phone numbers into [`PhoneTag`]s with a key shared by every instance of a deployment
/// (kept in Redis; see `Remote::handshake`). Without Redis, the key is this process's own.
#[derive(Clone)]
pub struct PhoneTagger {
    mac: Hmac<Sha256>,
    key_hex: String,
}

impl PhoneTagger {
    /// A tagger with a random key.
    pub fn random() -> PhoneTagger {
        PhoneTagger::from_hex(&hex::encode(rand::random::<[u8; 32]>()))
            .expect("a fresh key is valid")
    }

    /// A tagger with a key written as 64 hex digits.
    pub fn from_hex(key_hex: &str) -> Option<PhoneTagger> {
        let mut key = [0u8; 32];
        hex::decode_to_slice(key_hex.as_bytes(), &mut key).ok()?;
        Some(PhoneTagger {
            mac: Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key length"),
            key_hex: key_hex.to_ascii_lowercase(),
        })
    }

    pub fn key_hex(&self) -> &str {
        &self.key_hex
    }

    pub fn tag(&self, phone: &Phone) -> PhoneTag {
        let mut mac = self.mac.clone();
        mac.update(phone.as_str().as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut out = [0u8; 16];
        out.copy_from_slice(&digest[..16]);
        PhoneTag(out)
    }
}

impl fmt::Debug for PhoneTagger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PhoneTagger([redacted])")
    }
}

/// One cached lookup. Lookups by phone are keyed by the number's tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CacheKey {
    Organization(Uuid),
    OrganizationByPhone(PhoneTag),
    Lead(Uuid),
    LeadByPhone(Uuid, PhoneTag),
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
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GenKey {
    /// Everything of one kind (bumped by a manual invalidation of that kind, or of all).
    Kind(Kind),
    /// An organization's row (name, timezone, template, phone).
    Organization(Uuid),
    /// Which organization a phone number belongs to.
    OrganizationPhone(PhoneTag),
    /// A lead's row and its conversations.
    Lead(Uuid),
    /// Which lead, if any, an (organization, phone) pair belongs to.
    LeadPhone(Uuid, PhoneTag),
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
