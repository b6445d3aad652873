//! `hotline drain`, the binary as a preStop hook runs it: it drains the instance at `--url` (and
//! only that one), waits `--wait-s`, and exits 0; a refused token, a missing token, a bad flag or
//! nothing listening exit non-zero with one clear line, and drain nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::app::{spawn_app_on, TestApp, ADMIN_TOKEN};
use crate::support::db::TestDb;
use crate::support::infra::{eventually, redis_flags, redis_url, unique_prefix};

const WAIT: Duration = Duration::from_secs(15);

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// Runs `hotline drain ARGS` with `token` (if any) as ADMIN_TOKEN, and nothing else from the
/// environment that drain reads.
async fn drain(args: &[&str], token: Option<&str>) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_hotline"));
    cmd.arg("drain")
        .args(args)
        .env_remove("HOTLINE_URL")
        .env_remove("ADMIN_TOKEN")
        .env_remove("DRAIN_WAIT_S")
        .env_remove("DRAIN_ACK_TIMEOUT_S")
        .kill_on_drop(true);
    if let Some(token) = token {
        cmd.env("ADMIN_TOKEN", token);
    }
    let started = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("drain finishes")
        .expect("drain runs");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: started.elapsed(),
    }
}

async fn healthz(app: &TestApp) -> (u16, Value) {
    let r = app.client.get(app.url("/healthz")).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn instance(db: &Arc<TestDb>, prefix: &str, id: &str) -> TestApp {
    let mut flags = redis_flags(&redis_url(), prefix);
    flags.extend(["--instance-id", id, "--heartbeat-interval-s", "1"].map(String::from));
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

#[tokio::test]
async fn drain_takes_out_the_instance_it_runs_against_and_no_other() {
    let db = Arc::new(TestDb::postgres().await);
    let prefix = unique_prefix();
    let a = instance(&db, &prefix, "drain-a").await;
    let b = instance(&db, &prefix, "drain-b").await;
    assert!(
        eventually(WAIT, || async {
            live_ids(&a).await == ["drain-a", "drain-b"]
        })
        .await,
        "the instances see each other"
    );

    let run = drain(&["--url", &b.base, "--wait-s", "1"], Some(ADMIN_TOKEN)).await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("drained `drain-b`"), "{}", run.stdout);
    assert!(run.took >= Duration::from_secs(1), "--wait-s 1 waits");

    assert_eq!(healthz(&b).await, (503, json!({"status": "draining"})));
    assert_eq!(
        healthz(&a).await.0,
        200,
        "only the instance at --url drains"
    );
    // A drained instance still serves everything else.
    assert_eq!(b.get_admin("/api/calls").await.status(), 200);

    // Draining again is harmless (a preStop hook may run twice).
    let run = drain(&["--url", &b.base], Some(ADMIN_TOKEN)).await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert_eq!(healthz(&b).await.0, 503);
}

#[tokio::test]
async fn drain_fails_clearly_and_drains_nothing_without_the_right_token() {
    let app = spawn_app_on(Arc::new(TestDb::postgres().await), &[]).await;

    let run = drain(
        &["--url", &app.base],
        Some("not-the-admin-token-0123456789"),
    )
    .await;
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("admin token was refused"),
        "{}",
        run.stderr
    );
    assert_eq!(healthz(&app).await.0, 200, "nothing drained");

    let run = drain(&["--url", &app.base], None).await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("ADMIN_TOKEN"), "{}", run.stderr);

    let run = drain(&["--url", &app.base, "--wait-s", "soon"], Some(ADMIN_TOKEN)).await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("DRAIN_WAIT_S"), "{}", run.stderr);

    let run = drain(&["--url", &app.base, "--no-such-flag"], Some(ADMIN_TOKEN)).await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert_eq!(healthz(&app).await.0, 200, "still nothing drained");

    // Nothing listening: the connection failure is named, quickly.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let run = drain(&["--url", &format!("http://{closed}")], Some(ADMIN_TOKEN)).await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("connection failed"), "{}", run.stderr);
    assert!(run.took < Duration::from_secs(10));

    // A failed drain still waits --wait-s (as a stop hook, the load balancers need that time
    // anyway), then exits 1.
    let run = drain(
        &["--url", &format!("http://{closed}"), "--wait-s", "1"],
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.took >= Duration::from_secs(1), "waited {:?}", run.took);

    // An instance that accepts but never answers: the whole drain is bounded by
    // --ack-timeout-s, and says so.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let run = drain(
        &[
            "--url",
            &format!("http://{silent_addr}"),
            "--ack-timeout-s",
            "1",
        ],
        Some(ADMIN_TOKEN),
    )
    .await;
    drop(silent);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("timed out"), "{}", run.stderr);
}

/// An instance that answers every step of the drain, each just within the per-request timeout,
/// but never acks: the steps together outlast `--ack-timeout-s`, and the whole drain is cut off
/// at that bound (a preStop hook must leave the rest of the grace period to what follows it).
#[tokio::test]
async fn a_slow_instance_cannot_stretch_the_drain_past_its_bound() {
    use axum::routing::get;
    use axum::{Json, Router};

    const STEP: Duration = Duration::from_millis(1200);
    async fn slow(body: Value) -> Json<Value> {
        tokio::time::sleep(STEP).await;
        Json(body)
    }
    // A stand-in for a hotline under stress, not a route of hotline's API.
    #[allow(clippy::disallowed_methods)]
    let app = Router::new()
        .route(
            "/api/monitoring/instances",
            get(|| slow(json!({"self": "slow-1", "instances": []}))),
        )
        .route(
            "/api/admin/messages",
            axum::routing::post(|| async {
                tokio::time::sleep(STEP).await;
                (
                    axum::http::StatusCode::ACCEPTED,
                    Json(json!({"id": "m-1", "expected": ["slow-1"]})),
                )
            }),
        )
        .route(
            "/api/admin/messages/{id}",
            get(|| slow(json!({"acks": {}, "missing": ["slow-1"]}))),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    // Each step (1.2 s) is within the per-request timeout (2 s); the three of them are not
    // within the drain's 2 s.
    let run = drain(&["--url", &base, "--ack-timeout-s", "2"], Some(ADMIN_TOKEN)).await;
    server.abort();
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "timed out after 2 s without an ack from the instance at {base}"
        )),
        "{}",
        run.stderr
    );
}
