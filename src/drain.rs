//! `hotline drain`: tells the instance at `--url` to drain itself, the way an orchestrator's
//! stop hook (a Kubernetes `preStop`) takes an instance out of its load balancer before
//! stopping it.
//!
//! It asks the instance for its own id (`self` in `GET /api/monitoring/instances`), sends it a
//! `drain` admin message addressed to that id and waits for the instance's ack (the command then
//! optionally waits `--wait-s` more, so that load balancers see `/healthz` answer 503 before the
//! process is told to stop). It drains whichever instance answers at `--url`: point it at the instance
//! itself, never at a load balancer.

use std::time::{Duration, Instant};

use reqwest::{Client, RequestBuilder, Response, StatusCode};
use serde_json::{json, Value};

/// What `hotline drain` does, apart from its flags' parsing.
#[derive(Debug, Clone)]
pub struct DrainOptions {
    /// Base URL of the instance, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    pub admin_token: String,
    /// How long the whole drain may take: finding the instance's id, sending the message and
    /// waiting for its ack.
    pub ack_within: Duration,
    /// The bound on every single request.
    pub request_timeout: Duration,
}

/// A drain that the instance acked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drained {
    pub instance_id: String,
    pub message_id: String,
    /// The instance's own words in its ack.
    pub detail: String,
}

/// Drains the instance at `opts.url` and returns once it acked. An error is one sentence that
/// says which step failed and why.
pub async fn run(opts: &DrainOptions) -> Result<Drained, String> {
    let client = Client::builder()
        .timeout(opts.request_timeout)
        .connect_timeout(opts.request_timeout)
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
    let d = Drainer {
        client,
        base: opts.url.trim_end_matches('/').to_string(),
        token: &opts.admin_token,
    };
    let steps = async {
        let me = d.own_id().await?;
        let message_id = d.send_drain(&me).await?;
        let detail = d.await_ack(&message_id, &me, opts.ack_within).await?;
        Ok(Drained {
            instance_id: me,
            message_id,
            detail,
        })
    };
    // The whole drain, not each step, is bounded: a stop hook must leave the grace period to
    // the wait and the shutdown that follow it.
    tokio::time::timeout(opts.ack_within, steps)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "timed out after {} s without an ack from the instance at {}",
                opts.ack_within.as_secs_f64(),
                d.base
            ))
        })
}

struct Drainer<'a> {
    client: Client,
    base: String,
    token: &'a str,
}

const INSTANCES: &str = "/api/monitoring/instances";
const MESSAGES: &str = "/api/admin/messages";

impl Drainer<'_> {
    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    async fn send(&self, what: &str, b: RequestBuilder) -> Result<Response, String> {
        b.send()
            .await
            .map_err(|e| format!("{what} at {}: {}", self.base, describe(&e)))
    }

    async fn json_of(&self, what: &str, r: Response) -> Result<Value, String> {
        r.json::<Value>()
            .await
            .map_err(|e| format!("{what}: the answer is not JSON ({})", describe(&e)))
    }

    /// The instance's answer to a request that it refused, as one sentence.
    async fn refused(&self, what: &str, r: Response) -> String {
        let status = r.status();
        let message = r
            .json::<Value>()
            .await
            .ok()
            .and_then(|b| b["error"]["message"].as_str().map(str::to_string));
        let why = match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                "the admin token was refused (check --admin-token / ADMIN_TOKEN)".to_string()
            }
            _ => message.unwrap_or_else(|| "unexpected answer".into()),
        };
        format!("{what}: HTTP {}: {why}", status.as_u16())
    }

    /// The id the instance gives itself.
    async fn own_id(&self) -> Result<String, String> {
        let what = format!("GET {INSTANCES}");
        let r = self
            .send(&what, self.client.get(self.url(INSTANCES)))
            .await?;
        if r.status() != StatusCode::OK {
            return Err(self.refused(&what, r).await);
        }
        let body = self.json_of(&what, r).await?;
        body["self"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or_else(|| format!("{what}: no `self` in the answer"))
    }

    /// Sends `drain` to `me`; returns the message's id.
    async fn send_drain(&self, me: &str) -> Result<String, String> {
        let what = format!("POST {MESSAGES}");
        let b = self
            .client
            .post(self.url(MESSAGES))
            .bearer_auth(self.token)
            .json(&json!({"to": me, "command": "drain"}));
        let r = self.send(&what, b).await?;
        if r.status() != StatusCode::ACCEPTED {
            return Err(self.refused(&what, r).await);
        }
        let body = self.json_of(&what, r).await?;
        body["id"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or_else(|| format!("{what}: no message `id` in the answer"))
    }

    /// Waits for `me`'s ack of the message; returns its detail, or why there is none.
    async fn await_ack(&self, id: &str, me: &str, within: Duration) -> Result<String, String> {
        let path = format!("{MESSAGES}/{id}");
        let what = format!("GET {path}");
        let until = Instant::now() + within;
        loop {
            let b = self.client.get(self.url(&path)).bearer_auth(self.token);
            let r = self.send(&what, b).await?;
            if r.status() != StatusCode::OK {
                return Err(self.refused(&what, r).await);
            }
            let message = self.json_of(&what, r).await?;
            if let Some(ack) = message["acks"].get(me).filter(|a| a.is_object()) {
                let detail = ack["detail"].as_str().unwrap_or_default().to_string();
                return if ack["ok"] == true {
                    Ok(detail)
                } else {
                    Err(format!("`{me}` refused to drain: {detail}"))
                };
            }
            if Instant::now() >= until {
                return Err(format!(
                    "`{me}` did not ack the drain within {} s",
                    within.as_secs_f64()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".into();
    }
    // The innermost cause says it best (connection refused, no such host).
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg = s.to_string();
        source = s.source();
    }
    if e.is_connect() {
        format!("connection failed: {msg}")
    } else {
        msg
    }
}
