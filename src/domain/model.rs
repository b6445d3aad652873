//! The stored entities and the validated inputs that create or change them.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::phone::Phone;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Organization {
    pub id: Uuid,
    pub name: String,
    pub phone_number: Phone,
    pub timezone: String,
    pub greeting_template: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Organization {
    /// The organization's IANA timezone; a value written directly into the database that is not
    /// one falls back to UTC rather than failing a call.
    pub fn tz(&self) -> chrono_tz::Tz {
        self.timezone.parse().unwrap_or(chrono_tz::UTC)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Lead {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub phone_number: Phone,
    pub customer_name: Option<String>,
    pub email: Option<String>,
    pub status: LeadStatus,
    pub notes: Option<String>,
    pub metadata: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Conversation {
    pub id: Uuid,
    pub lead_id: Uuid,
    pub organization_id: Uuid,
    pub channel: Channel,
    pub external_id: Option<String>,
    pub summary: Option<String>,
    pub transcript: Option<serde_json::Value>,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// Declares a closed set of lower-case string values with parsing and display.
macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(format!(
                        "must be one of: {}",
                        [$($text),+].join(", ")
                    )),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum! {
    /// Where a lead stands in the funnel.
    #[derive(Default)]
    LeadStatus {
        #[default]
        New => "new",
        Contacted => "contacted",
        Qualified => "qualified",
        Customer => "customer",
        Lost => "lost",
    }
}

string_enum! {
    /// The medium a conversation took place on.
    Channel {
        Voice => "voice",
        Sms => "sms",
        Chat => "chat",
        Email => "email",
    }
}

/// A validated organization to create.
#[derive(Debug, Clone)]
pub struct NewOrganization {
    pub name: String,
    pub phone_number: Phone,
    pub timezone: String,
    pub greeting_template: Option<String>,
}

/// A validated partial update: `None` leaves a field unchanged, `Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct OrganizationPatch {
    pub name: Option<String>,
    pub phone_number: Option<Phone>,
    pub timezone: Option<String>,
    pub greeting_template: Option<Option<String>>,
}

impl OrganizationPatch {
    pub fn apply(&self, org: &mut Organization) {
        if let Some(v) = &self.name {
            org.name.clone_from(v);
        }
        if let Some(v) = &self.phone_number {
            org.phone_number = v.clone();
        }
        if let Some(v) = &self.timezone {
            org.timezone.clone_from(v);
        }
        if let Some(v) = &self.greeting_template {
            org.greeting_template.clone_from(v);
        }
    }
}

/// A validated lead to create.
#[derive(Debug, Clone)]
pub struct NewLead {
    pub organization_id: Uuid,
    pub phone_number: Phone,
    pub customer_name: Option<String>,
    pub email: Option<String>,
    pub status: LeadStatus,
    pub notes: Option<String>,
    pub metadata: serde_json::Value,
}

/// A validated partial update of a lead (see [`OrganizationPatch`]).
#[derive(Debug, Clone, Default)]
pub struct LeadPatch {
    pub phone_number: Option<Phone>,
    pub customer_name: Option<Option<String>>,
    pub email: Option<Option<String>>,
    pub status: Option<LeadStatus>,
    pub notes: Option<Option<String>>,
    pub metadata: Option<serde_json::Value>,
}

impl LeadPatch {
    pub fn apply(&self, lead: &mut Lead) {
        if let Some(v) = &self.phone_number {
            lead.phone_number = v.clone();
        }
        if let Some(v) = &self.customer_name {
            lead.customer_name.clone_from(v);
        }
        if let Some(v) = &self.email {
            lead.email.clone_from(v);
        }
        if let Some(v) = self.status {
            lead.status = v;
        }
        if let Some(v) = &self.notes {
            lead.notes.clone_from(v);
        }
        if let Some(v) = &self.metadata {
            lead.metadata.clone_from(v);
        }
    }
}

/// A validated conversation to record for a lead (the organization is the lead's).
#[derive(Debug, Clone)]
pub struct NewConversation {
    pub lead_id: Uuid,
    pub channel: Channel,
    pub external_id: Option<String>,
    pub summary: Option<String>,
    pub transcript: Option<serde_json::Value>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
}

/// A finished phone call reported by the post-call webhook, recorded atomically: the lead is
/// found (by id, else by phone) or created, and the conversation is inserted once per
/// `external_id`.
#[derive(Debug, Clone)]
pub struct CallRecord {
    pub organization_id: Uuid,
    /// The lead hotline named at the start of the call, when it did.
    pub lead_id: Option<Uuid>,
    pub caller: Phone,
    pub external_id: String,
    pub summary: Option<String>,
    pub transcript: Option<serde_json::Value>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
}

/// What recording a call did.
#[derive(Debug, Clone, PartialEq)]
pub struct CallOutcome {
    pub lead_id: Uuid,
    pub organization_id: Uuid,
    pub conversation_id: Uuid,
    pub lead_created: bool,
    /// False when a conversation with this `external_id` was already stored.
    pub conversation_created: bool,
}

/// How many conversations a lead has had, and when the latest started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ConversationStats {
    pub count: i64,
    pub last_started_at: Option<DateTime<Utc>>,
}
