//! A [`Store`] that delegates every call to the real store and counts the calls per method, so
//! that a test can tell how many times the cache went to the database.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use hotline::domain::{
    CallOutcome, CallRecord, Conversation, ConversationStats, Lead, LeadPatch, NewConversation,
    NewLead, NewOrganization, Organization, OrganizationPatch, Phone,
};
use hotline::store::{Change, DynStore, Store, StoreResult};
use uuid::Uuid;

/// The store methods, as counter indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Ping,
    CreateOrganization,
    Organization,
    OrganizationByPhone,
    UpdateOrganization,
    DeleteOrganization,
    CreateLead,
    Lead,
    LeadByPhone,
    UpdateLead,
    DeleteLead,
    CreateConversation,
    Conversations,
    ConversationStats,
    RecordCall,
    RecentlyActiveLeads,
}

const METHODS: usize = 16;

/// Calls per method, shared between the store (which counts) and the test (which reads).
#[derive(Debug, Default)]
pub struct Calls([AtomicU64; METHODS]);

impl Calls {
    pub fn get(&self, method: Method) -> u64 {
        self.0[method as usize].load(Ordering::SeqCst)
    }

    fn count(&self, method: Method) {
        self.0[method as usize].fetch_add(1, Ordering::SeqCst);
    }
}

pub struct CountingStore {
    inner: DynStore,
    calls: Arc<Calls>,
    /// A method that panics, with this message, instead of answering: a bug, to test what a
    /// panicking handler leaves behind.
    panics: Option<(Method, String)>,
}

impl CountingStore {
    /// Wraps `inner`, counting into `calls` (which the test keeps).
    pub fn new(inner: DynStore, calls: Arc<Calls>) -> CountingStore {
        CountingStore {
            inner,
            calls,
            panics: None,
        }
    }

    /// As [`CountingStore::new`], with `method` panicking with `message` every time.
    pub fn panicking(
        inner: DynStore,
        calls: Arc<Calls>,
        method: Method,
        message: String,
    ) -> CountingStore {
        CountingStore {
            inner,
            calls,
            panics: Some((method, message)),
        }
    }

    fn count(&self, method: Method) {
        self.calls.count(method);
        if let Some((panicking, message)) = &self.panics {
            if *panicking == method {
                panic!("{message}");
            }
        }
    }
}

#[async_trait]
impl Store for CountingStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn migrate(&self) -> StoreResult<()> {
        self.inner.migrate().await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.count(Method::Ping);
        self.inner.ping().await
    }

    async fn create_organization(&self, new: NewOrganization) -> StoreResult<Organization> {
        self.count(Method::CreateOrganization);
        self.inner.create_organization(new).await
    }

    async fn organization(&self, id: Uuid) -> StoreResult<Organization> {
        self.count(Method::Organization);
        self.inner.organization(id).await
    }

    async fn organization_by_phone(&self, phone: &Phone) -> StoreResult<Option<Organization>> {
        self.count(Method::OrganizationByPhone);
        self.inner.organization_by_phone(phone).await
    }

    async fn update_organization(
        &self,
        id: Uuid,
        patch: OrganizationPatch,
    ) -> StoreResult<Change<Organization>> {
        self.count(Method::UpdateOrganization);
        self.inner.update_organization(id, patch).await
    }

    async fn delete_organization(&self, id: Uuid) -> StoreResult<Organization> {
        self.count(Method::DeleteOrganization);
        self.inner.delete_organization(id).await
    }

    async fn create_lead(&self, new: NewLead) -> StoreResult<Lead> {
        self.count(Method::CreateLead);
        self.inner.create_lead(new).await
    }

    async fn lead(&self, id: Uuid) -> StoreResult<Lead> {
        self.count(Method::Lead);
        self.inner.lead(id).await
    }

    async fn lead_by_phone(
        &self,
        organization_id: Uuid,
        phone: &Phone,
    ) -> StoreResult<Option<Lead>> {
        self.count(Method::LeadByPhone);
        self.inner.lead_by_phone(organization_id, phone).await
    }

    async fn update_lead(&self, id: Uuid, patch: LeadPatch) -> StoreResult<Change<Lead>> {
        self.count(Method::UpdateLead);
        self.inner.update_lead(id, patch).await
    }

    async fn delete_lead(&self, id: Uuid) -> StoreResult<Lead> {
        self.count(Method::DeleteLead);
        self.inner.delete_lead(id).await
    }

    async fn create_conversation(&self, new: NewConversation) -> StoreResult<Conversation> {
        self.count(Method::CreateConversation);
        self.inner.create_conversation(new).await
    }

    async fn conversations(
        &self,
        lead_id: Uuid,
        limit: i64,
        offset: i64,
    ) -> StoreResult<Vec<Conversation>> {
        self.count(Method::Conversations);
        self.inner.conversations(lead_id, limit, offset).await
    }

    async fn conversation_stats(&self, lead_id: Uuid) -> StoreResult<ConversationStats> {
        self.count(Method::ConversationStats);
        self.inner.conversation_stats(lead_id).await
    }

    async fn record_call(&self, call: CallRecord) -> StoreResult<CallOutcome> {
        self.count(Method::RecordCall);
        self.inner.record_call(call).await
    }

    async fn recently_active_leads(&self, limit: i64) -> StoreResult<Vec<Uuid>> {
        self.count(Method::RecentlyActiveLeads);
        self.inner.recently_active_leads(limit).await
    }
}
