//! Personal data never reaches the `info` log: a test run's whole log, captured, holds request
//! lines with route templates but no caller's phone number, name or email.
//!
//! The capture is a global subscriber, so this module has one test: nextest runs each test in a
//! process of its own (`cargo nextest run`), and under `cargo test` the capture only sees more.

use chrono::Utc;
use serde_json::{json, Value};

use crate::support::app::{spawn_app, ELEVENLABS_SECRET};
use crate::support::capture::Capture;

const NAME: &str = "Zebulon Quixote";
const EMAIL: &str = "zebulon.quixote@example.com";
const SUMMARY: &str = "Zebulon wants a crown replacement on the upper left molar";
/// The caller, in the forms a log might show it.
const CALLER_E164: &str = "+16129782029";
const CALLER_FORMS: [&str; 5] = [
    "6129782029",
    "612-978-2029",
    "(612) 978-2029",
    "612 978 2029",
    "612.978.2029",
];
const ORG_PHONE: &str = "+16123241623";
const NEW_CALLER: &str = "+16127654321";

#[tokio::test]
async fn the_info_log_carries_routes_but_no_personal_data() {
    let capture = Capture::default();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(capture.clone())
        .try_init()
        .expect("this test's process has no other subscriber");

    let app = spawn_app().await;
    let org = app.create_org("Acme Dental", ORG_PHONE).await;
    let org_id = org["id"].as_str().unwrap();
    let r = app
        .post_admin(
            "/api/leads",
            &json!({"organization_id": org_id, "phone_number": "(612) 978-2029",
                    "customer_name": NAME, "email": EMAIL, "notes": "Nervous about needles"}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let lead: Value = r.json().await.unwrap();
    let lead_id = lead["id"].as_str().unwrap();
    let r = app
        .post_admin(
            &format!("/api/leads/{lead_id}/conversations"),
            &json!({"channel": "sms", "summary": SUMMARY}),
        )
        .await;
    assert_eq!(r.status(), 201);

    // Reads, including a lookup by phone number in the query string.
    for path in [
        format!("/api/leads/{lead_id}"),
        format!("/api/leads/{lead_id}/context"),
        format!("/api/leads/{lead_id}/summary"),
        format!("/api/leads/{lead_id}/greeting?channel=email"),
        format!("/api/leads?organization_id={org_id}&phone=%2B16129782029"),
        format!("/api/leads?organization_id={org_id}&phone=(612)%20978-2029"),
    ] {
        assert_eq!(app.get_admin(&path).await.status(), 200, "{path}");
    }

    // The call: initiation, then post-call for this caller and for a new one.
    let r = app
        .initiate(
            &json!({"caller_id": CALLER_E164, "called_number": ORG_PHONE,
                          "agent_id": "agent_1", "call_sid": "CA1"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["dynamic_variables"]["customer_name"], NAME);
    for (conversation_id, caller) in [("conv_log_1", CALLER_E164), ("conv_log_2", NEW_CALLER)] {
        let event = json!({
            "type": "post_call_transcription",
            "event_timestamp": Utc::now().timestamp(),
            "data": {
                "agent_id": "agent_1",
                "conversation_id": conversation_id,
                "status": "done",
                "transcript": [{"role": "user", "message": format!("This is {NAME}, my email is {EMAIL}"), "time_in_call_secs": 1}],
                "metadata": {"start_time_unix_secs": Utc::now().timestamp() - 60, "call_duration_secs": 30,
                             "phone_call": {"direction": "inbound", "agent_number": ORG_PHONE,
                                            "external_number": caller, "call_sid": "CA1"}},
                "analysis": {"transcript_summary": SUMMARY},
                "conversation_initiation_client_data": {"dynamic_variables": {"customer_name": NAME}}
            }
        })
        .to_string();
        let r = app.post_call_signed(&event, ELEVENLABS_SECRET, 0).await;
        assert_eq!(r.status(), 200);
    }

    // Errors: a 404 with the number in the URL, a 422 about the name, a 409, a 401.
    for path in [
        format!("/api/leads/{CALLER_E164}"),
        "/api/leads/6129782029/context".to_string(),
        format!("/api/organizations/{NAME}"),
        format!("/api/nowhere/{CALLER_E164}/{EMAIL}"),
        format!(
            "/api/leads?organization_id={}&phone=%2B16127650000",
            uuid::Uuid::new_v4()
        ),
    ] {
        assert_eq!(app.get_admin(&path).await.status(), 404, "{path}");
    }
    let r = app
        .patch_admin(
            &format!("/api/leads/{lead_id}"),
            &json!({"customer_name": NAME, "status": format!("{NAME} {CALLER_E164}")}),
        )
        .await;
    assert_eq!(r.status(), 422);
    let r = app
        .post_admin(
            "/api/leads",
            &json!({"organization_id": org_id, "phone_number": CALLER_E164, "customer_name": NAME}),
        )
        .await;
    assert_eq!(r.status(), 409);
    let r = app
        .client
        .get(app.url(&format!("/api/leads/{lead_id}")))
        .bearer_auth(EMAIL)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = app
        .post_call_signed(
            r#"{"type": "post_call_transcription"}"#,
            "wrong-secret-0123456789",
            0,
        )
        .await;
    assert_eq!(r.status(), 401);
    app.stop().await;

    let log = capture.text();
    // The log did record the traffic, by route template.
    for route in [
        "/api/leads/{id}",
        "/api/leads/{id}/conversations",
        "/api/organizations",
        "/webhooks/elevenlabs/conversation-initiation",
        "/webhooks/elevenlabs/post-call",
    ] {
        assert!(
            log.contains(route),
            "the log names the route {route}:\n{log}"
        );
    }
    for status in ["200", "201", "401", "404", "409", "422"] {
        assert!(log.contains(status), "the log has a {status}:\n{log}");
    }
    // And nothing personal, in any form.
    let mut forbidden = vec![
        NAME,
        "Zebulon",
        "Quixote",
        EMAIL,
        SUMMARY,
        "crown replacement",
        "Nervous about needles",
        CALLER_E164,
        NEW_CALLER,
        "6127654321",
    ];
    forbidden.extend(CALLER_FORMS);
    for secret in forbidden {
        let line = log.lines().find(|l| l.contains(secret));
        assert!(
            line.is_none(),
            "personal data {secret:?} in the log: {}",
            line.unwrap_or_default()
        );
    }
    // Nor the URI of a request, whose query string carries numbers.
    let line = log.lines().find(|l| l.contains("phone="));
    assert!(
        line.is_none(),
        "a URI in the log: {}",
        line.unwrap_or_default()
    );
}
