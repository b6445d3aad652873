//! A store that answers [`StoreError::Unavailable`] until its migrations have run. An instance
//! that starts while its database is down (or before the schema is in place) then behaves as
//! during any database outage: lookups serve what the cache holds or defaults, writes answer
//! 503, post-call events wait in the spool, health reports unhealthy; and no query meets a
//! table that does not exist yet. [`Store::migrate`] opens it.

use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use uuid::Uuid;

use super::{Change, DynStore, Store, StoreError, StoreResult};
use crate::domain::{
    CallOutcome, CallRecord, Conversation, ConversationStats, Lead, LeadPatch, NewConversation,
    NewLead, NewOrganization, Organization, OrganizationPatch, Phone,
};

pub struct GatedStore {
    inner: DynStore,
    ready: AtomicBool,
}

impl GatedStore {
    /// Closed until [`Store::migrate`] succeeds.
    pub fn new(inner: DynStore) -> GatedStore {
        GatedStore {
            inner,
            ready: AtomicBool::new(false),
        }
    }

    /// Whether the migrations have run.
    pub fn is_open(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn check(&self) -> StoreResult<()> {
        if self.is_open() {
            Ok(())
        } else {
            Err(StoreError::Unavailable(
                "the database has not been migrated yet".into(),
            ))
        }
    }
}

#[async_trait]
impl Store for GatedStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    /// Applies the migrations and, once they are in place, opens the gate.
    async fn migrate(&self) -> StoreResult<()> {
        self.inner.migrate().await?;
        if !self.ready.swap(true, Ordering::AcqRel) {
            tracing::info!(
                backend = self.inner.backend(),
                "migrations applied; the store is open"
            );
        }
        Ok(())
    }

    async fn ping(&self) -> StoreResult<()> {
        self.check()?;
        self.inner.ping().await
    }

    async fn create_organization(&self, new: NewOrganization) -> StoreResult<Organization> {
        self.check()?;
        self.inner.create_organization(new).await
    }

    async fn organization(&self, id: Uuid) -> StoreResult<Organization> {
        self.check()?;
        self.inner.organization(id).await
    }

    async fn organization_by_phone(&self, phone: &Phone) -> StoreResult<Option<Organization>> {
        self.check()?;
        self.inner.organization_by_phone(phone).await
    }

    async fn update_organization(
        &self,
        id: Uuid,
        patch: OrganizationPatch,
    ) -> StoreResult<Change<Organization>> {
        self.check()?;
        self.inner.update_organization(id, patch).await
    }

    async fn delete_organization(&self, id: Uuid) -> StoreResult<Organization> {
        self.check()?;
        self.inner.delete_organization(id).await
    }

    async fn create_lead(&self, new: NewLead) -> StoreResult<Lead> {
        self.check()?;
        self.inner.create_lead(new).await
    }

    async fn lead(&self, id: Uuid) -> StoreResult<Lead> {
        self.check()?;
        self.inner.lead(id).await
    }

    async fn lead_by_phone(
        &self,
        organization_id: Uuid,
        phone: &Phone,
    ) -> StoreResult<Option<Lead>> {
        self.check()?;
        self.inner.lead_by_phone(organization_id, phone).await
    }

    async fn update_lead(&self, id: Uuid, patch: LeadPatch) -> StoreResult<Change<Lead>> {
        self.check()?;
        self.inner.update_lead(id, patch).await
    }

    async fn delete_lead(&self, id: Uuid) -> StoreResult<Lead> {
        self.check()?;
        self.inner.delete_lead(id).await
    }

    async fn create_conversation(&self, new: NewConversation) -> StoreResult<Conversation> {
        self.check()?;
        self.inner.create_conversation(new).await
    }

    async fn conversations(
        &self,
        lead_id: Uuid,
        limit: i64,
        offset: i64,
    ) -> StoreResult<Vec<Conversation>> {
        self.check()?;
        self.inner.conversations(lead_id, limit, offset).await
    }

    async fn conversation_stats(&self, lead_id: Uuid) -> StoreResult<ConversationStats> {
        self.check()?;
        self.inner.conversation_stats(lead_id).await
    }

    async fn record_call(&self, call: CallRecord) -> StoreResult<CallOutcome> {
        self.check()?;
        self.inner.record_call(call).await
    }

    async fn recently_active_leads(&self, limit: i64) -> StoreResult<Vec<Uuid>> {
        self.check()?;
        self.inner.recently_active_leads(limit).await
    }
}
