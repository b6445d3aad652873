//! The store API, path by path: authentication, the answers the contract lists (201, 200, 204,
//! 401, 404, 409, 422), partial-update semantics, and the JSON error shape on every error.

use reqwest::{Method, Response};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::app::{assert_error, spawn_app, TestApp, ADMIN_TOKEN, WEBHOOK_SECRET};

const ORG_PHONE: &str = "+16123241623";
const OTHER_ORG_PHONE: &str = "+16125148800";
const CALLER: &str = "+16129782029";
const OTHER_CALLER: &str = "+16127654321";

async fn ok_json(r: Response, status: u16) -> Value {
    let got = r.status().as_u16();
    let text = r.text().await.expect("body");
    assert_eq!(got, status, "{text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("JSON ({e}): {text}"))
}

async fn send(app: &TestApp, method: Method, path: &str, body: Option<&Value>) -> Response {
    let mut request = app.admin(app.client.request(method, app.url(path)));
    if let Some(body) = body {
        request = request.json(body);
    }
    request.send().await.expect("request")
}

fn id(v: &Value) -> &str {
    v["id"].as_str().unwrap_or_else(|| panic!("an id: {v}"))
}

async fn find_lead(app: &TestApp, org_id: &str, phone: &str) -> Response {
    app.admin(app.client.get(app.url("/api/leads")))
        .query(&[("organization_id", org_id), ("phone", phone)])
        .send()
        .await
        .expect("request")
}

async fn add_conversation(app: &TestApp, lead_id: &str, body: Value) -> Value {
    let r = app
        .post_admin(&format!("/api/leads/{lead_id}/conversations"), &body)
        .await;
    ok_json(r, 201).await
}

async fn get_org(app: &TestApp, org_id: &str) -> Value {
    ok_json(
        app.get_admin(&format!("/api/organizations/{org_id}")).await,
        200,
    )
    .await
}

async fn get_lead(app: &TestApp, lead_id: &str) -> Value {
    ok_json(app.get_admin(&format!("/api/leads/{lead_id}")).await, 200).await
}

// Authentication

#[tokio::test]
async fn every_store_path_needs_the_admin_token_reads_too() {
    let app = spawn_app().await;
    let org = app.create_org("Acme Dental", ORG_PHONE).await;
    let lead = app.create_lead(id(&org), CALLER, Some("Maria Lopez")).await;
    add_conversation(
        &app,
        id(&lead),
        json!({"channel": "voice", "summary": "Hello"}),
    )
    .await;
    let (org_id, lead_id) = (id(&org), id(&lead));

    let find = format!("/api/leads?organization_id={org_id}&phone=%2B16129782029");
    let requests: Vec<(Method, String, Option<Value>)> = vec![
        (
            Method::POST,
            "/api/organizations".into(),
            Some(json!({"name": "Other", "phone_number": OTHER_ORG_PHONE})),
        ),
        (Method::GET, format!("/api/organizations/{org_id}"), None),
        (
            Method::PATCH,
            format!("/api/organizations/{org_id}"),
            Some(json!({"name": "Hijacked"})),
        ),
        (Method::DELETE, format!("/api/organizations/{org_id}"), None),
        (
            Method::POST,
            "/api/leads".into(),
            Some(json!({"organization_id": org_id, "phone_number": OTHER_CALLER})),
        ),
        (Method::GET, find, None),
        (Method::GET, format!("/api/leads/{lead_id}"), None),
        (
            Method::PATCH,
            format!("/api/leads/{lead_id}"),
            Some(json!({"customer_name": "Hijacked"})),
        ),
        (Method::DELETE, format!("/api/leads/{lead_id}"), None),
        (
            Method::POST,
            format!("/api/leads/{lead_id}/conversations"),
            Some(json!({"channel": "sms"})),
        ),
        (
            Method::GET,
            format!("/api/leads/{lead_id}/conversations"),
            None,
        ),
        (Method::GET, format!("/api/leads/{lead_id}/context"), None),
        (Method::GET, format!("/api/leads/{lead_id}/summary"), None),
        (Method::GET, format!("/api/leads/{lead_id}/greeting"), None),
    ];
    let before = (
        get_org(&app, org_id).await,
        get_lead(&app, lead_id).await,
        app.get_admin(&format!("/api/leads/{lead_id}/conversations"))
            .await
            .text()
            .await
            .unwrap(),
    );

    for (method, path, body) in &requests {
        for authorization in [
            None,
            Some("Bearer wrong-token-0123456789".to_string()),
            Some(format!("Bearer {ADMIN_TOKEN}-")),
            Some(format!("Bearer {WEBHOOK_SECRET}")),
            Some(format!("Basic {ADMIN_TOKEN}")),
            Some(ADMIN_TOKEN.to_string()),
        ] {
            let mut request = app.client.request(method.clone(), app.url(path));
            if let Some(value) = &authorization {
                request = request.header("Authorization", value);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let r = request.send().await.expect("request");
            assert!(
                r.headers().contains_key("www-authenticate"),
                "{method} {path}"
            );
            let code = assert_error(r, 401).await;
            assert_eq!(
                code, "unauthorized",
                "{method} {path} with {authorization:?}"
            );
        }
    }

    let after = (
        get_org(&app, org_id).await,
        get_lead(&app, lead_id).await,
        app.get_admin(&format!("/api/leads/{lead_id}/conversations"))
            .await
            .text()
            .await
            .unwrap(),
    );
    assert_eq!(before, after, "no unauthenticated request changed anything");
    let r = find_lead(&app, org_id, OTHER_CALLER).await;
    assert_error(r, 404).await;
}

// Organizations

#[tokio::test]
async fn organization_create_normalises_and_defaults() {
    let app = spawn_app().await;
    let r = app
        .post_admin(
            "/api/organizations",
            &json!({"name": "  Acme Dental  ", "phone_number": "+1 (612) 324-1623"}),
        )
        .await;
    let org = ok_json(r, 201).await;
    Uuid::parse_str(id(&org)).expect("a UUID id");
    assert_eq!(org["name"], "Acme Dental");
    assert_eq!(org["phone_number"], ORG_PHONE);
    assert_eq!(org["timezone"], "UTC");
    assert_eq!(org["greeting_template"], Value::Null);
    for field in ["created_at", "updated_at"] {
        chrono::DateTime::parse_from_rfc3339(org[field].as_str().expect(field)).expect(field);
    }
    assert_eq!(get_org(&app, id(&org)).await, org);

    // A national number, with every optional field.
    let r = app
        .post_admin(
            "/api/organizations",
            &json!({"name": "Bravo Plumbing", "phone_number": "(612) 514-8800",
                    "timezone": "Europe/Berlin", "greeting_template": "{greeting}, {first_name}!"}),
        )
        .await;
    let other = ok_json(r, 201).await;
    assert_eq!(other["phone_number"], OTHER_ORG_PHONE);
    assert_eq!(other["timezone"], "Europe/Berlin");
    assert_eq!(other["greeting_template"], "{greeting}, {first_name}!");
}

#[tokio::test]
async fn organization_create_refuses_conflicts_and_invalid_fields() {
    let app = spawn_app().await;
    let org = app.create_org("Acme Dental", ORG_PHONE).await;

    // The same number in another form is the same number.
    for phone in [ORG_PHONE, "(612) 324-1623", "+1 612-324-1623"] {
        let r = app
            .post_admin(
                "/api/organizations",
                &json!({"name": "Copycat", "phone_number": phone}),
            )
            .await;
        assert_eq!(assert_error(r, 409).await, "conflict", "{phone}");
    }

    for body in [
        json!({"phone_number": OTHER_ORG_PHONE}),
        json!({"name": "No phone"}),
        json!({"name": null, "phone_number": OTHER_ORG_PHONE}),
        json!({"name": "", "phone_number": OTHER_ORG_PHONE}),
        json!({"name": "   ", "phone_number": OTHER_ORG_PHONE}),
        json!({"name": "Bad tz", "phone_number": OTHER_ORG_PHONE, "timezone": "Mars/Olympus"}),
        json!({"name": "Bad tz", "phone_number": OTHER_ORG_PHONE, "timezone": ""}),
        json!({"name": "Bad phone", "phone_number": "not a phone"}),
        json!({"name": "Bad phone", "phone_number": "123"}),
        json!({"name": "Bad phone", "phone_number": 16125148800_u64}),
        json!({"name": 42, "phone_number": OTHER_ORG_PHONE}),
        json!({"name": "Unknown", "phone_number": OTHER_ORG_PHONE, "colour": "red"}),
        json!({"name": "Template", "phone_number": OTHER_ORG_PHONE, "greeting_template": 7}),
        json!({}),
    ] {
        let r = app.post_admin("/api/organizations", &body).await;
        assert_eq!(assert_error(r, 422).await, "invalid_field", "{body}");
    }

    // None of them was created: the free number is still free. On create, `null` for an
    // optional field is its default.
    let r = app
        .post_admin(
            "/api/organizations",
            &json!({"name": "Bravo", "phone_number": OTHER_ORG_PHONE, "timezone": null,
                    "greeting_template": null}),
        )
        .await;
    let bravo = ok_json(r, 201).await;
    assert_eq!(bravo["timezone"], "UTC");
    assert_eq!(bravo["greeting_template"], Value::Null);
    assert_eq!(get_org(&app, id(&org)).await, org);
}

#[tokio::test]
async fn organization_get_patch_delete_of_unknown_ids_are_404() {
    let app = spawn_app().await;
    app.create_org("Acme Dental", ORG_PHONE).await;
    let missing = Uuid::new_v4();
    for raw in [missing.to_string(), "not-a-uuid".into(), "123".into()] {
        let path = format!("/api/organizations/{raw}");
        assert_error(app.get_admin(&path).await, 404).await;
        let r = app.patch_admin(&path, &json!({"name": "Ghost"})).await;
        assert_error(r, 404).await;
        assert_error(app.delete_admin(&path).await, 404).await;
    }
}

#[tokio::test]
async fn organization_patch_is_a_partial_update() {
    let app = spawn_app().await;
    let r = app
        .post_admin(
            "/api/organizations",
            &json!({"name": "Acme Dental", "phone_number": ORG_PHONE,
                    "timezone": "America/Chicago", "greeting_template": "Hi from {organization_name}"}),
        )
        .await;
    let org = ok_json(r, 201).await;
    let path = format!("/api/organizations/{}", id(&org));
    let other = app.create_org("Bravo Plumbing", OTHER_ORG_PHONE).await;

    // An empty patch changes nothing.
    let same = ok_json(app.patch_admin(&path, &json!({})).await, 200).await;
    for field in ["name", "phone_number", "timezone", "greeting_template"] {
        assert_eq!(same[field], org[field], "{field}");
    }

    // Absent fields are unchanged.
    let renamed = ok_json(
        app.patch_admin(&path, &json!({"name": "Acme Dental & Sons"}))
            .await,
        200,
    )
    .await;
    assert_eq!(renamed["name"], "Acme Dental & Sons");
    assert_eq!(renamed["phone_number"], ORG_PHONE);
    assert_eq!(renamed["timezone"], "America/Chicago");
    assert_eq!(renamed["greeting_template"], "Hi from {organization_name}");
    assert_eq!(get_org(&app, id(&org)).await, renamed);

    // `null` clears the optional greeting template.
    let cleared = ok_json(
        app.patch_admin(&path, &json!({"greeting_template": null}))
            .await,
        200,
    )
    .await;
    assert_eq!(cleared["greeting_template"], Value::Null);
    assert_eq!(cleared["name"], "Acme Dental & Sons");

    // A human-form phone number is stored as E.164; a timezone is checked.
    let moved = ok_json(
        app.patch_admin(
            &path,
            &json!({"phone_number": "(612) 324-1699", "timezone": "Asia/Tokyo"}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(moved["phone_number"], "+16123241699");
    assert_eq!(moved["timezone"], "Asia/Tokyo");

    let current = get_org(&app, id(&org)).await;
    for body in [
        json!({"name": null}),
        json!({"name": ""}),
        json!({"name": "   "}),
        json!({"name": 5}),
        json!({"phone_number": null}),
        json!({"phone_number": "nope"}),
        json!({"timezone": null}),
        json!({"timezone": "Nowhere/Special"}),
        json!({"timezone": 5}),
        json!({"greeting_template": ["a"]}),
        json!({"colour": "red"}),
        json!({"name": "Fine", "colour": "red"}),
        json!({"id": Uuid::new_v4()}),
        json!({"created_at": "2020-01-01T00:00:00Z"}),
    ] {
        let r = app.patch_admin(&path, &body).await;
        assert_eq!(assert_error(r, 422).await, "invalid_field", "{body}");
        assert_eq!(
            get_org(&app, id(&org)).await,
            current,
            "{body} changed nothing"
        );
    }

    // Another organization's number is taken.
    let r = app
        .patch_admin(&path, &json!({"phone_number": other["phone_number"]}))
        .await;
    assert_eq!(assert_error(r, 409).await, "conflict");
    assert_eq!(get_org(&app, id(&org)).await, current);
}

#[tokio::test]
async fn organization_with_leads_cannot_be_deleted() {
    let app = spawn_app().await;
    let org = app.create_org("Acme Dental", ORG_PHONE).await;
    let lead = app.create_lead(id(&org), CALLER, Some("Maria Lopez")).await;
    add_conversation(&app, id(&lead), json!({"channel": "voice"})).await;
    let org_path = format!("/api/organizations/{}", id(&org));

    let r = app.delete_admin(&org_path).await;
    assert_eq!(assert_error(r, 409).await, "conflict");
    assert_eq!(get_org(&app, id(&org)).await, org);
    get_lead(&app, id(&lead)).await;

    let r = app.delete_admin(&format!("/api/leads/{}", id(&lead))).await;
    assert_eq!(r.status(), 204);
    let r = app.delete_admin(&org_path).await;
    assert_eq!(r.status(), 204);
    assert!(r.text().await.unwrap().is_empty(), "204 has no body");

    assert_error(app.get_admin(&org_path).await, 404).await;
    assert_error(app.delete_admin(&org_path).await, 404).await;
    // Its number is free again.
    app.create_org("Acme Dental again", ORG_PHONE).await;
}

// Leads

#[tokio::test]
async fn lead_create_has_defaults_and_normalises_the_phone() {
    let app = spawn_app().await;
    let org = app.create_org("Acme Dental", ORG_PHONE).await;
    let r = app
        .post_admin(
            "/api/leads",
            &json!({"organization_id": id(&org), "phone_number": "+1 (612) 978-2029"}),
        )
        .await;
    let lead = ok_json(r, 201).await;
    Uuid::parse_str(id(&lead)).expect("a UUID id");
    assert_eq!(lead["organization_id"], org["id"]);
    assert_eq!(lead["phone_number"], CALLER);
    assert_eq!(lead["status"], "new");
    assert_eq!(lead["metadata"], json!({}));
    for field in ["customer_name", "email", "notes"] {
        assert_eq!(lead[field], Value::Null, "{field}");
    }
    for field in ["created_at", "updated_at"] {
        chrono::DateTime::parse_from_rfc3339(lead[field].as_str().expect(field)).expect(field);
    }
    assert_eq!(get_lead(&app, id(&lead)).await, lead);

    let r = app
        .post_admin(
            "/api/leads",
            &json!({"organization_id": id(&org), "phone_number": "612.765.4321",
                    "customer_name": "Otto Other", "email": "otto@example.com",
                    "status": "customer", "notes": "Prefers mornings",
                    "metadata": {"source": "web", "tags": ["vip"], "score": 7}}),
        )
        .await;
    let full = ok_json(r, 201).await;
    assert_eq!(full["phone_number"], OTHER_CALLER);
    assert_eq!(full["customer_name"], "Otto Other");
    assert_eq!(full["email"], "otto@example.com");
    assert_eq!(full["status"], "customer");
    assert_eq!(full["notes"], "Prefers mornings");
    assert_eq!(
        full["metadata"],
        json!({"source": "web", "tags": ["vip"], "score": 7})
    );
}

#[tokio::test]
async fn lead_create_refuses_conflicts_and_invalid_fields() {
    let app = spawn_app().await;
    let org = app.create_org("Acme Dental", ORG_PHONE).await;
    let other_org = app.create_org("Bravo Plumbing", OTHER_ORG_PHONE).await;
    app.create_lead(id(&org), CALLER, Some("Maria Lopez")).await;

    // The same (organization, phone), written in another form.
    for phone in [CALLER, "(612) 978-2029"] {
        let r = app
            .post_admin(
                "/api/leads",
                &json!({"organization_id": id(&org), "phone_number": phone}),
            )
            .await;
        assert_eq!(assert_error(r, 409).await, "conflict", "{phone}");
    }
    // The same phone in another organization is another lead.
    let elsewhere = app.create_lead(id(&other_org), CALLER, None).await;
    assert_eq!(elsewhere["organization_id"], other_org["id"]);

    let org_id = id(&org);
    for body in [
        json!({"organization_id": Uuid::new_v4(), "phone_number": OTHER_CALLER}),
        json!({"organization_id": "not-a-uuid", "phone_number": OTHER_CALLER}),
        json!({"organization_id": 7, "phone_number": OTHER_CALLER}),
        json!({"phone_number": OTHER_CALLER}),
        json!({"organization_id": org_id}),
        json!({"organization_id": org_id, "phone_number": null}),
        json!({"organization_id": org_id, "phone_number": "call me"}),
        json!({"organization_id": org_id, "phone_number": OTHER_CALLER, "status": "vip"}),
        json!({"organization_id": org_id, "phone_number": OTHER_CALLER, "email": "not-an-email"}),
        json!({"organization_id": org_id, "phone_number": OTHER_CALLER, "metadata": [1, 2]}),
        json!({"organization_id": org_id, "phone_number": OTHER_CALLER, "metadata": "{}"}),
        json!({"organization_id": org_id, "phone_number": OTHER_CALLER, "customer_name": 5}),
        json!({"organization_id": org_id, "phone_number": OTHER_CALLER, "id": Uuid::new_v4()}),
    ] {
        let r = app.post_admin("/api/leads", &body).await;
        assert_eq!(assert_error(r, 422).await, "invalid_field", "{body}");
    }
    let r = find_lead(&app, org_id, OTHER_CALLER).await;
    assert_error(r, 404).await;

    // On create, `null` for an optional field is its default.
    let r = app
        .post_admin(
            "/api/leads",
            &json!({"organization_id": org_id, "phone_number": OTHER_CALLER, "status": null,
                    "metadata": null, "customer_name": null}),
        )
        .await;
    let lead = ok_json(r, 201).await;
    assert_eq!(lead["status"], "new");
    assert_eq!(lead["metadata"], json!({}));
    assert_eq!(lead["customer_name"], Value::Null);
}

#[tokio::test]
async fn lead_is_found_by_organization_and_phone() {
    let app = spawn_app().await;
    let org = app.create_org("Acme Dental", ORG_PHONE).await;
    let other_org = app.create_org("Bravo Plumbing", OTHER_ORG_PHONE).await;
    let lead = app.create_lead(id(&org), CALLER, Some("Maria Lopez")).await;

    for phone in [
        CALLER,
        "+1 (612) 978-2029",
        "(612) 978-2029",
        "612.978.2029",
    ] {
        let found = ok_json(find_lead(&app, id(&org), phone).await, 200).await;
        assert_eq!(found, lead, "{phone}");
    }
    assert_error(find_lead(&app, id(&org), OTHER_CALLER).await, 404).await;
    assert_error(find_lead(&app, id(&other_org), CALLER).await, 404).await;
    let missing = Uuid::new_v4().to_string();
    assert_error(find_lead(&app, &missing, CALLER).await, 404).await;

    // A lead created after a miss is found (no stale negative answer).
    let other = app.create_lead(id(&org), OTHER_CALLER, None).await;
    let found = ok_json(find_lead(&app, id(&org), OTHER_CALLER).await, 200).await;
    assert_eq!(found["id"], other["id"]);

    for query in [
        format!("/api/leads?organization_id={}", id(&org)),
        "/api/leads?phone=%2B16129782029".to_string(),
        "/api/leads".to_string(),
        "/api/leads?organization_id=nope&phone=%2B16129782029".to_string(),
        format!("/api/leads?organization_id={}&phone=hello", id(&org)),
        format!("/api/leads?organization_id={}&phone=", id(&org)),
    ] {
        let r = app.get_admin(&query).await;
        assert_eq!(assert_error(r, 422).await, "invalid_field", "{query}");
    }
}

#[tokio::test]
async fn lead_patch_is_a_partial_update() {
    let app = spawn_app().await;
    let org = app.create_org("Acme Dental", ORG_PHONE).await;
    let other_org = app.create_org("Bravo Plumbing", OTHER_ORG_PHONE).await;
    let r = app
        .post_admin(
            "/api/leads",
            &json!({"organization_id": id(&org), "phone_number": CALLER,
                    "customer_name": "Maria Lopez", "email": "maria@example.com",
                    "status": "contacted", "notes": "Called twice", "metadata": {"source": "ad"}}),
        )
        .await;
    let lead = ok_json(r, 201).await;
    let path = format!("/api/leads/{}", id(&lead));
    app.create_lead(id(&org), OTHER_CALLER, None).await;

    let same = ok_json(app.patch_admin(&path, &json!({})).await, 200).await;
    for field in [
        "phone_number",
        "customer_name",
        "email",
        "status",
        "notes",
        "metadata",
    ] {
        assert_eq!(same[field], lead[field], "{field}");
    }

    let qualified = ok_json(
        app.patch_admin(&path, &json!({"status": "qualified"}))
            .await,
        200,
    )
    .await;
    assert_eq!(qualified["status"], "qualified");
    assert_eq!(qualified["customer_name"], "Maria Lopez");
    assert_eq!(qualified["email"], "maria@example.com");
    assert_eq!(qualified["notes"], "Called twice");
    assert_eq!(qualified["metadata"], json!({"source": "ad"}));

    let cleared = ok_json(
        app.patch_admin(
            &path,
            &json!({"customer_name": null, "email": null, "notes": null}),
        )
        .await,
        200,
    )
    .await;
    for field in ["customer_name", "email", "notes"] {
        assert_eq!(cleared[field], Value::Null, "{field}");
    }
    assert_eq!(cleared["status"], "qualified");

    let replaced = ok_json(
        app.patch_admin(
            &path,
            &json!({"metadata": {"tags": ["vip"]}, "phone_number": "(612) 978-2030",
                    "customer_name": "María José"}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(
        replaced["metadata"],
        json!({"tags": ["vip"]}),
        "replaced, not merged"
    );
    assert_eq!(replaced["phone_number"], "+16129782030");
    assert_eq!(replaced["customer_name"], "María José");
    assert_eq!(get_lead(&app, id(&lead)).await, replaced);
    // Found under its new number, not under the old one.
    assert_error(find_lead(&app, id(&org), CALLER).await, 404).await;
    ok_json(find_lead(&app, id(&org), "+16129782030").await, 200).await;

    let current = get_lead(&app, id(&lead)).await;
    for body in [
        json!({"status": "vip"}),
        json!({"status": null}),
        json!({"status": 1}),
        json!({"organization_id": other_org["id"]}),
        json!({"organization_id": org["id"]}),
        json!({"organization_id": null}),
        json!({"metadata": null}),
        json!({"metadata": []}),
        json!({"metadata": "text"}),
        json!({"metadata": 3}),
        json!({"phone_number": null}),
        json!({"phone_number": "nope"}),
        json!({"email": "nope"}),
        json!({"customer_name": ["Maria"]}),
        json!({"notes": {"a": 1}}),
        json!({"nickname": "Mary"}),
        json!({"customer_name": "Fine", "nickname": "Mary"}),
    ] {
        let r = app.patch_admin(&path, &body).await;
        assert_eq!(assert_error(r, 422).await, "invalid_field", "{body}");
        assert_eq!(
            get_lead(&app, id(&lead)).await,
            current,
            "{body} changed nothing"
        );
    }

    // Another lead of the organization has this number.
    let r = app
        .patch_admin(&path, &json!({"phone_number": OTHER_CALLER}))
        .await;
    assert_eq!(assert_error(r, 409).await, "conflict");
    assert_eq!(get_lead(&app, id(&lead)).await, current);
}

#[tokio::test]
async fn lead_delete_takes_its_conversations_along() {
    let app = spawn_app().await;
    let org = app.create_org("Acme Dental", ORG_PHONE).await;
    let lead = app.create_lead(id(&org), CALLER, Some("Maria Lopez")).await;
    let keep = app.create_lead(id(&org), OTHER_CALLER, Some("Otto")).await;
    for channel in ["voice", "sms", "email"] {
        add_conversation(&app, id(&lead), json!({"channel": channel})).await;
    }
    add_conversation(&app, id(&keep), json!({"channel": "chat"})).await;
    let lead_id = Uuid::parse_str(id(&lead)).unwrap();
    assert_eq!(
        app.store
            .conversations(lead_id, 100, 0)
            .await
            .unwrap()
            .len(),
        3
    );

    let r = app.delete_admin(&format!("/api/leads/{lead_id}")).await;
    assert_eq!(r.status(), 204);

    assert!(app
        .store
        .conversations(lead_id, 100, 0)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        app.store.conversation_stats(lead_id).await.unwrap().count,
        0
    );
    for path in [
        format!("/api/leads/{lead_id}"),
        format!("/api/leads/{lead_id}/conversations"),
        format!("/api/leads/{lead_id}/context"),
        format!("/api/leads/{lead_id}/summary"),
        format!("/api/leads/{lead_id}/greeting"),
    ] {
        assert_error(app.get_admin(&path).await, 404).await;
    }
    assert_error(find_lead(&app, id(&org), CALLER).await, 404).await;
    assert_error(
        app.delete_admin(&format!("/api/leads/{lead_id}")).await,
        404,
    )
    .await;

    // The other lead and its conversation are untouched.
    let page = ok_json(
        app.get_admin(&format!("/api/leads/{}/conversations", id(&keep)))
            .await,
        200,
    )
    .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
}

// Conversations

#[tokio::test]
async fn conversation_create_validates_and_needs_a_lead() {
    let app = spawn_app().await;
    let org = app.create_org("Acme Dental", ORG_PHONE).await;
    let lead = app.create_lead(id(&org), CALLER, Some("Maria Lopez")).await;
    let path = format!("/api/leads/{}/conversations", id(&lead));

    let minimal = add_conversation(&app, id(&lead), json!({"channel": "chat"})).await;
    Uuid::parse_str(id(&minimal)).unwrap();
    assert_eq!(minimal["lead_id"], lead["id"]);
    assert_eq!(minimal["organization_id"], org["id"]);
    assert_eq!(minimal["channel"], "chat");
    for field in ["external_id", "summary", "transcript", "ended_at"] {
        assert_eq!(minimal[field], Value::Null, "{field}");
    }
    let started = chrono::DateTime::parse_from_rfc3339(minimal["started_at"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc);
    assert!(
        (chrono::Utc::now() - started).num_seconds().abs() < 60,
        "defaults to now"
    );

    let full = add_conversation(
        &app,
        id(&lead),
        json!({"channel": "voice", "external_id": "conv_123", "summary": "Booked",
               "transcript": [{"role": "user", "message": "Hi"}],
               "started_at": "2025-01-10T15:00:00+01:00", "ended_at": "2025-01-10T14:05:00Z"}),
    )
    .await;
    assert_eq!(full["external_id"], "conv_123");
    assert_eq!(full["summary"], "Booked");
    assert_eq!(
        full["transcript"],
        json!([{"role": "user", "message": "Hi"}])
    );
    let started =
        chrono::DateTime::parse_from_rfc3339(full["started_at"].as_str().unwrap()).unwrap();
    assert_eq!(started.timestamp(), 1_736_517_600, "2025-01-10T14:00:00Z");

    for body in [
        json!({}),
        json!({"channel": null}),
        json!({"channel": "fax"}),
        json!({"channel": "Voice"}),
        json!({"channel": 1}),
        json!({"channel": "voice", "started_at": "yesterday"}),
        json!({"channel": "voice", "started_at": 1736517600}),
        json!({"channel": "voice", "started_at": "2025-01-10T15:00:00Z", "ended_at": "2025-01-10T14:59:59Z"}),
        json!({"channel": "voice", "summary": 5}),
        json!({"channel": "voice", "external_id": ""}),
        json!({"channel": "voice", "lead_id": Uuid::new_v4()}),
        json!({"channel": "voice", "organization_id": Uuid::new_v4()}),
    ] {
        let r = app.post_admin(&path, &body).await;
        assert_eq!(assert_error(r, 422).await, "invalid_field", "{body}");
    }

    // An external id is unique.
    let r = app
        .post_admin(
            &path,
            &json!({"channel": "voice", "external_id": "conv_123"}),
        )
        .await;
    assert_eq!(assert_error(r, 409).await, "conflict");

    // No such lead.
    for missing in [Uuid::new_v4().to_string(), "nope".to_string()] {
        let r = app
            .post_admin(
                &format!("/api/leads/{missing}/conversations"),
                &json!({"channel": "voice"}),
            )
            .await;
        assert_eq!(assert_error(r, 404).await, "not_found");
    }

    let page = ok_json(app.get_admin(&path).await, 200).await;
    assert_eq!(
        page["items"].as_array().unwrap().len(),
        2,
        "only the two valid ones"
    );
}

#[tokio::test]
async fn conversation_history_is_newest_first_and_paged() {
    let app = spawn_app().await;
    let org = app.create_org("Acme Dental", ORG_PHONE).await;
    let lead = app.create_lead(id(&org), CALLER, Some("Maria Lopez")).await;
    let path = format!("/api/leads/{}/conversations", id(&lead));

    // Created out of order, on every channel.
    let days = [3, 1, 5, 2, 4];
    let channels = ["voice", "sms", "chat", "email", "voice"];
    for (day, channel) in days.iter().zip(channels) {
        add_conversation(
            &app,
            id(&lead),
            json!({"channel": channel, "summary": format!("day {day}"),
                   "started_at": format!("2025-02-0{day}T10:00:00Z")}),
        )
        .await;
    }
    let summaries = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["summary"].as_str().unwrap().to_string())
            .collect()
    };

    let page = ok_json(app.get_admin(&path).await, 200).await;
    assert_eq!(page["limit"], 20);
    assert_eq!(page["offset"], 0);
    assert_eq!(
        summaries(&page),
        ["day 5", "day 4", "day 3", "day 2", "day 1"]
    );
    let all_channels: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["channel"].as_str().unwrap())
        .collect();
    assert_eq!(all_channels, ["chat", "voice", "voice", "email", "sms"]);

    let page = ok_json(app.get_admin(&format!("{path}?limit=2")).await, 200).await;
    assert_eq!(
        (page["limit"].as_i64(), page["offset"].as_i64()),
        (Some(2), Some(0))
    );
    assert_eq!(summaries(&page), ["day 5", "day 4"]);
    let page = ok_json(
        app.get_admin(&format!("{path}?limit=2&offset=2")).await,
        200,
    )
    .await;
    assert_eq!(page["offset"], 2);
    assert_eq!(summaries(&page), ["day 3", "day 2"]);
    let page = ok_json(
        app.get_admin(&format!("{path}?limit=2&offset=4")).await,
        200,
    )
    .await;
    assert_eq!(summaries(&page), ["day 1"]);
    let page = ok_json(app.get_admin(&format!("{path}?offset=10")).await, 200).await;
    assert!(summaries(&page).is_empty());
    let page = ok_json(app.get_admin(&format!("{path}?limit=100")).await, 200).await;
    assert_eq!(summaries(&page).len(), 5);

    for query in [
        "limit=-1",
        "limit=101",
        "limit=abc",
        "offset=-1",
        "offset=x",
        "limit=",
    ] {
        let r = app.get_admin(&format!("{path}?{query}")).await;
        assert_eq!(assert_error(r, 422).await, "invalid_field", "{query}");
    }

    // A new conversation shows up at once (the history is cached).
    add_conversation(
        &app,
        id(&lead),
        json!({"channel": "sms", "summary": "day 6", "started_at": "2025-02-06T10:00:00Z"}),
    )
    .await;
    let page = ok_json(app.get_admin(&format!("{path}?limit=1")).await, 200).await;
    assert_eq!(summaries(&page), ["day 6"]);
}

// Derived views

#[tokio::test]
async fn context_summary_and_greeting_cover_every_channel() {
    let app = spawn_app().await;
    let org = app.create_org("Acme Dental", ORG_PHONE).await;
    let lead = app.create_lead(id(&org), CALLER, Some("Maria Lopez")).await;
    let lead_id = id(&lead);

    // Without conversations.
    let context = ok_json(
        app.get_admin(&format!("/api/leads/{lead_id}/context"))
            .await,
        200,
    )
    .await;
    assert_eq!(context["lead"]["id"], lead["id"]);
    assert_eq!(context["organization"]["id"], org["id"]);
    assert_eq!(context["conversation_count"], 0);
    assert_eq!(context["recent_conversations"], json!([]));
    let summary = ok_json(
        app.get_admin(&format!("/api/leads/{lead_id}/summary"))
            .await,
        200,
    )
    .await;
    assert_eq!(summary, json!({"lead_id": lead_id, "summary": ""}));

    for (channel, started_at, text) in [
        ("voice", "2025-03-01T15:00:00Z", "Asked about whitening"),
        ("sms", "2025-03-02T15:00:00Z", "Confirmed by text"),
        ("email", "2025-03-03T15:00:00Z", "Sent the invoice"),
    ] {
        add_conversation(
            &app,
            lead_id,
            json!({"channel": channel, "started_at": started_at, "summary": text}),
        )
        .await;
    }

    let context = ok_json(
        app.get_admin(&format!("/api/leads/{lead_id}/context"))
            .await,
        200,
    )
    .await;
    assert_eq!(context["lead"]["customer_name"], "Maria Lopez");
    assert_eq!(context["organization"]["name"], "Acme Dental");
    assert_eq!(context["conversation_count"], 3);
    let recent = context["recent_conversations"].as_array().unwrap();
    let channels: Vec<&str> = recent
        .iter()
        .map(|c| c["channel"].as_str().unwrap())
        .collect();
    assert_eq!(
        channels,
        ["email", "sms", "voice"],
        "newest first, every channel"
    );
    assert_eq!(recent[0]["summary"], "Sent the invoice");

    let summary = ok_json(
        app.get_admin(&format!("/api/leads/{lead_id}/summary"))
            .await,
        200,
    )
    .await;
    assert_eq!(summary["lead_id"], lead_id);
    let text = summary["summary"].as_str().unwrap();
    for part in [
        "Sent the invoice",
        "Confirmed by text",
        "Asked about whitening",
    ] {
        assert!(text.contains(part), "{text}");
    }
    assert!(
        text.find("Sent the invoice") < text.find("Asked about whitening"),
        "newest first: {text}"
    );

    let greeting = ok_json(
        app.get_admin(&format!("/api/leads/{lead_id}/greeting"))
            .await,
        200,
    )
    .await;
    assert_eq!(greeting["lead_id"], lead_id);
    assert_eq!(greeting["channel"], "voice", "voice by default");
    let voice = greeting["greeting"].as_str().unwrap().to_string();
    assert!(voice.contains("Maria"), "{voice}");
    let mut seen = vec![voice];
    for channel in ["voice", "sms", "chat", "email"] {
        let g = ok_json(
            app.get_admin(&format!("/api/leads/{lead_id}/greeting?channel={channel}"))
                .await,
            200,
        )
        .await;
        assert_eq!(g["channel"], channel);
        let text = g["greeting"].as_str().unwrap().to_string();
        assert!(text.contains("Maria"), "{channel}: {text}");
        if channel != "voice" {
            assert!(
                !seen.contains(&text),
                "{channel} has its own greeting: {text}"
            );
        }
        seen.push(text);
    }
    for channel in ["fax", "VOICE", ""] {
        let r = app
            .get_admin(&format!("/api/leads/{lead_id}/greeting?channel={channel}"))
            .await;
        assert_eq!(assert_error(r, 422).await, "invalid_field", "{channel:?}");
    }

    // A change to the lead shows in its views at once.
    app.patch_admin(
        &format!("/api/leads/{lead_id}"),
        &json!({"customer_name": "Zoe Quinn"}),
    )
    .await;
    let greeting = ok_json(
        app.get_admin(&format!("/api/leads/{lead_id}/greeting"))
            .await,
        200,
    )
    .await;
    assert!(
        greeting["greeting"].as_str().unwrap().contains("Zoe"),
        "{greeting}"
    );
    let context = ok_json(
        app.get_admin(&format!("/api/leads/{lead_id}/context"))
            .await,
        200,
    )
    .await;
    assert_eq!(context["lead"]["customer_name"], "Zoe Quinn");
}

#[tokio::test]
async fn every_id_path_answers_404_for_unknown_and_malformed_ids() {
    let app = spawn_app().await;
    let org = app.create_org("Acme Dental", ORG_PHONE).await;
    app.create_lead(id(&org), CALLER, Some("Maria Lopez")).await;
    let ids = [
        Uuid::new_v4().to_string(),
        Uuid::nil().to_string(),
        "not-a-uuid".to_string(),
        "12345".to_string(),
        // The organization's id is no lead's id, and the other way round.
        id(&org).to_string(),
    ];
    for raw in &ids {
        let mut requests: Vec<(Method, String, Option<Value>)> = vec![
            (Method::GET, format!("/api/leads/{raw}"), None),
            (
                Method::PATCH,
                format!("/api/leads/{raw}"),
                Some(json!({"status": "lost"})),
            ),
            (Method::DELETE, format!("/api/leads/{raw}"), None),
            (
                Method::POST,
                format!("/api/leads/{raw}/conversations"),
                Some(json!({"channel": "voice"})),
            ),
            (Method::GET, format!("/api/leads/{raw}/conversations"), None),
            (Method::GET, format!("/api/leads/{raw}/context"), None),
            (Method::GET, format!("/api/leads/{raw}/summary"), None),
            (Method::GET, format!("/api/leads/{raw}/greeting"), None),
            (
                Method::GET,
                format!("/api/leads/{raw}/greeting?channel=sms"),
                None,
            ),
        ];
        if raw != id(&org) {
            requests.extend([
                (Method::GET, format!("/api/organizations/{raw}"), None),
                (
                    Method::PATCH,
                    format!("/api/organizations/{raw}"),
                    Some(json!({"name": "Ghost"})),
                ),
                (Method::DELETE, format!("/api/organizations/{raw}"), None),
            ]);
        }
        for (method, path, body) in requests {
            let r = send(&app, method.clone(), &path, body.as_ref()).await;
            assert_eq!(assert_error(r, 404).await, "not_found", "{method} {path}");
        }
    }
    // Paths the API does not have, and methods a path does not have: JSON errors too.
    for path in ["/api/leads/x/y", "/api/nothing", "/api/organizations/"] {
        let r = app.get_admin(path).await;
        assert_eq!(assert_error(r, 404).await, "not_found", "{path}");
    }
    let lead_path = format!("/api/leads/{}", Uuid::new_v4());
    for (method, path) in [
        (Method::GET, "/api/organizations"),
        (Method::PUT, lead_path.as_str()),
        (Method::DELETE, "/api/leads"),
        (Method::GET, "/webhooks/elevenlabs/conversation-initiation"),
    ] {
        let r = send(&app, method.clone(), path, None).await;
        assert!(r.headers().contains_key("allow"), "{method} {path}");
        let code = assert_error(r, 405).await;
        assert_eq!(code, "method_not_allowed", "{method} {path}");
    }
    get_org(&app, id(&org)).await;
}

#[tokio::test]
async fn error_bodies_never_echo_personal_data() {
    let app = spawn_app().await;
    let org = app.create_org("Acme Dental", ORG_PHONE).await;
    let lead = app.create_lead(id(&org), CALLER, Some("Maria Lopez")).await;
    let attempts = [
        (
            "/api/leads",
            json!({"organization_id": id(&org), "phone_number": CALLER, "customer_name": "Maria Lopez"}),
        ),
        (
            "/api/leads",
            json!({"organization_id": id(&org), "phone_number": "612978202", "customer_name": "Maria Lopez"}),
        ),
        (
            "/api/leads",
            json!({"organization_id": id(&org), "phone_number": OTHER_CALLER, "email": "maria.lopez@@example.com"}),
        ),
        (
            "/api/leads",
            json!({"organization_id": id(&org), "phone_number": OTHER_CALLER, "status": "Maria Lopez"}),
        ),
        (
            "/api/organizations",
            json!({"name": "Acme", "phone_number": ORG_PHONE}),
        ),
        (
            "/api/organizations",
            json!({"name": "Acme", "phone_number": "+1 612 978 20299999"}),
        ),
    ];
    for (path, body) in attempts {
        let r = app.post_admin(path, &body).await;
        let status = r.status().as_u16();
        assert!((400..500).contains(&status), "{body}: {status}");
        let text = r.text().await.unwrap();
        for personal in [
            "Maria",
            "maria",
            "6129782029",
            "612978202",
            "6123241623",
            "7654321",
            "20299999",
        ] {
            assert!(!text.contains(personal), "{personal:?} echoed in {text}");
        }
    }
    let r = app
        .patch_admin(
            &format!("/api/leads/{}", id(&lead)),
            &json!({"phone_number": "Maria's phone"}),
        )
        .await;
    let text = r.text().await.unwrap();
    assert!(!text.contains("Maria"), "{text}");
}
