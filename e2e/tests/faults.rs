//! Issue #11 item 3, the faults a test can make on its own without touching shared
//! cluster components: a Prometheus too slow to answer (a delaying proxy in front of
//! the real one), a webhook that hangs, a webhook that answers garbage. Each test's
//! name states the outcome; the ones that restart the API server, Prometheus or
//! Traefik are in `faults_cluster.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use kube::Client;
use kube::api::Api;
use serde_json::{Value, json};
use serin_e2e::canary::{canaries, deploy_initialized, phase, release, status, wait_phase, weight};
use serin_e2e::operator::Operator;
use serin_e2e::{ClusterEnv, TestNamespace, apply_json};

fn gateway_canary(env: &ClusterEnv, ns: &str, name: &str, deadline: u32, analysis: Value) -> Value {
    json!({
        "apiVersion": "serin.dev/v1beta1", "kind": "Canary",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "provider": "gatewayapi:v1",
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "progressDeadlineSeconds": deadline,
            "service": {
                "port": 8080,
                "hosts": [format!("{name}.{ns}.e2e.local")],
                "gatewayRefs": [{"name": env.gateway_name, "namespace": env.gateway_namespace}]
            },
            "analysis": analysis
        }
    })
}

fn prometheus_template(ns: &str, name: &str, address: &str) -> Value {
    json!({
        "apiVersion": "serin.dev/v1beta1", "kind": "MetricTemplate",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "provider": {"type": "prometheus", "address": address},
            // Always 1 while Prometheus answers: only the server's behaviour decides.
            "query": "vector(1)"
        }
    })
}

/// A TCP proxy to `upstream` that holds every connection for `delay` before
/// forwarding it: a Prometheus that answers, but far too late.
async fn slow_proxy(upstream: String, delay: Duration) -> Result<(String, Arc<AtomicU32>)> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = format!("http://{}", l.local_addr()?);
    let conns = Arc::new(AtomicU32::new(0));
    let seen = conns.clone();
    tokio::spawn(async move {
        while let Ok((mut down, _)) = l.accept().await {
            seen.fetch_add(1, Ordering::Relaxed);
            let upstream = upstream.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if let Ok(mut up) = tokio::net::TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                }
            });
        }
    });
    Ok((addr, conns))
}

fn rfc3339(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// One Canary's metric goes through a proxy that answers only after 30 s; its check
/// times out at its own `timeout` (6 s), is inconclusive and holds that release,
/// while another Canary of the same operator, checked against Prometheus directly,
/// takes every step on time and is promoted.
#[tokio::test]
async fn slow_prometheus_times_out_per_query_and_does_not_stall_other_canaries() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("slow_prometheus") else {
        return Ok(());
    };
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-slowprom").await?;
    let op = Operator::start(&env, &ns.name, &["--provider", "gatewayapi:v1"]).await?;
    let upstream = env.prometheus.trim_start_matches("http://").to_string();
    let (proxy, conns) = slow_proxy(upstream, Duration::from_secs(30)).await?;
    apply_json(&client, prometheus_template(&ns.name, "slow", &proxy)).await?;
    apply_json(
        &client,
        prometheus_template(&ns.name, "direct", &env.prometheus),
    )
    .await?;
    let metric = |template: &str, timeout: &str| {
        json!([{"name": "up", "templateRef": {"name": template},
                "thresholdRange": {"min": 0.5}, "timeout": timeout}])
    };
    let slow_app = deploy_initialized(
        &env,
        &client,
        &op,
        &gateway_canary(
            &env,
            &ns.name,
            "slow",
            300,
            json!({"interval": "2s", "threshold": 1, "stepWeights": [50],
                   "metrics": metric("slow", "6s")}),
        ),
        1,
    )
    .await?;
    let fast_app = deploy_initialized(
        &env,
        &client,
        &op,
        &gateway_canary(
            &env,
            &ns.name,
            "fast",
            300,
            json!({"interval": "2s", "threshold": 1, "stepWeights": [20, 40, 60, 80],
                   "metrics": metric("direct", "6s")}),
        ),
        1,
    )
    .await?;
    let api = canaries(&client, &ns.name);
    release(&client, &slow_app.version("v2")).await?;
    // The slow check is under way (its first analysis step comes one interval after
    // the first weight) before the other release starts.
    let until = Instant::now() + Duration::from_secs(60);
    while conns.load(Ordering::Relaxed) == 0 {
        if Instant::now() > until {
            bail!(
                "the slow Canary never queried: {}\n{}",
                status(&api, "slow").await?,
                op.log_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    release(&client, &fast_app.version("v2")).await?;

    let mut steps: Vec<chrono::DateTime<chrono::Utc>> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let fast_done = loop {
        let s = status(&api, "fast").await?;
        if phase(&s) == "Progressing"
            && let Some(t) = s["lastStepTime"].as_str().and_then(rfc3339)
            && steps.last() != Some(&t)
        {
            steps.push(t);
        }
        if matches!(phase(&s), "Succeeded" | "Failed") {
            break s;
        }
        if Instant::now() > deadline {
            bail!("fast release did not end: {s}\n{}", op.log_tail(40));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(phase(&fast_done), "Succeeded", "{fast_done}");
    // Steps of 2 s, each taken without waiting on the other Canary's 6 s timeouts.
    let gaps: Vec<f64> = steps
        .windows(2)
        .map(|w| (w[1] - w[0]).num_milliseconds() as f64 / 1000.0)
        .collect();
    eprintln!("fast canary step gaps: {gaps:?}");
    assert!(
        gaps.len() >= 3,
        "the fast release's steps were seen: {gaps:?}"
    );
    assert!(
        gaps.iter().all(|g| *g < 5.5),
        "a step of the fast Canary waited on the slow one: {gaps:?}"
    );

    let slow = status(&api, "slow").await?;
    assert_eq!(
        phase(&slow),
        "Progressing",
        "the slow release holds: {slow}"
    );
    assert_eq!(weight(&slow), 50, "its weight stays: {slow}");
    assert_eq!(slow["failedChecks"].as_u64().unwrap_or(0), 0, "{slow}");
    let check = &slow["lastAnalysis"][0];
    assert_eq!(check["verdict"], "Inconclusive", "{slow}");
    let msg = check["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("metrics server unavailable") && msg.contains("timed out after 6s"),
        "the check's own timeout, in its message: {msg}"
    );
    let hold = slow["holdReason"].as_str().unwrap_or_default();
    assert!(
        hold.starts_with("analysis inconclusive") && hold.contains("timed out after 6s"),
        "{hold}"
    );
    drop(op);
    ns.cleanup().await?;
    Ok(())
}

/// A webhook server on loopback that reads each request and then hangs (`hang`)
/// or answers bytes that are not HTTP.
async fn bad_server(hang: bool) -> Result<(String, Arc<AtomicU32>)> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = format!("http://{}/gate", l.local_addr()?);
    let conns = Arc::new(AtomicU32::new(0));
    let seen = conns.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = l.accept().await {
            seen.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                if hang {
                    // Reads the request and never answers.
                    tokio::time::sleep(Duration::from_secs(120)).await;
                } else {
                    let _ = s.write_all(b"\x00\xffOK maybe?\r\n\r\n{not json").await;
                }
            });
        }
    });
    Ok((addr, conns))
}

/// Releases `name` with a rollout webhook at `url` (2 s timeout) and waits for the
/// rollback; returns the Failed status and how long the release took.
async fn gated_release_fails(
    env: &ClusterEnv,
    client: &Client,
    op: &Operator,
    ns: &str,
    name: &str,
    url: &str,
) -> Result<(Value, Duration)> {
    let app = deploy_initialized(
        env,
        client,
        op,
        &gateway_canary(
            env,
            ns,
            name,
            120,
            json!({"interval": "2s", "threshold": 1, "stepWeights": [50],
                   "webhooks": [{"name": "gate", "type": "rollout", "url": url,
                                 "timeout": "2s"}]}),
        ),
        1,
    )
    .await?;
    let api = canaries(client, ns);
    let t0 = Instant::now();
    release(client, &app.version("v2")).await?;
    let failed = wait_phase(&api, name, "Failed", Duration::from_secs(60), op).await?;
    Ok((failed, t0.elapsed()))
}

fn gate_check(s: &Value) -> Value {
    s["lastAnalysis"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == "gate")
        .cloned()
        .unwrap_or(Value::Null)
}

async fn failed_event(client: &Client, ns: &str, name: &str) -> Result<String> {
    use k8s_openapi::api::core::v1::Event;
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let all = events.list(&Default::default()).await?;
    Ok(all
        .items
        .iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .filter(|e| e.reason.as_deref() == Some("Failed"))
        .filter_map(|e| e.message.clone())
        .collect::<Vec<_>>()
        .join(" | "))
}

/// A rollout webhook that takes the request and never answers: the call is cut at
/// the webhook's `timeout` (2 s), the gate fails, the release rolls back (threshold
/// 1), and the status and the Failed Event say it timed out.
#[tokio::test]
async fn hanging_webhook_times_out_and_fails_the_gate_with_message_in_status() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("hanging_webhook") else {
        return Ok(());
    };
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-hang").await?;
    let op = Operator::start(&env, &ns.name, &["--provider", "gatewayapi:v1"]).await?;
    let (url, conns) = bad_server(true).await?;
    let (failed, took) = gated_release_fails(&env, &client, &op, &ns.name, "hang", &url).await?;
    let check = gate_check(&failed);
    assert_eq!(check["verdict"], "Fail", "{failed}");
    let msg = check["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("rollout webhook failed: timed out after 2s"),
        "{msg}"
    );
    assert!(conns.load(Ordering::Relaxed) >= 1, "the webhook was called");
    // Initialization aside: a first step, one interval, one 2 s timeout, rollback.
    assert!(
        took < Duration::from_secs(30),
        "the hang did not hold the release: {took:?}"
    );
    let ev = failed_event(&client, &ns.name, "hang").await?;
    assert!(ev.contains("timed out after 2s"), "Failed Event: {ev:?}");
    assert_eq!(weight(&failed), 0, "{failed}");
    drop(op);
    ns.cleanup().await?;
    Ok(())
}

/// A rollout webhook whose server answers bytes that are not HTTP: the gate fails
/// at once with a message saying so (not "unreachable"), and the release rolls back.
#[tokio::test]
async fn garbage_webhook_answer_fails_the_gate_with_message_in_status() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("garbage_webhook") else {
        return Ok(());
    };
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-garbage").await?;
    let op = Operator::start(&env, &ns.name, &["--provider", "gatewayapi:v1"]).await?;
    let (url, conns) = bad_server(false).await?;
    let (failed, took) = gated_release_fails(&env, &client, &op, &ns.name, "garbage", &url).await?;
    let check = gate_check(&failed);
    assert_eq!(check["verdict"], "Fail", "{failed}");
    let msg = check["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("rollout webhook failed: answered something that is not HTTP"),
        "{msg}"
    );
    assert!(conns.load(Ordering::Relaxed) >= 1, "the webhook was called");
    assert!(took < Duration::from_secs(30), "{took:?}");
    let ev = failed_event(&client, &ns.name, "garbage").await?;
    assert!(ev.contains("not HTTP"), "Failed Event: {ev:?}");
    drop(op);
    ns.cleanup().await?;
    Ok(())
}
