//! `serin tester`: a small HTTP service users deploy next to their apps, the
//! counterpart of Flagger's loadtester, with manual gates and a native load
//! generator. It runs no shell commands: a webhook cannot make it execute anything,
//! which is why Flagger's `cmd`/`bash` metadata is refused rather than emulated.
//!
//! Endpoints (all take Flagger's webhook payload as JSON where a Canary is named):
//! - `POST /gate/approve` 200, `POST /gate/halt` 403 (fixed answers);
//! - `POST /gate/check` 200 when the Canary's gate is open, else 403;
//!   `POST /gate/open`, `POST /gate/close` change it;
//! - `POST /rollback/check` 200 (= roll back) when open, else 403;
//!   `POST /rollback/open`, `POST /rollback/close`;
//! - `POST /` with `metadata.type: load` starts load (see [`LoadSpec`]);
//! - `GET /healthz`.

mod load;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

pub use load::{LoadError, LoadReport, LoadSpec, run_load};

#[derive(Debug, thiserror::Error)]
pub enum TesterError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serving: {0}")]
    Serve(#[source] std::io::Error),
}

/// Bounds on what one webhook may ask of the load generator.
#[derive(Debug, Clone, PartialEq)]
pub struct TesterConfig {
    pub max_rate: f64,
    pub max_duration: Duration,
    pub max_requests: u64,
    pub max_in_flight: usize,
    pub request_timeout: Duration,
}

impl Default for TesterConfig {
    fn default() -> Self {
        TesterConfig {
            max_rate: 1000.0,
            max_duration: Duration::from_secs(3600),
            max_requests: 1_000_000,
            max_in_flight: 256,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Gates are per Canary: `namespace/name` from the webhook payload.
type CanaryKey = (String, String);

struct Tester {
    cfg: TesterConfig,
    /// The client is built once; its failure (no TLS provider) is reported on the
    /// load endpoint instead of crashing the gates, which do not need it.
    http: Result<reqwest::Client, String>,
    gates: Mutex<HashMap<CanaryKey, bool>>,
    rollbacks: Mutex<HashMap<CanaryKey, bool>>,
    /// Loads in progress, so a webhook retried every interval does not pile up
    /// generators (Flagger's loadtester likewise skips a command already running).
    running: Arc<Mutex<HashSet<String>>>,
}

/// Flagger's webhook payload; only what the tester reads.
#[derive(Debug, Deserialize)]
struct Payload {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    metadata: Option<serde_json::Value>,
}

impl Payload {
    fn key(&self) -> CanaryKey {
        (
            self.namespace.clone().unwrap_or_else(|| "default".into()),
            self.name.clone(),
        )
    }
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// Parses the webhook payload; the error is the 400 answer to send.
fn parse(body: &str) -> Result<Payload, Box<Response>> {
    serde_json::from_str(body).map_err(|e| {
        Box::new(reply(
            StatusCode::BAD_REQUEST,
            json!({"error": format!("expected a webhook payload with name and namespace: {e}")}),
        ))
    })
}

/// A poisoned lock only means another handler panicked mid-update of a bool map;
/// the map is still usable, so recover it rather than failing every later request.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Clone, Copy)]
enum Which {
    Gate,
    Rollback,
}

impl Tester {
    fn map(&self, which: Which) -> &Mutex<HashMap<CanaryKey, bool>> {
        match which {
            Which::Gate => &self.gates,
            Which::Rollback => &self.rollbacks,
        }
    }
}

async fn check(t: &Tester, which: Which, body: &str) -> Response {
    let p = match parse(body) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let key = p.key();
    let open = lock(t.map(which)).get(&key).copied().unwrap_or(false);
    let what = match which {
        Which::Gate => "gate",
        Which::Rollback => "rollback gate",
    };
    let state = if open { "open" } else { "closed" };
    let status = if open {
        StatusCode::OK
    } else {
        StatusCode::FORBIDDEN
    };
    reply(
        status,
        json!({"message": format!("{what} {state} for {}/{}", key.0, key.1)}),
    )
}

async fn set(t: &Tester, which: Which, open: bool, body: &str) -> Response {
    let p = match parse(body) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let key = p.key();
    lock(t.map(which)).insert(key.clone(), open);
    let what = match which {
        Which::Gate => "gate",
        Which::Rollback => "rollback gate",
    };
    let state = if open { "opened" } else { "closed" };
    tracing::info!(namespace = %key.0, name = %key.1, "{what} {state}");
    reply(
        StatusCode::ACCEPTED,
        json!({"message": format!("{what} {state} for {}/{}", key.0, key.1)}),
    )
}

async fn start_load(t: Arc<Tester>, body: String) -> Response {
    let p = match parse(&body) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let spec = match LoadSpec::from_metadata(p.metadata.as_ref(), &t.cfg) {
        Ok(s) => s,
        Err(e) => return reply(StatusCode::BAD_REQUEST, json!({"error": e.to_string()})),
    };
    let http = match &t.http {
        Ok(h) => h.clone(),
        Err(e) => return reply(StatusCode::INTERNAL_SERVER_ERROR, json!({"error": e})),
    };
    let key = p.key();
    let run_key = format!("{}/{} {} {}", key.0, key.1, spec.method, spec.url);
    if !lock(&t.running).insert(run_key.clone()) {
        return reply(
            StatusCode::OK,
            json!({"status": "running", "message": "this load is already running"}),
        );
    }
    tracing::info!(
        namespace = %key.0, name = %key.1, url = %spec.url, rate = spec.rate,
        duration = ?spec.duration, requests = spec.requests, "load started"
    );
    let requests = spec.requests;
    let blocking = spec.blocking;
    let cfg = t.cfg.clone();
    let running = t.running.clone();
    let task = tokio::spawn(async move {
        let report = run_load(&http, &spec, &cfg).await;
        lock(&running).remove(&run_key);
        tracing::info!(
            sent = report.sent,
            ok = report.ok,
            failed = report.failed(),
            "load finished"
        );
        report
    });
    if !blocking {
        return reply(
            StatusCode::ACCEPTED,
            json!({"status": "started", "requests": requests}),
        );
    }
    match task.await {
        Ok(report) => reply(StatusCode::OK, json!({"status": "done", "report": report})),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": format!("load task: {e}")}),
        ),
    }
}

/// The tester's routes with default limits (for tests and `serve`).
pub fn router() -> Router {
    router_with(TesterConfig::default())
}

pub fn router_with(cfg: TesterConfig) -> Router {
    // reqwest is built without a TLS provider of its own; the process-wide ring
    // provider may already be installed by main, in which case this is a no-op.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .timeout(cfg.request_timeout)
        .build()
        .map_err(|e| format!("HTTP client unavailable: {e}"));
    let t = Arc::new(Tester {
        cfg,
        http,
        gates: Mutex::default(),
        rollbacks: Mutex::default(),
        running: Arc::default(),
    });
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/gate/approve",
            post(|| async { reply(StatusCode::OK, json!({"message": "approved"})) }),
        )
        .route(
            "/gate/halt",
            post(|| async { reply(StatusCode::FORBIDDEN, json!({"message": "halted"})) }),
        )
        .route(
            "/gate/check",
            post(|State(t): State<Arc<Tester>>, b: String| async move {
                check(&t, Which::Gate, &b).await
            }),
        )
        .route(
            "/gate/open",
            post(|State(t): State<Arc<Tester>>, b: String| async move {
                set(&t, Which::Gate, true, &b).await
            }),
        )
        .route(
            "/gate/close",
            post(|State(t): State<Arc<Tester>>, b: String| async move {
                set(&t, Which::Gate, false, &b).await
            }),
        )
        .route(
            "/rollback/check",
            post(|State(t): State<Arc<Tester>>, b: String| async move {
                check(&t, Which::Rollback, &b).await
            }),
        )
        .route(
            "/rollback/open",
            post(|State(t): State<Arc<Tester>>, b: String| async move {
                set(&t, Which::Rollback, true, &b).await
            }),
        )
        .route(
            "/rollback/close",
            post(|State(t): State<Arc<Tester>>, b: String| async move {
                set(&t, Which::Rollback, false, &b).await
            }),
        )
        .route(
            "/",
            post(|State(t): State<Arc<Tester>>, b: String| start_load(t, b)),
        )
        .with_state(t)
}

/// Serves the tester on `addr` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), TesterError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| TesterError::Bind { addr, source })?;
    tracing::info!(%addr, "serin tester listening");
    axum::serve(listener, router())
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(TesterError::Serve)
}

#[cfg(test)]
mod tests;
