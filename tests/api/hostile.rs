//! Hostile input: whatever a client sends, the answer is a 4xx JSON error (never a 5xx) and the
//! stored data is exactly what it was before.

use reqwest::{Method, Response};
use serde_json::{json, Value};
use sqlx::Row;
use uuid::Uuid;

use crate::support::app::{assert_error, spawn_app, TestApp, WEBHOOK_SECRET};

const ORG_PHONE: &str = "+16123241623";
const CALLER: &str = "+16129782029";
const OTHER_CALLER: &str = "+16127654321";

/// An organization with a lead and a conversation, to attack.
struct Target {
    org_id: String,
    lead_id: String,
}

async fn target(app: &TestApp) -> Target {
    let r = app
        .post_admin(
            "/api/organizations",
            &json!({"name": "Acme Dental", "phone_number": ORG_PHONE,
                    "timezone": "America/Chicago", "greeting_template": "{greeting}, {first_name}!"}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let org: Value = r.json().await.unwrap();
    let org_id = org["id"].as_str().unwrap().to_string();
    let r = app
        .post_admin(
            "/api/leads",
            &json!({"organization_id": org_id, "phone_number": CALLER,
                    "customer_name": "Maria Lopez", "email": "maria@example.com",
                    "notes": "Prefers mornings", "metadata": {"source": "ad", "score": 3}}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let lead: Value = r.json().await.unwrap();
    let lead_id = lead["id"].as_str().unwrap().to_string();
    let r = app
        .post_admin(
            &format!("/api/leads/{lead_id}/conversations"),
            &json!({"channel": "voice", "summary": "Asked about whitening",
                    "started_at": "2025-01-10T15:00:00Z"}),
        )
        .await;
    assert_eq!(r.status(), 201);
    Target { org_id, lead_id }
}

/// Everything stored, read through the API and around it.
async fn snapshot(app: &TestApp, t: &Target) -> Value {
    snapshot_with(app, t, &mut app.db.pg_connection().await).await
}

async fn snapshot_with(app: &TestApp, t: &Target, conn: &mut sqlx::PgConnection) -> Value {
    let get = |path: String| async move {
        let r = app.get_admin(&path).await;
        assert_eq!(r.status(), 200, "{path}");
        r.json::<Value>().await.unwrap()
    };
    let row = sqlx::query(
        "select (select count(*) from organizations) as o, (select count(*) from leads) as l, \
         (select count(*) from conversations) as c",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    let counts: (i64, i64, i64) = (row.get("o"), row.get("l"), row.get("c"));
    json!({
        "organization": get(format!("/api/organizations/{}", t.org_id)).await,
        "lead": get(format!("/api/leads/{}", t.lead_id)).await,
        "conversations": get(format!("/api/leads/{}/conversations?limit=100", t.lead_id)).await,
        "counts": [counts.0, counts.1, counts.2],
    })
}

/// A 4xx JSON error; returns the status.
async fn refused(r: Response, what: &str) -> u16 {
    let status = r.status().as_u16();
    assert!(
        (400..500).contains(&status),
        "{what}: expected a 4xx, got {status}: {}",
        r.text().await.unwrap_or_default()
    );
    assert_error(r, status).await;
    status
}

async fn send_raw(
    app: &TestApp,
    method: Method,
    path: &str,
    body: impl Into<reqwest::Body>,
) -> Response {
    app.admin(app.client.request(method, app.url(path)))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request")
}

/// The write endpoints, with the target's ids filled in.
fn write_paths(t: &Target) -> Vec<(Method, String)> {
    vec![
        (Method::POST, "/api/organizations".into()),
        (Method::PATCH, format!("/api/organizations/{}", t.org_id)),
        (Method::POST, "/api/leads".into()),
        (Method::PATCH, format!("/api/leads/{}", t.lead_id)),
        (
            Method::POST,
            format!("/api/leads/{}/conversations", t.lead_id),
        ),
    ]
}

#[tokio::test]
async fn nul_characters_are_refused_and_change_nothing() {
    let app = spawn_app().await;
    let t = target(&app).await;
    let before = snapshot(&app, &t).await;
    let org_path = format!("/api/organizations/{}", t.org_id);
    let lead_path = format!("/api/leads/{}", t.lead_id);
    let conv_path = format!("/api/leads/{}/conversations", t.lead_id);

    let attempts: Vec<(Method, &str, Value)> = vec![
        (
            Method::PATCH,
            &lead_path,
            json!({"customer_name": "Maria\u{0}Lopez"}),
        ),
        (Method::PATCH, &lead_path, json!({"notes": "\u{0}"})),
        (
            Method::PATCH,
            &lead_path,
            json!({"email": "maria\u{0}@example.com"}),
        ),
        (
            Method::PATCH,
            &lead_path,
            json!({"metadata": {"k": "v\u{0}"}}),
        ),
        (
            Method::PATCH,
            &lead_path,
            json!({"metadata": {"k\u{0}": "v"}}),
        ),
        (
            Method::PATCH,
            &lead_path,
            json!({"metadata": {"deep": [{"x": ["\u{0}"]}]}}),
        ),
        (
            Method::PATCH,
            &lead_path,
            json!({"phone_number": "+1612978\u{0}2029"}),
        ),
        (Method::PATCH, &lead_path, json!({"status": "new\u{0}"})),
        // A valid change next to an invalid one is not applied either.
        (
            Method::PATCH,
            &lead_path,
            json!({"status": "lost", "notes": "a\u{0}b"}),
        ),
        (Method::PATCH, &org_path, json!({"name": "Acme\u{0}"})),
        (
            Method::PATCH,
            &org_path,
            json!({"greeting_template": "Hi\u{0}"}),
        ),
        (Method::PATCH, &org_path, json!({"timezone": "UTC\u{0}"})),
        (
            Method::POST,
            "/api/organizations",
            json!({"name": "Evil\u{0}Corp", "phone_number": "+16125148800"}),
        ),
        (
            Method::POST,
            "/api/leads",
            json!({"organization_id": t.org_id, "phone_number": OTHER_CALLER, "customer_name": "\u{0}"}),
        ),
        (
            Method::POST,
            "/api/leads",
            json!({"organization_id": t.org_id, "phone_number": OTHER_CALLER, "metadata": {"\u{0}": 1}}),
        ),
        (
            Method::POST,
            &conv_path,
            json!({"channel": "voice", "summary": "x\u{0}"}),
        ),
        (
            Method::POST,
            &conv_path,
            json!({"channel": "voice", "transcript": [{"message": "\u{0}"}]}),
        ),
        (
            Method::POST,
            &conv_path,
            json!({"channel": "voice", "external_id": "c\u{0}"}),
        ),
    ];
    for (method, path, body) in attempts {
        let r = send_raw(&app, method.clone(), path, body.to_string()).await;
        let status = refused(r, &format!("{method} {path} {body}")).await;
        assert_eq!(status, 422, "{method} {path} {body}");
        assert_eq!(snapshot(&app, &t).await, before, "{method} {path} {body}");
    }
}

#[tokio::test]
async fn huge_and_odd_path_segments_are_404() {
    let app = spawn_app().await;
    let t = target(&app).await;
    let before = snapshot(&app, &t).await;
    let huge = "a".repeat(10_000);
    let huge_digits = "9".repeat(10_000);
    let uuid_and_more = format!("{}{}", t.lead_id, "0".repeat(100));
    for segment in [
        huge.as_str(),
        huge_digits.as_str(),
        uuid_and_more.as_str(),
        "%20",
        "..",
        "%2e%2e",
        "null",
        "-1",
        "%00",
        "'%20OR%201=1--",
        "%F0%9F%A6%80",
    ] {
        for (method, path) in [
            (Method::GET, format!("/api/leads/{segment}")),
            (Method::DELETE, format!("/api/leads/{segment}")),
            (Method::GET, format!("/api/leads/{segment}/conversations")),
            (Method::GET, format!("/api/leads/{segment}/context")),
            (Method::GET, format!("/api/leads/{segment}/summary")),
            (Method::GET, format!("/api/leads/{segment}/greeting")),
            (Method::GET, format!("/api/organizations/{segment}")),
            (Method::DELETE, format!("/api/organizations/{segment}")),
        ] {
            let r = app
                .admin(app.client.request(method.clone(), app.url(&path)))
                .send()
                .await
                .expect("request");
            let shown: String = path.chars().take(80).collect();
            let status = refused(r, &format!("{method} {shown}")).await;
            assert_eq!(status, 404, "{method} {shown}");
        }
    }
    assert_eq!(snapshot(&app, &t).await, before);
}

#[tokio::test]
async fn path_segments_that_are_not_utf8_are_refused_with_json() {
    let app = spawn_app().await;
    let t = target(&app).await;
    let before = snapshot(&app, &t).await;
    for (method, path) in [
        (Method::GET, "/api/leads/%FF"),
        (Method::PATCH, "/api/leads/%FF"),
        (Method::DELETE, "/api/leads/%FF"),
        (Method::GET, "/api/leads/%C3%28/context"),
        (Method::POST, "/api/leads/%C3%28/conversations"),
        (Method::GET, "/api/organizations/%80%80"),
        (Method::PATCH, "/api/organizations/%80%80"),
        (Method::DELETE, "/api/organizations/%80%80"),
    ] {
        let r = send_raw(&app, method.clone(), path, r#"{"channel": "voice"}"#).await;
        // Not UTF-8, so not a UUID: it names nothing.
        let status = refused(r, &format!("{method} {path}")).await;
        assert_eq!(status, 404, "{method} {path}");
    }
    assert_eq!(snapshot(&app, &t).await, before);
}

#[tokio::test]
async fn bad_paging_parameters_are_422() {
    let app = spawn_app().await;
    let t = target(&app).await;
    let path = format!("/api/leads/{}/conversations", t.lead_id);
    for query in [
        "limit=-1",
        "limit=-9223372036854775808",
        "limit=101",
        "limit=1000000000",
        "limit=99999999999999999999999",
        "limit=1.5",
        "limit=1e2",
        "limit=abc",
        "limit=",
        "limit=%00",
        "limit=0x10",
        "offset=-1",
        "offset=-9223372036854775808",
        "offset=9223372036854775807",
        "offset=99999999999999999999999",
        "offset=2147483648",
        "offset=NaN",
        "offset=%F0%9F%A6%80",
    ] {
        let r = app.get_admin(&format!("{path}?{query}")).await;
        let status = refused(r, query).await;
        assert_eq!(status, 422, "{query}");
    }
    // Repeated or unknown parameters never fail the server.
    for query in [
        "limit=1&limit=2",
        "page=3",
        "limit=2&offset=1&sort=desc",
        "%FF=1",
    ] {
        let r = app.get_admin(&format!("{path}?{query}")).await;
        assert!(r.status().as_u16() < 500, "{query}: {}", r.status());
    }
}

#[tokio::test]
async fn unknown_enum_values_are_422() {
    let app = spawn_app().await;
    let t = target(&app).await;
    let before = snapshot(&app, &t).await;
    let lead_path = format!("/api/leads/{}", t.lead_id);
    let conv_path = format!("/api/leads/{}/conversations", t.lead_id);
    for status in [
        "NEW",
        "Qualified",
        " new",
        "new ",
        "",
        "deleted",
        "nouveau",
        "🦀",
    ] {
        let r = app
            .patch_admin(&lead_path, &json!({"status": status}))
            .await;
        assert_eq!(refused(r, status).await, 422, "{status:?}");
        let r = app
            .post_admin(
                "/api/leads",
                &json!({"organization_id": t.org_id, "phone_number": OTHER_CALLER, "status": status}),
            )
            .await;
        assert_eq!(refused(r, status).await, 422, "{status:?}");
    }
    for channel in ["VOICE", "Voice", "phone", "fax", "", " sms", "whatsapp"] {
        let r = app
            .post_admin(&conv_path, &json!({"channel": channel}))
            .await;
        assert_eq!(refused(r, channel).await, 422, "{channel:?}");
        let r = app
            .admin(
                app.client
                    .get(app.url(&format!("/api/leads/{}/greeting", t.lead_id))),
            )
            .query(&[("channel", channel)])
            .send()
            .await
            .unwrap();
        assert_eq!(refused(r, channel).await, 422, "{channel:?}");
    }
    assert_eq!(snapshot(&app, &t).await, before);
}

#[tokio::test]
async fn wrong_types_are_422_and_change_nothing() {
    let app = spawn_app().await;
    let t = target(&app).await;
    let before = snapshot(&app, &t).await;
    let wrong_values = [
        json!(42),
        json!(-1.5),
        json!(true),
        json!([]),
        json!(["Maria"]),
        json!({}),
        json!({"name": "Maria"}),
    ];
    let fields_by_path: Vec<((Method, String), Vec<&str>)> = write_paths(&t)
        .into_iter()
        .zip([
            vec!["name", "phone_number", "timezone", "greeting_template"],
            vec!["name", "phone_number", "timezone", "greeting_template"],
            vec![
                "organization_id",
                "phone_number",
                "customer_name",
                "email",
                "status",
                "notes",
            ],
            vec!["phone_number", "customer_name", "email", "status", "notes"],
            vec![
                "channel",
                "external_id",
                "summary",
                "started_at",
                "ended_at",
            ],
        ])
        .collect();
    for ((method, path), fields) in &fields_by_path {
        for field in fields {
            for wrong in &wrong_values {
                // The rest of the body is valid, so the wrong field is what is refused.
                let mut body = match (method.as_str(), path.as_str()) {
                    ("POST", "/api/organizations") => {
                        json!({"name": "New", "phone_number": "+16125148800"})
                    }
                    ("POST", "/api/leads") => {
                        json!({"organization_id": t.org_id, "phone_number": OTHER_CALLER})
                    }
                    ("POST", _) => json!({"channel": "sms"}),
                    _ => json!({}),
                };
                body[*field] = wrong.clone();
                let r = send_raw(&app, method.clone(), path, body.to_string()).await;
                let what = format!("{method} {path} {body}");
                assert_eq!(refused(r, &what).await, 422, "{what}");
            }
        }
    }
    // Metadata must be an object; a transcript may be any JSON.
    for wrong in [json!("{}"), json!([1]), json!(1), json!(true)] {
        let r = app
            .patch_admin(
                &format!("/api/leads/{}", t.lead_id),
                &json!({"metadata": wrong}),
            )
            .await;
        assert_eq!(refused(r, "metadata").await, 422);
    }
    assert_eq!(snapshot(&app, &t).await, before);
}

/// `[[[...]]]` nested `depth` times.
fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

#[tokio::test]
async fn deeply_nested_json_is_refused_without_crashing() {
    let app = spawn_app().await;
    let t = target(&app).await;
    let before = snapshot(&app, &t).await;

    for depth in [200, 10_000, 500_000] {
        let inner = nested(depth);
        let bodies = [
            inner.clone(),
            format!(r#"{{"metadata": {{"a": {inner}}}}}"#),
            format!(r#"{{"channel": "voice", "transcript": {inner}}}"#),
        ];
        for (method, path) in write_paths(&t) {
            for body in &bodies {
                let r = send_raw(&app, method.clone(), &path, body.clone()).await;
                let status = refused(r, &format!("{method} {path} depth {depth}")).await;
                assert!(
                    status == 400 || status == 413,
                    "{method} {path} depth {depth}: {status}"
                );
            }
        }
        let r = app
            .client
            .post(app.url("/webhooks/elevenlabs/conversation-initiation"))
            .bearer_auth(WEBHOOK_SECRET)
            .body(format!(r#"{{"caller_id": {inner}}}"#))
            .send()
            .await
            .unwrap();
        let status = refused(r, "initiation").await;
        assert!(
            status == 400 || status == 413,
            "initiation depth {depth}: {status}"
        );
    }
    assert_eq!(snapshot(&app, &t).await, before);

    // Moderate nesting inside metadata is data like any other, and round-trips.
    let deep_but_fine: Value = serde_json::from_str(&format!(
        r#"{{"a": {}}}"#,
        nested(50).replacen("[]", "[\"leaf\"]", 1)
    ))
    .unwrap();
    let r = app
        .patch_admin(
            &format!("/api/leads/{}", t.lead_id),
            &json!({"metadata": deep_but_fine}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let lead: Value = app
        .get_admin(&format!("/api/leads/{}", t.lead_id))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(lead["metadata"], deep_but_fine);
}

#[tokio::test]
async fn strings_over_their_limits_are_422() {
    let app = spawn_app().await;
    let t = target(&app).await;
    let before = snapshot(&app, &t).await;
    let org_path = format!("/api/organizations/{}", t.org_id);
    let lead_path = format!("/api/leads/{}", t.lead_id);
    let conv_path = format!("/api/leads/{}/conversations", t.lead_id);
    let short_over = "x".repeat(501);
    let long_over = "y".repeat(20_001);
    let emoji_over = "🦀".repeat(501);
    let huge = "z".repeat(1_000_000);

    let attempts: Vec<(&str, Value)> = vec![
        (&org_path, json!({"name": short_over})),
        (&org_path, json!({"name": emoji_over})),
        (&org_path, json!({"name": huge})),
        (&org_path, json!({"greeting_template": long_over})),
        (&org_path, json!({"timezone": short_over})),
        (&org_path, json!({"phone_number": huge})),
        (&lead_path, json!({"customer_name": short_over})),
        (&lead_path, json!({"customer_name": huge})),
        (
            &lead_path,
            json!({"email": format!("{short_over}@example.com")}),
        ),
        (&lead_path, json!({"notes": long_over})),
        (&lead_path, json!({"phone_number": "1".repeat(10_000)})),
    ];
    for (path, body) in attempts {
        let r = app.patch_admin(path, &body).await;
        let what = format!(
            "PATCH {path} {}",
            body.to_string().chars().take(60).collect::<String>()
        );
        assert_eq!(refused(r, &what).await, 422, "{what}");
    }
    for body in [
        json!({"channel": "voice", "summary": long_over}),
        json!({"channel": "voice", "external_id": short_over}),
    ] {
        let r = app.post_admin(&conv_path, &body).await;
        assert_eq!(refused(r, "conversation").await, 422);
    }
    assert_eq!(snapshot(&app, &t).await, before);

    // At the limits, in characters rather than bytes, it fits.
    let name = "é".repeat(500);
    let r = app
        .patch_admin(
            &lead_path,
            &json!({"customer_name": name, "notes": "n".repeat(20_000)}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let lead: Value = r.json().await.unwrap();
    assert_eq!(lead["customer_name"], name.as_str());
    assert_eq!(lead["notes"].as_str().unwrap().len(), 20_000);
}

#[tokio::test]
async fn unicode_and_emoji_round_trip() {
    let app = spawn_app().await;
    let org_name = "Zahnarztpraxis Müller & Søn 🦷 — 東京";
    let r = app
        .post_admin(
            "/api/organizations",
            &json!({"name": org_name, "phone_number": ORG_PHONE, "timezone": "Asia/Tokyo"}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let org: Value = r.json().await.unwrap();
    assert_eq!(org["name"], org_name);
    let org_id = org["id"].as_str().unwrap();

    let customer = "José Ñandú-李小龙 🦀";
    let notes = "RTL: مرحبا بالعالم · combining: e\u{301} · zero width: a\u{200b}b · 𝔘𝔫𝔦𝔠𝔬𝔡𝔢";
    let metadata = json!({"名前": "テスト", "emoji 🎉": ["👍🏽", "👨‍👩‍👧"], "quote\"s": "back\\slash"});
    let r = app
        .post_admin(
            "/api/leads",
            &json!({"organization_id": org_id, "phone_number": CALLER,
                    "customer_name": customer, "notes": notes, "metadata": metadata}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let lead: Value = r.json().await.unwrap();
    let lead_id = lead["id"].as_str().unwrap();
    let read: Value = app
        .get_admin(&format!("/api/leads/{lead_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read["customer_name"], customer);
    assert_eq!(read["notes"], notes);
    assert_eq!(read["metadata"], metadata);
    let read_org: Value = app
        .get_admin(&format!("/api/organizations/{org_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read_org["name"], org_name);

    let summary = "Wants a 🦷 cleaning — at 9時";
    let r = app
        .post_admin(
            &format!("/api/leads/{lead_id}/conversations"),
            &json!({"channel": "chat", "summary": summary}),
        )
        .await;
    assert_eq!(r.status(), 201);

    // And it reaches the agent intact.
    let r = app
        .initiate(&json!({"caller_id": CALLER, "called_number": ORG_PHONE, "agent_id": "a", "call_sid": "CA1"}))
        .await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    let vars = &answer["dynamic_variables"];
    assert_eq!(vars["customer_name"], customer);
    assert_eq!(vars["organization_name"], org_name);
    assert!(
        vars["greeting"].as_str().unwrap().contains("José"),
        "{vars}"
    );
    assert!(
        vars["previous_summary"].as_str().unwrap().contains(summary),
        "{vars}"
    );
}

#[tokio::test]
async fn bodies_that_are_not_json_are_400() {
    let app = spawn_app().await;
    let t = target(&app).await;
    let before = snapshot(&app, &t).await;
    let invalid_utf8: Vec<Vec<u8>> = vec![
        vec![0xff, 0xfe, 0xfd],
        b"{\"name\": \"\xff\xfe\"}".to_vec(),
        b"{\"customer_name\": \"Mar\xc3\x28a\"}".to_vec(),
        b"{\"channel\": \"voice\", \"summary\": \"\xed\xa0\x80\"}".to_vec(),
        // A lone surrogate escape is not a character either.
        br#"{"customer_name": "\ud800", "name": "\udfff", "channel": "voice", "summary": "\ud800"}"#
            .to_vec(),
    ];
    let not_json: Vec<Vec<u8>> = vec![
        Vec::new(),
        b" ".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"[{}]".to_vec(),
        b"\"text\"".to_vec(),
        b"12".to_vec(),
        b"{".to_vec(),
        b"{\"a\": 1,}".to_vec(),
        b"{'single': 'quotes'}".to_vec(),
        b"name=Maria&status=new".to_vec(),
        b"{\"a\": 1} trailing".to_vec(),
        b"{\"a\": 1}{\"b\": 2}".to_vec(),
        b"{\"a\": NaN}".to_vec(),
        b"\xef\xbb\xbf{}".to_vec(),
    ];
    for (method, path) in write_paths(&t) {
        for body in invalid_utf8.iter().chain(&not_json) {
            let r = send_raw(&app, method.clone(), &path, body.clone()).await;
            let what = format!("{method} {path} {:?}", String::from_utf8_lossy(body));
            assert_eq!(refused(r, &what).await, 400, "{what}");
        }
    }
    for body in invalid_utf8.iter().chain(&not_json) {
        let r = app
            .client
            .post(app.url("/webhooks/elevenlabs/conversation-initiation"))
            .bearer_auth(WEBHOOK_SECRET)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let what = format!("initiation {:?}", String::from_utf8_lossy(body));
        assert_eq!(refused(r, &what).await, 400, "{what}");
    }
    assert_eq!(snapshot(&app, &t).await, before);
}

#[tokio::test]
async fn duplicate_keys_and_odd_but_valid_json_never_fail_the_server() {
    let app = spawn_app().await;
    let t = target(&app).await;
    let lead_path = format!("/api/leads/{}", t.lead_id);
    for body in [
        r#"{"status": "lost", "status": "new"}"#,
        r#"{"customer_name": "A", "customer_name": null}"#,
        r#"{"metadata": {"a": 1e308, "b": -0.0, "c": 12345678901234567890}}"#,
        r#"{"metadata": {"a": 1e400}}"#,
    ] {
        let r = send_raw(&app, Method::PATCH, &lead_path, body).await;
        let status = r.status().as_u16();
        assert!(
            status == 200 || (400..500).contains(&status),
            "{body}: {status}"
        );
        if status != 200 {
            assert_error(r, status).await;
        }
    }
}

#[tokio::test]
async fn store_bodies_over_the_limit_are_413_and_change_nothing() {
    let app = spawn_app().await;
    let t = target(&app).await;
    let before = snapshot(&app, &t).await;
    let big_notes = "n".repeat(3 * 1024 * 1024);
    let body = json!({"notes": big_notes}).to_string();
    let r = send_raw(
        &app,
        Method::PATCH,
        &format!("/api/leads/{}", t.lead_id),
        body,
    )
    .await;
    assert_eq!(refused(r, "3 MiB patch").await, 413);
    let body = json!({"organization_id": t.org_id, "phone_number": OTHER_CALLER,
                      "metadata": {"blob": big_notes}})
    .to_string();
    let r = send_raw(&app, Method::POST, "/api/leads", body).await;
    assert_eq!(refused(r, "3 MiB lead").await, 413);
    assert_eq!(snapshot(&app, &t).await, before);
}

#[tokio::test]
async fn every_write_path_survives_a_sweep_of_hostile_values() {
    let app = spawn_app().await;
    let t = target(&app).await;
    let mut conn = app.db.pg_connection().await;
    let mut baseline = snapshot_with(&app, &t, &mut conn).await;
    let org_fields = vec!["name", "phone_number", "timezone", "greeting_template"];
    let lead_fields = vec![
        "organization_id",
        "phone_number",
        "customer_name",
        "email",
        "status",
        "notes",
        "metadata",
    ];
    let conversation_fields = vec![
        "channel",
        "external_id",
        "summary",
        "transcript",
        "started_at",
        "ended_at",
    ];
    let hostile_values = [
        json!("\u{0}"),
        json!("x".repeat(100_000)),
        json!(["\u{0}"]),
        json!({"$where": "1 == 1"}),
        json!("'; drop table leads; --"),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(f64::MAX),
        json!("0000-00-00T00:00:00Z"),
        json!("9999-12-31T23:59:59Z"),
        json!("-infinity"),
        json!(Uuid::nil()),
    ];
    let paths = write_paths(&t);
    let field_sets = [
        &org_fields,
        &org_fields,
        &lead_fields,
        &lead_fields,
        &conversation_fields,
    ];
    for ((method, path), fields) in paths.iter().zip(field_sets) {
        for field in fields.iter().chain(&["colour"]) {
            for value in &hostile_values {
                let body = json!({ *field: value }).to_string();
                let r = send_raw(&app, method.clone(), path, body).await;
                let status = r.status().as_u16();
                let shown: String = value.to_string().chars().take(40).collect();
                let what = format!("{method} {path} {field}={shown}");
                assert!(status < 500, "{what}: {status}");
                if status >= 400 {
                    assert_error(r, status).await;
                    let now = snapshot_with(&app, &t, &mut conn).await;
                    assert_eq!(now, baseline, "{what} changed nothing");
                } else {
                    // Some of these are valid values (a SQL-looking name is just a name): a
                    // partial update of one field may take them. Nothing creates from one field.
                    assert_eq!(method, Method::PATCH, "{what} created something ({status})");
                    baseline = snapshot_with(&app, &t, &mut conn).await;
                }
            }
        }
    }
    assert_eq!(baseline["counts"], json!([1, 1, 1]));
}

#[tokio::test]
async fn a_failing_query_is_a_5xx_without_internal_detail() {
    let app = spawn_app().await;
    let t = target(&app).await;
    let mut conn = app.db.pg_connection().await;
    sqlx::query("drop table conversations")
        .execute(&mut conn)
        .await
        .unwrap();

    for path in [
        format!("/api/leads/{}/conversations", t.lead_id),
        format!("/api/leads/{}/context", t.lead_id),
        format!("/api/leads/{}/summary", t.lead_id),
    ] {
        let r = app.get_admin(&path).await;
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert!((500..600).contains(&status), "{path}: {status} {text}");
        let body: Value = serde_json::from_str(&text).expect("a JSON error");
        assert!(body["error"]["code"].is_string(), "{text}");
        for detail in [
            "relation",
            "does not exist",
            "conversations",
            "sqlx",
            "SELECT",
            "select",
        ] {
            assert!(
                !text.contains(detail),
                "{path}: internal detail {detail:?} in {text}"
            );
        }
    }
    // What does not need the broken table still works.
    let r = app.get_admin(&format!("/api/leads/{}", t.lead_id)).await;
    assert_eq!(r.status(), 200);
}
