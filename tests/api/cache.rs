//! The two-tier cache across instances: read-your-writes, propagation through Redis pub/sub
//! and Postgres LISTEN/NOTIFY, what a reader sees after each kind of write, the stale-fill
//! race, load coalescing, negative entries, TTLs, the tier-1 byte bound, manual invalidation,
//! and personal data leaving Redis on delete.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{join_all, BoxFuture};
use futures_util::StreamExt;
use hotline::cache::{CacheKey, Entry, GenKey, Kind};
use hotline::domain::{Phone, Region};
use serde_json::{json, Map, Value};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::support::app::{assert_error, spawn_app_full, spawn_app_on, TestApp};
use crate::support::counting::{Calls, CountingStore, Method};
use crate::support::db::TestDb;
use crate::support::infra::{
    eventually, redis_exists, redis_flags, redis_hget, redis_url, unique_prefix,
};
use crate::webhooks::{
    assert_defaults, initiation_body, initiation_ok, known_caller, CALLER, ORG_PHONE,
};

/// A caller no lead has (until a test creates one).
pub const STRANGER: &str = "+16127654321";

/// How long another instance may take to see a write (pub/sub or NOTIFY propagation is
/// milliseconds; the bound is generous for a busy 2-core machine).
pub const PROPAGATION: Duration = Duration::from_secs(3);

/// A webhook deadline with room to spare, for tests that check what is answered, not how
/// fast: a cold lookup on a busy test machine must not turn into a default answer.
pub fn roomy_deadline(mut flags: Vec<String>) -> Vec<String> {
    flags.extend(["--webhook-deadline-ms", "2000"].map(String::from));
    flags
}

pub fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Waits until the instance uses Redis (its breaker starts open and closes once Redis
/// answers) and hears invalidations: Redis pub/sub when it has Redis, Postgres LISTEN when it
/// runs on Postgres.
pub async fn wait_live(app: &TestApp) {
    let redis = app.cache.remote();
    let postgres = app.db.is_postgres();
    let live = eventually(Duration::from_secs(10), || async {
        let l = app.cache.liveness();
        redis.is_none_or(|r| r.breaker.is_closed() && l.pubsub.load(Ordering::Acquire))
            && (!postgres
                || (l.listen.load(Ordering::Acquire) && l.listen_settled.load(Ordering::Acquire)))
    })
    .await;
    assert!(
        live,
        "instance connected to Redis and subscribed to invalidations"
    );
}

/// Two instances on one database with the same flags.
pub async fn pair_on(db: Arc<TestDb>, flags: &[String]) -> (TestApp, TestApp) {
    let a = spawn_app_on(db.clone(), &strs(flags)).await;
    let b = spawn_app_on(db, &strs(flags)).await;
    wait_live(&a).await;
    wait_live(&b).await;
    (a, b)
}

/// Two instances on one Postgres database and one Redis prefix (returned).
async fn pair_with_prefix() -> (TestApp, TestApp, String) {
    let db = Arc::new(TestDb::postgres().await);
    let prefix = unique_prefix();
    let (a, b) = pair_on(db, &roomy_deadline(redis_flags(&redis_url(), &prefix))).await;
    (a, b, prefix)
}

/// Two instances on one SQLite file and one Redis prefix (returned): no change notifications,
/// so only a write's own invalidation and Redis pub/sub carry it.
async fn sqlite_pair_with_prefix() -> (TestApp, TestApp, String) {
    let db = Arc::new(TestDb::sqlite());
    let prefix = unique_prefix();
    let (a, b) = pair_on(db, &roomy_deadline(redis_flags(&redis_url(), &prefix))).await;
    (a, b, prefix)
}

/// Two instances on one Postgres database and one Redis prefix.
async fn pair() -> (TestApp, TestApp) {
    let (a, b, _) = pair_with_prefix().await;
    (a, b)
}

/// The initiation webhook for `caller` calling the organization's number: the checked
/// variables and `X-Hotline-Source`.
pub async fn call(app: &TestApp, caller: &str) -> (Map<String, Value>, String) {
    initiation_ok(app.initiate(&initiation_body(caller, ORG_PHONE)).await).await
}

pub async fn context_of(app: &TestApp, id: &str) -> Value {
    let r = app.get_admin(&format!("/api/leads/{id}/context")).await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn summary_of(app: &TestApp, id: &str) -> String {
    let r = app.get_admin(&format!("/api/leads/{id}/summary")).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    body["summary"].as_str().unwrap().to_string()
}

async fn lead_name(app: &TestApp, id: &str) -> (Option<String>, String) {
    let body = context_of(app, id).await;
    (
        body["lead"]["customer_name"].as_str().map(String::from),
        body["organization"]["name"].as_str().unwrap().to_string(),
    )
}

fn phone(s: &str) -> Phone {
    Phone::parse(s, Region::default()).expect("a phone number")
}

fn uuid(s: &str) -> Uuid {
    Uuid::parse_str(s).expect("a UUID")
}

/// Redis keys, as the app names them (see `CacheKey::redis_location`).
fn lead_hash(prefix: &str, lead: &str) -> String {
    format!("{prefix}:v1:lead:{lead}")
}

/// A lookup by phone: `tag` is the number's tag (`TestApp::phone_tag`), never the number.
fn leadphone_key(prefix: &str, org: &str, tag: &str) -> String {
    format!("{prefix}:v1:leadphone:{org}:{tag}")
}

fn orgphone_key(prefix: &str, tag: &str) -> String {
    format!("{prefix}:v1:orgphone:{tag}")
}

/// A migrated Postgres database holding, written before any instance runs (so nothing is
/// cached and no change notification is pending), the organization, a known caller "Maria
/// Lopez" and two of her conversations. Returns the database, the organization and the lead.
async fn seeded_postgres() -> (Arc<TestDb>, Uuid, Uuid) {
    let db = TestDb::postgres().await;
    hotline::store::connect(&db.url)
        .await
        .expect("store opens")
        .migrate()
        .await
        .expect("store migrates");
    let mut conn = db.pg_connection().await;
    let org: Uuid = sqlx::query_scalar(
        "insert into organizations (name, phone_number, timezone)
         values ('Acme Dental', $1, 'America/Chicago') returning id",
    )
    .bind(ORG_PHONE)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    let lead: Uuid = sqlx::query_scalar(
        "insert into leads (organization_id, phone_number, customer_name, status)
         values ($1, $2, 'Maria Lopez', 'qualified') returning id",
    )
    .bind(org)
    .bind(CALLER)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    sqlx::query(
        "insert into conversations (lead_id, organization_id, channel, summary, started_at)
         values ($1, $2, 'voice', 'Asked about teeth whitening prices', now() - interval '9 days'),
                ($1, $2, 'sms', 'Booked a cleaning for next Tuesday', now() - interval '2 days')",
    )
    .bind(lead)
    .bind(org)
    .execute(&mut conn)
    .await
    .unwrap();
    (Arc::new(db), org, lead)
}

/// An instance whose store counts its calls.
async fn spawn_counting(db: Arc<TestDb>, flags: &[String]) -> (TestApp, Arc<Calls>) {
    let calls = Arc::new(Calls::default());
    let counter = calls.clone();
    let app = spawn_app_full(
        db,
        &strs(flags),
        |_| {},
        move |store| Arc::new(CountingStore::new(store, counter)),
    )
    .await;
    wait_live(&app).await;
    (app, calls)
}

/// Holds the first fill of one key between its database read and its fill, until released.
struct Gate {
    armed: AtomicBool,
    holding: Notify,
    release: Notify,
}

impl Gate {
    async fn wait_holding(&self) {
        tokio::time::timeout(Duration::from_secs(10), self.holding.notified())
            .await
            .expect("the load reached its fill");
    }
}

fn hold_first_fill(app: &TestApp, key: CacheKey) -> Arc<Gate> {
    let gate = Arc::new(Gate {
        armed: AtomicBool::new(true),
        holding: Notify::new(),
        release: Notify::new(),
    });
    let g = gate.clone();
    app.cache.set_fill_hook(Some(Arc::new(
        move |k: &CacheKey| -> BoxFuture<'static, ()> {
            let hold = *k == key && g.armed.swap(false, Ordering::SeqCst);
            let g = g.clone();
            Box::pin(async move {
                if hold {
                    g.holding.notify_one();
                    g.release.notified().await;
                }
            })
        },
    )));
    gate
}

/// Waits until the app's Redis commands sent so far have been answered: an `INFO` through the
/// app's own multiplexed connection, which Redis answers after what was written before it
/// (such as a fill spawned by a load that has just returned).
async fn redis_barrier(app: &TestApp) {
    let r = app
        .client
        .get(app.url("/api/monitoring/health/redis"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

// 1. Writes through the API

#[tokio::test]
async fn writes_on_one_instance_are_read_at_once_there_and_soon_on_the_other() {
    let (a, b) = pair().await;
    alternate_writes(&a, &b).await;
}

// The same on SQLite, where no change notification helps: the writer's own invalidation and
// Redis pub/sub alone carry each write.
#[tokio::test]
async fn without_change_notifications_pubsub_alone_carries_writes_to_the_other_instance() {
    let (a, b, _) = sqlite_pair_with_prefix().await;
    alternate_writes(&a, &b).await;
}

async fn alternate_writes(a: &TestApp, b: &TestApp) {
    let org = a.create_org("Acme Dental", "+16123241623").await;
    let lead = a
        .create_lead(org["id"].as_str().unwrap(), "+16129782029", Some("Maria"))
        .await;
    let id = lead["id"].as_str().unwrap().to_string();
    // Both instances cache the lead's context.
    for app in [a, b] {
        assert_eq!(lead_name(app, &id).await.0.as_deref(), Some("Maria"));
        assert_eq!(lead_name(app, &id).await.0.as_deref(), Some("Maria"));
    }
    // Alternate writer and reader over many writes.
    let mut old = "Maria".to_string();
    for i in 0..20 {
        let (writer, reader) = if i % 2 == 0 { (a, b) } else { (b, a) };
        // The reader holds the old value in tier 1: the write has something to invalidate.
        assert!(
            cached_as(reader, "+16129782029", &old).await,
            "before write {i}, the reader answers the old name from its cache"
        );
        let name = format!("Maria {i}");
        let r = writer
            .patch_admin(&format!("/api/leads/{id}"), &json!({"customer_name": name}))
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            lead_name(writer, &id).await.0.as_deref(),
            Some(name.as_str()),
            "read-your-writes on the writer"
        );
        let seen = eventually(Duration::from_secs(2), || async {
            lead_name(reader, &id).await.0.as_deref() == Some(name.as_str())
        })
        .await;
        assert!(seen, "write {i} reached the other instance");
        assert!(
            eventually(PROPAGATION, || greets(reader, "+16129782029", &name)).await,
            "write {i} reached the other instance's webhook answer"
        );
        old = name;
    }
}

// 2. Conversations and organizations written on one instance

#[tokio::test]
async fn a_conversation_added_on_one_instance_and_a_rename_on_the_other_reach_both() {
    let (a, b) = pair().await;
    let known = known_caller(&a).await;
    let id = known.lead_id();
    // Both instances cache the context, the summary and the webhook's lookups.
    for app in [&a, &b] {
        for _ in 0..2 {
            assert_eq!(context_of(app, id).await["conversation_count"], 2);
            assert!(!summary_of(app, id).await.is_empty());
            let (vars, _) = call(app, CALLER).await;
            assert_eq!(vars["conversation_count"], 2);
        }
    }

    let note = "Asked to move the cleaning to Friday";
    let r = b
        .post_admin(
            &format!("/api/leads/{id}/conversations"),
            &json!({"channel": "chat", "summary": note}),
        )
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    assert!(
        sees_conversation(&b, id, note).await,
        "read-your-writes on the writer"
    );
    assert!(
        eventually(PROPAGATION, || sees_conversation(&a, id, note)).await,
        "the new conversation reached the other instance"
    );

    let r = a
        .patch_admin(
            &format!("/api/organizations/{}", known.org_id()),
            &json!({"name": "Acme Smiles"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert!(
        sees_organization_name(&a, id, "Acme Smiles").await,
        "read-your-writes on the writer"
    );
    assert!(
        eventually(PROPAGATION, || sees_organization_name(
            &b,
            id,
            "Acme Smiles"
        ))
        .await,
        "the rename reached the other instance"
    );
}

/// Whether the context, the summary and the webhook all show a third conversation, `note`.
async fn sees_conversation(app: &TestApp, id: &str, note: &str) -> bool {
    let context = context_of(app, id).await;
    let summary = summary_of(app, id).await;
    let (vars, _) = call(app, CALLER).await;
    context["conversation_count"] == 3
        && summary.contains(note)
        && vars["conversation_count"] == 3
        && vars["previous_summary"].as_str().unwrap().contains(note)
}

/// Whether the context and the webhook both show the organization as `name`.
async fn sees_organization_name(app: &TestApp, id: &str, name: &str) -> bool {
    let context = context_of(app, id).await;
    let (vars, _) = call(app, CALLER).await;
    context["organization"]["name"] == name && vars["organization_name"] == name
}

// 3. Writes made around the service (Postgres NOTIFY)

#[tokio::test]
async fn a_direct_sql_update_is_seen_by_both_instances() {
    let (a, b) = pair().await;
    let org = a.create_org("Acme Dental", "+16123241623").await;
    let lead = a
        .create_lead(org["id"].as_str().unwrap(), "+16129782029", Some("Maria"))
        .await;
    let id = lead["id"].as_str().unwrap().to_string();
    for app in [&a, &b] {
        assert_eq!(lead_name(app, &id).await.1, "Acme Dental");
    }
    let mut conn = a.db.pg_connection().await;
    sqlx::query("update organizations set name = 'Acme Smiles' where id = $1::uuid")
        .bind(org["id"].as_str().unwrap())
        .execute(&mut conn)
        .await
        .unwrap();
    for app in [&a, &b] {
        let seen = eventually(Duration::from_secs(3), || async {
            lead_name(app, &id).await.1 == "Acme Smiles"
        })
        .await;
        assert!(seen, "the direct write reached the instance");
    }
}

/// Waits until the webhook answers `caller` as `name` from tier 1 (setup writes' change
/// notifications may still be invalidating what the first calls cached).
async fn cached_as(app: &TestApp, caller: &str, name: &str) -> bool {
    eventually(PROPAGATION, || async {
        let (vars, source) = call(app, caller).await;
        assert_eq!(vars["customer_name"], name);
        source == "l1"
    })
    .await
}

/// Whether the webhook greets `caller` as `full_name`.
async fn greets(app: &TestApp, caller: &str, full_name: &str) -> bool {
    let (vars, _) = call(app, caller).await;
    let first = full_name.split_whitespace().next().unwrap();
    vars["customer_name"] == full_name && vars["greeting"].as_str().unwrap().contains(first)
}

#[tokio::test]
async fn a_lead_renamed_in_sql_is_greeted_by_the_new_name_on_both_instances() {
    let (a, b) = pair().await;
    let known = known_caller(&a).await;
    for app in [&a, &b] {
        assert!(greets(app, CALLER, "Maria Lopez").await);
        assert!(
            cached_as(app, CALLER, "Maria Lopez").await,
            "the answer is cached before the write"
        );
    }
    let mut conn = a.db.pg_connection().await;
    sqlx::query("update leads set customer_name = 'Marisol Garcia' where id = $1::uuid")
        .bind(known.lead_id())
        .execute(&mut conn)
        .await
        .unwrap();
    for app in [&a, &b] {
        assert!(
            eventually(PROPAGATION, || greets(app, CALLER, "Marisol Garcia")).await,
            "the direct write reached the instance's webhook answer"
        );
    }
}

#[tokio::test]
async fn a_lead_inserted_in_sql_for_a_caller_cached_as_unknown_is_greeted_on_both_instances() {
    let (a, b) = pair().await;
    let org = a.create_org("Acme Dental", ORG_PHONE).await;
    for app in [&a, &b] {
        let (vars, _) = call(app, STRANGER).await;
        assert_defaults(&vars, "Acme Dental", STRANGER);
        assert!(
            cached_as(app, STRANGER, "").await,
            "the unknown caller is cached (a negative entry)"
        );
    }
    let mut conn = a.db.pg_connection().await;
    sqlx::query(
        "insert into leads (organization_id, phone_number, customer_name) values ($1::uuid, $2, 'Dana Whitfield')",
    )
    .bind(org["id"].as_str().unwrap())
    .bind(STRANGER)
    .execute(&mut conn)
    .await
    .unwrap();
    for app in [&a, &b] {
        assert!(
            eventually(PROPAGATION, || greets(app, STRANGER, "Dana Whitfield")).await,
            "the inserted lead cleared the negative entry on the instance"
        );
    }
}

// 4. The stale-fill race, forced

#[tokio::test]
async fn a_fill_that_raced_a_write_is_neither_served_nor_kept_in_redis() {
    let (a, b, prefix) = pair_with_prefix().await;
    let known = known_caller(&a).await;
    let id = known.lead_id().to_string();
    let lead = uuid(&id);
    // Cache the organization on A (this also has A's fill script loaded in Redis).
    let r = a
        .get_admin(&format!("/api/organizations/{}", known.org_id()))
        .await;
    assert_eq!(r.status(), 200);

    let gate = hold_first_fill(&a, CacheKey::Context(lead));
    let gen_key = format!("{prefix}:v1:gen:lead:{id}");
    let mut redis = crate::support::infra::redis_conn(&redis_url()).await;
    let mut gen_before: Option<String> = None;
    // A reader on A misses, reads the old row and is held before its fill; meanwhile the name
    // changes through the API (on A: its write commits and invalidates); then the fill goes on.
    let reader = lead_name(&a, &id);
    let writer = async {
        gate.wait_holding().await;
        gen_before = redis::cmd("GET")
            .arg(&gen_key)
            .query_async(&mut redis)
            .await
            .unwrap();
        let r = a
            .patch_admin(
                &format!("/api/leads/{id}"),
                &json!({"customer_name": "Maria Garcia"}),
            )
            .await;
        assert_eq!(r.status(), 200);
        gate.release.notify_one();
    };
    let ((held, _), ()) = tokio::join!(reader, writer);
    let held = held.unwrap();
    assert!(
        held == "Maria Lopez" || held == "Maria Garcia",
        "the held reader answers the old or the new name: {held}"
    );
    redis_barrier(&a).await;

    let stored = redis_hget(&redis_url(), &lead_hash(&prefix, &id), "context").await;
    assert!(
        stored.as_deref().is_none_or(|s| !s.contains("Maria Lopez")),
        "tier 2 holds no context with the old name: {stored:?}"
    );
    // Every later read, on both instances (B never cached this lead), sees the new name.
    for app in [&a, &b, &a, &b] {
        assert_eq!(lead_name(app, &id).await.0.as_deref(), Some("Maria Garcia"));
        let (vars, _) = call(app, CALLER).await;
        assert_eq!(vars["customer_name"], "Maria Garcia");
    }
    redis_barrier(&a).await;
    redis_barrier(&b).await;
    let stored = redis_hget(&redis_url(), &lead_hash(&prefix, &id), "context")
        .await
        .expect("a later read filled tier 2");
    assert!(stored.contains("Maria Garcia"), "{stored}");

    // Redis itself refuses a fill stamped with the generation the write replaced, whatever
    // the instance believes: the guarantee does not rest on pub/sub timing.
    let gen_before: u64 = gen_before
        .expect("the held load's generation was in Redis")
        .parse()
        .unwrap();
    let mut entry = Entry::decode(stored.as_bytes()).expect("an entry");
    let mut replaced = false;
    for (key, value) in &mut entry.deps {
        if *key == GenKey::Lead(lead) {
            assert_ne!(*value, gen_before, "the write changed the generation");
            *value = gen_before;
            replaced = true;
        }
    }
    assert!(replaced, "a context depends on its lead's generation");
    let stale = String::from_utf8(entry.encode())
        .unwrap()
        .replace("Maria Garcia", "Maria Lopez");
    let stale_entry = Entry::decode(stale.as_bytes()).unwrap();
    let stored_it = a
        .cache
        .remote()
        .expect("A has Redis")
        .fill(&CacheKey::Context(lead), &stale_entry, stale.as_bytes())
        .await
        .expect("Redis answers");
    assert!(!stored_it, "Redis refused the stale fill");
    let stored = redis_hget(&redis_url(), &lead_hash(&prefix, &id), "context")
        .await
        .unwrap();
    assert!(!stored.contains("Maria Lopez"), "{stored}");
}

#[tokio::test]
async fn a_negative_fill_that_raced_a_lead_creation_never_hides_the_new_lead() {
    // On SQLite: no change notification comes to the rescue; the lead creation's own
    // invalidation must beat the held negative fill.
    let (a, b, prefix) = sqlite_pair_with_prefix().await;
    let org = a.create_org("Acme Dental", ORG_PHONE).await;
    let org_id = org["id"].as_str().unwrap().to_string();
    // Cache the organization on A with a caller id that is no number.
    let (vars, _) = call(&a, "Anonymous").await;
    assert_eq!(vars["organization_name"], "Acme Dental");

    let gate = hold_first_fill(
        &a,
        CacheKey::LeadByPhone(uuid(&org_id), a.cache.phone_tag(&phone(STRANGER))),
    );
    // A reader on A finds no lead for the caller and is held before it stores that; meanwhile
    // the lead is created through the other instance; then the negative fill goes on.
    let find = format!("/api/leads?organization_id={org_id}&phone=%2B16127654321");
    let reader = a.get_admin(&find);
    let writer = async {
        gate.wait_holding().await;
        b.create_lead(&org_id, STRANGER, Some("Dana Whitfield"))
            .await;
        gate.release.notify_one();
    };
    let (held, ()) = tokio::join!(reader, writer);
    assert!(
        [200, 404].contains(&held.status().as_u16()),
        "the held reader answers the old or the new state"
    );
    redis_barrier(&a).await;

    let stored = redis_hget(
        &redis_url(),
        &leadphone_key(&prefix, &org_id, STRANGER),
        "lead",
    )
    .await;
    if let Some(stored) = &stored {
        let entry: Value = serde_json::from_str(stored).unwrap();
        assert!(
            entry["v"]["maybe_lead"]["customer_name"] == "Dana Whitfield",
            "tier 2 holds no negative entry for the new lead's number: {stored}"
        );
    }
    // The writer greets the new lead at once; the held instance within the propagation
    // bound, and from then on always.
    assert!(greets(&b, STRANGER, "Dana Whitfield").await);
    assert!(eventually(PROPAGATION, || greets(&a, STRANGER, "Dana Whitfield")).await);
    for _ in 0..5 {
        assert!(greets(&a, STRANGER, "Dana Whitfield").await);
        assert!(greets(&b, STRANGER, "Dana Whitfield").await);
    }
    assert_eq!(a.get_admin(&find).await.status(), 200);
}

// 5. Load coalescing

/// `n` concurrent initiation webhooks for `caller`.
async fn burst(app: &TestApp, caller: &str, n: usize) -> Vec<(Map<String, Value>, String)> {
    join_all((0..n).map(|_| call(app, caller))).await
}

/// The store loads a known caller's webhook answer costs: the organization by phone, the lead
/// by phone, and the lead's context (the only lookup that reads the lead by id).
const WEBHOOK_LOADS: [Method; 5] = [
    Method::OrganizationByPhone,
    Method::LeadByPhone,
    Method::Lead,
    Method::ConversationStats,
    Method::Conversations,
];

// A multi-threaded runtime, as in production: the app's tasks run on two workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_on_one_key_cost_one_load_per_instance() {
    // One instance, tier 1 only.
    let (db, _, _) = seeded_postgres().await;
    let flags: Vec<String> = ["--webhook-deadline-ms", "5000"].map(String::from).to_vec();
    let (solo, calls) = spawn_counting(db, &flags).await;
    for (vars, _) in burst(&solo, CALLER, 200).await {
        assert_eq!(vars["customer_name"], "Maria Lopez");
    }
    for method in WEBHOOK_LOADS {
        assert_eq!(calls.get(method), 1, "{method:?} loaded once for 200 calls");
    }
    solo.stop().await;

    // Two instances on one Redis, both hit at once. (Redis is given time to answer: 400 calls
    // at once on a small machine delay its answers past the default 25 ms, and a load whose
    // generations Redis could not confirm is, rightly, not cached. Coalescing is the subject.)
    let (db, org, lead) = seeded_postgres().await;
    let prefix = unique_prefix();
    let mut flags = flags;
    flags.extend(redis_flags(&redis_url(), &prefix));
    flags.extend(["--redis-timeout-ms", "2000"].map(String::from));
    let (a, calls_a) = spawn_counting(db.clone(), &flags).await;
    let (b, calls_b) = spawn_counting(db.clone(), &flags).await;
    let (answers_a, answers_b) = tokio::join!(burst(&a, CALLER, 200), burst(&b, CALLER, 200));
    for (vars, source) in answers_a.iter().chain(&answers_b) {
        assert_eq!(vars["customer_name"], "Maria Lopez", "{source}: {vars:?}");
    }
    for method in WEBHOOK_LOADS {
        let (na, nb) = (calls_a.get(method), calls_b.get(method));
        assert!(
            na <= 1 && nb <= 1 && na + nb >= 1,
            "{method:?}: at most one load per instance ({na} and {nb})"
        );
    }

    // Once the fills have landed in Redis, a third instance answers from the tiers alone.
    let url = redis_url();
    let landed = eventually(Duration::from_secs(5), || async {
        redis_exists(&url, &orgphone_key(&prefix, &a.phone_tag(ORG_PHONE))).await
            && redis_exists(
                &url,
                &leadphone_key(&prefix, &org.to_string(), &a.phone_tag(CALLER)),
            )
            .await
            && redis_hget(&url, &lead_hash(&prefix, &lead.to_string()), "context")
                .await
                .is_some()
    })
    .await;
    assert!(landed, "the fills reached Redis");
    let (c, calls_c) = spawn_counting(db, &flags).await;
    for (vars, source) in burst(&c, CALLER, 200).await {
        assert_eq!(vars["customer_name"], "Maria Lopez");
        assert!(
            source == "l2" || source == "l1",
            "answered from the tiers: {source}"
        );
    }
    for method in WEBHOOK_LOADS {
        assert_eq!(calls_c.get(method), 0, "{method:?} not loaded again");
    }
    assert!(c.cache.stats(Kind::Context).hits_l2.load(Ordering::Relaxed) >= 1);
}

// Tier 2 is shared after writes too: the generations every instance mirrors stay the ones in
// Redis, whatever order the writer's and the change notifications' invalidations arrive in.
#[tokio::test]
async fn after_writes_each_instance_reads_the_others_fills_from_redis() {
    let db = Arc::new(TestDb::postgres().await);
    let mut flags = roomy_deadline(redis_flags(&redis_url(), &unique_prefix()));
    // Without tier 1, every read goes to Redis: an instance whose generations disagree with
    // Redis's could never use what the other filled.
    flags.extend(["--l1-max-mb", "0"].map(String::from));
    let (a, b) = pair_on(db, &flags).await;
    let known = known_caller(&a).await;
    let id = known.lead_id();
    for i in 0..6 {
        let (writer, other) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let name = format!("Maria Lopez{i}");
        let r = writer
            .patch_admin(&format!("/api/leads/{id}"), &json!({"customer_name": name}))
            .await;
        assert_eq!(r.status(), 200);
        for app in [writer, other] {
            let shared = eventually(PROPAGATION, || async {
                let (vars, source) = call(app, CALLER).await;
                vars["customer_name"] == name.as_str() && source == "l2"
            })
            .await;
            assert!(shared, "write {i}: the instance answers from tier 2");
        }
    }
}

// 8. Negative entries

#[tokio::test]
async fn an_unknown_caller_costs_one_load_until_a_lead_is_created_for_them() {
    // On SQLite: no change notifications, so only the creation's own invalidation (on the
    // writer) and Redis pub/sub (on the other instance) can clear the negative entries.
    let db = Arc::new(TestDb::sqlite());
    let mut flags = roomy_deadline(redis_flags(&redis_url(), &unique_prefix()));
    flags.extend(["--warm-leads", "0"].map(String::from));
    let (a, calls) = spawn_counting(db.clone(), &flags).await;
    let b = spawn_app_on(db, &strs(&flags)).await;
    wait_live(&b).await;
    let org = a.create_org("Acme Dental", ORG_PHONE).await;
    let org = org["id"].as_str().unwrap().to_string();
    for app in [&a, &b, &a, &a, &b, &a] {
        let (vars, _) = call(app, STRANGER).await;
        assert_defaults(&vars, "Acme Dental", STRANGER);
    }
    for _ in 0..20 {
        let (vars, source) = call(&a, STRANGER).await;
        assert_defaults(&vars, "Acme Dental", STRANGER);
        assert_eq!(source, "l1");
    }
    assert_eq!(
        calls.get(Method::LeadByPhone),
        1,
        "the unknown caller was looked up in the database once"
    );

    a.create_lead(&org, STRANGER, Some("Dana Whitfield")).await;
    assert!(
        greets(&a, STRANGER, "Dana Whitfield").await,
        "the writing instance greets the new lead at once"
    );
    assert!(
        eventually(PROPAGATION, || greets(&b, STRANGER, "Dana Whitfield")).await,
        "the other instance greets the new lead"
    );
    assert_eq!(calls.get(Method::LeadByPhone), 2, "looked up once more");
}

// 9. TTL expiry, where nothing else tells the cache

#[tokio::test]
async fn without_change_notifications_a_direct_write_is_seen_when_the_ttl_expires() {
    // SQLite has no LISTEN and this instance no Redis: only the TTL can bring the change.
    let db = Arc::new(TestDb::sqlite());
    let app = spawn_app_on(
        db,
        &[
            "--ttl-context-s",
            "8",
            "--ttl-lead-s",
            "8",
            "--ttl-org-s",
            "8",
            "--warm-leads",
            "0",
        ],
    )
    .await;
    let org = app.create_org("Acme Dental", ORG_PHONE).await;
    let lead = app
        .create_lead(org["id"].as_str().unwrap(), CALLER, Some("Maria Lopez"))
        .await;
    let id = lead["id"].as_str().unwrap().to_string();
    let filled = Instant::now();
    assert_eq!(lead_name(&app, &id).await.0.as_deref(), Some("Maria Lopez"));
    let mut conn = app.db.sqlite_connection().await;
    sqlx::query("update leads set customer_name = 'Maria Garcia' where id = ?")
        .bind(&id)
        .execute(&mut conn)
        .await
        .unwrap();
    let name = lead_name(&app, &id).await.0;
    // Fresh for at least 7.2 s (TTL minus jitter) and not refreshed ahead before 5.76 s (the
    // last fifth of that): a read within 5 s of the fill is the cached one.
    assert!(
        filled.elapsed() < Duration::from_secs(5),
        "one read and one update took {:?}",
        filled.elapsed()
    );
    assert_eq!(
        name.as_deref(),
        Some("Maria Lopez"),
        "within its TTL the cached value is served"
    );
    let seen = eventually(Duration::from_secs(15), || async {
        lead_name(&app, &id).await.0.as_deref() == Some("Maria Garcia")
    })
    .await;
    assert!(seen, "the direct write is seen once the TTL expired");
}

// 10. Tier 1's byte bound

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier_one_stays_within_its_byte_budget() {
    let db = Arc::new(TestDb::postgres().await);
    let app = spawn_app_on(db.clone(), &["--l1-max-mb", "1"]).await;
    hotline::seed::seed(
        &db.url,
        &hotline::seed::SeedOptions {
            organizations: 4,
            leads: 2_000,
            conversations_per_lead: 2,
            seed: 7,
        },
    )
    .await
    .expect("seeded");
    let mut conn = db.pg_connection().await;
    let ids: Vec<Uuid> = sqlx::query_scalar("select id from leads")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(ids.len(), 2_000);
    let app = &app;
    let ok = futures_util::stream::iter(ids)
        .map(|id| async move {
            let r = app.get_admin(&format!("/api/leads/{id}/context")).await;
            r.status() == 200
        })
        .buffer_unordered(8)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await;
    assert_eq!(ok, 2_000);
    let (entries, bytes) = app.cache.local_usage();
    assert!(
        bytes <= 1_048_576,
        "tier 1 holds {bytes} bytes in {entries} entries, over its 1 MiB budget"
    );
    assert!(entries > 0, "tier 1 is in use");
    assert!(entries < 2_000, "entries were evicted to stay in budget");
}

#[tokio::test]
async fn with_tier_one_off_nothing_is_served_from_the_process() {
    let db = Arc::new(TestDb::postgres().await);
    // Without Redis: every answer comes from the database.
    let app = spawn_app_on(
        db.clone(),
        &["--l1-max-mb", "0", "--webhook-deadline-ms", "2000"],
    )
    .await;
    known_caller(&app).await;
    for _ in 0..5 {
        let (vars, source) = call(&app, CALLER).await;
        assert_eq!(vars["customer_name"], "Maria Lopez");
        assert_eq!(source, "db");
    }
    assert_eq!(app.cache.local_usage(), (0, 0));
    app.stop().await;

    // With Redis: from Redis once filled, never from the process.
    let mut flags = roomy_deadline(redis_flags(&redis_url(), &unique_prefix()));
    flags.extend(["--l1-max-mb", "0"].map(String::from));
    let app = spawn_app_on(db, &strs(&flags)).await;
    wait_live(&app).await;
    let sources = std::sync::Mutex::new(Vec::new());
    let from_redis = eventually(Duration::from_secs(5), || async {
        let (vars, source) = call(&app, CALLER).await;
        assert_eq!(vars["customer_name"], "Maria Lopez");
        sources.lock().unwrap().push(source.clone());
        source == "l2"
    })
    .await;
    let mut sources = sources.into_inner().unwrap();
    assert!(from_redis, "answered from Redis: {sources:?}");
    for _ in 0..5 {
        let (_, source) = call(&app, CALLER).await;
        sources.push(source);
    }
    assert!(
        sources.iter().all(|s| s != "l1"),
        "never from tier 1: {sources:?}"
    );
    assert_eq!(app.cache.local_usage(), (0, 0));
}

// 11. Manual invalidation

fn invalidations(app: &TestApp, kind: Kind) -> u64 {
    app.cache.stats(kind).invalidations.load(Ordering::Relaxed)
}

fn misses(app: &TestApp, kind: Kind) -> u64 {
    app.cache.stats(kind).misses.load(Ordering::Relaxed)
}

/// Asks A to invalidate `body`; checks that both instances counted it for `kind` and that B's
/// next answer for the known caller comes from the database.
async fn invalidate_everywhere(a: &TestApp, b: &TestApp, body: Value, kind: Kind) {
    // B answers from tier 1 before.
    assert!(
        cached_as(b, CALLER, "Maria Lopez").await,
        "B has the caller cached"
    );
    let (before_a, before_b) = (invalidations(a, kind), invalidations(b, kind));
    let misses_before = misses(b, kind);
    let r = a
        .post_admin("/api/monitoring/cache/invalidate", &body)
        .await;
    let status = r.status();
    let answer: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["scope"], "all_instances");
    assert!(answer["invalidated"].is_object(), "{answer}");
    assert!(
        invalidations(a, kind) > before_a,
        "{body}: counted at once on A"
    );
    let reached = eventually(PROPAGATION, || async { invalidations(b, kind) > before_b }).await;
    assert!(reached, "{body}: counted on B");
    let (vars, source) = call(b, CALLER).await;
    assert_eq!(vars["customer_name"], "Maria Lopez");
    assert_eq!(source, "db", "{body}: B's next answer is loaded again");
    assert!(misses(b, kind) > misses_before, "{body}: a miss on B");
}

#[tokio::test]
async fn manual_invalidation_reaches_every_instance() {
    let (a, b) = pair().await;
    let known = known_caller(&a).await;
    for app in [&a, &b] {
        call(app, CALLER).await;
    }
    invalidate_everywhere(&a, &b, json!({"lead_id": known.lead_id()}), Kind::Context).await;
    invalidate_everywhere(
        &a,
        &b,
        json!({"organization_id": known.org_id()}),
        Kind::Organization,
    )
    .await;
    invalidate_everywhere(&a, &b, json!({"kind": "context"}), Kind::Context).await;
    invalidate_everywhere(&a, &b, json!({"all": true}), Kind::LeadByPhone).await;

    let path = "/api/monitoring/cache/invalidate";
    for bad in [
        json!({}),
        json!({"lead_id": known.lead_id(), "kind": "context"}),
        json!({"kind": "everything"}),
        json!({"all": false}),
        json!({"lead_id": "not-a-uuid"}),
        json!({"lead": known.lead_id()}),
    ] {
        assert_error(a.post_admin(path, &bad).await, 422).await;
    }
    let r = a
        .client
        .post(a.url(path))
        .json(&json!({"all": true}))
        .send()
        .await
        .unwrap();
    assert_error(r, 401).await;
    let r = a
        .client
        .post(a.url(path))
        .bearer_auth("not-the-admin-token-0123")
        .json(&json!({"all": true}))
        .send()
        .await
        .unwrap();
    assert_error(r, 401).await;
}

// 12. Personal data leaves Redis on delete

#[tokio::test]
async fn deleting_a_lead_removes_its_data_from_redis_at_once() {
    let db = Arc::new(TestDb::postgres().await);
    let prefix = unique_prefix();
    let flags = roomy_deadline(redis_flags(&redis_url(), &prefix));
    let app = spawn_app_on(db, &strs(&flags)).await;
    wait_live(&app).await;
    let known = known_caller(&app).await;
    let id = known.lead_id();
    call(&app, CALLER).await;
    for path in [
        format!("/api/leads/{id}"),
        format!("/api/leads/{id}/summary"),
        format!("/api/leads/{id}/greeting?channel=voice"),
        format!("/api/leads/{id}/conversations"),
    ] {
        assert_eq!(app.get_admin(&path).await.status(), 200, "{path}");
    }
    let url = redis_url();
    let hash = lead_hash(&prefix, id);
    let by_phone = leadphone_key(&prefix, known.org_id(), &app.phone_tag(CALLER));
    let cached = eventually(Duration::from_secs(5), || async {
        let mut all = redis_exists(&url, &by_phone).await;
        for field in ["lead", "context", "summary", "greeting:voice"] {
            all &= redis_hget(&url, &hash, field).await.is_some();
        }
        all
    })
    .await;
    assert!(cached, "the lead's data was cached in Redis");

    assert_eq!(
        app.delete_admin(&format!("/api/leads/{id}")).await.status(),
        204
    );
    assert!(!redis_exists(&url, &hash).await, "the lead's hash is gone");
    assert!(
        !redis_exists(&url, &by_phone).await,
        "the phone lookup naming the lead is gone"
    );
    // Nothing still in flight puts it back.
    redis_barrier(&app).await;
    assert!(!redis_exists(&url, &hash).await);
    let r = app.get_admin(&format!("/api/leads/{id}/context")).await;
    assert_eq!(r.status(), 404);
    let (vars, _) = call(&app, CALLER).await;
    assert_defaults(&vars, "Acme Dental", CALLER);
    assert!(!redis_exists(&url, &hash).await);
}

// What each write invalidates

/// One Postgres instance with Redis under a prefix of its own, connected and listening.
async fn single() -> TestApp {
    let flags = roomy_deadline(redis_flags(&redis_url(), &unique_prefix()));
    let app = spawn_app_on(Arc::new(TestDb::postgres().await), &strs(&flags)).await;
    wait_live(&app).await;
    app
}

/// The initiation webhook for `caller` calling `called`: the variables and the source.
async fn call_to(app: &TestApp, caller: &str, called: &str) -> (Map<String, Value>, String) {
    initiation_ok(app.initiate(&initiation_body(caller, called)).await).await
}

#[tokio::test]
async fn creating_an_organization_clears_the_negative_entry_for_its_number() {
    let app = single().await;
    const NEW_NUMBER: &str = "+16125550199";
    // A call to a number no organization has: answered with defaults, and remembered as such.
    let cached = eventually(PROPAGATION, || async {
        let (vars, source) = call_to(&app, CALLER, NEW_NUMBER).await;
        assert_defaults(&vars, "", CALLER);
        source == "l1"
    })
    .await;
    assert!(cached, "the unknown number is cached as unknown");

    app.create_org("Northside Dental", NEW_NUMBER).await;
    let (vars, _) = call_to(&app, CALLER, NEW_NUMBER).await;
    assert_eq!(
        vars["organization_name"], "Northside Dental",
        "the new organization answers at once"
    );
}

#[tokio::test]
async fn changing_a_leads_number_forgets_the_old_one_on_both_instances() {
    let (a, b) = pair().await;
    let known = known_caller(&a).await;
    const NEW_NUMBER: &str = "+16125550142";
    for app in [&a, &b] {
        assert!(cached_as(app, CALLER, "Maria Lopez").await);
        let (vars, _) = call(app, NEW_NUMBER).await;
        assert_defaults(&vars, "Acme Dental", NEW_NUMBER);
    }
    let r = a
        .patch_admin(
            &format!("/api/leads/{}", known.lead_id()),
            &json!({"phone_number": NEW_NUMBER}),
        )
        .await;
    assert_eq!(r.status(), 200);
    // At once on the writer, soon on the other: the old number is nobody, the new one is Maria.
    for (app, within) in [(&a, Duration::ZERO), (&b, PROPAGATION)] {
        let moved = eventually(within, || async {
            let (old, _) = call(app, CALLER).await;
            let (new, _) = call(app, NEW_NUMBER).await;
            old["customer_name"] == "" && new["customer_name"] == "Maria Lopez"
        })
        .await;
        assert!(moved, "the number change reached the instance");
    }
    let (old, _) = call(&b, CALLER).await;
    assert_defaults(&old, "Acme Dental", CALLER);
}

#[tokio::test]
async fn changing_an_organizations_number_forgets_the_old_one_on_both_instances() {
    let (a, b) = pair().await;
    let known = known_caller(&a).await;
    const NEW_NUMBER: &str = "+16125550177";
    for app in [&a, &b] {
        assert!(cached_as(app, CALLER, "Maria Lopez").await);
        let (vars, _) = call_to(app, CALLER, NEW_NUMBER).await;
        assert_defaults(&vars, "", CALLER);
    }
    let r = b
        .patch_admin(
            &format!("/api/organizations/{}", known.org_id()),
            &json!({"phone_number": NEW_NUMBER}),
        )
        .await;
    assert_eq!(r.status(), 200);
    for (app, within) in [(&b, Duration::ZERO), (&a, PROPAGATION)] {
        let moved = eventually(within, || async {
            let (old, _) = call_to(app, CALLER, ORG_PHONE).await;
            let (new, _) = call_to(app, CALLER, NEW_NUMBER).await;
            old["organization_name"] == "" && new["customer_name"] == "Maria Lopez"
        })
        .await;
        assert!(moved, "the number change reached the instance");
    }
}

#[tokio::test]
async fn a_new_conversation_refreshes_greeting_summary_and_history() {
    let app = single().await;
    let org = app.create_org("Acme Dental", ORG_PHONE).await;
    let lead = app
        .create_lead(org["id"].as_str().unwrap(), CALLER, Some("Maria Lopez"))
        .await;
    let id = lead["id"].as_str().unwrap();
    let greeting_path = format!("/api/leads/{id}/greeting?channel=voice");
    let history_path = format!("/api/leads/{id}/conversations?limit=5");
    let get = |path: String| {
        let app = &app;
        async move {
            let r = app.get_admin(&path).await;
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    // Each is read twice, so that it is cached, and stays the same.
    let greeting = get(greeting_path.clone()).await["greeting"].clone();
    assert_eq!(get(greeting_path.clone()).await["greeting"], greeting);
    assert!(
        !greeting.as_str().unwrap().contains("last spoke"),
        "{greeting}"
    );
    assert_eq!(summary_of(&app, id).await, "");
    assert_eq!(summary_of(&app, id).await, "");
    for _ in 0..2 {
        assert_eq!(get(history_path.clone()).await["items"], json!([]));
    }
    let l1_hits = app
        .cache
        .stats(Kind::Greeting)
        .hits_l1
        .load(Ordering::Relaxed);
    assert!(l1_hits >= 1, "the greeting was served from the cache");

    let note = "Asked about whitening";
    let r = app
        .post_admin(
            &format!("/api/leads/{id}/conversations"),
            &json!({"channel": "voice", "summary": note}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let after = get(greeting_path).await["greeting"].clone();
    assert!(
        after.as_str().unwrap().contains("last spoke"),
        "the greeting nods to the new conversation: {after}"
    );
    assert!(summary_of(&app, id).await.contains(note));
    let items = get(history_path).await["items"].clone();
    assert_eq!(items.as_array().unwrap().len(), 1);
    assert_eq!(items[0]["summary"], note);
}

// Warming and refresh-ahead

#[tokio::test]
async fn warming_loads_recently_active_callers_so_their_first_call_is_a_hit() {
    let (db, _, _) = seeded_postgres().await;
    let flags: Vec<String> = ["--warm-leads", "10", "--webhook-deadline-ms", "2000"]
        .map(String::from)
        .to_vec();
    let (app, calls) = spawn_counting(db, &flags).await;
    // The stats report warming's progress; "done" means every warmed entry has been filled.
    let until = Instant::now() + Duration::from_secs(15);
    let warming = loop {
        let r = app
            .client
            .get(app.url("/api/monitoring/stats/cache"))
            .send()
            .await;
        let warming = r.unwrap().json::<Value>().await.unwrap()["warming"].clone();
        if warming["state"] == "done" || Instant::now() > until {
            break warming;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        warming["state"], "done",
        "warming finished in the background"
    );
    assert_eq!(warming["leads"], 1, "the one active lead was warmed");
    // Warming's own lookups are not callers': the hit rate (and its alert) has nothing yet,
    // while Prometheus counts them.
    let r = app
        .client
        .get(app.url("/api/monitoring/metrics"))
        .send()
        .await
        .unwrap();
    let window: Value = r.json().await.unwrap();
    assert_eq!(window["cache"]["hit_rate_pct"], Value::Null, "{window}");
    let text = app.metrics_text().await;
    assert!(
        text.contains("hotline_cache_requests_total{kind=\"lead\",result=\"miss\"} 1"),
        "{text}"
    );
    for method in [
        Method::OrganizationByPhone,
        Method::LeadByPhone,
        Method::Conversations,
    ] {
        assert!(calls.get(method) >= 1, "warming loaded {method:?}");
    }
    let before: Vec<u64> = WEBHOOK_LOADS.iter().map(|m| calls.get(*m)).collect();
    let (vars, source) = call(&app, CALLER).await;
    assert_eq!(vars["customer_name"], "Maria Lopez");
    assert_eq!(
        source, "l1",
        "the warmed caller's first call is a tier-1 hit"
    );
    let after: Vec<u64> = WEBHOOK_LOADS.iter().map(|m| calls.get(*m)).collect();
    assert_eq!(before, after, "the first call cost the store nothing");
}

#[tokio::test]
async fn a_frequent_caller_is_refreshed_ahead_and_never_waits_for_a_miss() {
    let (db, _, _) = seeded_postgres().await;
    let flags: Vec<String> = [
        "--warm-leads",
        "0",
        "--webhook-deadline-ms",
        "2000",
        "--ttl-context-s",
        "3",
    ]
    .map(String::from)
    .to_vec();
    let (app, calls) = spawn_counting(db, &flags).await;
    let (_, first) = call(&app, CALLER).await;
    assert_eq!(first, "db");
    assert_eq!(calls.get(Method::Conversations), 1);
    // Call often through and past the context's TTL: the entry is refreshed in the background
    // during the last fifth of its life, so every answer stays a hit.
    let refreshed = eventually(Duration::from_secs(15), || async {
        let (vars, source) = call(&app, CALLER).await;
        assert_eq!(vars["customer_name"], "Maria Lopez");
        assert_eq!(
            source, "l1",
            "a frequent caller is always answered from tier 1"
        );
        calls.get(Method::Conversations) >= 2
    })
    .await;
    assert!(refreshed, "the context was reloaded ahead of its expiry");
    // And past the original expiry, still hits.
    for _ in 0..20 {
        let (_, source) = call(&app, CALLER).await;
        assert_eq!(source, "l1");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_frequent_caller_stays_in_tier_one_past_its_maximum_age() {
    let (db, _, _) = seeded_postgres().await;
    let mut flags = redis_flags(&redis_url(), &unique_prefix());
    flags.extend(
        [
            "--warm-leads",
            "0",
            "--webhook-deadline-ms",
            "2000",
            "--l1-max-age-s",
            "4",
        ]
        .map(String::from),
    );
    let (app, calls) = spawn_counting(db, &flags).await;
    let (_, first) = call(&app, CALLER).await;
    assert_eq!(first, "db");
    let loads: Vec<u64> = WEBHOOK_LOADS.iter().map(|m| calls.get(*m)).collect();
    // Call often for more than twice the tier-1 maximum age: each entry is re-read from Redis in
    // the background before it ages out, so every answer comes from tier 1.
    let mut sources = std::collections::BTreeMap::<String, u32>::new();
    let until = Instant::now() + Duration::from_secs(9);
    while Instant::now() < until {
        let (vars, source) = call(&app, CALLER).await;
        assert_eq!(vars["customer_name"], "Maria Lopez");
        *sources.entry(source).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sources.keys().collect::<Vec<_>>(), ["l1"], "{sources:?}");
    let after: Vec<u64> = WEBHOOK_LOADS.iter().map(|m| calls.get(*m)).collect();
    assert_eq!(loads, after, "and the database was not asked again");
    assert!(
        app.cache
            .stats(Kind::Context)
            .hits_l2
            .load(Ordering::Relaxed)
            == 0,
        "no request waited on Redis"
    );
}

#[tokio::test]
async fn a_lost_invalidation_costs_at_most_the_tier_one_maximum_age() {
    // SQLite: no change notifications, only Redis carries invalidations. A write on another
    // instance whose message never arrives is played by changing the row and the lead's
    // generation in Redis directly, without publishing anything.
    let db = Arc::new(TestDb::sqlite());
    let prefix = unique_prefix();
    let mut flags = roomy_deadline(redis_flags(&redis_url(), &prefix));
    flags.extend(["--l1-max-age-s", "3"].map(String::from));
    let app = spawn_app_on(db, &strs(&flags)).await;
    wait_live(&app).await;
    let known = known_caller(&app).await;
    assert!(cached_as(&app, CALLER, "Maria Lopez").await);

    let mut conn = app.db.sqlite_connection().await;
    sqlx::query("update leads set customer_name = 'Marisol Garcia' where id = ?")
        .bind(known.lead_id())
        .execute(&mut conn)
        .await
        .unwrap();
    // What a rename bumps: the lead's generation and its phone lookup's.
    let mut redis = crate::support::infra::redis_conn(&redis_url()).await;
    for gen_key in [
        format!("{prefix}:v1:gen:lead:{}", known.lead_id()),
        format!(
            "{prefix}:v1:gen:leadphone:{}:{}",
            known.org_id(),
            app.phone_tag(CALLER)
        ),
    ] {
        let _: () = redis::cmd("SET")
            .arg(&gen_key)
            .arg("424242")
            .query_async(&mut redis)
            .await
            .unwrap();
    }

    // Calls keep coming (and keep renewing tier 1): the renewal reads the generation from
    // Redis again, finds it changed, and the caller gets the new name within the maximum age
    // (3 s; two more seconds of scheduling slack on a busy machine, far below the TTLs).
    let missed_at = Instant::now();
    assert!(
        eventually(Duration::from_secs(5), || async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            greets(&app, CALLER, "Marisol Garcia").await
        })
        .await,
        "the missed write was picked up within the maximum age ({:?} after it)",
        missed_at.elapsed()
    );
}
