//! Metric and webhook checks end to end against local fake servers.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Instant;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap as AxHeaders, StatusCode};
use axum::routing::{get, post};

use super::prometheus::tests::{client, serve};
use super::*;
use crate::crd::{
    CanaryAnalysis, CanaryService, CanarySpec, CanaryStatus, MetricProvider, MetricTemplateSpec,
    SecretRef, TargetRef, TemplateRef, ThresholdRange,
};

// ---- verdict rules ---------------------------------------------------------

#[test]
fn verdict_rules() {
    let min99 = Bounds {
        min: Some(99.0),
        max: None,
    };
    let max500 = Bounds {
        min: None,
        max: Some(500.0),
    };
    let both = Bounds {
        min: Some(1.0),
        max: Some(10.0),
    };
    use OnNoData::{Fail as NdFail, Hold, Pass as NdPass};
    use Verdict::{Fail, Inconclusive, Pass};
    type Case<'a> = (
        Option<f64>,
        Option<(f64, f64)>,
        Bounds,
        OnNoData,
        Verdict,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (Some(99.5), None, min99, Hold, Pass, "99.5 is >= 99"),
        (Some(99.0), None, min99, Hold, Pass, "99 is >= 99"),
        (
            Some(80.0),
            None,
            min99,
            Hold,
            Fail,
            "80 is below the minimum 99 by 19",
        ),
        (Some(250.0), None, max500, Hold, Pass, "250 is <= 500"),
        (
            Some(612.5),
            None,
            max500,
            Hold,
            Fail,
            "612.5 is above the maximum 500 by 112.5",
        ),
        (Some(0.5), None, both, Hold, Fail, "below the minimum 1"),
        (Some(11.0), None, both, Hold, Fail, "above the maximum 10"),
        (Some(5.0), None, both, Hold, Pass, "5 is >= 1 and <= 10"),
        (None, None, min99, Hold, Inconclusive, "no data"),
        (None, None, min99, NdFail, Fail, "onNoData is fail"),
        (None, None, min99, NdPass, Pass, "onNoData is pass"),
        // Too few samples holds even when the value would fail or there is none.
        (
            Some(10.0),
            Some((3.0, 20.0)),
            min99,
            NdFail,
            Inconclusive,
            "only 3 samples, minSampleCount is 20",
        ),
        (
            None,
            Some((0.0, 1.0)),
            min99,
            NdFail,
            Inconclusive,
            "only 0 samples",
        ),
        (
            Some(10.0),
            Some((20.0, 20.0)),
            min99,
            Hold,
            Fail,
            "below the minimum",
        ),
        (
            Some(100.0),
            Some((25.0, 20.0)),
            min99,
            Hold,
            Pass,
            "100 is >= 99",
        ),
    ];
    for (value, samples, bounds, on_no_data, want, needle) in cases {
        let (verdict, message) = judge(value, samples, bounds, on_no_data);
        assert_eq!(
            verdict, want,
            "{value:?} {samples:?} {bounds} {on_no_data:?}: {message}"
        );
        assert!(
            message.contains(needle),
            "{message:?} should contain {needle:?}"
        );
    }
}

#[test]
fn bounds_follow_flagger() {
    let m = |name: &str,
             threshold: Option<f64>,
             range: Option<(Option<f64>, Option<f64>)>,
             query: Option<&str>| CanaryMetric {
        name: name.into(),
        threshold,
        threshold_range: range.map(|(min, max)| ThresholdRange { min, max }),
        query: query.map(String::from),
        ..Default::default()
    };
    let cases = [
        (
            m("request-success-rate", Some(99.0), None, None),
            Some((Some(99.0), None)),
            ">= 99",
        ),
        (
            m("request-duration", Some(500.0), None, None),
            Some((None, Some(500.0))),
            "<= 500",
        ),
        // A custom query with the deprecated threshold: Flagger fails when above it.
        (
            m("request-success-rate", Some(5.0), None, Some("up")),
            Some((None, Some(5.0))),
            "<= 5",
        ),
        (
            m("errors", Some(5.0), None, Some("up")),
            Some((None, Some(5.0))),
            "<= 5",
        ),
        (
            m(
                "request-duration",
                Some(1.0),
                Some((Some(2.0), Some(3.0))),
                None,
            ),
            Some((Some(2.0), Some(3.0))),
            ">= 2 and <= 3",
        ),
        (m("x", None, Some((None, None)), Some("up")), None, ""),
        (m("request-success-rate", None, None, None), None, ""),
    ];
    for (metric, want, shown) in cases {
        match (bounds(&metric), want) {
            (Ok(b), Some((min, max))) => {
                assert_eq!((b.min, b.max), (min, max), "{metric:?}");
                assert_eq!(b.to_string(), shown);
            }
            (Err(e), None) => assert!(matches!(e, AnalysisError::NoThreshold)),
            (got, want) => panic!("{metric:?}: got {got:?}, want {want:?}"),
        }
    }
}

// ---- fakes -----------------------------------------------------------------

#[derive(Default)]
struct FakeSecrets(BTreeMap<(String, String), BTreeMap<String, Vec<u8>>>);

impl SecretSource for FakeSecrets {
    fn get<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<SecretData>, AnalysisError>> {
        Box::pin(async move {
            Ok(self
                .0
                .get(&(namespace.to_string(), name.to_string()))
                .cloned())
        })
    }
}

#[derive(Default)]
struct FakeTemplates(Vec<MetricTemplate>);

impl TemplateSource for FakeTemplates {
    fn get(&self, namespace: &str, name: &str) -> Option<MetricTemplate> {
        self.0
            .iter()
            .find(|t| {
                t.metadata.namespace.as_deref() == Some(namespace)
                    && t.metadata.name.as_deref() == Some(name)
            })
            .cloned()
    }
}

fn template(ns: &str, name: &str, query: &str, provider: MetricProvider) -> MetricTemplate {
    let mut t = MetricTemplate::new(
        name,
        MetricTemplateSpec {
            provider,
            query: query.into(),
        },
    );
    t.metadata.namespace = Some(ns.into());
    t
}

/// Fake Prometheus: the first rule whose needle the query contains decides the
/// answer (`"slow"` sleeps, `"empty"` has no samples, a number is the value, anything
/// else is a parse error). Queries seen are recorded.
#[derive(Default)]
struct Prom {
    rules: Vec<(String, String)>,
    seen: Mutex<Vec<(String, Option<String>)>>,
    /// Metric name to the label sets of its series, for `/api/v1/series|labels`.
    series: Vec<(String, Vec<serde_json::Value>)>,
}

type Answer = (
    StatusCode,
    [(axum::http::HeaderName, &'static str); 1],
    String,
);

fn json_answer(status: StatusCode, body: String) -> Answer {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
}

/// The series of the metric named in `match[]` (`{__name__="m"}`), with an auth
/// check like the query endpoint's.
fn series_of(p: &Prom, q: &HashMap<String, String>) -> Vec<serde_json::Value> {
    let selector = q.get("match[]").cloned().unwrap_or_default();
    let name = selector.split('"').nth(1).unwrap_or_default().to_string();
    p.series
        .iter()
        .find(|(m, _)| *m == name)
        .map(|(_, s)| s.clone())
        .unwrap_or_default()
}

async fn series_handler(
    State(p): State<Arc<Prom>>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    let data = serde_json::Value::Array(series_of(&p, &q));
    json_answer(
        StatusCode::OK,
        serde_json::json!({"status": "success", "data": data}).to_string(),
    )
}

async fn labels_handler(
    State(p): State<Arc<Prom>>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    let mut names: Vec<String> = series_of(&p, &q)
        .iter()
        .filter_map(|s| s.as_object())
        .flat_map(|o| o.keys().cloned())
        .collect();
    names.sort();
    names.dedup();
    json_answer(
        StatusCode::OK,
        serde_json::json!({"status": "success", "data": names}).to_string(),
    )
}

async fn prom_handler(
    State(p): State<Arc<Prom>>,
    Query(q): Query<HashMap<String, String>>,
    headers: AxHeaders,
) -> Answer {
    let query = q.get("query").cloned().unwrap_or_default();
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    if let Ok(mut seen) = p.seen.lock() {
        seen.push((query.clone(), auth));
    }
    let rule = p
        .rules
        .iter()
        .find(|(needle, _)| query.contains(needle.as_str()))
        .map(|(_, a)| a.clone());
    let vector = |v: &str| {
        format!(
            r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{}},"value":[1,"{v}"]}}]}}}}"#
        )
    };
    match rule.as_deref() {
        Some("slow") => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            json_answer(StatusCode::OK, vector("1"))
        }
        Some("empty") => json_answer(
            StatusCode::OK,
            r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#.into(),
        ),
        Some(v) if v.parse::<f64>().is_ok() => json_answer(StatusCode::OK, vector(v)),
        _ => json_answer(
            StatusCode::BAD_REQUEST,
            r#"{"status":"error","errorType":"bad_data","error":"1:5: parse error: unexpected end of input"}"#.into(),
        ),
    }
}

async fn fake_prom(rules: &[(&str, &str)]) -> (String, Arc<Prom>) {
    fake_prom_with_series(rules, Vec::new()).await
}

async fn fake_prom_with_series(
    rules: &[(&str, &str)],
    series: Vec<(String, Vec<serde_json::Value>)>,
) -> (String, Arc<Prom>) {
    let p = Arc::new(Prom {
        rules: rules
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
        seen: Mutex::new(Vec::new()),
        series,
    });
    let app = Router::new()
        .route("/api/v1/query", get(prom_handler))
        .route("/api/v1/series", get(series_handler))
        .route("/api/v1/labels", get(labels_handler))
        .with_state(p.clone());
    (serve(app).await, p)
}

fn canary(provider: &str, metrics: Vec<CanaryMetric>, webhooks: Vec<CanaryWebhook>) -> Canary {
    let mut c = Canary::new(
        "podinfo",
        CanarySpec {
            provider: Some(provider.into()),
            target_ref: TargetRef {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                name: "podinfo".into(),
            },
            service: Some(CanaryService {
                port: 80,
                ..Default::default()
            }),
            analysis: Some(CanaryAnalysis {
                interval: Some("10s".into()),
                step_weight: Some(10),
                metrics: Some(metrics),
                webhooks: Some(webhooks),
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    c.metadata.namespace = Some("test".into());
    c.status = Some(CanaryStatus {
        last_applied_spec: Some("rev-1".into()),
        ..Default::default()
    });
    c
}

fn ctx(server: Option<&str>, secrets: FakeSecrets, templates: FakeTemplates) -> AnalysisCtx {
    let mut ctx = AnalysisCtx::new(
        client(),
        server.map(String::from),
        Arc::new(secrets),
        Arc::new(templates),
    );
    ctx.webhook_backoff = Duration::from_millis(10);
    ctx
}

fn metric(name: &str) -> CanaryMetric {
    CanaryMetric {
        name: name.into(),
        interval: Some("30s".into()),
        ..Default::default()
    }
}

fn by_name<'a>(checks: &'a [CheckStatus], name: &str) -> &'a CheckStatus {
    checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name} in {checks:?}"))
}

// ---- metric checks ---------------------------------------------------------

#[tokio::test]
async fn builtins_are_judged_with_flagger_thresholds() {
    let (addr, prom) = fake_prom(&[
        ("increase(traefik_service_requests_total", "150"),
        ("traefik_service_requests_total", "97.5"),
        ("traefik_service_request_duration_seconds_bucket", "230"),
    ])
    .await;
    let c = canary(
        "traefik",
        vec![
            CanaryMetric {
                threshold_range: Some(ThresholdRange {
                    min: Some(99.0),
                    max: None,
                }),
                ..metric("request-success-rate")
            },
            CanaryMetric {
                threshold: Some(500.0),
                min_sample_count: Some(100.0),
                ..metric("request-duration")
            },
        ],
        vec![],
    );
    let settings = Settings::from_spec(&c.spec, "traefik").unwrap();
    let ctx = ctx(
        Some(&addr),
        FakeSecrets::default(),
        FakeTemplates::default(),
    );
    let checks = run_metric_checks(&ctx, &c, &settings).await;
    assert_eq!(checks.len(), 2);
    let sr = by_name(&checks, "request-success-rate");
    assert_eq!(
        (sr.verdict, sr.value, sr.threshold.as_deref()),
        (Verdict::Fail, Some(97.5), Some(">= 99"))
    );
    assert_eq!(sr.kind, CheckKind::Metric);
    assert!(
        sr.message
            .as_deref()
            .unwrap()
            .contains("97.5 is below the minimum 99 by 1.5")
    );
    let d = by_name(&checks, "request-duration");
    assert_eq!(
        (d.verdict, d.value, d.threshold.as_deref()),
        (Verdict::Pass, Some(230.0), Some("<= 500"))
    );

    let seen = prom.seen.lock().unwrap().clone();
    assert!(
        seen.iter().any(|(q, _)| q
            .contains(r#"service=~"test-podinfo-canary-[0-9a-zA-Z-]+@kubernetescrd""#)
            && q.contains("[30s]")),
        "{seen:?}"
    );
}

#[tokio::test]
async fn no_data_holds_unless_told_otherwise() {
    let (addr, _) = fake_prom(&[("increase(", "3"), ("", "empty")]).await;
    let range = Some(ThresholdRange {
        min: Some(99.0),
        max: None,
    });
    let c = canary(
        "istio",
        vec![
            CanaryMetric {
                threshold_range: range.clone(),
                ..metric("request-success-rate")
            },
            CanaryMetric {
                name: "fails".into(),
                query: Some("sum(rate(x[1m]))".into()),
                threshold_range: range.clone(),
                on_no_data: Some(OnNoData::Fail),
                ..Default::default()
            },
            CanaryMetric {
                name: "passes".into(),
                query: Some("sum(rate(x[1m]))".into()),
                threshold_range: range.clone(),
                on_no_data: Some(OnNoData::Pass),
                ..Default::default()
            },
            CanaryMetric {
                name: "few-samples".into(),
                query: Some("sum(rate(x[1m]))".into()),
                threshold_range: range.clone(),
                on_no_data: Some(OnNoData::Fail),
                min_sample_count: Some(10.0),
                sample_count_query: Some("sum(increase(x[{{ interval }}]))".into()),
                ..Default::default()
            },
            CanaryMetric {
                name: "no-count-query".into(),
                query: Some("sum(rate(x[1m]))".into()),
                threshold_range: range,
                min_sample_count: Some(10.0),
                ..Default::default()
            },
        ],
        vec![],
    );
    // Validation refuses a custom metric with minSampleCount and no
    // sampleCountQuery (crd::validate); the runtime still fails it rather than
    // judging it, should one get past.
    let mut valid = c.clone();
    if let Some(ms) = valid
        .spec
        .analysis
        .as_mut()
        .and_then(|a| a.metrics.as_mut())
    {
        ms.retain(|m| m.name != "no-count-query");
    }
    let settings = Settings::from_spec(&valid.spec, "istio").unwrap();
    let checks = run_metric_checks(
        &ctx(
            Some(&addr),
            FakeSecrets::default(),
            FakeTemplates::default(),
        ),
        &c,
        &settings,
    )
    .await;
    let verdicts: Vec<(&str, Verdict)> = checks
        .iter()
        .map(|c| (c.name.as_str(), c.verdict))
        .collect();
    assert_eq!(
        verdicts,
        [
            ("request-success-rate", Verdict::Inconclusive),
            ("fails", Verdict::Fail),
            ("passes", Verdict::Pass),
            ("few-samples", Verdict::Inconclusive),
            ("no-count-query", Verdict::Fail),
        ]
    );
    assert!(checks[0].message.as_deref().unwrap().contains("no data"));
    assert!(
        checks[3]
            .message
            .as_deref()
            .unwrap()
            .contains("only 3 samples")
    );
    assert!(
        checks[4]
            .message
            .as_deref()
            .unwrap()
            .contains("sampleCountQuery")
    );
}

/// The issue's case: the app's series exist, under other label names than the
/// built-in selects on. The message names the query, the series found and their labels.
#[tokio::test]
async fn no_data_names_the_series_and_labels_that_exist() {
    let pod = |p: &str, ns: &str| {
        serde_json::json!({"__name__": "http_request_duration_seconds_count",
            "namespace": ns, "pod": p, "status": "200", "job": "pods"})
    };
    let (addr, _) = fake_prom_with_series(
        &[("", "empty")],
        vec![(
            "http_request_duration_seconds_count".into(),
            vec![
                pod("podinfo-5d9c-abcde", "test"),
                pod("podinfo-5d9c-fghij", "test"),
                pod("other-1-2", "elsewhere"),
            ],
        )],
    )
    .await;
    let mut c = canary(
        "kubernetes",
        vec![
            CanaryMetric {
                threshold_range: Some(ThresholdRange {
                    min: Some(99.0),
                    max: None,
                }),
                ..metric("request-success-rate")
            },
            CanaryMetric {
                name: "custom".into(),
                query: Some("sum(rate(not_exported_total[1m]))".into()),
                threshold_range: Some(ThresholdRange {
                    min: None,
                    max: Some(1.0),
                }),
                ..Default::default()
            },
        ],
        vec![],
    );
    if let Some(a) = c.spec.analysis.as_mut() {
        a.step_weight = None;
        a.iterations = Some(3);
    }
    let settings = Settings::from_spec(&c.spec, "kubernetes").unwrap();
    let mut cx = ctx(
        Some(&addr),
        FakeSecrets::default(),
        FakeTemplates::default(),
    );
    cx.metrics_labels = MetricsLabels::Flagger;
    let checks = run_metric_checks(&cx, &c, &settings).await;
    let rate = by_name(&checks, "request-success-rate");
    assert_eq!(rate.verdict, Verdict::Inconclusive, "{rate:?}");
    let m = rate.message.clone().unwrap_or_default();
    for needle in [
        "no data: the query returned no samples; holding until data arrives",
        "http_request_duration_seconds_count has 2 series in namespace test, none with kubernetes_namespace, kubernetes_pod_name; its labels are: job, namespace, pod, status",
        "--metrics-labels",
        r#"Query: (sum(rate(http_request_duration_seconds_count{kubernetes_namespace="test""#,
    ] {
        assert!(m.contains(needle), "{needle:?} not in {m:?}");
    }
    let custom = by_name(&checks, "custom");
    let m = custom.message.clone().unwrap_or_default();
    assert!(
        m.contains("not_exported_total has no series at all") && !m.contains("--metrics-labels"),
        "{m}"
    );

    // With the default convention the same series are found: no hold at all.
    let (addr, _) = fake_prom(&[(r#"pod=~"podinfo-"#, "100"), ("", "empty")]).await;
    let cx = ctx(
        Some(&addr),
        FakeSecrets::default(),
        FakeTemplates::default(),
    );
    let checks = run_metric_checks(&cx, &c, &settings).await;
    let rate = by_name(&checks, "request-success-rate");
    assert_eq!(rate.verdict, Verdict::Pass, "{rate:?}");
}

#[tokio::test]
async fn templates_render_variables_and_use_secret_auth() {
    let (addr, prom) = fake_prom(&[("error_budget", "0.4")]).await;
    let provider = MetricProvider {
        r#type: "prometheus".into(),
        address: Some("http://wrong.invalid:1".into()),
        secret_ref: Some(SecretRef {
            name: "prom-auth".into(),
        }),
        ..Default::default()
    };
    let templates = FakeTemplates(vec![template(
        "monitoring",
        "budget",
        r#"error_budget{ns="{{ namespace }}", app="{{ target }}", env="{{ variables.env }}"}[{{ interval }}]"#,
        provider,
    )]);
    let secrets = FakeSecrets(BTreeMap::from([(
        ("monitoring".to_string(), "prom-auth".to_string()),
        BTreeMap::from([
            ("address".to_string(), addr.clone().into_bytes()),
            ("token".to_string(), b"tok-123".to_vec()),
        ]),
    )]));
    let c = canary(
        "istio",
        vec![CanaryMetric {
            name: "budget".into(),
            template_ref: Some(TemplateRef {
                name: "budget".into(),
                namespace: Some("monitoring".into()),
            }),
            template_variables: Some(BTreeMap::from([("env".to_string(), "prod".to_string())])),
            threshold_range: Some(ThresholdRange {
                min: None,
                max: Some(1.0),
            }),
            interval: Some("2m".into()),
            ..Default::default()
        }],
        vec![],
    );
    let settings = Settings::from_spec(&c.spec, "istio").unwrap();
    let checks = run_metric_checks(&ctx(None, secrets, templates), &c, &settings).await;
    assert_eq!(checks[0].verdict, Verdict::Pass, "{:?}", checks[0]);
    assert_eq!(checks[0].value, Some(0.4));
    let seen = prom.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![(
            r#"error_budget{ns="test", app="podinfo", env="prod"}[2m]"#.to_string(),
            Some("Bearer tok-123".to_string())
        )]
    );
}

#[tokio::test]
async fn bad_input_fails_with_a_reason() {
    let (addr, _) = fake_prom(&[("good", "1"), ("slow_metric", "slow")]).await;
    let prom_provider = |address: &str| MetricProvider {
        r#type: "prometheus".into(),
        address: Some(address.into()),
        ..Default::default()
    };
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = format!("http://{}", l.local_addr().unwrap());
        drop(l);
        a
    };
    let templates = FakeTemplates(vec![
        template(
            "test",
            "typo",
            "good{a=\"{{ nmespace }}\"}",
            prom_provider(&addr),
        ),
        template("test", "unparsable", "sum(", prom_provider(&addr)),
        template("test", "down", "good", prom_provider(&dead)),
        template(
            "test",
            "secret",
            "good",
            MetricProvider {
                secret_ref: Some(SecretRef {
                    name: "nope".into(),
                }),
                ..prom_provider(&addr)
            },
        ),
        template(
            "test",
            "cloudwatch",
            "good",
            MetricProvider {
                r#type: "cloudwatch".into(),
                ..prom_provider(&addr)
            },
        ),
        template("test", "slow", "slow_metric", prom_provider(&addr)),
    ]);
    let tref = |name: &str| CanaryMetric {
        name: name.into(),
        template_ref: Some(TemplateRef {
            name: name.into(),
            namespace: None,
        }),
        threshold_range: Some(ThresholdRange {
            min: Some(0.0),
            max: None,
        }),
        timeout: Some("500ms".into()),
        ..Default::default()
    };
    let c = canary(
        "istio",
        vec![
            tref("typo"),
            tref("unparsable"),
            tref("down"),
            tref("secret"),
            tref("cloudwatch"),
            tref("missing"),
            tref("slow"),
            CanaryMetric {
                threshold_range: None,
                ..tref("typo")
            },
            CanaryMetric {
                timeout: Some("soon".into()),
                ..tref("typo")
            },
        ],
        vec![],
    );
    // Validation refuses the last two (no threshold, a bad timeout); the runtime
    // still fails them with the reason, should one get past.
    let mut valid = c.clone();
    if let Some(ms) = valid
        .spec
        .analysis
        .as_mut()
        .and_then(|a| a.metrics.as_mut())
    {
        ms.retain(|m| m.threshold_range.is_some() && m.timeout.as_deref() != Some("soon"));
    }
    let settings = Settings::from_spec(&valid.spec, "istio").unwrap();
    let started = Instant::now();
    let checks =
        run_metric_checks(&ctx(None, FakeSecrets::default(), templates), &c, &settings).await;
    // Checks run concurrently: the slow one's 500 ms timeout bounds the whole step.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // A server that does not answer (down, too slow) is no evidence against the
    // canary: inconclusive, so the step holds; what the user wrote wrong fails.
    use Verdict::{Fail, Inconclusive};
    let expect = [
        (Fail, "unknown template variable \"nmespace\""),
        (Fail, "query rejected (bad_data): 1:5: parse error"),
        (
            Inconclusive,
            "metrics server unavailable: query failed: Prometheus at",
        ),
        (Fail, "secret test/nope not found"),
        (Fail, "provider type \"cloudwatch\" is not supported"),
        (Fail, "MetricTemplate test/missing not found"),
        (Inconclusive, "timed out after 500ms"),
        (Fail, "no threshold"),
        (Fail, "metrics[typo].timeout"),
    ];
    assert_eq!(checks.len(), expect.len());
    for (check, (verdict, needle)) in checks.iter().zip(expect) {
        assert_eq!(check.verdict, verdict, "{check:?}");
        if verdict == Inconclusive {
            let msg = check.message.as_deref().unwrap_or_default();
            assert!(
                msg.starts_with("metrics server unavailable: ")
                    && msg.ends_with("holding until it answers or the progress deadline"),
                "{msg}"
            );
        }
        let msg = check.message.as_deref().unwrap_or_default();
        assert!(msg.contains(needle), "{msg:?} should contain {needle:?}");
    }

    // No metrics server anywhere: a built-in fails instead of being skipped.
    let c = canary(
        "istio",
        vec![CanaryMetric {
            threshold: Some(99.0),
            ..metric("request-success-rate")
        }],
        vec![],
    );
    let checks = run_metric_checks(
        &ctx(None, FakeSecrets::default(), FakeTemplates::default()),
        &c,
        &settings,
    )
    .await;
    assert_eq!(checks[0].verdict, Verdict::Fail);
    assert!(
        checks[0]
            .message
            .as_deref()
            .unwrap()
            .contains("no metrics server")
    );
}

// ---- webhooks ----------------------------------------------------------------

#[derive(Default)]
struct Hooks {
    received: Mutex<Vec<(String, serde_json::Value, Option<String>)>>,
}

async fn hook_server() -> (String, Arc<Hooks>) {
    let h = Arc::new(Hooks::default());
    let record = |path: &'static str, status: StatusCode| {
        post(
            move |State(h): State<Arc<Hooks>>, headers: AxHeaders, body: String| async move {
                let v = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(String::from);
                if let Ok(mut r) = h.received.lock() {
                    r.push((path.to_string(), v, auth));
                }
                status
            },
        )
    };
    let app = Router::new()
        .route("/ok", record("/ok", StatusCode::OK))
        .route("/fail", record("/fail", StatusCode::INTERNAL_SERVER_ERROR))
        .route("/gate", record("/gate", StatusCode::FORBIDDEN))
        .with_state(h.clone());
    (serve(app).await, h)
}

fn hook(name: &str, kind: WebhookType, url: String) -> CanaryWebhook {
    CanaryWebhook {
        name: name.into(),
        r#type: Some(kind),
        url,
        timeout: Some("2s".into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn webhooks_of_a_kind_run_in_order_with_verdicts() {
    let (addr, hooks) = hook_server().await;
    let c = canary(
        "istio",
        vec![],
        vec![
            CanaryWebhook {
                headers_secret_ref: Some(SecretRef {
                    name: "hook-auth".into(),
                }),
                metadata: Some(serde_json::json!({"type": "load"})),
                ..hook("load", WebhookType::PreRollout, format!("{addr}/ok"))
            },
            CanaryWebhook {
                retries: Some(1),
                ..hook("broken", WebhookType::PreRollout, format!("{addr}/fail"))
            },
            hook(
                "gate",
                WebhookType::ConfirmPromotion,
                format!("{addr}/gate"),
            ),
            CanaryWebhook {
                r#type: None,
                ..hook("untyped", WebhookType::Rollout, format!("{addr}/ok"))
            },
            CanaryWebhook {
                headers_secret_ref: Some(SecretRef {
                    name: "absent".into(),
                }),
                ..hook("no-secret", WebhookType::Rollout, format!("{addr}/ok"))
            },
        ],
    );
    let secrets = FakeSecrets(BTreeMap::from([(
        ("test".to_string(), "hook-auth".to_string()),
        BTreeMap::from([("Authorization".to_string(), b"Bearer hunter2".to_vec())]),
    )]));
    let ctx = ctx(None, secrets, FakeTemplates::default());

    let pre = run_webhooks(&ctx, &c, WebhookType::PreRollout, Phase::Progressing).await;
    let got: Vec<_> = pre
        .iter()
        .map(|s| (s.name.as_str(), s.verdict, s.value))
        .collect();
    assert_eq!(
        got,
        [
            ("load", Verdict::Pass, Some(200.0)),
            ("broken", Verdict::Fail, Some(500.0))
        ]
    );
    assert_eq!(pre[1].threshold.as_deref(), Some("2xx"));
    assert!(
        pre[1]
            .message
            .as_deref()
            .unwrap()
            .contains("HTTP 500 (2 attempt(s))"),
        "{:?}",
        pre[1].message
    );

    let received = hooks.received.lock().unwrap().clone();
    assert_eq!(received.len(), 3, "load once, broken twice (1 retry)");
    assert_eq!(
        received[0],
        (
            "/ok".to_string(),
            serde_json::json!({"name": "podinfo", "namespace": "test", "phase": "Progressing", "checksum": "rev-1", "metadata": {"type": "load"}}),
            Some("Bearer hunter2".to_string())
        )
    );
    assert_eq!(received[1].2, None, "headers are per webhook");

    let gate = run_webhooks(
        &ctx,
        &c,
        WebhookType::ConfirmPromotion,
        Phase::WaitingPromotion,
    )
    .await;
    assert_eq!(
        (gate.len(), gate[0].verdict, gate[0].value),
        (1, Verdict::Fail, Some(403.0))
    );

    // An untyped webhook is a rollout check, as in Flagger.
    let rollout = run_webhooks(&ctx, &c, WebhookType::Unspecified, Phase::Progressing).await;
    assert_eq!(
        rollout
            .iter()
            .map(|s| (s.name.as_str(), s.verdict))
            .collect::<Vec<_>>(),
        [("untyped", Verdict::Pass), ("no-secret", Verdict::Fail)]
    );
    assert!(
        rollout[1]
            .message
            .as_deref()
            .unwrap()
            .contains("secret test/absent not found")
    );
    assert!(
        run_webhooks(&ctx, &c, WebhookType::Rollback, Phase::Progressing)
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn events_go_to_canary_and_global_webhooks() {
    let (addr, hooks) = hook_server().await;
    let c = canary(
        "istio",
        vec![],
        vec![
            CanaryWebhook {
                metadata: Some(serde_json::json!({"team": "a"})),
                ..hook("events", WebhookType::Event, format!("{addr}/ok"))
            },
            hook("not-an-event", WebhookType::Rollout, format!("{addr}/fail")),
        ],
    );
    let mut ctx = ctx(None, FakeSecrets::default(), FakeTemplates::default());
    ctx.event_webhook = Some(format!("{addr}/gate"));
    let out = send_event(
        &ctx,
        &c,
        Phase::Failed,
        "Rolling back podinfo.test",
        "Warning",
    )
    .await;
    assert_eq!(out.len(), 2);
    assert!(out[0].result.is_ok());
    assert!(matches!(&out[1].result, Err(AnalysisError::Webhook(e)) if e.status() == Some(403)));
    let received = hooks.received.lock().unwrap().clone();
    let mut paths: Vec<_> = received.iter().map(|r| r.0.as_str()).collect();
    paths.sort();
    assert_eq!(paths, ["/gate", "/ok"]);
    let ok = received.iter().find(|r| r.0 == "/ok").unwrap();
    assert_eq!(ok.1["metadata"]["team"], "a");
    assert_eq!(
        ok.1["metadata"]["eventMessage"],
        "Rolling back podinfo.test"
    );
    assert_eq!(ok.1["metadata"]["eventType"], "Warning");
    assert!(
        ok.1["metadata"]["timestamp"]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .is_ok()
    );
    assert_eq!(ok.1["phase"], "Failed");
}

#[test]
fn muted_webhooks_are_recognised() {
    let c = canary(
        "istio",
        vec![],
        vec![CanaryWebhook {
            mute_alert: Some(true),
            ..hook("quiet", WebhookType::Rollout, "http://127.0.0.1:1/".into())
        }],
    );
    let status = |name: &str, kind| CheckStatus {
        name: name.into(),
        kind,
        verdict: Verdict::Fail,
        value: None,
        threshold: None,
        message: None,
    };
    assert!(is_alert_muted(&c, &status("quiet", CheckKind::Webhook)));
    assert!(!is_alert_muted(&c, &status("quiet", CheckKind::Metric)));
    assert!(!is_alert_muted(&c, &status("loud", CheckKind::Webhook)));
}

#[tokio::test]
async fn gates_of_the_tester_drive_webhook_verdicts() {
    let tester = serve(crate::tester::router()).await;
    let c = canary(
        "istio",
        vec![],
        vec![
            hook(
                "approval",
                WebhookType::ConfirmPromotion,
                format!("{tester}/gate/check"),
            ),
            hook(
                "rollback",
                WebhookType::Rollback,
                format!("{tester}/rollback/check"),
            ),
            CanaryWebhook {
                metadata: Some(
                    serde_json::json!({"type": "load", "url": format!("{tester}/healthz"), "rate": "5", "duration": "1s"}),
                ),
                ..hook("load", WebhookType::Rollout, format!("{tester}/"))
            },
        ],
    );
    let ctx = ctx(None, FakeSecrets::default(), FakeTemplates::default());
    let verdict = |v: Vec<CheckStatus>| (v[0].verdict, v[0].value);
    let promote = || {
        run_webhooks(
            &ctx,
            &c,
            WebhookType::ConfirmPromotion,
            Phase::WaitingPromotion,
        )
    };
    assert_eq!(verdict(promote().await), (Verdict::Fail, Some(403.0)));
    let rollback = || run_webhooks(&ctx, &c, WebhookType::Rollback, Phase::Progressing);
    assert_eq!(
        verdict(rollback().await),
        (Verdict::Fail, Some(403.0)),
        "no rollback asked"
    );

    // What a user does with curl: open the gates with the Canary's name.
    let who = serde_json::json!({"name": "podinfo", "namespace": "test"});
    for path in ["/gate/open", "/rollback/open"] {
        let r = client()
            .post(format!("{tester}{path}"))
            .json(&who)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202);
    }
    assert_eq!(verdict(promote().await), (Verdict::Pass, Some(200.0)));
    assert_eq!(
        verdict(rollback().await),
        (Verdict::Pass, Some(200.0)),
        "rollback asked"
    );

    let load = run_webhooks(&ctx, &c, WebhookType::Rollout, Phase::Progressing).await;
    assert_eq!(verdict(load), (Verdict::Pass, Some(202.0)));
}

#[test]
fn a_window_never_reaches_back_past_the_runs_first_step() {
    let now = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:10:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let w = |configured, since| run_window("m", configured, since, now).unwrap();
    assert_eq!(w(Some("1m"), None), "1m", "no run under way: as configured");
    assert_eq!(w(None, None), "1m", "Flagger's default");
    assert_eq!(
        w(Some("1m"), Some("2026-01-01T00:09:50Z")),
        "10s",
        "10 s into the run: only its 10 s"
    );
    assert_eq!(
        w(Some("1m"), Some("2026-01-01T00:09:49.2Z")),
        "11s",
        "rounded up"
    );
    assert_eq!(
        w(Some("30s"), Some("2026-01-01T00:00:00Z")),
        "30s",
        "a long run: as configured"
    );
    assert_eq!(
        w(Some("1m"), Some("2026-01-01T00:10:00Z")),
        "1s",
        "never empty"
    );
    assert_eq!(w(Some("1m"), Some("not a time")), "1m");
    assert!(
        run_window("m", Some("soon"), None, now).is_err(),
        "a bad interval is an error"
    );
}

#[tokio::test]
async fn an_unavailable_metrics_server_is_inconclusive_unless_on_no_data_fails() {
    // A load balancer in front of a Prometheus that is down answers 503 with a
    // page of its own; a broken one answers 500.
    let unavailable = serve(Router::new().fallback(get(|| async {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "<html>no healthy upstream</html>",
        )
    })))
    .await;
    let broken = serve(Router::new().fallback(get(|| async {
        (StatusCode::INTERNAL_SERVER_ERROR, "<html>oops</html>")
    })))
    .await;
    let templates = FakeTemplates(vec![
        template(
            "test",
            "lb",
            "up",
            MetricProvider {
                r#type: "prometheus".into(),
                address: Some(unavailable.clone()),
                ..Default::default()
            },
        ),
        template(
            "test",
            "broken",
            "up",
            MetricProvider {
                r#type: "prometheus".into(),
                address: Some(broken),
                ..Default::default()
            },
        ),
    ]);
    let tref = |name: &str, on_no_data: Option<OnNoData>| CanaryMetric {
        name: format!("{name}-{on_no_data:?}"),
        template_ref: Some(TemplateRef {
            name: name.into(),
            namespace: None,
        }),
        threshold_range: Some(ThresholdRange {
            min: Some(0.0),
            max: None,
        }),
        on_no_data,
        timeout: Some("2s".into()),
        ..Default::default()
    };
    let c = canary(
        "istio",
        vec![
            tref("lb", None),
            tref("lb", Some(OnNoData::Fail)),
            tref("lb", Some(OnNoData::Pass)),
            tref("broken", None),
        ],
        vec![],
    );
    let settings = Settings::from_spec(&c.spec, "istio").unwrap();
    let checks =
        run_metric_checks(&ctx(None, FakeSecrets::default(), templates), &c, &settings).await;
    let verdicts: Vec<Verdict> = checks.iter().map(|c| c.verdict).collect();
    assert_eq!(
        verdicts,
        [
            Verdict::Inconclusive,
            Verdict::Fail,
            // Passing a release on a server that does not answer is never safe.
            Verdict::Inconclusive,
            Verdict::Fail
        ],
        "{checks:?}"
    );
    let msg = checks[0].message.as_deref().unwrap_or_default();
    assert!(
        msg.contains("metrics server unavailable") && msg.contains("HTTP 503"),
        "{msg}"
    );
    assert!(
        checks[1]
            .message
            .as_deref()
            .unwrap_or_default()
            .ends_with("onNoData is fail"),
        "{checks:?}"
    );
}
