//! A webhook receiver for operator tests: an HTTP server on loopback that records
//! every request (path, method, JSON body) and answers with a status chosen per
//! path (200 unless set), so a test can gate or fail a rollout from outside.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use serde_json::Value;

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct WebhookCall {
    pub method: String,
    pub path: String,
    /// The body as JSON (Value::Null when empty or not JSON).
    pub body: Value,
    /// Request headers, names lower-cased, for checking credentials were sent.
    pub headers: Vec<(String, String)>,
    pub at: Instant,
}

#[derive(Default)]
struct Shared {
    calls: Mutex<Vec<WebhookCall>>,
    status: Mutex<HashMap<String, u16>>,
}

/// Runs until dropped.
pub struct WebhookReceiver {
    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub base: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

async fn handle(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let path = uri.path().to_string();
    let code = s
        .status
        .lock()
        .ok()
        .and_then(|m| m.get(&path).copied())
        .unwrap_or(200);
    if let Ok(mut calls) = s.calls.lock() {
        calls.push(WebhookCall {
            method: method.to_string(),
            path,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            headers: headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
                .collect(),
            at: Instant::now(),
        });
    }
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl WebhookReceiver {
    /// Starts a receiver on 127.0.0.1 with a free port.
    pub async fn start() -> Result<WebhookReceiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the webhook receiver")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(WebhookReceiver {
            base: format!("http://{addr}"),
            shared,
            task,
        })
    }

    /// Full URL of `path` (e.g. "/confirm-promotion").
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Answer requests to `path` with `status` from now on.
    pub fn set_status(&self, path: &str, status: u16) {
        if let Ok(mut m) = self.shared.status.lock() {
            m.insert(path.to_string(), status);
        }
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<WebhookCall> {
        self.shared
            .calls
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
    }

    /// Calls to `path` so far.
    pub fn calls_to(&self, path: &str) -> Vec<WebhookCall> {
        self.calls()
            .into_iter()
            .filter(|c| c.path == path)
            .collect()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_calls_and_answers_the_configured_status() {
        crate::ensure_crypto();
        let rx = WebhookReceiver::start().await.unwrap();
        rx.set_status("/gate", 403);
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let r = http
            .post(rx.url("/gate"))
            .body(r#"{"name":"app","phase":"Progressing"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        let r = http.post(rx.url("/other")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let calls = rx.calls_to("/gate");
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].body["phase"], "Progressing");
        assert_eq!(rx.calls().len(), 2);
    }
}
