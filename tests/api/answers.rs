//! Rendered webhook answers: a warm call is answered with the bytes rendered for its
//! (called number, caller) pair, and never once anything those bytes show has changed: a lead,
//! an organization, a new conversation, a write that bypasses hotline; on the instance that
//! wrote and on the others.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Map, Value};

use crate::cache::{call, pair_on, PROPAGATION, STRANGER};
use crate::support::app::TestApp;
use crate::support::db::TestDb;
use crate::support::infra::{eventually, redis_flags, redis_url, unique_prefix};
use crate::webhooks::{known_caller, CALLER};

fn served(app: &TestApp) -> u64 {
    app.cache.answer_stats().served.load(Ordering::Relaxed)
}

/// Two instances on one Postgres database and Redis, with `extra` flags.
async fn pair_with(extra: &[&str]) -> (TestApp, TestApp) {
    let mut flags = redis_flags(&redis_url(), &unique_prefix());
    flags.extend(["--webhook-deadline-ms", "5000"].map(String::from));
    flags.extend(extra.iter().map(|s| s.to_string()));
    pair_on(Arc::new(TestDb::postgres().await), &flags).await
}

/// Waits until `app` answers `caller` with a rendered answer that passes `check`.
async fn rendered_with(
    app: &TestApp,
    caller: &str,
    check: impl Fn(&Map<String, Value>) -> bool,
) -> bool {
    eventually(PROPAGATION, || async {
        let before = served(app);
        let (vars, source) = call(app, caller).await;
        check(&vars) && source == "l1" && served(app) > before
    })
    .await
}

/// Calls `caller` on `app` until the answer passes `check` (at once when `at_once`), then a
/// few more times: it must never go back.
async fn sees(
    app: &TestApp,
    caller: &str,
    at_once: bool,
    what: &str,
    check: impl Fn(&Map<String, Value>) -> bool + Copy,
) {
    let within = if at_once { Duration::ZERO } else { PROPAGATION };
    let seen = eventually(within, || async { check(&call(app, caller).await.0) }).await;
    assert!(seen, "{what} on {}", app.base);
    for _ in 0..5 {
        let (vars, source) = call(app, caller).await;
        assert!(check(&vars), "{what} went back ({source}): {vars:?}");
    }
}

#[tokio::test]
async fn each_kind_of_write_replaces_the_rendered_answer_on_both_instances() {
    let (a, b) = pair_with(&[]).await;
    let known = known_caller(&a).await;
    let lead = known.lead_id().to_string();
    let org = known.org_id().to_string();
    let warm = |name: &'static str| {
        let (a, b) = (&a, &b);
        async move {
            for app in [a, b] {
                assert!(
                    rendered_with(app, CALLER, |v| v["customer_name"] == name).await,
                    "{} serves a rendered answer for {name}",
                    app.base
                );
            }
        }
    };
    warm("Maria Lopez").await;

    // The lead, through hotline on one instance: that instance answers with it at once.
    let r = a
        .patch_admin(
            &format!("/api/leads/{lead}"),
            &json!({"customer_name": "Marisol Garcia"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let renamed = |v: &Map<String, Value>| {
        v["customer_name"] == "Marisol Garcia"
            && v["greeting"].as_str().unwrap().contains("Marisol")
    };
    sees(&a, CALLER, true, "the renamed lead", renamed).await;
    sees(&b, CALLER, false, "the renamed lead", renamed).await;
    warm("Marisol Garcia").await;

    // The organization, through the other instance.
    let r = b
        .patch_admin(
            &format!("/api/organizations/{org}"),
            &json!({"name": "Acme Smiles"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let org_renamed = |v: &Map<String, Value>| {
        v["organization_name"] == "Acme Smiles"
            && v["greeting"].as_str().unwrap().contains("Acme Smiles")
    };
    sees(&b, CALLER, true, "the renamed organization", org_renamed).await;
    sees(&a, CALLER, false, "the renamed organization", org_renamed).await;
    warm("Marisol Garcia").await;

    // A new conversation.
    let note = "Booked a cleaning for Tuesday";
    let r = a
        .post_admin(
            &format!("/api/leads/{lead}/conversations"),
            &json!({"channel": "voice", "summary": note}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let talked = |v: &Map<String, Value>| {
        v["conversation_count"] == 3 && v["previous_summary"].as_str().unwrap().contains(note)
    };
    sees(&a, CALLER, true, "the new conversation", talked).await;
    sees(&b, CALLER, false, "the new conversation", talked).await;
    warm("Marisol Garcia").await;

    // A write that bypasses hotline: both hear of it through the database.
    let mut conn = a.db.pg_connection().await;
    sqlx::query("update leads set status = 'customer' where id = $1::uuid")
        .bind(&lead)
        .execute(&mut conn)
        .await
        .unwrap();
    let promoted = |v: &Map<String, Value>| v["lead_status"] == "customer";
    sees(&a, CALLER, false, "the direct SQL write", promoted).await;
    sees(&b, CALLER, false, "the direct SQL write", promoted).await;
    warm("Marisol Garcia").await;

    // A deleted lead: its caller is a stranger again, everywhere.
    let r = b.delete_admin(&format!("/api/leads/{lead}")).await;
    assert_eq!(r.status(), 204);
    let forgotten = |v: &Map<String, Value>| v["customer_name"] == "" && v["lead_id"] == "";
    sees(&b, CALLER, true, "the deleted lead", forgotten).await;
    sees(&a, CALLER, false, "the deleted lead", forgotten).await;
}

#[tokio::test]
async fn an_unknown_caller_is_answered_from_a_rendered_answer_until_they_become_a_lead() {
    let (a, b) = pair_with(&[]).await;
    let org = a
        .create_org("Acme Dental", crate::webhooks::ORG_PHONE)
        .await;
    for app in [&a, &b] {
        assert!(rendered_with(app, STRANGER, |v| v["customer_name"] == "").await);
    }
    a.create_lead(
        org["id"].as_str().unwrap(),
        STRANGER,
        Some("Dana Whitfield"),
    )
    .await;
    let known = |v: &Map<String, Value>| v["customer_name"] == "Dana Whitfield";
    sees(&a, STRANGER, true, "the new lead", known).await;
    sees(&b, STRANGER, false, "the new lead", known).await;
}

#[tokio::test]
async fn a_rendered_answer_is_not_served_past_its_entries_refresh_point() {
    // Entries live 2 s; an answer rendered from them is served until the last fifth of that
    // at most, so that refresh-ahead still runs.
    let ttl = [
        "--ttl-org-s",
        "2",
        "--ttl-lead-s",
        "2",
        "--ttl-context-s",
        "2",
    ];
    let (a, _b) = pair_with(&ttl).await;
    known_caller(&a).await;
    assert!(rendered_with(&a, CALLER, |v| v["customer_name"] == "Maria Lopez").await);
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let before = served(&a);
    let (vars, _) = call(&a, CALLER).await;
    assert_eq!(vars["customer_name"], "Maria Lopez");
    assert_eq!(served(&a), before, "an expired answer was served");
}

#[tokio::test]
async fn without_tier_one_nothing_is_rendered_ahead() {
    let (a, _b) = pair_with(&["--l1-max-mb", "0"]).await;
    known_caller(&a).await;
    for _ in 0..5 {
        let (vars, source) = call(&a, CALLER).await;
        assert_eq!(vars["customer_name"], "Maria Lopez");
        assert_ne!(source, "l1");
    }
    assert_eq!(served(&a), 0);
    assert_eq!(a.cache.answer_stats().kept.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generations_evicted_from_the_mirror_are_confirmed_not_reloaded() {
    // 1 MiB of tier 1 leaves a quarter of it (about 1,200 generations) to the mirror: far
    // fewer than 2,000 callers' generations. What it evicts is asked of Redis again, never of
    // the database, and the mirror stays within its bytes.
    let db = Arc::new(TestDb::postgres().await);
    hotline::store::connect(&db.url)
        .await
        .expect("store opens")
        .migrate()
        .await
        .expect("store migrates");
    // Redis calls get a roomy timeout: on a busy machine the default 25 ms opens the breaker,
    // and reads that skip Redis rightly go to the database.
    let mut flags = redis_flags(&redis_url(), &unique_prefix());
    flags.extend(
        [
            "--webhook-deadline-ms",
            "5000",
            "--l1-max-mb",
            "1",
            "--redis-timeout-ms",
            "2000",
        ]
        .map(String::from),
    );
    hotline::seed::seed(
        &db.url,
        &hotline::seed::SeedOptions {
            organizations: 4,
            leads: 2_000,
            conversations_per_lead: 1,
            seed: 11,
        },
    )
    .await
    .expect("seeded");
    // Started after the seeding, so that its change notifications are not still arriving.
    let (app, _other) = pair_on(db.clone(), &flags).await;
    let mut conn = db.pg_connection().await;
    let pairs: Vec<(String, String)> = sqlx::query_as(
        "select l.phone_number, o.phone_number from leads l \
         join organizations o on o.id = l.organization_id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(pairs.len(), 2_000);
    let round = |pairs: Vec<(String, String)>| {
        let app = &app;
        async move {
            futures_util::stream::iter(pairs)
                .map(|(caller, called)| async move {
                    let body = crate::webhooks::initiation_body(&caller, &called);
                    let (vars, source) =
                        crate::webhooks::initiation_ok(app.initiate(&body).await).await;
                    assert_ne!(vars["lead_id"], "", "{caller} is a known caller");
                    source
                })
                .buffer_unordered(8)
                .collect::<Vec<String>>()
                .await
        }
    };
    let loads = |app: &TestApp| -> u64 {
        hotline::cache::Kind::ALL
            .iter()
            .map(|k| app.cache.stats(*k).loads.load(Ordering::Relaxed))
            .sum()
    };
    round(pairs.clone()).await;
    let after_first = loads(&app);
    assert!(after_first > 0, "the first round loaded from the database");
    let sources = round(pairs).await;
    assert_eq!(loads(&app), after_first, "the second round loaded again");
    assert!(
        sources.iter().all(|s| s == "l1" || s == "l2"),
        "every answer of the second round came from the cache: {:?}",
        sources.iter().filter(|s| *s != "l1" && *s != "l2").count()
    );
    let (entries, bytes) = app.cache.mirror_usage();
    assert!(
        bytes <= 256 * 1024,
        "the mirror holds {bytes} bytes in {entries} entries, over its 256 KiB"
    );
}
