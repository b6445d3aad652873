//! `hotline seed` against real databases: exact counts, a findable sample, idempotence per seed,
//! determinism across databases and backends, and organizations whose phone number is taken.

use hotline::domain::{NewOrganization, Phone, Region};
use hotline::seed::{seed, SeedOptions, SeedReport};
use hotline::store::{connect, DynStore};
use sqlx::{Connection, SqliteConnection};

use crate::support::db::TestDb;

const ORGS: u32 = 4;
const LEADS: u32 = 120;
const CONVERSATIONS_PER_LEAD: u32 = 3;

fn options(seed: u64) -> SeedOptions {
    SeedOptions {
        organizations: ORGS,
        leads: LEADS,
        conversations_per_lead: CONVERSATIONS_PER_LEAD,
        seed,
    }
}

async fn migrated(db: &TestDb) -> DynStore {
    let store = connect(&db.url).await.expect("open the store");
    store.migrate().await.expect("migrate");
    store
}

async fn fresh(postgres: bool) -> (TestDb, DynStore) {
    let db = if postgres {
        TestDb::postgres().await
    } else {
        TestDb::sqlite()
    };
    let store = migrated(&db).await;
    (db, store)
}

/// Runs one SQL query returning rows of strings, on either backend (ids and timestamps are
/// cast to text on Postgres so that both backends answer alike).
async fn texts(db: &TestDb, pg_sql: &str, sqlite_sql: &str) -> Vec<Vec<String>> {
    use sqlx::Row;
    let rows_to_strings = |n: usize, get: &dyn Fn(usize) -> Option<String>| {
        (0..n)
            .map(|i| get(i).unwrap_or_default())
            .collect::<Vec<_>>()
    };
    if db.is_postgres() {
        let mut conn = db.pg_connection().await;
        let rows = sqlx::query(pg_sql)
            .fetch_all(&mut conn)
            .await
            .expect(pg_sql);
        conn.close().await.ok();
        rows.iter()
            .map(|r| rows_to_strings(r.len(), &|i| r.get::<Option<String>, _>(i)))
            .collect()
    } else {
        let mut conn = SqliteConnection::connect(&db.url).await.expect("sqlite");
        let rows = sqlx::query(sqlite_sql)
            .fetch_all(&mut conn)
            .await
            .expect(sqlite_sql);
        conn.close().await.ok();
        rows.iter()
            .map(|r| rows_to_strings(r.len(), &|i| r.get::<Option<String>, _>(i)))
            .collect()
    }
}

async fn count(db: &TestDb, table: &str) -> u64 {
    let sql = format!("SELECT CAST(count(*) AS TEXT) FROM {table}");
    texts(db, &sql, &sql).await[0][0].parse().unwrap()
}

async fn counts(db: &TestDb) -> (u64, u64, u64) {
    (
        count(db, "organizations").await,
        count(db, "leads").await,
        count(db, "conversations").await,
    )
}

/// Lead ids and names in id order.
async fn lead_ids_and_names(db: &TestDb) -> Vec<Vec<String>> {
    texts(
        db,
        "SELECT id::text, customer_name FROM leads ORDER BY id::text",
        "SELECT id, customer_name FROM leads ORDER BY id",
    )
    .await
}

async fn seeds_exact_counts_and_a_findable_sample(postgres: bool) {
    let (db, store) = fresh(postgres).await;
    let report = seed(&db.url, &options(1)).await.expect("seed");

    assert_eq!(report.organizations, u64::from(ORGS));
    assert_eq!(report.leads, u64::from(LEADS));
    assert_eq!(
        report.conversations,
        u64::from(LEADS * CONVERSATIONS_PER_LEAD)
    );
    assert_eq!(
        counts(&db).await,
        (
            u64::from(ORGS),
            u64::from(LEADS),
            u64::from(LEADS * CONVERSATIONS_PER_LEAD)
        )
    );

    // Every conversation belongs to its lead's organization.
    let mismatched = "SELECT CAST(count(*) AS TEXT) FROM conversations c \
                      JOIN leads l ON l.id = c.lead_id WHERE c.organization_id <> l.organization_id";
    assert_eq!(texts(&db, mismatched, mismatched).await[0][0], "0");

    // The sample is a known caller, found the way the webhook finds callers.
    let sample = report.sample.expect("a sample lead");
    let org = store
        .organization_by_phone(&sample.organization_phone)
        .await
        .unwrap()
        .expect("the sample organization");
    assert_eq!(org.name, sample.organization_name);
    let lead = store
        .lead_by_phone(org.id, &sample.lead_phone)
        .await
        .unwrap()
        .expect("the sample lead");
    assert_eq!(
        lead.customer_name.as_deref(),
        Some(sample.customer_name.as_str())
    );
    let stats = store.conversation_stats(lead.id).await.unwrap();
    assert_eq!(stats.count, i64::from(CONVERSATIONS_PER_LEAD));
    let history = store.conversations(lead.id, 10, 0).await.unwrap();
    assert_eq!(history.len(), CONVERSATIONS_PER_LEAD as usize);
    assert!(history.iter().all(|c| c.organization_id == org.id));
    assert!(history
        .windows(2)
        .all(|w| w[0].started_at > w[1].started_at));

    // What the store reads back is what was seeded, in the schema's forms.
    let phones = texts(
        &db,
        "SELECT phone_number FROM leads",
        "SELECT phone_number FROM leads",
    )
    .await;
    for row in phones {
        let phone = Phone::parse(&row[0], Region::default()).expect("a valid phone number");
        assert_eq!(phone.as_str(), row[0]);
    }
    if !postgres {
        let times = texts(
            &db,
            "",
            "SELECT started_at FROM conversations UNION ALL SELECT created_at FROM leads",
        )
        .await;
        for row in times {
            let t = &row[0];
            assert_eq!(t.len(), 24, "{t}");
            assert!(t.ends_with('Z') && t.as_bytes()[19] == b'.', "{t}");
        }
    }
}

#[tokio::test]
async fn postgres_seeds_exact_counts_and_a_findable_sample() {
    seeds_exact_counts_and_a_findable_sample(true).await;
}

#[tokio::test]
async fn sqlite_seeds_exact_counts_and_a_findable_sample() {
    seeds_exact_counts_and_a_findable_sample(false).await;
}

async fn same_seed_twice_inserts_nothing_new(postgres: bool) {
    let (db, _store) = fresh(postgres).await;
    let first = seed(&db.url, &options(2)).await.expect("first seed");
    let before = lead_ids_and_names(&db).await;

    let second = seed(&db.url, &options(2)).await.expect("second seed");
    assert_eq!(
        (second.organizations, second.leads, second.conversations),
        (0, 0, 0)
    );
    assert_eq!(
        counts(&db).await,
        (
            u64::from(ORGS),
            u64::from(LEADS),
            u64::from(LEADS * CONVERSATIONS_PER_LEAD)
        )
    );
    assert_eq!(lead_ids_and_names(&db).await, before);
    assert_eq!(second.sample, first.sample, "the sample stays the same");

    // Larger counts with the same seed add only what is missing.
    let more = SeedOptions {
        leads: LEADS + 30,
        ..options(2)
    };
    let third = seed(&db.url, &more).await.expect("third seed");
    assert_eq!(
        (third.organizations, third.leads, third.conversations),
        (0, 30, u64::from(30 * CONVERSATIONS_PER_LEAD))
    );

    // Another seed adds a second, disjoint data set.
    let other = seed(&db.url, &options(3)).await.expect("another seed");
    assert_eq!(
        (other.organizations, other.leads),
        (u64::from(ORGS), u64::from(LEADS))
    );
    assert_eq!(counts(&db).await.1, u64::from(2 * LEADS + 30));
}

#[tokio::test]
async fn postgres_same_seed_twice_inserts_nothing_new() {
    same_seed_twice_inserts_nothing_new(true).await;
}

#[tokio::test]
async fn sqlite_same_seed_twice_inserts_nothing_new() {
    same_seed_twice_inserts_nothing_new(false).await;
}

#[tokio::test]
async fn fresh_databases_seeded_alike_hold_the_same_leads() {
    let (pg1, _s1) = fresh(true).await;
    let (pg2, _s2) = fresh(true).await;
    let (lite1, _s3) = fresh(false).await;
    let (lite2, _s4) = fresh(false).await;
    let mut reports: Vec<SeedReport> = Vec::new();
    for db in [&pg1, &pg2, &lite1, &lite2] {
        reports.push(seed(&db.url, &options(4)).await.expect("seed"));
    }
    let expected = lead_ids_and_names(&pg1).await;
    assert_eq!(expected.len(), LEADS as usize);
    assert!(expected.iter().any(|r| !r[1].is_empty()));
    for db in [&pg2, &lite1, &lite2] {
        assert_eq!(lead_ids_and_names(db).await, expected);
    }
    let conversations = |db| async move {
        texts(
            db,
            "SELECT id::text, lead_id::text, channel, coalesce(summary, '') FROM conversations \
             ORDER BY id::text",
            "SELECT id, lead_id, channel, coalesce(summary, '') FROM conversations ORDER BY id",
        )
        .await
    };
    let expected = conversations(&pg1).await;
    for db in [&pg2, &lite1, &lite2] {
        assert_eq!(conversations(db).await, expected);
    }
    assert!(reports.windows(2).all(|w| w[0].sample == w[1].sample));

    // A different seed gives different leads.
    let (pg3, _s5) = fresh(true).await;
    seed(&pg3.url, &options(5)).await.expect("seed");
    assert_ne!(
        lead_ids_and_names(&pg3).await,
        lead_ids_and_names(&pg1).await
    );
}

/// An organization whose generated phone number is already taken is skipped with its leads and
/// their conversations; the rest is seeded and the report counts what was inserted.
async fn taken_organization_phone_is_skipped(postgres: bool) {
    // Learn the phone numbers a seed gives its organizations.
    let (probe, _probe_store) = fresh(postgres).await;
    seed(&probe.url, &options(6)).await.expect("probe seed");
    let orgs = texts(
        &probe,
        "SELECT phone_number, (SELECT CAST(count(*) AS TEXT) FROM leads l \
                               WHERE l.organization_id = o.id) \
         FROM organizations o ORDER BY phone_number",
        "SELECT phone_number, (SELECT CAST(count(*) AS TEXT) FROM leads l \
                               WHERE l.organization_id = o.id) \
         FROM organizations o ORDER BY phone_number",
    )
    .await;
    let taken = &orgs[0][0];
    let skipped_leads: u64 = orgs[0][1].parse().unwrap();

    let (db, store) = fresh(postgres).await;
    store
        .create_organization(NewOrganization {
            name: "Already Here Inc.".into(),
            phone_number: Phone::parse(taken, Region::default()).unwrap(),
            timezone: "UTC".into(),
            greeting_template: None,
        })
        .await
        .expect("create the organization");

    let report = seed(&db.url, &options(6)).await.expect("seed");
    assert_eq!(report.organizations, u64::from(ORGS - 1));
    assert_eq!(report.leads, u64::from(LEADS) - skipped_leads);
    assert_eq!(
        report.conversations,
        report.leads * u64::from(CONVERSATIONS_PER_LEAD)
    );
    assert_eq!(
        counts(&db).await,
        (u64::from(ORGS), report.leads, report.conversations)
    );
    let existing = store
        .organization_by_phone(&Phone::parse(taken, Region::default()).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(existing.name, "Already Here Inc.");
    assert_eq!(
        count_where(&db, "leads", &existing.id.to_string()).await,
        0,
        "no seeded lead joined the existing organization"
    );
}

async fn count_where(db: &TestDb, table: &str, organization_id: &str) -> u64 {
    let pg = format!(
        "SELECT CAST(count(*) AS TEXT) FROM {table} WHERE organization_id = '{organization_id}'"
    );
    texts(db, &pg, &pg).await[0][0].parse().unwrap()
}

#[tokio::test]
async fn postgres_taken_organization_phone_is_skipped() {
    taken_organization_phone_is_skipped(true).await;
}

#[tokio::test]
async fn sqlite_taken_organization_phone_is_skipped() {
    taken_organization_phone_is_skipped(false).await;
}

#[tokio::test]
async fn edge_options() {
    let (db, _store) = fresh(false).await;
    let none = seed(
        &db.url,
        &SeedOptions {
            organizations: 0,
            leads: 0,
            conversations_per_lead: 0,
            seed: 1,
        },
    )
    .await
    .expect("seeding nothing works");
    assert_eq!(
        (none.organizations, none.leads, none.conversations),
        (0, 0, 0)
    );
    assert!(none.sample.is_none());

    let err = seed(
        &db.url,
        &SeedOptions {
            organizations: 0,
            leads: 5,
            conversations_per_lead: 0,
            seed: 1,
        },
    )
    .await
    .expect_err("leads need an organization");
    assert!(err.to_string().contains("organization"), "{err}");

    // Leads without conversations still give a (named) sample.
    let quiet = seed(
        &db.url,
        &SeedOptions {
            organizations: 2,
            leads: 10,
            conversations_per_lead: 0,
            seed: 1,
        },
    )
    .await
    .expect("seed");
    assert_eq!((quiet.leads, quiet.conversations), (10, 0));
    assert!(quiet.sample.is_some());

    assert!(seed("mysql://localhost/x", &SeedOptions::default())
        .await
        .is_err());
    // Nothing was left half-written by the failed runs.
    assert_eq!(counts(&db).await, (2, 10, 0));
}
