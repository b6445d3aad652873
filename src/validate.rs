//! `hotline validate --url URL`: production-readiness checks against a running instance.
//!
//! Each check makes real requests (every one bounded by a timeout, so validate never hangs) and
//! yields a [`Check`]. The read-through, invalidation and latency checks work in a dedicated
//! test organization with one lead, both created here and always deleted at the end, also when a
//! check failed; a failed cleanup is reported as a failed check of its own. A check that needs
//! something not given (the admin token for `admin_ping`) is skipped, which is not a failure.

use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use rand::Rng as _;
use reqwest::{Client, RequestBuilder, Response, StatusCode};
use serde::Serialize;
use serde_json::{json, Value};

use crate::domain::{Phone, Region};

/// The ten dynamic variables of the initiation answer, with the JSON type each must have.
const DYNAMIC_VARIABLES: [(&str, JsonType); 10] = [
    ("customer_name", JsonType::String),
    ("lead_id", JsonType::String),
    ("lead_status", JsonType::String),
    ("organization_name", JsonType::String),
    ("is_returning_customer", JsonType::Bool),
    ("conversation_count", JsonType::Integer),
    ("last_contact_date", JsonType::String),
    ("previous_summary", JsonType::String),
    ("greeting", JsonType::String),
    ("caller_phone", JsonType::String),
];

/// The values `X-Hotline-Source` may take.
const SOURCES: [&str; 5] = ["l1", "l2", "db", "stale", "default"];

/// Prometheus families the contract requires.
const FAMILIES: [&str; 9] = [
    "hotline_cache_requests_total",
    "hotline_cache_load_duration_seconds",
    "hotline_cache_invalidations_total",
    "hotline_http_request_duration_seconds",
    "hotline_redis_up",
    "hotline_redis_command_duration_seconds",
    "hotline_db_query_duration_seconds",
    "hotline_alert_firing",
    "hotline_webhook_answers_total",
];

const INITIATION_PATH: &str = "/webhooks/elevenlabs/conversation-initiation";

/// How long `admin_ping` waits for the instance to ack its ping.
const ACK_WITHIN: Duration = Duration::from_secs(5);

/// The names of the checks, in the order they run.
pub const CHECKS: [&str; 10] = [
    "health",
    "redis",
    "instances",
    "admin_ping",
    "webhook_contract",
    "read_through",
    "invalidation",
    "stream",
    "prometheus",
    "warm_latency",
];

#[derive(Debug, Clone)]
pub struct ValidateOptions {
    /// Base URL of the instance, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    pub admin_token: Option<String>,
    pub webhook_secret: Option<String>,
    /// `warm_latency` passes when the client-side p99 is at most this.
    pub latency_target_ms: f64,
    /// The bound on every single request.
    pub request_timeout: Duration,
    /// How many sequential warm webhook calls `warm_latency` makes.
    pub warm_calls: usize,
}

impl ValidateOptions {
    pub fn new(url: impl Into<String>) -> ValidateOptions {
        ValidateOptions {
            url: url.into(),
            admin_token: None,
            webhook_secret: None,
            latency_target_ms: 5.0,
            request_timeout: Duration::from_secs(5),
            warm_calls: 200,
        }
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Check {
    pub name: String,
    /// `true` for a skipped check too: skipping is not failing.
    pub passed: bool,
    /// The check did not run: what it needs was not given (the detail says what).
    pub skipped: bool,
    pub figure: String,
    pub detail: String,
}

impl Check {
    fn pass(name: &str, figure: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            passed: true,
            skipped: false,
            figure: figure.into(),
            detail: detail.into(),
        }
    }

    fn fail(name: &str, figure: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            passed: false,
            skipped: false,
            figure: figure.into(),
            detail: detail.into(),
        }
    }

    fn skip(name: &str, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            passed: true,
            skipped: true,
            figure: String::new(),
            detail: format!("skipped: {}", detail.into()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub passed: bool,
    pub checks: Vec<Check>,
}

impl Report {
    fn from_checks(checks: Vec<Check>) -> Report {
        Report {
            passed: checks.iter().all(|c| c.passed),
            checks,
        }
    }

    pub fn failed(&self) -> Vec<&str> {
        self.checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.name.as_str())
            .collect()
    }

    pub fn skipped(&self) -> Vec<&str> {
        self.checks
            .iter()
            .filter(|c| c.skipped)
            .map(|c| c.name.as_str())
            .collect()
    }

    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// One line per check, then the summary line.
    pub fn to_text(&self) -> String {
        let name_w = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        let fig_w = self
            .checks
            .iter()
            .map(|c| c.figure.chars().count())
            .max()
            .unwrap_or(0)
            .max(1);
        let mut out = String::new();
        for c in &self.checks {
            let figure = if c.figure.is_empty() { "-" } else { &c.figure };
            out.push_str(
                format!(
                    "{}  {:name_w$}  {:fig_w$}  {}",
                    if c.skipped {
                        "SKIP"
                    } else if c.passed {
                        "PASS"
                    } else {
                        "FAIL"
                    },
                    c.name,
                    figure,
                    c.detail
                )
                .trim_end(),
            );
            out.push('\n');
        }
        out.push_str(&self.summary());
        out.push('\n');
        out
    }

    pub fn summary(&self) -> String {
        let failed = self.failed();
        let skipped = self.skipped().len();
        let passed = self.checks.len() - failed.len() - skipped;
        let skipped = if skipped == 0 {
            String::new()
        } else {
            format!(" {skipped} skipped,")
        };
        if failed.is_empty() {
            format!("validate: {passed} passed,{skipped} 0 failed")
        } else {
            format!(
                "validate: {passed} passed,{skipped} {} failed (failed: {})",
                failed.len(),
                failed.join(", ")
            )
        }
    }
}

/// Runs every check against `opts.url` and reports; never panics on what the instance answers.
pub async fn run(opts: &ValidateOptions) -> Report {
    let client = match Client::builder()
        .timeout(opts.request_timeout)
        .connect_timeout(opts.request_timeout)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            return Report::from_checks(
                CHECKS
                    .iter()
                    .map(|n| Check::fail(n, "", format!("cannot build an HTTP client: {e}")))
                    .collect(),
            )
        }
    };
    let v = Validator {
        opts,
        client,
        base: opts.url.trim_end_matches('/').to_string(),
    };

    let mut checks = Vec::with_capacity(CHECKS.len() + 1);
    // Reachability first: when the instance does not answer at all, every check says so
    // instead of each waiting on its own failures.
    if let Err(e) = v.client.get(v.url("/healthz")).send().await {
        let why = format!("instance unreachable at {}: {}", v.base, describe(&e));
        return Report::from_checks(CHECKS.iter().map(|n| Check::fail(n, "", &why)).collect());
    }
    checks.push(v.health().await);
    checks.push(v.redis().await);
    let (instances, own_id) = v.instances().await;
    checks.push(instances);
    checks.push(v.admin_ping(own_id.as_deref()).await);
    checks.push(v.webhook_contract().await);

    // The checks that need the test organization, with cleanup always run afterwards.
    match v.create_fixture().await {
        Ok(fixture) => {
            let work = std::panic::AssertUnwindSafe(v.fixture_checks(&fixture)).catch_unwind();
            let outcome = work.await;
            let cleanup = v.cleanup(&fixture).await;
            match outcome {
                Ok(mut fixture_checks) => {
                    // Order: read_through, invalidation, then the others, warm_latency last.
                    let warm = fixture_checks.pop();
                    checks.append(&mut fixture_checks);
                    checks.push(v.stream().await);
                    checks.push(v.prometheus().await);
                    checks.extend(warm);
                }
                Err(panic) => {
                    if let Err(c) = cleanup {
                        checks.push(c);
                    }
                    std::panic::resume_unwind(panic);
                }
            }
            if let Err(c) = cleanup {
                checks.push(c);
            }
        }
        Err(why) => {
            for name in ["read_through", "invalidation"] {
                checks.push(Check::fail(name, "", &why));
            }
            checks.push(v.stream().await);
            checks.push(v.prometheus().await);
            checks.push(Check::fail("warm_latency", "", &why));
        }
    }
    Report::from_checks(checks)
}

/// What the test organization and its lead are.
struct Fixture {
    org_id: String,
    org_phone: String,
    lead_id: String,
    lead_phone: String,
}

struct Validator<'a> {
    opts: &'a ValidateOptions,
    client: Client,
    base: String,
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        let mut msg = "connection failed".to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            msg = format!("connection failed: {s}");
            source = s.source();
        }
        msg
    } else {
        e.to_string()
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Validator<'_> {
    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn admin(&self, b: RequestBuilder) -> Result<RequestBuilder, String> {
        match &self.opts.admin_token {
            Some(t) => Ok(b.bearer_auth(t)),
            None => Err("needs --admin-token (ADMIN_TOKEN)".into()),
        }
    }

    fn secret(&self) -> Result<&str, String> {
        self.opts
            .webhook_secret
            .as_deref()
            .ok_or_else(|| "needs --webhook-secret (WEBHOOK_SECRET)".into())
    }

    async fn send(&self, what: &str, b: RequestBuilder) -> Result<Response, String> {
        b.send()
            .await
            .map_err(|e| format!("{what}: {}", describe(&e)))
    }

    async fn json_of(&self, what: &str, r: Response) -> Result<Value, String> {
        r.json::<Value>()
            .await
            .map_err(|e| format!("{what}: body is not JSON ({})", describe(&e)))
    }

    async fn get_json(&self, path: &str) -> Result<(StatusCode, Value), String> {
        let what = format!("GET {path}");
        let r = self.send(&what, self.client.get(self.url(path))).await?;
        let status = r.status();
        Ok((status, self.json_of(&what, r).await?))
    }

    /// Posts the initiation webhook; returns status, source header and body.
    async fn initiate(
        &self,
        secret: &str,
        caller: &str,
        called: &str,
    ) -> Result<(StatusCode, String, Value), String> {
        let body = json!({
            "caller_id": caller,
            "agent_id": "hotline-validate",
            "called_number": called,
            "call_sid": format!("CA{}", hex::encode(rand::random::<[u8; 16]>())),
        });
        let what = format!("POST {INITIATION_PATH}");
        let r = self
            .send(
                &what,
                self.client
                    .post(self.url(INITIATION_PATH))
                    .bearer_auth(secret)
                    .json(&body),
            )
            .await?;
        let status = r.status();
        let source = r
            .headers()
            .get("x-hotline-source")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = if status == StatusCode::OK {
            self.json_of(&what, r).await?
        } else {
            Value::Null
        };
        Ok((status, source, body))
    }

    async fn health(&self) -> Check {
        const N: &str = "health";
        let started = Instant::now();
        let (status, body) = match self.get_json("/api/monitoring/health").await {
            Ok(x) => x,
            Err(e) => return Check::fail(N, "", e),
        };
        let figure = format!("{:.1} ms", ms(started.elapsed()));
        let overall = body["status"].as_str().unwrap_or("(missing)");
        if status == StatusCode::OK && overall == "healthy" {
            let version = body["version"].as_str().unwrap_or("?");
            return Check::pass(N, figure, format!("healthy (version {version})"));
        }
        let mut down = Vec::new();
        if let Some(checks) = body["checks"].as_object() {
            for (name, c) in checks {
                let s = c["status"].as_str().unwrap_or("unknown");
                if s != "up" && s != "disabled" {
                    let why = c["error"]
                        .as_str()
                        .or_else(|| c["last_error"].as_str())
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default();
                    down.push(format!("{name} {s}{why}"));
                }
            }
        }
        let down = if down.is_empty() {
            String::new()
        } else {
            format!(": {}", down.join(", "))
        };
        Check::fail(
            N,
            figure,
            format!("HTTP {}, status {overall}{down}", status.as_u16()),
        )
    }

    async fn redis(&self) -> Check {
        const N: &str = "redis";
        let (status, body) = match self.get_json("/api/monitoring/health/redis").await {
            Ok(x) => x,
            Err(e) => return Check::fail(N, "", e),
        };
        if status != StatusCode::OK {
            return Check::fail(N, "", format!("HTTP {}", status.as_u16()));
        }
        let figure = body["latency_ms"]
            .as_f64()
            .map(|l| format!("{l:.2} ms"))
            .unwrap_or_default();
        if !body["enabled"].as_bool().unwrap_or(false) {
            // Not configured is a choice (the embedded demo, one instance), not a fault.
            return Check::skip(
                N,
                "Redis is not configured (REDIS_URL unset or REDIS_ENABLED=false); several instances need it",
            );
        }
        let circuit = body["circuit"].as_str().unwrap_or("(missing)");
        let connected = body["connected"].as_bool().unwrap_or(false);
        let last_error = body["last_error"]
            .as_str()
            .map(|e| format!("; last error: {e}"))
            .unwrap_or_default();
        if !connected || circuit != "closed" {
            return Check::fail(
                N,
                figure,
                format!(
                    "Redis is {}, circuit {circuit}{last_error}",
                    if connected {
                        "connected"
                    } else {
                        "not connected"
                    }
                ),
            );
        }
        let version = body["redis_version"].as_str().unwrap_or("?");
        Check::pass(
            N,
            figure,
            format!("connected, circuit closed, Redis {version}"),
        )
    }

    /// The instance appears in its own live list. Returns the check and the instance's id
    /// (for `admin_ping`).
    async fn instances(&self) -> (Check, Option<String>) {
        const N: &str = "instances";
        const PATH: &str = "/api/monitoring/instances";
        let (status, body) = match self.get_json(PATH).await {
            Ok(x) => x,
            Err(e) => return (Check::fail(N, "", e), None),
        };
        if status != StatusCode::OK {
            return (
                Check::fail(N, "", format!("GET {PATH}: HTTP {}", status.as_u16())),
                None,
            );
        }
        let Some(me) = body["self"].as_str().map(str::to_string) else {
            return (
                Check::fail(N, "", format!("GET {PATH}: no `self` in the answer")),
                None,
            );
        };
        let Some(list) = body["instances"].as_array() else {
            return (
                Check::fail(N, "", format!("GET {PATH}: no `instances` list")),
                Some(me),
            );
        };
        let ids: Vec<&str> = list
            .iter()
            .filter_map(|i| i["instance_id"].as_str())
            .collect();
        let figure = format!("{} live", ids.len());
        let Some(own) = list.iter().find(|i| i["instance_id"] == me.as_str()) else {
            let detail = format!(
                "`{me}` is not in its own instance list ({})",
                if ids.is_empty() {
                    "empty".to_string()
                } else {
                    ids.join(", ")
                }
            );
            return (Check::fail(N, figure, detail), Some(me));
        };
        let mut detail = if body["shared"].as_bool() == Some(false) {
            format!("`{me}` listed, alone: Redis is absent or down, so the others are not known")
        } else {
            format!("`{me}` listed among {} live", ids.len())
        };
        if own["draining"].as_bool() == Some(true) {
            detail.push_str("; it is draining (its /healthz answers 503 until `resume`)");
        }
        (Check::pass(N, figure, detail), Some(me))
    }

    /// The instance answers a `ping` admin message sent to its own id, within [`ACK_WITHIN`].
    async fn admin_ping(&self, me: Option<&str>) -> Check {
        const N: &str = "admin_ping";
        const PATH: &str = "/api/admin/messages";
        let b = match self.admin(self.client.post(self.url(PATH))) {
            Ok(b) => b,
            Err(e) => return Check::skip(N, e),
        };
        let Some(me) = me else {
            return Check::fail(N, "", "no instance id to send to (see `instances`)");
        };
        let started = Instant::now();
        let what = format!("POST {PATH}");
        let r = match self
            .send(&what, b.json(&json!({"to": me, "command": "ping"})))
            .await
        {
            Ok(r) => r,
            Err(e) => return Check::fail(N, "", e),
        };
        let id = match r.status() {
            StatusCode::ACCEPTED => match self.json_of(&what, r).await {
                Ok(body) => match id_of(&body) {
                    Ok(id) => id,
                    Err(e) => return Check::fail(N, "", format!("{what}: {e}")),
                },
                Err(e) => return Check::fail(N, "", e),
            },
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Check::fail(
                    N,
                    "",
                    format!(
                        "{what}: HTTP {}: the admin token was refused",
                        r.status().as_u16()
                    ),
                )
            }
            StatusCode::NOT_FOUND => {
                return Check::fail(
                    N,
                    "",
                    format!("{what}: HTTP 404: `{me}` is not a live instance to itself"),
                )
            }
            s => return Check::fail(N, "", format!("{what}: HTTP {}", s.as_u16())),
        };
        let path = format!("{PATH}/{id}");
        // Whether the message was read back at least once (without the ack in it).
        let mut read_back = false;
        let acked = tokio::time::timeout(ACK_WITHIN, async {
            loop {
                match self.message_ack(&path, me).await {
                    Ok(Some(ack)) => return Ok(ack),
                    Ok(None) => read_back = true,
                    Err(e) => return Err(e),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        let figure = format!("{:.1} ms", ms(started.elapsed()));
        match acked {
            Ok(Ok(ack)) if ack["ok"] == true => {
                let detail = ack["detail"].as_str().unwrap_or_default();
                Check::pass(N, figure, format!("`{me}` acked ping: {detail}"))
            }
            Ok(Ok(ack)) => Check::fail(
                N,
                figure,
                format!(
                    "`{me}` acked ping with ok: false ({})",
                    ack["detail"].as_str().unwrap_or("no detail")
                ),
            ),
            Ok(Err(e)) => Check::fail(N, figure, e),
            Err(_) => Check::fail(
                N,
                figure,
                format!(
                    "`{me}` did not ack ping within {} s{}",
                    ACK_WITHIN.as_secs(),
                    if read_back {
                        ""
                    } else {
                        " (the message could not be read back in time)"
                    }
                ),
            ),
        }
    }

    /// The ack of `me` for the admin message at `path`, once there is one.
    async fn message_ack(&self, path: &str, me: &str) -> Result<Option<Value>, String> {
        let what = format!("GET {path}");
        let b = self.admin(self.client.get(self.url(path)))?;
        let r = self.send(&what, b).await?;
        if r.status() != StatusCode::OK {
            return Err(format!("{what}: HTTP {}", r.status().as_u16()));
        }
        let message = self.json_of(&what, r).await?;
        Ok(message["acks"]
            .get(me)
            .filter(|ack| ack.is_object())
            .cloned())
    }

    async fn webhook_contract(&self) -> Check {
        const N: &str = "webhook_contract";
        let secret = match self.secret() {
            Ok(s) => s,
            Err(e) => return Check::fail(N, "", e),
        };
        // A caller and number hotline does not know: the answer must still be complete.
        let caller = random_phone(&["312", "773"]);
        let called = random_phone(&["312", "773"]);
        let started = Instant::now();
        let (status, source, body) = match self.initiate(secret, &caller, &called).await {
            Ok(x) => x,
            Err(e) => return Check::fail(N, "", e),
        };
        let figure = format!("{:.1} ms", ms(started.elapsed()));
        let mut problems = Vec::new();
        if status != StatusCode::OK {
            problems.push(format!("HTTP {} with the secret", status.as_u16()));
        } else {
            problems.extend(answer_problems(&body));
            if !SOURCES.contains(&source.as_str()) {
                problems.push(format!("X-Hotline-Source is {source:?}"));
            }
        }
        let wrong = format!("{secret}-wrong");
        match self.initiate(&wrong, &caller, &called).await {
            Ok((StatusCode::UNAUTHORIZED, _, _)) => {}
            Ok((s, _, _)) => problems.push(format!(
                "a wrong secret got HTTP {} (expected 401)",
                s.as_u16()
            )),
            Err(e) => problems.push(e),
        }
        if problems.is_empty() {
            Check::pass(
                N,
                figure,
                format!("10 dynamic variables well typed, source {source}, wrong secret 401"),
            )
        } else {
            Check::fail(N, figure, problems.join("; "))
        }
    }

    /// Creates "hotline-validate <random>" with a random valid phone (retrying when taken) and
    /// one lead in it.
    async fn create_fixture(&self) -> Result<Fixture, String> {
        let tag = hex::encode(rand::random::<[u8; 4]>());
        let mut org = None;
        for _ in 0..10 {
            let phone = random_phone(&["312"]);
            let b = self.admin(self.client.post(self.url("/api/organizations")))?;
            let r = self
                .send(
                    "POST /api/organizations",
                    b.json(&json!({
                        "name": format!("hotline-validate {tag}"),
                        "phone_number": phone,
                    })),
                )
                .await?;
            match r.status() {
                StatusCode::CREATED => {
                    let body = self.json_of("POST /api/organizations", r).await?;
                    org = Some((id_of(&body)?, phone));
                    break;
                }
                StatusCode::CONFLICT => continue,
                s => {
                    return Err(format!(
                        "creating the test organization: HTTP {}",
                        s.as_u16()
                    ))
                }
            }
        }
        let (org_id, org_phone) =
            org.ok_or("creating the test organization: every phone tried was taken")?;
        let lead_phone = random_phone(&["773"]);
        let created = async {
            let b = self.admin(self.client.post(self.url("/api/leads")))?;
            let r = self
                .send(
                    "POST /api/leads",
                    b.json(&json!({
                        "organization_id": org_id,
                        "phone_number": lead_phone,
                        "customer_name": format!("Validate Caller {tag}"),
                    })),
                )
                .await?;
            if r.status() != StatusCode::CREATED {
                return Err(format!(
                    "creating the test lead: HTTP {}",
                    r.status().as_u16()
                ));
            }
            id_of(&self.json_of("POST /api/leads", r).await?)
        }
        .await;
        match created {
            Ok(lead_id) => Ok(Fixture {
                org_id,
                org_phone,
                lead_id,
                lead_phone,
            }),
            Err(e) => {
                // Do not leave the organization behind.
                let _ = self.delete(&format!("/api/organizations/{org_id}")).await;
                Err(e)
            }
        }
    }

    async fn delete(&self, path: &str) -> Result<(), String> {
        let what = format!("DELETE {path}");
        let b = self.admin(self.client.delete(self.url(path)))?;
        let r = self.send(&what, b).await?;
        match r.status() {
            StatusCode::NO_CONTENT | StatusCode::OK | StatusCode::NOT_FOUND => Ok(()),
            s => Err(format!("{what}: HTTP {}", s.as_u16())),
        }
    }

    /// Deletes the lead, then the organization; a failure is a failed `cleanup` check.
    async fn cleanup(&self, f: &Fixture) -> Result<(), Check> {
        let lead = self.delete(&format!("/api/leads/{}", f.lead_id)).await;
        let org = self
            .delete(&format!("/api/organizations/{}", f.org_id))
            .await;
        match (lead, org) {
            (Ok(()), Ok(())) => Ok(()),
            (l, o) => {
                let errors: Vec<String> = [l.err(), o.err()].into_iter().flatten().collect();
                Err(Check::fail(
                    "cleanup",
                    "",
                    format!(
                        "the test organization {} may be left behind: {}",
                        f.org_id,
                        errors.join("; ")
                    ),
                ))
            }
        }
    }

    /// read_through, invalidation, warm_latency (in this order).
    async fn fixture_checks(&self, f: &Fixture) -> Vec<Check> {
        let read_through = self.read_through(f).await;
        let invalidation = self.invalidation(f).await;
        let warm = self.warm_latency(f).await;
        vec![read_through, invalidation, warm]
    }

    async fn cache_hits(&self) -> Result<u64, String> {
        let (status, body) = self.get_json("/api/monitoring/stats/cache").await?;
        if status != StatusCode::OK {
            return Err(format!(
                "GET /api/monitoring/stats/cache: HTTP {}",
                status.as_u16()
            ));
        }
        let kinds = body
            .as_object()
            .ok_or("GET /api/monitoring/stats/cache: not an object")?;
        Ok(kinds
            .values()
            .filter_map(|k| k.as_object())
            .map(|k| {
                k.get("hits_l1").and_then(Value::as_u64).unwrap_or(0)
                    + k.get("hits_l2").and_then(Value::as_u64).unwrap_or(0)
            })
            .sum())
    }

    async fn read_through(&self, f: &Fixture) -> Check {
        const N: &str = "read_through";
        let secret = match self.secret() {
            Ok(s) => s,
            Err(e) => return Check::fail(N, "", e),
        };
        let before = match self.cache_hits().await {
            Ok(h) => h,
            Err(e) => return Check::fail(N, "", e),
        };
        // The change notifications of the fixture's own writes reach the instance a moment
        // after the writes: one that lands between the miss and the hits invalidates what the
        // miss filled. Then the check runs once more, from a miss made on purpose.
        let mut attempt = 0;
        let (sources, problems) = loop {
            attempt += 1;
            let (sources, problems) = match self.miss_then_hits(secret, f).await {
                Ok(seen) => seen,
                Err(e) => return Check::fail(N, "", e),
            };
            let late_miss = sources[0] == "db" && problems.iter().all(|p| p.contains("(a hit)"));
            if problems.is_empty() || !late_miss || attempt == 2 {
                break (sources, problems);
            }
            if let Err(e) = self.invalidate_lead(&f.lead_id).await {
                return Check::fail(N, sources.join(","), e);
            }
        };
        let mut problems = problems;
        let figure = sources.join(",");
        let after = match self.cache_hits().await {
            Ok(h) => h,
            Err(e) => return Check::fail(N, figure, e),
        };
        if after <= before {
            problems.push(format!("cache hits did not increase ({before} -> {after})"));
        }
        if problems.is_empty() {
            Check::pass(
                N,
                figure,
                format!("miss then hits; cache hits {before} -> {after}"),
            )
        } else {
            Check::fail(N, figure, problems.join("; "))
        }
    }

    /// Three calls for the test lead: where each answer came from, and what was wrong.
    async fn miss_then_hits(
        &self,
        secret: &str,
        f: &Fixture,
    ) -> Result<(Vec<String>, Vec<String>), String> {
        let mut sources = Vec::new();
        let mut problems = Vec::new();
        for _ in 0..3 {
            match self.initiate(secret, &f.lead_phone, &f.org_phone).await? {
                (StatusCode::OK, source, body) => {
                    if body["dynamic_variables"]["lead_id"].as_str() != Some(f.lead_id.as_str()) {
                        problems.push("the answer does not name the test lead".to_string());
                    }
                    sources.push(source);
                }
                (s, _, _) => return Err(format!("webhook answered HTTP {}", s.as_u16())),
            }
        }
        if sources[0] != "db" {
            problems.push(format!(
                "first answer from {:?}, expected db (a miss)",
                sources[0]
            ));
        }
        for (i, s) in sources.iter().enumerate().skip(1) {
            if s != "l1" && s != "l2" {
                problems.push(format!(
                    "answer {} from {s:?}, expected l1 or l2 (a hit)",
                    i + 1
                ));
            }
        }
        Ok((sources, problems))
    }

    /// Drops the test lead from the cache on every instance (the next call is a miss).
    async fn invalidate_lead(&self, lead_id: &str) -> Result<(), String> {
        let b = self.admin(
            self.client
                .post(self.url("/api/monitoring/cache/invalidate"))
                .json(&serde_json::json!({ "lead_id": lead_id })),
        )?;
        let r = self.send("invalidating the test lead", b).await?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(format!(
                "invalidating the test lead answered HTTP {}",
                r.status().as_u16()
            ))
        }
    }

    async fn invalidation(&self, f: &Fixture) -> Check {
        const N: &str = "invalidation";
        let secret = match self.secret() {
            Ok(s) => s,
            Err(e) => return Check::fail(N, "", e),
        };
        // Make sure the lead is cached before the write.
        if let Err(e) = self.initiate(secret, &f.lead_phone, &f.org_phone).await {
            return Check::fail(N, "", e);
        }
        let new_name = format!("Renamed Caller {}", hex::encode(rand::random::<[u8; 4]>()));
        let path = format!("/api/leads/{}", f.lead_id);
        let started = Instant::now();
        let patched = async {
            let b = self.admin(self.client.patch(self.url(&path)))?;
            let r = self
                .send(
                    "PATCH /api/leads/{id}",
                    b.json(&json!({"customer_name": new_name})),
                )
                .await?;
            if r.status() != StatusCode::OK {
                return Err(format!(
                    "PATCH /api/leads/{{id}}: HTTP {}",
                    r.status().as_u16()
                ));
            }
            Ok(())
        }
        .await;
        if let Err(e) = patched {
            return Check::fail(N, "", e);
        }
        let mut problems = Vec::new();
        match self.initiate(secret, &f.lead_phone, &f.org_phone).await {
            Ok((StatusCode::OK, source, body)) => {
                let got = &body["dynamic_variables"]["customer_name"];
                if got.as_str() != Some(new_name.as_str()) {
                    problems.push(format!(
                        "the webhook right after the PATCH still answers the old name (source {source})"
                    ));
                }
            }
            Ok((s, _, _)) => problems.push(format!("webhook answered HTTP {}", s.as_u16())),
            Err(e) => problems.push(e),
        }
        let got = async {
            let b = self.admin(self.client.get(self.url(&path)))?;
            let r = self.send("GET /api/leads/{id}", b).await?;
            if r.status() != StatusCode::OK {
                return Err(format!(
                    "GET /api/leads/{{id}}: HTTP {}",
                    r.status().as_u16()
                ));
            }
            self.json_of("GET /api/leads/{id}", r).await
        }
        .await;
        match got {
            Ok(lead) if lead["customer_name"].as_str() == Some(new_name.as_str()) => {}
            Ok(_) => problems.push(
                "GET /api/leads/{id} right after the PATCH still answers the old name".into(),
            ),
            Err(e) => problems.push(e),
        }
        let figure = format!("{:.1} ms", ms(started.elapsed()));
        if problems.is_empty() {
            Check::pass(
                N,
                figure,
                "a PATCHed name is answered at once (webhook and API)",
            )
        } else {
            Check::fail(N, figure, problems.join("; "))
        }
    }

    async fn stream(&self) -> Check {
        const N: &str = "stream";
        const WITHIN: Duration = Duration::from_secs(3);
        let started = Instant::now();
        let path = "/api/monitoring/stream";
        let mut r = match self
            .send(&format!("GET {path}"), self.client.get(self.url(path)))
            .await
        {
            Ok(r) => r,
            Err(e) => return Check::fail(N, "", e),
        };
        if r.status() != StatusCode::OK {
            return Check::fail(N, "", format!("HTTP {}", r.status().as_u16()));
        }
        let mut buf = String::new();
        let found = tokio::time::timeout(WITHIN, async {
            loop {
                match r.chunk().await {
                    Ok(Some(bytes)) => {
                        buf.push_str(&String::from_utf8_lossy(&bytes));
                        if buf.lines().any(|l| {
                            l.trim_end() == "event: metrics" || l.trim_end() == "event:metrics"
                        }) {
                            return Ok(());
                        }
                    }
                    Ok(None) => return Err("the stream ended".to_string()),
                    Err(e) => return Err(describe(&e)),
                }
            }
        })
        .await;
        let figure = format!("{:.0} ms", ms(started.elapsed()));
        match found {
            Ok(Ok(())) => Check::pass(N, figure, "an `event: metrics` arrived"),
            Ok(Err(e)) => Check::fail(N, figure, format!("no `event: metrics`: {e}")),
            Err(_) => Check::fail(N, figure, "no `event: metrics` within 3 s"),
        }
    }

    async fn prometheus(&self) -> Check {
        const N: &str = "prometheus";
        let r = match self
            .send("GET /metrics", self.client.get(self.url("/metrics")))
            .await
        {
            Ok(r) => r,
            Err(e) => return Check::fail(N, "", e),
        };
        if r.status() != StatusCode::OK {
            return Check::fail(N, "", format!("HTTP {}", r.status().as_u16()));
        }
        let text = match r.text().await {
            Ok(t) => t,
            Err(e) => return Check::fail(N, "", format!("GET /metrics: {}", describe(&e))),
        };
        let exposition = match parse_prometheus(&text) {
            Ok(x) => x,
            Err(e) => return Check::fail(N, "", format!("not Prometheus text: {e}")),
        };
        let figure = format!("{} samples", exposition.samples.len());
        let missing: Vec<&str> = FAMILIES
            .iter()
            .copied()
            .filter(|f| !exposition.has_family(f))
            .collect();
        if missing.is_empty() {
            Check::pass(
                N,
                figure,
                format!("parses; all {} contract families present", FAMILIES.len()),
            )
        } else {
            Check::fail(
                N,
                figure,
                format!("missing families: {}", missing.join(", ")),
            )
        }
    }

    async fn warm_latency(&self, f: &Fixture) -> Check {
        const N: &str = "warm_latency";
        let secret = match self.secret() {
            Ok(s) => s,
            Err(e) => return Check::fail(N, "", e),
        };
        // One call to make sure the caller is warm, not counted.
        if let Err(e) = self.initiate(secret, &f.lead_phone, &f.org_phone).await {
            return Check::fail(N, "", e);
        }
        let mut times = Vec::with_capacity(self.opts.warm_calls);
        let mut not_ok = 0usize;
        for _ in 0..self.opts.warm_calls {
            let started = Instant::now();
            match self.initiate(secret, &f.lead_phone, &f.org_phone).await {
                Ok((StatusCode::OK, _, _)) => times.push(ms(started.elapsed())),
                Ok(_) => not_ok += 1,
                Err(e) => return Check::fail(N, "", e),
            }
        }
        times.sort_by(f64::total_cmp);
        let (Some(p50), Some(p99)) = (percentile(&times, 50.0), percentile(&times, 99.0)) else {
            return Check::fail(N, "", "no successful call");
        };
        let figure = format!("p50 {p50:.2} ms / p99 {p99:.2} ms");
        let target = self.opts.latency_target_ms;
        if not_ok > 0 {
            return Check::fail(
                N,
                figure,
                format!("{not_ok} of {} calls were not 200", self.opts.warm_calls),
            );
        }
        if p99 <= target {
            Check::pass(
                N,
                figure,
                format!("{} warm calls, p99 within {target} ms", times.len()),
            )
        } else {
            Check::fail(
                N,
                figure,
                format!(
                    "p99 above the {target} ms target ({} warm calls)",
                    times.len()
                ),
            )
        }
    }
}

fn id_of(body: &Value) -> Result<String, String> {
    body["id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| "the created record has no `id`".to_string())
}

#[derive(Debug, Clone, Copy)]
enum JsonType {
    String,
    Bool,
    Integer,
}

impl JsonType {
    fn matches(self, v: &Value) -> bool {
        match self {
            JsonType::String => v.is_string(),
            JsonType::Bool => v.is_boolean(),
            JsonType::Integer => v.is_i64() || v.is_u64(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            JsonType::String => "a string",
            JsonType::Bool => "a boolean",
            JsonType::Integer => "an integer",
        }
    }
}

/// What is wrong with an initiation answer (empty when it keeps the contract).
fn answer_problems(body: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    if body["type"] != "conversation_initiation_client_data" {
        problems.push(format!("`type` is {}", body["type"]));
    }
    let Some(vars) = body["dynamic_variables"].as_object() else {
        problems.push("`dynamic_variables` is not an object".into());
        return problems;
    };
    for (name, ty) in DYNAMIC_VARIABLES {
        match vars.get(name) {
            None => problems.push(format!("`{name}` is missing")),
            Some(v) if !ty.matches(v) => problems.push(format!("`{name}` is not {}", ty.name())),
            Some(_) => {}
        }
    }
    if vars
        .get("greeting")
        .and_then(Value::as_str)
        .is_some_and(|g| g.trim().is_empty())
    {
        problems.push("`greeting` is empty".into());
    }
    if let Some(date) = vars.get("last_contact_date").and_then(Value::as_str) {
        if !date.is_empty() && chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").is_err() {
            problems.push("`last_contact_date` is not YYYY-MM-DD".into());
        }
    }
    problems
}

/// A random valid North American number in one of `area_codes`, E.164.
fn random_phone(area_codes: &[&str]) -> String {
    let region: Region = "US".parse().expect("US is a region");
    let mut rng = rand::rng();
    loop {
        let area = area_codes[rng.random_range(0..area_codes.len())];
        let candidate = format!(
            "+1{area}{}{:02}{:04}",
            rng.random_range(2..=9),
            rng.random_range(0..100),
            rng.random_range(0..10_000)
        );
        // Avoid the 555-01xx fiction range and anything libphonenumber rejects.
        if let Ok(phone) = Phone::parse(&candidate, region) {
            if !candidate[5..].starts_with("55501") {
                return phone.as_str().to_string();
            }
        }
    }
}

/// The nearest-rank percentile (`p` in 0..=100) of ascending `sorted` values.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let p = p.clamp(0.0, 100.0);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// One sample line of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    /// The label pairs, unescaped.
    pub labels: Labels,
    pub value: f64,
}

/// A parsed Prometheus text exposition.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    /// Families named by `# HELP` or `# TYPE` lines.
    pub declared: Vec<String>,
}

impl Exposition {
    /// Whether `family` is declared or has samples (histograms and summaries included).
    pub fn has_family(&self, family: &str) -> bool {
        self.declared.iter().any(|d| d == family)
            || self.samples.iter().any(|s| {
                s.name == family
                    || s.name.strip_prefix(family).is_some_and(|rest| {
                        matches!(rest, "_bucket" | "_sum" | "_count" | "_total")
                    })
            })
    }
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse::<f64>().ok().filter(|v| v.is_finite()),
    }
}

/// Parses the Prometheus text format: every non-comment, non-blank line must be
/// `name{labels} value [timestamp]` with a value that parses as a float.
pub fn parse_prometheus(text: &str) -> Result<Exposition, String> {
    let mut out = Exposition::default();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.split_whitespace();
            if let (Some("HELP" | "TYPE"), Some(name)) = (words.next(), words.next()) {
                if !is_name(name) {
                    return Err(format!("line {line_no}: bad metric name in comment"));
                }
                out.declared.push(name.to_string());
            }
            continue;
        }
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .ok_or_else(|| format!("line {line_no}: no value"))?;
        let name = &line[..name_end];
        if !is_name(name) {
            return Err(format!("line {line_no}: bad metric name {name:?}"));
        }
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(after) = rest.strip_prefix('{') {
            let (parsed, remainder) =
                parse_labels(after).map_err(|e| format!("line {line_no}: {e}"))?;
            labels = parsed;
            rest = remainder;
        }
        if !rest.starts_with(|c: char| c.is_whitespace()) {
            return Err(format!("line {line_no}: no space before the value"));
        }
        let mut parts = rest.split_whitespace();
        let value = parts
            .next()
            .ok_or_else(|| format!("line {line_no}: no value"))?;
        let value = parse_value(value)
            .ok_or_else(|| format!("line {line_no}: value {value:?} is not a number"))?;
        if let Some(ts) = parts.next() {
            ts.parse::<i64>()
                .map_err(|_| format!("line {line_no}: timestamp {ts:?} is not an integer"))?;
        }
        if parts.next().is_some() {
            return Err(format!("line {line_no}: trailing text"));
        }
        out.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Ok(out)
}

/// Parses `a="x",b="y"}` (after the opening brace); returns the labels and what follows `}`.
type Labels = Vec<(String, String)>;

fn parse_labels(mut s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix('}') {
            return Ok((labels, rest));
        }
        let eq = s.find('=').ok_or("label without `=`")?;
        let name = s[..eq].trim();
        if !is_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        s = s[eq + 1..].trim_start();
        s = s.strip_prefix('"').ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    _ => return Err("bad escape in a label value".into()),
                },
                Some((j, '"')) => break j,
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value".into()),
            }
        };
        labels.push((name.to_string(), value));
        s = s[end + 1..].trim_start();
        if let Some(rest) = s.strip_prefix(',') {
            s = rest;
        } else if !s.starts_with('}') {
            return Err("labels not separated by `,`".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(percentile(&v, 99.0), Some(198.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 50.0), Some(2.0));
    }

    #[test]
    fn prometheus_text_parses() {
        let text = "# HELP hotline_redis_up Whether Redis answers.\n\
                    # TYPE hotline_redis_up gauge\n\
                    hotline_redis_up 1\n\
                    \n\
                    hotline_cache_requests_total{kind=\"lead\",result=\"l1_hit\"} 42 1700000000000\n\
                    hotline_http_request_duration_seconds_bucket{route=\"/a,b}\",le=\"+Inf\"} 3\n\
                    hotline_http_request_duration_seconds_sum{route=\"x \\\"q\\\"\"} 0.25\n\
                    hotline_weird{a=\"1\",} NaN\n\
                    hotline_small -1.5e-3\n";
        let exp = parse_prometheus(text).expect("parses");
        assert_eq!(exp.samples.len(), 6);
        assert_eq!(exp.samples[0].value, 1.0);
        assert_eq!(
            exp.samples[1].labels,
            vec![
                ("kind".to_string(), "lead".to_string()),
                ("result".to_string(), "l1_hit".to_string())
            ]
        );
        assert_eq!(exp.samples[2].labels[0].1, "/a,b}");
        assert_eq!(exp.samples[2].labels[1].1, "+Inf");
        assert_eq!(exp.samples[2].value, 3.0);
        assert_eq!(
            parse_prometheus("x_bucket{le=\"+Inf\"} +Inf")
                .unwrap()
                .samples[0]
                .value,
            f64::INFINITY
        );
        assert_eq!(exp.samples[3].labels[0].1, "x \"q\"");
        assert!(exp.samples[4].value.is_nan());
        assert_eq!(exp.samples[5].value, -0.0015);
        assert!(exp.has_family("hotline_redis_up"));
        assert!(exp.has_family("hotline_http_request_duration_seconds"));
        assert!(exp.has_family("hotline_cache_requests_total"));
        assert!(!exp.has_family("hotline_alert_firing"));
    }

    #[test]
    fn prometheus_text_rejects_garbage() {
        for bad in [
            "hotline_x",
            "hotline_x abc",
            "1bad 1",
            "hotline_x{a=1} 1",
            "hotline_x{a=\"1\" 1",
            "hotline_x{a=\"1\"}1",
            "hotline_x 1 2 3",
            "hotline_x 1 notatime",
            "<html>",
        ] {
            assert!(parse_prometheus(bad).is_err(), "{bad:?} should not parse");
        }
        assert!(parse_prometheus("").unwrap().samples.is_empty());
    }

    #[test]
    fn random_phones_are_valid() {
        let region: Region = "US".parse().unwrap();
        for _ in 0..50 {
            let p = random_phone(&["312"]);
            assert!(p.starts_with("+1312"), "{p}");
            assert!(Phone::parse(&p, region).is_ok());
        }
    }

    #[test]
    fn answers_are_checked_against_the_contract() {
        let good = json!({
            "type": "conversation_initiation_client_data",
            "dynamic_variables": {
                "customer_name": "", "lead_id": "", "lead_status": "new",
                "organization_name": "Acme", "is_returning_customer": false,
                "conversation_count": 0, "last_contact_date": "", "previous_summary": "",
                "greeting": "Hello", "caller_phone": "+13122345678"
            }
        });
        assert!(answer_problems(&good).is_empty());
        let mut bad = good.clone();
        bad["dynamic_variables"]["conversation_count"] = json!("0");
        bad["dynamic_variables"]
            .as_object_mut()
            .unwrap()
            .remove("greeting");
        let problems = answer_problems(&bad);
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn report_text_and_summary() {
        let report = Report::from_checks(vec![
            Check::pass("health", "1.0 ms", "healthy"),
            Check::fail("redis", "", "Redis is not configured"),
        ]);
        assert!(!report.passed);
        assert_eq!(
            report.summary(),
            "validate: 1 passed, 1 failed (failed: redis)"
        );
        let text = report.to_text();
        assert!(
            text.starts_with("PASS  health  1.0 ms  healthy\nFAIL  redis "),
            "{text}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["passed"], false);
        assert_eq!(json["checks"][1]["name"], "redis");
        assert_eq!(json["checks"][1]["skipped"], false);
    }

    #[test]
    fn a_skipped_check_is_not_a_failure() {
        let report = Report::from_checks(vec![
            Check::pass("health", "1.0 ms", "healthy"),
            Check::skip("admin_ping", "needs --admin-token (ADMIN_TOKEN)"),
        ]);
        assert!(report.passed);
        assert!(report.failed().is_empty());
        assert_eq!(report.skipped(), vec!["admin_ping"]);
        assert_eq!(report.summary(), "validate: 1 passed, 1 skipped, 0 failed");
        let text = report.to_text();
        let line = text.lines().nth(1).unwrap_or_default();
        assert!(line.starts_with("SKIP  admin_ping  -"), "{text}");
        assert!(
            line.ends_with("skipped: needs --admin-token (ADMIN_TOKEN)"),
            "{text}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["checks"][1]["passed"], true);
        assert_eq!(json["checks"][1]["skipped"], true);
        let failing = Report::from_checks(vec![
            Check::fail("health", "", "down"),
            Check::skip("admin_ping", "needs --admin-token (ADMIN_TOKEN)"),
        ]);
        assert_eq!(
            failing.summary(),
            "validate: 0 passed, 1 skipped, 1 failed (failed: health)"
        );
    }
}
