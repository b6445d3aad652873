//! Persistence: the [`Store`] trait and its two backends, Postgres (and Supabase) and embedded
//! SQLite. The store knows nothing of the cache or of HTTP.

mod gated;
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

pub use gated::GatedStore;
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

/// Whether a Postgres SQLSTATE means "the database cannot do this now; the same request may
/// succeed later", rather than "this request is wrong". By class: `08` connection exception,
/// `53` insufficient resources (too many connections, disk full, out of memory), `57` operator
/// intervention (admin shutdown `57P01`, cannot connect now `57P03`, statement cancelled
/// `57014`); and by code: `25006` read-only transaction (a replica, or a database set read-only
/// during maintenance), `40001` serialization failure, `40P01` deadlock, `40003` statement
/// completion unknown, `55P03` lock not available.
pub fn pg_code_is_transient(sqlstate: &str) -> bool {
    matches!(sqlstate.get(..2), Some("08" | "53" | "57"))
        || matches!(sqlstate, "25006" | "40001" | "40P01" | "40003" | "55P03")
}

/// Whether a SQLite result code (extended or primary) means the same: the primary code (the
/// low byte) is `SQLITE_BUSY` (another connection holds the lock), `SQLITE_LOCKED`,
/// `SQLITE_READONLY` (the file or its directory cannot be written now), `SQLITE_IOERR`,
/// `SQLITE_FULL` (disk full) or `SQLITE_CANTOPEN`.
pub fn sqlite_code_is_transient(code: i32) -> bool {
    const BUSY: i32 = 5;
    const LOCKED: i32 = 6;
    const READONLY: i32 = 8;
    const IOERR: i32 = 10;
    const FULL: i32 = 13;
    const CANTOPEN: i32 = 14;
    matches!(
        code & 0xff,
        BUSY | LOCKED | READONLY | IOERR | FULL | CANTOPEN
    )
}

/// Whether a database's own error means "try again later", by backend.
fn is_transient(db: &dyn sqlx::error::DatabaseError) -> bool {
    if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        return pg_code_is_transient(pg.code());
    }
    if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        return db
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(sqlite_code_is_transient);
    }
    false
}

/// The one place where driver errors are classified. What the database refuses for good
/// (constraints, bad data) is `Conflict`, `InvalidReference` or `Other`; what may succeed when
/// tried again (no connection, a read-only or overloaded database, a lost serialization race)
/// is `Unavailable`, which makes writes answer 503, reads serve stale values, and post-call
/// events wait in the spool.
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
                } else if is_transient(db.as_ref()) {
                    StoreError::Unavailable(db.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_codes_that_mean_try_again() {
        for code in [
            "08000", "08001", "08003", "08006", "08P01", // connection exception
            "53000", "53100", "53200", "53300", "53400", // insufficient resources
            "57000", "57014", "57P01", "57P02", "57P03", // operator intervention
            "25006", // read-only transaction
            "40001", "40P01", "40003", // serialization, deadlock, completion unknown
            "55P03", // lock not available
        ] {
            assert!(pg_code_is_transient(code), "{code} is transient");
        }
        for code in [
            "23505", "23503", "23514", "22P02", "42P01", "42601", "28P01", "3D000", "40002",
            "25001", "XX000", "",
        ] {
            assert!(!pg_code_is_transient(code), "{code} is permanent");
        }
    }

    #[test]
    fn sqlite_codes_that_mean_try_again() {
        // Primary codes, and extended ones (primary | n << 8).
        for code in [5, 6, 8, 10, 13, 14, 261, 517, 262, 1032, 266, 3338] {
            assert!(sqlite_code_is_transient(code), "{code} is transient");
        }
        // SQLITE_ERROR, SQLITE_CONSTRAINT_UNIQUE, SQLITE_MISMATCH, SQLITE_CORRUPT.
        for code in [1, 2067, 20, 11] {
            assert!(!sqlite_code_is_transient(code), "{code} is permanent");
        }
    }
}
