//! What a client may make the server hold, whoever it is: request bodies in memory (one budget
//! for the process), time (headers and bodies have deadlines) and connections (a cap). Raw
//! sockets throughout: these tests need half-sent requests and connections held open.
//!
//! The gauges read from `/metrics` are the process's: these tests expect a process of their
//! own, as nextest gives each test (`scripts/test.sh`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::app::{
    sign, spawn_app_on, TestApp, ADMIN_TOKEN, ELEVENLABS_SECRET, WEBHOOK_SECRET,
};
use crate::support::db::TestDb;
use crate::support::raw::{self, closed_within, metric, read_response, roundtrip};
use crate::support::sse::SseClient;
use crate::webhooks::{initiation_body, initiation_ok, known_caller, CALLER, ORG_PHONE};

const MIB: usize = 1024 * 1024;
const POST_CALL: &str = "/webhooks/elevenlabs/post-call";
const INITIATION: &str = "/webhooks/elevenlabs/conversation-initiation";
/// Far longer than anything here should take on a loaded machine: only a hang reaches it.
const GENEROUS: Duration = Duration::from_secs(60);

async fn app_with(flags: &[&str]) -> TestApp {
    spawn_app_on(Arc::new(TestDb::postgres().await), flags).await
}

/// A post-call signature header with a current timestamp and a made-up MAC: what anyone can
/// send, and what the server cannot refuse before it has read the whole body.
fn forged_signature() -> String {
    format!(
        "t={},v0={}",
        chrono::Utc::now().timestamp(),
        "00".repeat(32)
    )
}

async fn body_bytes_in_flight(app: &TestApp) -> f64 {
    metric(
        &app.metrics_text().await,
        "hotline_http_body_bytes_in_flight",
    )
    .expect("the gauge is exported")
}

async fn bodies_refused(app: &TestApp, reason: &str) -> f64 {
    let series = format!("hotline_http_bodies_refused_total{{reason=\"{reason}\"}}");
    metric(&app.metrics_text().await, &series).expect("the counter is exported")
}

/// The process's peak resident memory (`VmHWM`), in bytes.
fn peak_rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kb * 1024
}

/// How a hostile client shapes its 17 MiB body.
#[derive(Clone, Copy, Debug)]
enum Hostile {
    /// Says it is a transcription, so the server would keep it.
    Transcription,
    /// Names no type until the very end.
    Untyped,
    /// An audio event: hashed as it streams and dropped.
    Audio,
    /// A transcription that sends 2 MiB, then a byte now and then.
    Slow,
}

fn hostile_body(kind: Hostile, len: usize) -> Vec<u8> {
    let head: &[u8] = match kind {
        Hostile::Transcription | Hostile::Slow => {
            br#"{"type":"post_call_transcription","data":{"transcript":""#
        }
        Hostile::Untyped => br#"{"data":{"transcript":""#,
        Hostile::Audio => br#"{"type":"post_call_audio","data":{"full_audio":""#,
    };
    let tail = br#""}}"#;
    let mut body = Vec::with_capacity(len);
    body.extend_from_slice(head);
    body.resize(len - tail.len(), b'A');
    body.extend_from_slice(tail);
    body
}

/// Sends one hostile post-call request; the status the server answered, if it answered
/// before it closed the connection.
async fn hostile_client(base: String, kind: Hostile, body: Arc<Vec<u8>>) -> Option<u16> {
    let mut stream = raw::connect(&base).await;
    let signature = forged_signature();
    let head = raw::request_head(
        "POST",
        POST_CALL,
        &[
            ("ElevenLabs-Signature", &signature),
            ("Content-Type", "application/json"),
        ],
        body.len(),
    );
    stream.write_all(head.as_bytes()).await.ok()?;
    match kind {
        Hostile::Slow => {
            if stream.write_all(&body[..2 * MIB]).await.is_ok() {
                for byte in &body[2 * MIB..2 * MIB + 100] {
                    if stream.write_all(&[*byte]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        _ => {
            for chunk in body.chunks(256 * 1024) {
                if stream.write_all(chunk).await.is_err() {
                    break;
                }
            }
        }
    }
    read_response(&mut stream).await.map(|r| r.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_clients_sending_17_mib_each_stay_within_the_body_budget() {
    let budget = 16 * MIB;
    let app = app_with(&["--body-budget-mb", "16", "--body-timeout-s", "8"]).await;
    let known = known_caller(&app).await;
    initiation_ok(app.initiate(&initiation_body(CALLER, ORG_PHONE)).await).await;

    let len = 17 * MIB;
    let kinds = [
        Hostile::Transcription,
        Hostile::Untyped,
        Hostile::Audio,
        Hostile::Slow,
    ];
    let bodies: Vec<Arc<Vec<u8>>> = kinds
        .iter()
        .map(|k| Arc::new(hostile_body(*k, len)))
        .collect();
    let refused_before = bodies_refused(&app, "over_budget").await;
    let peak_before = peak_rss();

    // The legitimate caller, over and over, while the attack lasts.
    let attacking = Arc::new(AtomicBool::new(true));
    let legit = {
        let attacking = attacking.clone();
        let client = app.client.clone();
        let url = app.url(INITIATION);
        let lead_id = known.lead_id().to_string();
        tokio::spawn(async move {
            let mut answered = 0;
            while attacking.load(Ordering::Acquire) || answered < 5 {
                let r = client
                    .post(&url)
                    .bearer_auth(WEBHOOK_SECRET)
                    .json(&initiation_body(CALLER, ORG_PHONE))
                    .send()
                    .await
                    .expect("the webhook answers during the attack");
                let (vars, _) = initiation_ok(r).await;
                assert_eq!(vars["lead_id"], lead_id.as_str());
                assert_eq!(vars["customer_name"], "Maria Lopez");
                answered += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            answered
        })
    };
    // The gauge, sampled while the attack lasts.
    let sampler = {
        let attacking = attacking.clone();
        let client = app.client.clone();
        let url = app.url("/metrics");
        tokio::spawn(async move {
            let mut max: f64 = 0.0;
            while attacking.load(Ordering::Acquire) {
                let text = client.get(&url).send().await.unwrap().text().await.unwrap();
                let v = metric(&text, "hotline_http_body_bytes_in_flight").unwrap();
                max = max.max(v);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            max
        })
    };

    let clients: Vec<_> = (0..40)
        .map(|i| {
            let kind = kinds[i % kinds.len()];
            let body = bodies[i % kinds.len()].clone();
            (
                kind,
                tokio::spawn(hostile_client(app.base.clone(), kind, body)),
            )
        })
        .collect();
    let mut statuses = Vec::new();
    for (kind, client) in clients {
        let status = tokio::time::timeout(GENEROUS, client)
            .await
            .expect("every hostile request ends")
            .unwrap();
        statuses.push((kind, status));
    }
    attacking.store(false, Ordering::Release);
    let answered = legit.await.unwrap();
    let max_in_flight = sampler.await.unwrap();
    let peak_growth = peak_rss().saturating_sub(peak_before);

    assert!(answered >= 5, "the webhook kept answering: {answered}");
    assert!(
        max_in_flight > 0.0 && max_in_flight <= budget as f64,
        "bodies in flight peaked at {max_in_flight} bytes (budget {budget})"
    );
    for (kind, status) in &statuses {
        // Refused for its signature once read (401), by the budget (503), at its deadline
        // (408), or closed on while still sending; never kept and taken for an event.
        assert!(
            matches!(status, None | Some(401) | Some(503) | Some(408)),
            "{kind:?}: {status:?}"
        );
    }
    assert!(
        bodies_refused(&app, "over_budget").await > refused_before,
        "the budget refused some bodies"
    );
    // Every byte taken is given back.
    let settled = Instant::now();
    while body_bytes_in_flight(&app).await != 0.0 {
        assert!(
            settled.elapsed() < GENEROUS,
            "bodies in flight never went back to 0"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Peak resident memory: 40 × 17 MiB were sent; kept whole, that is 680 MiB. The bound
    // leaves room for the test's own buffers, hyper's per-connection read buffers and the
    // allocator, but not for the bodies. Only meaningful with a process per test (nextest).
    if std::env::var("NEXTEST_EXECUTION_MODE").as_deref() == Ok("process-per-test") {
        assert!(
            peak_growth < 160 * MIB,
            "peak resident memory grew by {} MiB",
            peak_growth / MIB
        );
    }
}

#[tokio::test]
async fn unfinished_headers_are_cut_off_after_the_header_timeout() {
    let app = app_with(&["--header-read-timeout-s", "1"]).await;

    let mut half_headers = raw::connect(&app.base).await;
    half_headers
        .write_all(
            b"POST /webhooks/elevenlabs/conversation-initiation HTTP/1.1\r\nHost: x\r\nAuthoriz",
        )
        .await
        .unwrap();
    let mut silent = raw::connect(&app.base).await;
    let started = Instant::now();
    assert!(
        closed_within(&mut half_headers, GENEROUS).await,
        "a request with unfinished headers is disconnected"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "not before the timeout"
    );
    assert!(
        closed_within(&mut silent, GENEROUS).await,
        "a connection that sends nothing is disconnected"
    );

    // A keep-alive connection is closed once idle that long, after serving its requests.
    let mut kept_alive = raw::connect(&app.base).await;
    for _ in 0..2 {
        let r = roundtrip(&mut kept_alive, "GET", "/healthz", &[], b"").await;
        assert_eq!(r.status, 200);
    }
    assert!(closed_within(&mut kept_alive, GENEROUS).await);

    // The server itself is fine.
    assert_eq!(
        app.client
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

/// Sends the head of a request and `sent` bytes of its `declared`-byte body, then stalls.
async fn stall_body(
    app: &TestApp,
    path: &str,
    headers: &[(&str, &str)],
    declared: usize,
    sent: usize,
) -> TcpStream {
    let mut stream = raw::connect(&app.base).await;
    let head = raw::request_head("POST", path, headers, declared);
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut body = br#"{"type":"post_call_transcription","data":{"x":""#.to_vec();
    body.resize(sent, b'x');
    stream.write_all(&body).await.unwrap();
    stream
}

#[tokio::test]
async fn a_stalled_body_is_answered_408_and_the_connection_closed() {
    let app = app_with(&["--body-timeout-s", "1", "--header-read-timeout-s", "30"]).await;
    let timed_out_before = bodies_refused(&app, "timed_out").await;
    let auth = format!("Bearer {WEBHOOK_SECRET}");
    let signature = forged_signature();
    let admin = format!("Bearer {ADMIN_TOKEN}");

    // Path, headers, declared length, bytes sent before the stall.
    type Attempt<'a> = (&'a str, Vec<(&'a str, &'a str)>, usize, usize);
    let attempts: [Attempt; 3] = [
        (INITIATION, vec![("Authorization", &auth)], 1000, 10),
        (
            POST_CALL,
            vec![("ElevenLabs-Signature", &signature)],
            4 * MIB,
            256 * 1024,
        ),
        (
            "/api/organizations",
            vec![("Authorization", &admin)],
            500,
            20,
        ),
    ];
    for (path, headers, declared, sent) in attempts {
        let mut stream = stall_body(&app, path, &headers, declared, sent).await;
        let r = tokio::time::timeout(GENEROUS, read_response(&mut stream))
            .await
            .expect("an answer")
            .expect("a 408 before the close");
        assert_eq!(r.status, 408, "{path}: {}", r.body);
        let body: serde_json::Value = serde_json::from_str(&r.body).expect("JSON error");
        assert_eq!(body["error"]["code"], "request_timeout", "{path}");
        assert!(
            closed_within(&mut stream, GENEROUS).await,
            "{path}: the connection is closed after the 408"
        );
    }
    assert_eq!(
        bodies_refused(&app, "timed_out").await - timed_out_before,
        3.0
    );
    assert_eq!(body_bytes_in_flight(&app).await, 0.0);
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_without_harming_accepted_ones() {
    let app = app_with(&["--max-connections", "3", "--header-read-timeout-s", "60"]).await;
    let open = |text: &str| metric(text, "hotline_http_connections_open").unwrap();
    // Raw connections only: a pooling client would hold connections of its own.
    let mut control = raw::connect(&app.base).await;
    let idle_1 = raw::connect(&app.base).await;
    let _idle_2 = raw::connect(&app.base).await;
    let started = Instant::now();
    loop {
        let r = roundtrip(&mut control, "GET", "/metrics", &[], b"").await;
        if open(&r.body) == 3.0 {
            break;
        }
        assert!(started.elapsed() < GENEROUS, "three connections accepted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A fourth waits, its request unanswered, while the three are open.
    let mut waiting = raw::connect(&app.base).await;
    let head = raw::request_head("GET", "/healthz", &[], 0);
    waiting.write_all(head.as_bytes()).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), read_response(&mut waiting))
            .await
            .is_err(),
        "no answer beyond the cap"
    );

    // The accepted connection is served as usual meanwhile.
    let auth = format!("Bearer {WEBHOOK_SECRET}");
    let body = initiation_body(CALLER, ORG_PHONE).to_string();
    let r = roundtrip(
        &mut control,
        "POST",
        INITIATION,
        &[("Authorization", &auth)],
        body.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let answer: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(answer["dynamic_variables"].as_object().unwrap().len(), 10);
    let r = roundtrip(&mut control, "GET", "/metrics", &[], b"").await;
    assert_eq!(open(&r.body), 3.0, "never more than the cap");

    // One closes: the waiting one is accepted and answered.
    drop(idle_1);
    let r = tokio::time::timeout(GENEROUS, read_response(&mut waiting))
        .await
        .expect("answered once a connection closed")
        .expect("a response");
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn an_audio_event_larger_than_the_whole_budget_streams_through() {
    // Untrusted reads may hold 768 KiB here; the event is 17 MiB.
    let app = app_with(&["--body-budget-mb", "1"]).await;
    let refused_before = bodies_refused(&app, "over_budget").await;
    let now = chrono::Utc::now().timestamp();
    let body = String::from_utf8(hostile_body(Hostile::Audio, 17 * MIB)).unwrap();
    let r = app.post_call_signed(&body, ELEVENLABS_SECRET, 0).await;
    assert_eq!(r.status(), 200);
    let answer: serde_json::Value = r.json().await.unwrap();
    assert_eq!(answer["status"], "ignored");
    // Not signed by ElevenLabs: read to the end all the same, then refused.
    let r = app
        .client
        .post(app.url(POST_CALL))
        .header(
            "ElevenLabs-Signature",
            sign(&body, "another-secret-0123456789", now),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(bodies_refused(&app, "over_budget").await, refused_before);
    assert_eq!(body_bytes_in_flight(&app).await, 0.0);
}

#[tokio::test]
async fn the_monitoring_stream_outlives_every_timeout_and_shutdown_lets_requests_finish() {
    let app = app_with(&["--body-timeout-s", "2", "--header-read-timeout-s", "1"]).await;
    let mut stream = SseClient::connect(&app.url("/api/monitoring/stream")).await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        assert!(
            stream.next(GENEROUS).await.is_some(),
            "the stream is not cut by the header or body timeout"
        );
    }

    // A request whose body is still arriving when shutdown begins is answered in full.
    let base = app.base.clone();
    let body = hostile_body(Hostile::Transcription, 64 * 1024);
    let mut in_flight = raw::connect(&base).await;
    let signature = forged_signature();
    let head = raw::request_head(
        "POST",
        POST_CALL,
        &[("ElevenLabs-Signature", &signature)],
        body.len(),
    );
    in_flight.write_all(head.as_bytes()).await.unwrap();
    in_flight.write_all(&body[..1024]).await.unwrap();
    let stopping = tokio::spawn(app.stop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    in_flight.write_all(&body[1024..]).await.unwrap();
    let r = tokio::time::timeout(GENEROUS, read_response(&mut in_flight))
        .await
        .expect("answered")
        .expect("a response, not a dropped connection");
    assert_eq!(r.status, 401, "{}", r.body);

    tokio::time::timeout(GENEROUS, stopping)
        .await
        .expect("shutdown completes with a monitoring stream open")
        .unwrap();
    while stream.next(GENEROUS).await.is_some() {}
    assert!(raw_connect_fails(&base).await, "no longer accepting");
}

async fn raw_connect_fails(base: &str) -> bool {
    TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .is_err()
}
