//! Built-in metrics, as Flagger's observers define them: `request-success-rate`
//! (percent of non-5xx responses served by the canary) and `request-duration`
//! (P99 latency of the canary, in milliseconds), per routing provider.
//!
//! Serin also has a third built-in, `request-count` (requests the canary served in
//! the interval), used as the default `sampleCountQuery` of built-in metrics, so that
//! `minSampleCount` works without the user writing PromQL.
//!
//! The label names pods and namespaces are selected by depend on who scrapes the
//! series (`MetricsLabels`, `--metrics-labels`): by default a query is the `or` of
//! one selector per convention, so it finds the data under Flagger's bundled
//! Prometheus and under the Prometheus Operator alike, with no discovery request and
//! no cache to go stale.
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

/// How the user's Prometheus names the labels it attaches to scraped series.
///
/// The same exporter's series carry different labels depending on who scrapes them:
/// Flagger's bundled Prometheus (and Prometheus' classic `kubernetes-pods` example)
/// adds `kubernetes_namespace` / `kubernetes_pod_name`; the Prometheus Operator
/// (PodMonitor, ServiceMonitor, kube-prometheus-stack) adds `namespace` / `pod`
/// (and `service` for a ServiceMonitor, which pushes an exporter's own clashing
/// label to `exported_<name>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum MetricsLabels {
    /// Match either convention: each query is the `or` of one selector per
    /// convention, so it finds the data whichever Prometheus scraped it.
    #[default]
    Any,
    /// Flagger's bundled Prometheus: `kubernetes_namespace`, `kubernetes_pod_name`.
    Flagger,
    /// Prometheus Operator / kube-prometheus-stack: `namespace`, `pod`, and
    /// `exported_service` / `exported_namespace` where a ServiceMonitor renamed the
    /// exporter's label.
    PrometheusOperator,
}

impl MetricsLabels {
    pub const ALL: [MetricsLabels; 3] = [
        MetricsLabels::Any,
        MetricsLabels::Flagger,
        MetricsLabels::PrometheusOperator,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MetricsLabels::Any => "any",
            MetricsLabels::Flagger => "flagger",
            MetricsLabels::PrometheusOperator => "prometheus-operator",
        }
    }

    fn flagger(self) -> bool {
        matches!(self, MetricsLabels::Any | MetricsLabels::Flagger)
    }

    fn operator(self) -> bool {
        matches!(self, MetricsLabels::Any | MetricsLabels::PrometheusOperator)
    }
}

/// Which family of metrics a provider's built-ins read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Istio,
    Linkerd,
    Nginx,
    /// Traefik, with the provider suffix of its service label.
    Traefik(&'static str),
    /// The app's own `http_request_duration_seconds` histogram (podinfo, Flagger's
    /// `kubernetes` observer).
    App,
}

pub fn family(provider: Provider, gateway: GatewayMetrics) -> Family {
    match provider {
        Provider::Kubernetes => Family::App,
        Provider::Linkerd => Family::Linkerd,
        Provider::Nginx => Family::Nginx,
        Provider::Traefik => Family::Traefik("kubernetescrd"),
        Provider::GatewayApiV1 | Provider::GatewayApiV1beta1 => match gateway {
            // Session affinity on Traefik routes through a sticky TraefikService, whose
            // backends Traefik's CRD provider labels: both suffixes are the canary.
            GatewayMetrics::Traefik => Family::Traefik("kubernetes(gateway|crd)"),
            GatewayMetrics::Istio => Family::Istio,
        },
        Provider::Istio | Provider::Smi(_) => Family::Istio,
    }
}

/// One family's metric names and the label selectors, one per convention in use.
struct Shape {
    requests: &'static str,
    /// Extra matcher selecting the non-error requests.
    ok: &'static str,
    duration: Latency,
    selectors: Vec<String>,
}

enum Latency {
    /// A histogram's `_bucket` series and the factor to milliseconds.
    Histogram(&'static str, &'static str),
    /// Mean latency from a summary's `_sum` / `_count`, in seconds.
    Mean(&'static str, &'static str),
}

fn shape(family: Family, labels: MetricsLabels) -> Shape {
    match family {
        // Istio's and Linkerd's labels come from the proxies (Istio) or from the
        // relabelling their own docs prescribe for every Prometheus (Linkerd), so they
        // do not depend on who scrapes them.
        Family::Istio => Shape {
            requests: "istio_requests_total",
            ok: r#"response_code!~"5.*""#,
            duration: Latency::Histogram("istio_request_duration_milliseconds_bucket", ""),
            selectors: vec![
                r#"reporter="destination", destination_workload_namespace="{{ namespace }}", destination_workload=~"{{ target }}""#.into(),
            ],
        },
        Family::Linkerd => Shape {
            requests: "response_total",
            ok: r#"classification!="failure""#,
            duration: Latency::Histogram("response_latency_ms_bucket", ""),
            selectors: vec![
                r#"namespace="{{ namespace }}", deployment=~"{{ target }}", direction="inbound""#
                    .into(),
            ],
        },
        Family::Nginx => {
            let mut selectors = vec![r#"namespace="{{ namespace }}", ingress="{{ ingress }}""#.to_string()];
            if labels.operator() {
                selectors.push(
                    r#"exported_namespace="{{ namespace }}", ingress="{{ ingress }}""#.into(),
                );
            }
            Shape {
                requests: "nginx_ingress_controller_requests",
                ok: r#"status!~"5.*""#,
                // Flagger's NGINX "duration" is the mean upstream latency, not a P99:
                // the controller exports no per-ingress latency histogram by default.
                duration: Latency::Mean(
                    "nginx_ingress_controller_ingress_upstream_latency_seconds_sum",
                    "nginx_ingress_controller_ingress_upstream_latency_seconds_count",
                ),
                selectors,
            }
        }
        Family::Traefik(suffix) => {
            let value =
                format!(r#""{{{{ namespace }}}}-{{{{ service }}}}-canary-[0-9a-zA-Z-]+@{suffix}""#);
            let mut selectors = vec![format!("service=~{value}")];
            if labels.operator() {
                selectors.push(format!("exported_service=~{value}"));
            }
            Shape {
                requests: "traefik_service_requests_total",
                ok: r#"code!~"5..""#,
                duration: Latency::Histogram(
                    "traefik_service_request_duration_seconds_bucket",
                    " * 1000",
                ),
                selectors,
            }
        }
        Family::App => {
            let pods = r#"{{ target }}-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)""#;
            let mut selectors = Vec::new();
            if labels.flagger() {
                selectors.push(format!(
                    r#"kubernetes_namespace="{{{{ namespace }}}}", kubernetes_pod_name=~"{pods}"#
                ));
            }
            if labels.operator() {
                selectors.push(format!(r#"namespace="{{{{ namespace }}}}", pod=~"{pods}"#));
            }
            Shape {
                requests: "http_request_duration_seconds_count",
                ok: r#"status!~"5.*""#,
                duration: Latency::Histogram("http_request_duration_seconds_bucket", " * 1000"),
                selectors,
            }
        }
    }
}

/// `expr(selector)` for every selector, joined with `or`. Each side is aggregated to
/// one series before the `or`, so a Prometheus that holds both label shapes (the
/// same pods scraped twice) gives the first one's value, never a sum of both.
fn any_of(selectors: &[String], expr: impl Fn(&str) -> String) -> String {
    selectors
        .iter()
        .map(|s| expr(s))
        .collect::<Vec<_>>()
        .join(" or ")
}

/// Parenthesised when it is an `or` of several, so it can be an operand.
fn operand(selectors: &[String], expr: impl Fn(&str) -> String) -> String {
    let e = any_of(selectors, expr);
    if selectors.len() > 1 {
        format!("({e})")
    } else {
        e
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
    labels: MetricsLabels,
    metric: BuiltinMetric,
) -> String {
    let Shape {
        requests,
        ok,
        duration,
        selectors,
    } = shape(family(provider, gateway), labels);
    let sel = selectors.as_slice();
    let rate = |metric: &'static str, extra: &'static str| {
        move |s: &str| {
            let extra = if extra.is_empty() {
                String::new()
            } else {
                format!(", {extra}")
            };
            format!("sum(rate({metric}{{{s}{extra}}}[{{{{ interval }}}}]))")
        }
    };
    match metric {
        BuiltinMetric::RequestSuccessRate => format!(
            "({} or vector(0)) / {} * 100",
            any_of(sel, rate(requests, ok)),
            operand(sel, rate(requests, ""))
        ),
        BuiltinMetric::RequestDuration => match duration {
            Latency::Histogram(buckets, scale) => format!(
                "histogram_quantile(0.99, {}){scale}",
                any_of(sel, |s| format!("{} by (le)", rate(buckets, "")(s)))
            ),
            Latency::Mean(sum, count) => format!(
                "{} / {} * 1000",
                operand(sel, rate(sum, "")),
                operand(sel, rate(count, ""))
            ),
        },
        BuiltinMetric::RequestCount => any_of(sel, |s| {
            format!("sum(increase({requests}{{{s}}}[{{{{ interval }}}}]))")
        }),
    }
}

/// The rendered PromQL of a built-in for a Canary.
pub fn query(
    provider: Provider,
    gateway: GatewayMetrics,
    labels: MetricsLabels,
    metric: BuiltinMetric,
    model: &TemplateModel,
) -> Result<String, TemplateError> {
    render(&query_template(provider, gateway, labels, metric), model)
}

#[cfg(test)]
mod tests {
    use super::*;
    use MetricsLabels::{Any, Flagger, PrometheusOperator};

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

    fn q(provider: Provider, labels: MetricsLabels, metric: BuiltinMetric) -> String {
        query(provider, GatewayMetrics::Traefik, labels, metric, &model())
            .unwrap_or_else(|e| panic!("{provider:?} {labels:?} {metric:?}: {e}"))
    }

    #[test]
    fn every_builtin_renders_for_every_provider() {
        let mut providers = PROVIDERS.to_vec();
        providers.push(Provider::parse("smi:v1alpha3").unwrap());
        for provider in providers {
            for gateway in [GatewayMetrics::Traefik, GatewayMetrics::Istio] {
                for labels in MetricsLabels::ALL {
                    for metric in BuiltinMetric::ALL {
                        let q = query(provider, gateway, labels, metric, &model())
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
    }

    // One pinned test per family and label convention: the exact PromQL users' data
    // has to match.

    const APP_FLAGGER: &str = r#"kubernetes_namespace="test", kubernetes_pod_name=~"podinfo-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)""#;
    const APP_OPERATOR: &str = r#"namespace="test", pod=~"podinfo-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)""#;

    #[test]
    fn app_family_queries_per_convention() {
        use BuiltinMetric::*;
        let k = Provider::Kubernetes;
        let rate = |sel: &str, extra: &str| {
            format!("sum(rate(http_request_duration_seconds_count{{{sel}{extra}}}[1m]))")
        };
        let ok = r#", status!~"5.*""#;
        for (labels, sels) in [
            (Flagger, vec![APP_FLAGGER]),
            (PrometheusOperator, vec![APP_OPERATOR]),
            (Any, vec![APP_FLAGGER, APP_OPERATOR]),
        ] {
            let num = sels
                .iter()
                .map(|s| rate(s, ok))
                .collect::<Vec<_>>()
                .join(" or ");
            let den = sels
                .iter()
                .map(|s| rate(s, ""))
                .collect::<Vec<_>>()
                .join(" or ");
            let den = if sels.len() > 1 {
                format!("({den})")
            } else {
                den
            };
            assert_eq!(
                q(k, labels, RequestSuccessRate),
                format!("({num} or vector(0)) / {den} * 100"),
                "{labels:?}"
            );
            let buckets = sels
                .iter()
                .map(|s| {
                    format!("sum(rate(http_request_duration_seconds_bucket{{{s}}}[1m])) by (le)")
                })
                .collect::<Vec<_>>()
                .join(" or ");
            assert_eq!(
                q(k, labels, RequestDuration),
                format!("histogram_quantile(0.99, {buckets}) * 1000"),
                "{labels:?}"
            );
            let count = sels
                .iter()
                .map(|s| format!("sum(increase(http_request_duration_seconds_count{{{s}}}[1m]))"))
                .collect::<Vec<_>>()
                .join(" or ");
            assert_eq!(q(k, labels, RequestCount), count, "{labels:?}");
        }
        // The issue's bug: the operator convention must not select Flagger's labels.
        assert!(!q(k, PrometheusOperator, RequestDuration).contains("kubernetes_"));
        assert!(!q(k, Flagger, RequestDuration).contains(r#" pod=~"#));
    }

    #[test]
    fn traefik_family_queries_per_convention() {
        use BuiltinMetric::*;
        let svc = r#"service=~"test-podinfo-canary-[0-9a-zA-Z-]+@kubernetescrd""#;
        let exported = r#"exported_service=~"test-podinfo-canary-[0-9a-zA-Z-]+@kubernetescrd""#;
        assert_eq!(
            q(Provider::Traefik, Flagger, RequestDuration),
            format!(
                "histogram_quantile(0.99, sum(rate(traefik_service_request_duration_seconds_bucket{{{svc}}}[1m])) by (le)) * 1000"
            )
        );
        for labels in [PrometheusOperator, Any] {
            assert_eq!(
                q(Provider::Traefik, labels, RequestSuccessRate),
                format!(
                    r#"(sum(rate(traefik_service_requests_total{{{svc}, code!~"5.."}}[1m])) or sum(rate(traefik_service_requests_total{{{exported}, code!~"5.."}}[1m])) or vector(0)) / (sum(rate(traefik_service_requests_total{{{svc}}}[1m])) or sum(rate(traefik_service_requests_total{{{exported}}}[1m]))) * 100"#
                ),
                "{labels:?}"
            );
            assert_eq!(
                q(Provider::Traefik, labels, RequestCount),
                format!(
                    "sum(increase(traefik_service_requests_total{{{svc}}}[1m])) or sum(increase(traefik_service_requests_total{{{exported}}}[1m]))"
                )
            );
        }
        // Gateway API on Traefik: the same metrics, the gateway provider's suffix.
        let gw = query(
            Provider::GatewayApiV1,
            GatewayMetrics::Traefik,
            Flagger,
            RequestSuccessRate,
            &model(),
        )
        .unwrap();
        assert!(
            gw.contains(
                r#"service=~"test-podinfo-canary-[0-9a-zA-Z-]+@kubernetes(gateway|crd)", code!~"5..""#
            ),
            "{gw}"
        );
    }

    #[test]
    fn nginx_family_queries_per_convention() {
        use BuiltinMetric::*;
        let plain = r#"namespace="test", ingress="podinfo""#;
        let exported = r#"exported_namespace="test", ingress="podinfo""#;
        assert_eq!(
            q(Provider::Nginx, Flagger, RequestCount),
            format!("sum(increase(nginx_ingress_controller_requests{{{plain}}}[1m]))")
        );
        assert_eq!(
            q(Provider::Nginx, Flagger, RequestDuration),
            format!(
                "sum(rate(nginx_ingress_controller_ingress_upstream_latency_seconds_sum{{{plain}}}[1m])) / sum(rate(nginx_ingress_controller_ingress_upstream_latency_seconds_count{{{plain}}}[1m])) * 1000"
            )
        );
        for labels in [PrometheusOperator, Any] {
            assert_eq!(
                q(Provider::Nginx, labels, RequestSuccessRate),
                format!(
                    r#"(sum(rate(nginx_ingress_controller_requests{{{plain}, status!~"5.*"}}[1m])) or sum(rate(nginx_ingress_controller_requests{{{exported}, status!~"5.*"}}[1m])) or vector(0)) / (sum(rate(nginx_ingress_controller_requests{{{plain}}}[1m])) or sum(rate(nginx_ingress_controller_requests{{{exported}}}[1m]))) * 100"#
                ),
                "{labels:?}"
            );
            assert_eq!(
                q(Provider::Nginx, labels, RequestDuration),
                format!(
                    "(sum(rate(nginx_ingress_controller_ingress_upstream_latency_seconds_sum{{{plain}}}[1m])) or sum(rate(nginx_ingress_controller_ingress_upstream_latency_seconds_sum{{{exported}}}[1m]))) / (sum(rate(nginx_ingress_controller_ingress_upstream_latency_seconds_count{{{plain}}}[1m])) or sum(rate(nginx_ingress_controller_ingress_upstream_latency_seconds_count{{{exported}}}[1m]))) * 1000"
                )
            );
        }
    }

    #[test]
    fn istio_and_smi_queries_are_the_same_in_every_convention() {
        use BuiltinMetric::*;
        let sel = r#"reporter="destination", destination_workload_namespace="test", destination_workload=~"podinfo""#;
        let smi = Provider::parse("smi:v1alpha3").unwrap();
        for labels in MetricsLabels::ALL {
            for provider in [Provider::Istio, smi] {
                assert_eq!(
                    q(provider, labels, RequestSuccessRate),
                    // Flagger's query, with the numerator kept at 0 when every answer failed.
                    format!(
                        r#"(sum(rate(istio_requests_total{{{sel}, response_code!~"5.*"}}[1m])) or vector(0)) / sum(rate(istio_requests_total{{{sel}}}[1m])) * 100"#
                    )
                );
                assert_eq!(
                    q(provider, labels, RequestDuration),
                    format!(
                        "histogram_quantile(0.99, sum(rate(istio_request_duration_milliseconds_bucket{{{sel}}}[1m])) by (le))"
                    )
                );
                assert_eq!(
                    q(provider, labels, RequestCount),
                    format!("sum(increase(istio_requests_total{{{sel}}}[1m]))")
                );
            }
            let gw_istio = query(
                Provider::GatewayApiV1,
                GatewayMetrics::Istio,
                labels,
                RequestSuccessRate,
                &model(),
            )
            .unwrap();
            assert_eq!(gw_istio, q(Provider::Istio, labels, RequestSuccessRate));
        }
    }

    #[test]
    fn linkerd_queries_are_the_same_in_every_convention() {
        use BuiltinMetric::*;
        let sel = r#"namespace="test", deployment=~"podinfo", direction="inbound""#;
        for labels in MetricsLabels::ALL {
            assert_eq!(
                q(Provider::Linkerd, labels, RequestSuccessRate),
                format!(
                    r#"(sum(rate(response_total{{{sel}, classification!="failure"}}[1m])) or vector(0)) / sum(rate(response_total{{{sel}}}[1m])) * 100"#
                )
            );
            assert_eq!(
                q(Provider::Linkerd, labels, RequestDuration),
                format!(
                    "histogram_quantile(0.99, sum(rate(response_latency_ms_bucket{{{sel}}}[1m])) by (le))"
                )
            );
            assert_eq!(
                q(Provider::Linkerd, labels, RequestCount),
                format!("sum(increase(response_total{{{sel}}}[1m]))")
            );
        }
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
