use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use serde::Deserialize;

use super::*;
use crate::crd::duration::{parse_duration, prometheus_range};
use crate::crd::{
    AlertProviderSpec, MetricProvider, MetricTemplateSpec, Provider, Settings, SmiVersion,
    Strategy as Traffic,
};

fn base() -> CanarySpec {
    CanarySpec {
        target_ref: TargetRef {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            name: "app".into(),
        },
        service: Some(CanaryService {
            port: 80,
            ..Default::default()
        }),
        analysis: Some(CanaryAnalysis {
            interval: Some("10s".into()),
            step_weight: Some(10),
            max_weight: Some(50),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn analysis(spec: &mut CanarySpec) -> &mut CanaryAnalysis {
    spec.analysis.get_or_insert_with(Default::default)
}

fn check(spec: &CanarySpec) -> Result<Settings, String> {
    Settings::from_spec(spec, "istio").map_err(|e| e.to_string())
}

fn template() -> MetricTemplateSpec {
    MetricTemplateSpec {
        provider: MetricProvider {
            r#type: "prometheus".into(),
            address: Some("http://prometheus:9090".into()),
            ..Default::default()
        },
        query: "sum(rate(x{namespace=\"{{ namespace }}\"}[{{ interval }}]))".into(),
    }
}

fn alert() -> AlertProviderSpec {
    AlertProviderSpec {
        r#type: "slack".into(),
        address: Some("https://hooks.slack.com/services/T/B/X".into()),
        ..Default::default()
    }
}

/// Every malformed field the operator used to accept (found by the corpus and the
/// properties below): each is refused now, naming its path.
#[test]
fn malformed_fields_are_refused_with_their_path() {
    type Mutation = fn(&mut CanarySpec);
    let cases: Vec<(&str, Mutation)> = vec![
        ("spec.service.port", |s| {
            s.service.as_mut().unwrap().port = 0
        }),
        ("spec.service.port", |s| {
            s.service.as_mut().unwrap().port = 70000
        }),
        ("spec.service.targetPort", |s| {
            s.service.as_mut().unwrap().target_port = Some(IntOrString::Int(-1))
        }),
        ("spec.service.name", |s| {
            s.service.as_mut().unwrap().name = Some("Not_A_Name".into())
        }),
        ("spec.service.timeout", |s| {
            s.service.as_mut().unwrap().timeout = Some("soon".into())
        }),
        ("spec.service.retries.perTryTimeout", |s| {
            s.service.as_mut().unwrap().retries = Some(HttpRetry {
                per_try_timeout: Some("5 sec".into()),
                ..Default::default()
            })
        }),
        ("spec.targetRef.name", |s| s.target_ref.name = "".into()),
        ("spec.progressDeadlineSeconds", |s| {
            s.progress_deadline_seconds = Some(-5)
        }),
        ("spec.metricsServer", |s| {
            s.metrics_server = Some("prometheus:9090".into())
        }),
        ("spec.analysis.maxWeight", |s| {
            analysis(s).max_weight = Some(0)
        }),
        ("spec.analysis.metrics[m].thresholdRange", |s| {
            analysis(s).metrics = Some(vec![CanaryMetric {
                name: "m".into(),
                query: Some("up".into()),
                threshold_range: Some(ThresholdRange {
                    min: Some(5.0),
                    max: Some(1.0),
                }),
                ..Default::default()
            }])
        }),
        ("spec.analysis.metrics[m].thresholdRange", |s| {
            analysis(s).metrics = Some(vec![CanaryMetric {
                name: "m".into(),
                query: Some("up".into()),
                ..Default::default()
            }])
        }),
        ("spec.analysis.metrics[m].query", |s| {
            analysis(s).metrics = Some(vec![CanaryMetric {
                name: "m".into(),
                query: Some("rate(x[{{ intervall }}])".into()),
                threshold: Some(1.0),
                ..Default::default()
            }])
        }),
        // Found by the e2e corpus: an inline query's variables were not checked
        // when the metric set no templateVariables at all.
        ("spec.analysis.metrics[m].query", |s| {
            analysis(s).metrics = Some(vec![CanaryMetric {
                name: "m".into(),
                query: Some("x{c=\"{{ variables.cluster }}\"}".into()),
                threshold: Some(1.0),
                ..Default::default()
            }])
        }),
        ("spec.analysis.metrics[m].sampleCountQuery", |s| {
            analysis(s).metrics = Some(vec![CanaryMetric {
                name: "m".into(),
                query: Some("up".into()),
                threshold: Some(1.0),
                min_sample_count: Some(1.0),
                sample_count_query: Some("n{c=\"{{ variables.c }}\"}".into()),
                ..Default::default()
            }])
        }),
        ("spec.analysis.metrics[m].timeout", |s| {
            analysis(s).metrics = Some(vec![CanaryMetric {
                name: "m".into(),
                query: Some("up".into()),
                threshold: Some(1.0),
                timeout: Some("0s".into()),
                ..Default::default()
            }])
        }),
        ("spec.analysis.metrics[m].interval", |s| {
            analysis(s).metrics = Some(vec![CanaryMetric {
                name: "m".into(),
                query: Some("up".into()),
                threshold: Some(1.0),
                interval: Some("0".into()),
                ..Default::default()
            }])
        }),
        ("spec.analysis.metrics[m].sampleCountQuery", |s| {
            analysis(s).metrics = Some(vec![CanaryMetric {
                name: "m".into(),
                query: Some("up".into()),
                threshold: Some(1.0),
                min_sample_count: Some(10.0),
                ..Default::default()
            }])
        }),
        ("spec.analysis.webhooks[w].url", |s| {
            analysis(s).webhooks = Some(vec![CanaryWebhook {
                name: "w".into(),
                url: "not a url".into(),
                ..Default::default()
            }])
        }),
        ("spec.analysis.webhooks[w].url", |s| {
            analysis(s).webhooks = Some(vec![CanaryWebhook {
                name: "w".into(),
                url: "ftp://loadtester/".into(),
                ..Default::default()
            }])
        }),
        ("spec.analysis.webhooks[w].timeout", |s| {
            analysis(s).webhooks = Some(vec![CanaryWebhook {
                name: "w".into(),
                url: "http://loadtester/".into(),
                timeout: Some("0s".into()),
                ..Default::default()
            }])
        }),
        ("spec.analysis.alerts[a].severity", |s| {
            analysis(s).alerts = Some(vec![CanaryAlert {
                name: "a".into(),
                severity: Some("critical".into()),
                provider_ref: TemplateRef {
                    name: "slack".into(),
                    namespace: None,
                },
            }])
        }),
        ("spec.analysis.match[0].headers[x canary]", |s| {
            let a = analysis(s);
            a.iterations = Some(5);
            a.r#match = Some(vec![AbMatch {
                headers: Some(BTreeMap::from([(
                    "x canary".to_string(),
                    StringMatch {
                        exact: Some("1".into()),
                        ..Default::default()
                    },
                )])),
                ..Default::default()
            }]);
        }),
        ("spec.analysis.match[0].headers[cookie].regex", |s| {
            let a = analysis(s);
            a.iterations = Some(5);
            a.r#match = Some(vec![AbMatch {
                headers: Some(BTreeMap::from([(
                    "cookie".to_string(),
                    StringMatch {
                        regex: Some("^(.*?;)?(canary=always(;.*)?$".into()),
                        ..Default::default()
                    },
                )])),
                ..Default::default()
            }]);
        }),
        ("spec.analysis.match[0].headers[x-user]", |s| {
            let a = analysis(s);
            a.iterations = Some(5);
            a.r#match = Some(vec![AbMatch {
                headers: Some(BTreeMap::from([(
                    "x-user".to_string(),
                    StringMatch {
                        exact: Some("a".into()),
                        prefix: Some("b".into()),
                        ..Default::default()
                    },
                )])),
                ..Default::default()
            }]);
        }),
        ("spec.analysis.sessionAffinity.cookieName", |s| {
            analysis(s).session_affinity = Some(SessionAffinity {
                cookie_name: "bad cookie".into(),
                ..Default::default()
            })
        }),
        ("spec.analysis.sessionAffinity.sameSite", |s| {
            analysis(s).session_affinity = Some(SessionAffinity {
                cookie_name: "canary".into(),
                same_site: Some("strictest".into()),
                ..Default::default()
            })
        }),
        ("spec.analysis.sessionAffinity.maxAge", |s| {
            analysis(s).session_affinity = Some(SessionAffinity {
                cookie_name: "canary".into(),
                max_age: Some(-1),
                ..Default::default()
            })
        }),
    ];
    assert!(check(&base()).is_ok(), "{:?}", check(&base()));
    for (path, mutate) in cases {
        let mut s = base();
        mutate(&mut s);
        let err = check(&s).expect_err(path);
        assert!(err.starts_with(path), "{err:?} should start with {path:?}");
        assert!(!err.contains('\n'), "{err:?} is one line");
    }
}

#[test]
fn malformed_templates_and_alert_providers_are_refused_with_their_path() {
    type TplMutation = fn(&mut MetricTemplateSpec);
    let cases: Vec<(&str, TplMutation)> = vec![
        ("spec.provider.type", |t| {
            t.provider.r#type = "cloudwatch".into()
        }),
        ("spec.provider.type", |t| {
            t.provider.r#type = "Prometheus".into()
        }),
        ("spec.provider.address", |t| {
            t.provider.address = Some("prometheus:9090".into())
        }),
        ("spec.provider.timeout", |t| {
            t.provider.timeout = Some("5 seconds".into())
        }),
        ("spec.provider.headers[bad header]", |t| {
            t.provider.headers = Some(BTreeMap::from([("bad header".into(), vec!["v".into()])]))
        }),
        ("spec.provider.secretRef.name", |t| {
            t.provider.secret_ref = Some(SecretRef { name: "".into() })
        }),
        ("spec.query", |t| t.query = "".into()),
        ("spec.query", |t| t.query = "rate(x[{{ interval ]".into()),
        ("spec.query", |t| t.query = "{{ podname }}".into()),
    ];
    assert_eq!(metric_template(&template()), Ok(()));
    for (path, mutate) in cases {
        let mut t = template();
        mutate(&mut t);
        let err = metric_template(&t).expect_err(path).to_string();
        assert!(err.starts_with(path), "{err:?} should start with {path:?}");
    }
    type AlertMutation = fn(&mut AlertProviderSpec);
    let cases: Vec<(&str, AlertMutation)> = vec![
        ("spec.type", |a| a.r#type = "pagerduty".into()),
        ("spec.address", |a| {
            a.address = Some("hooks.slack.com/x".into())
        }),
        ("spec.address", |a| a.address = None),
        ("spec.proxy", |a| a.proxy = Some("::".into())),
        ("spec.secretRef.name", |a| {
            a.secret_ref = Some(SecretRef {
                name: "Bad_Name".into(),
            })
        }),
    ];
    assert_eq!(alert_provider(&alert()), Ok(()));
    for (path, mutate) in cases {
        let mut a = alert();
        mutate(&mut a);
        let err = alert_provider(&a).expect_err(path).to_string();
        assert!(err.starts_with(path), "{err:?} should start with {path:?}");
    }
}

#[test]
fn a_template_needs_the_variables_its_metric_sets() {
    let mut t = template();
    t.query = "x{cluster=\"{{ variables.cluster }}\"}".into();
    let mut m = CanaryMetric {
        name: "m".into(),
        ..Default::default()
    };
    let err = template_for_metric(&m, "ns/t", &t).unwrap_err().to_string();
    assert!(
        err.starts_with("spec.analysis.metrics[m].templateVariables"),
        "{err}"
    );
    m.template_variables = Some(BTreeMap::from([("cluster".into(), "dev".into())]));
    assert_eq!(template_for_metric(&m, "ns/t", &t), Ok(()));
    t.provider.r#type = "cloudwatch".into();
    let err = template_for_metric(&m, "ns/t", &t).unwrap_err().to_string();
    assert!(
        err.starts_with("MetricTemplate ns/t: spec.provider.type"),
        "{err}"
    );
}

/// Every Flagger example Serin serves stays valid under the stricter checks.
#[test]
fn flagger_examples_stay_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/testdata/flagger");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml")
            || path.ends_with("unsupported-providers.yaml")
        {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = serde_yaml::Value::deserialize(doc).unwrap();
            let kind = v.get("kind").and_then(|k| k.as_str()).unwrap_or("");
            let spec = v.get("spec").cloned().unwrap_or_default();
            let res = match kind {
                "Canary" => Settings::from_spec(
                    &serde_yaml::from_value::<CanarySpec>(spec).unwrap(),
                    "kubernetes",
                )
                .map(|_| ()),
                "MetricTemplate" => {
                    let t = serde_yaml::from_value::<MetricTemplateSpec>(spec).unwrap();
                    if crate::analysis::backend::BackendKind::of(&t.provider.r#type).is_none() {
                        // Flagger's cloudwatch: served by Flagger, refused by Serin.
                        let err = metric_template(&t).unwrap_err().to_string();
                        assert!(err.starts_with("spec.provider.type"), "{err}");
                        continue;
                    }
                    metric_template(&t)
                }
                "AlertProvider" => {
                    alert_provider(&serde_yaml::from_value::<AlertProviderSpec>(spec).unwrap())
                }
                _ => continue,
            };
            assert_eq!(
                res,
                Ok(()),
                "{}: {kind} {:?}",
                path.display(),
                v["metadata"]
            );
            seen += 1;
        }
    }
    assert!(seen >= 15, "only {seen} examples read");
}

// ---- properties ----

/// Go-style duration text for `ms` milliseconds, in the units users mix.
fn go_duration(ms: u64) -> String {
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, ms) = (rest / 1000, rest % 1000);
    let mut out = String::new();
    for (v, unit) in [(h, "h"), (m, "m"), (s, "s"), (ms, "ms")] {
        if v > 0 {
            out.push_str(&format!("{v}{unit}"));
        }
    }
    if out.is_empty() { "0".into() } else { out }
}

fn header_token() -> impl proptest::strategy::Strategy<Value = String> {
    "[a-zA-Z0-9!#$%&'*+.^_`|~-]{1,20}"
}

fn json_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        ".{0,12}".prop_map(serde_json::Value::from),
        prop_oneof![
            Just("1m"),
            Just("0s"),
            Just("10"),
            Just("Deployment"),
            Just("istio"),
            Just("http://x/")
        ]
        .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("analysis".to_string()),
                    Just("interval".to_string()),
                    Just("stepWeight".to_string()),
                    Just("stepWeights".to_string()),
                    Just("maxWeight".to_string()),
                    Just("metrics".to_string()),
                    Just("webhooks".to_string()),
                    Just("match".to_string()),
                    Just("headers".to_string()),
                    Just("service".to_string()),
                    Just("port".to_string()),
                    Just("name".to_string()),
                    Just("url".to_string()),
                    Just("thresholdRange".to_string()),
                    Just("iterations".to_string()),
                    "[a-z]{1,6}",
                ],
                inner,
                0..5
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn durations_never_panic(s in ".{0,40}") {
        let _ = parse_duration(&s);
    }

    #[test]
    fn digit_heavy_durations_never_panic(s in "[0-9.]{0,30}(ns|us|ms|s|m|h|x)?[0-9.]{0,30}(s|h)?") {
        let _ = parse_duration(&s);
    }

    #[test]
    fn go_durations_round_trip(ms in 0u64..10_000_000_000) {
        let text = go_duration(ms);
        prop_assert_eq!(parse_duration(&text), Ok(Duration::from_millis(ms)), "{}", text);
    }

    /// `prometheus_range` is the printer of the parser: what it writes parses back.
    #[test]
    fn prometheus_ranges_round_trip(ms in 0u64..10_000_000_000) {
        let d = Duration::from_millis(ms);
        prop_assert_eq!(parse_duration(&prometheus_range(d)), Ok(d));
    }

    #[test]
    fn providers_round_trip(s in ".{0,20}") {
        if let Ok(p) = Provider::parse(&s) {
            prop_assert_eq!(Provider::parse(p.as_str()), Ok(p));
        }
    }

    #[test]
    fn placeholders_never_panic_and_render_agrees(q in ".{0,60}") {
        let model = crate::analysis::template::TemplateModel::default();
        let rendered = crate::analysis::template::render(&q, &model);
        let names = crate::analysis::template::placeholders(&q);
        // Validation refuses a query exactly when the operator could not render it.
        let valid = query_template("spec.query", &q, Some(&BTreeMap::new()));
        prop_assert_eq!(rendered.is_ok(), valid.is_ok(), "{:?} {:?}", names, valid);
    }

    #[test]
    fn known_placeholders_are_accepted(
        parts in prop::collection::vec((".{0,8}", 0usize..7, " {0,2}"), 0..5)
    ) {
        let mut q = String::new();
        for (text, var, pad) in &parts {
            let text = text.replace('{', "(").replace('}', ")");
            q.push_str(&format!("{text}{{{{{pad}{}{pad}}}}}", crate::analysis::template::KNOWN_VARIABLES[*var]));
        }
        prop_assert_eq!(query_template("spec.query", &q, None), Ok(()));
    }

    /// Valid weights are accepted and stepped to the maximum, never past 100.
    #[test]
    fn valid_step_weights_are_accepted(step in 1u32..=100, max in 1u32..=100) {
        let mut s = base();
        analysis(&mut s).step_weight = Some(step);
        analysis(&mut s).max_weight = Some(max);
        let settings = check(&s).map_err(TestCaseError::fail)?;
        let Traffic::Canary { weights, .. } = settings.strategy else {
            return Err(TestCaseError::fail("not a canary"));
        };
        prop_assert_eq!(weights.last().copied(), Some(max));
        prop_assert!(weights.windows(2).all(|w| w[0] < w[1]));
        prop_assert_eq!(weights[0], step.min(max));
    }

    #[test]
    fn weights_above_100_are_refused_with_their_field(
        w in 101u32..,
        which in 0usize..4,
    ) {
        let mut s = base();
        let a = analysis(&mut s);
        let field = match which {
            0 => { a.step_weight = Some(w); "spec.analysis.stepWeight" }
            1 => { a.max_weight = Some(w); "spec.analysis.maxWeight" }
            2 => { a.mirror_weight = Some(w); "spec.analysis.mirrorWeight" }
            _ => { a.step_weights = Some(vec![5, w]); "spec.analysis.stepWeights" }
        };
        let err = check(&s).expect_err("above 100");
        prop_assert!(err.starts_with(field), "{}", err);
    }

    #[test]
    fn step_weight_lists_are_accepted_iff_increasing(ws in prop::collection::vec(0u32..=100, 1..8)) {
        let mut s = base();
        analysis(&mut s).step_weights = Some(ws.clone());
        let increasing = ws[0] > 0 && ws.windows(2).all(|w| w[0] < w[1]);
        match check(&s) {
            Ok(settings) => {
                prop_assert!(increasing);
                let Traffic::Canary { weights, .. } = settings.strategy else {
                    return Err(TestCaseError::fail("not a canary"));
                };
                prop_assert_eq!(weights, ws);
            }
            Err(e) => {
                prop_assert!(!increasing, "{}", e);
                prop_assert!(e.starts_with("spec.analysis.stepWeights"), "{}", e);
            }
        }
    }

    #[test]
    fn threshold_ranges_are_accepted_iff_satisfiable(
        min in prop::option::of(-1e6f64..1e6),
        max in prop::option::of(-1e6f64..1e6),
    ) {
        let mut s = base();
        analysis(&mut s).metrics = Some(vec![CanaryMetric {
            name: "m".into(),
            query: Some("up".into()),
            threshold_range: Some(ThresholdRange { min, max }),
            ..Default::default()
        }]);
        let res = check(&s);
        let ok = match (min, max) {
            (None, None) => false,
            (Some(a), Some(b)) => a <= b,
            _ => true,
        };
        prop_assert_eq!(res.is_ok(), ok, "{:?}", res);
        if let Err(e) = res {
            prop_assert!(e.starts_with("spec.analysis.metrics[m].thresholdRange"), "{}", e);
        }
    }

    #[test]
    fn header_matches_follow_the_token_rule(
        good in header_token(),
        bad in "[a-z]{0,4}[ :\"(),/;<=>?@\\[\\]{}\u{e9}][a-z]{0,4}",
        value in ".{0,10}",
    ) {
        for (name, ok) in [(good, true), (bad, false)] {
            let mut s = base();
            let a = analysis(&mut s);
            a.iterations = Some(3);
            a.step_weight = None;
            a.r#match = Some(vec![AbMatch {
                headers: Some(BTreeMap::from([(name.clone(), StringMatch {
                    exact: Some(value.clone()),
                    ..Default::default()
                })])),
                ..Default::default()
            }]);
            let res = check(&s);
            prop_assert_eq!(res.is_ok(), ok, "{:?}: {:?}", name, res);
            if let Err(e) = res {
                let path = format!("spec.analysis.match[0].headers[{name}]");
                prop_assert!(e.starts_with(&path), "{}", e);
            }
        }
    }

    #[test]
    fn string_matches_need_exactly_one_kind(
        set in prop::collection::vec(any::<bool>(), 4),
        re in ".{0,12}",
    ) {
        let v = |i: usize, s: &str| set[i].then(|| s.to_string());
        let m = StringMatch {
            exact: v(0, "a"),
            prefix: v(1, "/a"),
            suffix: v(2, ".a"),
            regex: v(3, &re),
        };
        let res = string_match("p", &m);
        let one = set.iter().filter(|b| **b).count() == 1;
        let regex_ok = !set[3] || regex_syntax::Parser::new().parse(&re).is_ok();
        prop_assert_eq!(res.is_ok(), one && regex_ok, "{:?}", res);
    }

    #[test]
    fn cookie_matches_never_panic(re in ".{0,30}", cookie in ".{0,12}") {
        let mut s = base();
        let a = analysis(&mut s);
        a.iterations = Some(3);
        a.r#match = Some(vec![AbMatch {
            headers: Some(BTreeMap::from([("cookie".to_string(), StringMatch {
                regex: Some(re),
                ..Default::default()
            })])),
            ..Default::default()
        }]);
        a.session_affinity = Some(SessionAffinity { cookie_name: cookie, ..Default::default() });
        let _ = check(&s);
    }

    #[test]
    fn ports_are_accepted_iff_in_range(p in any::<i32>()) {
        let mut s = base();
        s.service.as_mut().unwrap().port = p;
        let res = check(&s);
        prop_assert_eq!(res.is_ok(), (1..=65535).contains(&p), "{:?}", res);
        if let Err(e) = res {
            prop_assert!(e.starts_with("spec.service.port"), "{}", e);
        }
    }

    /// A URL that does not parse is refused without its text in the message: the
    /// address of an alert or a webhook is often a credential.
    #[test]
    fn urls_never_panic_and_errors_never_repeat_them(s in "SECRET[^ ]{0,30}") {
        if let Err(e) = http_url("spec.address", &s) {
            prop_assert!(!e.to_string().contains(&s), "{}", e);
        }
        let mut a = alert();
        a.address = Some(s.clone());
        if let Err(e) = alert_provider(&a) {
            prop_assert!(!e.to_string().contains(&s), "{}", e);
        }
    }

    #[test]
    fn templates_and_alert_providers_never_panic(
        ty in ".{0,10}", address in ".{0,20}", timeout in ".{0,8}", query in ".{0,30}",
        header in ".{0,8}",
    ) {
        let t = MetricTemplateSpec {
            provider: MetricProvider {
                r#type: ty.clone(),
                address: Some(address.clone()),
                timeout: Some(timeout),
                headers: Some(BTreeMap::from([(header.clone(), vec![header])])),
                ..Default::default()
            },
            query,
        };
        let _ = metric_template(&t);
        let a = AlertProviderSpec { r#type: ty, proxy: Some(address.clone()), address: Some(address), ..Default::default() };
        let _ = alert_provider(&a);
    }

    /// Whatever JSON a user applies, decoding and validating it never panics, and a
    /// refusal is one line starting with a field path.
    #[test]
    fn arbitrary_specs_never_panic(v in json_value()) {
        let mut spec = serde_json::json!({
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "app"},
        });
        if let serde_json::Value::Object(m) = v {
            for (k, v) in m {
                spec[k] = v;
            }
        }
        if let Ok(spec) = serde_json::from_value::<CanarySpec>(spec) {
            for provider in ["kubernetes", "istio", "gatewayapi:v1", "nginx"] {
                if let Err(e) = Settings::from_spec(&spec, provider) {
                    let e = e.to_string();
                    prop_assert!(!e.contains('\n'), "{}", e);
                    prop_assert!(e.starts_with("spec."), "{}", e);
                }
            }
        }
    }

    #[test]
    fn severities_round_trip(s in ".{0,10}") {
        if let Ok(sev) = crate::notify::Severity::parse(Some(&s)) {
            prop_assert_eq!(crate::notify::Severity::parse(Some(sev.as_str())).ok(), Some(sev));
        }
    }

    #[test]
    fn gateway_feature_overrides_never_panic(s in ".{0,40}") {
        let _ = crate::router::capabilities::parse_overrides(&s);
    }
}

#[test]
fn smi_versions_round_trip() {
    for p in [
        Provider::Kubernetes,
        Provider::GatewayApiV1,
        Provider::GatewayApiV1beta1,
        Provider::Linkerd,
        Provider::Istio,
        Provider::Traefik,
        Provider::Smi(SmiVersion::V1alpha1),
        Provider::Smi(SmiVersion::V1alpha2),
        Provider::Smi(SmiVersion::V1alpha3),
        Provider::Nginx,
    ] {
        assert_eq!(Provider::parse(p.as_str()), Ok(p));
    }
}
