//! The embedded SQLite backend, for a single instance without a database server.
//!
//! Same semantics as the Postgres store (one test suite runs against both). uuids are stored as
//! lower-case hyphenated TEXT, timestamps as RFC 3339 TEXT with milliseconds and `Z`, JSON as
//! TEXT. Timestamps written by others as `YYYY-MM-DD HH:MM:SS` (CURRENT_TIMESTAMP) are read too,
//! and ordering uses `julianday()`, which reads both forms (the indexes use the same expression).
//! Write transactions start with `BEGIN IMMEDIATE`, so that they wait for the write lock (busy
//! timeout) instead of failing when another writer got there between their read and their write.

use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::Row;
use uuid::Uuid;

use super::postgres::migrate_error;
use super::{bounded, Change, Store, StoreError, StoreResult, ACQUIRE_TIMEOUT};
use crate::domain::{
    CallOutcome, CallRecord, Channel, Conversation, ConversationStats, Lead, LeadPatch, LeadStatus,
    NewConversation, NewLead, NewOrganization, Organization, OrganizationPatch, Phone,
};

const MAX_CONNECTIONS: u32 = 8;
/// How long a writer waits for SQLite's write lock (every query is still bounded by
/// [`QUERY_TIMEOUT`](super::QUERY_TIMEOUT)).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The current time in the stored form, evaluated by SQLite.
macro_rules! now {
    () => {
        "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
    };
}

macro_rules! org_cols {
    () => {
        "id, name, phone_number, timezone, greeting_template, created_at, updated_at"
    };
}

macro_rules! lead_cols {
    () => {
        "id, organization_id, phone_number, customer_name, email, status, notes, metadata, \
         created_at, updated_at"
    };
}

macro_rules! conv_cols {
    () => {
        "id, lead_id, organization_id, channel, external_id, summary, transcript, started_at, \
         ended_at, created_at"
    };
}

/// The SQLite store. Cheap to clone: it holds the pool.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) the database file named by a `sqlite://` URL.
    pub async fn connect(url: &str) -> StoreResult<SqliteStore> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Other(format!("invalid SQLite URL: {e}")))?
            .create_if_missing(true)
            .foreign_keys(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT);
        let mut pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT);
        if url.contains(":memory:") || url.contains("mode=memory") {
            // An in-memory database lives as long as one of its connections: keep one open.
            pool = pool
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        }
        let pool = pool.connect_with(options).await.map_err(StoreError::from)?;
        Ok(SqliteStore { pool })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// Like [`bounded`], and names the constraint a uniqueness or foreign-key error comes from
/// (SQLite reports columns, not constraint names), with the names the Postgres schema uses.
async fn run<T>(fut: impl Future<Output = Result<T, sqlx::Error>>) -> StoreResult<T> {
    let mut constraint = None;
    let result =
        bounded(async { fut.await.inspect_err(|e| constraint = constraint_name(e)) }).await;
    result.map_err(|e| match (e, constraint) {
        (StoreError::Conflict(_), Some(name)) => StoreError::Conflict(name.into()),
        (StoreError::InvalidReference(_), Some(name)) => StoreError::InvalidReference(name.into()),
        (e, _) => e,
    })
}

fn constraint_name(e: &sqlx::Error) -> Option<&'static str> {
    let db = e.as_database_error()?;
    let message = db.message();
    if db.is_unique_violation() {
        Some(if message.contains("organizations.phone_number") {
            "organizations_phone_number_key"
        } else if message.contains("leads.organization_id, leads.phone_number") {
            "leads_organization_id_phone_number_key"
        } else if message.contains("conversations.external_id") {
            "conversations_external_id_key"
        } else {
            "unique constraint"
        })
    } else if db.is_foreign_key_violation() {
        Some("foreign key")
    } else {
        None
    }
}

/// A lead's only foreign key is its organization: name it as Postgres does.
fn lead_organization_reference(e: StoreError) -> StoreError {
    match e {
        StoreError::InvalidReference(_) => {
            StoreError::InvalidReference("leads_organization_id_fkey".into())
        }
        e => e,
    }
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn decode_err(column: &str, message: String) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: column.to_string(),
        source: message.into(),
    }
}

fn uuid_column(row: &SqliteRow, column: &str) -> Result<Uuid, sqlx::Error> {
    let text: String = row.try_get(column)?;
    Uuid::parse_str(&text).map_err(|e| decode_err(column, e.to_string()))
}

fn parse_column<T: FromStr<Err = String>>(row: &SqliteRow, column: &str) -> Result<T, sqlx::Error> {
    let text: String = row.try_get(column)?;
    text.parse().map_err(|e| decode_err(column, e))
}

fn json_column(row: &SqliteRow, column: &str) -> Result<Option<serde_json::Value>, sqlx::Error> {
    let text: Option<String> = row.try_get(column)?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| decode_err(column, e.to_string())))
        .transpose()
}

/// Timestamps: sqlx's decoder reads RFC 3339 as well as SQLite's `YYYY-MM-DD HH:MM:SS[.SSS]`
/// (taken as UTC), and numbers (unix seconds, julian days).
fn time_column(row: &SqliteRow, column: &str) -> Result<DateTime<Utc>, sqlx::Error> {
    row.try_get(column)
}

fn optional_time_column(
    row: &SqliteRow,
    column: &str,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    row.try_get(column)
}

fn org_from_row(row: &SqliteRow) -> Result<Organization, sqlx::Error> {
    Ok(Organization {
        id: uuid_column(row, "id")?,
        name: row.try_get("name")?,
        phone_number: Phone::from_stored(row.try_get("phone_number")?),
        timezone: row.try_get("timezone")?,
        greeting_template: row.try_get("greeting_template")?,
        created_at: time_column(row, "created_at")?,
        updated_at: time_column(row, "updated_at")?,
    })
}

fn lead_from_row(row: &SqliteRow) -> Result<Lead, sqlx::Error> {
    Ok(Lead {
        id: uuid_column(row, "id")?,
        organization_id: uuid_column(row, "organization_id")?,
        phone_number: Phone::from_stored(row.try_get("phone_number")?),
        customer_name: row.try_get("customer_name")?,
        email: row.try_get("email")?,
        status: parse_column::<LeadStatus>(row, "status")?,
        notes: row.try_get("notes")?,
        metadata: json_column(row, "metadata")?.unwrap_or_else(|| serde_json::json!({})),
        created_at: time_column(row, "created_at")?,
        updated_at: time_column(row, "updated_at")?,
    })
}

fn conversation_from_row(row: &SqliteRow) -> Result<Conversation, sqlx::Error> {
    Ok(Conversation {
        id: uuid_column(row, "id")?,
        lead_id: uuid_column(row, "lead_id")?,
        organization_id: uuid_column(row, "organization_id")?,
        channel: parse_column::<Channel>(row, "channel")?,
        external_id: row.try_get("external_id")?,
        summary: row.try_get("summary")?,
        transcript: json_column(row, "transcript")?,
        started_at: time_column(row, "started_at")?,
        ended_at: optional_time_column(row, "ended_at")?,
        created_at: time_column(row, "created_at")?,
    })
}

fn org_row(row: SqliteRow) -> Result<Organization, sqlx::Error> {
    org_from_row(&row)
}

fn lead_row(row: SqliteRow) -> Result<Lead, sqlx::Error> {
    lead_from_row(&row)
}

fn conversation_row(row: SqliteRow) -> Result<Conversation, sqlx::Error> {
    conversation_from_row(&row)
}

fn id_row(row: SqliteRow) -> Result<Uuid, sqlx::Error> {
    uuid_column(&row, "id")
}

/// A conversation already stored under the call's `external_id`.
fn existing_row(row: SqliteRow) -> Result<CallOutcome, sqlx::Error> {
    Ok(CallOutcome {
        conversation_id: uuid_column(&row, "id")?,
        lead_id: uuid_column(&row, "lead_id")?,
        organization_id: uuid_column(&row, "organization_id")?,
        lead_created: false,
        conversation_created: false,
    })
}

/// `metadata` is not nullable: a JSON `null` stores the default, `{}`.
fn metadata_text(value: &serde_json::Value) -> String {
    if value.is_null() {
        "{}".to_string()
    } else {
        value.to_string()
    }
}

fn json_text(value: &Option<serde_json::Value>) -> Option<String> {
    value.as_ref().map(|v| v.to_string())
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn migrate(&self) -> StoreResult<()> {
        sqlx::migrate!("./migrations/sqlite")
            .run(&self.pool)
            .await
            .map_err(migrate_error)
    }

    async fn ping(&self) -> StoreResult<()> {
        run(sqlx::query("select 1").execute(&self.pool)).await?;
        Ok(())
    }

    async fn create_organization(&self, new: NewOrganization) -> StoreResult<Organization> {
        run(sqlx::query(concat!(
            "insert into organizations (id, name, phone_number, timezone, greeting_template) \
             values (?1, ?2, ?3, ?4, ?5) returning ",
            org_cols!()
        ))
        .bind(Uuid::new_v4().to_string())
        .bind(&new.name)
        .bind(new.phone_number.as_str())
        .bind(&new.timezone)
        .bind(&new.greeting_template)
        .try_map(org_row)
        .fetch_one(&self.pool))
        .await
    }

    async fn organization(&self, id: Uuid) -> StoreResult<Organization> {
        run(sqlx::query(concat!(
            "select ",
            org_cols!(),
            " from organizations where id = ?1"
        ))
        .bind(id.to_string())
        .try_map(org_row)
        .fetch_optional(&self.pool))
        .await?
        .ok_or(StoreError::NotFound)
    }

    async fn organization_by_phone(&self, phone: &Phone) -> StoreResult<Option<Organization>> {
        run(sqlx::query(concat!(
            "select ",
            org_cols!(),
            " from organizations where phone_number = ?1"
        ))
        .bind(phone.as_str())
        .try_map(org_row)
        .fetch_optional(&self.pool))
        .await
    }

    async fn update_organization(
        &self,
        id: Uuid,
        patch: OrganizationPatch,
    ) -> StoreResult<Change<Organization>> {
        let mut tx = run(self.pool.begin_with("BEGIN IMMEDIATE")).await?;
        let current = run(sqlx::query(concat!(
            "select ",
            org_cols!(),
            " from organizations where id = ?1"
        ))
        .bind(id.to_string())
        .try_map(org_row)
        .fetch_optional(&mut *tx))
        .await?
        .ok_or(StoreError::NotFound)?;
        let mut org = current.clone();
        patch.apply(&mut org);
        if org == current {
            // Nothing changes: no write, and updated_at stays.
            run(tx.commit()).await?;
            return Ok(Change {
                before: current.clone(),
                after: current,
            });
        }
        let org = run(sqlx::query(concat!(
            "update organizations set name = ?2, phone_number = ?3, timezone = ?4, \
             greeting_template = ?5, updated_at = ",
            now!(),
            " where id = ?1 returning ",
            org_cols!()
        ))
        .bind(id.to_string())
        .bind(&org.name)
        .bind(org.phone_number.as_str())
        .bind(&org.timezone)
        .bind(&org.greeting_template)
        .try_map(org_row)
        .fetch_one(&mut *tx))
        .await?;
        run(tx.commit()).await?;
        Ok(Change {
            before: current,
            after: org,
        })
    }

    async fn delete_organization(&self, id: Uuid) -> StoreResult<Organization> {
        let result = run(sqlx::query(concat!(
            "delete from organizations where id = ?1 returning ",
            org_cols!()
        ))
        .bind(id.to_string())
        .try_map(org_row)
        .fetch_optional(&self.pool))
        .await;
        match result {
            Ok(Some(org)) => Ok(org),
            Ok(None) => Err(StoreError::NotFound),
            // Leads (or conversations) still reference it.
            Err(StoreError::InvalidReference(_)) => {
                Err(StoreError::Conflict("leads_organization_id_fkey".into()))
            }
            Err(e) => Err(e),
        }
    }

    async fn create_lead(&self, new: NewLead) -> StoreResult<Lead> {
        run(sqlx::query(concat!(
            "insert into leads (id, organization_id, phone_number, customer_name, email, status, \
             notes, metadata) values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) returning ",
            lead_cols!()
        ))
        .bind(Uuid::new_v4().to_string())
        .bind(new.organization_id.to_string())
        .bind(new.phone_number.as_str())
        .bind(&new.customer_name)
        .bind(&new.email)
        .bind(new.status.as_str())
        .bind(&new.notes)
        .bind(metadata_text(&new.metadata))
        .try_map(lead_row)
        .fetch_one(&self.pool))
        .await
        .map_err(lead_organization_reference)
    }

    async fn lead(&self, id: Uuid) -> StoreResult<Lead> {
        run(sqlx::query(concat!(
            "select ",
            lead_cols!(),
            " from leads where id = ?1"
        ))
        .bind(id.to_string())
        .try_map(lead_row)
        .fetch_optional(&self.pool))
        .await?
        .ok_or(StoreError::NotFound)
    }

    async fn lead_by_phone(
        &self,
        organization_id: Uuid,
        phone: &Phone,
    ) -> StoreResult<Option<Lead>> {
        run(sqlx::query(concat!(
            "select ",
            lead_cols!(),
            " from leads where organization_id = ?1 and phone_number = ?2"
        ))
        .bind(organization_id.to_string())
        .bind(phone.as_str())
        .try_map(lead_row)
        .fetch_optional(&self.pool))
        .await
    }

    async fn update_lead(&self, id: Uuid, patch: LeadPatch) -> StoreResult<Change<Lead>> {
        let mut tx = run(self.pool.begin_with("BEGIN IMMEDIATE")).await?;
        let current = run(sqlx::query(concat!(
            "select ",
            lead_cols!(),
            " from leads where id = ?1"
        ))
        .bind(id.to_string())
        .try_map(lead_row)
        .fetch_optional(&mut *tx))
        .await?
        .ok_or(StoreError::NotFound)?;
        let mut lead = current.clone();
        patch.apply(&mut lead);
        if lead.metadata.is_null() {
            lead.metadata = serde_json::json!({});
        }
        if lead == current {
            run(tx.commit()).await?;
            return Ok(Change {
                before: current.clone(),
                after: current,
            });
        }
        let lead = run(sqlx::query(concat!(
            "update leads set phone_number = ?2, customer_name = ?3, email = ?4, status = ?5, \
             notes = ?6, metadata = ?7, updated_at = ",
            now!(),
            " where id = ?1 returning ",
            lead_cols!()
        ))
        .bind(id.to_string())
        .bind(lead.phone_number.as_str())
        .bind(&lead.customer_name)
        .bind(&lead.email)
        .bind(lead.status.as_str())
        .bind(&lead.notes)
        .bind(metadata_text(&lead.metadata))
        .try_map(lead_row)
        .fetch_one(&mut *tx))
        .await?;
        run(tx.commit()).await?;
        Ok(Change {
            before: current,
            after: lead,
        })
    }

    async fn delete_lead(&self, id: Uuid) -> StoreResult<Lead> {
        run(sqlx::query(concat!(
            "delete from leads where id = ?1 returning ",
            lead_cols!()
        ))
        .bind(id.to_string())
        .try_map(lead_row)
        .fetch_optional(&self.pool))
        .await?
        .ok_or(StoreError::NotFound)
    }

    async fn create_conversation(&self, new: NewConversation) -> StoreResult<Conversation> {
        // The organization is the lead's; no row when the lead does not exist.
        run(sqlx::query(concat!(
            "insert into conversations (id, lead_id, organization_id, channel, external_id, \
             summary, transcript, started_at, ended_at) \
             select ?1, l.id, l.organization_id, ?3, ?4, ?5, ?6, coalesce(?7, ",
            now!(),
            "), ?8 from leads l where l.id = ?2 returning ",
            conv_cols!()
        ))
        .bind(Uuid::new_v4().to_string())
        .bind(new.lead_id.to_string())
        .bind(new.channel.as_str())
        .bind(&new.external_id)
        .bind(&new.summary)
        .bind(json_text(&new.transcript))
        .bind(new.started_at.map(ts))
        .bind(new.ended_at.map(ts))
        .try_map(conversation_row)
        .fetch_optional(&self.pool))
        .await?
        .ok_or(StoreError::NotFound)
    }

    async fn conversations(
        &self,
        lead_id: Uuid,
        limit: i64,
        offset: i64,
    ) -> StoreResult<Vec<Conversation>> {
        run(sqlx::query(concat!(
            "select ",
            conv_cols!(),
            " from conversations where lead_id = ?1 \
             order by julianday(started_at) desc, id desc limit ?2 offset ?3"
        ))
        .bind(lead_id.to_string())
        .bind(limit.max(0))
        .bind(offset.max(0))
        .try_map(conversation_row)
        .fetch_all(&self.pool))
        .await
    }

    async fn conversation_stats(&self, lead_id: Uuid) -> StoreResult<ConversationStats> {
        run(sqlx::query(
            "select count(*) as count, \
                 (select started_at from conversations where lead_id = ?1 \
                  order by julianday(started_at) desc, id desc limit 1) as last_started_at \
             from conversations where lead_id = ?1",
        )
        .bind(lead_id.to_string())
        .try_map(|row: SqliteRow| {
            Ok(ConversationStats {
                count: row.try_get("count")?,
                last_started_at: optional_time_column(&row, "last_started_at")?,
            })
        })
        .fetch_one(&self.pool))
        .await
    }

    async fn record_call(&self, call: CallRecord) -> StoreResult<CallOutcome> {
        let mut tx = run(self.pool.begin_with("BEGIN IMMEDIATE")).await?;

        // Already recorded: nothing to do (the event was delivered or replayed twice).
        let existing = run(sqlx::query(
            "select id, lead_id, organization_id from conversations where external_id = ?1",
        )
        .bind(&call.external_id)
        .try_map(existing_row)
        .fetch_optional(&mut *tx))
        .await?;
        if let Some(existing) = existing {
            run(tx.rollback()).await?;
            return Ok(existing);
        }

        let organization_id = call.organization_id.to_string();
        // The lead hotline named at the start of the call, if it is this organization's.
        let mut lead_id = None;
        if let Some(id) = call.lead_id {
            lead_id = run(sqlx::query(
                "select id from leads where id = ?1 and organization_id = ?2",
            )
            .bind(id.to_string())
            .bind(&organization_id)
            .try_map(id_row)
            .fetch_optional(&mut *tx))
            .await?;
        }
        // Else the caller's lead in this organization, else a new one. The transaction holds
        // the write lock, so nobody can create it in between.
        let mut lead_created = false;
        if lead_id.is_none() {
            lead_id = run(sqlx::query(
                "select id from leads where organization_id = ?1 and phone_number = ?2",
            )
            .bind(&organization_id)
            .bind(call.caller.as_str())
            .try_map(id_row)
            .fetch_optional(&mut *tx))
            .await?;
        }
        let lead_id = match lead_id {
            Some(id) => id,
            None => {
                let id = run(sqlx::query(
                    "insert into leads (id, organization_id, phone_number) values (?1, ?2, ?3) \
                     returning id",
                )
                .bind(Uuid::new_v4().to_string())
                .bind(&organization_id)
                .bind(call.caller.as_str())
                .try_map(id_row)
                .fetch_one(&mut *tx))
                .await
                .map_err(lead_organization_reference)?;
                lead_created = true;
                id
            }
        };

        let conversation_id = run(sqlx::query(concat!(
            "insert into conversations (id, lead_id, organization_id, channel, external_id, \
             summary, transcript, started_at, ended_at) \
             values (?1, ?2, ?3, ?4, ?5, ?6, ?7, coalesce(?8, ",
            now!(),
            "), ?9) on conflict (external_id) do nothing returning id"
        ))
        .bind(Uuid::new_v4().to_string())
        .bind(lead_id.to_string())
        .bind(&organization_id)
        .bind(Channel::Voice.as_str())
        .bind(&call.external_id)
        .bind(&call.summary)
        .bind(json_text(&call.transcript))
        .bind(call.started_at.map(ts))
        .bind(call.ended_at.map(ts))
        .try_map(id_row)
        .fetch_optional(&mut *tx))
        .await?;
        let Some(conversation_id) = conversation_id else {
            // Cannot happen under the write lock, but stay correct if it does.
            run(tx.rollback()).await?;
            return run(sqlx::query(
                "select id, lead_id, organization_id from conversations where external_id = ?1",
            )
            .bind(&call.external_id)
            .try_map(existing_row)
            .fetch_one(&self.pool))
            .await;
        };

        if !lead_created {
            // The lead's activity, for recency (and for readers that watch updated_at).
            run(sqlx::query(concat!(
                "update leads set updated_at = ",
                now!(),
                " where id = ?1"
            ))
            .bind(lead_id.to_string())
            .execute(&mut *tx))
            .await?;
        }
        run(tx.commit()).await?;
        Ok(CallOutcome {
            lead_id,
            organization_id: call.organization_id,
            conversation_id,
            lead_created,
            conversation_created: true,
        })
    }

    async fn recently_active_leads(&self, limit: i64) -> StoreResult<Vec<Uuid>> {
        if limit <= 0 {
            return Ok(Vec::new());
        }
        // As in the Postgres store: activity is the later of updated_at and the latest
        // conversation, and only the `limit` most recently updated leads, or leads with a
        // conversation at least as recent as the last of those (at most 10 x `limit` of them),
        // can qualify.
        run(sqlx::query(
            "with top_updated as ( \
                 select id, julianday(updated_at) as at from leads \
                 order by julianday(updated_at) desc limit ?1 \
             ), threshold as ( \
                 select case when count(*) < ?1 then -1e300 else min(at) end as t \
                 from top_updated \
             ), candidates as ( \
                 select id from top_updated \
                 union \
                 select lead_id from ( \
                     select lead_id from conversations \
                     where julianday(started_at) >= (select t from threshold) \
                     order by julianday(started_at) desc limit ?1 * 10 \
                 ) \
             ) \
             select l.id as id, max( \
                 coalesce(julianday(l.updated_at), -1e300), \
                 coalesce((select julianday(c.started_at) from conversations c \
                           where c.lead_id = l.id \
                           order by julianday(c.started_at) desc, c.id desc limit 1), -1e300) \
             ) as activity \
             from candidates k join leads l on l.id = k.id \
             order by activity desc, l.id desc \
             limit ?1",
        )
        .bind(limit)
        .try_map(id_row)
        .fetch_all(&self.pool))
        .await
    }
}
