//! Kubernetes API requests per analysis step, measured on the local cluster from the
//! operator's own counter (`serin_kube_api_requests_total`): a weighted Gateway API
//! release with five steps, counted from the first revision change to Succeeded.
//! Prints a table; asserts nothing (a benchmark, not a test).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::json;
use serin_e2e::load::{self, LoadSpec};
use serin_e2e::operator::Operator;
use serin_e2e::{ClusterEnv, SampleApp, TestNamespace, apply_json};

/// Kinds the operator watches: reading them outside the watch is waste.
const WATCHED: &[&str] = &[
    "canaries",
    "deployments",
    "daemonsets",
    "configmaps",
    "secrets",
    "metrictemplates",
    "alertproviders",
    "services",
];

#[tokio::main]
async fn main() {
    serin_e2e::ensure_crypto();
    if let Err(e) = run().await {
        eprintln!("bench-api failed: {e:#}");
        std::process::exit(1);
    }
}

fn counters(metrics: &str) -> BTreeMap<(String, String), f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with("serin_kube_api_requests_total{"))
        .filter_map(|l| {
            let (labels, value) = l.rsplit_once(' ')?;
            let get = |k: &str| {
                let start = labels.find(&format!("{k}=\""))? + k.len() + 2;
                let end = labels[start..].find('"')? + start;
                Some(labels[start..end].to_string())
            };
            Some(((get("verb")?, get("kind")?), value.parse().ok()?))
        })
        .collect()
}

async fn run() -> Result<()> {
    let env = ClusterEnv::load().context("no cluster: run e2e/cluster.sh up first")?;
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "bench-api").await?;
    let op = Operator::start(&env, &ns.name, &["--provider", "gatewayapi:v1"]).await?;
    let host = format!("{}.bench.local", ns.name);
    let app = SampleApp::new(&ns.name, "web", &env.sample_app_command()).replicas(2);
    app.deploy(&client).await?;
    let steps = [10, 20, 30, 40, 50];
    apply_json(
        &client,
        json!({
            "apiVersion": "serin.dev/v1beta1", "kind": "Canary",
            "metadata": {"name": "web", "namespace": ns.name},
            "spec": {
                "provider": "gatewayapi:v1",
                "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "service": {"port": 8080, "hosts": [host],
                    "gatewayRefs": [{"name": env.gateway_name, "namespace": env.gateway_namespace}]},
                "analysis": {"interval": "5s", "threshold": 2, "stepWeights": steps,
                    "metrics": [{"name": "request-success-rate", "interval": "10s", "thresholdRange": {"min": 90}}]}
            }
        }),
    )
    .await?;
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("serin.dev", "v1beta1", "Canary"),
        "canaries",
    );
    let canaries = Api::<DynamicObject>::namespaced_with(client.clone(), &ns.name, &ar);
    let phase = |c: &DynamicObject| c.data["status"]["phase"].as_str().unwrap_or("").to_string();
    wait_phase(&canaries, "Initialized", &phase).await?;
    let url = format!("{}/", env.gateway);
    serin_e2e::wait_route_serves(&url, &host, &["v1"], Duration::from_secs(30)).await?;
    let bg_spec = LoadSpec::new(&url)
        .host(&host)
        .rate(20.0)
        .duration(Duration::from_secs(180));
    let bg = tokio::spawn(async move { load::run(&bg_spec).await });
    tokio::time::sleep(Duration::from_secs(3)).await;

    let before = counters(&op.metrics().await?);
    let started = Instant::now();
    let template = serde_json::to_value(
        app.clone()
            .version("v2")
            .deployment()?
            .spec
            .map(|s| s.template),
    )?;
    Api::<Deployment>::namespaced(client.clone(), &ns.name)
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": template}})),
        )
        .await?;
    wait_phase(&canaries, "Succeeded", &phase).await?;
    let took = started.elapsed();
    let after = counters(&op.metrics().await?);
    bg.abort();

    // Analysis steps: one per weight, one final analysis before promotion, the
    // promotion and the finalisation.
    let n_steps = (steps.len() + 3) as f64;
    println!(
        "release of {} steps took {:.1}s",
        n_steps,
        took.as_secs_f64()
    );
    println!(
        "{:<8} {:<28} {:>7} {:>9}",
        "verb", "resource", "total", "per step"
    );
    let (mut reads_watched, mut reads_other, mut writes) = (0.0, 0.0, 0.0);
    for ((verb, kind), v) in &after {
        let d = v - before
            .get(&(verb.clone(), kind.clone()))
            .copied()
            .unwrap_or(0.0);
        if d <= 0.0 {
            continue;
        }
        println!("{verb:<8} {kind:<28} {d:>7} {:>9.2}", d / n_steps);
        let base = kind.split('/').next().unwrap_or("");
        match verb.as_str() {
            "get" | "list" if WATCHED.contains(&base) => reads_watched += d,
            "get" | "list" => reads_other += d,
            "create" | "patch" | "update" | "delete" => writes += d,
            _ => {}
        }
    }
    println!(
        "per step: {:.2} reads of watched kinds, {:.2} other reads, {:.2} writes (incl. Events)",
        reads_watched / n_steps,
        reads_other / n_steps,
        writes / n_steps
    );
    drop(op);
    ns.cleanup().await?;
    Ok(())
}

async fn wait_phase(
    api: &Api<DynamicObject>,
    want: &str,
    phase: &dyn Fn(&DynamicObject) -> String,
) -> Result<()> {
    let start = Instant::now();
    loop {
        let c = api.get("web").await?;
        if phase(&c) == want {
            return Ok(());
        }
        if phase(&c) == "Failed" || start.elapsed() > Duration::from_secs(240) {
            bail!("waiting for {want}: {}", c.data["status"]);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
