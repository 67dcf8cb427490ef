//! HTTP endpoints for probes and Prometheus: `/healthz`, `/readyz`, `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CanaryLabels {
    pub name: String,
    pub namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkloadLabels {
    pub workload: String,
    pub namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MetricLabels {
    pub name: String,
    pub namespace: String,
    pub metric: String,
}

/// `bound` is `min` or `max`: a range check has both.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ThresholdLabels {
    pub name: String,
    pub namespace: String,
    pub metric: String,
    pub bound: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub name: String,
    pub namespace: String,
    pub deployment_strategy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub reason: String,
}

/// The operator's metrics, named like Flagger's (`flagger_` becomes `serin_`) so that
/// dashboards carry over.
pub struct Metrics {
    registry: Registry,
    /// 0 running, 1 succeeded (or initialized), 2 failed.
    pub canary_status: Family<CanaryLabels, Gauge>,
    /// Weight per workload: `<target>` carries the canary weight, `<target>-primary`
    /// the rest.
    pub canary_weight: Family<WorkloadLabels, Gauge>,
    pub canary_duration: Family<CanaryLabels, Histogram>,
    pub metric_analysis: Family<MetricLabels, Gauge<f64, AtomicU64>>,
    /// The bounds each check's value is judged against, so that a chart shows the
    /// value and the line it must stay on the right side of.
    pub metric_threshold: Family<ThresholdLabels, Gauge<f64, AtomicU64>>,
    /// How late each analysis step ran after it fell due (its interval after the
    /// previous one). No per-Canary label: with a thousand Canaries the scheduling
    /// question is about the operator, and per-Canary buckets would be most of
    /// `/metrics`.
    pub step_lateness: Histogram,
    pub successes: Family<OutcomeLabels, Counter>,
    pub failures: Family<OutcomeLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub api_requests: Family<ApiLabels, Counter>,
    /// Reconciles whose Canary, from the watch cache, predated Serin's own last
    /// status write for it (they decide from the write instead).
    pub stale_cache_reconciles: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    pub verb: String,
    pub kind: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let info = Family::<Vec<(String, String)>, Gauge>::default();
        info.get_or_create(&vec![(
            "version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        )])
        .set(1);
        registry.register("serin_info", "Serin version", info);
        let canary_status = Family::default();
        registry.register(
            "serin_canary_status",
            "Canary status: 0 running, 1 successful, 2 failed",
            canary_status.clone(),
        );
        let canary_weight = Family::default();
        registry.register(
            "serin_canary_weight",
            "Traffic weight per workload",
            canary_weight.clone(),
        );
        let canary_duration = Family::<CanaryLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 3600.0])
        });
        registry.register(
            "serin_canary_duration_seconds",
            "Seconds from a release's start to its promotion or rollback",
            canary_duration.clone(),
        );
        let metric_analysis = Family::default();
        registry.register(
            "serin_canary_metric_analysis",
            "Last value of each metric check",
            metric_analysis.clone(),
        );
        let metric_threshold = Family::default();
        registry.register(
            "serin_canary_metric_threshold",
            "Threshold of each metric check, by bound (min or max)",
            metric_threshold.clone(),
        );
        let step_lateness = Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0]);
        registry.register(
            "serin_step_lateness_seconds",
            "Seconds an analysis step ran after it was due",
            step_lateness.clone(),
        );
        let successes = Family::default();
        registry.register(
            "serin_canary_successes",
            "Releases promoted",
            successes.clone(),
        );
        let failures = Family::default();
        registry.register(
            "serin_canary_failures",
            "Releases rolled back",
            failures.clone(),
        );
        let reconcile_errors = Family::default();
        registry.register(
            "serin_reconcile_errors",
            "Reconciliations that ended in an error, by reason",
            reconcile_errors.clone(),
        );
        let reconcile_duration = Histogram::new([
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        registry.register(
            "serin_reconcile_duration_seconds",
            "Time spent in one reconciliation",
            reconcile_duration.clone(),
        );
        let api_requests = Family::default();
        registry.register(
            "serin_kube_api_requests",
            "Requests to the Kubernetes API by verb and kind",
            api_requests.clone(),
        );
        let stale_cache_reconciles = Counter::default();
        registry.register(
            "serin_stale_cache_reconciles",
            "Reconciles that found the watch cache behind the operator's own last status write",
            stale_cache_reconciles.clone(),
        );
        Metrics {
            registry,
            canary_status,
            canary_weight,
            canary_duration,
            metric_analysis,
            metric_threshold,
            step_lateness,
            successes,
            failures,
            reconcile_errors,
            reconcile_duration,
            api_requests,
            stale_cache_reconciles,
        }
    }

    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Shared with the controller: metrics, and readiness once caches have synced.
#[derive(Clone)]
pub struct ServerState {
    pub metrics: Arc<Metrics>,
    pub ready: Arc<AtomicBool>,
}

pub fn router(state: ServerState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(s): State<ServerState>) -> impl IntoResponse {
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
    }
}

async fn metrics(State(s): State<ServerState>) -> impl IntoResponse {
    match s.metrics.encode() {
        Ok(body) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("server on {addr} failed: {source}")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub async fn serve(
    addr: SocketAddr,
    state: ServerState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })?;
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| ServerError::Serve { addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn endpoints_answer() {
        let state = ServerState {
            metrics: Arc::new(Metrics::new()),
            ready: Arc::new(AtomicBool::new(false)),
        };
        state
            .metrics
            .canary_weight
            .get_or_create(&WorkloadLabels {
                workload: "podinfo".into(),
                namespace: "test".into(),
            })
            .set(20);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let get = |path: &str| {
            let url = format!("http://{addr}{path}");
            async move {
                let _ = rustls::crypto::ring::default_provider().install_default();
                let r = reqwest::get(url).await.unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            }
        };
        assert_eq!(get("/healthz").await.0, 200);
        assert_eq!(get("/readyz").await.0, 503);
        state.ready.store(true, Ordering::Relaxed);
        assert_eq!(get("/readyz").await.0, 200);
        let (code, body) = get("/metrics").await;
        assert_eq!(code, 200);
        assert!(body.contains("serin_info{version=\""), "{body}");
        assert!(
            body.contains("serin_canary_weight{workload=\"podinfo\",namespace=\"test\"} 20"),
            "{body}"
        );
    }
}
