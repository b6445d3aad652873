//! A store that times every call into `hotline_db_query_duration_seconds{query}`, labelled by
//! the operation's name (never by anything it was called with).

use std::future::Future;
use std::time::Instant;

use async_trait::async_trait;
use uuid::Uuid;

use super::{Change, DynStore, Store, StoreResult};
use crate::domain::{
    CallOutcome, CallRecord, Conversation, ConversationStats, Lead, LeadPatch, NewConversation,
    NewLead, NewOrganization, Organization, OrganizationPatch, Phone,
};
use crate::monitoring::metrics;

pub struct InstrumentedStore {
    inner: DynStore,
}

impl InstrumentedStore {
    pub fn new(inner: DynStore) -> InstrumentedStore {
        InstrumentedStore { inner }
    }
}

async fn timed<T>(query: &'static str, fut: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let out = fut.await;
    metrics::db_query(query, started.elapsed());
    out
}

#[async_trait]
impl Store for InstrumentedStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn migrate(&self) -> StoreResult<()> {
        timed("migrate", self.inner.migrate()).await
    }

    async fn ping(&self) -> StoreResult<()> {
        timed("ping", self.inner.ping()).await
    }

    async fn create_organization(&self, new: NewOrganization) -> StoreResult<Organization> {
        timed("create_organization", self.inner.create_organization(new)).await
    }

    async fn organization(&self, id: Uuid) -> StoreResult<Organization> {
        timed("organization", self.inner.organization(id)).await
    }

    async fn organization_by_phone(&self, phone: &Phone) -> StoreResult<Option<Organization>> {
        timed(
            "organization_by_phone",
            self.inner.organization_by_phone(phone),
        )
        .await
    }

    async fn update_organization(
        &self,
        id: Uuid,
        patch: OrganizationPatch,
    ) -> StoreResult<Change<Organization>> {
        timed(
            "update_organization",
            self.inner.update_organization(id, patch),
        )
        .await
    }

    async fn delete_organization(&self, id: Uuid) -> StoreResult<Organization> {
        timed("delete_organization", self.inner.delete_organization(id)).await
    }

    async fn create_lead(&self, new: NewLead) -> StoreResult<Lead> {
        timed("create_lead", self.inner.create_lead(new)).await
    }

    async fn lead(&self, id: Uuid) -> StoreResult<Lead> {
        timed("lead", self.inner.lead(id)).await
    }

    async fn lead_by_phone(
        &self,
        organization_id: Uuid,
        phone: &Phone,
    ) -> StoreResult<Option<Lead>> {
        timed(
            "lead_by_phone",
            self.inner.lead_by_phone(organization_id, phone),
        )
        .await
    }

    async fn update_lead(&self, id: Uuid, patch: LeadPatch) -> StoreResult<Change<Lead>> {
        timed("update_lead", self.inner.update_lead(id, patch)).await
    }

    async fn delete_lead(&self, id: Uuid) -> StoreResult<Lead> {
        timed("delete_lead", self.inner.delete_lead(id)).await
    }

    async fn create_conversation(&self, new: NewConversation) -> StoreResult<Conversation> {
        timed("create_conversation", self.inner.create_conversation(new)).await
    }

    async fn conversations(
        &self,
        lead_id: Uuid,
        limit: i64,
        offset: i64,
    ) -> StoreResult<Vec<Conversation>> {
        timed(
            "conversations",
            self.inner.conversations(lead_id, limit, offset),
        )
        .await
    }

    async fn conversation_stats(&self, lead_id: Uuid) -> StoreResult<ConversationStats> {
        timed("conversation_stats", self.inner.conversation_stats(lead_id)).await
    }

    async fn record_call(&self, call: CallRecord) -> StoreResult<CallOutcome> {
        timed("record_call", self.inner.record_call(call)).await
    }

    async fn recently_active_leads(&self, limit: i64) -> StoreResult<Vec<Uuid>> {
        timed(
            "recently_active_leads",
            self.inner.recently_active_leads(limit),
        )
        .await
    }
}
