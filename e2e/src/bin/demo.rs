//! The local demo: on the cluster from `e2e/cluster.sh up`, runs the operator, puts
//! the sample app behind Traefik (Gateway API) with steady load, then releases a good
//! version (promoted) and a bad one (20% errors, rolled back on real success-rate
//! metrics), printing phase, weight, the canary's real share of traffic and every
//! check's value as it goes.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::{Value, json};
use serin_e2e::load::{self, LoadSpec};
use serin_e2e::operator::Operator;
use serin_e2e::{ClusterEnv, SampleApp, TestNamespace, apply_json};

#[tokio::main]
async fn main() {
    serin_e2e::ensure_crypto();
    if let Err(e) = run().await {
        eprintln!("demo failed: {e:#}");
        std::process::exit(1);
    }
}

async fn run() -> Result<()> {
    let env = ClusterEnv::load().context("no cluster: run e2e/cluster.sh up first")?;
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "demo").await?;
    println!("namespace {}", ns.name);
    let op = Operator::start(&env, &ns.name, &["--provider", "gatewayapi:v1"]).await?;
    println!(
        "operator running as ServiceAccount serin-system/serin; log: {}",
        op.log.display()
    );

    let host = "podinfo.demo.local";
    let mut app = SampleApp::new(&ns.name, "podinfo", &env.sample_app_command()).replicas(2);
    app.deploy(&client).await?;
    apply_json(
        &client,
        json!({
            "apiVersion": "serin.dev/v1beta1", "kind": "Canary",
            "metadata": {"name": "podinfo", "namespace": ns.name},
            "spec": {
                "provider": "gatewayapi:v1",
                "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo"},
                "progressDeadlineSeconds": 60,
                "service": {
                    "port": 8080, "hosts": [host],
                    "gatewayRefs": [{"name": env.gateway_name, "namespace": env.gateway_namespace}]
                },
                "analysis": {
                    "interval": "10s", "threshold": 2, "stepWeights": [10, 30, 50],
                    "metrics": [
                        {"name": "request-success-rate", "interval": "10s", "thresholdRange": {"min": 99}},
                        {"name": "request-duration", "interval": "10s", "thresholdRange": {"max": 500}}
                    ]
                }
            }
        }),
    )
    .await?;
    let url = format!("{}/", env.gateway);
    let canaries = {
        let ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("serin.dev", "v1beta1", "Canary"),
            "canaries",
        );
        Api::<DynamicObject>::namespaced_with(client.clone(), &ns.name, &ar)
    };
    follow(&canaries, "Initialized", &url, host, &op).await?;
    serin_e2e::wait_route_serves(&url, host, &["v1"], Duration::from_secs(30)).await?;

    let bg_spec = LoadSpec::new(&url)
        .host(host)
        .rate(30.0)
        .duration(Duration::from_secs(600));
    let bg = tokio::spawn(async move { load::run(&bg_spec).await });

    println!("\n== release v2 (good) ==");
    app = app.version("v2");
    release(&client, &app).await?;
    follow(&canaries, "Succeeded", &url, host, &op).await?;

    println!("\n== release v3 (20% errors) ==");
    app = app.version("v3").env("ERROR_RATE", "0.2");
    release(&client, &app).await?;
    follow(&canaries, "Failed", &url, host, &op).await?;
    // Data planes apply a route change within a second or two; the canary's pods stay
    // up meanwhile, so no request is lost.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let back = load::run(&LoadSpec::new(&url).host(host).requests(200, 200.0)).await?;
    println!(
        "after rollback: {} of {} requests answered, {} by v2 (the primary)",
        back.responses,
        back.sent,
        back.count("v2")
    );
    bg.abort();
    drop(op);
    ns.cleanup().await?;
    println!("\ndemo done");
    Ok(())
}

async fn release(client: &Client, app: &SampleApp) -> Result<()> {
    let template = serde_json::to_value(app.deployment()?.spec.map(|s| s.template))?;
    Api::<Deployment>::namespaced(client.clone(), &app.namespace)
        .patch(
            &app.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": template}})),
        )
        .await?;
    println!("patched the Deployment to {}", app.version);
    Ok(())
}

/// Prints each change of phase or weight (with the canary's measured share of 200
/// real requests and the last checks) until `want`.
async fn follow(
    api: &Api<DynamicObject>,
    want: &str,
    url: &str,
    host: &str,
    op: &Operator,
) -> Result<()> {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        let c = api.get("podinfo").await?;
        let s = c.data.get("status").cloned().unwrap_or(Value::Null);
        let phase = s["phase"].as_str().unwrap_or("").to_string();
        let weight = s["canaryWeight"].as_u64().unwrap_or(0);
        let key = format!("{phase}/{weight}/{}", s["failedChecks"]);
        if key != last {
            last = key;
            let checks: Vec<String> = s["lastAnalysis"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    format!(
                        "{}={} ({}, {})",
                        c["name"].as_str().unwrap_or("?"),
                        c["value"]
                            .as_f64()
                            .map(|v| format!("{v:.2}"))
                            .unwrap_or("-".into()),
                        c["threshold"].as_str().unwrap_or(""),
                        c["verdict"].as_str().unwrap_or("")
                    )
                })
                .collect();
            let mut line = format!(
                "[{:>5.1}s] {phase:<16} weight {weight:>3}  failedChecks {}",
                start.elapsed().as_secs_f64(),
                s["failedChecks"]
            );
            if phase == "Progressing" && weight > 0 {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let r = load::run(&LoadSpec::new(url).host(host).requests(200, 200.0)).await?;
                let canary_version = r.by_version.keys().max().cloned().unwrap_or_default();
                line.push_str(&format!(
                    "  canary answered {:.0}% of 200 requests",
                    100.0 * r.version_share(&canary_version)
                ));
            }
            if !checks.is_empty() {
                line.push_str(&format!("  checks: {}", checks.join(", ")));
            }
            if let Some(h) = s["holdReason"].as_str() {
                line.push_str(&format!("  holding: {h}"));
            }
            println!("{line}");
        }
        if phase == want {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(300) {
            bail!("no {want} after 300 s; operator log:\n{}", op.log_tail(30));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
