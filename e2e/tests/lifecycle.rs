//! End-to-end tests of the release lifecycle on the local cluster: config tracking,
//! the retry annotation, suspend, `revertOnDeletion`, the primary HPA, and the
//! never-nothing-serving invariant. Each test runs the real `serin` binary (as its
//! own ServiceAccount) in its own namespace, with the `kubernetes` provider
//! (blue/green by switching the apex Service) and real pods from the kubelet
//! simulator.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::Client;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams,
    PostParams, WatchEvent, WatchParams,
};
use serde_json::{Value, json};
use serin_e2e::canary::{canaries, phase, pod_versions, release, status, wait_target_at_zero};
use serin_e2e::operator::Operator;
use serin_e2e::{ClusterEnv, SampleApp, TestNamespace, apply_json, list_pods, pod_ready, wait_for};

/// The analysis interval of every Canary here; holds are measured in multiples of it.
const INTERVAL: Duration = Duration::from_secs(3);

/// A blue/green Canary for Deployment `name` with the `kubernetes` provider; `extra`
/// is merged into its spec.
fn canary(ns: &str, name: &str, extra: Value) -> Value {
    let mut spec = json!({
        "provider": "kubernetes",
        "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
        "progressDeadlineSeconds": 20,
        "service": {"port": 80, "targetPort": 8080},
        "analysis": {"interval": format!("{}s", INTERVAL.as_secs()), "threshold": 1, "iterations": 2}
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    json!({
        "apiVersion": "serin.dev/v1beta1", "kind": "Canary",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec
    })
}

/// Waits for phase `want`, recording every phase seen on the way.
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
        seen.insert(phase(&s).to_string());
        if phase(&s) == want {
            return Ok(s);
        }
        if Instant::now() > deadline {
            bail!(
                "canary {name}: no {want} within {timeout:?} (seen {seen:?}); last status {s}\noperator log:\n{}",
                op.log_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until every ready pod of `selector` answers one of `want` (sorted).
async fn wait_versions(client: &Client, ns: &str, selector: &str, want: &[&str]) -> Result<()> {
    wait_for(
        &format!("{selector} answering {want:?}"),
        Duration::from_secs(40),
        || async { Ok((pod_versions(client, ns, selector).await? == want).then_some(())) },
    )
    .await
}

async fn deployment(client: &Client, ns: &str, name: &str) -> Result<Deployment> {
    Api::<Deployment>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .with_context(|| format!("get deployment {name}"))
}

fn spec_replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

async fn replicas(client: &Client, ns: &str, name: &str) -> Result<i32> {
    Ok(spec_replicas(&deployment(client, ns, name).await?))
}

/// Deploys `app` with VERSION taken from the ConfigMap `cm` (through `envFrom`)
/// instead of the literal VERSION entry SampleApp writes, which would win over it.
async fn deploy_with_config(
    client: &Client,
    app: SampleApp,
    cm: &str,
    version: &str,
) -> Result<()> {
    let cms = Api::<ConfigMap>::namespaced(client.clone(), &app.namespace);
    let data: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": cm, "namespace": app.namespace},
        "data": {"VERSION": version}
    }))?;
    cms.create(&PostParams::default(), &data)
        .await
        .context("creating configmap")?;
    let app = app.env_from_json(json!({"configMapRef": {"name": cm}}));
    let mut d = app.deployment()?;
    for c in d
        .spec
        .iter_mut()
        .flat_map(|s| s.template.spec.iter_mut())
        .flat_map(|p| p.containers.iter_mut())
    {
        if let Some(env) = c.env.as_mut() {
            env.retain(|e| e.name != "VERSION");
        }
    }
    Api::<Deployment>::namespaced(client.clone(), &app.namespace)
        .create(&PostParams::default(), &d)
        .await
        .context("creating deployment")?;
    Api::<Service>::namespaced(client.clone(), &app.namespace)
        .create(&PostParams::default(), &app.service()?)
        .await
        .context("creating service")?;
    Ok(())
}

async fn configmap_version(client: &Client, ns: &str, name: &str) -> Result<Option<String>> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?;
    Ok(cm
        .and_then(|c| c.data)
        .and_then(|d| d.get("VERSION").cloned()))
}

/// One look at the invariant "never nothing serving": when the target is at 0
/// replicas, the primary must have available, ready pods. Returns whether the target
/// was at 0.
async fn check_serving(client: &Client, ns: &str, name: &str) -> Result<bool> {
    if replicas(client, ns, name).await? != 0 {
        return Ok(false);
    }
    let primary = format!("{name}-primary");
    let p = deployment(client, ns, &primary).await?;
    let available = p
        .status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0);
    let ready = list_pods(client, ns, &format!("app={primary}"))
        .await?
        .iter()
        .filter(|p| pod_ready(p))
        .count();
    if available < 1 || ready < 1 {
        bail!("target {name} at 0 while the primary has {available} available, {ready} ready pods");
    }
    Ok(true)
}

/// Config tracking: a change to a ConfigMap the pod template references, with the
/// template untouched, is a new revision; promotion copies it to `<cm>-primary`,
/// which the primary's pods use, and rolls them.
#[tokio::test]
async fn configmap_change_starts_a_release_and_reaches_the_primary() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("config_tracking") else {
        return Ok(());
    };
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-cfg").await?;
    let op = Operator::start(&env, &ns.name, &["--provider", "kubernetes"]).await?;
    let app = SampleApp::new(&ns.name, "app", &env.sample_app_command()).replicas(2);
    deploy_with_config(&client, app, "cfg", "c1").await?;
    apply_json(&client, canary(&ns.name, "app", json!({}))).await?;
    let api = canaries(&client, &ns.name);
    let mut seen = BTreeSet::new();
    let init = wait_phase(
        &api,
        "app",
        "Initialized",
        Duration::from_secs(60),
        &op,
        &mut seen,
    )
    .await?;
    let tracked_before = init["trackedConfigs"].clone();
    assert!(
        tracked_before
            .get("configmap/cfg")
            .is_some_and(Value::is_string),
        "trackedConfigs should hold the ConfigMap: {init}"
    );
    assert_eq!(
        configmap_version(&client, &ns.name, "cfg-primary")
            .await?
            .as_deref(),
        Some("c1")
    );
    wait_versions(&client, &ns.name, "app=app-primary", &["c1", "c1"]).await?;
    let primary = deployment(&client, &ns.name, "app-primary").await?;
    let pod_spec = serde_json::to_value(primary.spec.as_ref().map(|s| &s.template.spec))?;
    assert_eq!(
        pod_spec["containers"][0]["envFrom"][0]["configMapRef"]["name"], "cfg-primary",
        "the primary uses the -primary copy: {pod_spec}"
    );
    let template_before = serde_json::to_value(
        deployment(&client, &ns.name, "app")
            .await?
            .spec
            .map(|s| s.template),
    )?;

    // Only the ConfigMap changes.
    Api::<ConfigMap>::namespaced(client.clone(), &ns.name)
        .patch(
            "cfg",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"VERSION": "c2"}})),
        )
        .await?;
    seen.clear();
    wait_phase(
        &api,
        "app",
        "Progressing",
        Duration::from_secs(30),
        &op,
        &mut seen,
    )
    .await?;
    // The canary (target) pods read the user's ConfigMap, so they run the new config.
    wait_versions(&client, &ns.name, "app=app", &["c2", "c2"]).await?;
    let done = wait_phase(
        &api,
        "app",
        "Succeeded",
        Duration::from_secs(90),
        &op,
        &mut seen,
    )
    .await?;
    assert!(seen.contains("Promoting"), "{seen:?}");
    assert_eq!(
        configmap_version(&client, &ns.name, "cfg-primary")
            .await?
            .as_deref(),
        Some("c2")
    );
    wait_versions(&client, &ns.name, "app=app-primary", &["c2", "c2"]).await?;
    assert_ne!(
        done["trackedConfigs"], tracked_before,
        "trackedConfigs follows the ConfigMap"
    );
    assert!(
        done["trackedConfigs"].get("configmap/cfg").is_some(),
        "{done}"
    );
    // The primary's pods roll through the revision annotation, as the template's
    // references to `cfg-primary` did not change.
    let primary = deployment(&client, &ns.name, "app-primary").await?;
    let revision = primary
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get("serin.dev/revision").cloned());
    assert_eq!(
        revision.as_deref(),
        done["lastAppliedSpec"].as_str(),
        "{done}"
    );
    assert_eq!(done["lastPromotedSpec"], done["lastAppliedSpec"]);
    let template_after = serde_json::to_value(
        deployment(&client, &ns.name, "app")
            .await?
            .spec
            .map(|s| s.template),
    )?;
    assert_eq!(
        template_before, template_after,
        "the user's pod template is untouched"
    );
    wait_for("target back at 0", Duration::from_secs(20), || async {
        Ok((replicas(&client, &ns.name, "app").await? == 0).then_some(()))
    })
    .await?;
    drop(op);
    ns.cleanup().await?;
    Ok(())
}

/// Retry: the `serin.dev/retry` annotation re-runs a failed revision without any
/// change to the pod template; the same value again does nothing.
#[tokio::test]
async fn retry_annotation_reruns_a_failed_revision_once_per_value() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("retry_annotation") else {
        return Ok(());
    };
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-retry").await?;
    let op = Operator::start(&env, &ns.name, &["--provider", "kubernetes"]).await?;
    let mut app = SampleApp::new(&ns.name, "app", &env.sample_app_command());
    app.deploy(&client).await?;
    apply_json(&client, canary(&ns.name, "app", json!({}))).await?;
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

    app = app.version("v2").env("CRASH", "1");
    release(&client, &app).await?;
    wait_phase(
        &api,
        "app",
        "Progressing",
        Duration::from_secs(30),
        &op,
        &mut seen,
    )
    .await?;
    let failed = wait_phase(
        &api,
        "app",
        "Failed",
        Duration::from_secs(60),
        &op,
        &mut seen,
    )
    .await?;
    let template = || async {
        let d = deployment(&client, &ns.name, "app").await?;
        Ok::<_, anyhow::Error>(serde_json::to_value(d.spec.map(|s| s.template))?)
    };
    let template_before = template().await?;
    wait_for(
        "target at 0 after the rollback",
        Duration::from_secs(20),
        || async { Ok((replicas(&client, &ns.name, "app").await? == 0).then_some(())) },
    )
    .await?;

    let annotate = |extra: &str| {
        let patch =
            json!({"metadata": {"annotations": {"serin.dev/retry": "1", "e2e/poke": extra}}});
        let api = api.clone();
        async move {
            api.patch("app", &PatchParams::default(), &Patch::Merge(patch))
                .await?;
            Ok::<_, anyhow::Error>(())
        }
    };
    annotate("a").await?;
    // The retry runs the analysis again: Progressing, the target scaled back up...
    let mut scaled_up = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = status(&api, "app").await?;
        if phase(&s) == "Progressing" {
            scaled_up |= replicas(&client, &ns.name, "app").await? > 0;
            if scaled_up {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!(
                "retry did not restart the analysis: {s}\n{}",
                op.log_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // ...and, the revision still crashing, fails at the progress deadline again.
    seen.clear();
    let again = wait_phase(
        &api,
        "app",
        "Failed",
        Duration::from_secs(60),
        &op,
        &mut seen,
    )
    .await?;
    assert_eq!(again["lastRetry"], "1", "{again}");
    assert_ne!(
        again["lastTransitionTime"], failed["lastTransitionTime"],
        "a new failure: {again}"
    );
    assert_eq!(
        again["lastAppliedSpec"], failed["lastAppliedSpec"],
        "same revision retried"
    );
    assert_eq!(
        template().await?,
        template_before,
        "the pod template was not edited"
    );

    // The same value again (with another annotation, so the Canary does change and is
    // reconciled) is no new request.
    wait_target_at_zero(&client, &ns.name, "app").await?;
    annotate("b").await?;
    let until = Instant::now() + 4 * INTERVAL;
    while Instant::now() < until {
        let s = status(&api, "app").await?;
        assert_eq!(
            phase(&s),
            "Failed",
            "the same retry value must not restart: {s}"
        );
        assert_eq!(s["lastTransitionTime"], again["lastTransitionTime"]);
        assert_eq!(
            replicas(&client, &ns.name, "app").await?,
            0,
            "target stays at 0"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        pod_versions(&client, &ns.name, "app=app-primary").await?,
        ["v1"],
        "primary untouched"
    );
    drop(op);
    ns.cleanup().await?;
    Ok(())
}

/// Not-ready primaries never lose traffic: through a full release and a rollback,
/// whenever the target is at 0 the primary has ready pods.
#[tokio::test]
async fn target_is_at_zero_only_while_the_primary_serves() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("never_nothing_serving") else {
        return Ok(());
    };
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-serving").await?;
    let op = Operator::start(&env, &ns.name, &["--provider", "kubernetes"]).await?;
    let mut app = SampleApp::new(&ns.name, "app", &env.sample_app_command()).replicas(2);
    app.deploy(&client).await?;
    apply_json(&client, canary(&ns.name, "app", json!({}))).await?;
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

    for (version, crash, end) in [("v2", false, "Succeeded"), ("v3", true, "Failed")] {
        app = app.version(version);
        if crash {
            app = app.env("CRASH", "1");
        }
        release(&client, &app).await?;
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut phases = BTreeSet::new();
        let (mut at_zero, mut up) = (0, 0);
        loop {
            if check_serving(&client, &ns.name, "app")
                .await
                .with_context(|| op.log_tail(40))?
            {
                at_zero += 1;
            } else {
                up += 1;
            }
            let s = status(&api, "app").await?;
            phases.insert(phase(&s).to_string());
            if phase(&s) == end && phases.contains("Progressing") {
                break;
            }
            if Instant::now() > deadline {
                bail!("{version}: no {end} in time: {s}\n{}", op.log_tail(40));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(up > 0, "{version}: the target ran the release");
        wait_for("target back at 0", Duration::from_secs(20), || async {
            Ok((replicas(&client, &ns.name, "app").await? == 0).then_some(()))
        })
        .await?;
        // The final state too: target at 0 with the primary serving.
        assert!(
            check_serving(&client, &ns.name, "app").await?,
            "target at 0, primary serving"
        );
        at_zero += 1;
        assert!(
            at_zero > 0,
            "{version}: the invariant was checked with the target at 0"
        );
    }
    assert_eq!(
        pod_versions(&client, &ns.name, "app=app-primary").await?,
        ["v2", "v2"]
    );
    drop(op);
    ns.cleanup().await?;
    Ok(())
}

/// Suspend: a suspended Canary does not start a new revision (no Progressing, the
/// target stays at 0); resumed, the release runs to the end.
#[tokio::test]
async fn suspended_canary_holds_a_new_revision_until_resumed() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("suspend") else {
        return Ok(());
    };
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-suspend").await?;
    let op = Operator::start(&env, &ns.name, &["--provider", "kubernetes"]).await?;
    let mut app = SampleApp::new(&ns.name, "app", &env.sample_app_command()).replicas(2);
    app.deploy(&client).await?;
    apply_json(&client, canary(&ns.name, "app", json!({}))).await?;
    let api = canaries(&client, &ns.name);
    let mut seen = BTreeSet::new();
    let init = wait_phase(
        &api,
        "app",
        "Initialized",
        Duration::from_secs(60),
        &op,
        &mut seen,
    )
    .await?;

    let set_suspend = |on: bool| {
        let api = api.clone();
        async move {
            let c = api
                .patch(
                    "app",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"suspend": on}})),
                )
                .await?;
            Ok::<_, anyhow::Error>(c.metadata.generation)
        }
    };
    wait_target_at_zero(&client, &ns.name, "app").await?;
    let generation = set_suspend(true).await?;
    // The operator has seen the suspension once it reports that generation.
    wait_for("suspension observed", Duration::from_secs(20), || async {
        let s = status(&api, "app").await?;
        Ok((s["observedGeneration"].as_i64() == generation).then_some(()))
    })
    .await?;
    app = app.version("v2");
    release(&client, &app).await?;
    let until = Instant::now() + 4 * INTERVAL;
    while Instant::now() < until {
        let s = status(&api, "app").await?;
        assert_eq!(phase(&s), "Initialized", "suspended: {s}");
        assert_eq!(
            s["lastAppliedSpec"], init["lastAppliedSpec"],
            "no release started: {s}"
        );
        assert_eq!(
            replicas(&client, &ns.name, "app").await?,
            0,
            "target stays at 0"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        pod_versions(&client, &ns.name, "app=app-primary").await?,
        ["v1", "v1"]
    );

    set_suspend(false).await?;
    seen.clear();
    wait_phase(
        &api,
        "app",
        "Succeeded",
        Duration::from_secs(90),
        &op,
        &mut seen,
    )
    .await?;
    assert!(
        seen.contains("Progressing") && seen.contains("Promoting"),
        "{seen:?}"
    );
    wait_versions(&client, &ns.name, "app=app-primary", &["v2", "v2"]).await?;
    drop(op);
    ns.cleanup().await?;
    Ok(())
}

/// `revertOnDeletion`: deleting the Canary gives the traffic and the replicas back to
/// the target, then lets the Canary go; nothing the user created is deleted.
#[tokio::test]
async fn revert_on_deletion_gives_the_target_back() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("revert_on_deletion") else {
        return Ok(());
    };
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-revert").await?;
    let op = Operator::start(&env, &ns.name, &["--provider", "kubernetes"]).await?;
    let app = SampleApp::new(&ns.name, "app", &env.sample_app_command()).replicas(2);
    deploy_with_config(&client, app, "cfg", "c1").await?;
    apply_json(
        &client,
        canary(&ns.name, "app", json!({"revertOnDeletion": true})),
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
    wait_target_at_zero(&client, &ns.name, "app").await?;
    let c = api.get("app").await?;
    assert!(
        c.metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == "serin.dev/finalizer"),
        "finalizer set: {:?}",
        c.metadata.finalizers
    );
    let services = Api::<Service>::namespaced(client.clone(), &ns.name);
    let apex_selector = || async {
        let s = services.get("app").await?;
        Ok::<_, anyhow::Error>(
            s.spec
                .and_then(|s| s.selector)
                .and_then(|s| s.get("app").cloned()),
        )
    };
    assert_eq!(apex_selector().await?.as_deref(), Some("app-primary"));

    api.delete("app", &DeleteParams::default()).await?;
    wait_for("canary gone", Duration::from_secs(30), || async {
        Ok(api.get_opt("app").await?.is_none().then_some(()))
    })
    .await
    .with_context(|| op.log_tail(40))?;
    serin_e2e::wait_deployment_available(&client, &ns.name, "app", 2, Duration::from_secs(40))
        .await?;
    // The target's own pods serve again, behind the user's Service.
    assert_eq!(
        apex_selector().await?.as_deref(),
        Some("app"),
        "apex back on the target"
    );
    wait_versions(&client, &ns.name, "app=app", &["c1", "c1"]).await?;
    let cms = Api::<ConfigMap>::namespaced(client.clone(), &ns.name);
    assert!(
        cms.get_opt("cfg").await?.is_some(),
        "the user's ConfigMap is kept"
    );
    assert_eq!(
        replicas(&client, &ns.name, "app").await?,
        2,
        "the user's Deployment is kept"
    );
    drop(op);
    ns.cleanup().await?;
    Ok(())
}

fn hpas(client: &Client, ns: &str) -> Api<DynamicObject> {
    // 1.20 serves autoscaling/v2beta2, not v2.
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("autoscaling", "v2beta2", "HorizontalPodAutoscaler"),
        "horizontalpodautoscalers",
    );
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// `autoscalerRef`: the primary gets its own HPA, a copy of the user's that scales
/// `<target>-primary`, kept in step with the user's at promotion.
#[tokio::test]
async fn autoscaler_ref_gets_a_primary_hpa() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("primary_hpa") else {
        return Ok(());
    };
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-hpa").await?;
    let op = Operator::start(&env, &ns.name, &["--provider", "kubernetes"]).await?;
    let mut app = SampleApp::new(&ns.name, "app", &env.sample_app_command()).replicas(2);
    app.deploy(&client).await?;
    let hpa = |max: i64| {
        json!({
            "apiVersion": "autoscaling/v2beta2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "app-hpa", "namespace": ns.name},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "app"},
                "minReplicas": 2, "maxReplicas": max,
                "metrics": [{"type": "Resource", "resource": {
                    "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]
            }
        })
    };
    apply_json(&client, hpa(4)).await?;
    let autoscaler = json!({"autoscalerRef": {
        "apiVersion": "autoscaling/v2beta2", "kind": "HorizontalPodAutoscaler", "name": "app-hpa"}});
    apply_json(&client, canary(&ns.name, "app", autoscaler)).await?;
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
    let hpa_api = hpas(&client, &ns.name);
    let primary_hpa = || async {
        let h = hpa_api
            .get("app-hpa-primary")
            .await
            .context("primary HPA")?;
        let spec = h.data["spec"].clone();
        Ok::<_, anyhow::Error>((
            spec["scaleTargetRef"]["kind"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            spec["scaleTargetRef"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            spec["minReplicas"].as_i64(),
            spec["maxReplicas"].as_i64(),
            spec["metrics"].clone(),
        ))
    };
    let (kind, name, min, max, metrics) = primary_hpa().await?;
    assert_eq!(
        (kind.as_str(), name.as_str()),
        ("Deployment", "app-primary")
    );
    assert_eq!(
        (min, max),
        (Some(2), Some(4)),
        "same bounds as the user's HPA"
    );
    let user = hpa_api.get("app-hpa").await?;
    assert_eq!(
        metrics, user.data["spec"]["metrics"],
        "same metrics as the user's HPA"
    );
    assert_eq!(
        user.data["spec"]["scaleTargetRef"]["name"], "app",
        "the user's HPA is left alone"
    );

    // The user raises the bound; the next promotion carries it to the primary's HPA.
    apply_json(&client, hpa(5)).await?;
    app = app.version("v2");
    release(&client, &app).await?;
    seen.clear();
    wait_phase(
        &api,
        "app",
        "Succeeded",
        Duration::from_secs(90),
        &op,
        &mut seen,
    )
    .await?;
    let (_, name, min, max, _) = primary_hpa().await?;
    assert_eq!((name.as_str(), min, max), ("app-primary", Some(2), Some(5)));
    wait_versions(&client, &ns.name, "app=app-primary", &["v2", "v2"]).await?;
    drop(op);
    ns.cleanup().await?;
    Ok(())
}

/// Every phase the Canary `name` goes through from now on, in order, as seen by a
/// watch: polling can miss a phase that lasts only until the next reconcile.
async fn record_phases(
    api: &Api<DynamicObject>,
    name: &str,
) -> Result<(Arc<Mutex<Vec<String>>>, tokio::task::JoinHandle<()>)> {
    // Starts from the phase now, then follows every change after this version.
    let now = api.get(name).await?;
    let rv = now.metadata.resource_version.unwrap_or_default();
    let wp = WatchParams::default()
        .fields(&format!("metadata.name={name}"))
        .timeout(290);
    let stream = api.watch(&wp, &rv).await?;
    let first = now.data["status"]["phase"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let phases = Arc::new(Mutex::new(vec![first]));
    let out = phases.clone();
    let task = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(Ok(ev)) = stream.next().await {
            let (WatchEvent::Added(o) | WatchEvent::Modified(o)) = ev else {
                continue;
            };
            let p = o.data["status"]["phase"].as_str().unwrap_or("").to_string();
            let mut all = out.lock().unwrap_or_else(|e| e.into_inner());
            if all.last() != Some(&p) {
                all.push(p);
            }
        }
    });
    Ok((phases, task))
}

fn phases_so_far(p: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
    p.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// A retry value that was already on the Canary before the revision failed (set at
/// creation, or kept in a GitOps manifest) is no request to re-run that failure: only
/// a value set after it is.
#[tokio::test]
async fn retry_value_set_before_the_failure_does_not_rerun_it() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("stale_retry") else {
        return Ok(());
    };
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-stale-retry").await?;
    let op = Operator::start(&env, &ns.name, &["--provider", "kubernetes"]).await?;
    let mut app = SampleApp::new(&ns.name, "app", &env.sample_app_command());
    app.deploy(&client).await?;
    let mut c = canary(&ns.name, "app", json!({}));
    c["metadata"]["annotations"] = json!({"serin.dev/retry": "1"});
    apply_json(&client, c).await?;
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

    let (phases, watch) = record_phases(&api, "app").await?;
    app = app.version("v2").env("CRASH", "1");
    release(&client, &app).await?;
    wait_for("the release to fail", Duration::from_secs(60), || async {
        Ok(phases_so_far(&phases)
            .iter()
            .any(|p| p == "Failed")
            .then_some(()))
    })
    .await
    .with_context(|| op.log_tail(40))?;
    tokio::time::sleep(4 * INTERVAL).await;
    wait_target_at_zero(&client, &ns.name, "app").await?;
    assert_eq!(
        phases_so_far(&phases),
        ["Initialized", "Progressing", "Failed"],
        "re-ran on a retry value older than the failure"
    );
    assert_eq!(
        replicas(&client, &ns.name, "app").await?,
        0,
        "target stays at 0"
    );
    // A new value is a request.
    let patch = json!({"metadata": {"annotations": {"serin.dev/retry": "2"}}});
    api.patch("app", &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    wait_phase(
        &api,
        "app",
        "Progressing",
        Duration::from_secs(20),
        &op,
        &mut seen,
    )
    .await?;
    watch.abort();
    drop(op);
    ns.cleanup().await?;
    Ok(())
}

/// A confirm-rollout webhook on 127.0.0.1 (the operator runs on this host) that
/// answers 200 while `open` holds, else 403.
async fn gate_server(open: Arc<std::sync::atomic::AtomicBool>) -> Result<String> {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let open = open.clone();
            tokio::spawn(async move {
                // Read the whole request (headers, then Content-Length bytes of body)
                // before answering, so the client never sees a reset.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = sock.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse().ok())?
                            })
                            .unwrap_or(0usize);
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                let status = if open.load(Ordering::SeqCst) {
                    "200 OK"
                } else {
                    "403 Forbidden"
                };
                let resp =
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    Ok(url)
}

/// A retry held by a closed confirm-rollout gate waits (one Waiting, no flapping back
/// to Failed), and runs once the gate opens.
#[tokio::test]
async fn retry_waits_for_confirm_rollout() -> Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let Some(env) = ClusterEnv::for_test("retry_gate") else {
        return Ok(());
    };
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-retry-gate").await?;
    let op = Operator::start(&env, &ns.name, &["--provider", "kubernetes"]).await?;
    let open = Arc::new(AtomicBool::new(true));
    let url = gate_server(open.clone()).await?;
    let mut app = SampleApp::new(&ns.name, "app", &env.sample_app_command());
    app.deploy(&client).await?;
    let analysis = json!({"analysis": {
        "interval": format!("{}s", INTERVAL.as_secs()), "threshold": 1, "iterations": 2,
        "webhooks": [{"name": "approval", "type": "confirm-rollout", "url": url}]
    }});
    apply_json(&client, canary(&ns.name, "app", analysis)).await?;
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
    app = app.version("v2").env("CRASH", "1");
    release(&client, &app).await?;
    wait_phase(
        &api,
        "app",
        "Progressing",
        Duration::from_secs(30),
        &op,
        &mut seen,
    )
    .await?;
    wait_phase(
        &api,
        "app",
        "Failed",
        Duration::from_secs(60),
        &op,
        &mut seen,
    )
    .await?;

    open.store(false, Ordering::SeqCst);
    let (phases, watch) = record_phases(&api, "app").await?;
    let patch = json!({"metadata": {"annotations": {"serin.dev/retry": "1"}}});
    api.patch("app", &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    wait_for("the retry to wait", Duration::from_secs(20), || async {
        Ok(phases_so_far(&phases)
            .iter()
            .any(|p| p == "Waiting")
            .then_some(()))
    })
    .await
    .with_context(|| op.log_tail(40))?;
    tokio::time::sleep(4 * INTERVAL).await;
    wait_target_at_zero(&client, &ns.name, "app").await?;
    assert_eq!(
        phases_so_far(&phases),
        ["Failed", "Waiting"],
        "held retry flapped"
    );
    assert_eq!(
        replicas(&client, &ns.name, "app").await?,
        0,
        "nothing runs while held"
    );

    open.store(true, Ordering::SeqCst);
    wait_for(
        "the retry to run and fail again",
        Duration::from_secs(60),
        || async {
            // The list starts at Failed: wait for a Failed after the retry ran.
            let p = phases_so_far(&phases);
            Ok((p.len() > 2 && p.last().is_some_and(|l| l == "Failed")).then_some(()))
        },
    )
    .await
    .with_context(|| op.log_tail(40))?;
    assert_eq!(
        phases_so_far(&phases),
        ["Failed", "Waiting", "Progressing", "Failed"]
    );
    watch.abort();
    drop(op);
    ns.cleanup().await?;
    Ok(())
}

/// The `message` each ready pod of `selector` answers at `/` (the sample app's
/// MESSAGE), for Secrets: sorted.
async fn pod_messages(client: &Client, ns: &str, selector: &str) -> Result<Vec<String>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let mut out = Vec::new();
    for pod in list_pods(client, ns, selector).await? {
        let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
            continue;
        };
        if !pod_ready(&pod) {
            continue;
        }
        let v: Value = http
            .get(format!("http://{ip}:8080/"))
            .send()
            .await?
            .json()
            .await?;
        out.push(v["message"].as_str().unwrap_or("?").to_string());
    }
    out.sort();
    Ok(out)
}

/// Secrets are tracked like ConfigMaps (a change is a release, the primary uses the
/// `-primary` copy); a ConfigMap annotated `serin.dev/config-tracking: disabled` is
/// left to the user: no copy, the primary uses it as is, and a change starts nothing.
#[tokio::test]
async fn secrets_are_tracked_and_opted_out_configmaps_are_not() -> Result<()> {
    use k8s_openapi::api::core::v1::Secret;
    let Some(env) = ClusterEnv::for_test("secret_tracking") else {
        return Ok(());
    };
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-secret").await?;
    let op = Operator::start(&env, &ns.name, &["--provider", "kubernetes"]).await?;
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns.name);
    let cms = Api::<ConfigMap>::namespaced(client.clone(), &ns.name);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "sec", "namespace": ns.name},
        "stringData": {"MESSAGE": "s1"}
    }))?;
    secrets.create(&PostParams::default(), &secret).await?;
    let untracked: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "free", "namespace": ns.name,
                     "annotations": {"serin.dev/config-tracking": "disabled"}},
        "data": {"EXTRA": "x1"}
    }))?;
    cms.create(&PostParams::default(), &untracked).await?;
    let app = SampleApp::new(&ns.name, "app", &env.sample_app_command())
        .replicas(2)
        .env_json(json!({"name": "MESSAGE",
                         "valueFrom": {"secretKeyRef": {"name": "sec", "key": "MESSAGE"}}}))
        .env_json(json!({"name": "EXTRA",
                         "valueFrom": {"configMapKeyRef": {"name": "free", "key": "EXTRA"}}}));
    deploy_with_config(&client, app, "cfg", "c1").await?;
    apply_json(&client, canary(&ns.name, "app", json!({}))).await?;
    let api = canaries(&client, &ns.name);
    let mut seen = BTreeSet::new();
    let init = wait_phase(
        &api,
        "app",
        "Initialized",
        Duration::from_secs(60),
        &op,
        &mut seen,
    )
    .await?;
    let keys: BTreeSet<String> = init["trackedConfigs"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    assert_eq!(
        keys,
        BTreeSet::from(["configmap/cfg".to_string(), "secret/sec".to_string()]),
        "{init}"
    );
    let primary = deployment(&client, &ns.name, "app-primary").await?;
    let env_of =
        serde_json::to_value(primary.spec.map(|s| s.template))?["spec"]["containers"][0]["env"]
            .clone();
    let source = |var: &str, kind: &str| {
        env_of
            .as_array()
            .and_then(|e| e.iter().find(|e| e["name"] == var))
            .map(|e| e["valueFrom"][kind]["name"].clone())
    };
    assert_eq!(
        source("MESSAGE", "secretKeyRef"),
        Some(json!("sec-primary")),
        "{env_of}"
    );
    assert_eq!(
        source("EXTRA", "configMapKeyRef"),
        Some(json!("free")),
        "{env_of}"
    );
    assert!(
        cms.get_opt("free-primary").await?.is_none(),
        "no copy of an opted-out ConfigMap"
    );
    wait_for("primary answering s1", Duration::from_secs(30), || async {
        Ok(
            (pod_messages(&client, &ns.name, "app=app-primary").await? == ["s1", "s1"])
                .then_some(()),
        )
    })
    .await?;

    // The opted-out ConfigMap changes: no release.
    cms.patch(
        "free",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"EXTRA": "x2"}})),
    )
    .await?;
    let until = Instant::now() + 4 * INTERVAL;
    while Instant::now() < until {
        let s = status(&api, "app").await?;
        assert_eq!(
            phase(&s),
            "Initialized",
            "an untracked change started a release: {s}"
        );
        assert_eq!(s["lastAppliedSpec"], init["lastAppliedSpec"]);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // The Secret changes: a release, promoted to the `-primary` copy.
    secrets
        .patch(
            "sec",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"MESSAGE": "s2"}})),
        )
        .await?;
    seen.clear();
    let done = wait_phase(
        &api,
        "app",
        "Succeeded",
        Duration::from_secs(90),
        &op,
        &mut seen,
    )
    .await?;
    assert!(seen.contains("Progressing"), "{seen:?}");
    assert_ne!(
        done["trackedConfigs"]["secret/sec"],
        init["trackedConfigs"]["secret/sec"]
    );
    assert_eq!(
        done["trackedConfigs"]["configmap/cfg"],
        init["trackedConfigs"]["configmap/cfg"]
    );
    let copy = secrets.get("sec-primary").await?;
    let msg = copy.data.and_then(|d| {
        d.get("MESSAGE")
            .map(|b| String::from_utf8_lossy(&b.0).to_string())
    });
    assert_eq!(msg.as_deref(), Some("s2"));
    wait_for("primary answering s2", Duration::from_secs(40), || async {
        Ok(
            (pod_messages(&client, &ns.name, "app=app-primary").await? == ["s2", "s2"])
                .then_some(()),
        )
    })
    .await?;
    drop(op);
    ns.cleanup().await?;
    Ok(())
}

/// `revertOnDeletion` mid-release: deleting the Canary while a new revision is being
/// analysed leaves the target (running that revision) serving behind the apex.
#[tokio::test]
async fn revert_on_deletion_mid_release_leaves_the_target_serving() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("revert_mid_release") else {
        return Ok(());
    };
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-revert-mid").await?;
    let op = Operator::start(&env, &ns.name, &["--provider", "kubernetes"]).await?;
    let mut app = SampleApp::new(&ns.name, "app", &env.sample_app_command()).replicas(2);
    app.deploy(&client).await?;
    // Many iterations, so the release is still running when the Canary goes.
    let spec = json!({
        "revertOnDeletion": true,
        "analysis": {"interval": format!("{}s", INTERVAL.as_secs()), "threshold": 1, "iterations": 50}
    });
    apply_json(&client, canary(&ns.name, "app", spec)).await?;
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
    app = app.version("v2");
    release(&client, &app).await?;
    wait_for("analysis under way", Duration::from_secs(40), || async {
        let s = status(&api, "app").await?;
        Ok((phase(&s) == "Progressing" && s["iterations"].as_u64() >= Some(1)).then_some(()))
    })
    .await
    .with_context(|| op.log_tail(40))?;

    api.delete("app", &DeleteParams::default()).await?;
    wait_for("canary gone", Duration::from_secs(30), || async {
        Ok(api.get_opt("app").await?.is_none().then_some(()))
    })
    .await
    .with_context(|| op.log_tail(40))?;
    let svc = Api::<Service>::namespaced(client.clone(), &ns.name)
        .get("app")
        .await?;
    let selector = svc
        .spec
        .and_then(|s| s.selector)
        .and_then(|s| s.get("app").cloned());
    assert_eq!(selector.as_deref(), Some("app"), "apex on the target");
    serin_e2e::wait_deployment_available(&client, &ns.name, "app", 2, Duration::from_secs(30))
        .await?;
    wait_versions(&client, &ns.name, "app=app", &["v2", "v2"]).await?;
    drop(op);
    ns.cleanup().await?;
    Ok(())
}

/// Suspend mid-release freezes the analysis where it is (no iteration advances, no
/// promotion, the canary keeps running); resumed, it carries on to the end.
#[tokio::test]
async fn suspend_mid_release_freezes_the_analysis() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("suspend_mid_release") else {
        return Ok(());
    };
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-suspend-mid").await?;
    let op = Operator::start(&env, &ns.name, &["--provider", "kubernetes"]).await?;
    let mut app = SampleApp::new(&ns.name, "app", &env.sample_app_command());
    app.deploy(&client).await?;
    let spec = json!({"analysis": {
        "interval": format!("{}s", INTERVAL.as_secs()), "threshold": 1, "iterations": 4
    }});
    apply_json(&client, canary(&ns.name, "app", spec)).await?;
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
    app = app.version("v2");
    release(&client, &app).await?;
    wait_for("first iteration", Duration::from_secs(40), || async {
        let s = status(&api, "app").await?;
        Ok((phase(&s) == "Progressing" && s["iterations"].as_u64() >= Some(1)).then_some(()))
    })
    .await
    .with_context(|| op.log_tail(40))?;
    let suspend = |on: bool| {
        let api = api.clone();
        async move {
            let patch = json!({"spec": {"suspend": on}});
            let c = api
                .patch("app", &PatchParams::default(), &Patch::Merge(patch))
                .await?;
            Ok::<_, anyhow::Error>(c.metadata.generation)
        }
    };
    let generation = suspend(true).await?;
    let frozen = wait_for("suspension observed", Duration::from_secs(20), || async {
        let s = status(&api, "app").await?;
        Ok((s["observedGeneration"].as_i64() == generation).then_some(s))
    })
    .await?;
    let until = Instant::now() + 4 * INTERVAL;
    while Instant::now() < until {
        let s = status(&api, "app").await?;
        assert_eq!(phase(&s), "Progressing", "{s}");
        assert_eq!(
            s["iterations"], frozen["iterations"],
            "analysis advanced while suspended"
        );
        assert!(
            replicas(&client, &ns.name, "app").await? > 0,
            "the canary keeps running"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        pod_versions(&client, &ns.name, "app=app-primary").await?,
        ["v1"]
    );
    suspend(false).await?;
    wait_phase(
        &api,
        "app",
        "Succeeded",
        Duration::from_secs(60),
        &op,
        &mut seen,
    )
    .await?;
    wait_versions(&client, &ns.name, "app=app-primary", &["v2"]).await?;
    drop(op);
    ns.cleanup().await?;
    Ok(())
}
