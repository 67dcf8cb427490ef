//! Built-in queries of the families with no data plane on the local cluster (Istio,
//! SMI, Linkerd, NGINX), run by the operator's own Prometheus client against the
//! cluster's real Prometheus. The series come from an exporter this test starts on
//! loopback, in the label shapes of the real exporters, scraped through the
//! `exporters` file_sd job of `cluster.sh`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::Router;
use axum::routing::get;
use serin::analysis::builtin::{self, BuiltinMetric, GatewayMetrics, MetricsLabels};
use serin::analysis::prometheus::PromClient;
use serin::analysis::template::TemplateModel;
use serin::crd::Provider;
use serin_e2e::{ClusterEnv, unique_name, wait_for};

/// Requests per second the fake exporters count, per series.
struct Rates {
    ok: f64,
    errors: f64,
}

const ISTIO: Rates = Rates {
    ok: 98.0,
    errors: 2.0,
};
const LINKERD: Rates = Rates {
    ok: 97.0,
    errors: 3.0,
};
const NGINX: Rates = Rates {
    ok: 99.0,
    errors: 1.0,
};
/// An ingress scraped through a ServiceMonitor: its namespace is `exported_namespace`.
const NGINX_EXPORTED: Rates = Rates {
    ok: 95.0,
    errors: 5.0,
};

/// Latency buckets (ms) and the share of requests at or below each: P99 falls in
/// (100, 250], 9/10 of the way, so histogram_quantile gives 235 ms.
const BUCKETS: [(&str, f64); 4] = [("50", 0.5), ("100", 0.9), ("250", 1.0), ("+Inf", 1.0)];
const P99_MS: f64 = 235.0;
/// NGINX's built-in is the mean upstream latency.
const NGINX_MEAN_S: f64 = 0.12;

/// Counters that grow linearly from the exporter's start, so every rate and ratio
/// over them is exact.
fn exposition(ns: &str, t: f64) -> String {
    let mut out = String::new();
    let mut line = |name: &str, labels: &str, v: f64| {
        let _ = writeln!(out, "{name}{{{labels}}} {v}");
    };
    // Istio's proxies: destination-reported requests and a source-reported twin
    // the query must leave out.
    let dst = format!(
        r#"reporter="destination",destination_workload_namespace="{ns}",destination_workload="podinfo""#
    );
    line(
        "istio_requests_total",
        &format!(r#"{dst},response_code="200""#),
        ISTIO.ok * t,
    );
    line(
        "istio_requests_total",
        &format!(r#"{dst},response_code="503""#),
        ISTIO.errors * t,
    );
    line(
        "istio_requests_total",
        &format!(
            r#"reporter="source",destination_workload_namespace="{ns}",destination_workload="podinfo",response_code="500""#
        ),
        500.0 * t,
    );
    let total = (ISTIO.ok + ISTIO.errors) * t;
    for (le, share) in BUCKETS {
        line(
            "istio_request_duration_milliseconds_bucket",
            &format!(r#"{dst},le="{le}""#),
            share * total,
        );
    }
    // Linkerd's proxies, as Linkerd's scrape config labels them.
    let inbound = format!(r#"namespace="{ns}",deployment="podinfo",direction="inbound""#);
    line(
        "response_total",
        &format!(r#"{inbound},classification="success",status_code="200""#),
        LINKERD.ok * t,
    );
    line(
        "response_total",
        &format!(r#"{inbound},classification="failure",status_code="500""#),
        LINKERD.errors * t,
    );
    line(
        "response_total",
        &format!(
            r#"namespace="{ns}",deployment="podinfo",direction="outbound",classification="failure",status_code="500""#
        ),
        400.0 * t,
    );
    let total = (LINKERD.ok + LINKERD.errors) * t;
    for (le, share) in BUCKETS {
        line(
            "response_latency_ms_bucket",
            &format!(r#"{inbound},le="{le}""#),
            share * total,
        );
    }
    // The NGINX ingress controller: one ingress as its own Prometheus sees it, one
    // as a ServiceMonitor does (the controller's namespace in `namespace`).
    for (ingress, ns_label, rates) in [
        ("podinfo", format!(r#"namespace="{ns}""#), NGINX),
        (
            "podinfo-op",
            format!(r#"namespace="ingress-nginx",exported_namespace="{ns}""#),
            NGINX_EXPORTED,
        ),
    ] {
        let sel = format!(r#"{ns_label},ingress="{ingress}""#);
        line(
            "nginx_ingress_controller_requests",
            &format!(r#"{sel},status="200""#),
            rates.ok * t,
        );
        line(
            "nginx_ingress_controller_requests",
            &format!(r#"{sel},status="503""#),
            rates.errors * t,
        );
        let total = (rates.ok + rates.errors) * t;
        line(
            "nginx_ingress_controller_ingress_upstream_latency_seconds_sum",
            &sel,
            NGINX_MEAN_S * total,
        );
        line(
            "nginx_ingress_controller_ingress_upstream_latency_seconds_count",
            &sel,
            total,
        );
    }
    out
}

/// The exporter's scrape target, removed when dropped.
struct Target(PathBuf);

impl Drop for Target {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn start_exporter(env: &ClusterEnv, ns: &str) -> Result<Target> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let started = Instant::now();
    let ns = ns.to_string();
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let ns = ns.clone();
            async move { exposition(&ns, 100.0 + started.elapsed().as_secs_f64()) }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let dir = env.state_dir.join("prometheus").join("exporters");
    anyhow::ensure!(
        dir.is_dir(),
        "{} missing: restart the cluster with this cluster.sh (`e2e/cluster.sh up`)",
        dir.display()
    );
    let file = dir.join(format!("{}.json", unique_name("families")));
    let tmp = file.with_extension("tmp");
    std::fs::write(
        &tmp,
        serde_json::json!([{"targets": [addr.to_string()]}]).to_string(),
    )
    .context("writing the exporter's file_sd entry")?;
    // Prometheus must never read a half-written file.
    std::fs::rename(&tmp, &file)?;
    Ok(Target(file))
}

fn model(ns: &str, ingress: &str) -> TemplateModel {
    TemplateModel {
        name: "podinfo".into(),
        namespace: ns.into(),
        target: "podinfo".into(),
        service: "podinfo".into(),
        ingress: ingress.into(),
        route: "podinfo".into(),
        interval: "30s".into(),
        variables: Default::default(),
    }
}

#[tokio::test]
async fn builtins_of_every_family_read_recorded_series() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("builtins_families") else {
        return Ok(());
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ns = unique_name("fam");
    let _target = start_exporter(&env, &ns).await?;
    let prom = PromClient::new(
        &reqwest::Client::new(),
        &env.prometheus,
        None,
        None,
        false,
        Duration::from_secs(10),
    )?;
    let smi = Provider::parse("smi:v1alpha3").context("smi provider")?;
    type Case = (Provider, GatewayMetrics, &'static str, BuiltinMetric, f64);
    use BuiltinMetric::{RequestDuration as Dur, RequestSuccessRate as Rate};
    let cases: Vec<Case> = vec![
        (
            Provider::Istio,
            GatewayMetrics::Traefik,
            "podinfo",
            Rate,
            98.0,
        ),
        (
            Provider::Istio,
            GatewayMetrics::Traefik,
            "podinfo",
            Dur,
            P99_MS,
        ),
        (smi, GatewayMetrics::Traefik, "podinfo", Rate, 98.0),
        (smi, GatewayMetrics::Traefik, "podinfo", Dur, P99_MS),
        // Gateway API on Istio reads Istio's metrics (Flagger's behaviour).
        (
            Provider::GatewayApiV1,
            GatewayMetrics::Istio,
            "podinfo",
            Rate,
            98.0,
        ),
        (
            Provider::Linkerd,
            GatewayMetrics::Traefik,
            "podinfo",
            Rate,
            97.0,
        ),
        (
            Provider::Linkerd,
            GatewayMetrics::Traefik,
            "podinfo",
            Dur,
            P99_MS,
        ),
        (
            Provider::Nginx,
            GatewayMetrics::Traefik,
            "podinfo",
            Rate,
            99.0,
        ),
        (
            Provider::Nginx,
            GatewayMetrics::Traefik,
            "podinfo",
            Dur,
            NGINX_MEAN_S * 1000.0,
        ),
        (
            Provider::Nginx,
            GatewayMetrics::Traefik,
            "podinfo-op",
            Rate,
            95.0,
        ),
    ];
    for (provider, gateway, ingress, metric, want) in cases {
        let q = builtin::query(
            provider,
            gateway,
            MetricsLabels::Any,
            metric,
            &model(&ns, ingress),
        )?;
        let what = format!("{} {} ({ingress})", provider.as_str(), metric.as_str());
        // The first scrapes take a few seconds to reach a rate window.
        let got = wait_for(&what, Duration::from_secs(40), || async {
            Ok(prom.query(&q).await?)
        })
        .await
        .with_context(|| format!("{what}: {q}"))?;
        assert!(
            (got - want).abs() < 0.01,
            "{what}: got {got}, want {want}\n{q}"
        );
        // The request count built-in (minSampleCount) sees the same requests.
        let count = builtin::query(
            provider,
            gateway,
            MetricsLabels::Any,
            BuiltinMetric::RequestCount,
            &model(&ns, ingress),
        )?;
        let n = prom.query(&count).await?.unwrap_or(0.0);
        assert!(n > 0.0, "{what}: request count {n}\n{count}");
    }
    // Flagger's convention alone does not look at `exported_namespace`: the ingress
    // behind a ServiceMonitor has no data there, which is why `any` is the default.
    let q = builtin::query(
        Provider::Nginx,
        GatewayMetrics::Traefik,
        MetricsLabels::Flagger,
        Rate,
        &model(&ns, "podinfo-op"),
    )?;
    assert_eq!(prom.query(&q).await?, None, "{q}");
    Ok(())
}
