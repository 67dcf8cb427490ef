//! Issue #9, bad input: an install for a provider whose CRDs are absent runs, reports
//! the missing CRD on the Canary (condition and Event) instead of crash-looping,
//! leaves the user's app alone, and starts using the CRD once it is installed,
//! without a restart (GitOps tools apply Serin and a mesh in any order).
//!
//! Its own test binary: it removes the Istio CRDs cluster-wide for a while, and no
//! other test of this binary may need them meanwhile.

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use serin_e2e::canary::{canaries, deployment_replicas, status, wait_phase};
use serin_e2e::operator::{Operator, repo_root};
use serin_e2e::{ClusterEnv, SampleApp, TestNamespace, apply_json, process_alive, wait_for};

const ISTIO_CRDS: [&str; 2] = [
    "virtualservices.networking.istio.io",
    "destinationrules.networking.istio.io",
];

async fn istio_served(client: &Client) -> bool {
    kube::discovery::oneshot::group(client, "networking.istio.io")
        .await
        .is_ok()
}

async fn remove_istio_crds(client: &Client) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in ISTIO_CRDS {
        match crds.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e).with_context(|| format!("deleting CRD {name}")),
        }
    }
    wait_for(
        "Istio CRDs gone from discovery",
        Duration::from_secs(60),
        || async { Ok((!istio_served(client).await).then_some(())) },
    )
    .await
}

/// Puts the Istio CRDs back as `tests/routers.rs` installs them (the vendored copy).
async fn install_istio_crds(env: &ClusterEnv, client: &Client) -> Result<()> {
    let out = tokio::process::Command::new("kubectl")
        .args(["apply", "-f", "e2e/crds/istio.yaml"])
        .env("KUBECONFIG", &env.kubeconfig)
        .current_dir(repo_root())
        .output()
        .await
        .context("running kubectl apply")?;
    anyhow::ensure!(
        out.status.success(),
        "kubectl apply -f e2e/crds/istio.yaml: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("Istio CRDs served", Duration::from_secs(60), || async {
        Ok(istio_served(client).await.then_some(()))
    })
    .await
}

fn ready_condition(s: &Value) -> Option<(String, String, String)> {
    s.get("conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
        .map(|c| {
            let field = |k: &str| c[k].as_str().unwrap_or("").to_string();
            (field("status"), field("reason"), field("message"))
        })
}

fn canary(ns: &str, name: &str, provider: &str) -> Value {
    json!({
        "apiVersion": "serin.dev/v1beta1", "kind": "Canary",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "provider": provider,
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "progressDeadlineSeconds": 60,
            "service": {"port": 8080},
            "analysis": {"interval": "5s", "threshold": 1, "iterations": 1}
        }
    })
}

#[tokio::test]
async fn missing_provider_crds_give_a_condition_not_a_crash_and_are_used_once_installed()
-> Result<()> {
    let Some(env) = ClusterEnv::for_test("absent_crd") else {
        return Ok(());
    };
    let client = env.client().await?;
    remove_istio_crds(&client).await?;
    let result = scenario(&env, &client).await;
    // Whatever happened, the cluster gets its Istio CRDs back.
    let restored = install_istio_crds(&env, &client).await;
    result.and(restored)
}

async fn scenario(env: &ClusterEnv, client: &Client) -> Result<()> {
    let ns = TestNamespace::create(client, "e2e-absent").await?;
    let mesh_app = SampleApp::new(&ns.name, "meshed", &env.sample_app_command());
    mesh_app.deploy(client).await?;
    let plain_app = SampleApp::new(&ns.name, "plain", &env.sample_app_command());
    plain_app.deploy(client).await?;
    let mut op = Operator::start(
        env,
        &ns.name,
        &["--provider", "kubernetes", "--rediscover-seconds", "3"],
    )
    .await?;
    let api = canaries(client, &ns.name);
    apply_json(client, canary(&ns.name, "meshed", "istio")).await?;
    apply_json(client, canary(&ns.name, "plain", "kubernetes")).await?;

    // The Canary that needs Istio says so where the user looks.
    let (reason, message) = wait_for(
        "Ready=False naming the missing CRD",
        Duration::from_secs(30),
        || async {
            let s = status(&api, "meshed").await?;
            Ok(ready_condition(&s)
                .and_then(|(st, reason, message)| (st == "False").then_some((reason, message))))
        },
    )
    .await
    .with_context(|| op.log_tail(30))?;
    assert_eq!(reason, "RouterCrdMissing", "{message}");
    assert!(
        message.contains("VirtualService.networking.istio.io is not installed"),
        "the message names the CRD: {message}"
    );
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let warned = wait_for(
        "an Event on the Canary",
        Duration::from_secs(15),
        || async {
            let list = events.list(&ListParams::default()).await?;
            Ok(list.items.into_iter().find(|e| {
                e.involved_object.name.as_deref() == Some("meshed")
                    && e.reason.as_deref() == Some("RouterCrdMissing")
            }))
        },
    )
    .await?;
    assert_eq!(warned.type_.as_deref(), Some("Warning"));

    // The Canary beside it is unaffected, the user's workload is untouched and the
    // operator is still the same process.
    wait_phase(&api, "plain", "Initialized", Duration::from_secs(60), &op).await?;
    assert_eq!(
        deployment_replicas(client, &ns.name, "meshed").await?,
        Some(1),
        "the target of a Canary that cannot be routed keeps its replicas"
    );
    let pid = op.pid().context("operator pid")? as i32;
    assert!(process_alive(pid), "operator still running");
    assert!(
        !op.log_tail(400).contains("panicked"),
        "{}",
        op.log_tail(40)
    );

    // Installing the CRDs is enough: the operator notices and the Canary proceeds.
    install_istio_crds(env, client).await?;
    wait_phase(&api, "meshed", "Initialized", Duration::from_secs(60), &op).await?;
    let s = status(&api, "meshed").await?;
    assert_eq!(
        ready_condition(&s).map(|(st, _, _)| st).as_deref(),
        Some("True"),
        "{s}"
    );
    let vs = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("networking.istio.io", "v1beta1", "VirtualService"),
        "virtualservices",
    );
    let written = Api::<DynamicObject>::namespaced_with(client.clone(), &ns.name, &vs)
        .get("meshed")
        .await
        .context("the VirtualService is written once Istio is installed")?;
    assert_eq!(written.name_any(), "meshed");
    assert!(process_alive(pid), "no process restart was needed");
    assert!(
        op.log_tail(2000).contains("routing APIs now served"),
        "the operator says why it restarted its controller"
    );
    op.wait_ready(Duration::from_secs(30)).await?;
    Ok(())
}
