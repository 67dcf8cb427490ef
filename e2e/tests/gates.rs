//! End-to-end tests of the gates and analysis on the local cluster: the real `serin`
//! operator calls real HTTP gates (the `serin tester` routes, or a recording receiver)
//! listening on loopback, and reads Traefik's real metrics through Prometheus.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::http::HeaderMap;
use axum::routing::post;
use kube::api::{Api, DynamicObject};
use serde_json::{Value, json};
use serin_e2e::canary::{canaries, phase, release, status, weight};
use serin_e2e::load::{self, LoadSpec};
use serin_e2e::operator::Operator;
use serin_e2e::{ClusterEnv, SampleApp, TestNamespace, apply_json};

/// How long a route or pod switch may leave requests unanswered.
const SWITCH_WINDOW: Duration = Duration::from_secs(3);

/// Waits for phase `want`; a different terminal phase after Progressing fails at once
/// so a wrong outcome is reported as such, not as a timeout.
async fn wait_phase(
    api: &Api<DynamicObject>,
    name: &str,
    want: &str,
    timeout: Duration,
    op: &Operator,
) -> Result<Value> {
    let deadline = Instant::now() + timeout;
    let mut progressed = false;
    loop {
        let s = status(api, name).await?;
        let p = phase(&s);
        progressed |= p == "Progressing";
        if p == want {
            return Ok(s);
        }
        if progressed && ["Succeeded", "Failed"].contains(&p) {
            bail!(
                "canary {name} reached {p}, wanted {want}: {s}\n{}",
                op.log_tail(40)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "canary {name}: no {want} within {timeout:?}: {s}\n{}",
                op.log_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Serves `router` on an ephemeral loopback port: the operator runs on this host, so
/// it reaches it like any in-cluster webhook.
async fn serve_local(router: Router) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok((addr, task))
}

/// Every request a receiver got: path, headers and JSON body.
type Recorded = Arc<Mutex<Vec<(String, HeaderMap, Value)>>>;

/// A receiver answering 200 on any POST path and recording it.
fn recorder() -> (Router, Recorded) {
    let seen: Recorded = Arc::default();
    let s = seen.clone();
    let router = Router::new().fallback(post(
        move |uri: axum::http::Uri, headers: HeaderMap, body: String| {
            let s = s.clone();
            async move {
                let v = serde_json::from_str(&body).unwrap_or(Value::String(body));
                s.lock().unwrap_or_else(|e| e.into_inner()).push((
                    uri.path().to_string(),
                    headers,
                    v,
                ));
                "ok"
            }
        },
    ));
    (router, seen)
}

fn recorded(r: &Recorded) -> Vec<(String, HeaderMap, Value)> {
    r.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// A Gateway API Canary for `name` routed through the shared Traefik gateway.
fn gateway_canary(env: &ClusterEnv, ns: &str, name: &str, host: &str, analysis: Value) -> Value {
    json!({
        "apiVersion": "serin.dev/v1beta1", "kind": "Canary",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "provider": "gatewayapi:v1",
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "progressDeadlineSeconds": 300,
            "service": {
                "port": 8080,
                "hosts": [host],
                "gatewayRefs": [{"name": env.gateway_name, "namespace": env.gateway_namespace}]
            },
            "analysis": analysis
        }
    })
}

/// Posts Flagger's gate body `{name, namespace}` to a tester route.
async fn tester_post(addr: SocketAddr, path: &str, ns: &str, name: &str) -> Result<()> {
    let r = reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .json(&json!({"name": name, "namespace": ns}))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("{path}: HTTP {}", r.status());
    }
    Ok(())
}

/// A confirm-promotion gate on the real tester holds the release in WaitingPromotion
/// at its last weight until the gate is opened, then the release is promoted.
#[tokio::test]
async fn confirm_promotion_gate_holds_until_opened() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("confirm_promotion_gate") else {
        return Ok(());
    };
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-gate").await?;
    let (tester, _t) = serve_local(serin::tester::router()).await?;
    let op = Operator::start(&env, &ns.name, &["--provider", "gatewayapi:v1"]).await?;
    let host = format!("{}.e2e.local", ns.name);
    let mut app = SampleApp::new(&ns.name, "web", &env.sample_app_command());
    app.deploy(&client).await?;
    let analysis = json!({
        "interval": "3s", "threshold": 1, "stepWeights": [30],
        "webhooks": [{
            "name": "approval", "type": "confirm-promotion",
            "url": format!("http://{tester}/gate/check")
        }]
    });
    apply_json(
        &client,
        gateway_canary(&env, &ns.name, "web", &host, analysis),
    )
    .await?;
    let api = canaries(&client, &ns.name);
    wait_phase(&api, "web", "Initialized", Duration::from_secs(60), &op).await?;

    app = app.version("v2");
    release(&client, &app).await?;
    let waiting = wait_phase(
        &api,
        "web",
        "WaitingPromotion",
        Duration::from_secs(60),
        &op,
    )
    .await?;
    let held_at = weight(&waiting);
    assert_eq!(held_at, 30, "held at the last step: {waiting}");
    // More than two intervals with the gate closed: nothing moves.
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        let s = status(&api, "web").await?;
        assert_eq!(phase(&s), "WaitingPromotion", "gate closed: {s}");
        assert_eq!(weight(&s), held_at, "weight unchanged while waiting: {s}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tester_post(tester, "/gate/open", &ns.name, "web").await?;
    let done = wait_phase(&api, "web", "Succeeded", Duration::from_secs(60), &op).await?;
    assert_eq!(weight(&done), 0);
    drop(op);
    ns.cleanup().await?;
    Ok(())
}

/// Opening the tester's rollback gate mid-release fails the Canary and real traffic
/// goes back to the primary.
#[tokio::test]
async fn rollback_gate_rolls_back_during_progressing() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("rollback_gate") else {
        return Ok(());
    };
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-rbgate").await?;
    let (tester, _t) = serve_local(serin::tester::router()).await?;
    let op = Operator::start(&env, &ns.name, &["--provider", "gatewayapi:v1"]).await?;
    let host = format!("{}.e2e.local", ns.name);
    let mut app = SampleApp::new(&ns.name, "web", &env.sample_app_command());
    app.deploy(&client).await?;
    let analysis = json!({
        "interval": "3s", "threshold": 1, "stepWeights": [10, 20, 30, 40, 50, 60, 70, 80],
        "webhooks": [{
            "name": "kill-switch", "type": "rollback",
            "url": format!("http://{tester}/rollback/check")
        }]
    });
    apply_json(
        &client,
        gateway_canary(&env, &ns.name, "web", &host, analysis),
    )
    .await?;
    let api = canaries(&client, &ns.name);
    wait_phase(&api, "web", "Initialized", Duration::from_secs(60), &op).await?;
    let url = format!("{}/", env.gateway);
    serin_e2e::wait_route_serves(&url, &host, &["v1"], Duration::from_secs(20)).await?;

    app = app.version("v2");
    release(&client, &app).await?;
    serin_e2e::wait_for("canary weight > 0", Duration::from_secs(60), || async {
        let s = status(&api, "web").await?;
        Ok((phase(&s) == "Progressing" && weight(&s) > 0).then_some(()))
    })
    .await?;
    // The closed gate let it advance; now the canary really serves some traffic.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = load::run(&LoadSpec::new(&url).host(&host).requests(200, 200.0)).await?;
    assert!(
        during.count("v2") > 0,
        "canary serving before the rollback: {during:?}"
    );

    tester_post(tester, "/rollback/open", &ns.name, "web").await?;
    let failed = wait_phase(&api, "web", "Failed", Duration::from_secs(30), &op).await?;
    assert_eq!(weight(&failed), 0, "{failed}");
    // Traefik writes no route status and applies a change within a few seconds (more
    // on a loaded machine): poll until a whole sample is on the primary.
    let mut back = None;
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let sample = load::run(&LoadSpec::new(&url).host(&host).requests(200, 200.0)).await?;
        let done = sample.responses > 0 && sample.count("v1") == sample.responses;
        back = Some(sample);
        if done {
            break;
        }
    }
    let back = back.context("no sample")?;
    assert_eq!(
        back.count("v1"),
        back.responses,
        "all traffic back on the primary within 15 s: {back:?}"
    );
    drop(op);
    ns.cleanup().await?;
    Ok(())
}

/// A rollout webhook with `headersSecretRef` sends the Secret's header exactly as
/// stored, with Flagger's payload.
#[tokio::test]
async fn webhook_sends_auth_header_from_secret_and_flagger_payload() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("webhook_auth") else {
        return Ok(());
    };
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-hook").await?;
    let (router, seen) = recorder();
    let (addr, _t) = serve_local(router).await?;
    let op = Operator::start(&env, &ns.name, &["--provider", "kubernetes"]).await?;
    let mut app = SampleApp::new(&ns.name, "app", &env.sample_app_command());
    app.deploy(&client).await?;
    apply_json(
        &client,
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "hook-auth", "namespace": ns.name},
            "stringData": {"Authorization": "Bearer s3cret"}
        }),
    )
    .await?;
    let metadata = json!({"suite": "smoke", "cmd": "curl -s http://app-canary/"});
    apply_json(
        &client,
        json!({
            "apiVersion": "serin.dev/v1beta1", "kind": "Canary",
            "metadata": {"name": "app", "namespace": ns.name},
            "spec": {
                "provider": "kubernetes",
                "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "app"},
                "service": {"port": 80, "targetPort": 8080},
                "analysis": {
                    "interval": "3s", "threshold": 1, "iterations": 2,
                    "webhooks": [{
                        "name": "smoke", "type": "rollout",
                        "url": format!("http://{addr}/hook"),
                        "headersSecretRef": {"name": "hook-auth"},
                        "metadata": metadata
                    }]
                }
            }
        }),
    )
    .await?;
    let api = canaries(&client, &ns.name);
    wait_phase(&api, "app", "Initialized", Duration::from_secs(60), &op).await?;
    app = app.version("v2");
    release(&client, &app).await?;
    // The webhook answering 200 is a passing check, so the release goes through.
    let done = wait_phase(&api, "app", "Succeeded", Duration::from_secs(60), &op).await?;

    let calls = recorded(&seen);
    assert!(!calls.is_empty(), "the webhook was never called");
    for (path, headers, body) in &calls {
        assert_eq!(path, "/hook");
        assert_eq!(
            headers.get("authorization").and_then(|v| v.to_str().ok()),
            Some("Bearer s3cret"),
            "header as stored in the Secret"
        );
        assert_eq!(body["name"], "app", "{body}");
        assert_eq!(body["namespace"], ns.name.as_str(), "{body}");
        assert_eq!(body["phase"], "Progressing", "{body}");
        assert_eq!(body["metadata"], metadata, "{body}");
        let sum = body["checksum"].as_str().unwrap_or("");
        assert!(!sum.is_empty(), "checksum present: {body}");
    }
    // The checksum identifies the revision under test, as Flagger's does.
    let sums: BTreeSet<&str> = calls
        .iter()
        .filter_map(|(_, _, b)| b["checksum"].as_str())
        .collect();
    assert_eq!(sums.len(), 1, "one revision, one checksum: {sums:?}");
    assert!(done["lastAppliedSpec"].is_string());
    drop(op);
    ns.cleanup().await?;
    Ok(())
}

/// With no traffic the success rate has no data: the step holds as inconclusive
/// (no failed checks, weight unchanged) instead of rolling back, and proceeds once
/// traffic arrives.
#[tokio::test]
async fn no_traffic_holds_inconclusive_then_proceeds_with_load() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("no_traffic_inconclusive") else {
        return Ok(());
    };
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-nodata").await?;
    let op = Operator::start(&env, &ns.name, &["--provider", "gatewayapi:v1"]).await?;
    let host = format!("{}.e2e.local", ns.name);
    let mut app = SampleApp::new(&ns.name, "web", &env.sample_app_command());
    app.deploy(&client).await?;
    let analysis = json!({
        "interval": "4s", "threshold": 1, "stepWeights": [20, 40],
        "metrics": [{"name": "request-success-rate", "interval": "10s", "thresholdRange": {"min": 95}}]
    });
    apply_json(
        &client,
        gateway_canary(&env, &ns.name, "web", &host, analysis),
    )
    .await?;
    let api = canaries(&client, &ns.name);
    wait_phase(&api, "web", "Initialized", Duration::from_secs(60), &op).await?;
    let url = format!("{}/", env.gateway);
    serin_e2e::wait_route_serves(&url, &host, &["v1"], Duration::from_secs(20)).await?;
    // The readiness probe above sent a few requests; let them age out of the 10s
    // metric window so the canary really has no data.
    tokio::time::sleep(Duration::from_secs(12)).await;

    app = app.version("v2");
    release(&client, &app).await?;
    let held = serin_e2e::wait_for("inconclusive hold", Duration::from_secs(60), || async {
        let s = status(&api, "web").await?;
        let reason = s["holdReason"].as_str().unwrap_or("");
        Ok((phase(&s) == "Progressing" && reason.contains("inconclusive")).then_some(s))
    })
    .await?;
    let w = weight(&held);
    // Three intervals without traffic: still holding, nothing counted as failed.
    let until = Instant::now() + Duration::from_secs(12);
    while Instant::now() < until {
        let s = status(&api, "web").await?;
        assert_eq!(phase(&s), "Progressing", "{s}\n{}", op.log_tail(20));
        assert_eq!(weight(&s), w, "weight unchanged while inconclusive: {s}");
        assert_eq!(s["failedChecks"].as_u64().unwrap_or(0), 0, "{s}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let bg = load::Steady::start(&url, &host, 20.0, Duration::from_secs(150));
    let done = wait_phase(&api, "web", "Succeeded", Duration::from_secs(90), &op).await?;
    assert_eq!(done["failedChecks"].as_u64().unwrap_or(0), 0, "{done}");
    // The app-dark guard: no 404/502/503 or missing answer outside one switch window.
    load::assert_not_dark("steady load", &bg.finish().await?, SWITCH_WINDOW);
    drop(op);
    ns.cleanup().await?;
    Ok(())
}

/// Requests recorded on `path`.
fn on_path(r: &Recorded, path: &str) -> Vec<Value> {
    recorded(r)
        .into_iter()
        .filter(|(p, _, _)| p == path)
        .map(|(_, _, b)| b)
        .collect()
}

/// Alerts through a generic `webhook` and a `slack` AlertProvider: a promoted release
/// and a rolled-back one both post, and the rollback names the failing check with its
/// value and threshold.
#[tokio::test]
async fn alerts_post_release_outcomes_to_webhook_and_slack() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("alerts") else {
        return Ok(());
    };
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-alert").await?;
    let (router, seen) = recorder();
    let (addr, _t) = serve_local(router).await?;
    let op = Operator::start(&env, &ns.name, &["--provider", "gatewayapi:v1"]).await?;
    for (name, kind) in [("hook", "webhook"), ("chat", "slack")] {
        apply_json(
            &client,
            json!({
                "apiVersion": "serin.dev/v1beta1", "kind": "AlertProvider",
                "metadata": {"name": name, "namespace": ns.name},
                "spec": {"type": kind, "channel": "releases", "username": "serin",
                         "address": format!("http://{addr}/{kind}")}
            }),
        )
        .await?;
    }
    let host = format!("{}.e2e.local", ns.name);
    let mut app = SampleApp::new(&ns.name, "web", &env.sample_app_command());
    app.deploy(&client).await?;
    let analysis = json!({
        "interval": "4s", "threshold": 1, "stepWeights": [50],
        "metrics": [{"name": "request-success-rate", "interval": "10s", "thresholdRange": {"min": 95}}],
        "alerts": [
            {"name": "to-hook", "providerRef": {"name": "hook"}},
            {"name": "to-chat", "providerRef": {"name": "chat"}}
        ]
    });
    apply_json(
        &client,
        gateway_canary(&env, &ns.name, "web", &host, analysis),
    )
    .await?;
    let api = canaries(&client, &ns.name);
    wait_phase(&api, "web", "Initialized", Duration::from_secs(60), &op).await?;
    let url = format!("{}/", env.gateway);
    serin_e2e::wait_route_serves(&url, &host, &["v1"], Duration::from_secs(20)).await?;
    let bg = load::Steady::start(&url, &host, 20.0, Duration::from_secs(300));

    app = app.version("v2");
    release(&client, &app).await?;
    wait_phase(&api, "web", "Succeeded", Duration::from_secs(90), &op).await?;
    let hook_ok = serin_e2e::wait_for("Succeeded alert", Duration::from_secs(20), || async {
        Ok(on_path(&seen, "/webhook")
            .into_iter()
            .find(|b| b["phase"] == "Succeeded"))
    })
    .await?;
    assert_eq!(hook_ok["canary"], "web", "{hook_ok}");
    assert_eq!(hook_ok["namespace"], ns.name.as_str(), "{hook_ok}");
    assert!(hook_ok["failedCheck"].is_null(), "{hook_ok}");
    let slack = on_path(&seen, "/slack");
    let title = format!("web.{}", ns.name);
    assert!(
        slack.iter().any(|b| b["channel"] == "releases"
            && b["attachments"][0]["author_name"] == title.as_str()
            && b["attachments"][0]["fields"].as_array().is_some_and(|f| f
                .iter()
                .any(|f| f["title"] == "Phase" && f["value"] == "Succeeded"))),
        "a Slack attachment for the promotion: {slack:?}"
    );

    // Every request of the next revision fails: rolled back on the success rate.
    app = app.version("v3").env("ERROR_RATE", "1");
    release(&client, &app).await?;
    wait_phase(&api, "web", "Failed", Duration::from_secs(90), &op).await?;
    // The halt is a warning; the rollback itself is the error-severity alert.
    let hook_fail = serin_e2e::wait_for("Failed alert", Duration::from_secs(20), || async {
        Ok(on_path(&seen, "/webhook")
            .into_iter()
            .find(|b| b["phase"] == "Failed" && b["severity"] == "error"))
    })
    .await
    .with_context(|| format!("alerts: {:?}", on_path(&seen, "/webhook")))?;
    let check = &hook_fail["failedCheck"];
    assert_eq!(check["name"], "request-success-rate", "{hook_fail}");
    let value = check["value"].as_f64().context("failing value")?;
    assert!(
        value < 95.0,
        "the failing value is below the minimum: {hook_fail}"
    );
    assert!(
        check["threshold"]
            .as_str()
            .is_some_and(|t| t.contains("95")),
        "threshold reported: {hook_fail}"
    );
    let slack = on_path(&seen, "/slack");
    assert!(
        slack
            .iter()
            .any(|b| b["attachments"][0]["color"] == "danger"
                && b["attachments"][0]["fields"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|f| {
                        f["title"] == "Failed check"
                            && f["value"]
                                .as_str()
                                .is_some_and(|v| v.starts_with("request-success-rate:"))
                    }))),
        "a Slack attachment naming the failing check: {slack:?}"
    );
    // The app-dark guard: no 404/502/503 or missing answer outside one switch window.
    load::assert_not_dark("steady load", &bg.finish().await?, SWITCH_WINDOW);
    drop(op);
    ns.cleanup().await?;
    Ok(())
}

/// A release answering in 500 ms against a 300 ms P99 limit is rolled back on the
/// request-duration check, read from Traefik's real latency histogram.
#[tokio::test]
async fn latency_regression_rolls_back_on_request_duration() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("latency_regression") else {
        return Ok(());
    };
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-slow").await?;
    let op = Operator::start(&env, &ns.name, &["--provider", "gatewayapi:v1"]).await?;
    let host = format!("{}.e2e.local", ns.name);
    let mut app = SampleApp::new(&ns.name, "web", &env.sample_app_command());
    app.deploy(&client).await?;
    let analysis = json!({
        "interval": "5s", "threshold": 1, "stepWeights": [30, 60],
        "metrics": [{"name": "request-duration", "interval": "10s", "thresholdRange": {"max": 300}}]
    });
    apply_json(
        &client,
        gateway_canary(&env, &ns.name, "web", &host, analysis),
    )
    .await?;
    let api = canaries(&client, &ns.name);
    wait_phase(&api, "web", "Initialized", Duration::from_secs(60), &op).await?;
    let url = format!("{}/", env.gateway);
    serin_e2e::wait_route_serves(&url, &host, &["v1"], Duration::from_secs(20)).await?;
    let bg = load::Steady::start(&url, &host, 20.0, Duration::from_secs(240));

    app = app.version("v2").env("LATENCY_MS", "500");
    release(&client, &app).await?;
    let failed = wait_phase(&api, "web", "Failed", Duration::from_secs(90), &op).await?;
    let checks = failed["lastAnalysis"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let dur = checks
        .iter()
        .find(|c| c["name"] == "request-duration")
        .with_context(|| format!("no request-duration check: {failed}"))?;
    assert_eq!(dur["verdict"], "Fail", "{failed}");
    let ms = dur["value"].as_f64().context("measured latency")?;
    assert!(ms > 300.0, "P99 {ms} ms should exceed the limit: {failed}");
    assert_eq!(weight(&failed), 0);
    // The app-dark guard: no 404/502/503 or missing answer outside one switch window.
    load::assert_not_dark("steady load", &bg.finish().await?, SWITCH_WINDOW);
    drop(op);
    ns.cleanup().await?;
    Ok(())
}
