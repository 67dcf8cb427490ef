//! `serin-sample-app`: a podinfo-like HTTP app whose behaviour (version, error
//! rate, latency, readiness, crashes) is set by flags or environment, so a pod
//! template change makes a good or a bad release.
//!
//! Endpoints: `/` (JSON with the version; header `x-version`), `/version`,
//! `/healthz`, `/readyz`, `/metrics` (`http_request_duration_seconds` histogram
//! with a `status` label).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::Parser;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "serin-sample-app",
    about = "podinfo-like sample app for Serin's e2e tests"
)]
struct Args {
    /// Port to listen on.
    #[arg(long, env = "PORT", default_value_t = 8080)]
    port: u16,
    /// Address to bind (inside a pod's network namespace, all addresses are the pod's).
    #[arg(long, env = "BIND", default_value = "0.0.0.0")]
    bind: String,
    /// Version reported by `/` and `/version`.
    #[arg(long, env = "VERSION", default_value = "v1")]
    version: String,
    /// Share of `/` requests answered with 500 (0.0 - 1.0), spread evenly.
    #[arg(long, env = "ERROR_RATE", default_value_t = 0.0)]
    error_rate: f64,
    /// Latency added to every `/` request, in milliseconds.
    #[arg(long, env = "LATENCY_MS", default_value_t = 0)]
    latency_ms: u64,
    /// When false, `/readyz` answers 503.
    #[arg(long, env = "READY", default_value_t = true, action = clap::ArgAction::Set)]
    ready: bool,
    /// When false, `/healthz` answers 500 (liveness probes fail).
    #[arg(long, env = "HEALTHY", default_value_t = true, action = clap::ArgAction::Set)]
    healthy: bool,
    /// Exit with code 1: "true"/"now"/"0" right away, or after N seconds.
    #[arg(long, env = "CRASH")]
    crash: Option<String>,
    /// Free text echoed by `/` (e.g. from a ConfigMap, for config-tracking tests).
    #[arg(long, env = "MESSAGE", default_value = "")]
    message: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

struct AppState {
    args: Args,
    pod: String,
    requests: AtomicU64,
    errors: AtomicU64,
    duration: Family<StatusLabel, Histogram>,
    registry: Registry,
}

fn new_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

impl AppState {
    /// Deterministic error spreading: the n-th request fails when the number of
    /// errors owed (floor(n * rate)) grows, so the share is exact over any window.
    fn should_fail(&self) -> bool {
        let rate = self.args.error_rate.clamp(0.0, 1.0);
        if rate <= 0.0 {
            return false;
        }
        let n = self.requests.fetch_add(1, Ordering::SeqCst) + 1;
        let owed = (n as f64 * rate).floor() as u64;
        let done = self.errors.load(Ordering::SeqCst);
        if owed > done {
            self.errors.fetch_add(1, Ordering::SeqCst);
            true
        } else {
            false
        }
    }

    fn observe(&self, status: StatusCode, started: Instant) {
        self.duration
            .get_or_create(&StatusLabel {
                status: status.as_u16().to_string(),
            })
            .observe(started.elapsed().as_secs_f64());
    }
}

fn with_version(state: &AppState, status: StatusCode, body: serde_json::Value) -> Response {
    let mut resp = (status, axum::Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&state.args.version) {
        resp.headers_mut().insert("x-version", v);
    }
    resp
}

async fn root(State(state): State<Arc<AppState>>) -> Response {
    let started = Instant::now();
    if state.args.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(state.args.latency_ms)).await;
    }
    let fail = state.should_fail();
    let status = if fail {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    let body = serde_json::json!({
        "version": state.args.version,
        "pod": state.pod,
        "message": state.args.message,
        "error": fail,
    });
    let resp = with_version(&state, status, body);
    state.observe(status, started);
    resp
}

async fn version(State(state): State<Arc<AppState>>) -> Response {
    let started = Instant::now();
    let resp = with_version(
        &state,
        StatusCode::OK,
        serde_json::json!({ "version": state.args.version }),
    );
    state.observe(StatusCode::OK, started);
    resp
}

async fn healthz(State(state): State<Arc<AppState>>) -> (StatusCode, &'static str) {
    if state.args.healthy {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::INTERNAL_SERVER_ERROR, "unhealthy")
    }
}

async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, &'static str) {
    if state.args.ready {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut buf = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut buf, &state.registry) {
        return (StatusCode::INTERNAL_SERVER_ERROR, format!("encode: {e}")).into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        buf,
    )
        .into_response()
}

fn crash_delay(spec: &str) -> Option<Duration> {
    match spec.trim().to_ascii_lowercase().as_str() {
        "" | "false" | "no" | "off" => None,
        "true" | "yes" | "now" | "0" => Some(Duration::ZERO),
        other => other.parse::<f64>().ok().map(Duration::from_secs_f64),
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Some(delay) = args.crash.as_deref().and_then(crash_delay) {
        if delay.is_zero() {
            eprintln!("serin-sample-app {}: CRASH set, exiting", args.version);
            std::process::exit(1);
        }
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            eprintln!("serin-sample-app: CRASH after {delay:?}, exiting");
            std::process::exit(1);
        });
    }

    let duration =
        Family::<StatusLabel, Histogram>::new_with_constructor(new_histogram as fn() -> Histogram);
    let mut registry = Registry::default();
    registry.register(
        "http_request_duration_seconds",
        "Duration of HTTP requests by status code",
        duration.clone(),
    );
    let pod = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_default();
    let addr: SocketAddr = match format!("{}:{}", args.bind, args.port).parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "serin-sample-app: bad address {}:{}: {e}",
                args.bind, args.port
            );
            std::process::exit(2);
        }
    };
    let state = Arc::new(AppState {
        args,
        pod,
        requests: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        duration,
        registry,
    });
    let app = Router::new()
        .route("/", get(root))
        .route("/version", get(version))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state.clone());
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("serin-sample-app: cannot listen on {addr}: {e}");
            std::process::exit(2);
        }
    };
    eprintln!(
        "serin-sample-app {} listening on {addr} (error_rate={}, latency_ms={}, ready={})",
        state.args.version, state.args.error_rate, state.args.latency_ms, state.args.ready
    );
    let shutdown = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        // What a preStop sleep does in production: the pod's endpoint is withdrawn as
        // it terminates, but the data plane learns that a moment later (Traefik: a
        // watch plus a 1 s throttle); until then requests still arrive and must be
        // answered. Within the simulator's 5 s grace cap.
        let delay = std::env::var("SHUTDOWN_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3000u64);
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        eprintln!("serin-sample-app: server error: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(rate: f64) -> AppState {
        let args = Args::parse_from(["x", "--error-rate", &rate.to_string()]);
        AppState {
            args,
            pod: String::new(),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            duration: Family::new_with_constructor(new_histogram as fn() -> Histogram),
            registry: Registry::default(),
        }
    }

    #[test]
    fn error_rate_is_exact_over_a_window() {
        let s = state(0.2);
        let fails = (0..1000).filter(|_| s.should_fail()).count();
        assert_eq!(fails, 200);
        let s = state(0.0);
        assert_eq!((0..100).filter(|_| s.should_fail()).count(), 0);
        let s = state(1.0);
        assert_eq!((0..100).filter(|_| s.should_fail()).count(), 100);
    }

    #[test]
    fn crash_spec() {
        assert_eq!(crash_delay("true"), Some(Duration::ZERO));
        assert_eq!(crash_delay("2"), Some(Duration::from_secs(2)));
        assert_eq!(crash_delay("false"), None);
    }
}
