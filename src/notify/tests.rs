//! Alerts delivered to a local receiver, one expected JSON per provider type.

use std::collections::BTreeMap;
use std::sync::Mutex;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::json;

use super::*;
use crate::analysis::SecretData;
use crate::analysis::prometheus::tests::{client, serve};
use crate::crd::{
    AlertProviderSpec, CanaryAnalysis, CanarySpec, CheckKind, SecretRef, TargetRef, TemplateRef,
    Verdict,
};
use crate::router::BoxFuture;

#[derive(Default)]
struct Receiver {
    got: Mutex<Vec<(String, serde_json::Value, Option<String>)>>,
}

async fn receiver() -> (String, Arc<Receiver>) {
    let r = Arc::new(Receiver::default());
    let app = Router::new()
        .route(
            "/{*path}",
            post(
                |State(r): State<Arc<Receiver>>,
                 Path(path): Path<String>,
                 h: HeaderMap,
                 body: String| async move {
                    let auth = h
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .map(String::from);
                    let v = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
                    if let Ok(mut g) = r.got.lock() {
                        g.push((format!("/{path}"), v, auth));
                    }
                    if path.starts_with("broken") {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::OK
                    }
                },
            ),
        )
        .with_state(r.clone());
    (serve(app).await, r)
}

#[derive(Default)]
struct Secrets(BTreeMap<(String, String), SecretData>);

impl SecretSource for Secrets {
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
struct Providers(Vec<AlertProvider>);

impl ProviderSource for Providers {
    fn get(&self, namespace: &str, name: &str) -> Option<AlertProvider> {
        self.0
            .iter()
            .find(|p| {
                p.metadata.namespace.as_deref() == Some(namespace)
                    && p.metadata.name.as_deref() == Some(name)
            })
            .cloned()
    }
}

fn provider(
    name: &str,
    kind: &str,
    address: Option<String>,
    secret: Option<&str>,
) -> AlertProvider {
    let mut p = AlertProvider::new(
        name,
        AlertProviderSpec {
            r#type: kind.into(),
            channel: Some("deploys".into()),
            username: None,
            address,
            proxy: None,
            secret_ref: secret.map(|s| SecretRef { name: s.into() }),
        },
    );
    p.metadata.namespace = Some("test".into());
    p
}

fn canary(alerts: Vec<(&str, Option<&str>)>) -> Canary {
    let mut c = Canary::new(
        "podinfo",
        CanarySpec {
            target_ref: TargetRef {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                name: "podinfo".into(),
            },
            analysis: Some(CanaryAnalysis {
                alerts: Some(
                    alerts
                        .into_iter()
                        .map(|(provider, severity)| CanaryAlert {
                            name: format!("to-{provider}"),
                            severity: severity.map(String::from),
                            provider_ref: TemplateRef {
                                name: provider.into(),
                                namespace: None,
                            },
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    c.metadata.namespace = Some("test".into());
    c
}

fn failure() -> AlertEvent {
    AlertEvent {
        severity: Severity::Error,
        phase: Phase::Failed,
        message: "Rolling back podinfo.test: failed checks threshold reached 1".into(),
        failed_check: Some(CheckStatus {
            name: "request-success-rate".into(),
            kind: CheckKind::Metric,
            verdict: Verdict::Fail,
            value: Some(80.5),
            threshold: Some(">= 99".into()),
            message: Some("80.5 is below the minimum 99 by 18.5".into()),
        }),
    }
}

fn notifier(providers: Providers, secrets: Secrets) -> Notifier {
    Notifier {
        http: client(),
        secrets: Arc::new(secrets),
        providers: Arc::new(providers),
        global: None,
    }
}

const CHECK_LINE: &str =
    "request-success-rate: 80.50 (threshold >= 99, fail) - 80.5 is below the minimum 99 by 18.5";

#[tokio::test]
async fn each_provider_type_gets_its_json() {
    let (addr, rx) = receiver().await;
    let kinds = ["slack", "msteams", "discord", "rocket", "gchat", "webhook"];
    let providers = Providers(
        kinds
            .iter()
            .map(|k| provider(k, k, Some(format!("{addr}/{k}")), None))
            .collect(),
    );
    let n = notifier(providers, Secrets::default());
    let sent = n
        .notify(
            &canary(kinds.iter().map(|k| (*k, None)).collect()),
            &failure(),
        )
        .await
        .unwrap();
    assert_eq!(sent, kinds.len());
    let got: BTreeMap<String, serde_json::Value> = rx
        .got
        .lock()
        .unwrap()
        .iter()
        .map(|(p, v, _)| (p.clone(), v.clone()))
        .collect();

    let slack_fields = json!([
        {"title": "Target", "value": "Deployment/podinfo.test", "short": false},
        {"title": "Phase", "value": "Failed", "short": false},
        {"title": "Failed check", "value": CHECK_LINE, "short": false},
    ]);
    let slack = |color: &str| {
        json!({
            "channel": "deploys", "username": "serin", "icon_url": "", "icon_emoji": ":rocket:",
            "attachments": [{
                "color": color, "author_name": "podinfo.test",
                "text": "Rolling back podinfo.test: failed checks threshold reached 1",
                "mrkdwn_in": ["text"], "fields": slack_fields,
            }]
        })
    };
    assert_eq!(got["/slack"], slack("danger"));
    // Discord is posted to its Slack-compatible endpoint.
    assert_eq!(got["/discord/slack"], slack("danger"));
    assert_eq!(got["/rocket"], slack("#FF0000"));
    assert_eq!(
        got["/msteams"],
        json!({
            "@type": "MessageCard", "@context": "http://schema.org/extensions", "themeColor": "FF0000",
            "summary": "podinfo.test",
            "sections": [{
                "activityTitle": "Rolling back podinfo.test: failed checks threshold reached 1",
                "activitySubtitle": "podinfo.test",
                "facts": [
                    {"name": "Target", "value": "Deployment/podinfo.test"},
                    {"name": "Phase", "value": "Failed"},
                    {"name": "Failed check", "value": CHECK_LINE},
                ]
            }]
        })
    );
    let gchat = &got["/gchat"]["cards"][0];
    assert_eq!(gchat["header"]["subtitle"], "podinfo.test");
    let texts: Vec<&str> = gchat["sections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["widgets"][0]["textParagraph"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts.len(), 4);
    assert!(texts[0].contains("Rolling back podinfo.test"));
    assert_eq!(
        texts[3],
        format!("Failed check<br><font color=#848484><strong>{CHECK_LINE}</strong></font>")
    );
    assert_eq!(
        got["/webhook"],
        json!({
            "canary": "podinfo", "namespace": "test", "phase": "Failed", "severity": "error",
            "message": "Rolling back podinfo.test: failed checks threshold reached 1",
            "failedCheck": {"name": "request-success-rate", "kind": "metric", "verdict": "Fail", "value": 80.5,
                            "threshold": ">= 99", "message": "80.5 is below the minimum 99 by 18.5"},
            "fields": [
                {"name": "Target", "value": "Deployment/podinfo.test"},
                {"name": "Phase", "value": "Failed"},
                {"name": "Failed check", "value": CHECK_LINE},
            ]
        })
    );
}

#[tokio::test]
async fn severity_filter_and_empty_means_info() {
    let (addr, rx) = receiver().await;
    let providers = Providers(vec![provider(
        "hook",
        "webhook",
        Some(format!("{addr}/hook")),
        None,
    )]);
    let n = notifier(providers, Secrets::default());
    // Three alerts to one receiver, told apart by the order they arrive in is not
    // reliable (concurrent), so count deliveries per event severity instead.
    let c = canary(vec![
        ("hook", None),
        ("hook", Some("warn")),
        ("hook", Some("error")),
    ]);
    let mut cases = vec![
        (Severity::Info, 1),
        (Severity::Warn, 2),
        (Severity::Error, 3),
    ];
    for (severity, want) in cases.drain(..) {
        rx.got.lock().unwrap().clear();
        let event = AlertEvent {
            severity,
            ..failure()
        };
        assert_eq!(n.notify(&c, &event).await.unwrap(), want, "{severity:?}");
        assert_eq!(rx.got.lock().unwrap().len(), want);
    }
    let bad = canary(vec![("hook", Some("critical"))]);
    assert!(
        matches!(n.notify(&bad, &failure()).await, Err(NotifyError::BadSeverity(s)) if s == "critical")
    );
    assert_eq!(Severity::parse(Some("")).unwrap(), Severity::Info);
}

#[tokio::test]
async fn address_token_from_secret_and_errors_do_not_leak_them() {
    let (addr, rx) = receiver().await;
    let secrets = Secrets(BTreeMap::from([(
        ("test".to_string(), "slack-secret".to_string()),
        BTreeMap::from([
            (
                "address".to_string(),
                format!("{addr}/hooks/T000/B000/xyz").into_bytes(),
            ),
            ("token".to_string(), b"xoxb-secret-token\n".to_vec()),
        ]),
    )]));
    let providers = Providers(vec![
        provider(
            "slack",
            "slack",
            Some("http://ignored.invalid/".into()),
            Some("slack-secret"),
        ),
        provider(
            "broken",
            "webhook",
            Some(format!("{addr}/broken/s3cr3t-path")),
            None,
        ),
        provider("nosecret", "slack", None, Some("absent")),
        provider("pager", "pagerduty", Some(format!("{addr}/p")), None),
        provider("noaddr", "msteams", None, None),
    ]);
    let n = notifier(providers, Secrets(secrets.0));
    let c = canary(vec![
        ("slack", None),
        ("broken", None),
        ("nosecret", None),
        ("pager", None),
        ("noaddr", None),
        ("ghost", None),
    ]);
    let err = n.notify(&c, &failure()).await.unwrap_err();
    let got = rx.got.lock().unwrap().clone();
    let slack = got
        .iter()
        .find(|g| g.0 == "/hooks/T000/B000/xyz")
        .expect("slack delivered");
    assert_eq!(slack.2.as_deref(), Some("Bearer xoxb-secret-token"));
    let NotifyError::Several(errors) = &err else {
        panic!("expected several errors, got {err:?}")
    };
    let text = err.to_string();
    for needle in [
        "alert to-broken: the receiver answered HTTP 500",
        "alert to-nosecret: secret test/absent not found",
        "provider type \"pagerduty\" is not supported",
        "alert to-noaddr: no address",
        "AlertProvider test/ghost not found",
    ] {
        assert!(text.contains(needle), "{text:?} should contain {needle:?}");
    }
    assert_eq!(errors.len(), 5);
    assert!(
        !text.contains("s3cr3t") && !text.contains("xoxb") && !text.contains("127.0.0.1"),
        "{text}"
    );
}

#[tokio::test]
async fn global_defaults_apply_to_canaries_without_alerts() {
    let (addr, rx) = receiver().await;
    let mut n = notifier(Providers::default(), Secrets::default());
    n.global = Some(GlobalAlerts {
        provider_type: "slack".into(),
        url: format!("{addr}/global"),
        severity: Severity::Warn,
        ..Default::default()
    });
    assert!(!format!("{:?}", n.global).contains(&addr));
    let c = canary(vec![]);
    let info = AlertEvent {
        severity: Severity::Info,
        ..failure()
    };
    assert_eq!(n.notify(&c, &info).await.unwrap(), 0);
    assert_eq!(n.notify(&c, &failure()).await.unwrap(), 1);
    let got = rx.got.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "/global");
    assert_eq!(got[0].1["channel"], "general");
    assert_eq!(got[0].1["attachments"][0]["author_name"], "podinfo.test");
}

#[tokio::test]
async fn proxy_from_secret_carries_the_alert() {
    // The receiver doubles as an HTTP proxy: reqwest sends it the absolute URL of
    // an address that does not resolve, so a delivery proves the proxy was used.
    let (proxy, rx) = receiver().await;
    let secrets = Secrets(BTreeMap::from([(
        ("test".to_string(), "via-proxy".to_string()),
        BTreeMap::from([
            (
                "address".to_string(),
                b"http://alerts.invalid/proxied".to_vec(),
            ),
            ("proxy".to_string(), proxy.into_bytes()),
        ]),
    )]));
    let providers = Providers(vec![provider("hook", "webhook", None, Some("via-proxy"))]);
    let n = notifier(providers, secrets);
    assert_eq!(
        n.notify(&canary(vec![("hook", None)]), &failure())
            .await
            .unwrap(),
        1
    );
    let got = rx.got.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "/proxied");
    assert_eq!(got[0].1["canary"], "podinfo");
}

/// AlertProviders have no skip-verify field (nor does Flagger's): an alert to a
/// receiver with a certificate nobody vouches for is refused, directly or through
/// a proxy's own client, and the error names neither the address nor the token.
#[tokio::test]
async fn alerts_verify_tls_and_have_no_way_to_turn_it_off() {
    use crate::analysis::prometheus::tests::serve_tls;
    let app = Router::new().route("/{*path}", post(|| async { StatusCode::OK }));
    let addr = serve_tls(app).await;
    let secret_addr = format!("{addr}/hook-s3cr3t-path");
    let secrets = Secrets(BTreeMap::from([(
        ("test".to_string(), "tls".to_string()),
        BTreeMap::from([
            ("address".to_string(), secret_addr.clone().into_bytes()),
            ("token".to_string(), b"tok-s3cr3t".to_vec()),
        ]),
    )]));
    let providers = Providers(vec![provider("hook", "webhook", None, Some("tls"))]);
    let n = notifier(providers, secrets);
    let err = n
        .notify(&canary(vec![("hook", None)]), &failure())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("delivery failed"), "{err}");
    assert!(
        err.to_lowercase().contains("certificate"),
        "refused for the certificate: {err}"
    );
    assert!(!err.contains("s3cr3t"), "{err}");
}
