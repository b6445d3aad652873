//! The Postgres (and Supabase) backend.
//!
//! Runtime-checked queries (no database needed at build time), every one bounded by
//! [`QUERY_TIMEOUT`](super::QUERY_TIMEOUT) through [`bounded`], and rows mapped by hand.
//!
//! Supabase's transaction pooler does not keep named prepared statements between transactions:
//! add `?statement-cache-capacity=0` to a pooler URL and sqlx uses unnamed statements.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::MigrateError;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::Row;
use uuid::Uuid;

use super::{bounded, Change, Store, StoreError, StoreResult, ACQUIRE_TIMEOUT};
use crate::domain::{
    CallOutcome, CallRecord, Channel, Conversation, ConversationStats, Lead, LeadPatch, LeadStatus,
    NewConversation, NewLead, NewOrganization, Organization, OrganizationPatch, Phone,
};

/// Connections per instance; several instances share the database's limit.
const MAX_CONNECTIONS: u32 = 10;
/// Idle connections above zero are closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

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

/// The Postgres store. Cheap to clone: it holds the pool.
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Builds the pool without connecting: startup does not block or fail while the database is
    /// momentarily down (the first query, usually [`Store::migrate`], reports it).
    pub async fn connect(url: &str) -> StoreResult<PgStore> {
        // Each instance's sessions are told apart in `pg_stat_activity`.
        let session_name = format!("hotline-{:016x}", rand::random::<u64>());
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Other(format!("invalid Postgres URL: {e}")))?
            .application_name(&session_name);
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .min_connections(0)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .idle_timeout(Some(IDLE_TIMEOUT))
            .connect_lazy_with(options);
        Ok(PgStore { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

fn decode_err(column: &str, message: String) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: column.to_string(),
        source: message.into(),
    }
}

fn parse_column<T: FromStr<Err = String>>(row: &PgRow, column: &str) -> Result<T, sqlx::Error> {
    let text: String = row.try_get(column)?;
    text.parse().map_err(|e| decode_err(column, e))
}

fn org_from_row(row: &PgRow) -> Result<Organization, sqlx::Error> {
    Ok(Organization {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        phone_number: Phone::from_stored(row.try_get("phone_number")?),
        timezone: row.try_get("timezone")?,
        greeting_template: row.try_get("greeting_template")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn lead_from_row(row: &PgRow) -> Result<Lead, sqlx::Error> {
    Ok(Lead {
        id: row.try_get("id")?,
        organization_id: row.try_get("organization_id")?,
        phone_number: Phone::from_stored(row.try_get("phone_number")?),
        customer_name: row.try_get("customer_name")?,
        email: row.try_get("email")?,
        status: parse_column::<LeadStatus>(row, "status")?,
        notes: row.try_get("notes")?,
        metadata: row.try_get("metadata")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn conversation_from_row(row: &PgRow) -> Result<Conversation, sqlx::Error> {
    Ok(Conversation {
        id: row.try_get("id")?,
        lead_id: row.try_get("lead_id")?,
        organization_id: row.try_get("organization_id")?,
        channel: parse_column::<Channel>(row, "channel")?,
        external_id: row.try_get("external_id")?,
        summary: row.try_get("summary")?,
        transcript: row.try_get("transcript")?,
        started_at: row.try_get("started_at")?,
        ended_at: row.try_get("ended_at")?,
        created_at: row.try_get("created_at")?,
    })
}

fn org_row(row: PgRow) -> Result<Organization, sqlx::Error> {
    org_from_row(&row)
}

fn lead_row(row: PgRow) -> Result<Lead, sqlx::Error> {
    lead_from_row(&row)
}

fn conversation_row(row: PgRow) -> Result<Conversation, sqlx::Error> {
    conversation_from_row(&row)
}

/// `metadata` is not nullable: a JSON `null` stores the default, `{}`.
fn metadata_or_default(value: serde_json::Value) -> serde_json::Value {
    if value.is_null() {
        serde_json::json!({})
    } else {
        value
    }
}

pub(super) fn migrate_error(e: MigrateError) -> StoreError {
    match e {
        MigrateError::Execute(e) => StoreError::from(e),
        MigrateError::ExecuteMigration(e, version) => match StoreError::from(e) {
            StoreError::Unavailable(m) => StoreError::Unavailable(m),
            other => StoreError::Other(format!("migration {version} failed: {other}")),
        },
        other => StoreError::Other(format!("migrations: {other}")),
    }
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn migrate(&self) -> StoreResult<()> {
        sqlx::migrate!("./migrations/postgres")
            .run(&self.pool)
            .await
            .map_err(migrate_error)
    }

    async fn ping(&self) -> StoreResult<()> {
        bounded(sqlx::query("select 1").execute(&self.pool)).await?;
        Ok(())
    }

    async fn create_organization(&self, new: NewOrganization) -> StoreResult<Organization> {
        bounded(
            sqlx::query(concat!(
                "insert into organizations (name, phone_number, timezone, greeting_template) \
                 values ($1, $2, $3, $4) returning ",
                org_cols!()
            ))
            .bind(&new.name)
            .bind(new.phone_number.as_str())
            .bind(&new.timezone)
            .bind(&new.greeting_template)
            .try_map(org_row)
            .fetch_one(&self.pool),
        )
        .await
    }

    async fn organization(&self, id: Uuid) -> StoreResult<Organization> {
        bounded(
            sqlx::query(concat!(
                "select ",
                org_cols!(),
                " from organizations where id = $1"
            ))
            .bind(id)
            .try_map(org_row)
            .fetch_optional(&self.pool),
        )
        .await?
        .ok_or(StoreError::NotFound)
    }

    async fn organization_by_phone(&self, phone: &Phone) -> StoreResult<Option<Organization>> {
        bounded(
            sqlx::query(concat!(
                "select ",
                org_cols!(),
                " from organizations where phone_number = $1"
            ))
            .bind(phone.as_str())
            .try_map(org_row)
            .fetch_optional(&self.pool),
        )
        .await
    }

    async fn update_organization(
        &self,
        id: Uuid,
        patch: OrganizationPatch,
    ) -> StoreResult<Change<Organization>> {
        let mut tx = bounded(self.pool.begin()).await?;
        let current = bounded(
            sqlx::query(concat!(
                "select ",
                org_cols!(),
                " from organizations where id = $1 for update"
            ))
            .bind(id)
            .try_map(org_row)
            .fetch_optional(&mut *tx),
        )
        .await?
        .ok_or(StoreError::NotFound)?;
        let mut org = current.clone();
        patch.apply(&mut org);
        if org == current {
            // Nothing changes: no write, and updated_at stays.
            bounded(tx.commit()).await?;
            return Ok(Change {
                before: current.clone(),
                after: current,
            });
        }
        let org = bounded(
            sqlx::query(concat!(
                "update organizations set name = $2, phone_number = $3, timezone = $4, \
                 greeting_template = $5, updated_at = now() where id = $1 returning ",
                org_cols!()
            ))
            .bind(id)
            .bind(&org.name)
            .bind(org.phone_number.as_str())
            .bind(&org.timezone)
            .bind(&org.greeting_template)
            .try_map(org_row)
            .fetch_one(&mut *tx),
        )
        .await?;
        bounded(tx.commit()).await?;
        Ok(Change {
            before: current,
            after: org,
        })
    }

    async fn delete_organization(&self, id: Uuid) -> StoreResult<Organization> {
        let result = bounded(
            sqlx::query(concat!(
                "delete from organizations where id = $1 returning ",
                org_cols!()
            ))
            .bind(id)
            .try_map(org_row)
            .fetch_optional(&self.pool),
        )
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
        bounded(
            sqlx::query(concat!(
                "insert into leads (organization_id, phone_number, customer_name, email, status, \
                 notes, metadata) values ($1, $2, $3, $4, $5, $6, $7) returning ",
                lead_cols!()
            ))
            .bind(new.organization_id)
            .bind(new.phone_number.as_str())
            .bind(&new.customer_name)
            .bind(&new.email)
            .bind(new.status.as_str())
            .bind(&new.notes)
            .bind(metadata_or_default(new.metadata))
            .try_map(lead_row)
            .fetch_one(&self.pool),
        )
        .await
    }

    async fn lead(&self, id: Uuid) -> StoreResult<Lead> {
        bounded(
            sqlx::query(concat!(
                "select ",
                lead_cols!(),
                " from leads where id = $1"
            ))
            .bind(id)
            .try_map(lead_row)
            .fetch_optional(&self.pool),
        )
        .await?
        .ok_or(StoreError::NotFound)
    }

    async fn lead_by_phone(
        &self,
        organization_id: Uuid,
        phone: &Phone,
    ) -> StoreResult<Option<Lead>> {
        bounded(
            sqlx::query(concat!(
                "select ",
                lead_cols!(),
                " from leads where organization_id = $1 and phone_number = $2"
            ))
            .bind(organization_id)
            .bind(phone.as_str())
            .try_map(lead_row)
            .fetch_optional(&self.pool),
        )
        .await
    }

    async fn update_lead(&self, id: Uuid, patch: LeadPatch) -> StoreResult<Change<Lead>> {
        let mut tx = bounded(self.pool.begin()).await?;
        let current = bounded(
            sqlx::query(concat!(
                "select ",
                lead_cols!(),
                " from leads where id = $1 for update"
            ))
            .bind(id)
            .try_map(lead_row)
            .fetch_optional(&mut *tx),
        )
        .await?
        .ok_or(StoreError::NotFound)?;
        let mut lead = current.clone();
        patch.apply(&mut lead);
        lead.metadata = metadata_or_default(lead.metadata);
        if lead == current {
            bounded(tx.commit()).await?;
            return Ok(Change {
                before: current.clone(),
                after: current,
            });
        }
        let lead = bounded(
            sqlx::query(concat!(
                "update leads set phone_number = $2, customer_name = $3, email = $4, status = $5, \
                 notes = $6, metadata = $7, updated_at = now() where id = $1 returning ",
                lead_cols!()
            ))
            .bind(id)
            .bind(lead.phone_number.as_str())
            .bind(&lead.customer_name)
            .bind(&lead.email)
            .bind(lead.status.as_str())
            .bind(&lead.notes)
            .bind(&lead.metadata)
            .try_map(lead_row)
            .fetch_one(&mut *tx),
        )
        .await?;
        bounded(tx.commit()).await?;
        Ok(Change {
            before: current,
            after: lead,
        })
    }

    async fn delete_lead(&self, id: Uuid) -> StoreResult<Lead> {
        bounded(
            sqlx::query(concat!(
                "delete from leads where id = $1 returning ",
                lead_cols!()
            ))
            .bind(id)
            .try_map(lead_row)
            .fetch_optional(&self.pool),
        )
        .await?
        .ok_or(StoreError::NotFound)
    }

    async fn create_conversation(&self, new: NewConversation) -> StoreResult<Conversation> {
        // The organization is the lead's; no row when the lead does not exist.
        bounded(
            sqlx::query(concat!(
                "insert into conversations (lead_id, organization_id, channel, external_id, \
                 summary, transcript, started_at, ended_at) \
                 select l.id, l.organization_id, $2, $3, $4, $5, coalesce($6, now()), $7 \
                 from leads l where l.id = $1 returning ",
                conv_cols!()
            ))
            .bind(new.lead_id)
            .bind(new.channel.as_str())
            .bind(&new.external_id)
            .bind(&new.summary)
            .bind(&new.transcript)
            .bind(new.started_at)
            .bind(new.ended_at)
            .try_map(conversation_row)
            .fetch_optional(&self.pool),
        )
        .await?
        .ok_or(StoreError::NotFound)
    }

    async fn conversations(
        &self,
        lead_id: Uuid,
        limit: i64,
        offset: i64,
    ) -> StoreResult<Vec<Conversation>> {
        bounded(
            sqlx::query(concat!(
                "select ",
                conv_cols!(),
                " from conversations where lead_id = $1 \
                 order by started_at desc, id desc limit $2 offset $3"
            ))
            .bind(lead_id)
            .bind(limit.max(0))
            .bind(offset.max(0))
            .try_map(conversation_row)
            .fetch_all(&self.pool),
        )
        .await
    }

    async fn conversation_stats(&self, lead_id: Uuid) -> StoreResult<ConversationStats> {
        bounded(
            sqlx::query(
                "select count(*) as count, max(started_at) as last_started_at \
                 from conversations where lead_id = $1",
            )
            .bind(lead_id)
            .try_map(|row: PgRow| {
                Ok(ConversationStats {
                    count: row.try_get("count")?,
                    last_started_at: row.try_get("last_started_at")?,
                })
            })
            .fetch_one(&self.pool),
        )
        .await
    }

    async fn record_call(&self, call: CallRecord) -> StoreResult<CallOutcome> {
        let mut tx = bounded(self.pool.begin()).await?;

        // Already recorded: nothing to do (the event was delivered or replayed twice).
        let existing = bounded(
            sqlx::query(
                "select id, lead_id, organization_id from conversations where external_id = $1",
            )
            .bind(&call.external_id)
            .try_map(existing_row)
            .fetch_optional(&mut *tx),
        )
        .await?;
        if let Some(existing) = existing {
            bounded(tx.rollback()).await?;
            return Ok(existing);
        }

        // The lead hotline named at the start of the call, if it is this organization's.
        let mut lead_id = None;
        if let Some(id) = call.lead_id {
            lead_id = bounded(
                sqlx::query_scalar::<_, Uuid>(
                    "select id from leads where id = $1 and organization_id = $2",
                )
                .bind(id)
                .bind(call.organization_id)
                .fetch_optional(&mut *tx),
            )
            .await?;
        }
        // Else the caller's lead in this organization, else a new one.
        let mut lead_created = false;
        if lead_id.is_none() {
            lead_id = bounded(
                sqlx::query_scalar::<_, Uuid>(
                    "select id from leads where organization_id = $1 and phone_number = $2",
                )
                .bind(call.organization_id)
                .bind(call.caller.as_str())
                .fetch_optional(&mut *tx),
            )
            .await?;
        }
        if lead_id.is_none() {
            lead_id = bounded(
                sqlx::query_scalar::<_, Uuid>(
                    "insert into leads (organization_id, phone_number) values ($1, $2) \
                     on conflict (organization_id, phone_number) do nothing returning id",
                )
                .bind(call.organization_id)
                .bind(call.caller.as_str())
                .fetch_optional(&mut *tx),
            )
            .await?;
            lead_created = lead_id.is_some();
        }
        let lead_id = match lead_id {
            Some(id) => id,
            // Created concurrently by another transaction, committed by now.
            None => {
                bounded(
                    sqlx::query_scalar::<_, Uuid>(
                        "select id from leads where organization_id = $1 and phone_number = $2",
                    )
                    .bind(call.organization_id)
                    .bind(call.caller.as_str())
                    .fetch_one(&mut *tx),
                )
                .await?
            }
        };

        let conversation_id = bounded(
            sqlx::query_scalar::<_, Uuid>(
                "insert into conversations (lead_id, organization_id, channel, external_id, \
                 summary, transcript, started_at, ended_at) \
                 values ($1, $2, $3, $4, $5, $6, coalesce($7, now()), $8) \
                 on conflict (external_id) do nothing returning id",
            )
            .bind(lead_id)
            .bind(call.organization_id)
            .bind(Channel::Voice.as_str())
            .bind(&call.external_id)
            .bind(&call.summary)
            .bind(&call.transcript)
            .bind(call.started_at)
            .bind(call.ended_at)
            .fetch_optional(&mut *tx),
        )
        .await?;
        let Some(conversation_id) = conversation_id else {
            // Recorded concurrently: undo what this attempt did and report that one.
            bounded(tx.rollback()).await?;
            return bounded(
                sqlx::query(
                    "select id, lead_id, organization_id from conversations \
                     where external_id = $1",
                )
                .bind(&call.external_id)
                .try_map(existing_row)
                .fetch_one(&self.pool),
            )
            .await;
        };

        if !lead_created {
            // The lead's activity, for recency (and for readers that watch updated_at).
            bounded(
                sqlx::query("update leads set updated_at = now() where id = $1")
                    .bind(lead_id)
                    .execute(&mut *tx),
            )
            .await?;
        }
        bounded(tx.commit()).await?;
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
        // Activity is the later of the lead's updated_at and its latest conversation. Only leads
        // among the `limit` most recently updated, or with a conversation at least as recent as
        // the last of those, can qualify. Both candidate sets come from index scans bounded by
        // `limit` (the conversation side reads at most 10 x `limit` rows, so a few leads with very
        // many recent conversations can hide others: fine for cache warming), and the
        // candidates are ordered exactly. No full scan: it stays fast on large tables.
        bounded(
            sqlx::query_scalar::<_, Uuid>(
                "with top_updated as ( \
                     select id, updated_at from leads order by updated_at desc limit $1 \
                 ), threshold as ( \
                     select case when count(*) < $1 then '-infinity'::timestamptz \
                            else min(updated_at) end as t \
                     from top_updated \
                 ), candidates as ( \
                     select id from top_updated \
                     union \
                     select lead_id from ( \
                         select c.lead_id from conversations c \
                         where c.started_at >= (select t from threshold) \
                         order by c.started_at desc limit $1 * 10 \
                     ) recent \
                 ) \
                 select l.id from candidates k \
                 join leads l on l.id = k.id \
                 left join lateral ( \
                     select c.started_at from conversations c where c.lead_id = l.id \
                     order by c.started_at desc, c.id desc limit 1 \
                 ) last on true \
                 order by greatest(l.updated_at, last.started_at) desc, l.id desc \
                 limit $1",
            )
            .bind(limit)
            .fetch_all(&self.pool),
        )
        .await
    }
}

/// A conversation already stored under the call's `external_id`.
fn existing_row(row: PgRow) -> Result<CallOutcome, sqlx::Error> {
    Ok(CallOutcome {
        conversation_id: row.try_get("id")?,
        lead_id: row.try_get("lead_id")?,
        organization_id: row.try_get("organization_id")?,
        lead_created: false,
        conversation_created: false,
    })
}
