//! The cache when its dependencies fail: Redis killed under load, Redis down at start, Redis
//! restarted empty, and the database cut off (stale answers, 503 on writes, post-call events
//! spooled and applied once when it returns).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use hotline::cache::Kind;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::cache::{call, roomy_deadline, strs, wait_live, PROPAGATION, STRANGER};
use crate::support::app::{assert_error, spawn_app_on, spawn_app_with, TestApp, ELEVENLABS_SECRET};
use crate::support::db::TestDb;
use crate::support::infra::{
    eventually, redis_exists, redis_flags, redis_hget, unique_prefix, RedisServer, TcpProxy,
};
use crate::webhooks::{assert_defaults, known_caller, KnownCaller, CALLER, ORG_PHONE};

async fn get_json(app: &TestApp, path: &str) -> (u16, Value) {
    let r = app.client.get(app.url(path)).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

async fn redis_health(app: &TestApp) -> Value {
    let (status, body) = get_json(app, "/api/monitoring/health/redis").await;
    assert_eq!(status, 200);
    body
}

/// Waits until the instance reports Redis down: circuit open, not connected, and the service
/// degraded (still 200: it serves).
async fn assert_redis_down_reported(app: &TestApp) {
    let open = eventually(Duration::from_secs(5), || async {
        let h = redis_health(app).await;
        h["enabled"] == true && h["circuit"] == "open" && h["connected"] == false
    })
    .await;
    assert!(open, "the breaker opened: {}", redis_health(app).await);
    let (status, body) = get_json(app, "/api/monitoring/health").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "degraded", "{body}");
}

/// Waits until the instance uses Redis again and reports itself healthy.
async fn assert_redis_back(app: &TestApp) {
    wait_live(app).await;
    // What was decided while Redis was away has been replayed to it (a replay invalidates).
    let reconciled = eventually(Duration::from_secs(5), || async {
        app.cache.generations().reconciled()
    })
    .await;
    assert!(
        reconciled,
        "the changes made while Redis was down reached it"
    );
    let closed = eventually(Duration::from_secs(5), || async {
        let h = redis_health(app).await;
        h["circuit"] == "closed" && h["connected"] == true
    })
    .await;
    assert!(closed, "the breaker closed: {}", redis_health(app).await);
    let (status, body) = get_json(app, "/api/monitoring/health").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "healthy", "{body}");
}

/// A known caller's answer filled into Redis by `a` is read from Redis by `b`.
async fn assert_tier_two_shared(
    (a, b): (&TestApp, &TestApp),
    (redis_url, prefix): (&str, &str),
    known: &KnownCaller,
) {
    let (org_id, lead_id) = (known.org_id(), known.lead_id());
    let filled = eventually(Duration::from_secs(5), || async {
        let (vars, source) = call(a, CALLER).await;
        if source != "default" {
            assert_eq!(vars["customer_name"], "Maria Lopez");
        }
        let (org_tag, caller_tag) = (a.phone_tag(ORG_PHONE), a.phone_tag(CALLER));
        redis_exists(redis_url, &format!("{prefix}:v1:orgphone:{org_tag}")).await
            && redis_exists(
                redis_url,
                &format!("{prefix}:v1:leadphone:{org_id}:{caller_tag}"),
            )
            .await
            && redis_hget(redis_url, &format!("{prefix}:v1:lead:{lead_id}"), "context")
                .await
                .is_some()
    })
    .await;
    assert!(filled, "the first instance filled Redis again");
    let hits_before = b.cache.stats(Kind::Context).hits_l2.load(Ordering::Relaxed);
    let from_redis = eventually(PROPAGATION, || async {
        let (vars, source) = call(b, CALLER).await;
        if source != "default" {
            assert_eq!(vars["customer_name"], "Maria Lopez");
        }
        source == "l2"
    })
    .await;
    assert!(from_redis, "the other instance answered from Redis");
    assert!(b.cache.stats(Kind::Context).hits_l2.load(Ordering::Relaxed) > hits_before);
}

// 6. Redis killed under load, and Redis down at start

#[tokio::test]
async fn redis_killed_under_load_costs_no_call_and_tier_two_returns_with_it() {
    let mut redis = RedisServer::start().await;
    let db = Arc::new(TestDb::postgres().await);
    let prefix = unique_prefix();
    let flags = redis_flags(&redis.url(), &prefix);
    let (a, b) = crate::cache::pair_on(db, &flags).await;
    let known = known_caller(&a).await;

    // Four callers at a time, 200 calls over both instances; Redis dies after the 60th.
    let done = AtomicUsize::new(0);
    let drive = async {
        let (a, b, done) = (&a, &b, &done);
        join_all((0..4).map(|worker| async move {
            for i in 0..50 {
                let app = if (worker + i) % 2 == 0 { a } else { b };
                let caller = if i % 3 == 0 { STRANGER } else { CALLER };
                // Panics unless 200 with all ten variables.
                let started = Instant::now();
                let (vars, source) = call(app, caller).await;
                assert!(
                    started.elapsed() < Duration::from_secs(2),
                    "no call waits on a dead Redis"
                );
                if source != "default" {
                    let name = if caller == CALLER { "Maria Lopez" } else { "" };
                    assert_eq!(vars["customer_name"], name, "{source}");
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        }))
        .await;
    };
    let kill = async {
        let reached = eventually(Duration::from_secs(30), || async {
            done.load(Ordering::SeqCst) >= 60
        })
        .await;
        assert!(reached, "calls are being made");
        redis.kill();
    };
    tokio::join!(drive, kill);
    assert_eq!(done.load(Ordering::SeqCst), 200);

    for app in [&a, &b] {
        assert_redis_down_reported(app).await;
        // Still serving, from the database.
        let served = eventually(PROPAGATION, || async {
            let (vars, source) = call(app, CALLER).await;
            source != "default" && vars["customer_name"] == "Maria Lopez"
        })
        .await;
        assert!(served, "the known caller is still greeted by name");
    }

    redis.restart().await;
    for app in [&a, &b] {
        assert_redis_back(app).await;
    }
    assert_tier_two_shared((&a, &b), (&redis.url(), &prefix), &known).await;
}

#[tokio::test]
async fn an_instance_started_while_redis_is_down_serves_and_connects_when_it_comes() {
    let mut redis = RedisServer::start().await;
    redis.kill();
    let db = Arc::new(TestDb::postgres().await);
    let prefix = unique_prefix();
    let mut flags = roomy_deadline(redis_flags(&redis.url(), &prefix));
    // No warming: the second instance warms its tier 1 once Redis is back, and whether that
    // or this test's first call to it comes first is a race; the test is about tier 2.
    flags.extend(["--warm-leads", "0"].map(String::from));
    let a = spawn_app_on(db.clone(), &strs(&flags)).await;
    let b = spawn_app_on(db, &strs(&flags)).await;
    let known = known_caller(&a).await;
    for app in [&a, &b] {
        for _ in 0..3 {
            let (vars, source) = call(app, CALLER).await;
            assert_eq!(vars["customer_name"], "Maria Lopez", "{source}");
        }
        assert_redis_down_reported(app).await;
    }

    // No restart of the instances: they connect when Redis comes.
    redis.restart().await;
    for app in [&a, &b] {
        assert_redis_back(app).await;
    }
    assert_tier_two_shared((&a, &b), (&redis.url(), &prefix), &known).await;
}

// 13. A Redis restart flushes tier 1

#[tokio::test]
async fn after_a_redis_restart_tier_one_is_not_trusted_blindly() {
    // SQLite has no change notifications: while Redis is away, nothing can tell this instance
    // about a write made around it; only flushing tier 1 when Redis returns can.
    let mut redis = RedisServer::start().await;
    let db = Arc::new(TestDb::sqlite());
    let flags = roomy_deadline(redis_flags(&redis.url(), &unique_prefix()));
    let app = spawn_app_on(db, &strs(&flags)).await;
    wait_live(&app).await;
    let org = app.create_org("Acme Dental", ORG_PHONE).await;
    let lead = app
        .create_lead(org["id"].as_str().unwrap(), CALLER, Some("Maria Lopez"))
        .await;
    call(&app, CALLER).await;
    let (vars, source) = call(&app, CALLER).await;
    assert_eq!(vars["customer_name"], "Maria Lopez");
    assert_eq!(source, "l1");

    redis.kill();
    assert_redis_down_reported(&app).await;
    let mut conn = app.db.sqlite_connection().await;
    sqlx::query("update leads set customer_name = 'Maria Garcia' where id = ?")
        .bind(lead["id"].as_str().unwrap())
        .execute(&mut conn)
        .await
        .unwrap();
    redis.restart().await;
    assert_redis_back(&app).await;

    let (vars, source) = call(&app, CALLER).await;
    assert_ne!(source, "l1", "tier 1 was flushed when Redis returned");
    assert_eq!(vars["customer_name"], "Maria Garcia");
}

// 7. The database cut off

/// A `post_call_transcription` for `caller` calling the organization.
pub fn transcription(conversation_id: &str, caller: &str) -> String {
    let now = chrono::Utc::now().timestamp();
    json!({
        "type": "post_call_transcription",
        "event_timestamp": now,
        "data": {
            "agent_id": "agent_8501k9r8sbb5fjbbym8c9y1jqt9b",
            "conversation_id": conversation_id,
            "status": "done",
            "transcript": [
                {"role": "agent", "message": "Thanks for calling Acme Dental.", "time_in_call_secs": 0},
                {"role": "user", "message": "I'd like to move my cleaning to Friday.", "time_in_call_secs": 3}
            ],
            "metadata": {
                "start_time_unix_secs": now - 120,
                "call_duration_secs": 60,
                "phone_call": {
                    "direction": "inbound",
                    "agent_number": ORG_PHONE,
                    "external_number": caller,
                    "type": "twilio"
                }
            },
            "analysis": {"transcript_summary": "Moved the cleaning to Friday."},
            "conversation_initiation_client_data": {"dynamic_variables": {"lead_id": ""}}
        }
    })
    .to_string()
}

/// The files in the app's spool directory.
fn spool_files(app: &TestApp) -> Vec<String> {
    std::fs::read_dir(app.spool_dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// An instance whose database connections all go through a proxy the test can cut, with
/// one-second TTLs and an hour of stale grace, and a known caller it has cached.
async fn behind_a_proxy(extra: &[String]) -> (TestApp, TcpProxy, KnownCaller) {
    let db = Arc::new(TestDb::postgres().await);
    let proxy = TcpProxy::start(db.pg_addr()).await;
    let via = db.pg_url_via(proxy.addr);
    let mut flags: Vec<String> = [
        "--ttl-context-s",
        "1",
        "--ttl-lead-s",
        "1",
        "--ttl-org-s",
        "1",
        "--stale-grace-s",
        "3600",
        "--warm-leads",
        "0",
    ]
    .map(String::from)
    .to_vec();
    flags.extend_from_slice(extra);
    let app = spawn_app_with(db, &strs(&flags), move |args| {
        args.db.database_url = via.parse().expect("a database URL")
    })
    .await;
    wait_live(&app).await;
    let known = known_caller(&app).await;
    let cached = eventually(Duration::from_secs(5), || async {
        let (vars, source) = call(&app, CALLER).await;
        source == "l1" && vars["customer_name"] == "Maria Lopez"
    })
    .await;
    assert!(cached, "the known caller is cached");
    (app, proxy, known)
}

/// Past the TTL, the last known values are served, marked stale.
async fn assert_served_stale(app: &TestApp) {
    let stale = eventually(Duration::from_secs(10), || async {
        let (vars, source) = call(app, CALLER).await;
        source == "stale" && vars["customer_name"] == "Maria Lopez"
    })
    .await;
    assert!(stale, "the known caller is answered from stale values");
}

#[tokio::test]
async fn with_the_database_cut_callers_are_answered_from_cache_and_events_are_spooled() {
    let (app, proxy, known) = behind_a_proxy(&[]).await;
    let db = app.db.clone();

    proxy.cut();
    assert_served_stale(&app).await;
    let unknown = "+16125550123";
    for _ in 0..5 {
        let started = Instant::now();
        let (vars, source) = call(&app, CALLER).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "answered in time"
        );
        assert_eq!(source, "stale");
        assert_eq!(vars["customer_name"], "Maria Lopez");
        assert_eq!(vars["organization_name"], "Acme Dental");

        let started = Instant::now();
        let (vars, source) = call(&app, unknown).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "answered in time"
        );
        assert!(source == "default" || source == "stale", "{source}");
        assert_defaults(&vars, "Acme Dental", unknown);
    }

    // Writes are refused, never acknowledged without a commit.
    let r = app
        .post_admin(
            "/api/organizations",
            &json!({"name": "Beta Clinic", "phone_number": "+16125550100"}),
        )
        .await;
    assert_error(r, 503).await;
    let r = app
        .patch_admin(
            &format!("/api/leads/{}", known.lead_id()),
            &json!({"customer_name": "Someone Else"}),
        )
        .await;
    assert_error(r, 503).await;
    let unhealthy = eventually(Duration::from_secs(5), || async {
        let (status, body) = get_json(&app, "/api/monitoring/health").await;
        status == 503 && body["status"] == "unhealthy"
    })
    .await;
    assert!(unhealthy, "health reports the database down");

    // A post-call event is kept durably (sent twice, as a retrying proxy might).
    let external_id = format!("conv_{}", Uuid::new_v4().simple());
    let event = transcription(&external_id, CALLER);
    for _ in 0..2 {
        let r = app.post_call_signed(&event, ELEVENLABS_SECRET, 0).await;
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body, json!({"status": "spooled"}));
    }
    let files = spool_files(&app);
    assert_eq!(
        files.iter().filter(|f| f.ends_with(".json")).count(),
        2,
        "{files:?}"
    );

    proxy.restore();
    let applied = eventually(Duration::from_secs(20), || async {
        let r = app
            .get_admin(&format!(
                "/api/leads/{}/conversations?limit=100",
                known.lead_id()
            ))
            .await;
        if r.status() != 200 {
            return false;
        }
        let page: Value = r.json().await.unwrap();
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["external_id"] == external_id.as_str())
    })
    .await;
    assert!(applied, "the spooled event was applied");
    let drained = eventually(Duration::from_secs(10), || async {
        spool_files(&app).is_empty()
    })
    .await;
    assert!(drained, "the spool is empty: {:?}", spool_files(&app));
    let mut conn = db.pg_connection().await;
    let n: i64 = sqlx::query_scalar("select count(*) from conversations where external_id = $1")
        .bind(&external_id)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 1, "applied exactly once");

    // Health results are shared for about a second: the database's return shows within it.
    let healthy = eventually(Duration::from_secs(5), || async {
        get_json(&app, "/api/monitoring/health").await.0 == 200
    })
    .await;
    assert!(
        healthy,
        "{}",
        get_json(&app, "/api/monitoring/health").await.1
    );
    let fresh = eventually(Duration::from_secs(5), || async {
        let (vars, source) = call(&app, CALLER).await;
        (source == "db" || source == "l1") && vars["conversation_count"] == 3
    })
    .await;
    assert!(fresh, "fresh answers again, with the new conversation");
}

#[tokio::test]
async fn with_redis_and_the_database_both_gone_the_last_known_values_are_still_served() {
    let mut redis = RedisServer::start().await;
    let flags = redis_flags(&redis.url(), &unique_prefix());
    let (app, proxy, _known) = behind_a_proxy(&flags).await;

    redis.kill();
    proxy.cut();
    assert_served_stale(&app).await;
    for _ in 0..5 {
        let (vars, source) = call(&app, CALLER).await;
        assert_eq!(source, "stale");
        assert_eq!(vars["customer_name"], "Maria Lopez");
    }
}

/// Whether the webhook greets the known caller as `name`.
async fn answers_as(app: &TestApp, name: &str) -> bool {
    let (vars, _) = call(app, CALLER).await;
    vars["customer_name"] == name
}

async fn rename_in_sql(app: &TestApp, lead_id: &str, name: &str) {
    let mut conn = app.db.pg_connection().await;
    sqlx::query("update leads set customer_name = $1 where id = $2::uuid")
        .bind(name)
        .bind(lead_id)
        .execute(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn with_the_change_listener_cut_tier_one_is_trusted_only_briefly_and_notifications_resume() {
    // No Redis; queries go straight to the database, LISTEN through a proxy the test can cut.
    let db = Arc::new(TestDb::postgres().await);
    let proxy = TcpProxy::start(db.pg_addr()).await;
    let via = db.pg_url_via(proxy.addr);
    let flags = roomy_deadline(vec![
        "--database-listen-url".into(),
        via,
        "--warm-leads".into(),
        "0".into(),
    ]);
    let app = spawn_app_on(db, &strs(&flags)).await;
    wait_live(&app).await;
    let known = known_caller(&app).await;
    let cached = eventually(PROPAGATION, || async {
        let (vars, source) = call(&app, CALLER).await;
        source == "l1" && vars["customer_name"] == "Maria Lopez"
    })
    .await;
    assert!(cached, "the known caller is cached");

    proxy.cut();
    let lost = eventually(Duration::from_secs(10), || async {
        !app.cache.liveness().listen.load(Ordering::Acquire)
    })
    .await;
    assert!(lost, "the instance noticed its listener is gone");
    // A write around the service while no notification can reach the instance: its tier 1 is
    // no longer trusted for long, so the write is still seen.
    rename_in_sql(&app, known.lead_id(), "Marisol Garcia").await;
    assert!(
        eventually(Duration::from_secs(10), || answers_as(
            &app,
            "Marisol Garcia"
        ))
        .await,
        "a write made while notifications could not arrive is seen"
    );
    assert!(
        !app.cache.liveness().listen.load(Ordering::Acquire),
        "the listener was still cut"
    );

    // Back: the listener reconnects, and notifications carry writes again.
    proxy.restore();
    let back = eventually(Duration::from_secs(10), || async {
        app.cache.liveness().listen.load(Ordering::Acquire)
    })
    .await;
    assert!(back, "the listener reconnected");
    assert!(
        eventually(PROPAGATION, || async {
            let (vars, source) = call(&app, CALLER).await;
            source == "l1" && vars["customer_name"] == "Marisol Garcia"
        })
        .await,
        "the caller is cached again"
    );
    rename_in_sql(&app, known.lead_id(), "Maria Lopez").await;
    assert!(
        eventually(PROPAGATION, || answers_as(&app, "Maria Lopez")).await,
        "the next direct write arrives through its notification"
    );
}
