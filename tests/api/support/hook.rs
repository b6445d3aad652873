//! A tiny HTTP server standing in for an alert receiver (`ALERT_WEBHOOK_URL`): it records the
//! JSON body of every POST to `/hook` and answers 204.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::Value;

type Received = Arc<Mutex<Vec<Value>>>;

pub struct AlertHook {
    /// `http://127.0.0.1:<port>/hook`
    pub url: String,
    received: Received,
    server: tokio::task::JoinHandle<()>,
}

impl AlertHook {
    pub async fn start() -> AlertHook {
        async fn hook(State(received): State<Received>, Json(body): Json<Value>) -> StatusCode {
            received.lock().expect("lock").push(body);
            StatusCode::NO_CONTENT
        }
        let received: Received = Arc::default();
        // A stand-in for the operator's alert receiver, not a route of hotline's API.
        #[allow(clippy::disallowed_methods)]
        let app = Router::new()
            .route("/hook", post(hook))
            .with_state(received.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the alert receiver");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        AlertHook {
            url,
            received,
            server,
        }
    }

    /// Every body received so far, in order.
    pub fn received(&self) -> Vec<Value> {
        self.received.lock().expect("lock").clone()
    }

    /// The notification for `alert` with `status` (`firing`, `resolved`), if one came.
    pub fn find(&self, alert: &str, status: &str) -> Option<Value> {
        self.received()
            .into_iter()
            .find(|b| b["alert"]["name"] == alert && b["status"] == status)
    }
}

impl Drop for AlertHook {
    fn drop(&mut self) {
        self.server.abort();
    }
}
