//! The store test suite: every test runs against both backends, Postgres and SQLite, each on a
//! fresh database (`store::postgres::*`, `store::sqlite::*`).

use std::collections::HashSet;

use chrono::{DateTime, Duration, TimeZone, Utc};
use hotline::domain::{
    CallRecord, Channel, LeadPatch, LeadStatus, NewConversation, NewLead, NewOrganization,
    OrganizationPatch, Phone, Region,
};
use hotline::store::{self, DynStore, StoreError};
use serde_json::json;
use sqlx::Connection;
use uuid::Uuid;

use crate::support::db::TestDb;

/// Generates one `#[tokio::test]` per backend for each suite test.
macro_rules! store_suite {
    ($($name:ident),+ $(,)?) => {
        store_suite!(@backend postgres, postgres_db; $($name),+);
        store_suite!(@backend sqlite, sqlite_db; $($name),+);
    };
    (@backend $backend:ident, $make:ident; $($name:ident),+) => {
        mod $backend {
            $(
                #[tokio::test]
                async fn $name() {
                    let db = super::$make().await;
                    let store = super::open(&db).await;
                    super::$name(&db, store).await;
                }
            )+
        }
    };
}

store_suite!(
    organizations_crud,
    organization_phone_is_unique,
    organization_by_phone_hit_and_miss,
    organization_patch_semantics,
    missing_ids_are_not_found,
    lead_with_unknown_organization_is_invalid_reference,
    lead_phone_is_unique_per_organization,
    lead_patch_semantics,
    delete_organization_with_leads_conflicts,
    delete_lead_cascades_conversations,
    conversations_newest_first_paged_with_stable_ties,
    conversation_stats_count_and_latest,
    conversation_takes_the_leads_organization_and_defaults,
    duplicate_external_id_conflicts,
    record_call_creates_the_lead_and_is_idempotent,
    record_call_finds_the_lead_by_id_within_the_organization,
    record_call_for_unknown_organization_is_invalid_reference,
    record_call_concurrently_creates_one_lead_and_one_conversation_per_event,
    recently_active_leads_newest_first,
    migrate_twice_is_a_no_op,
    plain_sql_inserts_use_the_defaults,
    unicode_round_trips,
    json_round_trips,
    json_numbers_round_trip_at_their_limits,
);

async fn postgres_db() -> TestDb {
    TestDb::postgres().await
}

async fn sqlite_db() -> TestDb {
    TestDb::sqlite()
}

async fn open(db: &TestDb) -> DynStore {
    let store = store::connect(&db.url).await.expect("connect");
    store.migrate().await.expect("migrate");
    store
}

/// A valid US number, distinct for each `n`.
fn phone(n: u32) -> Phone {
    Phone::parse(&format!("+1612978{n:04}"), Region::default()).expect("valid test number")
}

fn new_org(name: &str, n: u32) -> NewOrganization {
    NewOrganization {
        name: name.into(),
        phone_number: phone(n),
        timezone: "America/Chicago".into(),
        greeting_template: None,
    }
}

fn new_lead(organization_id: Uuid, n: u32) -> NewLead {
    NewLead {
        organization_id,
        phone_number: phone(n),
        customer_name: None,
        email: None,
        status: LeadStatus::New,
        notes: None,
        metadata: json!({}),
    }
}

fn new_conversation(lead_id: Uuid, started_at: Option<DateTime<Utc>>) -> NewConversation {
    NewConversation {
        lead_id,
        channel: Channel::Voice,
        external_id: None,
        summary: None,
        transcript: None,
        started_at,
        ended_at: None,
    }
}

fn call(organization_id: Uuid, caller: Phone, external_id: &str) -> CallRecord {
    CallRecord {
        organization_id,
        lead_id: None,
        caller,
        external_id: external_id.into(),
        summary: Some("Asked about prices.".into()),
        transcript: Some(json!([{"role": "agent", "message": "Hello"}])),
        started_at: Some(at(0)),
        ended_at: Some(at(90_000)),
    }
}

/// A fixed instant plus `ms` milliseconds (both backends keep milliseconds exactly).
fn at(ms: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 14, 15, 9, 26).unwrap() + Duration::milliseconds(ms)
}

#[track_caller]
fn assert_not_found<T: std::fmt::Debug>(result: Result<T, StoreError>) {
    assert!(
        matches!(result, Err(StoreError::NotFound)),
        "expected NotFound, got {result:?}"
    );
}

/// A conflict, named by the constraint as the Postgres schema names it (both backends: the
/// HTTP layer words its message from the name).
#[track_caller]
fn assert_conflict<T: std::fmt::Debug>(result: Result<T, StoreError>, constraint: &str) {
    match result {
        Err(StoreError::Conflict(name)) => assert_eq!(name, constraint),
        other => panic!("expected Conflict({constraint}), got {other:?}"),
    }
}

#[track_caller]
fn assert_invalid_reference<T: std::fmt::Debug>(result: Result<T, StoreError>, constraint: &str) {
    match result {
        Err(StoreError::InvalidReference(name)) => assert_eq!(name, constraint),
        other => panic!("expected InvalidReference({constraint}), got {other:?}"),
    }
}

async fn organizations_crud(db: &TestDb, store: DynStore) {
    let expected_backend = if db.is_postgres() {
        "postgres"
    } else {
        "sqlite"
    };
    assert_eq!(store.backend(), expected_backend);
    store.ping().await.expect("ping");

    let created = store
        .create_organization(NewOrganization {
            greeting_template: Some("Hi {customer_name}".into()),
            ..new_org("Acme Plumbing", 1)
        })
        .await
        .unwrap();
    assert_eq!(created.name, "Acme Plumbing");
    assert_eq!(created.phone_number, phone(1));
    assert_eq!(created.timezone, "America/Chicago");
    assert_eq!(
        created.greeting_template.as_deref(),
        Some("Hi {customer_name}")
    );
    assert_eq!(created.created_at, created.updated_at);

    let fetched = store.organization(created.id).await.unwrap();
    assert_eq!(fetched, created);

    let other = store
        .create_organization(new_org("Other", 2))
        .await
        .unwrap();
    assert_ne!(other.id, created.id);

    let updated = store
        .update_organization(
            created.id,
            OrganizationPatch {
                name: Some("Acme Plumbing & Heating".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .after;
    assert_eq!(updated.name, "Acme Plumbing & Heating");
    assert_eq!(store.organization(created.id).await.unwrap(), updated);
    // An update reports the row as it was too (the cache invalidates what both show).
    let change = store
        .update_organization(
            created.id,
            OrganizationPatch {
                phone_number: Some(phone(9876)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(change.before, updated);
    assert_eq!(change.after.phone_number, phone(9876));

    let deleted = store.delete_organization(created.id).await.unwrap();
    assert_eq!(deleted, change.after, "delete returns the deleted row");
    assert_not_found(store.organization(created.id).await);
    assert_not_found(store.delete_organization(created.id).await);
    // The other one is untouched.
    assert_eq!(store.organization(other.id).await.unwrap(), other);
}

async fn organization_phone_is_unique(_db: &TestDb, store: DynStore) {
    let first = store
        .create_organization(new_org("First", 1))
        .await
        .unwrap();
    assert_conflict(
        store.create_organization(new_org("Second", 1)).await,
        "organizations_phone_number_key",
    );

    // Changing another organization's number to a taken one conflicts too, and changes nothing.
    let second = store
        .create_organization(new_org("Second", 2))
        .await
        .unwrap();
    assert_conflict(
        store
            .update_organization(
                second.id,
                OrganizationPatch {
                    phone_number: Some(phone(1)),
                    name: Some("Renamed".into()),
                    ..Default::default()
                },
            )
            .await,
        "organizations_phone_number_key",
    );
    assert_eq!(store.organization(second.id).await.unwrap(), second);
    assert_eq!(store.organization(first.id).await.unwrap(), first);

    // Once the number is free again it can be taken.
    store.delete_organization(first.id).await.unwrap();
    let moved = store
        .update_organization(
            second.id,
            OrganizationPatch {
                phone_number: Some(phone(1)),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .after;
    assert_eq!(moved.phone_number, phone(1));
}

async fn organization_by_phone_hit_and_miss(_db: &TestDb, store: DynStore) {
    let org = store.create_organization(new_org("Acme", 1)).await.unwrap();
    store
        .create_organization(new_org("Other", 2))
        .await
        .unwrap();
    assert_eq!(
        store.organization_by_phone(&phone(1)).await.unwrap(),
        Some(org.clone())
    );
    assert_eq!(store.organization_by_phone(&phone(3)).await.unwrap(), None);

    // A lead's number is not an organization's.
    store.create_lead(new_lead(org.id, 4)).await.unwrap();
    assert_eq!(store.organization_by_phone(&phone(4)).await.unwrap(), None);
}

async fn organization_patch_semantics(_db: &TestDb, store: DynStore) {
    let org = store
        .create_organization(NewOrganization {
            greeting_template: Some("Welcome!".into()),
            ..new_org("Acme", 1)
        })
        .await
        .unwrap();

    // An empty patch changes nothing.
    let same = store
        .update_organization(org.id, OrganizationPatch::default())
        .await
        .unwrap()
        .after;
    assert_eq!(same, org);

    // Absent fields stay, given ones are set.
    let patched = store
        .update_organization(
            org.id,
            OrganizationPatch {
                timezone: Some("Europe/Berlin".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .after;
    assert_eq!(patched.timezone, "Europe/Berlin");
    assert_eq!(patched.name, org.name);
    assert_eq!(patched.phone_number, org.phone_number);
    assert_eq!(patched.greeting_template.as_deref(), Some("Welcome!"));
    assert_eq!(patched.created_at, org.created_at);
    assert!(patched.updated_at >= org.updated_at);
    assert!(patched.updated_at >= patched.created_at);

    // Some(None) clears an optional field.
    let cleared = store
        .update_organization(
            org.id,
            OrganizationPatch {
                greeting_template: Some(None),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .after;
    assert_eq!(cleared.greeting_template, None);
    assert_eq!(cleared.timezone, "Europe/Berlin");
    assert!(cleared.updated_at >= patched.updated_at);

    let set_again = store
        .update_organization(
            org.id,
            OrganizationPatch {
                greeting_template: Some(Some("Hello again".into())),
                name: Some("Acme 2".into()),
                phone_number: Some(phone(9)),
                timezone: Some("UTC".into()),
            },
        )
        .await
        .unwrap()
        .after;
    assert_eq!(set_again.greeting_template.as_deref(), Some("Hello again"));
    assert_eq!(set_again.name, "Acme 2");
    assert_eq!(set_again.phone_number, phone(9));
    assert_eq!(set_again.timezone, "UTC");
    assert_eq!(store.organization(org.id).await.unwrap(), set_again);
    assert_eq!(
        store.organization_by_phone(&phone(9)).await.unwrap(),
        Some(set_again)
    );
    assert_eq!(store.organization_by_phone(&phone(1)).await.unwrap(), None);
}

async fn missing_ids_are_not_found(_db: &TestDb, store: DynStore) {
    let missing = Uuid::new_v4();
    assert_not_found(store.organization(missing).await);
    assert_not_found(
        store
            .update_organization(
                missing,
                OrganizationPatch {
                    name: Some("x".into()),
                    ..Default::default()
                },
            )
            .await,
    );
    assert_not_found(
        store
            .update_organization(missing, OrganizationPatch::default())
            .await,
    );
    assert_not_found(store.delete_organization(missing).await);
    assert_not_found(store.lead(missing).await);
    assert_not_found(
        store
            .update_lead(
                missing,
                LeadPatch {
                    status: Some(LeadStatus::Lost),
                    ..Default::default()
                },
            )
            .await,
    );
    assert_not_found(store.delete_lead(missing).await);
    assert_not_found(
        store
            .create_conversation(new_conversation(missing, None))
            .await,
    );
    // Reads of a missing lead's history are empty, not errors.
    assert!(store
        .conversations(missing, 10, 0)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store.conversation_stats(missing).await.unwrap(),
        Default::default()
    );
}

async fn lead_with_unknown_organization_is_invalid_reference(_db: &TestDb, store: DynStore) {
    let result = store.create_lead(new_lead(Uuid::new_v4(), 1)).await;
    assert_invalid_reference(result, "leads_organization_id_fkey");
}

async fn lead_phone_is_unique_per_organization(_db: &TestDb, store: DynStore) {
    let acme = store.create_organization(new_org("Acme", 1)).await.unwrap();
    let globex = store
        .create_organization(new_org("Globex", 2))
        .await
        .unwrap();
    let empty = store
        .create_organization(new_org("Empty", 3))
        .await
        .unwrap();

    let lead = store
        .create_lead(NewLead {
            customer_name: Some("Maria Garcia".into()),
            email: Some("maria@example.com".into()),
            status: LeadStatus::Qualified,
            notes: Some("Prefers mornings".into()),
            ..new_lead(acme.id, 10)
        })
        .await
        .unwrap();
    assert_eq!(lead.organization_id, acme.id);
    assert_eq!(lead.phone_number, phone(10));
    assert_eq!(lead.customer_name.as_deref(), Some("Maria Garcia"));
    assert_eq!(lead.email.as_deref(), Some("maria@example.com"));
    assert_eq!(lead.status, LeadStatus::Qualified);
    assert_eq!(lead.notes.as_deref(), Some("Prefers mornings"));
    assert_eq!(lead.metadata, json!({}));
    assert_eq!(store.lead(lead.id).await.unwrap(), lead);

    // Same (organization, phone) again: conflict.
    assert_conflict(
        store.create_lead(new_lead(acme.id, 10)).await,
        "leads_organization_id_phone_number_key",
    );
    // Same phone in another organization: a different lead.
    let other = store.create_lead(new_lead(globex.id, 10)).await.unwrap();
    assert_ne!(other.id, lead.id);

    assert_eq!(
        store.lead_by_phone(acme.id, &phone(10)).await.unwrap(),
        Some(lead.clone())
    );
    assert_eq!(
        store.lead_by_phone(globex.id, &phone(10)).await.unwrap(),
        Some(other)
    );
    assert_eq!(
        store.lead_by_phone(empty.id, &phone(10)).await.unwrap(),
        None
    );
    assert_eq!(
        store.lead_by_phone(acme.id, &phone(11)).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .lead_by_phone(Uuid::new_v4(), &phone(10))
            .await
            .unwrap(),
        None
    );

    // Moving a lead onto a taken number in its organization conflicts, and changes nothing.
    let second = store.create_lead(new_lead(acme.id, 11)).await.unwrap();
    assert_conflict(
        store
            .update_lead(
                second.id,
                LeadPatch {
                    phone_number: Some(phone(10)),
                    ..Default::default()
                },
            )
            .await,
        "leads_organization_id_phone_number_key",
    );
    assert_eq!(store.lead(second.id).await.unwrap(), second);
}

async fn lead_patch_semantics(_db: &TestDb, store: DynStore) {
    let org = store.create_organization(new_org("Acme", 1)).await.unwrap();
    let lead = store
        .create_lead(NewLead {
            customer_name: Some("Maria".into()),
            email: Some("maria@example.com".into()),
            notes: Some("VIP".into()),
            metadata: json!({"source": "web"}),
            ..new_lead(org.id, 10)
        })
        .await
        .unwrap();

    let same = store
        .update_lead(lead.id, LeadPatch::default())
        .await
        .unwrap()
        .after;
    assert_eq!(same, lead);

    let patched = store
        .update_lead(
            lead.id,
            LeadPatch {
                status: Some(LeadStatus::Contacted),
                email: Some(None),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .after;
    assert_eq!(patched.status, LeadStatus::Contacted);
    assert_eq!(patched.email, None);
    // Absent fields unchanged.
    assert_eq!(patched.customer_name.as_deref(), Some("Maria"));
    assert_eq!(patched.notes.as_deref(), Some("VIP"));
    assert_eq!(patched.metadata, json!({"source": "web"}));
    assert_eq!(patched.phone_number, phone(10));
    assert_eq!(patched.organization_id, org.id);
    assert_eq!(patched.created_at, lead.created_at);
    assert!(patched.updated_at >= lead.updated_at);
    assert!(patched.updated_at >= patched.created_at);
    assert_eq!(store.lead(lead.id).await.unwrap(), patched);

    let patched = store
        .update_lead(
            lead.id,
            LeadPatch {
                phone_number: Some(phone(12)),
                customer_name: Some(Some("Maria García".into())),
                notes: Some(None),
                metadata: Some(json!({"source": "phone", "visits": 2})),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .after;
    assert_eq!(patched.phone_number, phone(12));
    assert_eq!(patched.customer_name.as_deref(), Some("Maria García"));
    assert_eq!(patched.notes, None);
    assert_eq!(patched.email, None);
    assert_eq!(patched.status, LeadStatus::Contacted);
    assert_eq!(patched.metadata, json!({"source": "phone", "visits": 2}));
    assert_eq!(store.lead_by_phone(org.id, &phone(10)).await.unwrap(), None);
    assert_eq!(
        store.lead_by_phone(org.id, &phone(12)).await.unwrap(),
        Some(patched)
    );

    // Every status is stored and read back.
    for &status in LeadStatus::ALL {
        let updated = store
            .update_lead(
                lead.id,
                LeadPatch {
                    status: Some(status),
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .after;
        assert_eq!(updated.status, status);
        assert_eq!(store.lead(lead.id).await.unwrap().status, status);
    }
}

async fn delete_organization_with_leads_conflicts(_db: &TestDb, store: DynStore) {
    let org = store.create_organization(new_org("Acme", 1)).await.unwrap();
    let lead = store.create_lead(new_lead(org.id, 10)).await.unwrap();
    store
        .create_conversation(new_conversation(lead.id, None))
        .await
        .unwrap();

    assert_conflict(
        store.delete_organization(org.id).await,
        "leads_organization_id_fkey",
    );
    assert_eq!(store.organization(org.id).await.unwrap(), org);
    assert_eq!(store.lead(lead.id).await.unwrap(), lead);

    store.delete_lead(lead.id).await.unwrap();
    store.delete_organization(org.id).await.unwrap();
    assert_not_found(store.organization(org.id).await);
}

async fn delete_lead_cascades_conversations(_db: &TestDb, store: DynStore) {
    let org = store.create_organization(new_org("Acme", 1)).await.unwrap();
    let lead = store.create_lead(new_lead(org.id, 10)).await.unwrap();
    let keep = store.create_lead(new_lead(org.id, 11)).await.unwrap();
    for i in 0..3 {
        store
            .create_conversation(NewConversation {
                external_id: Some(format!("conv_{i}")),
                ..new_conversation(lead.id, Some(at(i)))
            })
            .await
            .unwrap();
    }
    store
        .create_conversation(new_conversation(keep.id, None))
        .await
        .unwrap();

    let deleted = store.delete_lead(lead.id).await.unwrap();
    assert_eq!(deleted, lead);
    assert_not_found(store.lead(lead.id).await);
    assert_not_found(store.delete_lead(lead.id).await);
    assert!(store
        .conversations(lead.id, 10, 0)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.conversation_stats(lead.id).await.unwrap().count, 0);
    // The rows are really gone: their external ids are free again.
    store
        .create_conversation(NewConversation {
            external_id: Some("conv_0".into()),
            ..new_conversation(keep.id, None)
        })
        .await
        .unwrap();
    assert_eq!(store.conversation_stats(keep.id).await.unwrap().count, 2);
}

async fn conversations_newest_first_paged_with_stable_ties(_db: &TestDb, store: DynStore) {
    let org = store.create_organization(new_org("Acme", 1)).await.unwrap();
    let lead = store.create_lead(new_lead(org.id, 10)).await.unwrap();
    let other = store.create_lead(new_lead(org.id, 11)).await.unwrap();

    // Several conversations share a start time: the id breaks the tie.
    let starts = [0, 1_000, 1_000, 3_000, 1_000, 2_000, 1_000, 0];
    let channels = [Channel::Voice, Channel::Sms, Channel::Chat, Channel::Email];
    let mut created = Vec::new();
    for (i, &ms) in starts.iter().enumerate() {
        let c = store
            .create_conversation(NewConversation {
                channel: channels[i % channels.len()],
                ..new_conversation(lead.id, Some(at(ms)))
            })
            .await
            .unwrap();
        assert_eq!(c.started_at, at(ms));
        created.push(c);
    }
    store
        .create_conversation(new_conversation(other.id, Some(at(10_000))))
        .await
        .unwrap();

    let mut expected = created.clone();
    expected.sort_by_key(|c| std::cmp::Reverse((c.started_at, c.id)));

    let all = store.conversations(lead.id, 100, 0).await.unwrap();
    assert_eq!(all, expected);
    // Every channel counts.
    let seen: HashSet<Channel> = all.iter().map(|c| c.channel).collect();
    assert_eq!(seen.len(), 4);

    // Pages of 3 neither overlap nor skip, and read the same order.
    let mut paged = Vec::new();
    for offset in (0..).step_by(3) {
        let page = store.conversations(lead.id, 3, offset).await.unwrap();
        assert!(page.len() <= 3);
        if page.is_empty() {
            break;
        }
        paged.extend(page);
    }
    assert_eq!(paged, expected);
    let ids: HashSet<Uuid> = paged.iter().map(|c| c.id).collect();
    assert_eq!(ids.len(), starts.len());

    // The same page twice is the same page.
    assert_eq!(
        store.conversations(lead.id, 2, 2).await.unwrap(),
        expected[2..4].to_vec()
    );
    assert!(store.conversations(lead.id, 0, 0).await.unwrap().is_empty());
    assert!(store
        .conversations(lead.id, 5, 100)
        .await
        .unwrap()
        .is_empty());
}

async fn conversation_stats_count_and_latest(_db: &TestDb, store: DynStore) {
    let org = store.create_organization(new_org("Acme", 1)).await.unwrap();
    let lead = store.create_lead(new_lead(org.id, 10)).await.unwrap();
    let other = store.create_lead(new_lead(org.id, 11)).await.unwrap();

    let stats = store.conversation_stats(lead.id).await.unwrap();
    assert_eq!(stats.count, 0);
    assert_eq!(stats.last_started_at, None);

    for ms in [5_000, 60_000, 1_000] {
        store
            .create_conversation(new_conversation(lead.id, Some(at(ms))))
            .await
            .unwrap();
    }
    store
        .create_conversation(new_conversation(other.id, Some(at(120_000))))
        .await
        .unwrap();

    let stats = store.conversation_stats(lead.id).await.unwrap();
    assert_eq!(stats.count, 3);
    assert_eq!(stats.last_started_at, Some(at(60_000)));
}

async fn conversation_takes_the_leads_organization_and_defaults(_db: &TestDb, store: DynStore) {
    let org = store.create_organization(new_org("Acme", 1)).await.unwrap();
    let lead = store.create_lead(new_lead(org.id, 10)).await.unwrap();

    let before = Utc::now();
    let plain = store
        .create_conversation(new_conversation(lead.id, None))
        .await
        .unwrap();
    let after = Utc::now();
    assert_eq!(plain.lead_id, lead.id);
    assert_eq!(plain.organization_id, org.id);
    assert_eq!(plain.channel, Channel::Voice);
    assert_eq!(plain.external_id, None);
    assert_eq!(plain.summary, None);
    assert_eq!(plain.transcript, None);
    assert_eq!(plain.ended_at, None);
    // started_at defaults to now (the database's clock: allow for skew and rounding).
    assert!(plain.started_at > before - Duration::seconds(60));
    assert!(plain.started_at < after + Duration::seconds(60));

    let full = store
        .create_conversation(NewConversation {
            lead_id: lead.id,
            channel: Channel::Sms,
            external_id: Some("sms_123".into()),
            summary: Some("Confirmed the appointment.".into()),
            transcript: Some(json!([{"role": "user", "message": "Yes"}])),
            started_at: Some(at(0)),
            ended_at: Some(at(45_500)),
        })
        .await
        .unwrap();
    assert_eq!(full.organization_id, org.id);
    assert_eq!(full.channel, Channel::Sms);
    assert_eq!(full.external_id.as_deref(), Some("sms_123"));
    assert_eq!(full.summary.as_deref(), Some("Confirmed the appointment."));
    assert_eq!(
        full.transcript,
        Some(json!([{"role": "user", "message": "Yes"}]))
    );
    assert_eq!(full.started_at, at(0));
    assert_eq!(full.ended_at, Some(at(45_500)));

    let listed = store.conversations(lead.id, 10, 0).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.contains(&plain));
    assert!(listed.contains(&full));
}

async fn duplicate_external_id_conflicts(_db: &TestDb, store: DynStore) {
    let org = store.create_organization(new_org("Acme", 1)).await.unwrap();
    let lead = store.create_lead(new_lead(org.id, 10)).await.unwrap();
    let other = store.create_lead(new_lead(org.id, 11)).await.unwrap();
    let with_id = |lead_id| NewConversation {
        external_id: Some("conv_abc".into()),
        ..new_conversation(lead_id, None)
    };
    store.create_conversation(with_id(lead.id)).await.unwrap();
    assert_conflict(
        store.create_conversation(with_id(lead.id)).await,
        "conversations_external_id_key",
    );
    assert_conflict(
        store.create_conversation(with_id(other.id)).await,
        "conversations_external_id_key",
    );
    // Conversations without an external id never conflict.
    store
        .create_conversation(new_conversation(lead.id, None))
        .await
        .unwrap();
    store
        .create_conversation(new_conversation(lead.id, None))
        .await
        .unwrap();
    assert_eq!(store.conversation_stats(lead.id).await.unwrap().count, 3);
    assert_eq!(store.conversation_stats(other.id).await.unwrap().count, 0);
}

async fn record_call_creates_the_lead_and_is_idempotent(_db: &TestDb, store: DynStore) {
    let org = store.create_organization(new_org("Acme", 1)).await.unwrap();
    assert_eq!(store.lead_by_phone(org.id, &phone(10)).await.unwrap(), None);

    let first = store
        .record_call(call(org.id, phone(10), "conv_1"))
        .await
        .unwrap();
    assert!(first.lead_created);
    assert!(first.conversation_created);
    assert_eq!(first.organization_id, org.id);

    let lead = store
        .lead_by_phone(org.id, &phone(10))
        .await
        .unwrap()
        .expect("the caller's lead was created");
    assert_eq!(lead.id, first.lead_id);
    assert_eq!(lead.status, LeadStatus::New);
    assert_eq!(lead.customer_name, None);
    assert_eq!(lead.metadata, json!({}));

    let stored = store.conversations(lead.id, 10, 0).await.unwrap();
    assert_eq!(stored.len(), 1);
    let conversation = &stored[0];
    assert_eq!(conversation.id, first.conversation_id);
    assert_eq!(conversation.organization_id, org.id);
    assert_eq!(conversation.channel, Channel::Voice);
    assert_eq!(conversation.external_id.as_deref(), Some("conv_1"));
    assert_eq!(conversation.summary.as_deref(), Some("Asked about prices."));
    assert_eq!(
        conversation.transcript,
        Some(json!([{"role": "agent", "message": "Hello"}]))
    );
    assert_eq!(conversation.started_at, at(0));
    assert_eq!(conversation.ended_at, Some(at(90_000)));

    // The same event again: nothing new, and the outcome names what is stored.
    let again = store
        .record_call(call(org.id, phone(10), "conv_1"))
        .await
        .unwrap();
    assert!(!again.lead_created);
    assert!(!again.conversation_created);
    assert_eq!(again.lead_id, first.lead_id);
    assert_eq!(again.conversation_id, first.conversation_id);
    assert_eq!(store.conversation_stats(lead.id).await.unwrap().count, 1);

    // A replay does not create a lead for another caller either.
    let replay = store
        .record_call(call(org.id, phone(20), "conv_1"))
        .await
        .unwrap();
    assert!(!replay.conversation_created);
    assert!(!replay.lead_created);
    assert_eq!(replay.conversation_id, first.conversation_id);
    assert_eq!(store.lead_by_phone(org.id, &phone(20)).await.unwrap(), None);

    // A new call from the same caller joins the same lead.
    let second = store
        .record_call(CallRecord {
            started_at: Some(at(86_400_000)),
            ..call(org.id, phone(10), "conv_2")
        })
        .await
        .unwrap();
    assert!(!second.lead_created);
    assert!(second.conversation_created);
    assert_eq!(second.lead_id, lead.id);
    assert_ne!(second.conversation_id, first.conversation_id);
    let stats = store.conversation_stats(lead.id).await.unwrap();
    assert_eq!(stats.count, 2);
    assert_eq!(stats.last_started_at, Some(at(86_400_000)));
    // Recording a call counts as activity on the lead.
    let after = store.lead(lead.id).await.unwrap();
    assert!(after.updated_at >= lead.updated_at);

    // started_at defaults to now.
    let undated = store
        .record_call(CallRecord {
            started_at: None,
            ended_at: None,
            ..call(org.id, phone(10), "conv_3")
        })
        .await
        .unwrap();
    let newest = &store.conversations(lead.id, 1, 0).await.unwrap()[0];
    assert_eq!(newest.id, undated.conversation_id);
    assert!(newest.started_at > Utc::now() - Duration::seconds(60));
}

async fn record_call_finds_the_lead_by_id_within_the_organization(_db: &TestDb, store: DynStore) {
    let acme = store.create_organization(new_org("Acme", 1)).await.unwrap();
    let globex = store
        .create_organization(new_org("Globex", 2))
        .await
        .unwrap();
    let acme_lead = store.create_lead(new_lead(acme.id, 10)).await.unwrap();
    let globex_lead = store.create_lead(new_lead(globex.id, 30)).await.unwrap();

    // The lead named at the start of the call wins over the caller's number.
    let by_id = store
        .record_call(CallRecord {
            lead_id: Some(acme_lead.id),
            ..call(acme.id, phone(11), "conv_1")
        })
        .await
        .unwrap();
    assert_eq!(by_id.lead_id, acme_lead.id);
    assert!(!by_id.lead_created);
    assert!(by_id.conversation_created);
    assert_eq!(
        store.lead_by_phone(acme.id, &phone(11)).await.unwrap(),
        None
    );

    // Another organization's lead is ignored: the caller's number decides (an existing lead)...
    let fallback = store
        .record_call(CallRecord {
            lead_id: Some(globex_lead.id),
            ..call(acme.id, phone(10), "conv_2")
        })
        .await
        .unwrap();
    assert_eq!(fallback.lead_id, acme_lead.id);
    assert_eq!(fallback.organization_id, acme.id);
    assert!(!fallback.lead_created);

    // ... or a new one.
    let created = store
        .record_call(CallRecord {
            lead_id: Some(globex_lead.id),
            ..call(acme.id, phone(12), "conv_3")
        })
        .await
        .unwrap();
    assert!(created.lead_created);
    assert_ne!(created.lead_id, globex_lead.id);
    let new_lead = store.lead(created.lead_id).await.unwrap();
    assert_eq!(new_lead.organization_id, acme.id);
    assert_eq!(new_lead.phone_number, phone(12));

    // An unknown lead id falls back the same way.
    let unknown = store
        .record_call(CallRecord {
            lead_id: Some(Uuid::new_v4()),
            ..call(acme.id, phone(10), "conv_4")
        })
        .await
        .unwrap();
    assert_eq!(unknown.lead_id, acme_lead.id);

    assert_eq!(
        store.conversation_stats(acme_lead.id).await.unwrap().count,
        3
    );
    assert_eq!(
        store
            .conversation_stats(globex_lead.id)
            .await
            .unwrap()
            .count,
        0
    );
    let conversations = store.conversations(acme_lead.id, 10, 0).await.unwrap();
    assert!(conversations.iter().all(|c| c.organization_id == acme.id));
}

async fn record_call_for_unknown_organization_is_invalid_reference(_db: &TestDb, store: DynStore) {
    let result = store
        .record_call(call(Uuid::new_v4(), phone(10), "conv_1"))
        .await;
    assert_invalid_reference(result, "leads_organization_id_fkey");
    // Nothing was kept: the same external id can still be recorded for a real organization.
    let org = store.create_organization(new_org("Acme", 1)).await.unwrap();
    let outcome = store
        .record_call(call(org.id, phone(10), "conv_1"))
        .await
        .unwrap();
    assert!(outcome.conversation_created);
}

/// Replays race: the same event, and several events from one new caller, recorded at once.
async fn record_call_concurrently_creates_one_lead_and_one_conversation_per_event(
    _db: &TestDb,
    store: DynStore,
) {
    let org = store.create_organization(new_org("Acme", 1)).await.unwrap();

    let same_event: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.record_call(call(org.id, phone(10), "conv_x")).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in same_event {
        outcomes.push(task.await.unwrap().unwrap());
    }
    assert_eq!(
        outcomes.iter().filter(|o| o.conversation_created).count(),
        1
    );
    assert_eq!(outcomes.iter().filter(|o| o.lead_created).count(), 1);
    let first = &outcomes[0];
    assert!(outcomes
        .iter()
        .all(|o| o.conversation_id == first.conversation_id && o.lead_id == first.lead_id));
    assert_eq!(
        store.conversation_stats(first.lead_id).await.unwrap().count,
        1
    );

    let many_events: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .record_call(call(org.id, phone(11), &format!("conv_{i}")))
                    .await
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in many_events {
        outcomes.push(task.await.unwrap().unwrap());
    }
    assert!(outcomes.iter().all(|o| o.conversation_created));
    assert_eq!(outcomes.iter().filter(|o| o.lead_created).count(), 1);
    let lead = store
        .lead_by_phone(org.id, &phone(11))
        .await
        .unwrap()
        .unwrap();
    assert!(outcomes.iter().all(|o| o.lead_id == lead.id));
    assert_eq!(store.conversation_stats(lead.id).await.unwrap().count, 8);
}

async fn recently_active_leads_newest_first(_db: &TestDb, store: DynStore) {
    assert!(store.recently_active_leads(10).await.unwrap().is_empty());

    let org = store.create_organization(new_org("Acme", 1)).await.unwrap();
    let a = store.create_lead(new_lead(org.id, 10)).await.unwrap();
    let b = store.create_lead(new_lead(org.id, 11)).await.unwrap();
    let c = store.create_lead(new_lead(org.id, 12)).await.unwrap();
    let d = store.create_lead(new_lead(org.id, 13)).await.unwrap();
    // Conversations dated after every update make the order explicit: a, then c, then b. d has
    // none, and its updated_at (now) is older than all of them.
    let future = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap()
        + Duration::hours(1);
    for (lead, hours) in [(&a, 3), (&a, 1), (&b, 1), (&c, 2)] {
        store
            .create_conversation(new_conversation(
                lead.id,
                Some(future + Duration::hours(hours)),
            ))
            .await
            .unwrap();
    }

    assert_eq!(
        store.recently_active_leads(10).await.unwrap(),
        vec![a.id, c.id, b.id, d.id]
    );
    assert_eq!(
        store.recently_active_leads(3).await.unwrap(),
        vec![a.id, c.id, b.id]
    );
    // a has the least recent updated_at of all, but the most recent conversation.
    assert_eq!(store.recently_active_leads(1).await.unwrap(), vec![a.id]);
    assert!(store.recently_active_leads(0).await.unwrap().is_empty());

    // Deleted leads are gone from the list.
    store.delete_lead(c.id).await.unwrap();
    assert_eq!(
        store.recently_active_leads(10).await.unwrap(),
        vec![a.id, b.id, d.id]
    );
}

async fn migrate_twice_is_a_no_op(_db: &TestDb, store: DynStore) {
    let org = store.create_organization(new_org("Acme", 1)).await.unwrap();
    store.migrate().await.expect("second migrate");
    store.migrate().await.expect("third migrate");
    assert_eq!(store.organization(org.id).await.unwrap(), org);
}

/// What other writers do: plain SQL with only the required columns. The defaults fill in ids,
/// timestamps, status and metadata, and the store reads the rows.
async fn plain_sql_inserts_use_the_defaults(db: &TestDb, store: DynStore) {
    let org_phone = phone(1).to_string();
    let lead_phone = phone(10).to_string();
    let (org_id, lead_id, old_conversation) = if db.is_postgres() {
        let mut conn = db.pg_connection().await;
        let org_id: Uuid = sqlx::query_scalar(
            "insert into organizations (name, phone_number) values ('Direct Co', $1) returning id",
        )
        .bind(&org_phone)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        let lead_id: Uuid = sqlx::query_scalar(
            "insert into leads (organization_id, phone_number) values ($1, $2) returning id",
        )
        .bind(org_id)
        .bind(&lead_phone)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        sqlx::query(
            "insert into conversations (lead_id, organization_id, channel) values ($1, $2, 'sms')",
        )
        .bind(lead_id)
        .bind(org_id)
        .execute(&mut conn)
        .await
        .unwrap();
        let old: Uuid = sqlx::query_scalar(
            "insert into conversations (lead_id, organization_id, channel, started_at) \
             values ($1, $2, 'voice', '2020-01-02 03:04:05+00') returning id",
        )
        .bind(lead_id)
        .bind(org_id)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        conn.close().await.ok();
        (org_id, lead_id, old)
    } else {
        let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
        let org_id: String = sqlx::query_scalar(
            "insert into organizations (name, phone_number) values ('Direct Co', ?1) returning id",
        )
        .bind(&org_phone)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        let lead_id: String = sqlx::query_scalar(
            "insert into leads (organization_id, phone_number) values (?1, ?2) returning id",
        )
        .bind(&org_id)
        .bind(&lead_phone)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        sqlx::query(
            "insert into conversations (lead_id, organization_id, channel) values (?1, ?2, 'sms')",
        )
        .bind(&lead_id)
        .bind(&org_id)
        .execute(&mut conn)
        .await
        .unwrap();
        // CURRENT_TIMESTAMP's form: no `T`, no milliseconds, no zone (UTC).
        let old: String = sqlx::query_scalar(
            "insert into conversations (lead_id, organization_id, channel, started_at) \
             values (?1, ?2, 'voice', '2020-01-02 03:04:05') returning id",
        )
        .bind(&lead_id)
        .bind(&org_id)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        for id in [&org_id, &lead_id, &old] {
            assert_eq!(id.len(), 36, "{id}");
            assert_eq!(id, &id.to_lowercase());
        }
        conn.close().await.ok();
        let parse = |s: &str| Uuid::parse_str(s).unwrap();
        (parse(&org_id), parse(&lead_id), parse(&old))
    };
    for id in [org_id, lead_id, old_conversation] {
        assert_eq!(id.get_version_num(), 4, "{id}");
        assert_eq!(id.get_variant(), uuid::Variant::RFC4122, "{id}");
    }

    let org = store.organization(org_id).await.unwrap();
    assert_eq!(org.name, "Direct Co");
    assert_eq!(org.phone_number, phone(1));
    assert_eq!(org.timezone, "UTC");
    assert_eq!(org.greeting_template, None);
    assert!(org.created_at > Utc::now() - Duration::hours(1));
    assert_eq!(
        store.organization_by_phone(&phone(1)).await.unwrap(),
        Some(org)
    );

    let lead = store
        .lead_by_phone(org_id, &phone(10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lead.id, lead_id);
    assert_eq!(lead.status, LeadStatus::New);
    assert_eq!(lead.metadata, json!({}));
    assert_eq!(lead.customer_name, None);
    assert!(lead.created_at > Utc::now() - Duration::hours(1));

    let conversations = store.conversations(lead_id, 10, 0).await.unwrap();
    assert_eq!(conversations.len(), 2);
    let (recent, old) = (&conversations[0], &conversations[1]);
    assert_eq!(recent.channel, Channel::Sms);
    assert_eq!(recent.organization_id, org_id);
    assert!(recent.started_at > Utc::now() - Duration::hours(1));
    assert_eq!(old.id, old_conversation);
    assert_eq!(
        old.started_at,
        Utc.with_ymd_and_hms(2020, 1, 2, 3, 4, 5).unwrap()
    );
    let stats = store.conversation_stats(lead_id).await.unwrap();
    assert_eq!(stats.count, 2);
    assert_eq!(stats.last_started_at, Some(recent.started_at));
    // Conversations in the store's own form sort by time among the others, just before and just
    // after the hand-written one (in SQLite, comparing the texts would get both wrong).
    let just_before = store
        .create_conversation(new_conversation(
            lead_id,
            Some(Utc.with_ymd_and_hms(2020, 1, 2, 3, 4, 4).unwrap() + Duration::milliseconds(500)),
        ))
        .await
        .unwrap();
    let just_after = store
        .create_conversation(new_conversation(
            lead_id,
            Some(Utc.with_ymd_and_hms(2020, 1, 2, 3, 4, 5).unwrap() + Duration::milliseconds(1)),
        ))
        .await
        .unwrap();
    let ids: Vec<Uuid> = store
        .conversations(lead_id, 10, 0)
        .await
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(ids, vec![recent.id, just_after.id, old.id, just_before.id]);
    assert_eq!(
        store.conversations(lead_id, 1, 2).await.unwrap()[0].started_at,
        Utc.with_ymd_and_hms(2020, 1, 2, 3, 4, 5).unwrap()
    );

    // A direct UPDATE moves updated_at (trigger), unless it sets updated_at itself.
    if db.is_postgres() {
        let mut conn = db.pg_connection().await;
        sqlx::query("update leads set updated_at = '2020-01-01 00:00:00+00' where id = $1")
            .bind(lead_id)
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.ok();
    } else {
        let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
        sqlx::query("update leads set updated_at = '2020-01-01 00:00:00' where id = ?1")
            .bind(lead_id.to_string())
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.ok();
    }
    let old_lead = store.lead(lead_id).await.unwrap();
    assert_eq!(
        old_lead.updated_at,
        Utc.with_ymd_and_hms(2020, 1, 1, 0, 0, 0).unwrap()
    );
    if db.is_postgres() {
        let mut conn = db.pg_connection().await;
        sqlx::query("update leads set notes = 'edited by hand' where id = $1")
            .bind(lead_id)
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.ok();
    } else {
        let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
        sqlx::query("update leads set notes = 'edited by hand' where id = ?1")
            .bind(lead_id.to_string())
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.ok();
    }
    let edited = store.lead(lead_id).await.unwrap();
    assert_eq!(edited.notes.as_deref(), Some("edited by hand"));
    assert!(edited.updated_at > Utc::now() - Duration::hours(1));
}

async fn unicode_round_trips(_db: &TestDb, store: DynStore) {
    let name = "Café Ñandú 🍕 東京 — «Zürich»";
    let template = "¡Hola {customer_name}! 👋 Ça va? Здравствуйте";
    let org = store
        .create_organization(NewOrganization {
            name: name.into(),
            greeting_template: Some(template.into()),
            ..new_org("x", 1)
        })
        .await
        .unwrap();
    assert_eq!(org.name, name);
    assert_eq!(org.greeting_template.as_deref(), Some(template));
    assert_eq!(store.organization(org.id).await.unwrap(), org);

    let customer = "Zoë Łukasz-O'Brien 😀";
    let notes = "line one\nline two\t\"quoted\" 'single' \\ backslash; DROP TABLE leads; --";
    let lead = store
        .create_lead(NewLead {
            customer_name: Some(customer.into()),
            email: Some("zoë@exämple.com".into()),
            notes: Some(notes.into()),
            ..new_lead(org.id, 10)
        })
        .await
        .unwrap();
    let fetched = store.lead(lead.id).await.unwrap();
    assert_eq!(fetched, lead);
    assert_eq!(fetched.customer_name.as_deref(), Some(customer));
    assert_eq!(fetched.email.as_deref(), Some("zoë@exämple.com"));
    assert_eq!(fetched.notes.as_deref(), Some(notes));

    let summary = "Résumé: 客户 wants 🍣 on Friday — “urgent”";
    let conversation = store
        .create_conversation(NewConversation {
            summary: Some(summary.into()),
            external_id: Some("conv_ünïcødé_🎧".into()),
            ..new_conversation(lead.id, Some(at(0)))
        })
        .await
        .unwrap();
    let listed = store.conversations(lead.id, 1, 0).await.unwrap();
    assert_eq!(listed, vec![conversation]);
    assert_eq!(listed[0].summary.as_deref(), Some(summary));
    assert_eq!(listed[0].external_id.as_deref(), Some("conv_ünïcødé_🎧"));
}

async fn json_round_trips(_db: &TestDb, store: DynStore) {
    let org = store.create_organization(new_org("Acme", 1)).await.unwrap();
    let metadata = json!({
        "source": "web",
        "tags": ["vip", "spanish", "🎉"],
        "score": 42,
        "ratio": 0.5,
        "negative": -7,
        "nested": {"ok": true, "none": null, "list": [1, [2, 3], {"deep": "yes"}]},
        "quote\"key": "value with \"quotes\" and \\ backslash",
        "empty": {}
    });
    let lead = store
        .create_lead(NewLead {
            metadata: metadata.clone(),
            ..new_lead(org.id, 10)
        })
        .await
        .unwrap();
    assert_eq!(lead.metadata, metadata);
    assert_eq!(store.lead(lead.id).await.unwrap().metadata, metadata);

    let replaced = json!({"source": "phone", "history": [{"at": "2026-01-01", "n": 1}]});
    let updated = store
        .update_lead(
            lead.id,
            LeadPatch {
                metadata: Some(replaced.clone()),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .after;
    assert_eq!(updated.metadata, replaced);
    assert_eq!(store.lead(lead.id).await.unwrap().metadata, replaced);

    // metadata is never null: a JSON null stores the default.
    let defaulted = store
        .create_lead(NewLead {
            metadata: serde_json::Value::Null,
            ..new_lead(org.id, 11)
        })
        .await
        .unwrap();
    assert_eq!(defaulted.metadata, json!({}));

    let transcript = json!([
        {"role": "agent", "message": "Hi! How can I help?", "time_in_call_secs": 0},
        {"role": "user", "message": "Hola 👋, ¿tienen citas?", "time_in_call_secs": 3.5},
        {"role": "agent", "message": null, "tool_calls": [{"name": "book", "params": {}}]}
    ]);
    let conversation = store
        .create_conversation(NewConversation {
            transcript: Some(transcript.clone()),
            ..new_conversation(lead.id, Some(at(0)))
        })
        .await
        .unwrap();
    assert_eq!(conversation.transcript, Some(transcript.clone()));
    assert_eq!(
        store.conversations(lead.id, 1, 0).await.unwrap()[0].transcript,
        Some(transcript)
    );
}

/// A database that does not answer is `Unavailable` promptly: the pool's acquire timeout is
/// bounded, so no caller waits out sqlx's 30 s default.
#[tokio::test]
async fn postgres_unreachable_is_unavailable() {
    let store = store::connect("postgres://root@127.0.0.1:1/x")
        .await
        .expect("connecting is lazy: the pool is built without a connection");
    let ping = tokio::time::timeout(std::time::Duration::from_secs(20), store.ping())
        .await
        .expect("ping gave up on its own");
    assert!(matches!(ping, Err(StoreError::Unavailable(_))), "{ping:?}");
    let migrate = tokio::time::timeout(std::time::Duration::from_secs(20), store.migrate())
        .await
        .expect("migrate gave up on its own");
    assert!(
        matches!(migrate, Err(StoreError::Unavailable(_))),
        "{migrate:?}"
    );
    assert!(store
        .lead(Uuid::new_v4())
        .await
        .unwrap_err()
        .is_unavailable());
}

#[tokio::test]
async fn unsupported_url_scheme_is_refused() {
    let result = store::connect("mysql://localhost/db").await;
    assert!(matches!(result, Err(StoreError::Other(_))));
}

/// `sqlite::memory:` is one database shared by the pool's connections, kept while the store
/// lives.
#[tokio::test]
async fn sqlite_in_memory_store_keeps_its_data() {
    let store = store::connect("sqlite::memory:").await.expect("connect");
    store.migrate().await.expect("migrate");
    let org = store.create_organization(new_org("Acme", 1)).await.unwrap();
    let lead = store.create_lead(new_lead(org.id, 10)).await.unwrap();
    // Concurrent reads may use other pooled connections: they see the same database.
    let reads: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.lead(lead.id).await })
        })
        .collect();
    for read in reads {
        assert_eq!(read.await.unwrap().unwrap(), lead);
    }
    assert_conflict(
        store.delete_organization(org.id).await,
        "leads_organization_id_fkey",
    );
}

/// Every number JSON input can carry comes back as it went in, at the edges of f64 and of the
/// integers: Postgres writes a jsonb number out in full (f64::MAX as 309 digits), and reading
/// that back must give the same f64, not fail after the write committed.
async fn json_numbers_round_trip_at_their_limits(_db: &TestDb, store: DynStore) {
    let org = store.create_organization(new_org("Acme", 1)).await.unwrap();
    let numbers = json!({
        "max": f64::MAX,
        "lowest": f64::MIN,
        "smallest_normal": f64::MIN_POSITIVE,
        "smallest": 5e-324,
        "tiny": -1.757204179114208e-97,
        "huge": 1.3744225705586883e149,
        "tenth": 0.1,
        "u64_max": u64::MAX,
        "i64_min": i64::MIN,
        "list": [f64::MAX, -f64::MAX, 1e308, 1e-308]
    });
    let lead = store
        .create_lead(NewLead {
            metadata: numbers.clone(),
            ..new_lead(org.id, 10)
        })
        .await
        .unwrap();
    assert_eq!(lead.metadata, numbers);
    assert_eq!(store.lead(lead.id).await.unwrap().metadata, numbers);

    let updated = store
        .update_lead(
            lead.id,
            LeadPatch {
                metadata: Some(json!({"again": numbers})),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .after;
    assert_eq!(updated.metadata, json!({"again": numbers}));

    let conversation = store
        .create_conversation(NewConversation {
            transcript: Some(numbers.clone()),
            ..new_conversation(lead.id, Some(at(0)))
        })
        .await
        .unwrap();
    assert_eq!(conversation.transcript, Some(numbers));
}
