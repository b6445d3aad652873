//! Cached values and the envelope they travel in, between tiers and instances.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::keys::GenKey;
use crate::domain::{Conversation, Lead, LeadContext, Organization};

/// A cached value. Each cache kind stores one variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Value {
    Organization(Arc<Organization>),
    /// An organization looked up by phone; `None` is a negative entry.
    MaybeOrganization(Option<Arc<Organization>>),
    Lead(Arc<Lead>),
    /// A lead looked up by (organization, phone); `None` is a negative entry (unknown caller).
    MaybeLead(Option<Arc<Lead>>),
    Context(Arc<LeadContext>),
    Text(Arc<String>),
    History(Arc<Vec<Conversation>>),
}

impl Value {
    /// A negative entry ("no such organization/caller") lives for the negative TTL.
    pub fn is_negative(&self) -> bool {
        matches!(
            self,
            Value::MaybeOrganization(None) | Value::MaybeLead(None)
        )
    }
}

/// A value with the generations it was built under and its lifetimes (unix milliseconds, so
/// that every instance reads them the same way).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    #[serde(rename = "v")]
    pub value: Value,
    /// Valid only while each of these generations is current.
    #[serde(rename = "d")]
    pub deps: Vec<(GenKey, u64)>,
    /// Served as fresh until then.
    #[serde(rename = "f")]
    pub fresh_until_ms: i64,
    /// Served as stale, while the database fails, until then.
    #[serde(rename = "s")]
    pub stale_until_ms: i64,
    /// The time to live it was stored with (for refresh-ahead).
    #[serde(rename = "t")]
    pub ttl_ms: i64,
}

/// The version of the stored format: part of every Redis key, so a format change never reads
/// old bytes.
pub const FORMAT_VERSION: &str = "v1";

impl Entry {
    pub fn is_fresh(&self, now_ms: i64) -> bool {
        now_ms < self.fresh_until_ms
    }

    pub fn is_servable_stale(&self, now_ms: i64) -> bool {
        now_ms < self.stale_until_ms
    }

    /// In the last fifth of its time to live: worth refreshing in the background.
    pub fn wants_refresh(&self, now_ms: i64) -> bool {
        self.is_fresh(now_ms) && now_ms > self.refresh_at_ms()
    }

    /// When the last fifth of its time to live begins.
    pub fn refresh_at_ms(&self) -> i64 {
        self.fresh_until_ms - self.ttl_ms / 5
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("cache entries always serialise")
    }

    pub fn decode(bytes: &[u8]) -> Option<Entry> {
        serde_json::from_slice(bytes).ok()
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
