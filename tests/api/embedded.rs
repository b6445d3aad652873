//! The embedded default (SQLite): data survives a restart, and the webhooks work on it as on
//! Postgres.

use std::sync::Arc;

use chrono::Utc;
use serde_json::{json, Value};

use crate::support::app::{spawn_app_on, spawn_sqlite_app, ELEVENLABS_SECRET};
use crate::support::db::TestDb;
use crate::webhooks::{
    assert_defaults, initiation_body, initiation_ok, known_caller, CALLER, ORG_PHONE,
};

#[tokio::test]
async fn embedded_database_keeps_its_data_across_a_restart() {
    let db = Arc::new(TestDb::sqlite());
    assert!(!db.is_postgres());

    let app = spawn_app_on(db.clone(), &[]).await;
    let org = app.create_org("Acme Dental", ORG_PHONE).await;
    let org_id = org["id"].as_str().unwrap().to_string();
    let lead = app.create_lead(&org_id, CALLER, Some("Maria Lopez")).await;
    let lead_id = lead["id"].as_str().unwrap().to_string();
    let r = app
        .post_admin(
            &format!("/api/leads/{lead_id}/conversations"),
            &json!({"channel": "voice", "summary": "Booked a cleaning",
                    "started_at": "2025-01-15T03:30:00Z", "transcript": [{"role": "user", "message": "Hi"}]}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let conversation: Value = r.json().await.unwrap();
    app.stop().await;

    // A new process on the same file.
    let app = spawn_app_on(db.clone(), &[]).await;
    let r = app.get_admin(&format!("/api/organizations/{org_id}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), org);
    let r = app.get_admin(&format!("/api/leads/{lead_id}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), lead);
    let r = app
        .get_admin(&format!("/api/leads/{lead_id}/conversations"))
        .await;
    assert_eq!(r.status(), 200);
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["items"], json!([conversation]));

    let (vars, source) =
        initiation_ok(app.initiate(&initiation_body(CALLER, ORG_PHONE)).await).await;
    assert_eq!(vars["lead_id"], lead_id.as_str());
    assert_eq!(vars["customer_name"], "Maria Lopez");
    assert_eq!(vars["conversation_count"], 1);
    assert_eq!(vars["last_contact_date"], "2025-01-14", "in Chicago");
    assert!(
        vars["greeting"].as_str().unwrap().contains("Maria"),
        "{vars:?}"
    );
    assert!(vars["previous_summary"]
        .as_str()
        .unwrap()
        .contains("Booked a cleaning"));
    assert_ne!(source, "default");

    // Writes after the restart land too, and survive the next one.
    let r = app
        .patch_admin(
            &format!("/api/leads/{lead_id}"),
            &json!({"status": "customer"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    app.stop().await;
    let app = spawn_app_on(db, &[]).await;
    let lead: Value = app
        .get_admin(&format!("/api/leads/{lead_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(lead["status"], "customer");
}

#[tokio::test]
async fn sqlite_webhook_answers_a_known_caller() {
    let app = spawn_sqlite_app().await;
    assert!(!app.db.is_postgres());
    let known = known_caller(&app).await;

    let (vars, source) =
        initiation_ok(app.initiate(&initiation_body(CALLER, ORG_PHONE)).await).await;
    assert_eq!(source, "db");
    assert_eq!(vars["customer_name"], "Maria Lopez");
    assert_eq!(vars["lead_id"], known.lead_id());
    assert_eq!(vars["lead_status"], "qualified");
    assert_eq!(vars["organization_name"], "Acme Dental");
    assert_eq!(vars["is_returning_customer"], true);
    assert_eq!(vars["conversation_count"], 2);
    assert_eq!(vars["last_contact_date"], "2025-01-14");
    assert!(vars["previous_summary"]
        .as_str()
        .unwrap()
        .contains("Booked a cleaning for next Tuesday"));
    assert!(vars["greeting"].as_str().unwrap().contains("Maria"));
    assert_eq!(vars["caller_phone"], CALLER);

    // A human-form caller id, and a stranger.
    let (vars, _) = initiation_ok(
        app.initiate(&initiation_body("(612) 978-2029", ORG_PHONE))
            .await,
    )
    .await;
    assert_eq!(vars["lead_id"], known.lead_id());
    let (vars, _) =
        initiation_ok(app.initiate(&initiation_body("Anonymous", ORG_PHONE)).await).await;
    assert_defaults(&vars, "Acme Dental", "");
}

#[tokio::test]
async fn sqlite_post_call_records_once_and_creates_new_callers() {
    let app = spawn_sqlite_app().await;
    let known = known_caller(&app).await;
    let stranger = "+16127654321";
    let start = Utc::now().timestamp() - 3600;
    let event = |conversation_id: &str, caller: &str| {
        json!({
            "type": "post_call_transcription",
            "event_timestamp": Utc::now().timestamp(),
            "data": {
                "agent_id": "agent_1",
                "conversation_id": conversation_id,
                "status": "done",
                "transcript": [{"role": "user", "message": "Hello", "time_in_call_secs": 1}],
                "metadata": {"start_time_unix_secs": start, "call_duration_secs": 42,
                             "phone_call": {"direction": "inbound", "agent_number": ORG_PHONE,
                                            "external_number": caller, "call_sid": "CA1"}},
                "analysis": {"transcript_summary": format!("Summary of {conversation_id}")},
                "conversation_initiation_client_data": {"dynamic_variables": {"lead_id": ""}}
            }
        })
        .to_string()
    };

    for _ in 0..2 {
        let r = app
            .post_call_signed(&event("conv_sqlite_1", CALLER), ELEVENLABS_SECRET, 0)
            .await;
        assert_eq!(r.status(), 200);
    }
    let page: Value = app
        .get_admin(&format!("/api/leads/{}/conversations", known.lead_id()))
        .await
        .json()
        .await
        .unwrap();
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "recorded once: {page}");
    assert_eq!(
        items
            .iter()
            .filter(|c| c["external_id"] == "conv_sqlite_1")
            .count(),
        1
    );

    let r = app
        .post_call_signed(&event("conv_sqlite_2", stranger), ELEVENLABS_SECRET, 0)
        .await;
    assert_eq!(r.status(), 200);
    let (vars, _) = initiation_ok(app.initiate(&initiation_body(stranger, ORG_PHONE)).await).await;
    assert_eq!(vars["is_returning_customer"], true);
    assert_eq!(vars["conversation_count"], 1);
    assert!(vars["previous_summary"]
        .as_str()
        .unwrap()
        .contains("Summary of conv_sqlite_2"));
}
