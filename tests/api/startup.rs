//! `hotline serve` and `hotline migrate` as an operator runs them: the binary, configured by its
//! environment. An instance starts while its database is down, serves what it can, and
//! migrates and recovers when the database returns, without a restart; it refuses to start
//! without the secrets every instance must share, unless it is a demo.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::cache::{call, strs, wait_live};
use crate::support::app::{spawn_app_on, ADMIN_TOKEN, WEBHOOK_SECRET};
use crate::support::db::TestDb;
use crate::support::infra::{
    eventually, redis_exists, redis_flags, redis_hget, redis_url, unique_prefix, TcpProxy,
};
use crate::webhooks::{
    assert_defaults, initiation_body, initiation_ok, known_caller, CALLER, ORG_PHONE,
};

/// How long a process may take to start or to exit on a busy machine.
const PATIENCE: Duration = Duration::from_secs(60);

/// A `hotline` process of the test's own, its stderr collected line by line. Killed on drop.
pub(crate) struct Hotline {
    pub(crate) child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Hotline {
    /// Runs `hotline <args>` in a directory of its own, with only `env` (and `PATH`) set.
    pub(crate) fn spawn(args: &[&str], env: &[(&str, &str)]) -> Hotline {
        let dir = tempfile::tempdir().expect("a working directory");
        let mut child = Command::new(env!("CARGO_BIN_EXE_hotline"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env.iter().copied())
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the hotline binary runs");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let sink = stderr.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().expect("lock").push(line);
            }
        });
        Hotline {
            child,
            stderr,
            _dir: dir,
        }
    }

    pub(crate) fn stderr(&self) -> Vec<String> {
        self.stderr.lock().expect("lock").clone()
    }

    /// The address it serves on, from its `hotline is serving` log line (JSON logs).
    pub(crate) async fn serving_base(&self) -> String {
        let mut addr = None;
        let up = eventually(PATIENCE, || {
            addr = self.stderr().iter().find_map(|line| {
                let v: Value = serde_json::from_str(line).ok()?;
                (v["message"] == "hotline is serving")
                    .then(|| v["addr"].as_str().map(String::from))
                    .flatten()
            });
            std::future::ready(addr.is_some())
        })
        .await;
        assert!(up, "hotline serves: {:?}", self.stderr());
        format!("http://{}", addr.expect("an address"))
    }

    /// Waits for it to exit; its status code and stderr.
    async fn exited(mut self) -> (Option<i32>, Vec<String>) {
        let status = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("it exits")
            .expect("a status");
        // Let the reader take the last lines.
        let closed = eventually(Duration::from_secs(5), || {
            std::future::ready(Arc::strong_count(&self.stderr) == 1)
        })
        .await;
        assert!(closed, "stderr is read to its end");
        (status.code(), self.stderr())
    }
}

/// The environment of an instance on `database_url` with the shared secrets.
fn serve_env<'a>(database_url: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("DATABASE_URL", database_url),
        ("LISTEN_ADDR", "127.0.0.1:0"),
        ("ADMIN_TOKEN", ADMIN_TOKEN),
        ("WEBHOOK_SECRET", WEBHOOK_SECRET),
        ("SPOOL_DIR", "spool"),
        ("WARM_LEADS", "0"),
        ("WEBHOOK_DEADLINE_MS", "2000"),
        ("LOG_FORMAT", "json"),
        ("RUST_LOG", "info"),
    ];
    env.extend_from_slice(extra);
    env
}

async fn status_and_json(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    (status, r.json().await.expect("a JSON body"))
}

/// The initiation webhook for the known caller, as ElevenLabs sends it, to a running binary.
async fn ring(client: &reqwest::Client, base: &str) -> reqwest::Response {
    client
        .post(format!(
            "{base}/webhooks/elevenlabs/conversation-initiation"
        ))
        .bearer_auth(WEBHOOK_SECRET)
        .json(&initiation_body(CALLER, ORG_PHONE))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn serve_starts_with_the_database_down_and_recovers_when_it_returns() {
    // A fresh database, never migrated, behind a proxy that refuses every connection.
    let db = TestDb::postgres().await;
    let proxy = TcpProxy::start(db.pg_addr()).await;
    proxy.cut();
    let url = db.pg_url_via(proxy.addr);
    let hotline = Hotline::spawn(&["serve"], &serve_env(&url, &[]));
    let base = hotline.serving_base().await;
    let client = reqwest::Client::new();

    // It serves: the load balancer's probe, and the webhook with defaults.
    let r = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = ring(&client, &base).await;
    let (vars, source) = initiation_ok(r).await;
    assert_eq!(source, "default");
    assert_defaults(&vars, "", CALLER);
    // It says the database is down, and refuses writes.
    let (status, health) = status_and_json(
        client
            .get(format!("{base}/api/monitoring/health"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["status"], "unhealthy");
    assert_eq!(health["checks"]["database"]["status"], "down");
    let (status, body) = status_and_json(
        client
            .post(format!("{base}/api/organizations"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"name": "Acme Dental", "phone_number": ORG_PHONE}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "service_unavailable");
    let mut conn = db.pg_connection().await;
    let tables: i64 = sqlx::query_scalar(
        "select count(*) from information_schema.tables where table_name = 'organizations'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        tables, 0,
        "nothing migrated while the database was unreachable"
    );

    // The database answers: the same process migrates it and recovers.
    proxy.restore();
    let healthy = eventually(PATIENCE, || async {
        let r = client
            .get(format!("{base}/api/monitoring/health"))
            .send()
            .await
            .unwrap();
        let (status, body) = status_and_json(r).await;
        status == 200 && body["status"] == "healthy"
    })
    .await;
    assert!(healthy, "healthy once migrated: {:?}", hotline.stderr());
    let tables: i64 = sqlx::query_scalar(
        "select count(*) from information_schema.tables \
         where table_name in ('organizations', 'leads', 'conversations')",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(tables, 3, "migrated");

    let (status, org) = status_and_json(
        client
            .post(format!("{base}/api/organizations"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"name": "Acme Dental", "phone_number": ORG_PHONE}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{org}");
    let (status, lead) = status_and_json(
        client
            .post(format!("{base}/api/leads"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"organization_id": org["id"], "phone_number": CALLER, "customer_name": "Maria Lopez"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{lead}");
    let r = ring(&client, &base).await;
    let (vars, source) = initiation_ok(r).await;
    assert_eq!(source, "db");
    assert_eq!(vars["customer_name"], "Maria Lopez");
    assert_eq!(vars["lead_id"], lead["id"]);
    assert_eq!(vars["organization_name"], "Acme Dental");
}

#[tokio::test]
async fn an_instance_restarted_during_an_outage_answers_from_what_redis_holds() {
    let db = Arc::new(TestDb::postgres().await);
    let (redis, prefix) = (redis_url(), unique_prefix());
    let first = spawn_app_on(db.clone(), &strs(&redis_flags(&redis, &prefix))).await;
    wait_live(&first).await;
    let known = known_caller(&first).await;
    let (org_id, lead_id) = (known.org_id(), known.lead_id());
    let filled = eventually(PATIENCE, || async {
        call(&first, CALLER).await;
        let (org_tag, caller_tag) = (first.phone_tag(ORG_PHONE), first.phone_tag(CALLER));
        redis_exists(&redis, &format!("{prefix}:v1:orgphone:{org_tag}")).await
            && redis_exists(
                &redis,
                &format!("{prefix}:v1:leadphone:{org_id}:{caller_tag}"),
            )
            .await
            && redis_hget(&redis, &format!("{prefix}:v1:lead:{lead_id}"), "context")
                .await
                .is_some()
    })
    .await;
    assert!(filled, "the first instance filled Redis");
    first.stop().await;

    // The database becomes unreachable, and a new instance starts.
    let proxy = TcpProxy::start(db.pg_addr()).await;
    proxy.cut();
    let url = db.pg_url_via(proxy.addr);
    let hotline = Hotline::spawn(
        &["serve"],
        &serve_env(
            &url,
            &[("REDIS_URL", &redis), ("REDIS_KEY_PREFIX", &prefix)],
        ),
    );
    let base = hotline.serving_base().await;
    let client = reqwest::Client::new();
    let from_redis = eventually(PATIENCE, || async {
        let r = ring(&client, &base).await;
        let (vars, source) = initiation_ok(r).await;
        source == "l2" && vars["customer_name"] == "Maria Lopez" && vars["lead_id"] == lead_id
    })
    .await;
    assert!(from_redis, "answered from Redis: {:?}", hotline.stderr());
    let r = client
        .get(format!("{base}/api/monitoring/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
}

#[tokio::test]
async fn serve_refuses_to_start_without_the_shared_secrets() {
    for (unset, kept) in [
        ("ADMIN_TOKEN", ("WEBHOOK_SECRET", WEBHOOK_SECRET)),
        ("WEBHOOK_SECRET", ("ADMIN_TOKEN", ADMIN_TOKEN)),
    ] {
        let hotline = Hotline::spawn(
            &["serve"],
            &[
                ("DATABASE_URL", "sqlite://hotline.db"),
                ("LISTEN_ADDR", "127.0.0.1:0"),
                kept,
            ],
        );
        let (code, stderr) = hotline.exited().await;
        assert_eq!(code, Some(2), "{stderr:?}");
        assert_eq!(stderr.len(), 1, "one line: {stderr:?}");
        assert!(
            stderr[0].starts_with(&format!("hotline: invalid configuration: {unset} ")),
            "{stderr:?}"
        );
        assert!(
            stderr[0].contains("--demo"),
            "says how to try it out: {stderr:?}"
        );
    }
}

#[tokio::test]
async fn serve_demo_generates_the_secrets_it_is_not_given() {
    let hotline = Hotline::spawn(
        &["serve", "--demo"],
        &[
            ("LISTEN_ADDR", "127.0.0.1:0"),
            ("LOG_FORMAT", "json"),
            ("WARM_LEADS", "0"),
        ],
    );
    let base = hotline.serving_base().await;
    let generated = |name: &str| {
        let prefix = format!("{name} is not set; generated for this run: ");
        hotline
            .stderr()
            .iter()
            .find_map(|l| l.strip_prefix(&prefix).map(String::from))
            .unwrap_or_else(|| panic!("{name} printed: {:?}", hotline.stderr()))
    };
    let (admin_token, webhook_secret) = (generated("ADMIN_TOKEN"), generated("WEBHOOK_SECRET"));
    assert_ne!(admin_token, webhook_secret);
    let client = reqwest::Client::new();
    let webhook = |secret: &str| {
        client
            .post(format!(
                "{base}/webhooks/elevenlabs/conversation-initiation"
            ))
            .bearer_auth(secret)
            .json(&initiation_body(CALLER, ORG_PHONE))
            .send()
    };
    assert_eq!(webhook(&webhook_secret).await.unwrap().status(), 200);
    assert_eq!(webhook(WEBHOOK_SECRET).await.unwrap().status(), 401);
    let r = client
        .get(format!("{base}/api/organizations/{}", uuid::Uuid::new_v4()))
        .bearer_auth(&admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "the generated admin token is accepted");
}

#[tokio::test]
async fn migrate_fails_clearly_while_the_database_is_down() {
    let db = TestDb::postgres().await;
    let proxy = TcpProxy::start(db.pg_addr()).await;
    proxy.cut();
    let url = db.pg_url_via(proxy.addr);
    let (code, stderr) = Hotline::spawn(&["migrate"], &[("DATABASE_URL", &url)])
        .exited()
        .await;
    assert_eq!(code, Some(1), "{stderr:?}");
    let last = stderr.last().expect("an error line");
    assert!(
        last.starts_with("hotline: migrating the database") && last.contains("unavailable"),
        "{stderr:?}"
    );
}

#[tokio::test]
async fn logs_written_to_a_file_or_a_pipe_carry_no_colour_codes() {
    let hotline = Hotline::spawn(&["migrate"], &[("DATABASE_URL", "sqlite://hotline.db")]);
    let (code, stderr) = hotline.exited().await;
    assert_eq!(code, Some(0), "{stderr:?}");
    let logged: Vec<&String> = stderr.iter().filter(|l| l.contains("INFO")).collect();
    assert!(!logged.is_empty(), "an info line: {stderr:?}");
    for line in stderr {
        assert!(!line.contains('\u{1b}'), "a colour code in {line:?}");
    }
}
