//! The lookups the HTTP layer calls, one function per cache kind, read through the two-tier
//! cache; and the writes, each of which invalidates what it changed once it has committed.
//! Handlers go through here and never reach the store or Redis directly.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::StreamExt;
use uuid::Uuid;

use crate::cache::{
    Cache, CacheKey, Change, Entry, GenKey, Hit, InvalidationSource, Kind, LoadCtx, Miss, Value,
};
use crate::domain::{
    build_context, build_greeting, build_summary, CallOutcome, CallRecord, Channel, Conversation,
    Lead, LeadContext, LeadPatch, NewConversation, NewLead, NewOrganization, Organization,
    OrganizationPatch, Phone,
};
use crate::store::{DynStore, StoreError, StoreResult};

pub use crate::cache::Source;

/// How many of the newest conversations the context and summary are built from.
const CONTEXT_CONVERSATIONS: i64 = 5;

/// A looked-up value with where it came from, and the cache entry it was taken from.
#[derive(Debug, Clone)]
pub struct Sourced<T> {
    pub value: T,
    pub source: Source,
    pub entry: Arc<Entry>,
}

/// The read-through lookups and the writes.
pub struct Lookup {
    store: DynStore,
    cache: Arc<Cache>,
    warming: Warming,
}

/// Where the start-up warming is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum WarmState {
    /// Not configured (`WARM_LEADS=0`).
    Off = 0,
    /// Waiting for the invalidation channels to connect (each flushes tier 1 when it does).
    Waiting = 1,
    Running = 2,
    Done = 3,
    /// The database did not answer; the cache fills as calls come instead.
    Failed = 4,
}

impl WarmState {
    pub fn as_str(self) -> &'static str {
        match self {
            WarmState::Off => "off",
            WarmState::Waiting => "waiting",
            WarmState::Running => "running",
            WarmState::Done => "done",
            WarmState::Failed => "failed",
        }
    }
}

/// The progress of the start-up warming, for the stats endpoint.
#[derive(Debug, Default)]
pub struct Warming {
    state: AtomicU8,
    leads: AtomicU64,
}

impl Warming {
    pub fn state(&self) -> WarmState {
        match self.state.load(Ordering::Acquire) {
            1 => WarmState::Waiting,
            2 => WarmState::Running,
            3 => WarmState::Done,
            4 => WarmState::Failed,
            _ => WarmState::Off,
        }
    }

    /// How many leads were warmed (once done).
    pub fn leads(&self) -> u64 {
        self.leads.load(Ordering::Acquire)
    }

    fn set(&self, state: WarmState) {
        self.state.store(state as u8, Ordering::Release);
    }
}

fn miss(m: Miss) -> StoreError {
    match m {
        Miss::Store(e) => StoreError::clone(&e),
        Miss::Deadline => StoreError::Unavailable("deadline passed".into()),
    }
}

/// Takes the expected variant out of a hit.
fn take<T>(hit: Hit, f: impl FnOnce(&Value) -> Option<T>) -> StoreResult<Sourced<T>> {
    match f(&hit.entry.value) {
        Some(value) => Ok(Sourced {
            value,
            source: hit.source,
            entry: hit.entry,
        }),
        None => Err(StoreError::Other(
            "cache entry of an unexpected kind".into(),
        )),
    }
}

fn text(v: &Value) -> Option<Arc<String>> {
    match v {
        Value::Text(t) => Some(t.clone()),
        _ => None,
    }
}

/// Loads a lead's context, observing the lead's and then its organization's generation before
/// reading their rows.
async fn load_context(ctx: &LoadCtx, store: &DynStore, lead_id: Uuid) -> StoreResult<LeadContext> {
    ctx.observe(GenKey::Lead(lead_id)).await;
    let lead = store.lead(lead_id).await?;
    ctx.observe(GenKey::Organization(lead.organization_id))
        .await;
    let organization = store.organization(lead.organization_id).await?;
    let stats = store.conversation_stats(lead_id).await?;
    let recent = store
        .conversations(lead_id, CONTEXT_CONVERSATIONS, 0)
        .await?;
    Ok(build_context(lead, organization, stats, &recent))
}

impl Lookup {
    pub fn new(store: DynStore, cache: Arc<Cache>) -> Lookup {
        Lookup {
            store,
            cache,
            warming: Warming::default(),
        }
    }

    pub fn warming(&self) -> &Warming {
        &self.warming
    }

    pub fn store(&self) -> &DynStore {
        &self.store
    }

    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    /// Reads `key` through the cache, loading it with `load` (given the store) on a miss, and
    /// takes the kind's variant out of the value with `pick`.
    async fn read<T, F, Fut>(
        &self,
        key: CacheKey,
        deadline: Option<Instant>,
        load: F,
        pick: fn(&Value) -> Option<T>,
    ) -> StoreResult<Sourced<T>>
    where
        F: FnOnce(Arc<LoadCtx>, DynStore) -> Fut + Send + 'static,
        Fut: Future<Output = StoreResult<Value>> + Send + 'static,
    {
        let store = self.store.clone();
        let hit = self
            .cache
            .get(key, deadline, move |ctx| load(ctx, store))
            .await
            .map_err(miss)?;
        take(hit, pick)
    }

    pub async fn organization(
        &self,
        id: Uuid,
        deadline: Option<Instant>,
    ) -> StoreResult<Sourced<Arc<Organization>>> {
        let load = move |ctx: Arc<LoadCtx>, store: DynStore| async move {
            ctx.observe(GenKey::Organization(id)).await;
            Ok(Value::Organization(Arc::new(store.organization(id).await?)))
        };
        self.read(CacheKey::Organization(id), deadline, load, |v| match v {
            Value::Organization(o) => Some(o.clone()),
            _ => None,
        })
        .await
    }

    pub async fn organization_by_phone(
        &self,
        phone: &Phone,
        deadline: Option<Instant>,
    ) -> StoreResult<Sourced<Option<Arc<Organization>>>> {
        let p = phone.clone();
        let tag = self.cache.phone_tag(phone);
        let load = move |ctx: Arc<LoadCtx>, store: DynStore| async move {
            ctx.observe(GenKey::OrganizationPhone(tag)).await;
            let org = store.organization_by_phone(&p).await?;
            Ok(Value::MaybeOrganization(org.map(Arc::new)))
        };
        let key = CacheKey::OrganizationByPhone(tag);
        self.read(key, deadline, load, |v| match v {
            Value::MaybeOrganization(o) => Some(o.clone()),
            _ => None,
        })
        .await
    }

    pub async fn lead(
        &self,
        id: Uuid,
        deadline: Option<Instant>,
    ) -> StoreResult<Sourced<Arc<Lead>>> {
        let load = move |ctx: Arc<LoadCtx>, store: DynStore| async move {
            ctx.observe(GenKey::Lead(id)).await;
            Ok(Value::Lead(Arc::new(store.lead(id).await?)))
        };
        self.read(CacheKey::Lead(id), deadline, load, |v| match v {
            Value::Lead(l) => Some(l.clone()),
            _ => None,
        })
        .await
    }

    /// The lead of a caller of an organization; `None` (cached too) for an unknown caller.
    pub async fn lead_by_phone(
        &self,
        organization_id: Uuid,
        phone: &Phone,
        deadline: Option<Instant>,
    ) -> StoreResult<Sourced<Option<Arc<Lead>>>> {
        let p = phone.clone();
        let tag = self.cache.phone_tag(phone);
        let load = move |ctx: Arc<LoadCtx>, store: DynStore| async move {
            ctx.observe(GenKey::LeadPhone(organization_id, tag)).await;
            let lead = store.lead_by_phone(organization_id, &p).await?;
            Ok(Value::MaybeLead(lead.map(Arc::new)))
        };
        let key = CacheKey::LeadByPhone(organization_id, tag);
        self.read(key, deadline, load, |v| match v {
            Value::MaybeLead(l) => Some(l.clone()),
            _ => None,
        })
        .await
    }

    /// The lead, its organization and its recent conversations on every channel.
    pub async fn context(
        &self,
        lead_id: Uuid,
        deadline: Option<Instant>,
    ) -> StoreResult<Sourced<Arc<LeadContext>>> {
        let load = move |ctx: Arc<LoadCtx>, store: DynStore| async move {
            Ok(Value::Context(Arc::new(
                load_context(&ctx, &store, lead_id).await?,
            )))
        };
        self.read(CacheKey::Context(lead_id), deadline, load, |v| match v {
            Value::Context(c) => Some(c.clone()),
            _ => None,
        })
        .await
    }

    /// A bounded summary of the lead's recent conversations (empty when there are none).
    pub async fn summary(
        &self,
        lead_id: Uuid,
        deadline: Option<Instant>,
    ) -> StoreResult<Sourced<Arc<String>>> {
        let load = move |ctx: Arc<LoadCtx>, store: DynStore| async move {
            ctx.observe(GenKey::Lead(lead_id)).await;
            store.lead(lead_id).await?;
            let recent = store
                .conversations(lead_id, CONTEXT_CONVERSATIONS, 0)
                .await?;
            let briefs: Vec<_> = recent.iter().map(Into::into).collect();
            Ok(Value::Text(Arc::new(build_summary(&briefs))))
        };
        self.read(CacheKey::Summary(lead_id), deadline, load, text)
            .await
    }

    /// The greeting for a known lead on a channel.
    pub async fn greeting(
        &self,
        lead_id: Uuid,
        channel: Channel,
        deadline: Option<Instant>,
    ) -> StoreResult<Sourced<Arc<String>>> {
        let load = move |ctx: Arc<LoadCtx>, store: DynStore| async move {
            let context = load_context(&ctx, &store, lead_id).await?;
            Ok(Value::Text(Arc::new(build_greeting(
                Some(&context.organization),
                Some(&context),
                channel,
                Utc::now(),
            ))))
        };
        let key = CacheKey::Greeting(lead_id, channel);
        self.read(key, deadline, load, text).await
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
        let load = move |ctx: Arc<LoadCtx>, store: DynStore| async move {
            ctx.observe(GenKey::Lead(lead_id)).await;
            store.lead(lead_id).await?;
            Ok(Value::History(Arc::new(
                store.conversations(lead_id, limit, offset).await?,
            )))
        };
        let key = CacheKey::History {
            lead: lead_id,
            limit,
            offset,
        };
        self.read(key, None, load, |v| match v {
            Value::History(h) => Some(h.clone()),
            _ => None,
        })
        .await
    }

    // Writes: each is acknowledged only once the store has committed it, and invalidates what
    // it changed before it returns (read-your-writes on this instance, pub/sub for the others).

    async fn invalidate(&self, change: Change) {
        // On a task of its own: a client that hangs up after the commit must not cancel the
        // invalidation (the handler's future is dropped then).
        let cache = self.cache.clone();
        let task = tokio::spawn(async move {
            cache.invalidate(&[change], InvalidationSource::Write).await;
        });
        if let Err(e) = task.await {
            tracing::error!(error = %e, "invalidation task failed");
        }
    }

    pub async fn create_organization(&self, new: NewOrganization) -> StoreResult<Organization> {
        let org = self.store.create_organization(new).await?;
        // Clears a negative entry for its phone number.
        self.invalidate(Change::organization(&org, &org)).await;
        Ok(org)
    }

    pub async fn update_organization(
        &self,
        id: Uuid,
        patch: OrganizationPatch,
    ) -> StoreResult<Organization> {
        let change = self.store.update_organization(id, patch).await?;
        self.invalidate(Change::organization(&change.before, &change.after))
            .await;
        Ok(change.after)
    }

    pub async fn delete_organization(&self, id: Uuid) -> StoreResult<()> {
        let org = self.store.delete_organization(id).await?;
        self.invalidate(Change::OrganizationDeleted {
            id: org.id,
            phone: Some(org.phone_number),
        })
        .await;
        Ok(())
    }

    pub async fn create_lead(&self, new: NewLead) -> StoreResult<Lead> {
        let lead = self.store.create_lead(new).await?;
        // Clears a negative entry for its (organization, phone).
        self.invalidate(Change::lead(&lead, &lead)).await;
        Ok(lead)
    }

    pub async fn update_lead(&self, id: Uuid, patch: LeadPatch) -> StoreResult<Lead> {
        let change = self.store.update_lead(id, patch).await?;
        self.invalidate(Change::lead(&change.before, &change.after))
            .await;
        Ok(change.after)
    }

    /// Deletes the lead and its conversations; its personal data leaves Redis at once, with
    /// the generations that named it.
    pub async fn delete_lead(&self, id: Uuid) -> StoreResult<Lead> {
        let lead = self.store.delete_lead(id).await?;
        self.invalidate(Change::lead_deleted(&lead)).await;
        Ok(lead)
    }

    pub async fn create_conversation(&self, new: NewConversation) -> StoreResult<Conversation> {
        let conversation = self.store.create_conversation(new).await?;
        self.invalidate(Change::Conversations {
            lead: conversation.lead_id,
        })
        .await;
        Ok(conversation)
    }

    pub async fn record_call(&self, call: CallRecord) -> StoreResult<CallOutcome> {
        let caller = call.caller.clone();
        let outcome = self.store.record_call(call).await?;
        let created = outcome
            .lead_created
            .then_some((outcome.organization_id, caller));
        // Also for a duplicate: the first attempt may have committed and then failed to answer
        // (a timeout), leaving its invalidation undone.
        self.invalidate(Change::call_recorded(outcome.lead_id, created))
            .await;
        Ok(outcome)
    }

    // Administration

    /// Invalidates everything of one lead, on every instance.
    pub async fn invalidate_lead(&self, id: Uuid) -> StoreResult<()> {
        let change = match self.store.lead(id).await {
            Ok(lead) => Change::lead(&lead, &lead),
            Err(StoreError::NotFound) => Change::Lead {
                id,
                pairs: Vec::new(),
            },
            Err(e) => return Err(e),
        };
        self.cache
            .invalidate(&[change], InvalidationSource::Manual)
            .await;
        Ok(())
    }

    /// Invalidates an organization and what shows it, on every instance.
    pub async fn invalidate_organization(&self, id: Uuid) -> StoreResult<()> {
        let change = match self.store.organization(id).await {
            Ok(org) => Change::organization(&org, &org),
            Err(StoreError::NotFound) => Change::Organization {
                id,
                phones: Vec::new(),
            },
            Err(e) => return Err(e),
        };
        self.cache
            .invalidate(&[change], InvalidationSource::Manual)
            .await;
        Ok(())
    }

    /// Invalidates every entry of the given kinds, on every instance.
    pub async fn invalidate_kinds(&self, kinds: &[Kind]) {
        self.cache
            .invalidate(&[Change::Kinds(kinds.to_vec())], InvalidationSource::Manual)
            .await;
    }

    /// Warms the cache at start, in the background: once every invalidation channel has
    /// connected (connecting flushes tier 1, which would throw warmed entries away), or after
    /// `wait_at_most` if one does not come (Redis down at start).
    pub async fn warm_at_start(&self, leads: u64, wait_at_most: Duration) -> usize {
        if leads == 0 {
            return 0;
        }
        self.warming.set(WarmState::Waiting);
        let liveness = self.cache.liveness().clone();
        let waited = Instant::now();
        while !liveness.all_connected() && waited.elapsed() < wait_at_most {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        crate::monitoring::as_background(self.warm(leads)).await
    }

    /// Loads the most recently active leads (their organization, phone lookups and context)
    /// into the cache. Runs in the background at start; never delays serving.
    pub async fn warm(&self, leads: u64) -> usize {
        self.warming.set(WarmState::Running);
        let ids = match self.store.recently_active_leads(leads as i64).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "cache warming skipped: the database did not answer");
                self.warming.set(WarmState::Failed);
                return 0;
            }
        };
        let warmed = futures_util::stream::iter(ids)
            .map(|id| async move {
                let lead = self.lead(id, None).await.ok()?.value;
                let org = self
                    .organization(lead.organization_id, None)
                    .await
                    .ok()?
                    .value;
                self.organization_by_phone(&org.phone_number, None)
                    .await
                    .ok()?;
                self.lead_by_phone(org.id, &lead.phone_number, None)
                    .await
                    .ok()?;
                self.context(id, None).await.ok()?;
                Some(())
            })
            .buffer_unordered(4)
            .filter(|r| std::future::ready(r.is_some()))
            .count()
            .await;
        tracing::info!(leads = warmed, "cache warmed");
        self.warming.leads.store(warmed as u64, Ordering::Release);
        self.warming.set(WarmState::Done);
        warmed
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }
}
