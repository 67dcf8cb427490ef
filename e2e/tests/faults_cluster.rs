//! Issue #11 item 3, the faults of shared cluster components: the API server,
//! Prometheus and Traefik are stopped or restarted in the middle of a release. Each
//! test's name states the outcome. They are serialized (one lock for the binary):
//! a component restart would otherwise hit the other tests' releases too. The
//! component is started again when its guard drops, a failed test included.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Client;
use kube::api::Api;
use serde_json::{Value, json};
use serin_e2e::canary::{canaries, deploy_initialized, phase, release, status, wait_phase, weight};
use serin_e2e::faults::{self, Component};
use serin_e2e::load::{self, LoadSpec, Steady};
use serin_e2e::operator::Operator;
use serin_e2e::{ClusterEnv, TestNamespace, apply_json, wait_for};
use tokio::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::const_new(());

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
                "hosts": [host(ns, name)],
                "gatewayRefs": [{"name": env.gateway_name, "namespace": env.gateway_namespace}]
            },
            "analysis": analysis
        }
    })
}

fn host(ns: &str, name: &str) -> String {
    format!("{name}.{ns}.e2e.local")
}

/// Waits until `name`'s weight is `w` while Progressing.
async fn wait_weight(
    client: &Client,
    ns: &str,
    name: &str,
    w: u64,
    op: &Operator,
) -> Result<Value> {
    let api = canaries(client, ns);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let s = status(&api, name).await?;
        if phase(&s) == "Progressing" && weight(&s) == w {
            return Ok(s);
        }
        if Instant::now() > deadline {
            bail!("{name}: no weight {w}: {s}\n{}", op.log_tail(40));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn template_version(d: &Deployment) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .first()?
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == "VERSION")?
        .value
        .clone()
}

/// The weights the operator logged an "Advance canary weight W" for, in order.
fn advances(op: &Operator, name: &str) -> Vec<u64> {
    let text = std::fs::read_to_string(&op.log).unwrap_or_default();
    text.lines()
        .filter(|l| {
            l.contains(&format!("canary={name}")) || l.contains(&format!("canary=\"{name}\""))
        })
        .filter_map(|l| l.split("Advance canary weight ").nth(1))
        .filter_map(|w| w.split_whitespace().next()?.parse().ok())
        .collect()
}

/// The API server goes away for a few seconds at weight 20 of a four-step release
/// and comes back with the same etcd. The operator keeps running, its watches
/// resume, and the release goes on from where it was: every weight is stepped to
/// exactly once (no step is decided twice from a stale view) and it is promoted.
///
/// Ignored until the bug it found is fixed. In four runs the steps after the restart
/// went on, each exactly once, but then the operator's Deployment watch cache stayed
/// stale for minutes: three times the primary was promoted in the API while the cache
/// kept the old revision (the release held in `promoting`), once the canary's pod was
/// ready and the cache said not. With `SERIN_E2E_OPERATOR_LOG=info,kube_runtime=debug`
/// the watchers get 410 "too old resource version" and retry from the same
/// resourceVersion again and again, backing off up to 30 s. A 30 s watch timeout did
/// not help. Run it with `cargo test -p serin-e2e --test faults_cluster -- --ignored`.
#[tokio::test]
#[ignore = "open bug: the Deployment watch cache stays stale after an API server restart"]
async fn api_server_restart_mid_release_resumes_without_repeating_a_step() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("apiserver_restart") else {
        return Ok(());
    };
    let _serial = SERIAL.lock().await;
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-apirestart").await?;
    let mut op = Operator::start(&env, &ns.name, &["--provider", "gatewayapi:v1"]).await?;
    let app = deploy_initialized(
        &env,
        &client,
        &op,
        &gateway_canary(
            &env,
            &ns.name,
            "web",
            120,
            json!({"interval": "4s", "threshold": 1, "stepWeights": [20, 40, 60, 80]}),
        ),
        1,
    )
    .await?;
    release(&client, &app.version("v2")).await?;
    wait_weight(&client, &ns.name, "web", 20, &op).await?;
    let t0 = Instant::now();
    let took = faults::restart(&env, Component::ApiServer, Duration::from_secs(3)).await?;
    eprintln!(
        "apiserver down and back in {:.1}s (start {:.1}s)",
        t0.elapsed().as_secs_f64(),
        took.as_secs_f64()
    );
    // A fresh client: the old one's connections went with the server.
    let client = env.client().await?;
    let api = canaries(&client, &ns.name);
    let done = wait_for("release to end", Duration::from_secs(120), || async {
        let s = status(&api, "web").await?;
        Ok(matches!(phase(&s), "Succeeded" | "Failed").then_some(s))
    })
    .await
    .with_context(|| op.log_tail(40))?;
    assert_eq!(phase(&done), "Succeeded", "{done}\n{}", op.log_tail(40));
    assert!(
        op.exited().is_none(),
        "the operator lived through the restart: {}",
        op.log_tail(40)
    );
    assert_eq!(
        advances(&op, "web"),
        [20, 40, 60, 80],
        "each step once:\n{}",
        op.log_tail(60)
    );
    let primary = Api::<Deployment>::namespaced(client.clone(), &ns.name)
        .get("web-primary")
        .await?;
    assert_eq!(template_version(&primary).as_deref(), Some("v2"));
    drop(op);
    ns.cleanup().await?;
    Ok(())
}

/// Prometheus stops for three analysis intervals (15 s, longer if need be for the
/// short deadline below to run out) while two releases are at
/// their first step. Their checks are inconclusive, not failed: each release holds
/// at its weight, with `holdReason` and the Promoted condition saying the metrics
/// server is unavailable. The one whose progress deadline (8 s) passes while it is
/// down fails then, and only then (no failed check counted); the other goes on once
/// Prometheus answers again and is promoted.
#[tokio::test]
async fn prometheus_down_three_intervals_holds_and_fails_only_at_progress_deadline() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("prometheus_down") else {
        return Ok(());
    };
    let _serial = SERIAL.lock().await;
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-promdown").await?;
    let op = Operator::start(&env, &ns.name, &["--provider", "gatewayapi:v1"]).await?;
    apply_json(
        &client,
        json!({
            "apiVersion": "serin.dev/v1beta1", "kind": "MetricTemplate",
            "metadata": {"name": "up", "namespace": ns.name},
            "spec": {"provider": {"type": "prometheus", "address": env.prometheus},
                     "query": "vector(1)"}
        }),
    )
    .await?;
    let analysis = json!({
        "interval": "5s", "threshold": 1, "stepWeights": [30, 60],
        "metrics": [{"name": "up", "templateRef": {"name": "up"},
                     "thresholdRange": {"min": 0.5}, "timeout": "2s"}]
    });
    let mut apps = Vec::new();
    for (name, deadline) in [("patient", 120), ("hasty", 8)] {
        apps.push(
            deploy_initialized(
                &env,
                &client,
                &op,
                &gateway_canary(&env, &ns.name, name, deadline, analysis.clone()),
                1,
            )
            .await?,
        );
    }
    for app in apps {
        release(&client, &app.version("v2")).await?;
    }
    for name in ["patient", "hasty"] {
        wait_weight(&client, &ns.name, name, 30, &op).await?;
    }
    let api = canaries(&client, &ns.name);
    let stopped = tokio::task::spawn_blocking({
        let env = env.clone();
        move || faults::stop(&env, Component::Prometheus)
    })
    .await??;
    let down_at = Instant::now();
    let mut inconclusive_at: std::collections::BTreeMap<&str, Instant> = Default::default();
    let mut hasty_failed_at = None;
    let mut condition_seen = false;
    // Down for three intervals at least, and until the short deadline has run out.
    while down_at.elapsed() < Duration::from_secs(15)
        || (hasty_failed_at.is_none() && down_at.elapsed() < Duration::from_secs(40))
    {
        for name in ["patient", "hasty"] {
            let s = status(&api, name).await?;
            assert_eq!(
                s["failedChecks"].as_u64().unwrap_or(0),
                0,
                "{name}: an unavailable Prometheus is no failed check: {s}"
            );
            let hold = s["holdReason"].as_str().unwrap_or_default();
            if hold.starts_with("analysis inconclusive") {
                assert!(hold.contains("metrics server unavailable"), "{hold}");
                inconclusive_at.entry(name).or_insert_with(Instant::now);
                let promoted = s["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|c| c["type"] == "Promoted")
                    .cloned()
                    .unwrap_or(Value::Null);
                let m = promoted["message"].as_str().unwrap_or_default();
                assert!(
                    promoted["status"] == "False" && m.contains("metrics server unavailable"),
                    "{name}: the condition says why: {promoted}"
                );
                condition_seen = true;
            }
            match (name, phase(&s)) {
                (_, "Progressing") => assert!(weight(&s) >= 30, "{name} holds: {s}"),
                ("hasty", "Failed") => {
                    hasty_failed_at.get_or_insert((Instant::now(), s.clone()));
                }
                _ => bail!("{name} while Prometheus is down: {s}\n{}", op.log_tail(30)),
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let took = stopped.start().await?;
    eprintln!(
        "prometheus back after {:.1}s (start {:.1}s)",
        down_at.elapsed().as_secs_f64(),
        took.as_secs_f64()
    );
    assert!(condition_seen, "a hold on the unavailable server was seen");
    let (failed_at, failed) = hasty_failed_at
        .context("the release whose deadline passed while Prometheus was down failed")?;
    let held = failed_at.duration_since(
        *inconclusive_at
            .get("hasty")
            .context("hasty was seen holding before it failed")?,
    );
    // Its hold began up to one poll before the sampler saw it: 8 s minus slack.
    assert!(
        held >= Duration::from_secs(6),
        "hasty failed {held:?} into its hold, before its 8 s deadline: {failed}"
    );
    assert_eq!(failed["failedChecks"].as_u64().unwrap_or(0), 0, "{failed}");
    let done = wait_phase(&api, "patient", "Succeeded", Duration::from_secs(90), &op).await?;
    assert_eq!(done["failedChecks"].as_u64().unwrap_or(0), 0, "{done}");
    drop(op);
    ns.cleanup().await?;
    Ok(())
}

/// Traefik restarts while a release is at its first step. Once it is back, it
/// rebuilds its routes from the API, the next route writes are confirmed through it
/// (the operator probes the gateway and would undo an unconfirmed write), the release
/// is promoted, and steady load through the restarted Traefik is answered in full.
#[tokio::test]
async fn traefik_restart_routes_still_apply_and_serve() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("traefik_restart") else {
        return Ok(());
    };
    let _serial = SERIAL.lock().await;
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-tfkrestart").await?;
    let op = Operator::start(
        &env,
        &ns.name,
        &[
            "--provider",
            "gatewayapi:v1",
            "--gateway-probe-url",
            &env.gateway,
            "--route-confirm-seconds",
            "20",
        ],
    )
    .await?;
    let app = deploy_initialized(
        &env,
        &client,
        &op,
        &gateway_canary(
            &env,
            &ns.name,
            "web",
            120,
            json!({"interval": "8s", "threshold": 1, "stepWeights": [20, 50, 80]}),
        ),
        2,
    )
    .await?;
    let url = format!("{}/", env.gateway);
    let host = host(&ns.name, "web");
    serin_e2e::wait_route_serves(&url, &host, &["v1"], Duration::from_secs(30)).await?;
    release(&client, &app.version("v2")).await?;
    let api = canaries(&client, &ns.name);
    // Right after a confirmed write: the next is an interval away.
    wait_for("weight 20 confirmed", Duration::from_secs(60), || async {
        let s = status(&api, "web").await?;
        Ok(
            (phase(&s) == "Progressing" && weight(&s) == 20 && s["routerMessage"].is_null())
                .then_some(()),
        )
    })
    .await
    .with_context(|| op.log_tail(40))?;
    let took = faults::restart(&env, Component::Traefik, Duration::from_millis(500)).await?;
    eprintln!("traefik back in {:.1}s", took.as_secs_f64());
    // Serving again (both versions, at weight 20) before the load that must not fail.
    serin_e2e::wait_route_serves(&url, &host, &["v1", "v2"], Duration::from_secs(30)).await?;
    let bg = Steady::start(&url, &host, 20.0, Duration::from_secs(120));
    let mut seen = Vec::new();
    let done = loop {
        let s = status(&api, "web").await?;
        if phase(&s) == "Progressing" && seen.last() != Some(&weight(&s)) {
            seen.push(weight(&s));
        }
        if let Some(m) = s["routerMessage"].as_str() {
            bail!("a route write after the restart was not confirmed: {m}\n{s}");
        }
        if matches!(phase(&s), "Succeeded" | "Failed") {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(phase(&done), "Succeeded", "{done}\n{}", op.log_tail(40));
    assert!(
        seen.contains(&50) && seen.contains(&80),
        "the steps after the restart were taken: {seen:?}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = bg.finish().await?;
    load::assert_not_dark("through the restarted Traefik", &report, Duration::ZERO);
    assert_eq!(report.errors, 0, "{:?}", report.sample_errors);
    let after = load::run(&LoadSpec::new(&url).host(&host).requests(100, 100.0)).await?;
    assert_eq!(after.count("v2"), after.responses, "promoted: {after:?}");
    drop(op);
    ns.cleanup().await?;
    Ok(())
}
