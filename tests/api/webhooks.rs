//! The ElevenLabs webhooks, end to end: conversation initiation (always 200 with every dynamic
//! variable, except for authentication and malformed or oversized bodies) and post-call
//! (HMAC-verified, recorded once, creating the lead of a new caller).

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use reqwest::Response;
use serde_json::{json, Map, Value};
use sqlx::Row;

use crate::support::app::{
    assert_error, sign, spawn_app, spawn_app_on, spawn_app_with, TestApp, ELEVENLABS_SECRET,
    WEBHOOK_SECRET,
};
use crate::support::db::TestDb;

pub const INITIATION: &str = "/webhooks/elevenlabs/conversation-initiation";
pub const POST_CALL: &str = "/webhooks/elevenlabs/post-call";

/// The organization's number (what the caller dialled).
pub const ORG_PHONE: &str = "+16123241623";
/// The known caller.
pub const CALLER: &str = "+16129782029";
/// A caller nobody knows.
const STRANGER: &str = "+16127654321";
/// A number no organization has.
const NOBODYS_NUMBER: &str = "+17633334455";

const AGENT_ID: &str = "agent_8501k9r8sbb5fjbbym8c9y1jqt9b";
pub const CALL_SID: &str = "CA841665fa7c0d67dcbe339174e89be679";

const OLDER_SUMMARY: &str = "Asked about teeth whitening prices";
const LATEST_SUMMARY: &str = "Booked a cleaning for next Tuesday";
/// The latest conversation starts at 03:30 UTC on January 15th: still the 14th in Chicago.
const LATEST_STARTED_AT: &str = "2025-01-15T03:30:00Z";
const LATEST_DATE_IN_CHICAGO: &str = "2025-01-14";

const SOURCES: [&str; 5] = ["l1", "l2", "db", "stale", "default"];

/// The ten variables the contract promises, with their JSON types.
const STRING_VARIABLES: [&str; 8] = [
    "customer_name",
    "lead_id",
    "lead_status",
    "organization_name",
    "last_contact_date",
    "previous_summary",
    "greeting",
    "caller_phone",
];

/// Checks the envelope and that every one of the ten dynamic variables is there with its type
/// (and nothing ElevenLabs reserves); returns the variables.
pub fn assert_initiation_answer(body: &Value) -> Map<String, Value> {
    assert_eq!(
        body["type"], "conversation_initiation_client_data",
        "type: {body}"
    );
    let vars = body["dynamic_variables"]
        .as_object()
        .unwrap_or_else(|| panic!("dynamic_variables is an object: {body}"))
        .clone();
    for name in STRING_VARIABLES {
        assert!(
            vars.get(name).is_some_and(Value::is_string),
            "`{name}` is a string: {body}"
        );
    }
    assert!(
        vars.get("is_returning_customer")
            .is_some_and(Value::is_boolean),
        "`is_returning_customer` is a bool: {body}"
    );
    assert!(
        vars.get("conversation_count")
            .is_some_and(|v| v.is_i64() || v.is_u64()),
        "`conversation_count` is an integer: {body}"
    );
    assert_eq!(vars.len(), 10, "exactly the ten variables: {body}");
    assert!(
        vars.keys().all(|k| !k.starts_with("system__")),
        "no reserved names: {body}"
    );
    assert!(
        !vars["greeting"].as_str().unwrap().trim().is_empty(),
        "the greeting is never empty: {body}"
    );
    let date = vars["last_contact_date"].as_str().unwrap();
    assert!(
        date.is_empty() || chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").is_ok(),
        "last_contact_date is YYYY-MM-DD or empty: {date:?}"
    );
    assert!(
        ["new", "contacted", "qualified", "customer", "lost"]
            .contains(&vars["lead_status"].as_str().unwrap()),
        "lead_status is a status: {body}"
    );
    let count = vars["conversation_count"].as_i64().unwrap();
    assert_eq!(
        vars["is_returning_customer"].as_bool().unwrap(),
        count > 0,
        "a returning customer is one with conversations: {body}"
    );
    vars
}

/// The answer for a caller hotline knows nothing about.
pub fn assert_defaults(vars: &Map<String, Value>, organization_name: &str, caller_phone: &str) {
    let expected = json!({
        "customer_name": "",
        "lead_id": "",
        "lead_status": "new",
        "organization_name": organization_name,
        "is_returning_customer": false,
        "conversation_count": 0,
        "last_contact_date": "",
        "previous_summary": "",
        "caller_phone": caller_phone,
    });
    for (name, value) in expected.as_object().unwrap() {
        assert_eq!(&vars[name], value, "`{name}` in {vars:?}");
    }
}

/// A 200 from the initiation webhook: the checked variables and the `X-Hotline-Source` header.
pub async fn initiation_ok(r: Response) -> (Map<String, Value>, String) {
    let status = r.status();
    let source = r
        .headers()
        .get("x-hotline-source")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = r.text().await.expect("body");
    assert_eq!(status, 200, "{text}");
    assert!(
        SOURCES.contains(&source.as_str()),
        "X-Hotline-Source {source:?} is one of {SOURCES:?}"
    );
    let body: Value = serde_json::from_str(&text).expect("JSON answer");
    assert!(
        body.get("conversation_config_override").is_none(),
        "no override unless configured: {body}"
    );
    (assert_initiation_answer(&body), source)
}

/// The initiation request as ElevenLabs sends it.
pub fn initiation_body(caller_id: &str, called_number: &str) -> Value {
    json!({
        "caller_id": caller_id,
        "agent_id": AGENT_ID,
        "called_number": called_number,
        "call_sid": CALL_SID,
    })
}

/// An organization in Chicago, a named lead calling it, and two conversations on two channels.
pub struct KnownCaller {
    pub org: Value,
    pub lead: Value,
}

impl KnownCaller {
    pub fn org_id(&self) -> &str {
        self.org["id"].as_str().unwrap()
    }

    pub fn lead_id(&self) -> &str {
        self.lead["id"].as_str().unwrap()
    }
}

pub async fn known_caller(app: &TestApp) -> KnownCaller {
    let org = app.create_org("Acme Dental", ORG_PHONE).await;
    let lead = app
        .create_lead(org["id"].as_str().unwrap(), CALLER, Some("Maria Lopez"))
        .await;
    let lead_id = lead["id"].as_str().unwrap();
    for (channel, started_at, summary) in [
        ("voice", "2025-01-10T15:00:00Z", OLDER_SUMMARY),
        ("sms", LATEST_STARTED_AT, LATEST_SUMMARY),
    ] {
        let r = app
            .post_admin(
                &format!("/api/leads/{lead_id}/conversations"),
                &json!({"channel": channel, "started_at": started_at, "summary": summary}),
            )
            .await;
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }
    KnownCaller { org, lead }
}

fn assert_known(vars: &Map<String, Value>, known: &KnownCaller) {
    assert_eq!(vars["customer_name"], "Maria Lopez");
    assert_eq!(vars["lead_id"], known.lead_id());
    assert_eq!(vars["lead_status"], "qualified");
    assert_eq!(vars["organization_name"], "Acme Dental");
    assert_eq!(vars["is_returning_customer"], true);
    assert_eq!(vars["conversation_count"], 2);
    assert_eq!(vars["last_contact_date"], LATEST_DATE_IN_CHICAGO);
    let summary = vars["previous_summary"].as_str().unwrap();
    assert!(summary.contains(LATEST_SUMMARY), "{summary}");
    let greeting = vars["greeting"].as_str().unwrap();
    assert!(
        greeting.contains("Maria"),
        "greeted by first name: {greeting}"
    );
    assert_eq!(vars["caller_phone"], CALLER);
}

// Conversation initiation: who calls

#[tokio::test]
async fn known_caller_gets_every_variable_from_the_database() {
    let app = spawn_app().await;
    let known = known_caller(&app).await;

    let (vars, source) =
        initiation_ok(app.initiate(&initiation_body(CALLER, ORG_PHONE)).await).await;

    assert_known(&vars, &known);
    assert_eq!(source, "db");
}

#[tokio::test]
async fn known_caller_is_recognised_in_human_formats() {
    let app = spawn_app().await;
    let known = known_caller(&app).await;

    for (caller_id, called_number) in [
        ("+1 (612) 978-2029", ORG_PHONE),
        ("(612) 978-2029", ORG_PHONE),
        ("612.978.2029", ORG_PHONE),
        ("1-612-978-2029", ORG_PHONE),
        ("sip:+16129782029@trunk.example.com;user=phone", ORG_PHONE),
        (CALLER, "+1 (612) 324-1623"),
        ("612 978 2029", "612-324-1623"),
    ] {
        let (vars, _) = initiation_ok(
            app.initiate(&initiation_body(caller_id, called_number))
                .await,
        )
        .await;
        assert_eq!(
            vars["lead_id"],
            known.lead_id(),
            "{caller_id} -> {called_number}"
        );
        assert_eq!(vars["caller_phone"], CALLER, "{caller_id}");
        assert_eq!(vars["customer_name"], "Maria Lopez", "{caller_id}");
        assert_eq!(vars["conversation_count"], 2, "{caller_id}");
    }
}

#[tokio::test]
async fn unknown_caller_of_a_known_organization_gets_defaults() {
    let app = spawn_app().await;
    known_caller(&app).await;

    let (vars, source) =
        initiation_ok(app.initiate(&initiation_body(STRANGER, ORG_PHONE)).await).await;

    assert_defaults(&vars, "Acme Dental", STRANGER);
    let greeting = vars["greeting"].as_str().unwrap();
    assert!(!greeting.contains("Maria"), "{greeting}");
    assert!(greeting.contains("Acme Dental"), "{greeting}");
    assert_ne!(source, "default", "every lookup succeeded");
}

#[tokio::test]
async fn withheld_or_ill_typed_caller_ids_are_unknown_callers() {
    let app = spawn_app().await;
    known_caller(&app).await;

    let mut bodies: Vec<Value> = ["Anonymous", "Restricted", "anonymous", "", "   ", "unknown"]
        .iter()
        .map(|id| initiation_body(id, ORG_PHONE))
        .collect();
    let mut missing = initiation_body("", ORG_PHONE);
    missing.as_object_mut().unwrap().remove("caller_id");
    bodies.push(missing);
    for wrong in [
        json!(16129782029_u64),
        json!({"number": CALLER}),
        json!([CALLER]),
        json!(null),
        json!(true),
    ] {
        let mut body = initiation_body("", ORG_PHONE);
        body["caller_id"] = wrong;
        bodies.push(body);
    }

    for body in bodies {
        let (vars, _) = initiation_ok(app.initiate(&body).await).await;
        assert_defaults(&vars, "Acme Dental", "");
        let greeting = vars["greeting"].as_str().unwrap();
        assert!(!greeting.contains("Maria"), "{body}: {greeting}");
    }
}

#[tokio::test]
async fn unknown_organization_gets_defaults_without_a_name() {
    let app = spawn_app().await;
    known_caller(&app).await;

    let (vars, _) =
        initiation_ok(app.initiate(&initiation_body(CALLER, NOBODYS_NUMBER)).await).await;
    assert_defaults(&vars, "", CALLER);

    // No called number at all, or one of the wrong type, is no organization either.
    let mut body = initiation_body(CALLER, "");
    body.as_object_mut().unwrap().remove("called_number");
    let (vars, _) = initiation_ok(app.initiate(&body).await).await;
    assert_defaults(&vars, "", CALLER);
    body["called_number"] = json!(16123241623_u64);
    let (vars, _) = initiation_ok(app.initiate(&body).await).await;
    assert_defaults(&vars, "", CALLER);

    // An empty object is a call too.
    let (vars, _) = initiation_ok(app.initiate(&json!({})).await).await;
    assert_defaults(&vars, "", "");
}

#[tokio::test]
async fn extra_and_optional_fields_are_accepted() {
    let app = spawn_app().await;
    let known = known_caller(&app).await;
    let mut body = initiation_body(CALLER, ORG_PHONE);
    body["conversation_id"] = json!("conv_01jxyz");
    body["something_new"] = json!({"nested": [1, 2, 3]});
    let (vars, _) = initiation_ok(app.initiate(&body).await).await;
    assert_known(&vars, &known);
}

#[tokio::test]
async fn initiation_answers_with_every_variable_when_a_query_fails() {
    let app = spawn_app().await;
    known_caller(&app).await;
    // The organization and the lead are still found, the conversations no longer.
    let mut conn = app.db.pg_connection().await;
    sqlx::query("drop table conversations")
        .execute(&mut conn)
        .await
        .unwrap();

    let (vars, source) =
        initiation_ok(app.initiate(&initiation_body(CALLER, ORG_PHONE)).await).await;
    assert_eq!(source, "default", "a failed lookup is not fresh data");
    assert_eq!(vars["caller_phone"], CALLER);
    assert_eq!(vars["organization_name"], "Acme Dental");
    let (vars, _) = initiation_ok(app.initiate(&initiation_body(STRANGER, ORG_PHONE)).await).await;
    assert_defaults(&vars, "Acme Dental", STRANGER);
}

// Conversation initiation: authentication and bodies

async fn initiate_with(
    app: &TestApp,
    authorization: Option<&str>,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> Response {
    let mut request = app.client.post(app.url(INITIATION)).body(body);
    if let Some(value) = authorization {
        request = request.header("Authorization", value);
    }
    if let Some(value) = content_type {
        request = request.header("Content-Type", value);
    }
    request.send().await.expect("request")
}

#[tokio::test]
async fn initiation_needs_the_webhook_secret() {
    let app = spawn_app().await;
    known_caller(&app).await;
    let body = initiation_body(CALLER, ORG_PHONE).to_string();
    let json = Some("application/json");

    for authorization in [
        None,
        Some("Bearer wrong-secret-0123456789".to_string()),
        Some(format!("Bearer {WEBHOOK_SECRET}x")),
        Some(format!("Basic {WEBHOOK_SECRET}")),
        Some(WEBHOOK_SECRET.to_string()),
        Some("Bearer".to_string()),
        Some(String::new()),
    ] {
        let r = initiate_with(&app, authorization.as_deref(), json, body.clone()).await;
        assert_eq!(
            assert_error(r, 401).await,
            "unauthorized",
            "{authorization:?}"
        );
    }
    // The right secret under the admin token's name is still wrong.
    let r = initiate_with(
        &app,
        Some(&format!("Bearer {}", crate::support::app::ADMIN_TOKEN)),
        json,
        body.clone(),
    )
    .await;
    assert_error(r, 401).await;

    let r = initiate_with(
        &app,
        Some(&format!("Bearer {WEBHOOK_SECRET}")),
        json,
        body.clone(),
    )
    .await;
    initiation_ok(r).await;
}

#[tokio::test]
async fn initiation_bodies_that_are_not_json_objects_are_400() {
    let app = spawn_app().await;
    let auth = format!("Bearer {WEBHOOK_SECRET}");
    let json = Some("application/json");
    for body in [
        "not json",
        "[]",
        "[{\"caller_id\": \"+16129782029\"}]",
        "42",
        "\"x\"",
        "null",
        "",
        "{",
    ] {
        let r = initiate_with(&app, Some(&auth), json, body).await;
        assert_eq!(assert_error(r, 400).await, "malformed_request", "{body:?}");
    }
}

#[tokio::test]
async fn initiation_body_is_json_whatever_its_content_type() {
    let app = spawn_app().await;
    let known = known_caller(&app).await;
    let auth = format!("Bearer {WEBHOOK_SECRET}");
    let body = initiation_body(CALLER, ORG_PHONE).to_string();
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/json; charset=utf-8"),
        Some("nonsense"),
    ] {
        let r = initiate_with(&app, Some(&auth), content_type, body.clone()).await;
        let (vars, _) = initiation_ok(r).await;
        assert_known(&vars, &known);
    }
}

/// A valid initiation body padded with an ignored field up to about `size` bytes.
fn padded_body(size: usize) -> String {
    let mut body = initiation_body(CALLER, ORG_PHONE);
    let base = body.to_string().len() + r#","padding":"""#.len();
    body["padding"] = json!("x".repeat(size.saturating_sub(base)));
    let text = body.to_string();
    assert_eq!(text.len(), size.max(base));
    text
}

#[tokio::test]
async fn initiation_bodies_over_64_kib_are_413() {
    let app = spawn_app().await;
    let known = known_caller(&app).await;
    let auth = format!("Bearer {WEBHOOK_SECRET}");
    let json = Some("application/json");

    // Under the limit, padding and all: answered.
    let r = initiate_with(&app, Some(&auth), json, padded_body(60 * 1024)).await;
    let (vars, _) = initiation_ok(r).await;
    assert_known(&vars, &known);
    let r = initiate_with(&app, Some(&auth), json, padded_body(64 * 1024)).await;
    initiation_ok(r).await;

    // Over it: refused, however large, and the client can read the refusal.
    for size in [64 * 1024 + 1, 70 * 1024, 4 * 1024 * 1024] {
        let r = initiate_with(&app, Some(&auth), json, padded_body(size)).await;
        assert_eq!(
            assert_error(r, 413).await,
            "payload_too_large",
            "{size} bytes"
        );
    }

    // Its message is a sentence, as every other error's is.
    let r = initiate_with(&app, Some(&auth), json, padded_body(70 * 1024)).await;
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["error"]["message"],
        "The request body is larger than 65536 bytes."
    );

    // The service still answers afterwards, on a fresh request.
    let (vars, _) = initiation_ok(app.initiate(&initiation_body(CALLER, ORG_PHONE)).await).await;
    assert_known(&vars, &known);
}

#[tokio::test]
async fn initiation_bodies_over_64_kib_are_413_without_content_length() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let app = spawn_app().await;
    // A chunked body declares no length: the limit must hold while reading.
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let head = format!(
        "POST {INITIATION} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {WEBHOOK_SECRET}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let body = padded_body(100 * 1024);
    let mut sent = 0;
    for chunk in body.as_bytes().chunks(8 * 1024) {
        // The server may answer and stop reading once the limit is passed.
        if stream
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .is_err()
            || stream.write_all(chunk).await.is_err()
            || stream.write_all(b"\r\n").await.is_err()
        {
            break;
        }
        sent += chunk.len();
    }
    if sent == body.len() {
        let _ = stream.write_all(b"0\r\n\r\n").await;
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "a chunked body over the limit is 413: {answer}"
    );
    assert!(answer.contains("payload_too_large"), "{answer}");
}

// Conversation initiation: configuration

#[tokio::test]
async fn first_message_override_is_the_greeting_when_configured() {
    let app = spawn_app_on(
        Arc::new(TestDb::postgres().await),
        &["--override-first-message", "true"],
    )
    .await;
    let known = known_caller(&app).await;

    for body in [
        initiation_body(CALLER, ORG_PHONE),
        initiation_body("Anonymous", ORG_PHONE),
        initiation_body(CALLER, NOBODYS_NUMBER),
    ] {
        let r = app.initiate(&body).await;
        assert_eq!(r.status(), 200);
        let answer: Value = r.json().await.unwrap();
        let vars = assert_initiation_answer(&answer);
        assert_eq!(
            answer["conversation_config_override"],
            json!({"agent": {"first_message": vars["greeting"]}}),
            "only the first message, never empty fields: {answer}"
        );
        if body["caller_id"] == CALLER && body["called_number"] == ORG_PHONE {
            assert_known(&vars, &known);
        }
    }
}

#[tokio::test]
async fn a_tiny_deadline_still_answers_with_every_variable() {
    let app = spawn_app_on(
        Arc::new(TestDb::postgres().await),
        &["--webhook-deadline-ms", "1"],
    )
    .await;
    let known = known_caller(&app).await;

    for _ in 0..5 {
        let r = app.initiate(&initiation_body(CALLER, ORG_PHONE)).await;
        let (vars, source) = initiation_ok(r).await;
        assert_eq!(vars["caller_phone"], CALLER);
        if source != "default" {
            // Whatever the lookups found in time, they found correctly.
            assert_known(&vars, &known);
        }
    }
}

// Post-call

/// A `post_call_transcription` event as ElevenLabs sends it.
struct Transcription<'a> {
    conversation_id: &'a str,
    agent_number: &'a str,
    external_number: &'a str,
    /// What hotline answered at the start of the call, echoed back.
    lead_id: Option<&'a str>,
    summary: &'a str,
    start_unix: i64,
    duration_s: i64,
}

impl<'a> Transcription<'a> {
    fn new(conversation_id: &'a str, external_number: &'a str) -> Transcription<'a> {
        Transcription {
            conversation_id,
            agent_number: ORG_PHONE,
            external_number,
            lead_id: None,
            summary: "The caller booked a cleaning for Tuesday at 9am.",
            start_unix: 1_763_800_000,
            duration_s: 95,
        }
    }

    fn value(&self) -> Value {
        let now = Utc::now().timestamp();
        json!({
            "type": "post_call_transcription",
            "event_timestamp": now,
            "data": {
                "agent_id": AGENT_ID,
                "conversation_id": self.conversation_id,
                "status": "done",
                "user_id": null,
                "transcript": [
                    {"role": "agent", "message": "Good morning! Thanks for calling Acme Dental. How can I help you today?",
                     "time_in_call_secs": 0, "tool_calls": null, "tool_results": null, "feedback": null},
                    {"role": "user", "message": "Hi, I'd like to book a cleaning.",
                     "time_in_call_secs": 4, "tool_calls": null, "tool_results": null, "feedback": null},
                    {"role": "agent", "message": "Sure. Does Tuesday at 9am work for you?",
                     "time_in_call_secs": 7, "tool_calls": null, "tool_results": null, "feedback": null},
                    {"role": "user", "message": "Perfect, thanks.",
                     "time_in_call_secs": 12, "tool_calls": null, "tool_results": null, "feedback": null}
                ],
                "metadata": {
                    "start_time_unix_secs": self.start_unix,
                    "call_duration_secs": self.duration_s,
                    "cost": 412,
                    "termination_reason": "Call ended by remote party",
                    "phone_call": {
                        "direction": "inbound",
                        "phone_number_id": "phnum_01jxyz",
                        "agent_number": self.agent_number,
                        "external_number": self.external_number,
                        "type": "twilio",
                        "call_sid": CALL_SID
                    }
                },
                "analysis": {
                    "call_successful": "success",
                    "transcript_summary": self.summary,
                    "evaluation_criteria_results": {},
                    "data_collection_results": {}
                },
                "conversation_initiation_client_data": {
                    "conversation_config_override": {},
                    "dynamic_variables": {
                        "customer_name": "",
                        "lead_id": self.lead_id.unwrap_or(""),
                        "lead_status": "new",
                        "organization_name": "Acme Dental",
                        "is_returning_customer": false,
                        "conversation_count": 0,
                        "last_contact_date": "",
                        "previous_summary": "",
                        "greeting": "Good morning, thank you for calling Acme Dental! How can I help you today?",
                        "caller_phone": self.external_number,
                        "system__caller_id": self.external_number,
                        "system__called_number": self.agent_number,
                        "system__call_sid": CALL_SID,
                        "system__conversation_id": self.conversation_id,
                        "system__agent_id": AGENT_ID
                    }
                }
            }
        })
    }

    fn body(&self) -> String {
        self.value().to_string()
    }

    fn started_at(&self) -> DateTime<Utc> {
        Utc.timestamp_opt(self.start_unix, 0).unwrap()
    }
}

async fn post_call_with(app: &TestApp, signature: Option<&str>, body: &str) -> Response {
    let mut request = app
        .client
        .post(app.url(POST_CALL))
        .header("Content-Type", "application/json")
        .body(body.to_string());
    if let Some(signature) = signature {
        request = request.header("ElevenLabs-Signature", signature);
    }
    request.send().await.expect("request")
}

async fn post_call_ok(app: &TestApp, body: &str) -> Value {
    let r = app.post_call_signed(body, ELEVENLABS_SECRET, 0).await;
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

async fn conversations_of(app: &TestApp, lead_id: &str) -> Vec<Value> {
    let r = app
        .get_admin(&format!("/api/leads/{lead_id}/conversations?limit=100"))
        .await;
    assert_eq!(r.status(), 200);
    let page: Value = r.json().await.unwrap();
    page["items"].as_array().unwrap().clone()
}

async fn find_lead(app: &TestApp, org_id: &str, phone: &str) -> Response {
    app.admin(app.client.get(app.url("/api/leads")))
        .query(&[("organization_id", org_id), ("phone", phone)])
        .send()
        .await
        .expect("request")
}

/// Row counts of the three tables, read around the service.
async fn table_counts(app: &TestApp) -> (i64, i64, i64) {
    let mut conn = app.db.pg_connection().await;
    let row = sqlx::query(
        "select (select count(*) from organizations) as o, (select count(*) from leads) as l, \
         (select count(*) from conversations) as c",
    )
    .fetch_one(&mut conn)
    .await
    .expect("counts");
    (row.get("o"), row.get("l"), row.get("c"))
}

fn parse_time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("a timestamp: {v}")))
        .unwrap()
        .with_timezone(&Utc)
}

#[tokio::test]
async fn post_call_refuses_missing_wrong_old_and_tampered_signatures() {
    let app = spawn_app().await;
    let known = known_caller(&app).await;
    let event = Transcription::new("conv_sig", CALLER);
    let body = event.body();
    let now = Utc::now().timestamp();

    let r = post_call_with(&app, None, &body).await;
    assert_eq!(assert_error(r, 401).await, "unauthorized");
    let r = app
        .post_call_signed(&body, "another-secret-0123456789", 0)
        .await;
    assert_error(r, 401).await;
    // 31 minutes old, or 31 minutes ahead.
    let r = app
        .post_call_signed(&body, ELEVENLABS_SECRET, 31 * 60)
        .await;
    assert_error(r, 401).await;
    let r = app
        .post_call_signed(&body, ELEVENLABS_SECRET, -31 * 60)
        .await;
    assert_error(r, 401).await;
    // Signed, then changed on the way.
    let signature = sign(&body, ELEVENLABS_SECRET, now);
    let tampered = body.replace("booked a cleaning", "cancelled everything");
    assert_ne!(tampered, body);
    let r = post_call_with(&app, Some(&signature), &tampered).await;
    assert_error(r, 401).await;
    // A signature whose timestamp was changed after signing.
    let moved = signature.replacen(&format!("t={now}"), &format!("t={}", now - 1), 1);
    let r = post_call_with(&app, Some(&moved), &body).await;
    assert_error(r, 401).await;
    // Headers that are not signatures.
    for header in [
        "",
        "garbage",
        "v0=abcd",
        &format!("t={now}"),
        &format!("t={now},v0=not-hex"),
        &format!("t=yesterday,v0={}", "ab".repeat(32)),
        &format!("Bearer {ELEVENLABS_SECRET}"),
    ] {
        let r = post_call_with(&app, Some(header), &body).await;
        assert_error(r, 401).await;
    }

    assert!(conversations_of(&app, known.lead_id()).await.len() == 2);
    assert_eq!(table_counts(&app).await, (1, 1, 2), "nothing was stored");

    // Within the tolerance (29 minutes old) the same event is accepted.
    let r = app
        .post_call_signed(&body, ELEVENLABS_SECRET, 29 * 60)
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(conversations_of(&app, known.lead_id()).await.len(), 3);
}

#[tokio::test]
async fn post_call_records_the_conversation_once() {
    let app = spawn_app().await;
    let known = known_caller(&app).await;
    let mut event = Transcription::new("conv_01jrecord", CALLER);
    event.lead_id = Some(known.lead_id());
    let body = event.body();

    post_call_ok(&app, &body).await;

    let conversations = conversations_of(&app, known.lead_id()).await;
    assert_eq!(conversations.len(), 3);
    let recorded: Vec<&Value> = conversations
        .iter()
        .filter(|c| c["external_id"] == "conv_01jrecord")
        .collect();
    assert_eq!(recorded.len(), 1, "{conversations:?}");
    let c = recorded[0];
    assert_eq!(c["channel"], "voice");
    assert_eq!(c["lead_id"], known.lead_id());
    assert_eq!(c["organization_id"], known.org_id());
    assert_eq!(c["summary"], event.summary);
    assert_eq!(parse_time(&c["started_at"]), event.started_at());
    assert_eq!(
        parse_time(&c["ended_at"]),
        event.started_at() + chrono::Duration::seconds(event.duration_s)
    );
    let transcript = c["transcript"].as_array().expect("transcript kept");
    assert_eq!(transcript.len(), 4);
    assert_eq!(transcript[1]["role"], "user");
    assert_eq!(transcript[1]["message"], "Hi, I'd like to book a cleaning.");

    // The same event again (a replay, or delivered twice): acknowledged, stored once.
    post_call_ok(&app, &body).await;
    // Signed at another moment, still the same conversation.
    let r = app.post_call_signed(&body, ELEVENLABS_SECRET, 60).await;
    assert_eq!(r.status(), 200);
    assert_eq!(conversations_of(&app, known.lead_id()).await.len(), 3);
    assert_eq!(table_counts(&app).await, (1, 1, 3));
    assert_eq!(post_call_events(&app, "recorded").await, 1.0);
    assert_eq!(post_call_events(&app, "duplicate").await, 2.0);

    // The next call sees it: it is now the latest conversation.
    let (vars, _) = initiation_ok(app.initiate(&initiation_body(CALLER, ORG_PHONE)).await).await;
    assert_eq!(vars["conversation_count"], 3);
    let summary = vars["previous_summary"].as_str().unwrap();
    assert!(summary.contains(event.summary), "{summary}");
}

#[tokio::test]
async fn post_call_from_a_new_caller_creates_the_lead() {
    let app = spawn_app().await;
    let known = known_caller(&app).await;

    let (vars, _) = initiation_ok(app.initiate(&initiation_body(STRANGER, ORG_PHONE)).await).await;
    assert_defaults(&vars, "Acme Dental", STRANGER);
    let r = find_lead(&app, known.org_id(), STRANGER).await;
    assert_error(r, 404).await;

    // The caller's number as a SIP trunk might write it.
    let event = Transcription::new("conv_01jnewcaller", "+1 (612) 765-4321");
    post_call_ok(&app, &event.body()).await;

    let r = find_lead(&app, known.org_id(), STRANGER).await;
    assert_eq!(r.status(), 200);
    let lead: Value = r.json().await.unwrap();
    assert_eq!(lead["phone_number"], STRANGER);
    assert_eq!(lead["organization_id"], known.org_id());
    assert_eq!(lead["status"], "new");
    let conversations = conversations_of(&app, lead["id"].as_str().unwrap()).await;
    assert_eq!(conversations.len(), 1);
    assert_eq!(conversations[0]["external_id"], "conv_01jnewcaller");

    // Calling again, the caller is a returning one.
    let (vars, source) =
        initiation_ok(app.initiate(&initiation_body(STRANGER, ORG_PHONE)).await).await;
    assert_ne!(source, "default");
    assert_eq!(vars["lead_id"], lead["id"]);
    assert_eq!(vars["is_returning_customer"], true);
    assert_eq!(vars["conversation_count"], 1);
    assert_eq!(vars["customer_name"], "");
    assert_eq!(vars["lead_status"], "new");
    assert_eq!(vars["caller_phone"], STRANGER);
    let expected_date = event
        .started_at()
        .with_timezone(&chrono_tz::America::Chicago)
        .format("%Y-%m-%d")
        .to_string();
    assert_eq!(vars["last_contact_date"], expected_date.as_str());
    let summary = vars["previous_summary"].as_str().unwrap();
    assert!(summary.contains(event.summary), "{summary}");

    // The known caller's history did not move.
    assert_eq!(conversations_of(&app, known.lead_id()).await.len(), 2);
}

#[tokio::test]
async fn post_call_prefers_the_echoed_lead_id_over_the_numbers() {
    let app = spawn_app().await;
    let known = known_caller(&app).await;
    let other = app
        .create_lead(known.org_id(), STRANGER, Some("Otto Other"))
        .await;
    let other_id = other["id"].as_str().unwrap();

    // The numbers say "the other lead", the echoed variables say "Maria": Maria wins.
    let mut event = Transcription::new("conv_echoed", STRANGER);
    event.lead_id = Some(known.lead_id());
    post_call_ok(&app, &event.body()).await;
    assert_eq!(conversations_of(&app, known.lead_id()).await.len(), 3);
    assert_eq!(conversations_of(&app, other_id).await.len(), 0);

    // An echoed lead that no longer exists, or is no id at all, falls back to the numbers.
    let missing = uuid::Uuid::new_v4().to_string();
    for (conversation_id, lead_id) in [
        ("conv_gone", missing.as_str()),
        ("conv_garbage", "not-a-uuid"),
    ] {
        let mut event = Transcription::new(conversation_id, STRANGER);
        event.lead_id = Some(lead_id);
        post_call_ok(&app, &event.body()).await;
    }
    let others = conversations_of(&app, other_id).await;
    assert_eq!(others.len(), 2, "{others:?}");
    assert_eq!(table_counts(&app).await, (1, 2, 5));
}

#[tokio::test]
async fn post_call_for_an_unknown_organization_is_acknowledged_not_stored() {
    let app = spawn_app().await;
    known_caller(&app).await;
    let before = table_counts(&app).await;

    let mut event = Transcription::new("conv_nobody", CALLER);
    event.agent_number = NOBODYS_NUMBER;
    post_call_ok(&app, &event.body()).await;
    // No agent number at all.
    event.agent_number = "";
    event.conversation_id = "conv_nobody_2";
    post_call_ok(&app, &event.body()).await;
    // A withheld caller of a known organization: no caller to attach it to.
    let event = Transcription::new("conv_withheld", "Anonymous");
    post_call_ok(&app, &event.body()).await;

    assert_eq!(table_counts(&app).await, before, "nothing was stored");
    // ...but counted, so that an operator sees events that went nowhere.
    assert_eq!(post_call_events(&app, "unmatched").await, 3.0);
    assert_eq!(post_call_events(&app, "recorded").await, 0.0);
}

/// `hotline_post_call_events_total{outcome}` from `/metrics`.
async fn post_call_events(app: &TestApp, outcome: &str) -> f64 {
    let text = app.metrics_text().await;
    let series = format!("hotline_post_call_events_total{{outcome=\"{outcome}\"}} ");
    let line = text
        .lines()
        .find(|l| l.starts_with(&series))
        .unwrap_or_else(|| panic!("{series} is exported:\n{text}"));
    line[series.len()..].trim().parse().expect("a number")
}

/// A base64 string of about `len` bytes (not real MP3, but the shape of one).
fn base64_blob(len: usize) -> String {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s: String = (0..len)
        .map(|i| alphabet[(i * 7 + i / 64) % 64] as char)
        .collect();
    s.truncate(len - len % 4);
    s
}

#[tokio::test]
async fn other_post_call_events_are_acknowledged_and_ignored() {
    let app = spawn_app().await;
    let known = known_caller(&app).await;
    let before = table_counts(&app).await;
    let now = Utc::now().timestamp();

    let audio = json!({
        "type": "post_call_audio",
        "event_timestamp": now,
        "data": {
            "agent_id": AGENT_ID,
            "conversation_id": "conv_audio",
            "full_audio": base64_blob(1024 * 1024),
        }
    })
    .to_string();
    assert!(audio.len() > 1024 * 1024);
    post_call_ok(&app, &audio).await;

    let failure = json!({
        "type": "call_initiation_failure",
        "event_timestamp": now,
        "data": {
            "agent_id": AGENT_ID,
            "conversation_id": "conv_failed",
            "failure_reason": "busy",
            "metadata": {
                "type": "twilio",
                "body": {"From": CALLER, "To": ORG_PHONE, "CallSid": CALL_SID, "CallStatus": "busy"}
            }
        }
    })
    .to_string();
    post_call_ok(&app, &failure).await;

    // An event type from the future.
    let unknown =
        json!({"type": "post_call_something_new", "event_timestamp": now, "data": {}}).to_string();
    post_call_ok(&app, &unknown).await;

    assert_eq!(table_counts(&app).await, before);
    assert_eq!(conversations_of(&app, known.lead_id()).await.len(), 2);
}

#[tokio::test]
async fn post_call_audio_larger_than_the_body_limit_is_acknowledged() {
    let app = spawn_app().await;
    known_caller(&app).await;
    let before = table_counts(&app).await;
    let now = Utc::now().timestamp();
    let audio = base64_blob(17 * 1024 * 1024);
    let data = format!(
        r#"{{"agent_id":"{AGENT_ID}","conversation_id":"conv_big_audio","full_audio":"{audio}"}}"#
    );
    // JSON keys have no order: `type` may come first (as documented) or after `data`.
    let type_first =
        format!(r#"{{"type":"post_call_audio","event_timestamp":{now},"data":{data}}}"#);
    let type_last =
        format!(r#"{{"data":{data},"event_timestamp":{now},"type":"post_call_audio"}}"#);
    for body in [&type_first, &type_last] {
        assert!(body.len() > 16 * 1024 * 1024);
        let answer = post_call_ok(&app, body).await;
        assert_eq!(answer["status"], "ignored", "{answer}");
    }
    assert_eq!(table_counts(&app).await, before);

    // Still signed: a large body with a bad signature is refused, not acknowledged.
    let r = app
        .post_call_signed(&type_first, "another-secret-0123456789", 0)
        .await;
    assert_error(r, 401).await;
}

#[tokio::test]
async fn post_call_without_a_configured_secret_is_503() {
    let app = spawn_app_with(Arc::new(TestDb::postgres().await), &[], |args| {
        args.elevenlabs_webhook_secret = None;
    })
    .await;
    known_caller(&app).await;
    let body = Transcription::new("conv_unconfigured", CALLER).body();

    let r = app.post_call_signed(&body, ELEVENLABS_SECRET, 0).await;
    assert_eq!(assert_error(r, 503).await, "not_configured");
    let r = post_call_with(&app, None, &body).await;
    assert_eq!(assert_error(r, 503).await, "not_configured");
    assert_eq!(table_counts(&app).await, (1, 1, 2));

    // The initiation webhook does not depend on it.
    initiation_ok(app.initiate(&initiation_body(CALLER, ORG_PHONE)).await).await;
}

#[tokio::test]
async fn post_call_transcriptions_with_odd_shapes_never_fail_the_server() {
    let app = spawn_app().await;
    let known = known_caller(&app).await;
    let before = table_counts(&app).await;

    for body in [
        "not json".to_string(),
        "[]".to_string(),
        json!({"type": "post_call_transcription"}).to_string(),
        json!({"type": "post_call_transcription", "data": []}).to_string(),
        json!({"type": "post_call_transcription", "data": {}}).to_string(),
        json!({"type": "post_call_transcription", "data": {"conversation_id": 5}}).to_string(),
        json!({"type": 42, "data": {}}).to_string(),
    ] {
        let r = app.post_call_signed(&body, ELEVENLABS_SECRET, 0).await;
        let status = r.status().as_u16();
        assert!(
            status == 200 || (400..500).contains(&status),
            "{body}: {status}"
        );
        if status != 200 {
            assert_error(r, status).await;
        }
    }
    assert_eq!(table_counts(&app).await, before);

    // Missing metadata and analysis: recorded through the echoed lead, without a summary.
    let body = json!({
        "type": "post_call_transcription",
        "event_timestamp": Utc::now().timestamp(),
        "data": {
            "conversation_id": "conv_bare",
            "transcript": "not a list",
            "metadata": {"start_time_unix_secs": "soon", "call_duration_secs": -5},
            "conversation_initiation_client_data": {"dynamic_variables": {"lead_id": known.lead_id()}}
        }
    })
    .to_string();
    post_call_ok(&app, &body).await;
    let conversations = conversations_of(&app, known.lead_id()).await;
    let bare = conversations
        .iter()
        .find(|c| c["external_id"] == "conv_bare")
        .expect("recorded");
    assert_eq!(bare["summary"], Value::Null);
    assert_eq!(bare["ended_at"], Value::Null);
    assert_eq!(bare["transcript"], Value::Null);
}
