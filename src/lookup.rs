//! The lookups the HTTP layer calls, one function per cache kind, and the writes that change
//! what they return. Handlers go through here and never reach the store directly, so that the
//! cache wraps exactly this layer.

use std::sync::Arc;

use chrono::Utc;
use uuid::Uuid;

use crate::domain::{
    build_context, build_greeting, build_summary, CallOutcome, CallRecord, Channel, Conversation,
    Lead, LeadContext, LeadPatch, NewConversation, NewLead, NewOrganization, Organization,
    OrganizationPatch, Phone,
};
use crate::store::{DynStore, StoreError, StoreResult};

/// How many of the newest conversations the context and summary are built from.
const CONTEXT_CONVERSATIONS: i64 = 5;

/// Where a value came from, from least to most fresh in the sense of `X-Hotline-Source`:
/// `default` (nothing known), `stale` (past its TTL, database failing), `db`, `l2`, `l1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    Default,
    Stale,
    Db,
    L2,
    L1,
}

impl Source {
    pub const ALL: [Source; 5] = [
        Source::Default,
        Source::Stale,
        Source::Db,
        Source::L2,
        Source::L1,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::Stale => "stale",
            Source::Db => "db",
            Source::L2 => "l2",
            Source::L1 => "l1",
        }
    }
}

/// A looked-up value with where it came from.
#[derive(Debug, Clone)]
pub struct Sourced<T> {
    pub value: T,
    pub source: Source,
}

impl<T> Sourced<T> {
    fn db(value: T) -> Sourced<T> {
        Sourced {
            value,
            source: Source::Db,
        }
    }
}

/// The read-through lookups and the writes, over a store.
pub struct Lookup {
    store: DynStore,
}

impl Lookup {
    pub fn new(store: DynStore) -> Lookup {
        Lookup { store }
    }

    pub fn store(&self) -> &DynStore {
        &self.store
    }

    pub async fn organization(&self, id: Uuid) -> StoreResult<Sourced<Arc<Organization>>> {
        Ok(Sourced::db(Arc::new(self.store.organization(id).await?)))
    }

    pub async fn organization_by_phone(
        &self,
        phone: &Phone,
    ) -> StoreResult<Sourced<Option<Arc<Organization>>>> {
        let org = self.store.organization_by_phone(phone).await?;
        Ok(Sourced::db(org.map(Arc::new)))
    }

    pub async fn lead(&self, id: Uuid) -> StoreResult<Sourced<Arc<Lead>>> {
        Ok(Sourced::db(Arc::new(self.store.lead(id).await?)))
    }

    pub async fn lead_by_phone(
        &self,
        organization_id: Uuid,
        phone: &Phone,
    ) -> StoreResult<Sourced<Option<Arc<Lead>>>> {
        let lead = self.store.lead_by_phone(organization_id, phone).await?;
        Ok(Sourced::db(lead.map(Arc::new)))
    }

    /// The lead, its organization and its recent conversations on every channel.
    pub async fn context(&self, lead_id: Uuid) -> StoreResult<Sourced<Arc<LeadContext>>> {
        let lead = self.store.lead(lead_id).await?;
        let organization = self.store.organization(lead.organization_id).await?;
        let stats = self.store.conversation_stats(lead_id).await?;
        let recent = self
            .store
            .conversations(lead_id, CONTEXT_CONVERSATIONS, 0)
            .await?;
        Ok(Sourced::db(Arc::new(build_context(
            lead,
            organization,
            stats,
            &recent,
        ))))
    }

    /// A bounded summary of the lead's recent conversations (empty when there are none).
    pub async fn summary(&self, lead_id: Uuid) -> StoreResult<Sourced<Arc<String>>> {
        let context = self.context(lead_id).await?;
        Ok(Sourced {
            value: Arc::new(build_summary(&context.value.recent_conversations)),
            source: context.source,
        })
    }

    /// The greeting for a known lead on a channel.
    pub async fn greeting(
        &self,
        lead_id: Uuid,
        channel: Channel,
    ) -> StoreResult<Sourced<Arc<String>>> {
        let context = self.context(lead_id).await?;
        let greeting = build_greeting(
            Some(&context.value.organization),
            Some(&context.value),
            channel,
            Utc::now(),
        );
        Ok(Sourced {
            value: Arc::new(greeting),
            source: context.source,
        })
    }

    /// The greeting for an unknown caller of an organization (or of no known organization).
    pub fn anonymous_greeting(
        &self,
        organization: Option<&Organization>,
        channel: Channel,
    ) -> String {
        build_greeting(organization, None, channel, Utc::now())
    }

    /// A page of the lead's conversations, newest first. `NotFound` when the lead does not exist.
    pub async fn history(
        &self,
        lead_id: Uuid,
        limit: i64,
        offset: i64,
    ) -> StoreResult<Sourced<Arc<Vec<Conversation>>>> {
        self.store.lead(lead_id).await?;
        let page = self.store.conversations(lead_id, limit, offset).await?;
        Ok(Sourced::db(Arc::new(page)))
    }

    // Writes: each is acknowledged only once the store has committed it.

    pub async fn create_organization(&self, new: NewOrganization) -> StoreResult<Organization> {
        self.store.create_organization(new).await
    }

    pub async fn update_organization(
        &self,
        id: Uuid,
        patch: OrganizationPatch,
    ) -> StoreResult<Organization> {
        self.store.update_organization(id, patch).await
    }

    pub async fn delete_organization(&self, id: Uuid) -> StoreResult<()> {
        self.store.delete_organization(id).await
    }

    pub async fn create_lead(&self, new: NewLead) -> StoreResult<Lead> {
        self.store.create_lead(new).await
    }

    pub async fn update_lead(&self, id: Uuid, patch: LeadPatch) -> StoreResult<Lead> {
        self.store.update_lead(id, patch).await
    }

    pub async fn delete_lead(&self, id: Uuid) -> StoreResult<Lead> {
        self.store.delete_lead(id).await
    }

    pub async fn create_conversation(&self, new: NewConversation) -> StoreResult<Conversation> {
        self.store.create_conversation(new).await
    }

    pub async fn record_call(&self, call: CallRecord) -> StoreResult<CallOutcome> {
        self.store.record_call(call).await
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }
}
