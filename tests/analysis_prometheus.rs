//! Every built-in query, for every provider, must parse in a real Prometheus.
//!
//! Needs `SERIN_E2E_PROMETHEUS` (e.g. `http://127.0.0.1:9090`, started by the local
//! cluster harness). Without it the test is skipped with a message, unless
//! `SERIN_E2E_REQUIRED=1`, in which case a missing Prometheus is a failure.

use std::time::Duration;

use serin::analysis::builtin::{self, BuiltinMetric, GatewayMetrics, MetricsLabels, PROVIDERS};
use serin::analysis::prometheus::PromClient;
use serin::analysis::template::TemplateModel;
use serin::crd::Provider;

fn prometheus() -> Option<String> {
    match std::env::var("SERIN_E2E_PROMETHEUS") {
        Ok(p) if !p.trim().is_empty() => Some(p),
        _ => {
            let required = std::env::var("SERIN_E2E_REQUIRED").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "SERIN_E2E_REQUIRED=1 but SERIN_E2E_PROMETHEUS is not set"
            );
            eprintln!(
                "skipping: set SERIN_E2E_PROMETHEUS=http://127.0.0.1:9090 to check built-in queries against a real Prometheus"
            );
            None
        }
    }
}

fn client(address: &str) -> PromClient {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder().build().expect("HTTP client");
    PromClient::new(&http, address, None, None, false, Duration::from_secs(10))
        .expect("Prometheus address")
}

#[tokio::test]
async fn every_builtin_query_parses_in_real_prometheus() {
    let Some(address) = prometheus() else {
        return;
    };
    let prom = client(&address);

    // The check must be able to fail: a broken query is rejected as bad_data.
    let err = prom
        .query("sum(rate(")
        .await
        .expect_err("a broken query must be rejected");
    assert!(err.is_bad_query(), "expected a parse error, got {err}");

    let model = TemplateModel {
        name: "podinfo".into(),
        namespace: "test".into(),
        target: "podinfo".into(),
        service: "podinfo".into(),
        ingress: "podinfo".into(),
        route: "podinfo".into(),
        interval: "30s".into(),
        variables: Default::default(),
    };
    let mut providers = PROVIDERS.to_vec();
    providers.push(Provider::parse("smi:v1alpha3").expect("smi provider"));
    let mut checked = 0;
    for provider in providers {
        for gateway in [GatewayMetrics::Traefik, GatewayMetrics::Istio] {
            for labels in MetricsLabels::ALL {
                for metric in BuiltinMetric::ALL {
                    let q =
                        builtin::query(provider, gateway, labels, metric, &model).expect("renders");
                    match prom.query(&q).await {
                        // Empty (no such series here) or a value: the query parsed.
                        Ok(v) => println!(
                            "ok {:<20} {:<15} {:?} {} -> {v:?}",
                            provider.as_str(),
                            metric.as_str(),
                            gateway,
                            labels.as_str()
                        ),
                        Err(e) => panic!(
                            "{} {} ({gateway:?}, {}) does not run: {e}\n{q}",
                            provider.as_str(),
                            metric.as_str(),
                            labels.as_str()
                        ),
                    }
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(
        checked,
        (PROVIDERS.len() + 1) * 2 * MetricsLabels::ALL.len() * BuiltinMetric::ALL.len()
    );
}
