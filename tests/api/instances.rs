//! Instances that know each other: heartbeats, the live list, admin messages, drain. Real
//! Redis; instances on port 0 as the other tests start them, and one `hotline serve` process
//! of its own to kill hard.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hotline::admin::FILTER_MAX;
use serde_json::{json, Value};

use crate::support::app::{assert_error, spawn_app_on, TestApp, ADMIN_TOKEN, WEBHOOK_SECRET};
use crate::support::capture::Capture;
use crate::support::db::TestDb;
use crate::support::infra::{eventually, redis_flags, redis_url, unique_prefix};
use crate::support::sse::SseClient;

const WAIT: Duration = Duration::from_secs(15);

async fn instance(db: &Arc<TestDb>, prefix: &str, id: &str) -> TestApp {
    let mut flags = redis_flags(&redis_url(), prefix);
    flags.extend(
        [
            "--instance-id",
            id,
            "--heartbeat-interval-s",
            "1",
            "--alert-hold-s",
            "2",
        ]
        .map(String::from),
    );
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    spawn_app_on(db.clone(), &flags).await
}

async fn live_ids(app: &TestApp) -> Vec<String> {
    let r = app
        .client
        .get(app.url("/api/monitoring/instances"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let mut ids: Vec<String> = body["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["instance_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

async fn sees(app: &TestApp, expected: &[&str]) -> bool {
    let ids = live_ids(app).await;
    ids == expected.iter().map(|s| s.to_string()).collect::<Vec<_>>()
}

async fn events(app: &TestApp) -> SseClient {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    SseClient::connect_with(&app.url("/api/events"), &[("Authorization", &auth)]).await
}

async fn send(app: &TestApp, body: Value) -> reqwest::Response {
    app.post_admin("/api/admin/messages", &body).await
}

/// The message a 202 answered, once every expected instance has acked it.
async fn acked_after(app: &TestApp, sent: reqwest::Response) -> Value {
    assert_eq!(sent.status(), 202);
    let sent: Value = sent.json().await.unwrap();
    acked(app, sent["id"].as_str().unwrap()).await
}

/// The message once every expected instance has acked it.
async fn acked(app: &TestApp, id: &str) -> Value {
    let until = Instant::now() + WAIT;
    loop {
        let r = app.get_admin(&format!("/api/admin/messages/{id}")).await;
        assert_eq!(r.status(), 200);
        let m: Value = r.json().await.unwrap();
        if m["missing"].as_array().unwrap().is_empty() {
            return m;
        }
        assert!(Instant::now() < until, "not every instance acked: {m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn instances_see_each_other_and_a_graceful_stop_leaves_at_once() {
    let db = Arc::new(TestDb::postgres().await);
    let prefix = unique_prefix();
    let a = instance(&db, &prefix, "a").await;
    let b = instance(&db, &prefix, "b").await;
    let c = instance(&db, &prefix, "c").await;
    for app in [&a, &b, &c] {
        assert!(eventually(WAIT, || sees(app, &["a", "b", "c"])).await);
    }
    let r = a
        .client
        .get(a.url("/api/monitoring/instances"))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["self"], "a");
    assert_eq!(body["shared"], true);
    for record in body["instances"].as_array().unwrap() {
        let mut keys: Vec<&str> = record
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "calls_active",
                "database",
                "draining",
                "instance_id",
                "last_seen",
                "redis",
                "requests_per_s",
                "started_at",
                "version"
            ],
            "{record}"
        );
        assert_eq!(record["redis"], "up");
        assert_eq!(record["database"], "up");
        assert_eq!(record["draining"], false);
    }

    let mut on_a = events(&a).await;
    c.stop().await;
    // Gone at once: no waiting for missed beats.
    assert_eq!(live_ids(&a).await, ["a", "b"]);
    assert_eq!(live_ids(&b).await, ["a", "b"]);
    let left = on_a
        .next_named("instance.left", Instant::now() + WAIT)
        .await
        .expect("instance.left");
    assert_eq!(left.json()["data"]["instance_id"], "c");
    // Left for good: no beat brings it back, and nobody finds it lost.
    assert!(on_a
        .next_named("instance.lost", Instant::now() + Duration::from_secs(4))
        .await
        .is_none());
    assert_eq!(live_ids(&b).await, ["a", "b"]);
}

#[tokio::test]
async fn an_instance_killed_hard_is_lost_once_and_the_alert_fires() {
    let db = Arc::new(TestDb::postgres().await);
    let prefix = unique_prefix();
    let a = instance(&db, &prefix, "a").await;
    let b = instance(&db, &prefix, "b").await;
    let redis = redis_url();
    let victim = crate::startup::Hotline::spawn(
        &["serve"],
        &[
            ("DATABASE_URL", db.url.as_str()),
            ("LISTEN_ADDR", "127.0.0.1:0"),
            ("ADMIN_TOKEN", ADMIN_TOKEN),
            ("WEBHOOK_SECRET", WEBHOOK_SECRET),
            ("SPOOL_DIR", "spool"),
            ("WARM_LEADS", "0"),
            ("REDIS_URL", redis.as_str()),
            ("REDIS_KEY_PREFIX", prefix.as_str()),
            ("INSTANCE_ID", "victim"),
            ("HEARTBEAT_INTERVAL_S", "1"),
            ("LOG_FORMAT", "json"),
        ],
    );
    victim.serving_base().await;
    assert!(eventually(WAIT, || sees(&a, &["a", "b", "victim"])).await);
    let mut on_a = events(&a).await;
    let mut on_b = events(&b).await;

    let mut victim = victim;
    victim.child.start_kill().expect("SIGKILL");
    let _ = victim.child.wait().await;
    let killed = Instant::now();
    assert!(eventually(WAIT, || sees(&b, &["a", "b"])).await);
    assert!(
        killed.elapsed() >= Duration::from_secs(2),
        "gone only after missed beats"
    );

    // Exactly one instance.lost, whichever survivor saw it first; both streams carry it.
    let lost = on_a
        .next_named("instance.lost", Instant::now() + WAIT)
        .await
        .expect("instance.lost");
    assert_eq!(lost.json()["data"]["instance_id"], "victim");
    let finder = lost.json()["instance_id"].as_str().unwrap().to_string();
    let seen_on_b = on_b
        .next_named("instance.lost", Instant::now() + WAIT)
        .await
        .expect("instance.lost on b");
    assert_eq!(seen_on_b.id, lost.id);
    // No second one, on either stream, over several more beats.
    assert!(on_a
        .next_named("instance.lost", Instant::now() + Duration::from_secs(4))
        .await
        .is_none());
    assert!(on_b
        .next_named("instance.lost", Instant::now() + Duration::from_millis(100))
        .await
        .is_none());

    // The survivor that found it fires instance_lost, and resolves it after the hold.
    let finder_app = if finder == "a" { &a } else { &b };
    let r = finder_app
        .client
        .get(finder_app.url("/api/monitoring/alerts"))
        .send()
        .await
        .unwrap();
    let alerts: Value = r.json().await.unwrap();
    let recent = alerts["recent"].as_array().unwrap();
    assert!(
        recent.iter().any(|a| a["name"] == "instance_lost"),
        "instance_lost fired on {finder}: {alerts}"
    );
    assert!(
        eventually(WAIT, || async {
            let r = finder_app
                .client
                .get(finder_app.url("/api/monitoring/alerts"))
                .send()
                .await
                .unwrap();
            let alerts: Value = r.json().await.unwrap();
            let active = alerts["active"].as_array().unwrap();
            !active.iter().any(|a| a["name"] == "instance_lost")
        })
        .await,
        "instance_lost resolves after the hold"
    );
    let metrics = finder_app.metrics_text().await;
    assert!(
        metrics.contains("hotline_alert_firing{alert=\"instance_lost\"} 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn admin_messages_reach_every_instance_and_each_acks_once() {
    let db = Arc::new(TestDb::postgres().await);
    let prefix = unique_prefix();
    let a = instance(&db, &prefix, "a").await;
    let b = instance(&db, &prefix, "b").await;
    let c = instance(&db, &prefix, "c").await;
    assert!(eventually(WAIT, || sees(&a, &["a", "b", "c"])).await);
    let mut stream = events(&b).await;

    let r = send(&a, json!({"to": "all", "command": "ping"})).await;
    assert_eq!(r.status(), 202);
    let sent: Value = r.json().await.unwrap();
    assert_eq!(sent["expected"], json!(["a", "b", "c"]));
    assert_eq!(sent["to"], "all");
    assert!(sent["sent_at"].is_string());
    let id = sent["id"].as_str().unwrap();
    let m = acked(&b, id).await;
    let acks = m["acks"].as_object().unwrap();
    assert_eq!(acks.len(), 3, "{m}");
    for ack in acks.values() {
        assert_eq!(ack["ok"], true);
        assert_eq!(ack["detail"], "pong");
    }
    // One admin.message and one admin.ack per instance on the bus, and no more.
    let mut seen_acks = Vec::new();
    let until = Instant::now() + Duration::from_secs(2);
    while let Some(e) = stream
        .next(until.saturating_duration_since(Instant::now()))
        .await
    {
        if e.name == "admin.ack" {
            seen_acks.push(
                e.json()["data"]["instance_id"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
    }
    seen_acks.sort();
    assert_eq!(seen_acks, ["a", "b", "c"]);

    // To one instance: only it acks.
    let r = send(&b, json!({"to": "c", "command": "ping"})).await;
    assert_eq!(r.status(), 202);
    let sent: Value = r.json().await.unwrap();
    assert_eq!(sent["expected"], json!(["c"]));
    let m = acked(&a, sent["id"].as_str().unwrap()).await;
    assert_eq!(
        m["acks"].as_object().unwrap().keys().collect::<Vec<_>>(),
        ["c"]
    );

    // An instance that is not live, and bad messages.
    assert_error(
        send(&a, json!({"to": "nobody", "command": "ping"})).await,
        404,
    )
    .await;
    for body in [
        json!({"to": "all", "command": "reboot"}),
        json!({"to": "all"}),
        json!({"command": "ping"}),
        json!({"to": 3, "command": "ping"}),
        json!({"to": "all", "command": "ping", "args": {"x": 1}}),
        json!({"to": "all", "command": "log_level"}),
        json!({"to": "all", "command": "log_level", "args": {"filter": 3}}),
        json!({"to": "all", "command": "ping", "extra": true}),
    ] {
        assert_error(send(&a, body).await, 422).await;
    }
    // The filter's bound counts characters, as the API document does, not bytes: at the bound
    // the body is valid and only the unknown instance refuses it.
    let filter = |n| json!({"filter": "é".repeat(n)});
    let to_nobody = |args| json!({"to": "nobody", "command": "log_level", "args": args});
    assert_error(send(&a, to_nobody(filter(FILTER_MAX))).await, 404).await;
    assert_error(send(&a, to_nobody(filter(FILTER_MAX + 1))).await, 422).await;
    assert_error(a.get_admin("/api/admin/messages/not-a-message").await, 404).await;
    assert_error(
        a.get_admin(&format!("/api/admin/messages/{}", uuid::Uuid::new_v4()))
            .await,
        404,
    )
    .await;
    // Every admin path wants the token.
    let r = a
        .client
        .post(a.url("/api/admin/messages"))
        .json(&json!({"to": "all", "command": "drain"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 401).await;
    let r = a
        .client
        .get(a.url(&format!("/api/admin/messages/{id}")))
        .send()
        .await
        .unwrap();
    assert_error(r, 401).await;
    for app in [&a, &b, &c] {
        let r = app.client.get(app.url("/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200, "nothing drained by a refused message");
    }
}

#[tokio::test]
async fn drain_fails_healthz_only_and_resume_restores_it() {
    let db = Arc::new(TestDb::postgres().await);
    let prefix = unique_prefix();
    let a = instance(&db, &prefix, "a").await;
    let b = instance(&db, &prefix, "b").await;
    assert!(eventually(WAIT, || sees(&a, &["a", "b"])).await);
    crate::webhooks::known_caller(&a).await;

    let r = send(&a, json!({"to": "b", "command": "drain"})).await;
    assert_eq!(r.status(), 202);
    acked_after(&a, r).await;
    let r = b.client.get(b.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"status": "draining"})
    );
    // Everything else is still served.
    let r = b
        .initiate(&crate::webhooks::initiation_body(
            crate::webhooks::CALLER,
            crate::webhooks::ORG_PHONE,
        ))
        .await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["type"], "conversation_initiation_client_data");
    assert_eq!(b.get_admin("/api/calls").await.status(), 200);
    assert_eq!(
        a.client
            .get(a.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let listed = live_ids(&a).await;
    assert_eq!(listed, ["a", "b"]);
    assert!(
        eventually(WAIT, || async {
            let r = a
                .client
                .get(a.url("/api/monitoring/instances"))
                .send()
                .await
                .unwrap();
            let body: Value = r.json().await.unwrap();
            body["instances"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["instance_id"] == "b" && i["draining"] == true)
        })
        .await,
        "the list shows b draining"
    );

    let r = send(&a, json!({"to": "b", "command": "resume"})).await;
    acked_after(&a, r).await;
    assert_eq!(
        b.client
            .get(b.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn flush_l1_empties_tier_one() {
    let db = Arc::new(TestDb::postgres().await);
    let prefix = unique_prefix();
    let a = instance(&db, &prefix, "a").await;
    crate::webhooks::known_caller(&a).await;
    assert!(
        a.initiate(&crate::webhooks::initiation_body(
            crate::webhooks::CALLER,
            crate::webhooks::ORG_PHONE
        ))
        .await
        .status()
            == 200
    );
    assert!(l1_entries(&a).await > 0);
    let r = send(&a, json!({"to": "a", "command": "flush_l1"})).await;
    let m = acked_after(&a, r).await;
    assert_eq!(m["acks"]["a"]["ok"], true);
    assert_eq!(l1_entries(&a).await, 0);
}

#[tokio::test]
async fn log_level_changes_what_the_instance_logs() {
    let capture = Capture::default();
    hotline::telemetry::init_with_writer(hotline::config::LogFormat::Text, capture.clone());
    let db = Arc::new(TestDb::postgres().await);
    let prefix = unique_prefix();
    let a = instance(&db, &prefix, "a").await;
    // `/healthz` is logged at debug: not before.
    a.client.get(a.url("/healthz")).send().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !capture.text().contains("/healthz"),
        "debug before the change"
    );

    let r = send(
        &a,
        json!({"to": "a", "command": "log_level", "args": {"filter": "info,hotline=debug"}}),
    )
    .await;
    let m = acked_after(&a, r).await;
    assert_eq!(m["acks"]["a"]["ok"], true, "{m}");
    a.client.get(a.url("/healthz")).send().await.unwrap();
    assert!(
        eventually(WAIT, || std::future::ready(
            capture.text().contains("/healthz")
        ))
        .await,
        "a debug line after the change"
    );

    // An invalid filter is acked `ok: false`, and changes nothing.
    let r = send(
        &a,
        json!({"to": "a", "command": "log_level", "args": {"filter": "hotline=[[nope"}}),
    )
    .await;
    let m = acked_after(&a, r).await;
    assert_eq!(m["acks"]["a"]["ok"], false, "{m}");
    assert!(
        m["acks"]["a"]["detail"]
            .as_str()
            .unwrap()
            .contains("not a log filter"),
        "{m}"
    );
}

#[tokio::test]
async fn without_redis_an_instance_knows_only_itself() {
    let app = spawn_app_on(
        Arc::new(TestDb::postgres().await),
        &["--instance-id", "alone"],
    )
    .await;
    let r = app
        .client
        .get(app.url("/api/monitoring/instances"))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["self"], "alone");
    assert_eq!(body["shared"], false);
    assert_eq!(live_ids(&app).await, ["alone"]);
    assert_eq!(body["instances"][0]["redis"], "disabled");
    let r = send(&app, json!({"to": "all", "command": "ping"})).await;
    assert_eq!(r.status(), 202);
    let sent: Value = r.json().await.unwrap();
    assert_eq!(sent["shared"], false);
    assert_eq!(sent["expected"], json!(["alone"]));
    let m = acked(&app, sent["id"].as_str().unwrap()).await;
    assert_eq!(m["acks"]["alone"]["ok"], true);
    assert_error(
        send(&app, json!({"to": "other", "command": "ping"})).await,
        404,
    )
    .await;
}

async fn l1_entries(app: &TestApp) -> u64 {
    let r = app
        .client
        .get(app.url("/api/monitoring/stats/cache"))
        .send()
        .await
        .unwrap();
    r.json::<Value>().await.unwrap()["l1_entries"]
        .as_u64()
        .unwrap()
}
