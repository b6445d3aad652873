//! Realistic demo data (`hotline seed`): organizations, their leads and the leads' conversations.
//!
//! Deterministic: every row is a pure function of the seed and its index (each organization and
//! each lead draws from its own ChaCha8 stream), ids included. Only timestamps move with the
//! calendar: they are placed relative to today's midnight (UTC), so that the demo always shows
//! recent conversations.
//!
//! Seeding adds to what is there. Every insert is `ON CONFLICT DO NOTHING`, so:
//! - seeding again with the same seed inserts nothing (the ids already exist);
//! - seeding again with the same seed and larger counts adds only the missing rows;
//! - a generated organization whose phone number is already taken by another organization is
//!   skipped, and so are its leads and their conversations (a lead is only inserted when its
//!   organization exists, a conversation only when its lead exists in that organization).
//!
//! The report counts the rows actually inserted.
//!
//! Postgres receives batches as arrays (`INSERT … SELECT … FROM UNNEST($1::uuid[], …)`, one
//! transaction per batch of 5,000 leads with their conversations, two batches in flight), never
//! as multi-row `VALUES` with binds, which would hit the protocol's 65,535 bind-parameter limit.
//! A failed run leaves the batches it committed; running it again completes it. SQLite receives
//! multi-row `VALUES` statements kept under its 32,766 bind-parameter limit (2.5× faster than
//! prepared single-row inserts), all inside one transaction. Generation runs on a blocking thread
//! ahead of the inserts.

use std::collections::HashSet;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use sqlx::{QueryBuilder, Sqlite, Transaction};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::domain::{Channel, LeadStatus, Phone, Region};

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedOptions {
    pub organizations: u32,
    /// The total number of leads, spread (unevenly, as in life) over the organizations.
    pub leads: u32,
    pub conversations_per_lead: u32,
    pub seed: u64,
}

impl Default for SeedOptions {
    fn default() -> Self {
        SeedOptions {
            organizations: 10,
            leads: 1_000,
            conversations_per_lead: 3,
            seed: 42,
        }
    }
}

/// What a seeding run inserted (rows that already existed are not counted).
#[derive(Debug, Clone)]
pub struct SeedReport {
    pub organizations: u64,
    pub leads: u64,
    pub conversations: u64,
    pub elapsed: Duration,
    /// A seeded lead with a name (and conversations, when any were asked for), for a demo call.
    pub sample: Option<SeedSample>,
}

/// A known caller to try the webhook with: call `organization_phone` from `lead_phone`.
#[derive(Debug, Clone, PartialEq)]
pub struct SeedSample {
    pub organization_phone: Phone,
    pub organization_name: String,
    pub lead_phone: Phone,
    pub customer_name: String,
}

/// Leads (with their conversations) per batch and per Postgres transaction.
const BATCH_LEADS: usize = 5_000;
/// Organizations per Postgres statement.
const BATCH_ORGANIZATIONS: usize = 5_000;
/// Rows per SQLite statement: 10 columns × 1,000 rows stays well under 32,766 bind parameters.
const SQLITE_ROWS_PER_STATEMENT: usize = 1_000;
/// Generated batches waiting for the database.
const PIPELINE_DEPTH: usize = 2;
/// Postgres batches inserted concurrently (each on its own connection).
const PG_CONCURRENT_BATCHES: usize = 2;
/// How many named leads are considered for the report's sample.
const SAMPLE_CANDIDATES: usize = 64;
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Fills the database at `database_url` (migrations already applied) with generated data.
pub async fn seed(database_url: &str, opts: &SeedOptions) -> anyhow::Result<SeedReport> {
    let started = Instant::now();
    if opts.organizations == 0 && opts.leads > 0 {
        bail!("leads need at least one organization (--organizations must be > 0)");
    }
    let mut sink = Sink::connect(database_url).await?;
    let result = run(&mut sink, opts, started).await;
    let finished = sink.finish(result.is_ok()).await;
    let report = result?;
    finished?;
    tracing::info!(
        organizations = report.organizations,
        leads = report.leads,
        conversations = report.conversations,
        elapsed_ms = report.elapsed.as_millis() as u64,
        "seeding finished"
    );
    Ok(report)
}

async fn run(sink: &mut Sink, opts: &SeedOptions, started: Instant) -> anyhow::Result<SeedReport> {
    let base = today_midnight();
    let mut generator = Generator::new(opts, base);

    let mut organizations = 0;
    for chunk in generator.organizations().chunks(BATCH_ORGANIZATIONS) {
        organizations += sink.insert_organizations(chunk).await?;
    }
    tracing::info!(
        organizations,
        generated = opts.organizations,
        "seeded organizations"
    );

    // Generate ahead of the database on a blocking thread.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Batch>(PIPELINE_DEPTH);
    let total = opts.leads;
    let producer = tokio::task::spawn_blocking(move || {
        while let Some(batch) = generator.next_batch(BATCH_LEADS) {
            if tx.blocking_send(batch).is_err() {
                break; // the consumer stopped (an insert failed)
            }
        }
        generator
    });

    let (mut leads, mut conversations, mut generated) = (0u64, 0u64, 0u64);
    let mut candidates: Vec<Uuid> = Vec::new();
    let mut last_progress = Instant::now();
    // Postgres: a few batches in flight on their own connections, to use more than one core.
    let mut in_flight: JoinSet<anyhow::Result<(u64, u64)>> = JoinSet::new();
    while let Some(batch) = rx.recv().await {
        if candidates.len() < SAMPLE_CANDIDATES {
            candidates.extend(
                batch
                    .leads
                    .iter()
                    .filter(|l| l.customer_name.is_some())
                    .map(|l| l.id)
                    .take(SAMPLE_CANDIDATES - candidates.len()),
            );
        }
        generated += batch.leads.len() as u64;
        let done = match sink {
            Sink::Postgres(pool) => {
                let done = if in_flight.len() >= PG_CONCURRENT_BATCHES {
                    Some(joined(in_flight.join_next().await)?)
                } else {
                    None
                };
                let pool = pool.clone();
                in_flight.spawn(async move { pg_insert_batch(&pool, &batch).await });
                done
            }
            Sink::Sqlite { .. } => Some(sink.sqlite_insert_batch(&batch).await?),
        };
        if let Some((l, c)) = done {
            leads += l;
            conversations += c;
        }
        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            tracing::info!(
                generated,
                total,
                leads,
                conversations,
                "seeding leads and conversations"
            );
        }
    }
    while let Some(result) = in_flight.join_next().await {
        let (l, c) = joined(Some(result))?;
        leads += l;
        conversations += c;
    }
    drop(rx);
    producer.await.context("the data generator panicked")?;

    let sample = sink
        .sample(&candidates, opts.conversations_per_lead > 0)
        .await?;
    Ok(SeedReport {
        organizations,
        leads,
        conversations,
        elapsed: started.elapsed(),
        sample,
    })
}

fn joined(
    result: Option<Result<anyhow::Result<(u64, u64)>, tokio::task::JoinError>>,
) -> anyhow::Result<(u64, u64)> {
    result
        .expect("a batch is in flight")
        .context("a seeding task failed")?
}

fn today_midnight() -> DateTime<Utc> {
    Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc()
}

// ---------------------------------------------------------------------------------------------
// The database side.

enum Sink {
    Postgres(PgPool),
    /// One transaction for the whole run: SQLite is fastest that way, and a failed run leaves
    /// nothing behind.
    Sqlite {
        pool: SqlitePool,
        tx: Option<Transaction<'static, Sqlite>>,
    },
}

impl Sink {
    async fn connect(url: &str) -> anyhow::Result<Sink> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(PG_CONCURRENT_BATCHES as u32)
                .acquire_timeout(Duration::from_secs(10))
                .connect(url)
                .await
                .context("cannot connect to the Postgres database")?;
            Ok(Sink::Postgres(pool))
        } else if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .context("invalid SQLite database URL")?
                .create_if_missing(true)
                .foreign_keys(true)
                // A page cache of up to 128 MiB (allocated as used) instead of 2 MiB: the
                // random-uuid primary keys touch pages all over the indexes.
                .pragma("cache_size", "-131072");
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options)
                .await
                .context("cannot open the SQLite database")?;
            let tx = pool.begin().await.context("cannot begin a transaction")?;
            Ok(Sink::Sqlite { pool, tx: Some(tx) })
        } else {
            bail!("unsupported database URL scheme (use postgres:// or sqlite://)")
        }
    }

    /// Commits (SQLite) and closes the pool.
    async fn finish(self, commit: bool) -> anyhow::Result<()> {
        match self {
            Sink::Postgres(pool) => {
                pool.close().await;
                Ok(())
            }
            Sink::Sqlite { pool, tx } => {
                let result = match tx {
                    Some(tx) if commit => tx.commit().await.context("cannot commit the seed data"),
                    Some(tx) => tx.rollback().await.context("cannot roll back"),
                    None => Ok(()),
                };
                pool.close().await;
                result
            }
        }
    }

    fn sqlite_tx<'a>(
        tx: &'a mut Option<Transaction<'static, Sqlite>>,
    ) -> &'a mut Transaction<'static, Sqlite> {
        tx.as_mut()
            .expect("the SQLite transaction is open until finish")
    }

    async fn insert_organizations(&mut self, rows: &[OrgRow]) -> anyhow::Result<u64> {
        if rows.is_empty() {
            return Ok(0);
        }
        match self {
            Sink::Postgres(pool) => {
                let r = sqlx::query(
                    "INSERT INTO organizations \
                       (id, name, phone_number, timezone, greeting_template, created_at, updated_at) \
                     SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], \
                                          $5::text[], $6::timestamptz[], $7::timestamptz[]) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(rows.iter().map(|o| o.id).collect::<Vec<_>>())
                .bind(rows.iter().map(|o| o.name.as_str()).collect::<Vec<_>>())
                .bind(rows.iter().map(|o| o.phone.as_str()).collect::<Vec<_>>())
                .bind(rows.iter().map(|o| o.timezone).collect::<Vec<_>>())
                .bind(
                    rows.iter()
                        .map(|o| o.greeting_template)
                        .collect::<Vec<_>>(),
                )
                .bind(rows.iter().map(|o| o.created_at).collect::<Vec<_>>())
                .bind(rows.iter().map(|o| o.updated_at).collect::<Vec<_>>())
                .execute(&*pool)
                .await
                .context("inserting organizations")?;
                Ok(r.rows_affected())
            }
            Sink::Sqlite { tx, .. } => {
                let tx = Self::sqlite_tx(tx);
                let mut inserted = 0;
                for chunk in rows.chunks(SQLITE_ROWS_PER_STATEMENT) {
                    let mut q = QueryBuilder::<Sqlite>::new(
                        "INSERT INTO organizations \
                           (id, name, phone_number, timezone, greeting_template, created_at, \
                            updated_at) ",
                    );
                    q.push_values(chunk, |mut b, o| {
                        b.push_bind(o.id.to_string())
                            .push_bind(o.name.as_str())
                            .push_bind(o.phone.as_str())
                            .push_bind(o.timezone)
                            .push_bind(o.greeting_template)
                            .push_bind(sqlite_time(o.created_at))
                            .push_bind(sqlite_time(o.updated_at));
                    });
                    q.push(" ON CONFLICT DO NOTHING");
                    let r = q
                        .build()
                        .execute(&mut **tx)
                        .await
                        .context("inserting organizations")?;
                    inserted += r.rows_affected();
                }
                Ok(inserted)
            }
        }
    }

    /// Inserts a batch of leads and their conversations into the open SQLite transaction;
    /// returns how many of each were new.
    async fn sqlite_insert_batch(&mut self, batch: &Batch) -> anyhow::Result<(u64, u64)> {
        let Sink::Sqlite { tx, .. } = self else {
            unreachable!("only called for SQLite")
        };
        let tx = Self::sqlite_tx(tx);
        let mut leads = 0;
        for chunk in batch.leads.chunks(SQLITE_ROWS_PER_STATEMENT) {
            leads += sqlite_insert_leads(tx, chunk).await?;
        }
        let mut conversations = 0;
        for chunk in batch.conversations.chunks(SQLITE_ROWS_PER_STATEMENT) {
            conversations += sqlite_insert_conversations(tx, chunk).await?;
        }
        Ok((leads, conversations))
    }

    /// The first candidate lead that is in the database (with a conversation, if `need_conv`),
    /// read back from the database with its organization.
    async fn sample(
        &mut self,
        candidates: &[Uuid],
        need_conv: bool,
    ) -> anyhow::Result<Option<SeedSample>> {
        if candidates.is_empty() {
            return Ok(None);
        }
        const SELECT: &str =
            "SELECT l.id, l.phone_number, l.customer_name, o.phone_number, o.name \
             FROM leads l JOIN organizations o ON o.id = l.organization_id \
             WHERE l.customer_name IS NOT NULL";
        const WITH_CONV: &str =
            " AND EXISTS (SELECT 1 FROM conversations c WHERE c.lead_id = l.id)";
        let rows: Vec<(Uuid, String, String, String, String)> = match self {
            Sink::Postgres(pool) => {
                let sql = format!(
                    "{SELECT} AND l.id = ANY($1){}",
                    if need_conv { WITH_CONV } else { "" }
                );
                sqlx::query_as(&sql)
                    .bind(candidates)
                    .fetch_all(&*pool)
                    .await
                    .context("reading the sample lead")?
            }
            Sink::Sqlite { tx, .. } => {
                let tx = Self::sqlite_tx(tx);
                let mut q = QueryBuilder::<Sqlite>::new(SELECT);
                if need_conv {
                    q.push(WITH_CONV);
                }
                q.push(" AND l.id IN (");
                let mut ids = q.separated(", ");
                for id in candidates {
                    ids.push_bind(id.to_string());
                }
                q.push(")");
                let rows: Vec<(String, String, String, String, String)> = q
                    .build_query_as()
                    .fetch_all(&mut **tx)
                    .await
                    .context("reading the sample lead")?;
                rows.into_iter()
                    .filter_map(
                        |(id, a, b, c, d): (String, String, String, String, String)| {
                            Some((Uuid::parse_str(&id).ok()?, a, b, c, d))
                        },
                    )
                    .collect()
            }
        };
        // The first candidate in generation order, so the sample is stable for a seed.
        Ok(candidates.iter().find_map(|id| {
            let (_, lead_phone, customer_name, org_phone, org_name) =
                rows.iter().find(|r| r.0 == *id)?;
            Some(SeedSample {
                organization_phone: Phone::parse(org_phone, Region::default()).ok()?,
                organization_name: org_name.clone(),
                lead_phone: Phone::parse(lead_phone, Region::default()).ok()?,
                customer_name: customer_name.clone(),
            })
        }))
    }
}

/// Inserts a batch of leads and their conversations in one transaction; returns how many of
/// each were new.
async fn pg_insert_batch(pool: &PgPool, batch: &Batch) -> anyhow::Result<(u64, u64)> {
    let mut tx = pool.begin().await.context("beginning a transaction")?;
    let leads = pg_insert_leads(&mut tx, &batch.leads).await?;
    let conversations = pg_insert_conversations(&mut tx, &batch.conversations).await?;
    tx.commit().await.context("committing a batch")?;
    Ok((leads, conversations))
}

async fn pg_insert_leads(
    tx: &mut Transaction<'static, sqlx::Postgres>,
    rows: &[LeadRow],
) -> anyhow::Result<u64> {
    if rows.is_empty() {
        return Ok(0);
    }
    let r = sqlx::query(
        "INSERT INTO leads (id, organization_id, phone_number, customer_name, email, status, \
                            notes, metadata, created_at, updated_at) \
         SELECT t.id, t.organization_id, t.phone_number, t.customer_name, t.email, t.status, \
                t.notes, t.metadata::jsonb, t.created_at, t.updated_at \
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], \
                     $7::text[], $8::text[], $9::timestamptz[], $10::timestamptz[]) \
              AS t(id, organization_id, phone_number, customer_name, email, status, notes, \
                   metadata, created_at, updated_at) \
         WHERE EXISTS (SELECT 1 FROM organizations o WHERE o.id = t.organization_id) \
         ON CONFLICT DO NOTHING",
    )
    .bind(rows.iter().map(|l| l.id).collect::<Vec<_>>())
    .bind(rows.iter().map(|l| l.organization_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|l| l.phone.as_str()).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|l| l.customer_name.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|l| l.email.as_deref()).collect::<Vec<_>>())
    .bind(rows.iter().map(|l| l.status.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|l| l.notes).collect::<Vec<_>>())
    .bind(rows.iter().map(|l| l.metadata.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|l| l.created_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|l| l.updated_at).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await
    .context("inserting leads")?;
    Ok(r.rows_affected())
}

async fn pg_insert_conversations(
    tx: &mut Transaction<'static, sqlx::Postgres>,
    rows: &[ConversationRow],
) -> anyhow::Result<u64> {
    if rows.is_empty() {
        return Ok(0);
    }
    let r = sqlx::query(
        "INSERT INTO conversations (id, lead_id, organization_id, channel, external_id, summary, \
                                    transcript, started_at, ended_at, created_at) \
         SELECT t.id, t.lead_id, t.organization_id, t.channel, t.external_id, t.summary, \
                t.transcript::jsonb, t.started_at, t.ended_at, t.created_at \
         FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[], \
                     $7::text[], $8::timestamptz[], $9::timestamptz[], $10::timestamptz[]) \
              AS t(id, lead_id, organization_id, channel, external_id, summary, transcript, \
                   started_at, ended_at, created_at) \
         WHERE EXISTS (SELECT 1 FROM leads l \
                       WHERE l.id = t.lead_id AND l.organization_id = t.organization_id) \
         ON CONFLICT DO NOTHING",
    )
    .bind(rows.iter().map(|c| c.id).collect::<Vec<_>>())
    .bind(rows.iter().map(|c| c.lead_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|c| c.organization_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|c| c.channel.as_str()).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|c| c.external_id.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|c| c.summary.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|c| c.transcript.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|c| c.started_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|c| c.ended_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|c| c.created_at).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await
    .context("inserting conversations")?;
    Ok(r.rows_affected())
}

async fn sqlite_insert_leads(
    tx: &mut Transaction<'static, Sqlite>,
    rows: &[LeadRow],
) -> anyhow::Result<u64> {
    if rows.is_empty() {
        return Ok(0);
    }
    let mut q = QueryBuilder::<Sqlite>::new(
        "INSERT INTO leads (id, organization_id, phone_number, customer_name, email, status, \
                            notes, metadata, created_at, updated_at) \
         SELECT * FROM (",
    );
    q.push_values(rows, |mut b, l| {
        b.push_bind(l.id.to_string())
            .push_bind(l.organization_id.to_string())
            .push_bind(l.phone.as_str())
            .push_bind(l.customer_name.as_deref())
            .push_bind(l.email.as_deref())
            .push_bind(l.status.as_str())
            .push_bind(l.notes)
            .push_bind(l.metadata.as_str())
            .push_bind(sqlite_time(l.created_at))
            .push_bind(sqlite_time(l.updated_at));
    });
    // `VALUES` names its columns column1, column2, …; the WHERE also settles SQLite's parsing
    // ambiguity between `INSERT … SELECT` and the upsert clause.
    q.push(
        ") AS t WHERE EXISTS (SELECT 1 FROM organizations o WHERE o.id = t.column2) \
         ON CONFLICT DO NOTHING",
    );
    let r = q
        .build()
        .execute(&mut **tx)
        .await
        .context("inserting leads")?;
    Ok(r.rows_affected())
}

async fn sqlite_insert_conversations(
    tx: &mut Transaction<'static, Sqlite>,
    rows: &[ConversationRow],
) -> anyhow::Result<u64> {
    if rows.is_empty() {
        return Ok(0);
    }
    let mut q = QueryBuilder::<Sqlite>::new(
        "INSERT INTO conversations (id, lead_id, organization_id, channel, external_id, summary, \
                                    transcript, started_at, ended_at, created_at) \
         SELECT * FROM (",
    );
    q.push_values(rows, |mut b, c| {
        b.push_bind(c.id.to_string())
            .push_bind(c.lead_id.to_string())
            .push_bind(c.organization_id.to_string())
            .push_bind(c.channel.as_str())
            .push_bind(c.external_id.as_deref())
            .push_bind(c.summary.as_deref())
            .push_bind(c.transcript.as_deref())
            .push_bind(sqlite_time(c.started_at))
            .push_bind(c.ended_at.map(sqlite_time))
            .push_bind(sqlite_time(c.created_at));
    });
    q.push(
        ") AS t WHERE EXISTS (SELECT 1 FROM leads l \
                              WHERE l.id = t.column2 AND l.organization_id = t.column3) \
         ON CONFLICT DO NOTHING",
    );
    let r = q
        .build()
        .execute(&mut **tx)
        .await
        .context("inserting conversations")?;
    Ok(r.rows_affected())
}

/// SQLite's timestamp form: RFC 3339, UTC, milliseconds, `Z`.
fn sqlite_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

// ---------------------------------------------------------------------------------------------
// The generator: pure, deterministic, no I/O.

#[derive(Debug, Clone, PartialEq)]
struct OrgRow {
    id: Uuid,
    name: String,
    phone: String,
    timezone: &'static str,
    greeting_template: Option<&'static str>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    /// Index into [`BUSINESSES`], for fitting conversation topics.
    business: usize,
    /// Index into [`AREA_CODES`]: most of an organization's callers are local.
    area: usize,
}

#[derive(Debug, Clone, PartialEq)]
struct LeadRow {
    id: Uuid,
    organization_id: Uuid,
    phone: String,
    customer_name: Option<String>,
    email: Option<String>,
    status: LeadStatus,
    notes: Option<&'static str>,
    /// JSON text.
    metadata: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
struct ConversationRow {
    id: Uuid,
    lead_id: Uuid,
    organization_id: Uuid,
    channel: Channel,
    external_id: Option<String>,
    summary: Option<String>,
    /// JSON text.
    transcript: Option<String>,
    started_at: DateTime<Utc>,
    ended_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
}

/// Leads with their conversations.
#[derive(Debug, Default)]
struct Batch {
    leads: Vec<LeadRow>,
    conversations: Vec<ConversationRow>,
}

/// Stream ids: each organization and each lead has its own, so a row does not depend on how
/// many rows come after it.
const STREAM_ORGANIZATION: u64 = 1 << 60;
const STREAM_LEAD: u64 = 2 << 60;

struct Generator {
    seed: u64,
    base: DateTime<Utc>,
    leads_total: u32,
    conversations_per_lead: u32,
    next_lead: u32,
    orgs: Vec<OrgRow>,
    /// Cumulative organization weights, for spreading leads unevenly.
    org_weights: Vec<u64>,
    /// Every phone number generated so far (`area * 10^7 + exchange * 10^4 + line`).
    phones: HashSet<u64>,
}

impl Generator {
    fn new(opts: &SeedOptions, base: DateTime<Utc>) -> Generator {
        let mut g = Generator {
            seed: opts.seed,
            base,
            leads_total: opts.leads,
            conversations_per_lead: opts.conversations_per_lead,
            next_lead: 0,
            orgs: Vec::with_capacity(opts.organizations as usize),
            org_weights: Vec::with_capacity(opts.organizations as usize),
            phones: HashSet::with_capacity((opts.organizations + opts.leads) as usize),
        };
        let mut names = HashSet::new();
        let mut total_weight = 0;
        for index in 0..opts.organizations {
            let (org, weight) = g.organization(index, &mut names);
            total_weight += weight;
            g.org_weights.push(total_weight);
            g.orgs.push(org);
        }
        g
    }

    fn rng(&self, stream: u64) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(stream);
        rng
    }

    fn organizations(&self) -> &[OrgRow] {
        &self.orgs
    }

    fn organization(&mut self, index: u32, names: &mut HashSet<String>) -> (OrgRow, u64) {
        let mut rng = self.rng(STREAM_ORGANIZATION | u64::from(index));
        let id = uuid(&mut rng);
        let business = rng.random_range(0..BUSINESSES.len());
        let (_, suffixes, _) = BUSINESSES[business];
        let mut name = format!("{} {}", pick(&mut rng, PLACES), pick(&mut rng, suffixes));
        for attempt in 0.. {
            if names.insert(name.clone()) {
                break;
            }
            name = if attempt < 8 {
                format!("{} {}", pick(&mut rng, PLACES), pick(&mut rng, suffixes))
            } else {
                format!(
                    "{} {} {}",
                    pick(&mut rng, PLACES),
                    pick(&mut rng, suffixes),
                    pick(&mut rng, BRANCHES)
                )
            };
            if attempt > 64 {
                name = format!("{name} {index}");
            }
        }
        let area = rng.random_range(0..AREA_CODES.len());
        let phone = self.phone(&mut rng, area);
        let timezone = if rng.random_bool(0.15) {
            *pick(&mut rng, EUROPEAN_TIMEZONES)
        } else {
            AREA_CODES[area].1
        };
        let greeting_template = rng
            .random_bool(0.25)
            .then(|| *pick(&mut rng, GREETING_TEMPLATES));
        let created_at = self.base - millis(&mut rng, 200, 900);
        let updated_at = created_at + millis(&mut rng, 0, 150);
        // A few large organizations, many small ones.
        let weight = *pick(&mut rng, &[1, 1, 1, 2, 2, 3, 5, 8]);
        let org = OrgRow {
            id,
            name,
            phone,
            timezone,
            greeting_template,
            created_at,
            updated_at,
            business,
            area,
        };
        (org, weight)
    }

    /// A US number that libphonenumber accepts, not generated before in this run.
    fn phone(&mut self, rng: &mut ChaCha8Rng, area: usize) -> String {
        loop {
            let exchange = loop {
                let e: u64 = rng.random_range(200..1000);
                if e % 100 != 11 && e != 555 {
                    break e;
                }
            };
            let line: u64 = rng.random_range(0..10_000);
            let code = AREA_CODES[area].0;
            if self
                .phones
                .insert(u64::from(code) * 10_000_000 + exchange * 10_000 + line)
            {
                return format!("+1{code}{exchange:03}{line:04}");
            }
        }
    }

    /// The next `n` leads (fewer at the end) with their conversations; `None` when done.
    fn next_batch(&mut self, n: usize) -> Option<Batch> {
        if self.next_lead >= self.leads_total || self.orgs.is_empty() {
            return None;
        }
        let end = self
            .leads_total
            .min(self.next_lead.saturating_add(n as u32));
        let mut batch = Batch {
            leads: Vec::with_capacity((end - self.next_lead) as usize),
            conversations: Vec::with_capacity(
                (end - self.next_lead) as usize * self.conversations_per_lead as usize,
            ),
        };
        for index in self.next_lead..end {
            self.lead(index, &mut batch);
        }
        self.next_lead = end;
        Some(batch)
    }

    fn lead(&mut self, index: u32, out: &mut Batch) {
        let mut rng = self.rng(STREAM_LEAD | u64::from(index));
        let id = uuid(&mut rng);
        let total_weight = *self.org_weights.last().expect("organizations exist");
        let w = rng.random_range(0..total_weight);
        let org_index = self.org_weights.partition_point(|&c| c <= w);
        let (org_id, org_area, business) = {
            let o = &self.orgs[org_index];
            (o.id, o.area, o.business)
        };
        let area = if rng.random_bool(0.6) {
            org_area
        } else {
            rng.random_range(0..AREA_CODES.len())
        };
        let phone = self.phone(&mut rng, area);

        let named = rng.random_bool(0.9);
        let (first, last) = (pick(&mut rng, FIRST_NAMES), pick(&mut rng, LAST_NAMES));
        let customer_name = named.then(|| format!("{first} {last}"));
        let email = if named && rng.random_bool(0.7) {
            Some(email(&mut rng, first, last))
        } else if !named && rng.random_bool(0.05) {
            Some(format!(
                "caller{}@{}",
                rng.random_range(100..10_000),
                pick(&mut rng, EMAIL_DOMAINS)
            ))
        } else {
            None
        };
        let status = weighted(&mut rng, STATUSES);
        let notes = rng.random_bool(0.15).then(|| *pick(&mut rng, NOTES));
        let source = weighted(&mut rng, SOURCES);
        let tag_count = weighted(&mut rng, &[(0usize, 50), (1, 35), (2, 15)]);
        let mut tags: Vec<&str> = Vec::with_capacity(tag_count);
        while tags.len() < tag_count {
            let tag = pick(&mut rng, TAGS);
            if !tags.contains(tag) {
                tags.push(tag);
            }
        }
        let metadata = json!({ "source": source, "tags": tags }).to_string();

        // The lead appeared within the last 180 days; its conversations follow, at distinct times.
        let created_at = self.base - millis(&mut rng, 1, 180);
        let span = (self.base - created_at).num_milliseconds();
        let mut offsets: Vec<i64> = Vec::with_capacity(self.conversations_per_lead as usize);
        while offsets.len() < self.conversations_per_lead as usize {
            // The first conversation is what created the lead.
            let o = if offsets.is_empty() {
                rng.random_range(0..60_000)
            } else {
                rng.random_range(0..span)
            };
            if !offsets.contains(&o) {
                offsets.push(o);
            }
        }
        offsets.sort_unstable();
        let mut updated_at = created_at;
        for offset in offsets {
            let conversation = conversation(
                &mut rng,
                id,
                org_id,
                business,
                &self.orgs[org_index].name,
                named.then_some(first),
                created_at + TimeDelta::milliseconds(offset),
            );
            updated_at = updated_at.max(conversation.created_at);
            out.conversations.push(conversation);
        }

        out.leads.push(LeadRow {
            id,
            organization_id: org_id,
            phone,
            customer_name,
            email,
            status,
            notes,
            metadata,
            created_at,
            updated_at,
        });
    }
}

fn conversation(
    rng: &mut ChaCha8Rng,
    lead_id: Uuid,
    organization_id: Uuid,
    business: usize,
    org_name: &str,
    first_name: Option<&str>,
    started_at: DateTime<Utc>,
) -> ConversationRow {
    let id = uuid(rng);
    let channel = weighted(
        rng,
        &[
            (Channel::Voice, 70),
            (Channel::Sms, 15),
            (Channel::Chat, 10),
            (Channel::Email, 5),
        ],
    );
    let (_, _, topics) = BUSINESSES[business];
    let topic = pick(rng, topics);
    let outcome = pick(rng, OUTCOMES);
    let summary = rng.random_bool(0.8).then(|| {
        let template = match channel {
            Channel::Voice => pick(rng, VOICE_SUMMARIES),
            Channel::Sms => "Texted about {topic}; {outcome}.",
            Channel::Chat => "Website chat about {topic}; {outcome}.",
            Channel::Email => "Emailed about {topic}; {outcome}.",
        };
        template
            .replace("{topic}", topic)
            .replace("{outcome}", outcome)
    });
    let external_id = rng.random_bool(0.5).then(|| {
        const ALNUM: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let tail: String = (0..26)
            .map(|_| ALNUM[rng.random_range(0..ALNUM.len())] as char)
            .collect();
        format!("conv_{tail}")
    });
    let transcript = (matches!(channel, Channel::Voice | Channel::Chat) && rng.random_bool(0.1))
        .then(|| {
            let mut outcome_sentence = outcome.to_string();
            if let Some(c) = outcome_sentence.get(..1) {
                outcome_sentence.replace_range(..1, &c.to_uppercase());
            }
            json!([
                {"role": "agent", "message": format!("Hello, thanks for contacting {org_name}. How can I help?")},
                {"role": "user", "message": match first_name {
                    Some(name) => format!("Hi, this is {name}. I'm calling about {topic}."),
                    None => format!("Hi, I'm calling about {topic}."),
                }},
                {"role": "agent", "message": format!("Of course. {outcome_sentence}.")},
            ])
            .to_string()
        });
    let duration_s = match channel {
        Channel::Voice => rng.random_range(45..900),
        Channel::Chat => rng.random_range(120..1_200),
        Channel::Sms => rng.random_range(60..3_600),
        Channel::Email => rng.random_range(5..60),
    };
    let ended_at = started_at + TimeDelta::seconds(duration_s);
    ConversationRow {
        id,
        lead_id,
        organization_id,
        channel,
        external_id,
        summary,
        transcript,
        started_at,
        ended_at: Some(ended_at),
        created_at: ended_at,
    }
}

fn uuid(rng: &mut ChaCha8Rng) -> Uuid {
    uuid::Builder::from_random_bytes(rng.random()).into_uuid()
}

/// A random duration between `min_days` and `max_days` days, in whole milliseconds.
fn millis(rng: &mut ChaCha8Rng, min_days: i64, max_days: i64) -> TimeDelta {
    const DAY_MS: i64 = 86_400_000;
    TimeDelta::milliseconds(rng.random_range(min_days * DAY_MS..max_days * DAY_MS))
}

fn pick<'a, T>(rng: &mut ChaCha8Rng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

fn weighted<T: Copy>(rng: &mut ChaCha8Rng, items: &[(T, u32)]) -> T {
    let total: u32 = items.iter().map(|(_, w)| w).sum();
    let mut roll = rng.random_range(0..total);
    for (item, w) in items {
        if roll < *w {
            return *item;
        }
        roll -= w;
    }
    unreachable!("the roll is below the total weight")
}

fn email(rng: &mut ChaCha8Rng, first: &str, last: &str) -> String {
    let (f, l) = (ascii_fold(first), ascii_fold(last));
    let local = match rng.random_range(0..5) {
        0 => format!("{f}.{l}"),
        1 => format!("{f}{l}"),
        2 => format!("{}.{l}", &f[..1]),
        3 => format!("{f}.{l}{}", rng.random_range(1..100)),
        _ => format!("{f}_{l}"),
    };
    format!("{local}@{}", pick(rng, EMAIL_DOMAINS))
}

/// Lower-case ASCII letters and digits only, accents folded (`José O'Brien` → `joseobrien`).
fn ascii_fold(s: &str) -> String {
    s.chars()
        .flat_map(char::to_lowercase)
        .filter_map(|c| match c {
            'a'..='z' | '0'..='9' => Some(c),
            'á' | 'à' | 'â' | 'ä' | 'ã' | 'å' => Some('a'),
            'é' | 'è' | 'ê' | 'ë' | 'ễ' => Some('e'),
            'í' | 'ì' | 'î' | 'ï' => Some('i'),
            'ó' | 'ò' | 'ô' | 'ö' | 'õ' | 'ø' => Some('o'),
            'ú' | 'ù' | 'û' | 'ü' => Some('u'),
            'ñ' => Some('n'),
            'ç' => Some('c'),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Word lists.

/// Real US area codes (all valid for libphonenumber) with their main timezone.
const AREA_CODES: &[(u16, &str)] = &[
    (202, "America/New_York"),
    (206, "America/Los_Angeles"),
    (212, "America/New_York"),
    (213, "America/Los_Angeles"),
    (214, "America/Chicago"),
    (215, "America/New_York"),
    (303, "America/Denver"),
    (305, "America/New_York"),
    (310, "America/Los_Angeles"),
    (312, "America/Chicago"),
    (313, "America/Detroit"),
    (314, "America/Chicago"),
    (404, "America/New_York"),
    (415, "America/Los_Angeles"),
    (503, "America/Los_Angeles"),
    (504, "America/Chicago"),
    (505, "America/Denver"),
    (510, "America/Los_Angeles"),
    (512, "America/Chicago"),
    (602, "America/Phoenix"),
    (612, "America/Chicago"),
    (617, "America/New_York"),
    (619, "America/Los_Angeles"),
    (646, "America/New_York"),
    (702, "America/Los_Angeles"),
    (704, "America/New_York"),
    (713, "America/Chicago"),
    (718, "America/New_York"),
    (773, "America/Chicago"),
    (801, "America/Denver"),
    (808, "Pacific/Honolulu"),
    (857, "America/New_York"),
    (907, "America/Anchorage"),
    (917, "America/New_York"),
];

const EUROPEAN_TIMEZONES: &[&str] = &[
    "Europe/London",
    "Europe/Dublin",
    "Europe/Berlin",
    "Europe/Paris",
    "Europe/Madrid",
    "Europe/Amsterdam",
    "Europe/Stockholm",
    "Europe/Warsaw",
    "Europe/Lisbon",
    "Europe/Rome",
];

const PLACES: &[&str] = &[
    "Northside",
    "Brightway",
    "Summit",
    "Lakeview",
    "Riverbend",
    "Evergreen",
    "Harborview",
    "Maple Street",
    "Pinecrest",
    "Oak Hill",
    "Westgate",
    "Sunrise",
    "Bluebird",
    "Cedar Ridge",
    "Silver Creek",
    "Prairie",
    "Redwood",
    "Main Street",
    "Crescent",
    "Willow Park",
    "Union Square",
    "Elm Grove",
    "Highland",
    "Clearwater",
    "Stonebridge",
    "Parkside",
    "Liberty",
    "Meadowbrook",
    "Fairview",
    "Copper Canyon",
    "Lighthouse",
    "Ironwood",
    "Juniper",
    "Hillcrest",
    "Seaside",
    "Old Town",
    "Metro",
    "Golden Valley",
    "Eastside",
    "Bayfront",
];

const BRANCHES: &[&str] = &[
    "Downtown", "Uptown", "East", "West", "North", "South", "Midtown", "Central",
];

/// Business kinds: (label, name suffixes, conversation topics).
const BUSINESSES: &[(&str, &[&str], &[&str])] = &[
    (
        "dental",
        &["Dental", "Family Dentistry", "Dental Care", "Orthodontics"],
        &[
            "a teeth cleaning",
            "a chipped tooth",
            "Invisalign pricing",
            "insurance coverage for a crown",
            "a toothache that started last night",
            "whitening options",
        ],
    ),
    (
        "realty",
        &["Realty", "Real Estate", "Properties", "Homes"],
        &[
            "listing a three-bedroom house",
            "a showing this weekend",
            "mortgage pre-approval",
            "rental availability",
            "the asking price of a listing",
            "a home valuation",
        ],
    ),
    (
        "auto",
        &[
            "Auto Repair",
            "Auto Care",
            "Collision Center",
            "Tire & Brake",
        ],
        &[
            "a brake inspection",
            "an oil change",
            "a check-engine light",
            "a repair estimate",
            "winter tires",
            "a rattling noise from the engine",
        ],
    ),
    (
        "plumbing",
        &["Plumbing", "Plumbing & Heating", "Drain Services"],
        &[
            "a leaking water heater",
            "a clogged drain",
            "a quote for new fixtures",
            "an emergency pipe repair",
            "low water pressure",
        ],
    ),
    (
        "hvac",
        &["HVAC Services", "Heating & Air", "Climate Control"],
        &[
            "an air conditioner that stopped cooling",
            "a furnace tune-up",
            "a maintenance plan",
            "a smart thermostat installation",
            "a noisy heat pump",
        ],
    ),
    (
        "veterinary",
        &["Veterinary Clinic", "Animal Hospital", "Pet Care"],
        &[
            "vaccinations for a new puppy",
            "a limping dog",
            "a dental cleaning for a cat",
            "boarding availability",
            "a prescription diet",
        ],
    ),
    (
        "legal",
        &["Law Group", "Legal", "Law Offices"],
        &[
            "a consultation about a lease dispute",
            "drafting a will",
            "a traffic citation",
            "fees for an initial consultation",
            "a small claims case",
        ],
    ),
    (
        "insurance",
        &["Insurance Agency", "Insurance", "Insurance Partners"],
        &[
            "a quote for home insurance",
            "adding a driver to an auto policy",
            "filing a claim",
            "renewal options",
            "bundling home and auto",
        ],
    ),
    (
        "fitness",
        &["Fitness", "Yoga Studio", "Athletic Club", "CrossFit"],
        &[
            "membership pricing",
            "personal training sessions",
            "the class schedule",
            "freezing a membership",
            "a free trial week",
        ],
    ),
    (
        "medical",
        &[
            "Family Medicine",
            "Physical Therapy",
            "Medical Group",
            "Urgent Care",
        ],
        &[
            "scheduling a check-up",
            "a referral for physical therapy",
            "a prescription refill",
            "new patient registration",
            "lab results",
        ],
    ),
    (
        "home",
        &["Landscaping", "Roofing", "Home Services", "Painting Co."],
        &[
            "a roof inspection after the storm",
            "a quote for a new lawn",
            "gutter cleaning",
            "weekly maintenance",
            "repainting the exterior",
        ],
    ),
    (
        "salon",
        &["Salon", "Hair Studio", "Day Spa", "Barbershop"],
        &[
            "booking a haircut",
            "color treatment pricing",
            "a gift card",
            "bridal party appointments",
            "a massage package",
        ],
    ),
];

/// `{first_name}` is "there" for a caller who is not a lead: every template reads well with it.
const GREETING_TEMPLATES: &[&str] = &[
    "Hi {first_name}! {greeting}, and thanks for calling {organization_name}.",
    "{greeting}, and welcome to {organization_name}! Hi {first_name}, how can we help today?",
    "Thanks for calling {organization_name}! {greeting}. Hi {first_name}, how can I help?",
    "{greeting} from {organization_name}! Hi {first_name}, what can I do for you?",
];

const FIRST_NAMES: &[&str] = &[
    "Maria",
    "James",
    "Aisha",
    "Wei",
    "Priya",
    "Carlos",
    "Olivia",
    "Mohammed",
    "Sofia",
    "Liam",
    "Chen",
    "Fatima",
    "Noah",
    "Yuki",
    "Emma",
    "Diego",
    "Amara",
    "Lucas",
    "Ananya",
    "Ethan",
    "Zainab",
    "Mateo",
    "Hannah",
    "Kwame",
    "Isabella",
    "Arjun",
    "Grace",
    "Omar",
    "Chloe",
    "Hiroshi",
    "Ava",
    "Javier",
    "Nia",
    "Benjamin",
    "Mei",
    "Samuel",
    "Leila",
    "Daniel",
    "Ingrid",
    "Tomás",
    "Chiara",
    "Kofi",
    "Elena",
    "Raj",
    "Sarah",
    "Andrés",
    "Lucía",
    "Dmitri",
    "Anika",
    "Michael",
    "Jamal",
    "Sakura",
    "David",
    "Camila",
    "Oluwaseun",
    "Emily",
    "Hassan",
    "Rosa",
    "Patrick",
    "Mariam",
    "Ji-woo",
    "Thomas",
    "Valentina",
    "Kenji",
    "Abigail",
    "Ahmed",
    "Zoe",
    "Rafael",
    "Ngozi",
    "William",
    "Leah",
    "Santiago",
    "Yasmin",
    "Joseph",
    "Aaliyah",
    "Minh",
    "Charlotte",
    "Gabriel",
    "Esperanza",
    "Henry",
    "Freya",
    "Ravi",
    "Naomi",
    "Luis",
    "Siobhan",
    "Alexander",
    "Imani",
    "Viktor",
    "Ruth",
    "Mohan",
    "Julia",
    "Kai",
    "Bianca",
    "Elijah",
    "Farah",
    "Jonas",
    "Keiko",
    "Marcus",
    "Ana",
    "Tariq",
];

const LAST_NAMES: &[&str] = &[
    "Garcia",
    "Smith",
    "Nguyen",
    "Johnson",
    "Patel",
    "Kim",
    "Williams",
    "Hernandez",
    "Chen",
    "Brown",
    "Okafor",
    "Müller",
    "Lopez",
    "Khan",
    "Jones",
    "Rossi",
    "Wang",
    "Davis",
    "O'Brien",
    "Martinez",
    "Singh",
    "Miller",
    "Kowalski",
    "Ali",
    "Wilson",
    "Tanaka",
    "Anderson",
    "Silva",
    "Rodriguez",
    "Ivanova",
    "Thomas",
    "Mensah",
    "Taylor",
    "Gonzalez",
    "Cohen",
    "Moore",
    "Sato",
    "Jackson",
    "Pérez",
    "Haddad",
    "White",
    "Novak",
    "Harris",
    "Dubois",
    "Sanchez",
    "Clark",
    "Eriksson",
    "Lewis",
    "Yamamoto",
    "Robinson",
    "Ramirez",
    "Walker",
    "Fernández",
    "Young",
    "Nakamura",
    "Allen",
    "Adeyemi",
    "King",
    "Schmidt",
    "Wright",
    "Torres",
    "Scott",
    "Andersson",
    "Green",
    "Flores",
    "Baker",
    "Choi",
    "Adams",
    "Rivera",
    "Nelson",
    "Bianchi",
    "Hill",
    "Gomez",
    "Campbell",
    "Kaur",
    "Mitchell",
    "Diaz",
    "Roberts",
    "Park",
    "Carter",
    "Morales",
    "Phillips",
    "Jensen",
    "Evans",
    "Reyes",
    "Turner",
    "Murphy",
    "Ortiz",
    "Collins",
    "Hoang",
    "Stewart",
    "Cruz",
    "Morris",
    "Lee",
    "Mahmoud",
    "Rogers",
    "Petrov",
    "Reed",
    "Costa",
    "Cook",
    "Dlamini",
    "Bailey",
    "Fischer",
    "Bell",
    "Castillo",
    "Murray",
    "Abubakar",
    "Price",
];

const EMAIL_DOMAINS: &[&str] = &["example.com", "example.org", "example.net"];

const STATUSES: &[(LeadStatus, u32)] = &[
    (LeadStatus::New, 40),
    (LeadStatus::Contacted, 25),
    (LeadStatus::Qualified, 15),
    (LeadStatus::Customer, 12),
    (LeadStatus::Lost, 8),
];

const SOURCES: &[(&str, u32)] = &[("web", 40), ("referral", 25), ("ads", 25), ("walk_in", 10)];

const TAGS: &[&str] = &[
    "vip",
    "callback_requested",
    "price_sensitive",
    "spanish_speaker",
    "weekend_only",
    "returning",
    "high_intent",
    "needs_follow_up",
];

const NOTES: &[&str] = &[
    "Prefers afternoon calls.",
    "Spanish speaker; offer a bilingual agent.",
    "Asked not to be called on weekends.",
    "Referred by an existing customer.",
    "Price sensitive; mention the current promotion.",
    "Wants everything confirmed by email.",
    "Hard of hearing; speak slowly and clearly.",
    "Decision maker is their spouse.",
    "Interested in a long-term plan.",
    "Had a billing issue last year; be extra careful with quotes.",
];

const VOICE_SUMMARIES: &[&str] = &[
    "Caller asked about {topic}; {outcome}.",
    "Inbound call about {topic}; {outcome}.",
    "Follow-up call regarding {topic}; {outcome}.",
];

const OUTCOMES: &[&str] = &[
    "an appointment was booked for next week",
    "they asked for a callback tomorrow morning",
    "pricing was sent by email",
    "the call was transferred to the front desk",
    "no decision yet",
    "a follow-up call was scheduled",
    "a written quote was requested",
    "they will compare options and call back",
    "they were added to the waitlist",
    "the deposit was paid over the phone",
    "the existing appointment was confirmed",
    "they asked to reschedule to a later date",
];

#[cfg(test)]
mod tests {

    #[test]
    fn every_greeting_template_reads_well_for_a_withheld_caller() {
        for template in GREETING_TEMPLATES {
            // "there" is what `{first_name}` becomes: "Hi there", never "Good evening, there".
            assert!(template.contains("Hi {first_name}"), "{template}");
            assert!(!template.contains("{greeting}, {first_name}"), "{template}");
        }
    }

    use super::*;

    fn opts(seed: u64) -> SeedOptions {
        SeedOptions {
            organizations: 25,
            leads: 3_000,
            conversations_per_lead: 3,
            seed,
        }
    }

    fn base() -> DateTime<Utc> {
        "2026-11-22T00:00:00Z".parse().unwrap()
    }

    /// Everything a generator produces for the options.
    fn generate(opts: &SeedOptions) -> (Vec<OrgRow>, Batch) {
        let mut g = Generator::new(opts, base());
        let orgs = g.organizations().to_vec();
        let mut all = Batch::default();
        while let Some(b) = g.next_batch(700) {
            all.leads.extend(b.leads);
            all.conversations.extend(b.conversations);
        }
        (orgs, all)
    }

    #[test]
    fn same_seed_same_data() {
        let (o1, b1) = generate(&opts(7));
        let (o2, b2) = generate(&opts(7));
        assert_eq!(o1, o2);
        assert_eq!(b1.leads, b2.leads);
        assert_eq!(b1.conversations, b2.conversations);
    }

    #[test]
    fn batch_size_does_not_change_the_data() {
        let (_, a) = generate(&opts(7));
        let mut g = Generator::new(&opts(7), base());
        let b = g.next_batch(10_000).unwrap();
        assert!(g.next_batch(10_000).is_none());
        assert_eq!(a.leads, b.leads);
        assert_eq!(a.conversations, b.conversations);
    }

    #[test]
    fn different_seeds_different_data() {
        let (o1, b1) = generate(&opts(1));
        let (o2, b2) = generate(&opts(2));
        assert!(o1.iter().zip(&o2).all(|(a, b)| a.id != b.id));
        assert!(o1.iter().zip(&o2).any(|(a, b)| a.name != b.name));
        assert!(b1
            .leads
            .iter()
            .zip(&b2.leads)
            .all(|(a, b)| a.id != b.id && a.phone != b.phone));
        assert!(b1
            .conversations
            .iter()
            .zip(&b2.conversations)
            .all(|(a, b)| a.id != b.id));
    }

    #[test]
    fn more_leads_extend_fewer() {
        let small = SeedOptions {
            leads: 500,
            ..opts(3)
        };
        let (_, a) = generate(&small);
        let (_, b) = generate(&opts(3));
        assert_eq!(a.leads[..], b.leads[..500]);
        assert_eq!(a.conversations[..], b.conversations[..1_500]);
    }

    #[test]
    fn counts_and_references_are_right() {
        let o = opts(11);
        let (orgs, b) = generate(&o);
        assert_eq!(orgs.len(), 25);
        assert_eq!(b.leads.len(), 3_000);
        assert_eq!(b.conversations.len(), 9_000);
        let org_ids: HashSet<Uuid> = orgs.iter().map(|o| o.id).collect();
        let leads: std::collections::HashMap<Uuid, &LeadRow> =
            b.leads.iter().map(|l| (l.id, l)).collect();
        assert_eq!(leads.len(), b.leads.len(), "lead ids are unique");
        assert!(b.leads.iter().all(|l| org_ids.contains(&l.organization_id)));
        let mut conv_ids = HashSet::new();
        for c in &b.conversations {
            assert!(conv_ids.insert(c.id));
            let lead = leads[&c.lead_id];
            assert_eq!(c.organization_id, lead.organization_id);
            assert!(c.started_at >= lead.created_at && c.started_at < base());
            assert!(c.ended_at.unwrap() > c.started_at);
            assert!(lead.updated_at >= c.created_at);
        }
        // Every organization gets leads with these counts, but not evenly.
        let per_org: std::collections::HashMap<Uuid, usize> =
            b.leads.iter().fold(Default::default(), |mut m, l| {
                *m.entry(l.organization_id).or_default() += 1;
                m
            });
        assert_eq!(per_org.len(), 25);
        assert!(per_org.values().max() > per_org.values().min());
    }

    #[test]
    fn conversation_times_are_distinct_per_lead_and_recent() {
        let (_, b) = generate(&opts(5));
        for lead in b.conversations.chunks(3) {
            let times: HashSet<_> = lead.iter().map(|c| c.started_at).collect();
            assert_eq!(times.len(), 3);
            for c in lead {
                assert!(base() - c.started_at <= TimeDelta::days(180));
            }
        }
    }

    #[test]
    fn every_phone_parses_and_is_unique() {
        let (orgs, b) = generate(&SeedOptions {
            organizations: 200,
            leads: 20_000,
            conversations_per_lead: 0,
            seed: 99,
        });
        let mut seen = HashSet::new();
        for phone in orgs
            .iter()
            .map(|o| &o.phone)
            .chain(b.leads.iter().map(|l| &l.phone))
        {
            let parsed = Phone::parse(phone, Region::default()).expect(phone);
            assert_eq!(parsed.as_str(), phone, "stored as E.164");
            assert!(seen.insert(phone.clone()), "duplicate {phone}");
        }
        assert!(b.conversations.is_empty());
    }

    #[test]
    fn every_area_code_and_exchange_is_valid() {
        for (code, tz) in AREA_CODES {
            assert!(crate::domain::check_timezone(tz).is_ok(), "{tz}");
            for exchange in (200..1000).filter(|e| e % 100 != 11 && *e != 555) {
                let line = exchange * 37 % 10_000;
                let n = format!("+1{code}{exchange}{line:04}");
                assert!(Phone::parse(&n, Region::default()).is_ok(), "{n}");
            }
        }
    }

    #[test]
    fn values_are_valid() {
        let (orgs, b) = generate(&opts(21));
        for o in &orgs {
            assert!(!o.name.trim().is_empty());
            assert!(crate::domain::check_timezone(o.timezone).is_ok());
            if let Some(t) = o.greeting_template {
                assert!(t.contains("{greeting}") && t.contains("{organization_name}"));
            }
        }
        let names: HashSet<&str> = orgs.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names.len(), orgs.len(), "organization names are unique");
        let with_template = orgs
            .iter()
            .filter(|o| o.greeting_template.is_some())
            .count();
        assert!(with_template > 0 && with_template < orgs.len() / 2);

        let mut statuses = HashSet::new();
        let mut unnamed = 0;
        for l in &b.leads {
            statuses.insert(l.status);
            assert!(l.status.as_str().parse::<LeadStatus>().is_ok());
            if let Some(e) = &l.email {
                assert!(crate::domain::check_email(e).is_ok(), "{e}");
                assert!(e.is_ascii());
                assert!(
                    e.ends_with("@example.com")
                        || e.ends_with("@example.org")
                        || e.ends_with("@example.net")
                );
            }
            if l.customer_name.is_none() {
                unnamed += 1;
            }
            let m: serde_json::Value = serde_json::from_str(&l.metadata).unwrap();
            assert!(["web", "referral", "ads", "walk_in"].contains(&m["source"].as_str().unwrap()));
            assert!(m["tags"].is_array());
        }
        assert_eq!(statuses.len(), LeadStatus::ALL.len(), "every status occurs");
        let unnamed_pct = unnamed * 100 / b.leads.len();
        assert!((5..=15).contains(&unnamed_pct), "{unnamed_pct}% unnamed");

        let mut channels = HashSet::new();
        let (mut with_summary, mut with_external) = (0, 0);
        let mut external_ids = HashSet::new();
        for c in &b.conversations {
            channels.insert(c.channel);
            assert!(c.channel.as_str().parse::<Channel>().is_ok());
            with_summary += usize::from(c.summary.is_some());
            if let Some(x) = &c.external_id {
                with_external += 1;
                assert!(x.starts_with("conv_") && x.len() == 31, "{x}");
                assert!(x[5..].chars().all(|c| c.is_ascii_alphanumeric()));
                assert!(external_ids.insert(x.clone()));
            }
            if let Some(t) = &c.transcript {
                let t: serde_json::Value = serde_json::from_str(t).unwrap();
                assert_eq!(t[0]["role"], "agent");
                assert_eq!(t[1]["role"], "user");
            }
        }
        assert_eq!(channels.len(), Channel::ALL.len(), "every channel occurs");
        let n = b.conversations.len();
        assert!((70..=90).contains(&(with_summary * 100 / n)));
        assert!((40..=60).contains(&(with_external * 100 / n)));
        assert!(b.conversations.iter().any(|c| c.transcript.is_some()));
    }

    #[test]
    fn ascii_folding() {
        assert_eq!(ascii_fold("José"), "jose");
        assert_eq!(ascii_fold("O'Brien"), "obrien");
        assert_eq!(ascii_fold("Ji-woo"), "jiwoo");
        assert_eq!(ascii_fold("Müller"), "muller");
        for name in FIRST_NAMES.iter().chain(LAST_NAMES) {
            assert!(!ascii_fold(name).is_empty(), "{name}");
        }
    }

    #[test]
    fn no_leads_without_organizations() {
        let mut g = Generator::new(
            &SeedOptions {
                organizations: 0,
                leads: 0,
                conversations_per_lead: 3,
                seed: 1,
            },
            base(),
        );
        assert!(g.organizations().is_empty());
        assert!(g.next_batch(10).is_none());
    }
}
