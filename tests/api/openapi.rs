//! The OpenAPI document against the router it describes: every documented operation is routed
//! (a request reaches its handler, not the fallback), every other method on a documented path
//! is a 405, and every path of the contract is documented. Routes can only be registered
//! through `utoipa_axum::routes!` (clippy refuses `Router::route`, see `clippy.toml`), so a
//! route cannot exist without its operation in the document.

use std::collections::BTreeSet;
use std::process::Command;

use reqwest::Method;
use serde_json::Value;

use crate::support::app::spawn_app;

/// Every path of the external contract.
const CONTRACT_PATHS: [&str; 30] = [
    "/webhooks/elevenlabs/conversation-initiation",
    "/webhooks/elevenlabs/post-call",
    "/api/organizations",
    "/api/organizations/{id}",
    "/api/leads",
    "/api/leads/{id}",
    "/api/leads/{id}/conversations",
    "/api/leads/{id}/context",
    "/api/leads/{id}/summary",
    "/api/leads/{id}/greeting",
    "/api/calls",
    "/api/calls/{call_id}",
    "/api/calls/{call_id}/events",
    "/api/calls/{call_id}/stream",
    "/api/events",
    "/api/admin/messages",
    "/api/admin/messages/{id}",
    "/healthz",
    "/metrics",
    "/dashboard",
    "/api/openapi.json",
    "/api/monitoring/health",
    "/api/monitoring/health/redis",
    "/api/monitoring/cache/invalidate",
    "/api/monitoring/metrics",
    "/api/monitoring/metrics/performance",
    "/api/monitoring/stats/cache",
    "/api/monitoring/alerts",
    "/api/monitoring/stream",
    "/api/monitoring/instances",
];

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// A concrete URL path for a templated one.
fn concrete(path: &str) -> String {
    path.replace("{id}", "3f2b8c1e-5d4a-4e6b-9c7d-1a2b3c4d5e6f")
        .replace("{call_id}", "CA-openapi-test")
}

fn operations(document: &Value) -> Vec<(String, String)> {
    let mut ops = Vec::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("a path item").keys() {
            if METHODS.contains(&method.as_str()) {
                ops.push((path.clone(), method.clone()));
            }
        }
    }
    ops
}

#[tokio::test]
async fn every_documented_operation_is_routed_and_no_other_method_is() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(app.url("/api/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "the document needs no token");
    let document: Value = response.json().await.unwrap();
    assert!(
        document["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        document["openapi"]
    );

    let ops = operations(&document);
    let documented: BTreeSet<&str> = ops.iter().map(|(p, _)| p.as_str()).collect();
    let contract: BTreeSet<&str> = CONTRACT_PATHS.into_iter().collect();
    assert_eq!(
        documented, contract,
        "the document's paths are not the contract's"
    );

    for path in &documented {
        for method in METHODS {
            let is_documented = ops.iter().any(|(p, m)| p == path && m == method);
            // No token and no body: a routed operation answers from its handler (401 where a
            // token is wanted, else its own answer); only the fallbacks answer 404 or 405.
            let response = app
                .client
                .request(
                    Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
                    app.url(&concrete(path)),
                )
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            if is_documented {
                assert!(
                    status != 404 && status != 405,
                    "{method} {path} is documented but answered {status}"
                );
            } else {
                assert_eq!(status, 405, "{method} {path} is not documented");
                let allow = response
                    .headers()
                    .get("allow")
                    .map(|v| v.to_str().unwrap().to_lowercase())
                    .unwrap_or_default();
                for (p, m) in &ops {
                    if p == path {
                        assert!(
                            allow.contains(m.as_str()),
                            "405 on {path} does not allow {m}: {allow:?}"
                        );
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn the_document_names_its_security_and_errors() {
    let app = spawn_app().await;
    let document: Value = app
        .client
        .get(app.url("/api/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let schemes = document["components"]["securitySchemes"]
        .as_object()
        .unwrap();
    for scheme in ["admin_token", "webhook_secret", "elevenlabs_signature"] {
        assert!(schemes.contains_key(scheme), "{scheme} is not defined");
    }
    let security = |path: &str, method: &str| -> Vec<String> {
        document["paths"][path][method]["security"]
            .as_array()
            .map(|s| {
                s.iter()
                    .flat_map(|r| r.as_object().unwrap().keys().cloned())
                    .collect()
            })
            .unwrap_or_default()
    };
    for (path, method) in operations(&document) {
        let expected: &[&str] = if path == "/webhooks/elevenlabs/conversation-initiation" {
            &["webhook_secret"]
        } else if path == "/webhooks/elevenlabs/post-call" {
            &["elevenlabs_signature"]
        } else if path == "/api/monitoring/cache/invalidate"
            || (path.starts_with("/api/")
                && !path.starts_with("/api/monitoring/")
                && path != "/api/openapi.json")
        {
            &["admin_token"]
        } else {
            &[]
        };
        assert_eq!(
            security(&path, &method),
            expected,
            "{method} {path} names the wrong token"
        );
        let responses = document["paths"][&path][&method]["responses"]
            .as_object()
            .unwrap();
        if !expected.is_empty() {
            assert!(
                responses.contains_key("401"),
                "{method} {path} lacks its 401"
            );
        }
        if document["paths"][&path][&method]
            .get("requestBody")
            .is_some()
        {
            for status in ["400", "413"] {
                assert!(
                    responses.contains_key(status),
                    "{method} {path} lacks its {status}"
                );
            }
        }
    }
    // Nothing in it comes from the data: the same document on any instance, and from the CLI.
    let printed = Command::new(env!("CARGO_BIN_EXE_hotline"))
        .arg("openapi")
        .output()
        .unwrap();
    assert!(printed.status.success());
    let printed: Value = serde_json::from_slice(&printed.stdout).unwrap();
    assert_eq!(printed, document, "hotline openapi prints another document");
}
