//! `hotline validate`, run as a library against real instances: all checks pass on a healthy
//! instance with Redis; a wrong webhook secret fails `webhook_contract`; Redis down fails `redis`
//! and `health`; nothing listening fails every check; the test organization is always gone
//! afterwards. The instance finds itself in its own list and acks a ping; without an admin token
//! the ping is skipped, with a wrong one it fails.

use std::sync::Arc;
use std::time::Duration;

use hotline::validate::{self, Report, ValidateOptions, CHECKS};

use crate::support::app::{spawn_app_on, TestApp, ADMIN_TOKEN, WEBHOOK_SECRET};
use crate::support::db::TestDb;
use crate::support::infra::{redis_flags, redis_url, unique_prefix, RedisServer};

fn options(app: &TestApp) -> ValidateOptions {
    let mut opts = ValidateOptions::new(app.base.clone());
    opts.admin_token = Some(ADMIN_TOKEN.into());
    opts.webhook_secret = Some(WEBHOOK_SECRET.into());
    // Timing never decides a test: debug builds are slow.
    opts.latency_target_ms = 10_000.0;
    opts
}

async fn spawn_with_redis(url: &str) -> TestApp {
    spawn_with_redis_as(url, &[]).await
}

async fn spawn_with_redis_as(url: &str, extra: &[&str]) -> TestApp {
    let mut flags = redis_flags(url, &unique_prefix());
    flags.extend(extra.iter().map(|s| s.to_string()));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    spawn_app_on(Arc::new(TestDb::postgres().await), &flags).await
}

/// How many organizations validate created are still in the database.
async fn validate_orgs_left(app: &TestApp) -> i64 {
    let mut conn = app.db.pg_connection().await;
    sqlx::query_scalar("SELECT count(*) FROM organizations WHERE name LIKE 'hotline-validate %'")
        .fetch_one(&mut conn)
        .await
        .expect("count organizations")
}

fn failed(report: &Report) -> Vec<&str> {
    report.failed()
}

#[tokio::test]
async fn a_healthy_instance_passes_every_check() {
    let app = spawn_with_redis(&redis_url()).await;
    let report = validate::run(&options(&app)).await;
    assert!(report.passed, "{}", report.to_text());
    let names: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, CHECKS, "every check, in order");
    assert_eq!(
        report.summary(),
        format!("validate: {} passed, 0 failed", CHECKS.len())
    );
    let latency = report.check("warm_latency").expect("warm_latency");
    assert!(latency.figure.contains("p50") && latency.figure.contains("p99"));
    let read_through = report.check("read_through").expect("read_through");
    assert!(read_through.figure.starts_with("db,"), "{read_through:?}");
    assert_eq!(
        validate_orgs_left(&app).await,
        0,
        "the test organization is gone"
    );
    let json = serde_json::to_value(&report).expect("json");
    assert_eq!(json["passed"], true);
    assert_eq!(json["checks"].as_array().map(Vec::len), Some(CHECKS.len()));
}

#[tokio::test]
async fn the_instance_lists_itself_and_acks_a_ping() {
    let app = spawn_with_redis_as(&redis_url(), &["--instance-id", "validate-self-1"]).await;
    let report = validate::run(&options(&app)).await;
    assert!(report.passed, "{}", report.to_text());
    assert!(report.skipped().is_empty(), "{}", report.to_text());
    let instances = report.check("instances").expect("instances");
    assert!(instances.passed, "{instances:?}");
    assert!(
        instances.detail.contains("`validate-self-1` listed among"),
        "{instances:?}"
    );
    let ping = report.check("admin_ping").expect("admin_ping");
    assert!(ping.passed && !ping.skipped, "{ping:?}");
    assert!(
        ping.detail.contains("`validate-self-1` acked ping: pong"),
        "{ping:?}"
    );
    assert!(ping.figure.ends_with(" ms"), "{ping:?}");
}

#[tokio::test]
async fn without_an_admin_token_the_ping_is_skipped_not_failed() {
    let app = spawn_with_redis(&redis_url()).await;
    let mut opts = options(&app);
    opts.admin_token = None;
    let report = validate::run(&opts).await;
    let ping = report.check("admin_ping").expect("admin_ping");
    assert!(ping.passed && ping.skipped, "{ping:?}");
    assert!(ping.detail.contains("--admin-token"), "{ping:?}");
    assert_eq!(report.skipped(), vec!["admin_ping"]);
    assert!(!report.failed().contains(&"admin_ping"));
    assert!(report.check("instances").is_some_and(|c| c.passed));
    assert!(
        report.summary().contains(" 1 skipped,"),
        "{}",
        report.summary()
    );
    assert!(
        report
            .to_text()
            .lines()
            .any(|l| l.starts_with("SKIP  admin_ping")),
        "{}",
        report.to_text()
    );
}

#[tokio::test]
async fn a_wrong_admin_token_fails_the_ping() {
    let app = spawn_with_redis(&redis_url()).await;
    let mut opts = options(&app);
    opts.admin_token = Some("not-the-admin-token-0123456789abcdef".into());
    let report = validate::run(&opts).await;
    let ping = report.check("admin_ping").expect("admin_ping");
    assert!(!ping.passed && !ping.skipped, "{ping:?}");
    assert!(ping.detail.contains("HTTP 401"), "{ping:?}");
    assert!(report.check("instances").is_some_and(|c| c.passed));
}

#[tokio::test]
async fn a_wrong_webhook_secret_fails_the_webhook_contract() {
    let app = spawn_with_redis(&redis_url()).await;
    let mut opts = options(&app);
    opts.webhook_secret = Some("not-the-webhook-secret-0123456789".into());
    let report = validate::run(&opts).await;
    assert!(!report.passed);
    let failed = failed(&report);
    assert!(failed.contains(&"webhook_contract"), "{}", report.to_text());
    assert!(report.summary().contains("webhook_contract"));
    assert!(report.check("health").is_some_and(|c| c.passed));
    assert!(report.check("redis").is_some_and(|c| c.passed));
    assert_eq!(
        validate_orgs_left(&app).await,
        0,
        "cleaned up after failed checks too"
    );
}

#[tokio::test]
async fn redis_down_fails_redis_and_health() {
    let mut redis = RedisServer::start().await;
    let app = spawn_with_redis(&redis.url()).await;
    redis.kill();
    let report = validate::run(&options(&app)).await;
    assert!(!report.passed);
    let failed = failed(&report);
    assert!(failed.contains(&"redis"), "{}", report.to_text());
    assert!(failed.contains(&"health"), "{}", report.to_text());
    let health = report.check("health").expect("health");
    assert!(health.detail.contains("redis"), "{health:?}");
    assert!(report.summary().contains("redis"));
    assert_eq!(validate_orgs_left(&app).await, 0);
}

#[tokio::test]
async fn redis_not_configured_is_skipped_not_failed() {
    let app = spawn_app_on(Arc::new(TestDb::postgres().await), &[]).await;
    let report = validate::run(&options(&app)).await;
    let redis = report.check("redis").expect("redis");
    assert!(redis.skipped, "{redis:?}");
    assert!(
        redis.detail.contains("Redis is not configured"),
        "{redis:?}"
    );
    assert!(report.failed().is_empty(), "{}", report.to_text());
    assert!(report.passed, "{}", report.to_text());
    // Alone, the instance still lists itself and acks its own ping.
    let instances = report.check("instances").expect("instances");
    assert!(instances.detail.contains("alone"), "{instances:?}");
    let ping = report.check("admin_ping").expect("admin_ping");
    assert!(ping.detail.contains("pong"), "{ping:?}");
}

#[tokio::test]
async fn nothing_listening_fails_every_check_quickly() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut opts = ValidateOptions::new(format!("http://127.0.0.1:{port}"));
    opts.request_timeout = Duration::from_secs(2);
    let started = std::time::Instant::now();
    let report = validate::run(&opts).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(report.checks.len(), CHECKS.len());
    assert!(report.checks.iter().all(|c| !c.passed));
    assert!(
        report.checks[0].detail.contains("unreachable"),
        "{report:?}"
    );
    assert!(report.summary().contains("0 passed"));
}

/// `hotline validate` as an operator runs it: the binary, secrets from the environment.
async fn run_binary(app: &TestApp, webhook_secret: &str, json: bool) -> (Option<i32>, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_hotline"));
    cmd.args([
        "validate",
        "--url",
        &app.base,
        "--latency-target-ms",
        "10000",
    ])
    .env("ADMIN_TOKEN", ADMIN_TOKEN)
    .env("WEBHOOK_SECRET", webhook_secret)
    .env_remove("HOTLINE_URL")
    .kill_on_drop(true);
    if json {
        cmd.arg("--json");
    }
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("validate finishes")
        .expect("validate runs");
    (
        out.status.code(),
        String::from_utf8(out.stdout).expect("utf-8"),
    )
}

#[tokio::test]
async fn the_command_exits_non_zero_naming_the_failed_check() {
    let app = spawn_with_redis(&redis_url()).await;

    let (code, text) = run_binary(&app, WEBHOOK_SECRET, false).await;
    assert_eq!(code, Some(0), "{text}");
    for check in CHECKS {
        assert!(
            text.lines().any(|l| l.contains(check)),
            "one line for {check}: {text}"
        );
    }

    let (code, out) = run_binary(&app, "not-the-webhook-secret-0123456789", true).await;
    assert_eq!(code, Some(1), "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("--json prints JSON");
    assert_eq!(report["passed"], false);
    let failed: Vec<&str> = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["passed"] == false)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(failed.contains(&"webhook_contract"), "{out}");
    assert_eq!(validate_orgs_left(&app).await, 0);
}
