//! Persistence: the [`Store`] trait and its two backends, Postgres (and Supabase) and embedded
//! SQLite. The store knows nothing of the cache or of HTTP.

mod instrumented;
mod postgres;
mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use crate::domain::{
    CallOutcome, CallRecord, Conversation, ConversationStats, Lead, LeadPatch, NewConversation,
    NewLead, NewOrganization, Organization, OrganizationPatch, Phone,
};

pub use instrumented::InstrumentedStore;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// How long a caller waits for a pooled connection before the database counts as unavailable.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);
/// The bound on every single query, so that no request waits on a hung database.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// A row before and after an update (the cache invalidates what both show, e.g. an old and a
/// new phone number).
#[derive(Debug, Clone, PartialEq)]
pub struct Change<T> {
    pub before: T,
    pub after: T,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// A uniqueness rule or a dependent row stops the change (e.g. a phone number taken).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The change names a row that does not exist (e.g. a lead's organization).
    #[error("invalid reference: {0}")]
    InvalidReference(String),
    /// The database cannot be reached, or did not answer in time.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Other(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

impl StoreError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::Database(db) => {
                let constraint = db.constraint().unwrap_or_default().to_string();
                if db.is_unique_violation() {
                    StoreError::Conflict(constraint)
                } else if db.is_foreign_key_violation() {
                    StoreError::InvalidReference(constraint)
                } else if db.is_check_violation() {
                    StoreError::Other(format!("check violation {constraint}"))
                } else {
                    StoreError::Other(db.message().to_string())
                }
            }
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
            _ => StoreError::Other(e.to_string()),
        }
    }
}

/// Runs one query under [`QUERY_TIMEOUT`].
pub(crate) async fn bounded<T>(
    fut: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> StoreResult<T> {
    match tokio::time::timeout(QUERY_TIMEOUT, fut).await {
        Ok(r) => r.map_err(StoreError::from),
        Err(_) => Err(StoreError::Unavailable("query timed out".into())),
    }
}

/// The operations hotline needs from a database. Both backends pass the same test suite
/// (`tests/api/store.rs`).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `postgres` or `sqlite`.
    fn backend(&self) -> &'static str;
    /// Applies pending migrations.
    async fn migrate(&self) -> StoreResult<()>;
    /// A cheap round trip, for health checks.
    async fn ping(&self) -> StoreResult<()>;

    async fn create_organization(&self, new: NewOrganization) -> StoreResult<Organization>;
    async fn organization(&self, id: Uuid) -> StoreResult<Organization>;
    async fn organization_by_phone(&self, phone: &Phone) -> StoreResult<Option<Organization>>;
    async fn update_organization(
        &self,
        id: Uuid,
        patch: OrganizationPatch,
    ) -> StoreResult<Change<Organization>>;
    /// `Conflict` while the organization still has leads; returns what was deleted.
    async fn delete_organization(&self, id: Uuid) -> StoreResult<Organization>;

    /// `InvalidReference` when the organization does not exist; `Conflict` when the
    /// (organization, phone) pair is taken.
    async fn create_lead(&self, new: NewLead) -> StoreResult<Lead>;
    async fn lead(&self, id: Uuid) -> StoreResult<Lead>;
    async fn lead_by_phone(
        &self,
        organization_id: Uuid,
        phone: &Phone,
    ) -> StoreResult<Option<Lead>>;
    async fn update_lead(&self, id: Uuid, patch: LeadPatch) -> StoreResult<Change<Lead>>;
    /// Deletes the lead and its conversations; returns what was deleted.
    async fn delete_lead(&self, id: Uuid) -> StoreResult<Lead>;

    /// `NotFound` when the lead does not exist; `Conflict` when the `external_id` is taken.
    async fn create_conversation(&self, new: NewConversation) -> StoreResult<Conversation>;
    /// A page of a lead's conversations on every channel, newest first (by `started_at`, then id).
    async fn conversations(
        &self,
        lead_id: Uuid,
        limit: i64,
        offset: i64,
    ) -> StoreResult<Vec<Conversation>>;
    async fn conversation_stats(&self, lead_id: Uuid) -> StoreResult<ConversationStats>;

    /// Records a finished call in one transaction, idempotently on `external_id`.
    async fn record_call(&self, call: CallRecord) -> StoreResult<CallOutcome>;

    /// The ids of the leads with the most recent activity, newest first (for cache warming).
    async fn recently_active_leads(&self, limit: i64) -> StoreResult<Vec<Uuid>>;
}

pub type DynStore = Arc<dyn Store>;

/// Opens the store named by a `postgres://`/`postgresql://` or `sqlite://` URL.
pub async fn connect(url: &str) -> StoreResult<DynStore> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::connect(url).await?))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(url).await?))
    } else {
        Err(StoreError::Other(
            "unsupported database URL scheme (use postgres:// or sqlite://)".into(),
        ))
    }
}
