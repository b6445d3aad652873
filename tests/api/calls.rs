//! Calls from ring to hang-up, and the event bus: real Redis, real Postgres, real HTTP and SSE
//! clients, instances started on port 0 sharing one Redis under the test's own prefix.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::support::app::{assert_error, spawn_app_on, TestApp, ADMIN_TOKEN, ELEVENLABS_SECRET};
use crate::support::capture::Capture;
use crate::support::db::TestDb;
use crate::support::infra::{eventually, redis_flags, redis_url, unique_prefix, RedisServer};
use crate::support::sse::SseClient;

const ORG_PHONE: &str = "+16123241623";
const CALLER: &str = "+16129782029";
const WAIT: Duration = Duration::from_secs(10);

/// Two instances on one database and one Redis prefix.
async fn pair(extra: &[&str]) -> (TestApp, TestApp) {
    let db = Arc::new(TestDb::postgres().await);
    let mut flags = redis_flags(&redis_url(), &unique_prefix());
    flags.extend(extra.iter().map(|s| s.to_string()));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut a_flags = flags.clone();
    a_flags.extend(["--instance-id", "instance-a"]);
    let mut b_flags = flags;
    b_flags.extend(["--instance-id", "instance-b"]);
    let a = spawn_app_on(db.clone(), &a_flags).await;
    let b = spawn_app_on(db, &b_flags).await;
    (a, b)
}

/// An organization with one lead (Maria) calling it.
async fn fixture(app: &TestApp) -> (String, String) {
    let org = app.create_org("Acme Dental", ORG_PHONE).await;
    let org_id = org["id"].as_str().unwrap().to_string();
    let lead = app.create_lead(&org_id, CALLER, Some("Maria")).await;
    (org_id, lead["id"].as_str().unwrap().to_string())
}

async fn ring(app: &TestApp, call_sid: &str) -> Value {
    let r = app
        .initiate(&json!({"caller_id": CALLER, "called_number": ORG_PHONE,
                          "agent_id": "agent_1", "call_sid": call_sid}))
        .await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn get_call(app: &TestApp, id: &str) -> Option<Value> {
    let r = app.get_admin(&format!("/api/calls/{id}")).await;
    match r.status().as_u16() {
        200 => Some(r.json().await.unwrap()),
        404 => None,
        s => panic!("GET /api/calls/{id}: {s}"),
    }
}

/// The call once `check` holds for it (panics after [`WAIT`]).
async fn call_when(app: &TestApp, id: &str, check: impl Fn(&Value) -> bool) -> Value {
    let until = Instant::now() + WAIT;
    loop {
        if let Some(call) = get_call(app, id).await {
            if check(&call) {
                return call;
            }
        }
        assert!(Instant::now() < until, "call {id} never became as expected");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn list(app: &TestApp, query: &str) -> Value {
    let r = app.get_admin(&format!("/api/calls{query}")).await;
    assert_eq!(r.status(), 200, "GET /api/calls{query}");
    r.json().await.unwrap()
}

async fn stream(app: &TestApp, path: &str, last_id: Option<&str>) -> SseClient {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let mut headers = vec![("Authorization", auth.as_str())];
    if let Some(id) = last_id {
        headers.push(("Last-Event-ID", id));
    }
    SseClient::connect_with(&app.url(path), &headers).await
}

/// The next event of `type` on `client`, skipping others.
async fn next_of(client: &mut SseClient, kind: &str) -> crate::support::sse::SseEvent {
    client
        .next_named(kind, Instant::now() + WAIT)
        .await
        .unwrap_or_else(|| panic!("no `{kind}` event within {WAIT:?}"))
}

async fn post_event(app: &TestApp, call: &str, body: &Value) -> reqwest::Response {
    app.post_admin(&format!("/api/calls/{call}/events"), body)
        .await
}

#[tokio::test]
async fn a_ring_starts_a_call_that_every_instance_serves() {
    let (a, b) = pair(&[]).await;
    let (org_id, lead_id) = fixture(&a).await;
    let answer = ring(&a, "CA0001").await;
    assert_eq!(answer["dynamic_variables"]["customer_name"], "Maria");

    let call = call_when(&b, "CA0001", |_| true).await;
    assert_eq!(call["status"], "active");
    assert_eq!(call["organization_id"], org_id.as_str());
    assert_eq!(call["lead_id"], lead_id.as_str());
    assert_eq!(call["agent_id"], "agent_1");
    assert_eq!(call["caller_phone"], CALLER);
    assert_eq!(call["called_number"], ORG_PHONE);
    assert_eq!(call["control"], "agent");
    assert_eq!(call["state"], json!({}));
    assert_eq!(call["instance_id"], "instance-a");
    assert_eq!(call["ended_at"], Value::Null);
    assert!(call["answer_source"].is_string());

    // ElevenLabs retries: the same id updates the one call, now answered from tier 1.
    let mut events = stream(&b, "/api/calls/CA0001/stream", None).await;
    ring(&a, "CA0001").await;
    let updated = next_of(&mut events, "call.updated").await.json();
    assert_eq!(updated["data"]["call_id"], "CA0001");
    let listed = list(&b, "").await;
    assert_eq!(listed["count"], 1);
    assert_eq!(listed["items"][0]["started_at"], call["started_at"]);

    // A body without a call id starts nothing.
    a.initiate(&json!({"caller_id": CALLER, "called_number": ORG_PHONE}))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(list(&a, "").await["count"], 1);
    let metrics = a.metrics_text().await;
    assert!(
        metrics.contains("hotline_calls_started_total 1"),
        "{metrics}"
    );
}

fn transcription(call_sid: Option<&str>, conversation_id: &str) -> String {
    let mut phone_call =
        json!({"external_number": CALLER, "agent_number": ORG_PHONE, "direction": "inbound"});
    if let Some(sid) = call_sid {
        phone_call["call_sid"] = json!(sid);
    }
    json!({
        "type": "post_call_transcription",
        "event_timestamp": chrono::Utc::now().timestamp(),
        "data": {
            "agent_id": "agent_1",
            "conversation_id": conversation_id,
            "status": "done",
            "transcript": [{"role": "agent", "message": "Hello Maria"}],
            "metadata": {"phone_call": phone_call},
            "analysis": {"transcript_summary": "Booked a cleaning."},
        }
    })
    .to_string()
}

#[tokio::test]
async fn post_call_events_end_or_fail_the_call() {
    let (a, b) = pair(&[]).await;
    fixture(&a).await;
    ring(&a, "CA-END").await;
    call_when(&b, "CA-END", |_| true).await;
    let mut events = stream(&b, "/api/calls/CA-END/stream", None).await;

    let r = b
        .post_call_signed(
            &transcription(Some("CA-END"), "conv_1"),
            ELEVENLABS_SECRET,
            0,
        )
        .await;
    assert_eq!(r.status(), 200);
    let ended = call_when(&a, "CA-END", |c| c["status"] == "ended").await;
    assert_eq!(ended["conversation_id"], "conv_1");
    assert!(ended["ended_at"].is_string());
    let event = next_of(&mut events, "call.ended").await;
    assert_eq!(event.json()["data"]["status"], "ended");

    // Named only through the conversation it recorded (the initiation carried its id).
    a.initiate(&json!({"caller_id": CALLER, "called_number": ORG_PHONE,
                       "call_id": "sip-77", "conversation_id": "conv_2"}))
        .await;
    call_when(&a, "sip-77", |_| true).await;
    let r = a
        .post_call_signed(&transcription(None, "conv_2"), ELEVENLABS_SECRET, 0)
        .await;
    assert_eq!(r.status(), 200);
    call_when(&b, "sip-77", |c| c["status"] == "ended").await;

    // An initiation failure fails its call.
    ring(&a, "CA-FAIL").await;
    call_when(&a, "CA-FAIL", |_| true).await;
    let failure = json!({
        "type": "call_initiation_failure",
        "event_timestamp": chrono::Utc::now().timestamp(),
        "data": {"agent_id": "agent_1", "conversation_id": "conv_3", "failure_reason": "busy",
                 "metadata": {"type": "twilio", "body": {"CallSid": "CA-FAIL"}}}
    })
    .to_string();
    let r = a.post_call_signed(&failure, ELEVENLABS_SECRET, 0).await;
    assert_eq!(r.status(), 200);
    let failed = call_when(&b, "CA-FAIL", |c| c["status"] == "failed").await;
    assert_eq!(failed["failure_reason"], "busy");

    // A failure for a call whose ring is not written (yet): recorded as failed, and a ring
    // that comes after it does not make it active again.
    let failure = failure.replace("CA-FAIL", "CA-EARLY");
    let r = a.post_call_signed(&failure, ELEVENLABS_SECRET, 0).await;
    assert_eq!(r.status(), 200);
    call_when(&b, "CA-EARLY", |c| c["status"] == "failed").await;
    ring(&a, "CA-EARLY").await;
    let early = call_when(&a, "CA-EARLY", |c| c["called_number"] == ORG_PHONE).await;
    assert_eq!(early["status"], "failed");

    // Unsigned, nothing changes.
    ring(&a, "CA-KEEP").await;
    call_when(&a, "CA-KEEP", |_| true).await;
    let r = a
        .post_call_signed(&transcription(Some("CA-KEEP"), "conv_4"), "wrong-secret", 0)
        .await;
    assert_eq!(r.status(), 401);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get_call(&a, "CA-KEEP").await.unwrap()["status"], "active");

    // Refused as invalid (no conversation id to record it by), nothing changes either. Two
    // calls ended after it fence the writer: once the second has ended, whatever was queued
    // before the first has been written.
    let mut refused: Value = serde_json::from_str(&transcription(Some("CA-KEEP"), "")).unwrap();
    refused["data"]
        .as_object_mut()
        .unwrap()
        .remove("conversation_id");
    let r = a
        .post_call_signed(&refused.to_string(), ELEVENLABS_SECRET, 0)
        .await;
    assert_eq!(r.status(), 422);
    for (sid, conversation) in [("CA-FENCE-1", "conv_5"), ("CA-FENCE-2", "conv_6")] {
        ring(&a, sid).await;
        call_when(&a, sid, |_| true).await;
        let r = a
            .post_call_signed(
                &transcription(Some(sid), conversation),
                ELEVENLABS_SECRET,
                0,
            )
            .await;
        assert_eq!(r.status(), 200);
        call_when(&a, sid, |c| c["status"] == "ended").await;
    }
    assert_eq!(get_call(&a, "CA-KEEP").await.unwrap()["status"], "active");

    let metrics = a.metrics_text().await;
    assert!(
        // CA-FAIL and CA-EARLY.
        metrics.contains("hotline_calls_ended_total{status=\"failed\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn patches_merge_and_concurrent_patches_lose_nothing() {
    let (a, b) = pair(&[]).await;
    fixture(&a).await;
    ring(&a, "CA-P").await;
    call_when(&a, "CA-P", |_| true).await;

    let r = a
        .patch_admin(
            "/api/calls/CA-P",
            &json!({"state": {"cart": {"items": 2, "total": 40}, "note": "x", "tags": ["a"]}}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let r = b
        .patch_admin(
            "/api/calls/CA-P",
            &json!({"state": {"cart": {"total": null, "coupon": "SPRING"}, "note": null}, "control": "human"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let call: Value = r.json().await.unwrap();
    assert_eq!(
        call["state"],
        json!({"cart": {"items": 2, "coupon": "SPRING"}, "tags": ["a"]})
    );
    assert_eq!(call["control"], "human");
    // Seen by the next read on the other instance.
    assert_eq!(get_call(&a, "CA-P").await.unwrap()["state"], call["state"]);

    // 50 patches of distinct keys, at once, half on each instance.
    let patches = (0..50).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        async move {
            let r = app
                .patch_admin("/api/calls/CA-P", &json!({"state": {format!("k{i}"): i}}))
                .await;
            assert_eq!(r.status(), 200, "patch {i}");
        }
    });
    futures_util::future::join_all(patches).await;
    let state = get_call(&b, "CA-P").await.unwrap()["state"].clone();
    for i in 0..50 {
        assert_eq!(state[format!("k{i}")], i, "k{i} lost: {state}");
    }

    // Ending through the API.
    let mut events = stream(&a, "/api/calls/CA-P/stream", None).await;
    let r = b
        .patch_admin("/api/calls/CA-P", &json!({"status": "ended"}))
        .await;
    assert_eq!(r.status(), 200);
    let ended: Value = r.json().await.unwrap();
    assert_eq!(ended["status"], "ended");
    assert!(ended["ended_at"].is_string());
    next_of(&mut events, "call.ended").await;
}

#[tokio::test]
async fn a_call_is_gone_its_ttl_after_its_last_change() {
    let (a, _b) = pair(&["--call-ttl-s", "1"]).await;
    fixture(&a).await;
    ring(&a, "CA-TTL").await;
    call_when(&a, "CA-TTL", |_| true).await;
    assert!(
        eventually(WAIT, || async { get_call(&a, "CA-TTL").await.is_none() }).await,
        "the call outlived its TTL"
    );
    assert_eq!(list(&a, "").await["count"], 0);
    assert_eq!(a.get_admin("/api/calls/CA-TTL/events").await.status(), 404);
}

#[tokio::test]
async fn calls_are_listed_and_counted_across_instances() {
    let (a, b) = pair(&[]).await;
    let (org_id, lead_id) = fixture(&a).await;
    let other = a.create_org("Other Clinic", "+16125550000").await;
    let other_id = other["id"].as_str().unwrap();
    for i in 0..3 {
        ring(&a, &format!("CA-A{i}")).await;
        b.initiate(
            &json!({"caller_id": "+16125551234", "called_number": "+16125550000",
                           "call_sid": format!("CA-B{i}")}),
        )
        .await;
    }
    assert!(eventually(WAIT, || async { list(&a, "").await["count"] == 6 }).await);
    let r = b
        .patch_admin("/api/calls/CA-A0", &json!({"status": "ended"}))
        .await;
    assert_eq!(r.status(), 200);

    let all = list(&b, "?limit=4").await;
    assert_eq!(all["count"], 6);
    assert_eq!(all["items"].as_array().unwrap().len(), 4);
    let started: Vec<&str> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["started_at"].as_str().unwrap())
        .collect();
    let mut sorted = started.clone();
    sorted.sort_by(|x, y| y.cmp(x));
    assert_eq!(started, sorted, "newest first");

    let active = list(&a, "?status=active").await;
    assert_eq!(active["count"], 5);
    let org = list(&b, &format!("?organization_id={org_id}")).await;
    assert_eq!(org["count"], 3);
    let org_active = list(
        &a,
        &format!("?organization_id={org_id}&status=active&limit=1"),
    )
    .await;
    assert_eq!(org_active["count"], 2);
    assert_eq!(org_active["items"].as_array().unwrap().len(), 1);
    assert_eq!(list(&a, &format!("?lead_id={lead_id}")).await["count"], 3);

    // Every instance counts the calls of all of them (every few seconds).
    for app in [&a, &b] {
        assert!(
            eventually(Duration::from_secs(20), || async {
                let r = app
                    .client
                    .get(app.url("/api/monitoring/metrics"))
                    .send()
                    .await
                    .unwrap();
                let m: Value = r.json().await.unwrap();
                m["calls"] == json!({"active": 5, "started_last_minute": 6})
                    && app.metrics_text().await.contains("hotline_calls_active 5")
            })
            .await,
            "five active calls, six started in the last minute"
        );
    }
    assert_eq!(
        list(&a, &format!("?organization_id={other_id}&status=ended")).await["count"],
        0
    );
}

#[tokio::test]
async fn events_posted_on_one_instance_stream_on_the_other_and_resume_without_gaps() {
    let (a, b) = pair(&[]).await;
    fixture(&a).await;
    ring(&a, "CA-EV").await;
    call_when(&b, "CA-EV", |_| true).await;

    let mut on_b = stream(&b, "/api/calls/CA-EV/stream", None).await;
    let mut all_b = stream(&b, "/api/events", None).await;
    let r = post_event(
        &a,
        "CA-EV",
        &json!({"type": "tool.note", "data": {"text": "hello"}}),
    )
    .await;
    assert_eq!(r.status(), 201);
    let posted: Value = r.json().await.unwrap();
    let got = next_of(&mut on_b, "tool.note").await;
    assert_eq!(got.id.as_deref(), posted["id"].as_str());
    let event = got.json();
    assert_eq!(event["data"]["text"], "hello");
    assert_eq!(event["call_id"], "CA-EV");
    assert_eq!(event["instance_id"], "instance-a");
    // The global stream carries it without the integration's data.
    let public = next_of(&mut all_b, "tool.note").await;
    assert_eq!(public.id, got.id);
    assert_eq!(public.json()["data"], json!({}));

    // The client goes away, misses five events, and comes back with its last id.
    let last = got.id.clone().unwrap();
    drop(on_b);
    let mut missed = Vec::new();
    for i in 0..5 {
        let r = post_event(&a, "CA-EV", &json!({"type": "tool.step", "data": {"n": i}})).await;
        missed.push(
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let mut resumed = stream(&b, "/api/calls/CA-EV/stream", Some(&last)).await;
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(next_of(&mut resumed, "tool.step").await);
    }
    let ids: Vec<String> = seen.iter().map(|e| e.id.clone().unwrap()).collect();
    assert_eq!(ids, missed, "exactly the missed events, in order");
    let ns: Vec<i64> = seen
        .iter()
        .map(|e| e.json()["data"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(ns, vec![0, 1, 2, 3, 4]);
    // Then live, with no duplicate.
    post_event(&b, "CA-EV", &json!({"type": "tool.done"})).await;
    let next = resumed.next(WAIT).await.expect("the live event");
    assert_eq!(next.name, "tool.done");

    // The call's events, oldest first.
    let r = a.get_admin("/api/calls/CA-EV/events").await;
    assert_eq!(r.status(), 200);
    let items: Value = r.json().await.unwrap();
    let types: Vec<&str> = items["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types.first(), Some(&"call.started"));
    assert_eq!(types.last(), Some(&"tool.done"));
    assert_eq!(types.iter().filter(|t| **t == "tool.step").count(), 5);
}

#[tokio::test]
async fn a_client_that_never_reads_is_dropped_while_others_keep_receiving() {
    let (a, _b) = pair(&[]).await;
    fixture(&a).await;
    ring(&a, "CA-SLOW").await;
    call_when(&a, "CA-SLOW", |_| true).await;

    // A raw client that asks for the stream and never reads a byte.
    let addr = a.base.trim_start_matches("http://").to_string();
    // A small receive buffer, so that the stuck client stops taking bytes sooner.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stuck = socket.connect(addr.parse().unwrap()).await.unwrap();
    stuck
        .write_all(
            format!(
                "GET /api/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nAccept: text/event-stream\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut reader = stream(&a, "/api/events", None).await;
    assert!(
        eventually(WAIT, || async {
            a.metrics_text()
                .await
                .contains("hotline_sse_clients{stream=\"events\"} 2")
        })
        .await
    );

    // Large events until the stuck client's socket and queue are full.
    let big = "x".repeat(8 * 1024);
    let mut sent = 0;
    let until = Instant::now() + Duration::from_secs(120);
    while !a
        .metrics_text()
        .await
        .contains("hotline_sse_clients_dropped_total{stream=\"events\"} 1")
    {
        assert!(
            Instant::now() < until,
            "the stuck client was never dropped after {sent} events"
        );
        let batch = (0..50).map(|_| async {
            let body = json!({"type": "tool.blob", "data": {"b": big}});
            let r = post_event(&a, "CA-SLOW", &body).await;
            assert_eq!(r.status(), 201);
        });
        futures_util::future::join_all(batch).await;
        sent += 50;
        // The reading client keeps up with every one of them.
        while let Some(e) = reader.next(Duration::from_millis(1)).await {
            let _ = e;
        }
    }
    assert!(sent > 0);
    // Its connection is closed; the other client still receives.
    let mut buf = vec![0u8; 1 << 20];
    let closed = tokio::time::timeout(WAIT, async {
        use tokio::io::AsyncReadExt;
        loop {
            match stuck.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => continue,
            }
        }
    })
    .await
    .unwrap_or(false);
    assert!(closed, "the stuck client's connection is closed");
    let r = post_event(&a, "CA-SLOW", &json!({"type": "tool.after"})).await;
    assert_eq!(r.status(), 201);
    next_of(&mut reader, "tool.after").await;
    assert!(
        eventually(WAIT, || async {
            a.metrics_text()
                .await
                .contains("hotline_sse_clients{stream=\"events\"} 1")
        })
        .await
    );
}

#[tokio::test]
async fn a_restarted_instance_still_serves_the_call() {
    let db = Arc::new(TestDb::postgres().await);
    let flags = redis_flags(&redis_url(), &unique_prefix());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let a = spawn_app_on(db.clone(), &flags).await;
    fixture(&a).await;
    ring(&a, "CA-R").await;
    call_when(&a, "CA-R", |_| true).await;
    let r = a
        .patch_admin("/api/calls/CA-R", &json!({"state": {"step": 3}}))
        .await;
    assert_eq!(r.status(), 200);
    a.stop().await;

    let again = spawn_app_on(db, &flags).await;
    let call = get_call(&again, "CA-R")
        .await
        .expect("the call outlives its instance");
    assert_eq!(call["state"]["step"], 3);
    assert_eq!(call["status"], "active");
}

#[tokio::test]
async fn calls_made_while_redis_is_down_are_served_and_written_back() {
    let mut redis = RedisServer::start().await;
    let db = Arc::new(TestDb::postgres().await);
    let flags = redis_flags(&redis.url(), &unique_prefix());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let a = spawn_app_on(db.clone(), &flags).await;
    fixture(&a).await;
    ring(&a, "CA-UP").await;
    let a_id = call_when(&a, "CA-UP", |_| true).await["instance_id"].clone();

    redis.kill();
    // The webhook answers at once, with the caller's name from tier 1 or the database.
    for i in 0..5 {
        let started = Instant::now();
        let answer = ring(&a, &format!("CA-DOWN{i}")).await;
        assert_eq!(answer["dynamic_variables"]["customer_name"], "Maria");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the webhook waited on redis"
        );
    }
    for i in 0..5 {
        let id = format!("CA-DOWN{i}");
        let r = a.get_admin(&format!("/api/calls/{id}")).await;
        let r = if r.status() == 200 {
            r
        } else {
            // The writer may still be finding out that Redis is gone.
            call_when(&a, &id, |_| true).await;
            a.get_admin(&format!("/api/calls/{id}")).await
        };
        assert_eq!(r.headers()["x-hotline-calls-backend"], "memory");
    }
    let r = a
        .patch_admin("/api/calls/CA-DOWN0", &json!({"state": {"offline": true}}))
        .await;
    assert_eq!(r.status(), 200);
    // A call this instance does not hold may exist in Redis: not 404, but 503.
    assert_error(a.get_admin("/api/calls/CA-UP").await, 503).await;

    redis.restart().await;
    // Back in Redis, where an instance that never saw them finds them.
    let b = spawn_app_on(db, &flags).await;
    for i in 0..5 {
        call_when(&b, &format!("CA-DOWN{i}"), |_| true).await;
    }
    let call = call_when(&b, "CA-DOWN0", |c| c["state"]["offline"] == true).await;
    assert_eq!(call["instance_id"], a_id);
    let r = b.get_admin("/api/calls/CA-DOWN1").await;
    assert_eq!(r.headers()["x-hotline-calls-backend"], "redis");
}

#[tokio::test]
async fn without_redis_calls_live_in_the_instance() {
    let app = spawn_app_on(Arc::new(TestDb::postgres().await), &[]).await;
    fixture(&app).await;
    let mut events = stream(&app, "/api/events", None).await;
    ring(&app, "CA-LOCAL").await;
    let call = call_when(&app, "CA-LOCAL", |_| true).await;
    assert_eq!(call["status"], "active");
    let started = next_of(&mut events, "call.started").await;
    let r = app.get_admin("/api/calls/CA-LOCAL").await;
    assert_eq!(r.headers()["x-hotline-calls-backend"], "memory");
    // Resuming works from what this instance kept.
    post_event(&app, "CA-LOCAL", &json!({"type": "tool.a"})).await;
    let mut resumed = stream(&app, "/api/events", started.id.as_deref()).await;
    assert_eq!(
        resumed.next(WAIT).await.expect("the missed event").name,
        "tool.a"
    );

    // Each stream's clients are counted while they are connected.
    let monitoring = SseClient::connect(&app.url("/api/monitoring/stream")).await;
    let counted = |expected: &'static str| {
        let app = &app;
        async move { app.metrics_text().await.contains(expected) }
    };
    assert!(eventually(WAIT, || counted("hotline_sse_clients{stream=\"events\"} 2")).await);
    assert!(
        eventually(WAIT, || counted(
            "hotline_sse_clients{stream=\"monitoring\"} 1"
        ))
        .await
    );
    drop((events, resumed, monitoring));
    assert!(eventually(WAIT, || counted("hotline_sse_clients{stream=\"events\"} 0")).await);
    assert!(
        eventually(WAIT, || counted(
            "hotline_sse_clients{stream=\"monitoring\"} 0"
        ))
        .await
    );
}

#[tokio::test]
async fn calls_can_be_turned_off() {
    let (a, _b) = pair(&["--calls-enabled", "false"]).await;
    fixture(&a).await;
    let answer = ring(&a, "CA-OFF").await;
    assert_eq!(answer["dynamic_variables"]["customer_name"], "Maria");
    for path in [
        "/api/calls",
        "/api/calls/CA-OFF",
        "/api/calls/CA-OFF/events",
    ] {
        let code = assert_error(a.get_admin(path).await, 503).await;
        assert_eq!(code, "not_configured", "{path}");
    }
    let metrics = a.metrics_text().await;
    assert!(
        metrics.contains("hotline_calls_started_total 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn neither_the_event_stream_nor_the_info_log_names_the_caller() {
    let capture = Capture::default();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(capture.clone())
        .try_init()
        .expect("this test's process has no other subscriber");
    let (a, b) = pair(&[]).await;
    fixture(&a).await;
    let mut all = stream(&b, "/api/events", None).await;
    ring(&a, "CA-PII").await;
    call_when(&a, "CA-PII", |_| true).await;
    a.patch_admin(
        "/api/calls/CA-PII",
        &json!({"state": {"caller_said": "Maria, +16129782029"}}),
    )
    .await;
    post_event(
        &a,
        "CA-PII",
        &json!({"type": "tool.note", "data": {"who": "Maria"}}),
    )
    .await;
    a.post_call_signed(
        &transcription(Some("CA-PII"), "conv_pii"),
        ELEVENLABS_SECRET,
        0,
    )
    .await;
    let mut seen = String::new();
    for kind in ["call.started", "call.updated", "tool.note", "call.ended"] {
        let e = next_of(&mut all, kind).await;
        seen.push_str(&e.data);
        assert_eq!(e.json()["call_id"], "CA-PII");
    }
    for secret in ["6129782029", "Maria"] {
        assert!(
            !seen.contains(secret),
            "/api/events carries {secret}: {seen}"
        );
        let log = capture.text();
        assert!(!log.contains(secret), "the info log carries {secret}");
    }
}

#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() {
    let (a, _b) = pair(&[]).await;
    fixture(&a).await;
    ring(&a, "CA-BAD").await;
    let before = call_when(&a, "CA-BAD", |_| true).await;
    let events_before: Value = a
        .get_admin("/api/calls/CA-BAD/events")
        .await
        .json()
        .await
        .unwrap();

    let big = "x".repeat(17 * 1024);
    let huge_id = "C".repeat(10_000);
    let patches = [
        (json!({"state": []}), 422),
        (json!({"state": "x"}), 422),
        (json!({"state": null}), 422),
        (json!({"state": {"big": big}}), 422),
        (json!({"state": {"nul": "a\u{0}b"}}), 422),
        (json!({"control": "robot"}), 422),
        (json!({"status": "active"}), 422),
        (json!({"status": "failed"}), 422),
        (json!({"ended": true}), 422),
        (json!({"state": {"ok": 1}, "extra": 1}), 422),
        (json!({"state": nested(40)}), 422),
    ];
    for (body, status) in patches {
        let r = a.patch_admin("/api/calls/CA-BAD", &body).await;
        assert_error(r, status).await;
    }
    let r = a
        .admin(a.client.patch(a.url("/api/calls/CA-BAD")))
        .header("Content-Type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_error(r, 400).await;
    let events = [
        json!({"type": "call.fake"}),
        json!({"type": "Bad"}),
        json!({"type": "a b"}),
        json!({"type": 3}),
        json!({}),
        json!({"type": "x".repeat(65)}),
        json!({"type": "ok", "data": [1]}),
        json!({"type": "ok", "data": {"big": big}}),
        json!({"type": "ok", "data": {"k\u{0}": 1}}),
        json!({"type": "ok", "extra": 1}),
    ];
    for body in events {
        let r = post_event(&a, "CA-BAD", &body).await;
        assert_error(r, 422).await;
    }
    // Unknown calls and ids that cannot be calls.
    assert_error(
        a.patch_admin("/api/calls/CA-NONE", &json!({"state": {}}))
            .await,
        404,
    )
    .await;
    assert_error(post_event(&a, "CA-NONE", &json!({"type": "ok"})).await, 404).await;
    assert_error(a.get_admin(&format!("/api/calls/{huge_id}")).await, 404).await;
    assert_error(a.get_admin("/api/calls/CA-NONE/stream").await, 404).await;
    // Bad list queries and a bad Last-Event-ID.
    for q in [
        "?status=gone",
        "?limit=0",
        "?limit=5000",
        "?organization_id=nope",
        "?color=red",
    ] {
        assert_error(a.get_admin(&format!("/api/calls{q}")).await, 422).await;
    }
    let r = a
        .admin(a.client.get(a.url("/api/events")))
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .unwrap();
    assert_error(r, 400).await;
    // Every path wants the admin token.
    for path in [
        "/api/calls",
        "/api/calls/CA-BAD",
        "/api/calls/CA-BAD/events",
        "/api/calls/CA-BAD/stream",
        "/api/events",
    ] {
        let r = a.client.get(a.url(path)).send().await.unwrap();
        assert_error(r, 401).await;
    }
    let r = a
        .client
        .patch(a.url("/api/calls/CA-BAD"))
        .json(&json!({"control": "human"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 401).await;

    // Nothing changed.
    assert_eq!(get_call(&a, "CA-BAD").await.unwrap(), before);
    let events_after: Value = a
        .get_admin("/api/calls/CA-BAD/events")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(events_after, events_before);
    assert_eq!(list(&a, "").await["count"], 1);
}

#[tokio::test]
async fn alerts_travel_on_the_bus() {
    let mut redis = RedisServer::start().await;
    let db = Arc::new(TestDb::postgres().await);
    let mut flags = redis_flags(&redis.url(), &unique_prefix());
    flags.extend(["--alert-redis-down-s", "1", "--alert-hold-s", "0"].map(String::from));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let app = spawn_app_on(db, &flags).await;
    assert!(
        eventually(WAIT, || async {
            let r = app
                .client
                .get(app.url("/api/monitoring/health/redis"))
                .send()
                .await
                .unwrap();
            r.json::<Value>().await.unwrap()["circuit"] == "closed"
        })
        .await
    );
    let mut events = stream(&app, "/api/events", None).await;

    // Redis goes away: the alert fires, and the bus (on this instance alone) says so.
    redis.kill();
    let firing = next_of(&mut events, "alert.firing").await.json();
    assert_eq!(firing["data"]["alert"]["name"], "redis_down", "{firing}");
    assert_eq!(firing["call_id"], Value::Null);
    assert!(firing["instance_id"].is_string());

    // It comes back: resolved, and published through Redis again.
    redis.restart().await;
    let resolved = next_of(&mut events, "alert.resolved").await.json();
    assert_eq!(
        resolved["data"]["alert"]["name"], "redis_down",
        "{resolved}"
    );
}

/// An object nested `depth` levels deep.
fn nested(depth: usize) -> Value {
    (0..depth).fold(json!(1), |inner, _| json!({"x": inner}))
}
