//! `serin-bench-rollback`: how long a bad release serves traffic before Serin takes it
//! all back, measured from the outside. On the cluster from `e2e/cluster.sh up`, a
//! continuous load generator sends requests through Traefik while a release that
//! fails half its requests is rolled out (Gateway API, request-success-rate). The
//! time runs from the first 5xx answered by the bad version to its last response,
//! confirmed by 2 s without any. Prints a table per failure threshold; asserts
//! nothing.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::{Value, json};
use serin_e2e::operator::Operator;
use serin_e2e::{ClusterEnv, SampleApp, TestNamespace, apply_json};

/// Requests per second of the probe: 50 gives 20 ms resolution.
const RATE: f64 = 50.0;
const INTERVAL_SECS: u64 = 10;
/// No bad-version answer for this long means all traffic is back on the primary.
const QUIET: Duration = Duration::from_secs(2);

#[tokio::main]
async fn main() {
    serin_e2e::ensure_crypto();
    if let Err(e) = run().await {
        eprintln!("bench-rollback failed: {e:#}");
        std::process::exit(1);
    }
}

/// One answer the probe got: when, from which version, with which status.
#[derive(Clone)]
struct Answer {
    at: Instant,
    version: String,
    status: u16,
}

struct Row {
    threshold: u32,
    to_failed: Duration,
    to_primary: Duration,
    bad_answers: usize,
    bad_5xx: usize,
}

async fn run() -> Result<()> {
    let env = ClusterEnv::load().context("no cluster: run e2e/cluster.sh up first")?;
    let mut rows = Vec::new();
    for threshold in [1, 2] {
        eprintln!("threshold {threshold}: running...");
        rows.push(once(&env, threshold).await?);
    }
    println!(
        "rollback time, interval {INTERVAL_SECS}s, bad version answering 50% 5xx, probe {RATE} rps"
    );
    println!(
        "{:>9} | {:>24} | {:>28} | {:>11} | {:>8}",
        "threshold",
        "first 5xx -> Failed (s)",
        "first 5xx -> 100% primary (s)",
        "bad answers",
        "bad 5xx"
    );
    for r in rows {
        println!(
            "{:>9} | {:>24.1} | {:>28.1} | {:>11} | {:>8}",
            r.threshold,
            r.to_failed.as_secs_f64(),
            r.to_primary.as_secs_f64(),
            r.bad_answers,
            r.bad_5xx
        );
    }
    Ok(())
}

fn canary_phase(c: &DynamicObject) -> String {
    c.data["status"]["phase"].as_str().unwrap_or("").to_string()
}

async fn once(env: &ClusterEnv, threshold: u32) -> Result<Row> {
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "bench-rb").await?;
    let op = Operator::start(env, &ns.name, &["--provider", "gatewayapi:v1"]).await?;
    let host = format!("{}.e2e.local", ns.name);
    let app = SampleApp::new(&ns.name, "web", &env.sample_app_command()).replicas(2);
    app.deploy(&client).await?;
    apply_json(
        &client,
        json!({
            "apiVersion": "serin.dev/v1beta1", "kind": "Canary",
            "metadata": {"name": "web", "namespace": ns.name},
            "spec": {
                "provider": "gatewayapi:v1",
                "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "progressDeadlineSeconds": 120,
                "service": {
                    "port": 8080,
                    "hosts": [host],
                    "gatewayRefs": [{"name": env.gateway_name, "namespace": env.gateway_namespace}]
                },
                "analysis": {
                    "interval": format!("{INTERVAL_SECS}s"), "threshold": threshold,
                    "stepWeights": [10, 20, 30, 40, 50],
                    "metrics": [{"name": "request-success-rate", "interval": "10s",
                                 "thresholdRange": {"min": 99}}]
                }
            }
        }),
    )
    .await?;
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("serin.dev", "v1beta1", "Canary"),
        "canaries",
    );
    let canaries: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns.name, &ar);
    wait_until(Duration::from_secs(60), || async {
        Ok(canary_phase(&canaries.get("web").await?) == "Initialized")
    })
    .await
    .context("canary not Initialized")?;
    let url = format!("{}/", env.gateway);
    serin_e2e::wait_route_serves(&url, &host, &["v1"], Duration::from_secs(30)).await?;

    let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let probe = tokio::spawn(probe(url, host, answers.clone()));
    // Let the success rate have a few seconds of good data before the release.
    tokio::time::sleep(Duration::from_secs(5)).await;

    let bad = app.version("v2").env("ERROR_RATE", "0.5");
    let template = serde_json::to_value(bad.deployment()?.spec.map(|s| s.template))?;
    Api::<Deployment>::namespaced(client.clone(), &ns.name)
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": template}})),
        )
        .await?;

    let mut failed_at = None;
    let deadline = Instant::now() + Duration::from_secs(180);
    let result = loop {
        if Instant::now() > deadline {
            bail!("no rollback within 180s:\n{}", op.log_tail(30));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if failed_at.is_none() {
            let c = canaries.get("web").await?;
            match canary_phase(&c).as_str() {
                "Failed" => failed_at = Some(Instant::now()),
                "Succeeded" => bail!("the bad release was promoted: {}", c.data["status"]),
                _ => {}
            }
        }
        let got = lock(&answers).clone();
        let Some(first_5xx) = got
            .iter()
            .find(|a| a.version == "v2" && a.status >= 500)
            .map(|a| a.at)
        else {
            continue;
        };
        let Some(failed) = failed_at else { continue };
        let bad: Vec<&Answer> = got.iter().filter(|a| a.version == "v2").collect();
        let last_bad = bad.last().map(|a| a.at).unwrap_or(first_5xx);
        let newest = got.last().map(|a| a.at).unwrap_or(last_bad);
        if newest.saturating_duration_since(last_bad) >= QUIET {
            break Row {
                threshold,
                to_failed: failed.saturating_duration_since(first_5xx),
                to_primary: last_bad.saturating_duration_since(first_5xx),
                bad_answers: bad.len(),
                bad_5xx: bad.iter().filter(|a| a.status >= 500).count(),
            };
        }
    };
    probe.abort();
    drop(op);
    ns.cleanup().await?;
    Ok(result)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends one request every 1/RATE s (each in its own task, so a slow answer does
/// not delay the next) and records every answer.
async fn probe(url: String, host: String, answers: Arc<Mutex<Vec<Answer>>>) {
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(h) => h,
        Err(e) => {
            eprintln!("probe: {e}");
            return;
        }
    };
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / RATE));
    loop {
        tick.tick().await;
        let (http, url, host, answers) = (http.clone(), url.clone(), host.clone(), answers.clone());
        tokio::spawn(async move {
            let Ok(resp) = http.get(&url).header("host", host).send().await else {
                return;
            };
            let status = resp.status().as_u16();
            let header = resp
                .headers()
                .get("x-version")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let version = match header {
                Some(v) => v,
                None => resp
                    .json::<Value>()
                    .await
                    .ok()
                    .and_then(|v| v["version"].as_str().map(str::to_string))
                    .unwrap_or_else(|| "unknown".into()),
            };
            let mut a = lock(&answers);
            a.push(Answer {
                at: Instant::now(),
                version,
                status,
            });
            // Answers arrive out of order; keep them sorted by time.
            a.sort_by_key(|x| x.at);
        });
    }
}

async fn wait_until<F, Fut>(timeout: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    while !check().await? {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(())
}
