//! Reading and driving Canaries in end-to-end tests.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::{Value, json};

use crate::operator::Operator;
use crate::{ClusterEnv, SampleApp, apply_json};

pub fn canaries(client: &Client, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("serin.dev", "v1beta1", "Canary"),
        "canaries",
    );
    Api::namespaced_with(client.clone(), ns, &ar)
}

pub async fn status(api: &Api<DynamicObject>, name: &str) -> Result<Value> {
    let c = api
        .get(name)
        .await
        .with_context(|| format!("get canary {name}"))?;
    Ok(c.data.get("status").cloned().unwrap_or(Value::Null))
}

pub fn phase(s: &Value) -> &str {
    s.get("phase").and_then(Value::as_str).unwrap_or("")
}

pub fn weight(s: &Value) -> u64 {
    s.get("canaryWeight").and_then(Value::as_u64).unwrap_or(0)
}

/// Rolls the Deployment to a new pod template (a new revision).
pub async fn release(client: &Client, app: &SampleApp) -> Result<()> {
    let d = app.deployment()?;
    let template = serde_json::to_value(d.spec.map(|s| s.template))?;
    Api::<Deployment>::namespaced(client.clone(), &app.namespace)
        .patch(
            &app.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": template}})),
        )
        .await?;
    Ok(())
}

/// Waits until the target Deployment is scaled to zero: Serin does that once traffic
/// has drained off it, a few seconds after the routes moved to the primary.
pub async fn wait_target_at_zero(client: &Client, ns: &str, name: &str) -> Result<()> {
    let api = Api::<Deployment>::namespaced(client.clone(), ns);
    crate::wait_for(
        &format!("{ns}/{name} at 0 replicas"),
        std::time::Duration::from_secs(30),
        || {
            let api = api.clone();
            async move {
                let d = api.get(name).await?;
                Ok((d.spec.and_then(|s| s.replicas) == Some(0)).then_some(()))
            }
        },
    )
    .await
}

/// The version each ready pod of `selector` answers with, asked at its pod IP.
pub async fn pod_versions(client: &Client, ns: &str, selector: &str) -> Result<Vec<String>> {
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(2))
        .build()?;
    let mut out = Vec::new();
    for pod in crate::list_pods(client, ns, selector).await? {
        if !crate::pod_ready(&pod) {
            continue;
        }
        let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
            continue;
        };
        let v: Value = http
            .get(format!("http://{ip}:8080/version"))
            .send()
            .await?
            .json()
            .await?;
        out.push(
            v.get("version")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string(),
        );
    }
    out.sort();
    Ok(out)
}

/// Polls the Canary until its phase is `want`; on time-out the error carries the
/// status and the operator's last log lines.
pub async fn wait_phase(
    api: &Api<DynamicObject>,
    name: &str,
    want: &str,
    timeout: Duration,
    op: &Operator,
) -> Result<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = status(api, name).await?;
        if phase(&s) == want {
            return Ok(s);
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

/// Deploys the sample app the Canary `canary` (JSON) targets with `replicas`, applies
/// the Canary and waits until it is initialized.
pub async fn deploy_initialized(
    env: &ClusterEnv,
    client: &Client,
    op: &Operator,
    canary: &Value,
    replicas: i32,
) -> Result<SampleApp> {
    let ns = canary["metadata"]["namespace"].as_str().unwrap_or_default();
    let name = canary["metadata"]["name"].as_str().unwrap_or_default();
    let app = SampleApp::new(ns, name, &env.sample_app_command()).replicas(replicas);
    app.deploy(client).await?;
    apply_json(client, canary.clone()).await?;
    wait_phase(
        &canaries(client, ns),
        name,
        "Initialized",
        Duration::from_secs(60),
        op,
    )
    .await?;
    Ok(app)
}

/// `spec.replicas` of a Deployment.
pub async fn deployment_replicas(client: &Client, ns: &str, name: &str) -> Result<Option<i32>> {
    Ok(Api::<Deployment>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .with_context(|| format!("get deployment {name}"))?
        .spec
        .and_then(|s| s.replicas))
}
