//! Built-in metrics, as Flagger's observers define them: `request-success-rate`
//! (percent of non-5xx responses served by the canary) and `request-duration`
//! (P99 latency of the canary, in milliseconds), per routing provider.
//!
//! Serin also has a third built-in, `request-count` (requests the canary served in
//! the interval), used as the default `sampleCountQuery` of built-in metrics, so that
//! `minSampleCount` works without the user writing PromQL.
//!
//! Differences from Flagger, on purpose:
//! - every `request-duration` query returns milliseconds in PromQL itself (Flagger
//!   scales some in Go code, and reads Traefik's seconds as milliseconds);
//! - the Traefik and Gateway API queries select the canary Service by its apex name
//!   (`{{ service }}-canary`), which is the Service Serin generates; Flagger uses the
//!   target name, which is the same unless `service.name` is set;
//! - Gateway API: Flagger falls back to Istio's metrics; Serin's reference Gateway
//!   implementation is Traefik, so `GatewayMetrics::Traefik` is the default and
//!   `GatewayMetrics::Istio` gives Flagger's behaviour.

use crate::crd::Provider;

use super::template::{TemplateError, TemplateModel, render};

pub const REQUEST_SUCCESS_RATE: &str = "request-success-rate";
pub const REQUEST_DURATION: &str = "request-duration";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuiltinMetric {
    /// Percent (0-100) of requests that did not answer 5xx; judged with a minimum.
    RequestSuccessRate,
    /// P99 latency in milliseconds; judged with a maximum.
    RequestDuration,
    /// Requests in the interval; the default sample count for `minSampleCount`.
    RequestCount,
}

impl BuiltinMetric {
    pub const ALL: [BuiltinMetric; 3] = [
        BuiltinMetric::RequestSuccessRate,
        BuiltinMetric::RequestDuration,
        BuiltinMetric::RequestCount,
    ];

    /// The built-in a metric name refers to (`request-count` is internal only).
    pub fn from_name(name: &str) -> Option<BuiltinMetric> {
        match name {
            REQUEST_SUCCESS_RATE => Some(BuiltinMetric::RequestSuccessRate),
            REQUEST_DURATION => Some(BuiltinMetric::RequestDuration),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BuiltinMetric::RequestSuccessRate => REQUEST_SUCCESS_RATE,
            BuiltinMetric::RequestDuration => REQUEST_DURATION,
            BuiltinMetric::RequestCount => "request-count",
        }
    }
}

/// Which metrics a Gateway API implementation exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GatewayMetrics {
    /// Traefik's `traefik_service_*` metrics, services labelled
    /// `<ns>-<svc>-<port>@kubernetesgateway`.
    #[default]
    Traefik,
    /// Istio's `istio_requests_total` (Flagger's fallback for Gateway API).
    Istio,
}

/// Every provider that has built-in queries (SMI shares Istio's, as in Flagger's
/// default observer), for tests and the parse check against a real Prometheus.
pub const PROVIDERS: [Provider; 7] = [
    Provider::Kubernetes,
    Provider::GatewayApiV1,
    Provider::GatewayApiV1beta1,
    Provider::Linkerd,
    Provider::Istio,
    Provider::Traefik,
    Provider::Nginx,
];

/// Which family of metrics a provider's built-ins read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Istio,
    Linkerd,
    Nginx,
    /// Traefik, with the provider suffix of its service label.
    Traefik(&'static str),
    /// The app's own `http_request_duration_seconds` histogram (podinfo, Flagger's
    /// `kubernetes` observer).
    App,
}

fn family(provider: Provider, gateway: GatewayMetrics) -> Family {
    match provider {
        Provider::Kubernetes => Family::App,
        Provider::Linkerd => Family::Linkerd,
        Provider::Nginx => Family::Nginx,
        Provider::Traefik => Family::Traefik("kubernetescrd"),
        Provider::GatewayApiV1 | Provider::GatewayApiV1beta1 => match gateway {
            GatewayMetrics::Traefik => Family::Traefik("kubernetesgateway"),
            GatewayMetrics::Istio => Family::Istio,
        },
        Provider::Istio | Provider::Smi(_) => Family::Istio,
    }
}

/// The query template (with `{{ }}` variables) of a built-in for a provider.
///
/// Success rates add `or vector(0)` to the numerator: a canary answering only errors
/// has no non-error series at all, and without it the ratio would be empty ("no data",
/// an inconclusive hold) instead of 0 (a failure). Only no traffic at all stays empty.
pub fn query_template(
    provider: Provider,
    gateway: GatewayMetrics,
    metric: BuiltinMetric,
) -> String {
    use BuiltinMetric::*;
    match family(provider, gateway) {
        Family::Istio => {
            let sel = r#"reporter="destination", destination_workload_namespace="{{ namespace }}", destination_workload=~"{{ target }}""#;
            match metric {
                RequestSuccessRate => format!(
                    r#"(sum(rate(istio_requests_total{{{sel}, response_code!~"5.*"}}[{{{{ interval }}}}])) or vector(0)) / sum(rate(istio_requests_total{{{sel}}}[{{{{ interval }}}}])) * 100"#
                ),
                RequestDuration => format!(
                    r#"histogram_quantile(0.99, sum(rate(istio_request_duration_milliseconds_bucket{{{sel}}}[{{{{ interval }}}}])) by (le))"#
                ),
                RequestCount => {
                    format!(r#"sum(increase(istio_requests_total{{{sel}}}[{{{{ interval }}}}]))"#)
                }
            }
        }
        Family::Linkerd => {
            let sel =
                r#"namespace="{{ namespace }}", deployment=~"{{ target }}", direction="inbound""#;
            match metric {
                RequestSuccessRate => format!(
                    r#"(sum(rate(response_total{{{sel}, classification!="failure"}}[{{{{ interval }}}}])) or vector(0)) / sum(rate(response_total{{{sel}}}[{{{{ interval }}}}])) * 100"#
                ),
                RequestDuration => format!(
                    r#"histogram_quantile(0.99, sum(rate(response_latency_ms_bucket{{{sel}}}[{{{{ interval }}}}])) by (le))"#
                ),
                RequestCount => {
                    format!(r#"sum(increase(response_total{{{sel}}}[{{{{ interval }}}}]))"#)
                }
            }
        }
        Family::Nginx => {
            let sel = r#"namespace="{{ namespace }}", ingress="{{ ingress }}""#;
            match metric {
                RequestSuccessRate => format!(
                    r#"(sum(rate(nginx_ingress_controller_requests{{{sel}, status!~"5.*"}}[{{{{ interval }}}}])) or vector(0)) / sum(rate(nginx_ingress_controller_requests{{{sel}}}[{{{{ interval }}}}])) * 100"#
                ),
                // Flagger's NGINX "duration" is the mean upstream latency, not a P99:
                // the controller exports no per-ingress latency histogram by default.
                RequestDuration => format!(
                    r#"sum(rate(nginx_ingress_controller_ingress_upstream_latency_seconds_sum{{{sel}}}[{{{{ interval }}}}])) / sum(rate(nginx_ingress_controller_ingress_upstream_latency_seconds_count{{{sel}}}[{{{{ interval }}}}])) * 1000"#
                ),
                RequestCount => format!(
                    r#"sum(increase(nginx_ingress_controller_requests{{{sel}}}[{{{{ interval }}}}]))"#
                ),
            }
        }
        Family::Traefik(suffix) => {
            let sel = format!(
                r#"service=~"{{{{ namespace }}}}-{{{{ service }}}}-canary-[0-9a-zA-Z-]+@{suffix}""#
            );
            match metric {
                RequestSuccessRate => format!(
                    r#"(sum(rate(traefik_service_requests_total{{{sel}, code!~"5.."}}[{{{{ interval }}}}])) or vector(0)) / sum(rate(traefik_service_requests_total{{{sel}}}[{{{{ interval }}}}])) * 100"#
                ),
                RequestDuration => format!(
                    r#"histogram_quantile(0.99, sum(rate(traefik_service_request_duration_seconds_bucket{{{sel}}}[{{{{ interval }}}}])) by (le)) * 1000"#
                ),
                RequestCount => format!(
                    r#"sum(increase(traefik_service_requests_total{{{sel}}}[{{{{ interval }}}}]))"#
                ),
            }
        }
        Family::App => {
            let sel = r#"kubernetes_namespace="{{ namespace }}", kubernetes_pod_name=~"{{ target }}-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)""#;
            match metric {
                RequestSuccessRate => format!(
                    r#"(sum(rate(http_request_duration_seconds_count{{{sel}, status!~"5.*"}}[{{{{ interval }}}}])) or vector(0)) / sum(rate(http_request_duration_seconds_count{{{sel}}}[{{{{ interval }}}}])) * 100"#
                ),
                RequestDuration => format!(
                    r#"histogram_quantile(0.99, sum(rate(http_request_duration_seconds_bucket{{{sel}}}[{{{{ interval }}}}])) by (le)) * 1000"#
                ),
                RequestCount => format!(
                    r#"sum(increase(http_request_duration_seconds_count{{{sel}}}[{{{{ interval }}}}]))"#
                ),
            }
        }
    }
}

/// The rendered PromQL of a built-in for a Canary.
pub fn query(
    provider: Provider,
    gateway: GatewayMetrics,
    metric: BuiltinMetric,
    model: &TemplateModel,
) -> Result<String, TemplateError> {
    render(&query_template(provider, gateway, metric), model)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> TemplateModel {
        TemplateModel {
            name: "podinfo".into(),
            namespace: "test".into(),
            target: "podinfo".into(),
            service: "podinfo".into(),
            ingress: "podinfo".into(),
            route: "podinfo".into(),
            interval: "1m".into(),
            variables: Default::default(),
        }
    }

    #[test]
    fn every_builtin_renders_for_every_provider() {
        let mut providers = PROVIDERS.to_vec();
        providers.push(Provider::parse("smi:v1alpha3").unwrap());
        for provider in providers {
            for gateway in [GatewayMetrics::Traefik, GatewayMetrics::Istio] {
                for metric in BuiltinMetric::ALL {
                    let q = query(provider, gateway, metric, &model())
                        .unwrap_or_else(|e| panic!("{provider:?} {metric:?}: {e}"));
                    assert!(!q.contains("{{") && !q.contains("}}"), "{q}");
                    assert!(q.contains("[1m]"), "{provider:?} {metric:?}: {q}");
                    // Balanced brackets: a cheap guard against format-string slips.
                    for (open, close) in [('(', ')'), ('{', '}'), ('[', ']')] {
                        assert_eq!(
                            q.matches(open).count(),
                            q.matches(close).count(),
                            "{provider:?} {metric:?}: {q}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn queries_follow_flagger() {
        let m = model();
        let istio = query(
            Provider::Istio,
            GatewayMetrics::Traefik,
            BuiltinMetric::RequestSuccessRate,
            &m,
        )
        .unwrap();
        assert_eq!(
            istio,
            // Flagger's query, with the numerator kept at 0 when every answer failed.
            r#"(sum(rate(istio_requests_total{reporter="destination", destination_workload_namespace="test", destination_workload=~"podinfo", response_code!~"5.*"}[1m])) or vector(0)) / sum(rate(istio_requests_total{reporter="destination", destination_workload_namespace="test", destination_workload=~"podinfo"}[1m])) * 100"#
        );
        let traefik = query(
            Provider::Traefik,
            GatewayMetrics::Traefik,
            BuiltinMetric::RequestDuration,
            &m,
        )
        .unwrap();
        assert_eq!(
            traefik,
            r#"histogram_quantile(0.99, sum(rate(traefik_service_request_duration_seconds_bucket{service=~"test-podinfo-canary-[0-9a-zA-Z-]+@kubernetescrd"}[1m])) by (le)) * 1000"#
        );
        let gw = query(
            Provider::GatewayApiV1,
            GatewayMetrics::Traefik,
            BuiltinMetric::RequestSuccessRate,
            &m,
        )
        .unwrap();
        assert!(
            gw.contains(
                r#"service=~"test-podinfo-canary-[0-9a-zA-Z-]+@kubernetesgateway", code!~"5..""#
            ),
            "{gw}"
        );
        let gw_istio = query(
            Provider::GatewayApiV1,
            GatewayMetrics::Istio,
            BuiltinMetric::RequestSuccessRate,
            &m,
        )
        .unwrap();
        assert_eq!(gw_istio, istio);
        let k8s = query(
            Provider::Kubernetes,
            GatewayMetrics::Traefik,
            BuiltinMetric::RequestDuration,
            &m,
        )
        .unwrap();
        assert!(
            k8s.starts_with(
                "histogram_quantile(0.99, sum(rate(http_request_duration_seconds_bucket{"
            ),
            "{k8s}"
        );
        assert!(k8s.ends_with("* 1000"), "seconds are scaled to ms: {k8s}");
        let linkerd = query(
            Provider::Linkerd,
            GatewayMetrics::Traefik,
            BuiltinMetric::RequestSuccessRate,
            &m,
        )
        .unwrap();
        assert!(linkerd.contains(r#"classification!="failure""#));
        let nginx = query(
            Provider::Nginx,
            GatewayMetrics::Traefik,
            BuiltinMetric::RequestCount,
            &m,
        )
        .unwrap();
        assert_eq!(
            nginx,
            r#"sum(increase(nginx_ingress_controller_requests{namespace="test", ingress="podinfo"}[1m]))"#
        );
    }

    #[test]
    fn names_map_to_builtins() {
        assert_eq!(
            BuiltinMetric::from_name("request-success-rate"),
            Some(BuiltinMetric::RequestSuccessRate)
        );
        assert_eq!(
            BuiltinMetric::from_name("request-duration"),
            Some(BuiltinMetric::RequestDuration)
        );
        assert_eq!(BuiltinMetric::from_name("request-count"), None);
        for m in BuiltinMetric::ALL {
            assert_eq!(
                BuiltinMetric::from_name(m.as_str()).is_some(),
                m != BuiltinMetric::RequestCount
            );
        }
    }
}
