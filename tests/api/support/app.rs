//! `spawn_app`: the real application on port 0 against a fresh database, with typed request
//! helpers. Set `TEST_LOG=1` to see the app's logs.

use std::sync::Arc;

use hotline::cache::Cache;
use hotline::config::{Cli, Command, ServeArgs};
use hotline::startup::Application;
use hotline::store::DynStore;
use reqwest::{RequestBuilder, Response};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::db::TestDb;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const WEBHOOK_SECRET: &str = "test-webhook-secret-0123456789";
pub const ELEVENLABS_SECRET: &str = "test-elevenlabs-secret-0123456789";

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub db: Arc<TestDb>,
    pub store: DynStore,
    /// The app's cache, for tests that look inside it (stats, fill hooks).
    pub cache: Arc<Cache>,
    // Keeps the spool directory alive as long as the app; the spool tests read it.
    #[allow(dead_code)]
    pub spool_dir: Arc<tempfile::TempDir>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

/// Parses `serve` flags the way the binary does, with the test's secrets and port 0. Warming
/// at start is off unless a test asks for it: it loads whatever the test has written by the time
/// the invalidation channels connect, which on a slow machine can be after the test's fixture.
pub fn serve_args(db_url: &str, spool_dir: &std::path::Path, extra: &[&str]) -> ServeArgs {
    let mut argv: Vec<String> = vec![
        "hotline".into(),
        "serve".into(),
        "--database-url".into(),
        db_url.into(),
        "--listen-addr".into(),
        "127.0.0.1:0".into(),
        "--admin-token".into(),
        ADMIN_TOKEN.into(),
        "--webhook-secret".into(),
        WEBHOOK_SECRET.into(),
        "--elevenlabs-webhook-secret".into(),
        ELEVENLABS_SECRET.into(),
        "--spool-dir".into(),
        spool_dir.display().to_string(),
    ];
    if !extra.contains(&"--warm-leads") {
        argv.extend(["--warm-leads".into(), "0".into()]);
    }
    argv.extend(extra.iter().map(|s| s.to_string()));
    use clap::Parser;
    match Cli::try_parse_from(argv).expect("test flags parse").command {
        Some(Command::Serve(args)) => *args,
        _ => unreachable!("serve was asked for"),
    }
}

fn init_test_log() {
    if std::env::var_os("TEST_LOG").is_some() {
        hotline::telemetry::init(hotline::config::LogFormat::Text);
    }
}

/// The app on a fresh Postgres database.
pub async fn spawn_app() -> TestApp {
    spawn_app_on(Arc::new(TestDb::postgres().await), &[]).await
}

/// The app on a fresh embedded SQLite database.
pub async fn spawn_sqlite_app() -> TestApp {
    spawn_app_on(Arc::new(TestDb::sqlite()), &[]).await
}

/// The app on a given database (shared between instances or restarts) with extra flags.
pub async fn spawn_app_on(db: Arc<TestDb>, extra: &[&str]) -> TestApp {
    spawn_app_with(db, extra, |_| {}).await
}

/// As [`spawn_app_on`], with the parsed flags adjusted before the app is built (for settings no
/// flag can unset, such as the post-call secret the helper always passes).
pub async fn spawn_app_with(
    db: Arc<TestDb>,
    extra: &[&str],
    adjust: impl FnOnce(&mut ServeArgs),
) -> TestApp {
    spawn_app_full(db, extra, adjust, |store| store).await
}

/// The most general form: flags, adjusted settings, and a wrapper around the real store (for
/// example one that counts loads).
pub async fn spawn_app_full(
    db: Arc<TestDb>,
    extra: &[&str],
    adjust: impl FnOnce(&mut ServeArgs),
    wrap: impl FnOnce(DynStore) -> DynStore,
) -> TestApp {
    init_test_log();
    let spool_dir = Arc::new(tempfile::tempdir().expect("spool dir"));
    let mut args = serve_args(&db.url, spool_dir.path(), extra);
    adjust(&mut args);
    let store = hotline::store::connect(args.db.database_url.as_str())
        .await
        .expect("store opens");
    store.migrate().await.expect("store migrates");
    let (app, _) = Application::build_with_store(&args, wrap(store))
        .await
        .expect("app builds");
    let base = format!("http://{}", app.local_addr());
    let store = app.store().clone();
    let cache = app.state().lookup.cache().clone();
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        app.run_until(async {
            let _ = rx.await;
        })
        .await
        .expect("server runs");
    });
    TestApp {
        base,
        client: reqwest::Client::new(),
        db,
        store,
        cache,
        spool_dir,
        shutdown: Some(tx),
        server: Some(server),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics_text(&self) -> String {
        let r = self
            .client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("/metrics answers");
        assert_eq!(r.status(), 200);
        r.text().await.expect("/metrics text")
    }

    /// The tag that names a phone number (written as the tests write it) in this app's Redis
    /// keys and messages.
    pub fn phone_tag(&self, phone: &str) -> String {
        let phone = hotline::domain::Phone::parse(phone, hotline::domain::Region::default())
            .expect("a phone number");
        self.cache.phone_tag(&phone).to_hex()
    }

    /// Stops the server and waits until it has let go of its listener.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }

    pub fn admin(&self, builder: RequestBuilder) -> RequestBuilder {
        builder.bearer_auth(ADMIN_TOKEN)
    }

    pub async fn get_admin(&self, path: &str) -> Response {
        self.admin(self.client.get(self.url(path)))
            .send()
            .await
            .expect("request")
    }

    pub async fn post_admin(&self, path: &str, body: &Value) -> Response {
        self.admin(self.client.post(self.url(path)))
            .json(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn patch_admin(&self, path: &str, body: &Value) -> Response {
        self.admin(self.client.patch(self.url(path)))
            .json(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn delete_admin(&self, path: &str) -> Response {
        self.admin(self.client.delete(self.url(path)))
            .send()
            .await
            .expect("request")
    }

    /// Creates an organization and returns its JSON (panics unless 201).
    pub async fn create_org(&self, name: &str, phone: &str) -> Value {
        let r = self
            .post_admin(
                "/api/organizations",
                &json!({"name": name, "phone_number": phone, "timezone": "America/Chicago"}),
            )
            .await;
        assert_eq!(r.status(), 201, "create organization");
        r.json().await.expect("json")
    }

    /// Creates a lead and returns its JSON (panics unless 201).
    pub async fn create_lead(&self, org_id: &str, phone: &str, name: Option<&str>) -> Value {
        let r = self
            .post_admin(
                "/api/leads",
                &json!({"organization_id": org_id, "phone_number": phone, "customer_name": name, "status": "qualified"}),
            )
            .await;
        assert_eq!(r.status(), 201, "create lead");
        r.json().await.expect("json")
    }

    /// Posts to the initiation webhook with the right secret.
    pub async fn initiate(&self, body: &Value) -> Response {
        self.client
            .post(self.url("/webhooks/elevenlabs/conversation-initiation"))
            .bearer_auth(WEBHOOK_SECRET)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// Posts a post-call event signed as ElevenLabs does, `age_s` seconds ago.
    pub async fn post_call_signed(&self, body: &str, secret: &str, age_s: i64) -> Response {
        let t = chrono::Utc::now().timestamp() - age_s;
        self.client
            .post(self.url("/webhooks/elevenlabs/post-call"))
            .header("ElevenLabs-Signature", sign(body, secret, t))
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("request")
    }
}

/// `t=<t>,v0=<hex hmac-sha256 of "<t>.<body>">`, as ElevenLabs signs.
pub fn sign(body: &str, secret: &str, t: i64) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(format!("{t}.{body}").as_bytes());
    format!("t={t},v0={}", hex::encode(mac.finalize().into_bytes()))
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Asserts that `r` is a JSON error of the contract's shape,
/// `{"error": {"code": "<snake_case>", "message": "<sentence>"}}`, with `status`; returns the code.
pub async fn assert_error(r: Response, status: u16) -> String {
    let got = r.status().as_u16();
    let content_type = r
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = r.text().await.expect("error body");
    assert_eq!(got, status, "expected {status}, got {got}: {text}");
    assert!(
        content_type.starts_with("application/json"),
        "error content type {content_type:?}: {text}"
    );
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {text}"));
    let object = body.as_object().expect("error body is an object");
    assert_eq!(object.len(), 1, "only `error` at the top: {text}");
    let code = body["error"]["code"].as_str().expect("error.code");
    let message = body["error"]["message"].as_str().expect("error.message");
    assert!(
        !code.is_empty()
            && code
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
        "code is snake_case: {code:?}"
    );
    assert!(!message.trim().is_empty(), "message is a sentence: {text}");
    code.to_string()
}
