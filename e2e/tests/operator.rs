//! End-to-end tests of the operator on the local cluster: real API server, real pods
//! (processes), real Traefik carrying the traffic and real Prometheus metrics. The
//! operator runs as its own ServiceAccount with the RBAC from `kustomize/rbac`.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Service};
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject};
use serde_json::{Value, json};
use serin_e2e::canary::{
    canaries, phase, pod_versions, release, status, wait_target_at_zero, weight,
};
use serin_e2e::load::{self, LoadSpec};
use serin_e2e::operator::Operator;
use serin_e2e::{ClusterEnv, SampleApp, TestNamespace, apply_json, wait_for};

/// How long a route or pod switch may leave requests unanswered.
const SWITCH_WINDOW: Duration = Duration::from_secs(3);

/// Waits for `want`, recording every phase seen on the way; fails early on a
/// different terminal phase.
async fn wait_phase(
    api: &Api<DynamicObject>,
    name: &str,
    want: &str,
    timeout: Duration,
    op: &Operator,
    seen: &mut BTreeSet<String>,
) -> Result<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = status(api, name).await?;
        let p = phase(&s).to_string();
        seen.insert(p.clone());
        if p == want {
            return Ok(s);
        }
        let terminal = ["Succeeded", "Failed"];
        if terminal.contains(&p.as_str())
            && terminal.contains(&want)
            && seen.contains("Progressing")
        {
            bail!(
                "canary {name} reached {p}, wanted {want}; status {s}\noperator log:\n{}",
                op.log_tail(40)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "canary {name}: no {want} within {timeout:?}; last status {s}\noperator log:\n{}",
                op.log_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn replicas(client: &Client, ns: &str, name: &str) -> Result<i32> {
    let d = Api::<Deployment>::namespaced(client.clone(), ns)
        .get(name)
        .await?;
    Ok(d.spec.and_then(|s| s.replicas).unwrap_or(1))
}

async fn events_for(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<Vec<(String, String, String)>> {
    let evs = Api::<Event>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await?;
    Ok(evs
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default(),
            )
        })
        .collect())
}

/// Blue/green with the `kubernetes` provider: a good revision is promoted (the apex
/// Service switches to the new pods, then back to the updated primary), a crashing
/// one fails at the progress deadline with the primary untouched and serving.
#[tokio::test]
async fn kubernetes_blue_green_promotes_good_and_rolls_back_crashing() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("kubernetes_blue_green") else {
        return Ok(());
    };
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-bg").await?;
    let op = Operator::start(&env, &ns.name, &["--provider", "kubernetes"]).await?;
    let mut app = SampleApp::new(&ns.name, "app", &env.sample_app_command()).replicas(2);
    app.deploy(&client).await?;
    apply_json(
        &client,
        json!({
            "apiVersion": "serin.dev/v1beta1", "kind": "Canary",
            "metadata": {"name": "app", "namespace": ns.name},
            "spec": {
                "provider": "kubernetes",
                "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "app"},
                "progressDeadlineSeconds": 20,
                "service": {"port": 80, "targetPort": 8080},
                "analysis": {"interval": "3s", "threshold": 1, "iterations": 2}
            }
        }),
    )
    .await?;
    let api = canaries(&client, &ns.name);
    let mut seen = BTreeSet::new();
    wait_phase(
        &api,
        "app",
        "Initialized",
        Duration::from_secs(60),
        &op,
        &mut seen,
    )
    .await?;
    // The target goes to zero once traffic has drained off it (a few seconds).
    wait_target_at_zero(&client, &ns.name, "app").await?;
    assert_eq!(
        pod_versions(&client, &ns.name, "app=app-primary").await?,
        ["v1", "v1"]
    );
    let svc = Api::<Service>::namespaced(client.clone(), &ns.name)
        .get("app")
        .await?;
    assert_eq!(
        svc.spec
            .and_then(|s| s.selector)
            .and_then(|s| s.get("app").cloned())
            .as_deref(),
        Some("app-primary")
    );

    app = app.version("v2");
    release(&client, &app).await?;
    // Watch the apex selector while promoting: blue/green switches it to the canary.
    let services = Api::<Service>::namespaced(client.clone(), &ns.name);
    let mut apex_targets = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let done = loop {
        let s = status(&api, "app").await?;
        seen.insert(phase(&s).to_string());
        if let Some(sel) = services.get("app").await?.spec.and_then(|s| s.selector) {
            apex_targets.extend(sel.get("app").cloned());
        }
        if phase(&s) == "Succeeded" {
            break s;
        }
        if Instant::now() > deadline {
            bail!("no promotion: {s}\n{}", op.log_tail(40));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        seen.contains("Progressing") && seen.contains("Promoting"),
        "{seen:?}"
    );
    assert!(
        apex_targets.contains("app") && apex_targets.contains("app-primary"),
        "apex should have switched to the canary pods and back: {apex_targets:?}"
    );
    assert_eq!(done["lastPromotedSpec"], done["lastAppliedSpec"]);
    wait_for("primary on v2", Duration::from_secs(30), || async {
        let v = pod_versions(&client, &ns.name, "app=app-primary").await?;
        Ok((v == ["v2", "v2"]).then_some(()))
    })
    .await?;
    wait_target_at_zero(&client, &ns.name, "app").await?;

    app = app.version("v3").env("CRASH", "1");
    seen.clear();
    release(&client, &app).await?;
    let started = Instant::now();
    let failed = wait_phase(
        &api,
        "app",
        "Failed",
        Duration::from_secs(90),
        &op,
        &mut seen,
    )
    .await?;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(20),
        "failed after {took:?}, before the 20s deadline"
    );
    assert_eq!(
        pod_versions(&client, &ns.name, "app=app-primary").await?,
        ["v2", "v2"],
        "primary untouched"
    );
    wait_target_at_zero(&client, &ns.name, "app").await?;
    assert_eq!(weight(&failed), 0);
    let evs = events_for(&client, &ns.name, "app").await?;
    assert!(
        evs.iter()
            .any(|(t, r, m)| t == "Warning" && r == "Failed" && m.contains("not ready within 20s")),
        "{evs:?}"
    );
    let metrics = op.metrics().await?;
    let line = format!(
        "serin_canary_status{{name=\"app\",namespace=\"{}\"}} 2",
        ns.name
    );
    assert!(metrics.contains(&line), "{line} not in:\n{metrics}");
    drop(op);
    ns.cleanup().await?;
    Ok(())
}

/// Starts steady load straight at the ready pods of `selector` once all `count` of
/// them answer with `version` (the setup: no data plane in front of a
/// `kubernetes`-provider canary). The tasks outlast every wait of the test.
async fn load_pods(
    client: &Client,
    ns: &str,
    selector: &str,
    version: &str,
    count: usize,
) -> Result<Vec<tokio::task::JoinHandle<Result<load::LoadReport>>>> {
    wait_for(
        &format!("{count} pods of {selector} on {version}"),
        Duration::from_secs(60),
        || async {
            let v = pod_versions(client, ns, selector).await?;
            Ok((v.len() == count && v.iter().all(|x| x == version)).then_some(()))
        },
    )
    .await?;
    let mut loads = Vec::new();
    for pod in serin_e2e::list_pods(client, ns, selector).await? {
        let Some(ip) = pod.status.and_then(|s| s.pod_ip) else {
            continue;
        };
        let spec = LoadSpec::new(format!("http://{ip}:8080/"))
            .rate(15.0)
            .duration(Duration::from_secs(200));
        loads.push(tokio::spawn(async move { load::run(&spec).await }));
    }
    Ok(loads)
}

/// The apex Service's `app` selector.
async fn apex_target(services: &Api<Service>, name: &str) -> Result<String> {
    Ok(services
        .get(name)
        .await?
        .spec
        .and_then(|s| s.selector)
        .and_then(|s| s.get("app").cloned())
        .unwrap_or_default())
}

/// Issue #16's blue/green, as a new user writes it: the `kubernetes` provider, a
/// named apex Service with port discovery, the built-in success rate and duration
/// read from the app's own histogram (which this cluster's Prometheus labels
/// `namespace`/`pod`, not Flagger's `kubernetes_*`), and a confirm-rollout gate on
/// `serin tester`. A good version is promoted with the apex on the primary for the
/// whole analysis; an erroring one is rolled back on the success rate, well before
/// the progress deadline.
#[tokio::test]
async fn kubernetes_builtins_promote_blue_green_and_roll_back_errors() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("kubernetes_builtins") else {
        return Ok(());
    };
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-bgm").await?;
    let tester = support::serve_tester().await?;
    let op = Operator::start(&env, &ns.name, &["--provider", "kubernetes"]).await?;
    let mut app = SampleApp::new(&ns.name, "podinfo", &env.sample_app_command()).replicas(2);
    app.deploy(&client).await?;
    apply_json(
        &client,
        json!({
            "apiVersion": "serin.dev/v1beta1", "kind": "Canary",
            "metadata": {"name": "podinfo", "namespace": ns.name},
            "spec": {
                "provider": "kubernetes",
                "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo"},
                "progressDeadlineSeconds": 60,
                "service": {
                    "name": "podinfo-svc", "port": 80, "targetPort": 8080,
                    "portDiscovery": true
                },
                "analysis": {
                    "interval": "10s", "threshold": 2, "iterations": 5,
                    "metrics": [
                        {"name": "request-success-rate", "interval": "30s",
                         "thresholdRange": {"min": 99}},
                        {"name": "request-duration", "interval": "30s",
                         "thresholdRange": {"max": 500}}
                    ],
                    "webhooks": [{
                        "name": "approve", "type": "confirm-rollout",
                        "url": format!("http://{tester}/gate/approve")
                    }]
                }
            }
        }),
    )
    .await?;
    let api = canaries(&client, &ns.name);
    let services = Api::<Service>::namespaced(client.clone(), &ns.name);
    let mut seen = BTreeSet::new();
    wait_phase(
        &api,
        "podinfo",
        "Initialized",
        Duration::from_secs(60),
        &op,
        &mut seen,
    )
    .await?;
    wait_target_at_zero(&client, &ns.name, "podinfo").await?;

    app = app.version("v2");
    release(&client, &app).await?;
    let loads = load_pods(&client, &ns.name, "app=podinfo", "v2", 2).await?;
    let mut passed = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(150);
    let done = loop {
        // The apex is read before the status: a reconcile switches the apex before it
        // writes status, so only a status still two iterations from the end proves
        // the apex was read during the analysis, not at its last step.
        let target = apex_target(&services, "podinfo-svc").await?;
        let s = status(&api, "podinfo").await?;
        let p = phase(&s).to_string();
        seen.insert(p.clone());
        if p == "Progressing" && s["iterations"].as_u64().unwrap_or(0) + 1 < 5 {
            assert_eq!(
                target, "podinfo-primary",
                "the apex serves the primary during the analysis: {s}"
            );
        }
        for c in s["lastAnalysis"].as_array().into_iter().flatten() {
            if c["verdict"] == "Pass" && c["value"].is_number() {
                passed.extend(c["name"].as_str().map(String::from));
            }
        }
        if p == "Succeeded" {
            break s;
        }
        if p == "Failed" || Instant::now() > deadline {
            bail!("no promotion: {s}\n{}", op.log_tail(40));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(seen.contains("Progressing"), "{seen:?}");
    assert!(
        passed.contains("request-success-rate") && passed.contains("request-duration"),
        "both built-ins measured real values and passed: {passed:?}; {done}"
    );
    assert_eq!(done["failedChecks"].as_u64().unwrap_or(0), 0, "{done}");
    // After the promotion the apex selects the primary, now on the new version.
    wait_for("apex on v2", Duration::from_secs(30), || async {
        let target = apex_target(&services, "podinfo-svc").await?;
        let v = pod_versions(&client, &ns.name, &format!("app={target}")).await?;
        Ok((v == ["v2", "v2"]).then_some(()))
    })
    .await?;
    for l in loads {
        l.abort();
    }
    wait_target_at_zero(&client, &ns.name, "podinfo").await?;

    // The same Canary, a version answering half its requests with 500.
    app = app.version("v3").env("ERROR_RATE", "0.5");
    seen.clear();
    release(&client, &app).await?;
    let started = Instant::now();
    let loads = load_pods(&client, &ns.name, "app=podinfo", "v3", 2).await?;
    let failed = wait_phase(
        &api,
        "podinfo",
        "Failed",
        Duration::from_secs(120),
        &op,
        &mut seen,
    )
    .await?;
    let took = started.elapsed();
    for l in loads {
        l.abort();
    }
    assert!(
        took < Duration::from_secs(60),
        "rolled back after {took:?}: on the deadline, not on the metric"
    );
    let rate = failed["lastAnalysis"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == "request-success-rate")
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(rate["verdict"], "Fail", "{failed}");
    let value = rate["value"].as_f64().unwrap_or(100.0);
    assert!(value < 90.0, "success rate of a 50% error version: {rate}");
    let evs = events_for(&client, &ns.name, "podinfo").await?;
    assert!(
        evs.iter()
            .any(|(_, _, m)| m.contains("failed checks threshold reached")),
        "{evs:?}"
    );
    assert!(
        !evs.iter()
            .any(|(_, _, m)| m.contains("no conclusive analysis")),
        "{evs:?}"
    );
    assert_eq!(
        pod_versions(&client, &ns.name, "app=podinfo-primary").await?,
        ["v2", "v2"],
        "primary untouched"
    );
    assert_eq!(
        apex_target(&services, "podinfo-svc").await?,
        "podinfo-primary"
    );
    // The log goes to a file, as `kubectl logs` sees it: plain text, no colour codes.
    let log = std::fs::read_to_string(&op.log)?;
    assert!(log.contains("INFO"), "the operator logged: {log}");
    assert!(
        !log.contains('\u{1b}'),
        "escape sequences in the operator log: {}",
        op.log_tail(5)
    );
    drop(op);
    ns.cleanup().await?;
    Ok(())
}

/// The failure, on purpose: the operator pinned to Flagger's label names
/// while this cluster's Prometheus labels pods `namespace`/`pod`. The check holds,
/// and the hold (status and Event) says which series exist and which labels they
/// have instead, with the time left before the deadline.
#[tokio::test]
async fn no_data_under_other_labels_names_what_exists() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("no_data_labels") else {
        return Ok(());
    };
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-nodata").await?;
    let op = Operator::start(
        &env,
        &ns.name,
        &["--provider", "kubernetes", "--metrics-labels", "flagger"],
    )
    .await?;
    let mut app = SampleApp::new(&ns.name, "podinfo", &env.sample_app_command()).replicas(2);
    app.deploy(&client).await?;
    apply_json(
        &client,
        json!({
            "apiVersion": "serin.dev/v1beta1", "kind": "Canary",
            "metadata": {"name": "podinfo", "namespace": ns.name},
            "spec": {
                "provider": "kubernetes",
                "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo"},
                "progressDeadlineSeconds": 120,
                "service": {"port": 80, "targetPort": 8080},
                "analysis": {
                    "interval": "5s", "threshold": 2, "iterations": 3,
                    "metrics": [{"name": "request-success-rate", "interval": "30s",
                                 "thresholdRange": {"min": 99}}]
                }
            }
        }),
    )
    .await?;
    let api = canaries(&client, &ns.name);
    let mut seen = BTreeSet::new();
    wait_phase(
        &api,
        "podinfo",
        "Initialized",
        Duration::from_secs(60),
        &op,
        &mut seen,
    )
    .await?;
    app = app.version("v2");
    release(&client, &app).await?;
    let loads = load_pods(&client, &ns.name, "app=podinfo", "v2", 2).await?;
    let wanted = format!(
        // Primary and canary pods: how many series depends on timing, not the labels.
        " series in namespace {}, none with kubernetes_namespace, kubernetes_pod_name; its labels are: ",
        ns.name
    );
    let held = wait_for("a hold naming the labels", Duration::from_secs(60), || {
        let (api, wanted) = (api.clone(), wanted.clone());
        async move {
            let s = status(&api, "podinfo").await?;
            let reason = s["holdReason"].as_str().unwrap_or("").to_string();
            Ok(reason.contains(&wanted).then_some(reason))
        }
    })
    .await;
    for l in loads {
        l.abort();
    }
    let held = held.map_err(|e| anyhow::anyhow!("{e}\n{}", op.log_tail(20)))?;
    for needle in [
        "analysis inconclusive: ",
        "http_request_duration_seconds_count has ",
        "s left before the progress deadline (120s); request-success-rate",
        "namespace, pod",
        "see --metrics-labels (built-ins select on the flagger label convention)",
        "Query: (sum(rate(http_request_duration_seconds_count{kubernetes_namespace=",
    ] {
        assert!(held.contains(needle), "{needle:?} not in {held:?}");
    }
    // Events are published after the status write that holds.
    let event = wait_for(
        "an Inconclusive Event naming the labels",
        Duration::from_secs(15),
        || {
            let (client, ns, wanted) = (client.clone(), ns.name.clone(), wanted.clone());
            async move {
                let evs = events_for(&client, &ns, "podinfo").await?;
                Ok(evs
                    .into_iter()
                    .find(|(_, r, m)| r == "Inconclusive" && m.contains(&wanted)))
            }
        },
    )
    .await;
    assert!(
        event.is_ok(),
        "{:?}",
        events_for(&client, &ns.name, "podinfo").await?
    );
    drop(op);
    ns.cleanup().await?;
    Ok(())
}

/// Share of `report`'s answers that came from `version`, in percent.
fn share(report: &load::LoadReport, version: &str) -> f64 {
    100.0 * report.version_share(version)
}

/// Weighted canary through the Gateway API on Traefik: at every step the share of
/// real requests answered by the canary is within ±5 points of its weight; a good
/// release is promoted on Traefik's real success-rate metrics, a release answering
/// 30% errors is rolled back and all traffic returns to the primary.
#[tokio::test]
async fn gateway_api_canary_shifts_real_traffic_and_rolls_back_on_errors() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("gateway_api_canary") else {
        return Ok(());
    };
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-gw").await?;
    let op = Operator::start(&env, &ns.name, &["--provider", "gatewayapi:v1"]).await?;
    let host = format!("{}.e2e.local", ns.name);
    let mut app = SampleApp::new(&ns.name, "web", &env.sample_app_command()).replicas(2);
    app.deploy(&client).await?;
    apply_json(
        &client,
        json!({
            "apiVersion": "serin.dev/v1beta1", "kind": "Canary",
            "metadata": {"name": "web", "namespace": ns.name},
            "spec": {
                "provider": "gatewayapi:v1",
                "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "progressDeadlineSeconds": 60,
                "service": {
                    "port": 8080,
                    "hosts": [host],
                    "gatewayRefs": [{"name": env.gateway_name, "namespace": env.gateway_namespace}]
                },
                "analysis": {
                    "interval": "12s", "threshold": 1, "stepWeights": [20, 50],
                    "metrics": [{
                        "name": "request-success-rate",
                        "interval": "10s",
                        "thresholdRange": {"min": 95}
                    }]
                }
            }
        }),
    )
    .await?;
    let api = canaries(&client, &ns.name);
    let mut seen = BTreeSet::new();
    wait_phase(
        &api,
        "web",
        "Initialized",
        Duration::from_secs(60),
        &op,
        &mut seen,
    )
    .await?;
    let url = format!("{}/", env.gateway);
    serin_e2e::wait_route_serves(&url, &host, &["v1"], Duration::from_secs(20)).await?;

    // Background load so the success-rate metric has data at every step.
    let bg = load::Steady::start(&url, &host, 20.0, Duration::from_secs(320));

    app = app.version("v2");
    release(&client, &app).await?;
    let mut checked = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let s = status(&api, "web").await?;
        let w = weight(&s);
        seen.insert(phase(&s).to_string());
        if phase(&s) == "Succeeded" {
            break;
        }
        if phase(&s) == "Failed" {
            bail!("good release failed: {s}\n{}", op.log_tail(40));
        }
        if phase(&s) == "Progressing" && w > 0 && !checked.contains(&w) {
            // Traefik picks up route changes within ~2 s.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let report = load::run(&LoadSpec::new(&url).host(&host).requests(500, 250.0)).await?;
            let after = status(&api, "web").await?;
            if weight(&after) == w && phase(&after) == "Progressing" {
                let got = share(&report, "v2");
                assert!(
                    (got - w as f64).abs() <= 5.0,
                    "at weight {w} the canary answered {got:.1}% of {} requests",
                    report.responses
                );
                checked.insert(w);
            }
        }
        if Instant::now() > deadline {
            bail!("no promotion in time: {s}\n{}", op.log_tail(40));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(checked, BTreeSet::from([20, 50]), "both steps measured");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = load::run(&LoadSpec::new(&url).host(&host).requests(200, 200.0)).await?;
    assert_eq!(
        after.count("v2"),
        after.responses,
        "all traffic on the promoted primary"
    );

    app = app.version("v3").env("ERROR_RATE", "0.3");
    seen.clear();
    release(&client, &app).await?;
    let failed = wait_phase(
        &api,
        "web",
        "Failed",
        Duration::from_secs(120),
        &op,
        &mut seen,
    )
    .await?;
    let checks = failed["lastAnalysis"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        checks
            .iter()
            .any(|c| c["name"] == "request-success-rate" && c["verdict"] == "Fail"),
        "rolled back for the success rate: {failed}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let back = load::run(&LoadSpec::new(&url).host(&host).requests(200, 200.0)).await?;
    assert_eq!(
        back.count("v2"),
        back.responses,
        "all traffic back on the primary: {back:?}"
    );
    assert_eq!(
        back.responses, 200,
        "no request lost while traffic moved back: {back:?}"
    );
    // The app-dark guard: no 404/502/503 or missing answer outside one switch window.
    load::assert_not_dark("steady load", &bg.finish().await?, SWITCH_WINDOW);
    drop(op);
    ns.cleanup().await?;
    Ok(())
}

/// Broken Canaries are reported where users look (Ready=False with a reason, and an
/// Event), create nothing, and do not stop the operator from reconciling others.
#[tokio::test]
async fn bad_input_is_reported_and_other_canaries_keep_going() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("bad_input") else {
        return Ok(());
    };
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-bad").await?;
    let op = Operator::start(&env, &ns.name, &["--provider", "kubernetes"]).await?;
    for app in ["good", "other"] {
        SampleApp::new(&ns.name, app, &env.sample_app_command())
            .deploy(&client)
            .await?;
    }
    let canary = |name: &str, target: &str, analysis: Value, provider: &str| {
        json!({
            "apiVersion": "serin.dev/v1beta1", "kind": "Canary",
            "metadata": {"name": name, "namespace": ns.name},
            "spec": {
                "provider": provider,
                "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
                "service": {"port": 80, "targetPort": 8080},
                "analysis": analysis
            }
        })
    };
    let bg = json!({"interval": "5s", "iterations": 1});
    let cases = [
        (
            "ghost",
            canary("ghost", "missing", bg.clone(), "kubernetes"),
            "TargetNotFound",
            "not found",
        ),
        (
            "badint",
            canary(
                "badint",
                "good",
                json!({"interval": "soon", "iterations": 1}),
                "kubernetes",
            ),
            "InvalidSpec",
            "spec.analysis.interval",
        ),
        (
            "weights",
            canary(
                "weights",
                "good",
                json!({"interval": "5s", "stepWeights": [50, 20]}),
                "istio",
            ),
            "InvalidSpec",
            "must increase",
        ),
        (
            "envoy",
            canary("envoy", "good", bg.clone(), "envoy"),
            "InvalidSpec",
            "\"envoy\" is not supported",
        ),
        (
            "notemplate",
            canary(
                "notemplate",
                "other",
                json!({"interval": "5s", "iterations": 1,
                       "metrics": [{"name": "x", "templateRef": {"name": "nope"}, "thresholdRange": {"min": 1}}]}),
                "kubernetes",
            ),
            "MetricTemplateNotFound",
            "MetricTemplate",
        ),
    ];
    for (_, obj, _, _) in &cases {
        apply_json(&client, obj.clone()).await?;
    }
    apply_json(&client, canary("good", "good", bg.clone(), "kubernetes")).await?;
    let api = canaries(&client, &ns.name);
    let mut seen = BTreeSet::new();
    wait_phase(
        &api,
        "good",
        "Initialized",
        Duration::from_secs(60),
        &op,
        &mut seen,
    )
    .await?;

    // A second Canary for the same target is refused; the first keeps it.
    apply_json(&client, canary("dup", "good", bg, "kubernetes")).await?;
    let all = cases
        .iter()
        .map(|(n, _, r, m)| (n.to_string(), r.to_string(), m.to_string()))
        .chain([(
            "dup".to_string(),
            "DuplicateTarget".to_string(),
            "already managed by Canary good".to_string(),
        )]);
    for (name, reason, needle) in all {
        let cond = wait_for(
            &format!("{name} Ready=False"),
            Duration::from_secs(30),
            || {
                let api = api.clone();
                let name = name.clone();
                async move {
                    let s = status(&api, &name).await?;
                    Ok(s["conditions"]
                        .as_array()
                        .and_then(|cs| {
                            cs.iter()
                                .find(|c| c["type"] == "Ready" && c["status"] == "False")
                        })
                        .cloned())
                }
            },
        )
        .await?;
        assert_eq!(cond["reason"], reason.as_str(), "{name}: {cond}");
        let msg = cond["message"].as_str().unwrap_or("");
        assert!(
            msg.contains(&needle),
            "{name}: {msg:?} should contain {needle:?}"
        );
        assert!(!msg.contains('\n'), "one line");
        let evs = events_for(&client, &ns.name, &name).await?;
        assert!(
            evs.iter().any(|(t, r, _)| t == "Warning" && r == &reason),
            "{name}: {evs:?}"
        );
    }
    // Nothing was created for the broken ones; the user's Deployment is untouched
    // apart from being scaled down by its own (good) Canary.
    let svcs = Api::<Service>::namespaced(client.clone(), &ns.name)
        .list(&Default::default())
        .await?;
    let names: BTreeSet<String> = svcs
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect();
    // The MetricTemplate check comes before any object is generated: "other" has only
    // the Service the test itself created.
    let want = ["good", "good-canary", "good-primary", "other"];
    assert_eq!(
        names,
        want.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>()
    );
    assert_eq!(
        replicas(&client, &ns.name, "other").await?,
        1,
        "a broken Canary scales nothing"
    );
    assert!(
        Api::<Deployment>::namespaced(client.clone(), &ns.name)
            .get_opt("missing-primary")
            .await?
            .is_none()
    );
    // The good Canary still follows a new revision.
    let mut app = SampleApp::new(&ns.name, "good", &env.sample_app_command()).version("v2");
    app = app.replicas(1);
    release(&client, &app).await?;
    wait_phase(
        &api,
        "good",
        "Succeeded",
        Duration::from_secs(60),
        &op,
        &mut seen,
    )
    .await?;
    let _ = api.delete("ghost", &DeleteParams::default()).await;
    drop(op);
    ns.cleanup().await?;
    Ok(())
}

/// With leader election on, one of two replicas reconciles and the other stands by
/// (not ready); when the leader dies without releasing the Lease, the standby takes
/// over once the Lease expires and carries on with the next release.
#[tokio::test]
async fn leader_election_fails_over_to_the_standby() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("leader_election") else {
        return Ok(());
    };
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-lease").await?;
    // The Role for Leases is in the operator's own namespace.
    let args = [
        "--provider",
        "kubernetes",
        "--leader-elect=true",
        "--lease-namespace",
        "serin-system",
    ];
    let leader = Operator::start(&env, &ns.name, &args).await?;
    let mut standby = Operator::spawn(&env, &ns.name, &args).await?;
    let mut app = SampleApp::new(&ns.name, "app", &env.sample_app_command());
    app.deploy(&client).await?;
    apply_json(
        &client,
        json!({
            "apiVersion": "serin.dev/v1beta1", "kind": "Canary",
            "metadata": {"name": "app", "namespace": ns.name},
            "spec": {
                "provider": "kubernetes",
                "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "app"},
                "service": {"port": 80, "targetPort": 8080},
                "analysis": {"interval": "3s", "iterations": 1}
            }
        }),
    )
    .await?;
    let api = canaries(&client, &ns.name);
    let mut seen = BTreeSet::new();
    wait_phase(
        &api,
        "app",
        "Initialized",
        Duration::from_secs(60),
        &leader,
        &mut seen,
    )
    .await?;
    assert!(
        !standby.is_ready().await,
        "the standby must not run the controller"
    );
    let lease = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(
        client.clone(),
        "serin-system",
    )
    .get("serin-leader")
    .await?;
    let holder = lease
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default();
    assert!(!holder.is_empty(), "the Lease names its holder");

    drop(leader);
    let started = Instant::now();
    standby.wait_ready(Duration::from_secs(60)).await?;
    println!("standby took over after {:?}", started.elapsed());
    app = app.version("v2");
    release(&client, &app).await?;
    seen.clear();
    wait_phase(
        &api,
        "app",
        "Succeeded",
        Duration::from_secs(60),
        &standby,
        &mut seen,
    )
    .await?;
    drop(standby);
    ns.cleanup().await?;
    Ok(())
}
