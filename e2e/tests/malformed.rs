//! Bad input at volume: a corpus of malformed Canaries, MetricTemplates and
//! AlertProviders, each a valid base with one mutation from the tables below, applied
//! to the real API server with the operator running beside a valid release.
//!
//! Every document ends one of two ways, both naming the field: the API server's
//! schema refuses it (the error names the field), or it is stored and the operator
//! sets `Ready=False` with the field path and publishes one Event. Meanwhile the
//! operator does not crash, no user object is touched, and the valid release is
//! promoted. A document the operator takes as valid is a validation bug.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Service};
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use serin_e2e::canary::{canaries, release, wait_phase};
use serin_e2e::operator::Operator;
use serin_e2e::webhook::WebhookReceiver;
use serin_e2e::{ClusterEnv, SampleApp, TestNamespace, apply_json};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    Canary,
    MetricTemplate,
    AlertProvider,
}

struct Case {
    kind: Kind,
    label: &'static str,
    /// JSON pointers under `spec`, each set to a value or removed (`None`).
    edits: Vec<(&'static str, Option<Value>)>,
    /// The field path the refusal must name.
    field: &'static str,
}

fn case(
    kind: Kind,
    label: &'static str,
    edits: &[(&'static str, Option<Value>)],
    field: &'static str,
) -> Case {
    Case {
        kind,
        label,
        edits: edits.to_vec(),
        field,
    }
}

fn set(doc: &mut Value, pointer: &str, value: Option<Value>) {
    let parts: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    let (last, parents) = parts.split_last().expect("pointer");
    let mut cur = doc;
    for p in parents {
        cur = match cur {
            Value::Array(a) => &mut a[p.parse::<usize>().expect("index")],
            other => {
                if !other.is_object() {
                    *other = json!({});
                }
                other
                    .as_object_mut()
                    .expect("object")
                    .entry(p.to_string())
                    .or_insert_with(|| json!({}))
            }
        };
    }
    match (cur, value) {
        (Value::Array(a), Some(v)) => a[last.parse::<usize>().expect("index")] = v,
        (Value::Array(a), None) => {
            a.remove(last.parse::<usize>().expect("index"));
        }
        (Value::Object(o), Some(v)) => {
            o.insert(last.to_string(), v);
        }
        (Value::Object(o), None) => {
            o.remove(*last);
        }
        _ => panic!("{pointer}: not a container"),
    }
}

/// A Canary spec the operator accepts; the valid release below runs it, so each
/// malformed Canary differs from one that works by its mutation only.
fn base_canary(target: &str, gate: &str) -> Value {
    json!({
        "provider": "kubernetes",
        "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
        "progressDeadlineSeconds": 60,
        "service": {"port": 80, "targetPort": 8080},
        "analysis": {
            "interval": "3s", "threshold": 2, "iterations": 2,
            "metrics": [{"name": "rate", "query": "sum(up)", "interval": "1m",
                         "thresholdRange": {"min": 0}}],
            "webhooks": [{"name": "gate", "type": "rollout", "url": gate, "timeout": "5s"}]
        }
    })
}

fn base_template() -> Value {
    json!({"provider": {"type": "prometheus", "address": "http://127.0.0.1:9090"},
           "query": "sum(up{namespace=\"{{ namespace }}\"})"})
}

fn base_alert() -> Value {
    json!({"type": "slack", "channel": "deploys", "address": "https://hooks.slack.invalid/T/B/X"})
}

fn v(x: Value) -> Option<Value> {
    Some(x)
}

fn canary_cases() -> Vec<Case> {
    use Kind::Canary as C;
    let istio = ("/provider", v(json!("istio")));
    let ab = ("/analysis/iterations", v(json!(3)));
    let hdr = |m: Value| ("/analysis/match", v(json!([{"headers": m}])));
    let sa = |s: Value| ("/analysis/sessionAffinity", v(s));
    vec![
        case(
            C,
            "port 0",
            &[("/service/port", v(json!(0)))],
            "spec.service.port",
        ),
        case(
            C,
            "port 70000",
            &[("/service/port", v(json!(70000)))],
            "spec.service.port",
        ),
        case(
            C,
            "targetPort -1",
            &[("/service/targetPort", v(json!(-1)))],
            "spec.service.targetPort",
        ),
        case(
            C,
            "targetPort empty",
            &[("/service/targetPort", v(json!("")))],
            "spec.service.targetPort",
        ),
        case(
            C,
            "service name",
            &[("/service/name", v(json!("Bad_Name")))],
            "spec.service.name",
        ),
        case(
            C,
            "service name long",
            &[("/service/name", v(json!("a".repeat(60))))],
            "spec.service.name",
        ),
        case(
            C,
            "service timeout",
            &[("/service/timeout", v(json!("soon")))],
            "spec.service.timeout",
        ),
        case(
            C,
            "backendTimeout",
            &[("/service/backendTimeout", v(json!("1x")))],
            "spec.service.backendTimeout",
        ),
        case(
            C,
            "perTryTimeout",
            &[("/service/retries", v(json!({"perTryTimeout": "5 sec"})))],
            "spec.service.retries.perTryTimeout",
        ),
        case(
            C,
            "retry attempts",
            &[("/service/retries", v(json!({"attempts": -1})))],
            "spec.service.retries.attempts",
        ),
        case(
            C,
            "service match two kinds",
            &[(
                "/service/match",
                v(json!([{"uri": {"prefix": "/a", "exact": "/b"}}])),
            )],
            "spec.service.match[0].uri",
        ),
        case(
            C,
            "service match header",
            &[(
                "/service/match",
                v(json!([{"headers": {"bad header": {"exact": "x"}}}])),
            )],
            "spec.service.match[0].headers[bad header]",
        ),
        case(
            C,
            "service match port",
            &[("/service/match", v(json!([{"port": 0}])))],
            "spec.service.match[0].port",
        ),
        case(
            C,
            "service match regex",
            &[("/service/match", v(json!([{"uri": {"regex": "[a-"}}])))],
            "spec.service.match[0].uri.regex",
        ),
        case(
            C,
            "header add name",
            &[(
                "/service/headers",
                v(json!({"request": {"add": {"bad header": "v"}}})),
            )],
            "spec.service.headers.request.add[bad header]",
        ),
        case(
            C,
            "header set value",
            &[(
                "/service/headers",
                v(json!({"response": {"set": {"x-a": "line\nbreak"}}})),
            )],
            "spec.service.headers.response.set[x-a]",
        ),
        case(
            C,
            "header remove",
            &[(
                "/service/headers",
                v(json!({"request": {"remove": ["x y"]}})),
            )],
            "spec.service.headers.request.remove",
        ),
        case(
            C,
            "target name empty",
            &[("/targetRef/name", v(json!("")))],
            "spec.targetRef.name",
        ),
        case(
            C,
            "target name space",
            &[("/targetRef/name", v(json!("has space")))],
            "spec.targetRef.name",
        ),
        case(
            C,
            "target kind",
            &[("/targetRef/kind", v(json!("StatefulSet")))],
            "spec.targetRef.kind",
        ),
        case(
            C,
            "target kind service",
            &[("/targetRef/kind", v(json!("Service")))],
            "spec.targetRef.kind",
        ),
        case(
            C,
            "provider envoy",
            &[("/provider", v(json!("envoy")))],
            "spec.provider",
        ),
        case(
            C,
            "provider contour",
            &[("/provider", v(json!("contour")))],
            "spec.provider",
        ),
        case(
            C,
            "provider case",
            &[("/provider", v(json!("Istio")))],
            "spec.provider",
        ),
        case(
            C,
            "deadline negative",
            &[("/progressDeadlineSeconds", v(json!(-5)))],
            "spec.progressDeadlineSeconds",
        ),
        case(
            C,
            "metricsServer no scheme",
            &[("/metricsServer", v(json!("prometheus:9090")))],
            "spec.metricsServer",
        ),
        case(
            C,
            "metricsServer ftp",
            &[("/metricsServer", v(json!("ftp://prom")))],
            "spec.metricsServer",
        ),
        case(C, "no service", &[("/service", None)], "spec.service"),
        case(C, "no analysis", &[("/analysis", None)], "spec.analysis"),
        case(
            C,
            "interval words",
            &[("/analysis/interval", v(json!("soon")))],
            "spec.analysis.interval",
        ),
        case(
            C,
            "interval zero",
            &[("/analysis/interval", v(json!("0s")))],
            "spec.analysis.interval",
        ),
        case(
            C,
            "interval unitless",
            &[("/analysis/interval", v(json!("10")))],
            "spec.analysis.interval",
        ),
        case(
            C,
            "interval huge",
            &[("/analysis/interval", v(json!("99999999999999999999h")))],
            "spec.analysis.interval",
        ),
        case(
            C,
            "interval two dots",
            &[("/analysis/interval", v(json!("1.2.3s")))],
            "spec.analysis.interval",
        ),
        case(
            C,
            "no strategy",
            &[("/analysis/iterations", v(json!(0)))],
            "spec.analysis",
        ),
        case(
            C,
            "weights on kubernetes",
            &[
                ("/analysis/iterations", v(json!(0))),
                ("/analysis/stepWeight", v(json!(10))),
            ],
            "spec.analysis.stepWeight",
        ),
        case(
            C,
            "stepWeight 110",
            &[
                istio.clone(),
                ("/analysis/iterations", v(json!(0))),
                ("/analysis/stepWeight", v(json!(110))),
            ],
            "spec.analysis.stepWeight",
        ),
        case(
            C,
            "maxWeight 150",
            &[
                istio.clone(),
                ("/analysis/iterations", v(json!(0))),
                ("/analysis/stepWeight", v(json!(10))),
                ("/analysis/maxWeight", v(json!(150))),
            ],
            "spec.analysis.maxWeight",
        ),
        case(
            C,
            "maxWeight 0",
            &[
                istio.clone(),
                ("/analysis/iterations", v(json!(0))),
                ("/analysis/stepWeight", v(json!(10))),
                ("/analysis/maxWeight", v(json!(0))),
            ],
            "spec.analysis.maxWeight",
        ),
        case(
            C,
            "stepWeights down",
            &[
                istio.clone(),
                ("/analysis/iterations", v(json!(0))),
                ("/analysis/stepWeights", v(json!([10, 5]))),
            ],
            "spec.analysis.stepWeights",
        ),
        case(
            C,
            "stepWeights zero",
            &[
                istio.clone(),
                ("/analysis/iterations", v(json!(0))),
                ("/analysis/stepWeights", v(json!([0, 10]))),
            ],
            "spec.analysis.stepWeights",
        ),
        case(
            C,
            "stepWeights 150",
            &[
                istio.clone(),
                ("/analysis/iterations", v(json!(0))),
                ("/analysis/stepWeights", v(json!([10, 150]))),
            ],
            "spec.analysis.stepWeights",
        ),
        case(
            C,
            "stepWeights repeat",
            &[
                istio.clone(),
                ("/analysis/iterations", v(json!(0))),
                ("/analysis/stepWeights", v(json!([10, 10]))),
            ],
            "spec.analysis.stepWeights",
        ),
        case(
            C,
            "mirrorWeight",
            &[("/analysis/mirrorWeight", v(json!(101)))],
            "spec.analysis.mirrorWeight",
        ),
        case(
            C,
            "stepWeightPromotion",
            &[("/analysis/stepWeightPromotion", v(json!(200)))],
            "spec.analysis.stepWeightPromotion",
        ),
        case(
            C,
            "primaryReadyThreshold",
            &[("/analysis/primaryReadyThreshold", v(json!(101)))],
            "spec.analysis.primaryReadyThreshold",
        ),
        case(
            C,
            "canaryReadyThreshold",
            &[("/analysis/canaryReadyThreshold", v(json!(500)))],
            "spec.analysis.canaryReadyThreshold",
        ),
        case(
            C,
            "mirror on kubernetes",
            &[("/analysis/mirror", v(json!(true)))],
            "spec.analysis.mirror",
        ),
        case(
            C,
            "match on kubernetes",
            &[hdr(json!({"x-canary": {"exact": "1"}}))],
            "spec.analysis.match",
        ),
        case(
            C,
            "metric interval",
            &[("/analysis/metrics/0/interval", v(json!("soon")))],
            "spec.analysis.metrics[rate].interval",
        ),
        case(
            C,
            "metric interval zero",
            &[("/analysis/metrics/0/interval", v(json!("0s")))],
            "spec.analysis.metrics[rate].interval",
        ),
        case(
            C,
            "metric timeout zero",
            &[("/analysis/metrics/0/timeout", v(json!("0s")))],
            "spec.analysis.metrics[rate].timeout",
        ),
        case(
            C,
            "metric timeout words",
            &[("/analysis/metrics/0/timeout", v(json!("later")))],
            "spec.analysis.metrics[rate].timeout",
        ),
        case(
            C,
            "threshold range inverted",
            &[(
                "/analysis/metrics/0/thresholdRange",
                v(json!({"min": 5, "max": 1})),
            )],
            "spec.analysis.metrics[rate].thresholdRange",
        ),
        case(
            C,
            "no threshold",
            &[("/analysis/metrics/0/thresholdRange", None)],
            "spec.analysis.metrics[rate].thresholdRange",
        ),
        case(
            C,
            "empty threshold range",
            &[("/analysis/metrics/0/thresholdRange", v(json!({})))],
            "spec.analysis.metrics[rate].thresholdRange",
        ),
        case(
            C,
            "query typo",
            &[(
                "/analysis/metrics/0/query",
                v(json!("rate(x[{{ intervall }}])")),
            )],
            "spec.analysis.metrics[rate].query",
        ),
        case(
            C,
            "query unterminated",
            &[(
                "/analysis/metrics/0/query",
                v(json!("rate(x[{{ interval ])")),
            )],
            "spec.analysis.metrics[rate].query",
        ),
        case(
            C,
            "query unset variable",
            &[(
                "/analysis/metrics/0/query",
                v(json!("x{c=\"{{ variables.cluster }}\"}")),
            )],
            "spec.analysis.metrics[rate].query",
        ),
        case(
            C,
            "query empty",
            &[("/analysis/metrics/0/query", v(json!("")))],
            "spec.analysis.metrics[rate].query",
        ),
        case(
            C,
            "minSampleCount alone",
            &[("/analysis/metrics/0/minSampleCount", v(json!(10)))],
            "spec.analysis.metrics[rate].sampleCountQuery",
        ),
        case(
            C,
            "minSampleCount negative",
            &[
                ("/analysis/metrics/0/minSampleCount", v(json!(-1))),
                ("/analysis/metrics/0/sampleCountQuery", v(json!("sum(up)"))),
            ],
            "spec.analysis.metrics[rate].minSampleCount",
        ),
        case(
            C,
            "sampleCountQuery typo",
            &[(
                "/analysis/metrics/0/sampleCountQuery",
                v(json!("{{ nope }}")),
            )],
            "spec.analysis.metrics[rate].sampleCountQuery",
        ),
        case(
            C,
            "custom metric no query",
            &[
                ("/analysis/metrics/0/query", None),
                ("/analysis/metrics/0/name", v(json!("custom"))),
            ],
            "spec.analysis.metrics[custom]",
        ),
        case(
            C,
            "templateRef name",
            &[
                ("/analysis/metrics/0/query", None),
                (
                    "/analysis/metrics/0/templateRef",
                    v(json!({"name": "Bad_Name"})),
                ),
            ],
            "spec.analysis.metrics[rate].templateRef.name",
        ),
        case(
            C,
            "metric name empty",
            &[("/analysis/metrics/0/name", v(json!("")))],
            "spec.analysis.metrics[].name",
        ),
        case(
            C,
            "webhook url words",
            &[("/analysis/webhooks/0/url", v(json!("not a url")))],
            "spec.analysis.webhooks[gate].url",
        ),
        case(
            C,
            "webhook url ftp",
            &[("/analysis/webhooks/0/url", v(json!("ftp://loadtester/")))],
            "spec.analysis.webhooks[gate].url",
        ),
        case(
            C,
            "webhook url no host",
            &[("/analysis/webhooks/0/url", v(json!("http://")))],
            "spec.analysis.webhooks[gate].url",
        ),
        case(
            C,
            "webhook timeout zero",
            &[("/analysis/webhooks/0/timeout", v(json!("0s")))],
            "spec.analysis.webhooks[gate].timeout",
        ),
        case(
            C,
            "webhook timeout words",
            &[("/analysis/webhooks/0/timeout", v(json!("fast")))],
            "spec.analysis.webhooks[gate].timeout",
        ),
        case(
            C,
            "webhook secret name",
            &[(
                "/analysis/webhooks/0/headersSecretRef",
                v(json!({"name": "Bad_Name"})),
            )],
            "spec.analysis.webhooks[gate].headersSecretRef.name",
        ),
        case(
            C,
            "webhook name empty",
            &[("/analysis/webhooks/0/name", v(json!("")))],
            "spec.analysis.webhooks[].name",
        ),
        case(
            C,
            "alert severity",
            &[(
                "/analysis/alerts",
                v(json!([{"name": "a", "severity": "critical", "providerRef": {"name": "team"}}])),
            )],
            "spec.analysis.alerts[a].severity",
        ),
        case(
            C,
            "alert provider name",
            &[(
                "/analysis/alerts",
                v(json!([{"name": "a", "providerRef": {"name": "Bad_Name"}}])),
            )],
            "spec.analysis.alerts[a].providerRef.name",
        ),
        case(
            C,
            "alert name empty",
            &[(
                "/analysis/alerts",
                v(json!([{"name": "", "providerRef": {"name": "team"}}])),
            )],
            "spec.analysis.alerts[].name",
        ),
        case(
            C,
            "header name",
            &[
                istio.clone(),
                ab.clone(),
                hdr(json!({"x canary": {"exact": "1"}})),
            ],
            "spec.analysis.match[0].headers[x canary]",
        ),
        case(
            C,
            "cookie regex",
            &[
                istio.clone(),
                ab.clone(),
                hdr(json!({"cookie": {"regex": "^(.*?;)?(canary=always(;.*)?$"}})),
            ],
            "spec.analysis.match[0].headers[cookie].regex",
        ),
        case(
            C,
            "header two kinds",
            &[
                istio.clone(),
                ab.clone(),
                hdr(json!({"x-user": {"exact": "a", "prefix": "b"}})),
            ],
            "spec.analysis.match[0].headers[x-user]",
        ),
        case(
            C,
            "header no kind",
            &[istio.clone(), ab.clone(), hdr(json!({"x-user": {}}))],
            "spec.analysis.match[0].headers[x-user]",
        ),
        case(
            C,
            "header non-ascii",
            &[
                istio.clone(),
                ab.clone(),
                hdr(json!({"x-usér": {"exact": "a"}})),
            ],
            "spec.analysis.match[0].headers[x-usér]",
        ),
        case(
            C,
            "query param empty",
            &[
                istio.clone(),
                ab.clone(),
                (
                    "/analysis/match",
                    v(json!([{"queryParams": {"": {"exact": "1"}}}])),
                ),
            ],
            "spec.analysis.match[0].queryParams[]",
        ),
        case(
            C,
            "query param regex",
            &[
                istio.clone(),
                ab.clone(),
                (
                    "/analysis/match",
                    v(json!([{"queryParams": {"q": {"regex": "("}}}])),
                ),
            ],
            "spec.analysis.match[0].queryParams[q].regex",
        ),
        case(
            C,
            "cookie name space",
            &[sa(json!({"cookieName": "bad cookie"}))],
            "spec.analysis.sessionAffinity.cookieName",
        ),
        case(
            C,
            "cookie name empty",
            &[sa(json!({"cookieName": ""}))],
            "spec.analysis.sessionAffinity.cookieName",
        ),
        case(
            C,
            "cookie sameSite",
            &[sa(json!({"cookieName": "c", "sameSite": "strictest"}))],
            "spec.analysis.sessionAffinity.sameSite",
        ),
        case(
            C,
            "cookie maxAge",
            &[sa(json!({"cookieName": "c", "maxAge": -1}))],
            "spec.analysis.sessionAffinity.maxAge",
        ),
        case(
            C,
            "cookie same names",
            &[sa(json!({"cookieName": "c", "primaryCookieName": "c"}))],
            "spec.analysis.sessionAffinity.primaryCookieName",
        ),
        case(
            C,
            "cookie primary name",
            &[sa(json!({"cookieName": "c", "primaryCookieName": "a;b"}))],
            "spec.analysis.sessionAffinity.primaryCookieName",
        ),
        case(
            C,
            "autoscaler kind",
            &[(
                "/autoscalerRef",
                v(
                    json!({"apiVersion": "autoscaling.k8s.io/v1", "kind": "VerticalPodAutoscaler", "name": "x"}),
                ),
            )],
            "spec.autoscalerRef.kind",
        ),
        // The API server's schema refuses these at admission; 1.20 names a field
        // inside a list without its index (`spec.analysis.webhooks.type`).
        case(
            C,
            "port string",
            &[("/service/port", v(json!("eighty")))],
            "spec.service.port",
        ),
        case(
            C,
            "stepWeight negative",
            &[("/analysis/stepWeight", v(json!(-10)))],
            "spec.analysis.stepWeight",
        ),
        case(
            C,
            "iterations string",
            &[("/analysis/iterations", v(json!("three")))],
            "spec.analysis.iterations",
        ),
        case(
            C,
            "webhook type",
            &[("/analysis/webhooks/0/type", v(json!("sometimes")))],
            "spec.analysis.webhooks.type",
        ),
        case(C, "no targetRef", &[("/targetRef", None)], "spec.targetRef"),
        case(
            C,
            "target name number",
            &[("/targetRef/name", v(json!(42)))],
            "spec.targetRef.name",
        ),
        case(
            C,
            "threshold string",
            &[("/analysis/metrics/0/thresholdRange/min", v(json!("high")))],
            "spec.analysis.metrics.thresholdRange.min",
        ),
        case(
            C,
            "onNoData",
            &[("/analysis/metrics/0/onNoData", v(json!("maybe")))],
            "spec.analysis.metrics.onNoData",
        ),
        case(
            C,
            "skipAnalysis string",
            &[("/skipAnalysis", v(json!("yes")))],
            "spec.skipAnalysis",
        ),
        case(
            C,
            "threshold negative",
            &[("/analysis/threshold", v(json!(-1)))],
            "spec.analysis.threshold",
        ),
        case(
            C,
            "minReplicas 0",
            &[(
                "/autoscalerRef",
                v(
                    json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "name": "x", "primaryScalerReplicas": {"minReplicas": 0}}),
                ),
            )],
            "spec.autoscalerRef.primaryScalerReplicas.minReplicas",
        ),
        case(
            C,
            "gatewayRef port",
            &[(
                "/service/gatewayRefs",
                v(json!([{"name": "gw", "port": 70000}])),
            )],
            "spec.service.gatewayRefs.port",
        ),
        case(
            C,
            "webhook retries",
            &[("/analysis/webhooks/0/retries", v(json!(-1)))],
            "spec.analysis.webhooks.retries",
        ),
        case(
            C,
            "stepWeights strings",
            &[("/analysis/stepWeights", v(json!(["ten"])))],
            "spec.analysis.stepWeights",
        ),
        case(
            C,
            "webhook no url",
            &[("/analysis/webhooks/0/url", None)],
            "spec.analysis.webhooks.url",
        ),
        case(
            C,
            "metric no name",
            &[("/analysis/metrics/0/name", None)],
            "spec.analysis.metrics.name",
        ),
        case(
            C,
            "analysis list",
            &[("/analysis", v(json!([1, 2])))],
            "spec.analysis",
        ),
        case(
            C,
            "service port missing",
            &[("/service/port", None)],
            "spec.service.port",
        ),
    ]
}

fn template_cases() -> Vec<Case> {
    use Kind::MetricTemplate as T;
    vec![
        case(
            T,
            "type cloudwatch",
            &[("/provider/type", v(json!("cloudwatch")))],
            "spec.provider.type",
        ),
        case(
            T,
            "type case",
            &[("/provider/type", v(json!("Prometheus")))],
            "spec.provider.type",
        ),
        case(
            T,
            "type made up",
            &[("/provider/type", v(json!("graphana")))],
            "spec.provider.type",
        ),
        case(
            T,
            "address no scheme",
            &[("/provider/address", v(json!("prometheus:9090")))],
            "spec.provider.address",
        ),
        case(
            T,
            "address ftp",
            &[("/provider/address", v(json!("ftp://prom")))],
            "spec.provider.address",
        ),
        case(
            T,
            "address no host",
            &[("/provider/address", v(json!("http://")))],
            "spec.provider.address",
        ),
        case(
            T,
            "address words",
            &[
                ("/provider/type", v(json!("datadog"))),
                ("/provider/address", v(json!("not a url"))),
            ],
            "spec.provider.address",
        ),
        case(
            T,
            "timeout words",
            &[("/provider/timeout", v(json!("5 seconds")))],
            "spec.provider.timeout",
        ),
        case(
            T,
            "timeout zero",
            &[("/provider/timeout", v(json!("0s")))],
            "spec.provider.timeout",
        ),
        case(
            T,
            "header name",
            &[("/provider/headers", v(json!({"bad header": ["v"]})))],
            "spec.provider.headers[bad header]",
        ),
        case(
            T,
            "header value",
            &[("/provider/headers", v(json!({"x-a": ["line\nbreak"]})))],
            "spec.provider.headers[x-a]",
        ),
        case(
            T,
            "secret name",
            &[("/provider/secretRef", v(json!({"name": "Bad_Name"})))],
            "spec.provider.secretRef.name",
        ),
        case(T, "query empty", &[("/query", v(json!("")))], "spec.query"),
        case(
            T,
            "query typo",
            &[("/query", v(json!("{{ podname }}")))],
            "spec.query",
        ),
        case(
            T,
            "query unterminated",
            &[("/query", v(json!("rate(x[{{ interval ]")))],
            "spec.query",
        ),
        case(
            T,
            "query variable unset",
            &[("/query", v(json!("x{c=\"{{ variables.cluster }}\"}")))],
            "spec.analysis.metrics[tpl].templateVariables",
        ),
        // Refused by the schema.
        case(
            T,
            "type number",
            &[("/provider/type", v(json!(7)))],
            "spec.provider.type",
        ),
        case(T, "no query", &[("/query", None)], "spec.query"),
        case(T, "no provider", &[("/provider", None)], "spec.provider"),
        case(
            T,
            "skip verify string",
            &[("/provider/insecureSkipVerify", v(json!("yes")))],
            "spec.provider.insecureSkipVerify",
        ),
        case(
            T,
            "headers not lists",
            &[("/provider/headers", v(json!({"x": "notalist"})))],
            "spec.provider.headers.x",
        ),
    ]
}

fn alert_cases() -> Vec<Case> {
    use Kind::AlertProvider as A;
    vec![
        case(
            A,
            "type pagerduty",
            &[("/type", v(json!("pagerduty")))],
            "spec.type",
        ),
        case(A, "type case", &[("/type", v(json!("Slack")))], "spec.type"),
        case(
            A,
            "address no scheme",
            &[("/address", v(json!("hooks.slack.com/x")))],
            "spec.address",
        ),
        case(
            A,
            "address ftp",
            &[("/address", v(json!("ftp://hooks")))],
            "spec.address",
        ),
        case(
            A,
            "address no host",
            &[("/address", v(json!("http://")))],
            "spec.address",
        ),
        case(A, "no address", &[("/address", None)], "spec.address"),
        case(
            A,
            "proxy words",
            &[("/proxy", v(json!("::")))],
            "spec.proxy",
        ),
        case(
            A,
            "proxy scheme",
            &[("/proxy", v(json!("gopher://p")))],
            "spec.proxy",
        ),
        case(
            A,
            "secret name",
            &[("/secretRef", v(json!({"name": "Bad_Name"})))],
            "spec.secretRef.name",
        ),
        // Refused by the schema.
        case(A, "no type", &[("/type", None)], "spec.type"),
        case(A, "type number", &[("/type", v(json!(3)))], "spec.type"),
        case(
            A,
            "secretRef string",
            &[("/secretRef", v(json!("name")))],
            "spec.secretRef",
        ),
        case(
            A,
            "channel list",
            &[("/channel", v(json!(["a"])))],
            "spec.channel",
        ),
    ]
}

#[derive(Default, Debug)]
struct Counts(BTreeMap<(Kind, &'static str), usize>);

impl Counts {
    fn add(&mut self, k: Kind, outcome: &'static str) {
        *self.0.entry((k, outcome)).or_default() += 1;
    }
}

/// Everything about a user object a controller could change.
fn user_view<T: serde::Serialize>(o: &T) -> Result<Value> {
    let v = serde_json::to_value(o)?;
    Ok(json!({
        "spec": v["spec"], "data": v["data"], "generation": v["metadata"]["generation"],
        "labels": v["metadata"]["labels"], "annotations": v["metadata"]["annotations"],
        "finalizers": v["metadata"]["finalizers"], "owners": v["metadata"]["ownerReferences"],
    }))
}

async fn user_objects(client: &kube::Client, ns: &str) -> Result<Value> {
    let d = Api::<Deployment>::namespaced(client.clone(), ns)
        .get("victim")
        .await?;
    let s = Api::<Service>::namespaced(client.clone(), ns)
        .get("victim")
        .await?;
    let c = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get("victim-cfg")
        .await?;
    Ok(
        json!({"deployment": user_view(&d)?, "service": user_view(&s)?, "configmap": user_view(&c)?}),
    )
}

fn ready_condition(c: &Value) -> Option<(String, String, String)> {
    c["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|x| x["type"] == "Ready")
        .map(|x| {
            (
                x["status"].as_str().unwrap_or("").to_string(),
                x["reason"].as_str().unwrap_or("").to_string(),
                x["message"].as_str().unwrap_or("").to_string(),
            )
        })
}

#[tokio::test]
async fn malformed_corpus_is_refused_with_field_paths_while_a_valid_release_is_promoted()
-> Result<()> {
    let Some(env) = ClusterEnv::for_test("malformed_corpus") else {
        return Ok(());
    };
    let t0 = Instant::now();
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-bad").await?;
    let rx = WebhookReceiver::start().await?;
    let mut op = Operator::start(&env, &ns.name, &["--provider", "kubernetes"]).await?;

    // The valid release, and the user objects the malformed Canaries point at.
    let mut good = SampleApp::new(&ns.name, "good", &env.sample_app_command());
    good.deploy(&client).await?;
    apply_json(
        &client,
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "victim-cfg", "namespace": ns.name}, "data": {"MESSAGE": "hi"}}),
    )
    .await?;
    SampleApp::new(&ns.name, "victim", &env.sample_app_command())
        .env_json(json!({"name": "MESSAGE", "valueFrom": {"configMapKeyRef": {"name": "victim-cfg", "key": "MESSAGE"}}}))
        .deploy(&client)
        .await?;
    let gate = rx.url("/gate");
    apply_json(
        &client,
        json!({"apiVersion": "serin.dev/v1beta1", "kind": "Canary",
               "metadata": {"name": "good", "namespace": ns.name}, "spec": base_canary("good", &gate)}),
    )
    .await?;
    let api = canaries(&client, &ns.name);
    wait_phase(&api, "good", "Initialized", Duration::from_secs(60), &op).await?;
    // Let the victim settle (the simulator writes its status) before the snapshot.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = user_objects(&client, &ns.name).await?;
    good = good.version("v2");
    release(&client, &good).await?;

    let mut counts = Counts::default();
    let mut failures = Vec::new();
    // Name -> (kind, label, field) of every stored document that must be refused.
    let mut admitted: BTreeMap<String, (Kind, &'static str, &'static str)> = BTreeMap::new();
    let mut total = 0;

    // Templates and providers first, with the Canary that uses each: the operator
    // validates them through the Canary (they have no status of their own).
    let mut referring = Vec::new();
    for (i, c) in template_cases()
        .into_iter()
        .chain(alert_cases())
        .enumerate()
    {
        total += 1;
        let name = format!("ref-{i}");
        let (mut spec, kind_name, api_version) = match c.kind {
            Kind::MetricTemplate => (base_template(), "MetricTemplate", "serin.dev/v1beta1"),
            _ => (base_alert(), "AlertProvider", "serin.dev/v1beta1"),
        };
        for (p, val) in &c.edits {
            set(&mut spec, p, val.clone());
        }
        let doc = json!({"apiVersion": api_version, "kind": kind_name,
                         "metadata": {"name": name, "namespace": ns.name}, "spec": spec});
        match apply_json(&client, doc).await {
            Err(e) => {
                let msg = format!("{e:#}");
                if msg.contains(c.field) {
                    counts.add(c.kind, "rejected by the API server, field named");
                } else {
                    counts.add(c.kind, "rejected by the API server, field NOT named");
                    failures.push(format!(
                        "{kind_name} {:?}: rejected without {:?}: {msg}",
                        c.label, c.field
                    ));
                }
            }
            Ok(_) => {
                let mut cspec = base_canary("ghost", &gate);
                if c.kind == Kind::MetricTemplate {
                    set(
                        &mut cspec,
                        "/analysis/metrics/0",
                        Some(json!({
                            "name": "tpl", "templateRef": {"name": name}, "thresholdRange": {"min": 0}
                        })),
                    );
                } else {
                    set(
                        &mut cspec,
                        "/analysis/alerts",
                        Some(json!([{"name": "team", "providerRef": {"name": name}}])),
                    );
                }
                referring.push((format!("uses-{name}"), cspec, c));
            }
        }
    }
    // The operator's caches see the templates before the Canaries that name them.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (name, spec, c) in referring {
        apply_json(
            &client,
            json!({"apiVersion": "serin.dev/v1beta1", "kind": "Canary",
                   "metadata": {"name": name, "namespace": ns.name}, "spec": spec}),
        )
        .await
        .with_context(|| format!("Canary {name} using a malformed {:?} {:?}", c.kind, c.label))?;
        admitted.insert(name, (c.kind, c.label, c.field));
    }
    for (i, c) in canary_cases().into_iter().enumerate() {
        total += 1;
        let name = format!("bad-{i}");
        // The autoscaler is checked once the target is found: aim that one at the
        // victim; the rest too, so that any accepted by mistake would touch it.
        let mut spec = base_canary("victim", &gate);
        for (p, val) in &c.edits {
            set(&mut spec, p, val.clone());
        }
        let doc = json!({"apiVersion": "serin.dev/v1beta1", "kind": "Canary",
                         "metadata": {"name": name, "namespace": ns.name}, "spec": spec});
        match apply_json(&client, doc).await {
            Err(e) => {
                let msg = format!("{e:#}");
                if msg.contains(c.field) {
                    counts.add(c.kind, "rejected by the API server, field named");
                } else {
                    counts.add(c.kind, "rejected by the API server, field NOT named");
                    failures.push(format!(
                        "Canary {:?}: rejected without {:?}: {msg}",
                        c.label, c.field
                    ));
                }
            }
            Ok(_) => {
                admitted.insert(name, (c.kind, c.label, c.field));
            }
        }
    }

    // Every stored one: Ready=False naming the field, and one Event.
    let mut pending = admitted.clone();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    while !pending.is_empty() && Instant::now() < deadline {
        let list = api.list(&ListParams::default()).await?;
        for c in list.items {
            let name = c.metadata.name.clone().unwrap_or_default();
            let Some((_, _, field)) = pending.get(&name).copied() else {
                continue;
            };
            let c = serde_json::to_value(&c)?;
            if let Some((status, reason, message)) = ready_condition(&c) {
                last.insert(name.clone(), format!("{status} {reason}: {message}"));
                if status == "False" && message.contains(field) {
                    pending.remove(&name);
                }
            }
            if c["status"]["phase"].is_string() {
                last.insert(
                    name.clone(),
                    format!("phase {}: accepted", c["status"]["phase"]),
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Events are written after the status: give the last ones a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let events = Api::<Event>::namespaced(client.clone(), &ns.name)
        .list(&ListParams::default())
        .await?;
    let mut events_of: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in &events.items {
        if let Some(n) = &e.involved_object.name {
            events_of.entry(n.clone()).or_default().push(format!(
                "{} {}",
                e.reason.clone().unwrap_or_default(),
                e.message.clone().unwrap_or_default()
            ));
        }
    }
    for (name, (kind, label, field)) in &admitted {
        if pending.contains_key(name) {
            counts.add(*kind, "stored, NOT refused by the operator");
            failures.push(format!(
                "{kind:?} {label:?} ({name}): no Ready=False naming {field:?}; last: {}",
                last.get(name).map(String::as_str).unwrap_or("no status")
            ));
            continue;
        }
        let evs = events_of.get(name).cloned().unwrap_or_default();
        if evs.len() == 1 && evs[0].contains(field) {
            counts.add(*kind, "stored, Ready=False with the field, one Event");
        } else {
            counts.add(
                *kind,
                "stored, Ready=False, but not exactly one Event naming the field",
            );
            failures.push(format!("{kind:?} {label:?} ({name}): events {evs:?}"));
        }
    }

    // The valid release beside them is promoted.
    let done = wait_phase(&api, "good", "Succeeded", Duration::from_secs(120), &op).await;
    // Nothing of the user's changed, and nothing was generated for the victim.
    let after = user_objects(&client, &ns.name).await?;
    let generated = Api::<Deployment>::namespaced(client.clone(), &ns.name)
        .get_opt("victim-primary")
        .await?
        .is_some();
    let exited = op.exited();
    let log = std::fs::read_to_string(&op.log)?;

    println!(
        "malformed corpus: {total} documents, {} stored, in {:?}",
        admitted.len(),
        t0.elapsed()
    );
    for ((kind, outcome), n) in &counts.0 {
        println!("  {kind:?}: {outcome}: {n}");
    }
    assert!(
        exited.is_none(),
        "the operator exited: {exited:?}\n{}",
        op.log_tail(40)
    );
    assert!(
        !log.contains("panicked"),
        "the operator panicked:\n{}",
        op.log_tail(60)
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(total >= 100, "only {total} documents");
    assert_eq!(before, after, "a user object was modified");
    assert!(!generated, "a malformed Canary took over the victim");
    done?;
    drop(op);
    ns.cleanup().await?;
    Ok(())
}
