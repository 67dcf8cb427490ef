//! Issue #11 item 1 on the local cluster: deleting a Canary never leaves the app at
//! zero. By default the finalizer gives the target its replicas and the traffic back
//! before the primary goes, under steady load through Traefik; `revertOnDeletion:
//! false` keeps Flagger's behaviour (no finalizer, the target stays at 0).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Service};
use kube::Client;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams,
};
use serde_json::{Value, json};
use serin_e2e::canary::{
    canaries, deployment_replicas, release, status, wait_phase, wait_target_at_zero,
};
use serin_e2e::load::{self, LoadReport, Steady};
use serin_e2e::operator::Operator;
use serin_e2e::{ClusterEnv, SampleApp, TestNamespace, apply_json, list_pods, pod_ready, wait_for};

const FINALIZER: &str = "serin.dev/finalizer";

fn http_routes(client: &Client, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        "httproutes",
    );
    Api::namespaced_with(client.clone(), ns, &ar)
}

fn finalizers(c: &DynamicObject) -> Vec<String> {
    c.metadata.finalizers.clone().unwrap_or_default()
}

/// Waits until the primary Deployment and its pods are gone (the garbage collector
/// follows the Canary's owner reference once the finalizer is dropped).
async fn wait_primary_gone(client: &Client, ns: &str, primary: &str) -> Result<()> {
    let deps = Api::<Deployment>::namespaced(client.clone(), ns);
    wait_for(
        &format!("{primary} and its pods gone"),
        Duration::from_secs(60),
        || {
            let deps = deps.clone();
            async move {
                let pods = list_pods(client, ns, &format!("app={primary}")).await?;
                Ok((deps.get_opt(primary).await?.is_none() && pods.is_empty()).then_some(()))
            }
        },
    )
    .await
}

/// The app as it was before Serin (Deployment `web`, its Service and an HTTPRoute of
/// the user's on the gateway), then a Canary for it on that route with `analysis`.
async fn routed_app(
    env: &ClusterEnv,
    client: &Client,
    ns: &str,
    host: &str,
    analysis: Value,
) -> Result<SampleApp> {
    let app = SampleApp::new(ns, "web", &env.sample_app_command()).replicas(2);
    app.deploy(client).await?;
    apply_json(
        client,
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "web-route", "namespace": ns},
            "spec": {
                "parentRefs": [{"name": env.gateway_name, "namespace": env.gateway_namespace}],
                "hostnames": [host],
                "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                           "backendRefs": [{"name": "web", "port": 8080}]}]
            }
        }),
    )
    .await?;
    apply_json(
        client,
        json!({
            "apiVersion": "serin.dev/v1beta1", "kind": "Canary",
            "metadata": {"name": "web", "namespace": ns},
            "spec": {
                "provider": "gatewayapi:v1",
                "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "routeRef": {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                             "name": "web-route"},
                "progressDeadlineSeconds": 60,
                "service": {"port": 8080},
                "analysis": analysis
            }
        }),
    )
    .await?;
    Ok(app)
}

/// Every request of `report` answered 200 by the app.
fn assert_no_failed_request(what: &str, report: &LoadReport) {
    assert!(
        report.responses > 100,
        "{what}: load ran through: {report:?}"
    );
    assert_eq!(
        report.errors, 0,
        "{what}: no request unanswered: {:?}",
        report.sample_errors
    );
    assert_eq!(
        report.by_status.keys().copied().collect::<Vec<_>>(),
        vec![200],
        "{what}: every request answered 200: {:?} {:?}",
        report.by_status,
        report.dark_at
    );
    load::assert_not_dark(what, report, Duration::ZERO);
}

/// The user's route sends everything to the user's Service, which selects the target.
async fn assert_back_on_the_target(client: &Client, ns: &str) -> Result<()> {
    let svc = Api::<Service>::namespaced(client.clone(), ns)
        .get("web")
        .await
        .context("the user's Service is kept")?;
    assert_eq!(
        apex_selector(svc).as_deref(),
        Some("web"),
        "the Service selects the target's pods"
    );
    let route = http_routes(client, ns)
        .get("web-route")
        .await
        .context("the user's route is kept")?;
    let backends: Vec<Value> = route.data["spec"]["rules"][0]["backendRefs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let names: Vec<&str> = backends.iter().filter_map(|b| b["name"].as_str()).collect();
    assert_eq!(
        names,
        ["web"],
        "the route sends everything to the user's Service"
    );
    Ok(())
}

/// Asks through the gateway: every answer from a target pod running `version`.
async fn assert_target_answers(url: &str, host: &str, version: &str) -> Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    for _ in 0..10 {
        let body: Value = http
            .get(url)
            .header("Host", host)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let pod = body["pod"].as_str().unwrap_or_default();
        if !pod.starts_with("web-") || pod.starts_with("web-primary-") || body["version"] != version
        {
            bail!("answered by {pod}, not a target pod at {version}: {body}");
        }
    }
    Ok(())
}

/// The default: a Canary without `revertOnDeletion` is deleted while steady load runs
/// through Traefik on the user's own HTTPRoute and Service. Not one request fails: the
/// target is scaled back up and ready before the traffic moves to it, the primary goes
/// only after the drain, and afterwards the user's Deployment serves at its replicas
/// behind the user's route, which Serin leaves pointing at the user's Service.
#[tokio::test]
async fn deleting_a_canary_hands_the_app_back_without_one_failed_request() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("deletion_default") else {
        return Ok(());
    };
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-delete").await?;
    let op = Operator::start(&env, &ns.name, &["--provider", "gatewayapi:v1"]).await?;
    let host = format!("{}.e2e.local", ns.name);
    let url = format!("{}/", env.gateway);
    routed_app(
        &env,
        &client,
        &ns.name,
        &host,
        json!({"interval": "5s", "threshold": 1, "iterations": 2}),
    )
    .await?;
    let api = canaries(&client, &ns.name);
    wait_phase(&api, "web", "Initialized", Duration::from_secs(60), &op).await?;
    wait_target_at_zero(&client, &ns.name, "web").await?;
    serin_e2e::wait_route_serves(&url, &host, &["v1"], Duration::from_secs(30)).await?;
    let c = api.get("web").await?;
    assert!(
        finalizers(&c).iter().any(|f| f == FINALIZER),
        "revertOnDeletion unset: the finalizer is on: {:?}",
        finalizers(&c)
    );
    // Only the primary's pods serve now: the app depends on the hand-back.
    wait_for("target pods gone", Duration::from_secs(30), || async {
        Ok(list_pods(&client, &ns.name, "app=web")
            .await?
            .is_empty()
            .then_some(()))
    })
    .await?;

    let steady = Steady::start(&url, &host, 40.0, Duration::from_secs(180));
    // Some load on the primary before the delete, so the report covers both sides.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let deleted_at = Instant::now();
    api.delete("web", &DeleteParams::default()).await?;
    // While the target comes up the Canary waits, finalizer kept.
    let saw_terminating = std::cell::Cell::new(false);
    wait_for("canary gone", Duration::from_secs(90), || {
        let api = api.clone();
        let saw = &saw_terminating;
        async move {
            match api.get_opt("web").await? {
                None => Ok(Some(())),
                Some(c) => {
                    if c.data["status"]["phase"] == "Terminating" {
                        saw.set(true);
                    }
                    Ok(None)
                }
            }
        }
    })
    .await
    .with_context(|| op.log_tail(60))?;
    let took = deleted_at.elapsed();
    wait_primary_gone(&client, &ns.name, "web-primary").await?;
    // Load keeps running a little after the primary's pods are gone: a data plane
    // still sending to them would show here.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let report = steady.finish().await?;
    eprintln!(
        "delete took {took:?}; load: sent {} answered {} by status {:?} by version {:?}",
        report.sent, report.responses, report.by_status, report.by_version
    );
    assert_no_failed_request("steady load through the delete", &report);
    assert_eq!(report.count("v1"), report.responses, "{report:?}");
    assert!(
        saw_terminating.get(),
        "the deletion was staged (Terminating seen)"
    );

    // The user's Deployment serves at its replicas, behind the user's Service and route.
    assert_eq!(
        deployment_replicas(&client, &ns.name, "web").await?,
        Some(2)
    );
    serin_e2e::wait_deployment_available(&client, &ns.name, "web", 2, Duration::from_secs(30))
        .await?;
    let pods = list_pods(&client, &ns.name, "app=web").await?;
    assert_eq!(
        pods.iter().filter(|p| pod_ready(p)).count(),
        2,
        "target pods ready"
    );
    assert_back_on_the_target(&client, &ns.name).await?;
    assert_target_answers(&url, &host, "v1").await?;
    drop(op);
    ns.cleanup().await?;
    Ok(())
}

/// `revertOnDeletion: false` is the opt-out to Flagger's documented behaviour: no
/// finalizer, so the Canary goes at once, the target stays at 0 replicas and the
/// primary is garbage-collected with it.
#[tokio::test]
async fn revert_on_deletion_false_keeps_flaggers_behaviour() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("deletion_opt_out") else {
        return Ok(());
    };
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-delete-out").await?;
    let op = Operator::start(&env, &ns.name, &["--provider", "kubernetes"]).await?;
    SampleApp::new(&ns.name, "app", &env.sample_app_command())
        .replicas(2)
        .deploy(&client)
        .await?;
    apply_json(
        &client,
        json!({
            "apiVersion": "serin.dev/v1beta1", "kind": "Canary",
            "metadata": {"name": "app", "namespace": ns.name},
            "spec": {
                "provider": "kubernetes",
                "revertOnDeletion": false,
                "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "app"},
                "progressDeadlineSeconds": 20,
                "service": {"port": 80, "targetPort": 8080},
                "analysis": {"interval": "3s", "threshold": 1, "iterations": 2}
            }
        }),
    )
    .await?;
    let api = canaries(&client, &ns.name);
    wait_phase(&api, "app", "Initialized", Duration::from_secs(60), &op).await?;
    wait_target_at_zero(&client, &ns.name, "app").await?;
    let c = api.get("app").await?;
    assert!(
        finalizers(&c).is_empty(),
        "explicit false: no finalizer: {:?}",
        finalizers(&c)
    );
    api.delete("app", &DeleteParams::default()).await?;
    wait_for("canary gone", Duration::from_secs(10), || async {
        Ok(api.get_opt("app").await?.is_none().then_some(()))
    })
    .await?;
    wait_primary_gone(&client, &ns.name, "app-primary").await?;
    // Give the operator time to act if it (wrongly) were going to.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        deployment_replicas(&client, &ns.name, "app").await?,
        Some(0),
        "the target stays at 0, as with Flagger"
    );
    assert!(
        list_pods(&client, &ns.name, "app=app").await?.is_empty(),
        "no target pods"
    );
    drop(op);
    ns.cleanup().await?;
    Ok(())
}

fn apex_selector(svc: Service) -> Option<String> {
    svc.spec
        .and_then(|s| s.selector)
        .and_then(|s| s.get("app").cloned())
}

/// A target that cannot become ready (its last revision crashes, the release failed)
/// holds the delete: the finalizer stays, the primary keeps serving behind the apex,
/// and the Ready condition and an Event say why and that the finalizer can be removed
/// by hand; removed by hand, the Canary goes and the user's Deployment is kept.
#[tokio::test]
async fn deleting_with_a_target_that_cannot_become_ready_holds_and_says_why() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("deletion_held") else {
        return Ok(());
    };
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-delete-held").await?;
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
                "progressDeadlineSeconds": 15,
                "service": {"port": 80, "targetPort": 8080},
                "analysis": {"interval": "3s", "threshold": 1, "iterations": 2}
            }
        }),
    )
    .await?;
    let api = canaries(&client, &ns.name);
    wait_phase(&api, "app", "Initialized", Duration::from_secs(60), &op).await?;
    app = app.version("v2").env("CRASH", "1");
    release(&client, &app).await?;
    wait_phase(&api, "app", "Failed", Duration::from_secs(60), &op).await?;
    wait_target_at_zero(&client, &ns.name, "app").await?;

    api.delete("app", &DeleteParams::default()).await?;
    let held = wait_for(
        "the delete held on the target",
        Duration::from_secs(30),
        || async {
            let s = status(&api, "app").await?;
            let ready = s["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Ready")
                .cloned();
            Ok(ready.filter(|c| {
                s["phase"] == "Terminating"
                    && c["status"] == "False"
                    && c["reason"] == "TargetNotReady"
            }))
        },
    )
    .await
    .with_context(|| op.log_tail(40))?;
    let msg = held["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains(FINALIZER) && msg.contains("remove the finalizer by hand"),
        "the condition says how to get out: {msg}"
    );
    // Several ticks later: still held, the primary still the one serving.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let c = api.get("app").await?;
    assert!(
        finalizers(&c).iter().any(|f| f == FINALIZER),
        "finalizer kept while the target is not ready"
    );
    assert_eq!(c.data["status"]["phase"], "Terminating");
    let services = Api::<Service>::namespaced(client.clone(), &ns.name);
    assert_eq!(
        apex_selector(services.get("app").await?).as_deref(),
        Some("app-primary"),
        "traffic stays on the primary"
    );
    let primary_pods = list_pods(&client, &ns.name, "app=app-primary").await?;
    assert_eq!(
        primary_pods.iter().filter(|p| pod_ready(p)).count(),
        2,
        "the primary serves at its replicas"
    );
    assert_eq!(
        deployment_replicas(&client, &ns.name, "app").await?,
        Some(2),
        "the target was given the primary's replicas"
    );
    let events = Api::<Event>::namespaced(client.clone(), &ns.name)
        .list(&Default::default())
        .await?;
    let event = events
        .items
        .iter()
        .find(|e| {
            e.involved_object.name.as_deref() == Some("app")
                && e.reason.as_deref() == Some("TargetNotReady")
        })
        .with_context(|| format!("a TargetNotReady Event: {:?}", events.items.len()))?;
    assert!(
        event
            .message
            .as_deref()
            .is_some_and(|m| m.contains("remove the finalizer by hand")),
        "{:?}",
        event.message
    );

    // The way out the message names.
    let patch = json!({"metadata": {"finalizers": null}});
    api.patch("app", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    wait_for("canary gone", Duration::from_secs(10), || async {
        Ok(api.get_opt("app").await?.is_none().then_some(()))
    })
    .await?;
    wait_primary_gone(&client, &ns.name, "app-primary").await?;
    assert_eq!(
        deployment_replicas(&client, &ns.name, "app").await?,
        Some(2),
        "the user's Deployment is kept"
    );
    drop(op);
    ns.cleanup().await?;
    Ok(())
}

/// Deleted mid-release, while Traefik splits the traffic between the primary (v1) and
/// the canary (v2): not one request fails, and the target serves its own revision
/// (v2, the one the user declared) behind the user's route once the Canary is gone.
#[tokio::test]
async fn deleting_mid_release_under_load_fails_no_request() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("deletion_mid_release") else {
        return Ok(());
    };
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-delete-mid").await?;
    let op = Operator::start(&env, &ns.name, &["--provider", "gatewayapi:v1"]).await?;
    let host = format!("{}.e2e.local", ns.name);
    let url = format!("{}/", env.gateway);
    let analysis = json!({"interval": "10s", "threshold": 1, "stepWeights": [20, 40, 60, 80]});
    let app = routed_app(&env, &client, &ns.name, &host, analysis).await?;
    let api = canaries(&client, &ns.name);
    wait_phase(&api, "web", "Initialized", Duration::from_secs(60), &op).await?;
    serin_e2e::wait_route_serves(&url, &host, &["v1"], Duration::from_secs(30)).await?;
    release(&client, &app.clone().version("v2")).await?;
    wait_for("the split under way", Duration::from_secs(60), || async {
        let s = status(&api, "web").await?;
        Ok((s["phase"] == "Progressing" && s["canaryWeight"].as_u64() >= Some(20)).then_some(()))
    })
    .await
    .with_context(|| op.log_tail(40))?;

    let steady = Steady::start(&url, &host, 40.0, Duration::from_secs(180));
    // Traefik applies the split within a few seconds: the load sees both versions.
    tokio::time::sleep(Duration::from_secs(4)).await;
    api.delete("web", &DeleteParams::default()).await?;
    wait_for("canary gone", Duration::from_secs(90), || async {
        Ok(api.get_opt("web").await?.is_none().then_some(()))
    })
    .await
    .with_context(|| op.log_tail(60))?;
    wait_primary_gone(&client, &ns.name, "web-primary").await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let report = steady.finish().await?;
    eprintln!(
        "mid-release delete: sent {} answered {} by status {:?} by version {:?}",
        report.sent, report.responses, report.by_status, report.by_version
    );
    assert_no_failed_request("steady load through the mid-release delete", &report);
    assert!(
        report.count("v1") > 0 && report.count("v2") > 0,
        "the load saw the split: {report:?}"
    );
    assert_back_on_the_target(&client, &ns.name).await?;
    assert_target_answers(&url, &host, "v2").await?;
    serin_e2e::wait_deployment_available(&client, &ns.name, "web", 2, Duration::from_secs(30))
        .await?;
    drop(op);
    ns.cleanup().await?;
    Ok(())
}
