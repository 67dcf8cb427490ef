//! `serin-bench-scale`: N Canaries released at once on the local cluster, to see what
//! one operator replica costs and how late its steps run as N grows.
//!
//! Each Canary (provider `istio`: its VirtualService is only written to the API
//! server, nothing serves it, so the figure is the operator's and not a data plane's)
//! targets a Deployment of one *virtual* pod (the kubelet simulator reports it Ready
//! at once, without a process), runs 5 steps of 10 s with one Prometheus query and
//! one webhook gate each. All N targets get a new revision in the same moment; one
//! canary's gate starts failing mid-run (threshold 1).
//!
//! Printed: step lateness (a step's time minus its due time, the previous step +
//! interval), API requests by verb and resource as the API server counts them
//! (`apiserver_request_total`, everyone's) beside the operator's own counter, the
//! operator's peak RSS and CPU seconds, the time until all are initialized and
//! promoted, and the breach-to-100%-primary time. A benchmark: it asserts nothing.
//!
//! ```sh
//! serin-bench-scale --canaries 100
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use serin_e2e::operator::{Operator, repo_root};
use serin_e2e::webhook::WebhookReceiver;
use serin_e2e::{ClusterEnv, TestNamespace, apply_json, wait_for};

#[derive(Parser, Debug)]
#[command(name = "serin-bench-scale")]
struct Args {
    /// Number of Canaries (and target Deployments).
    #[arg(long, default_value_t = 100)]
    canaries: usize,
    /// Analysis interval in seconds.
    #[arg(long, default_value_t = 10)]
    interval: u64,
    /// Objects created or patched at once (the API server has 2 cores).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Give up waiting for all promotions after this many seconds.
    #[arg(long, default_value_t = 1800)]
    timeout: u64,
    /// Extra arguments for `serin run` (repeatable), e.g. `--operator-arg=--foo`.
    #[arg(long, allow_hyphen_values = true)]
    operator_arg: Vec<String>,
    /// Leave the namespace in place afterwards.
    #[arg(long)]
    keep: bool,
}

const STEPS: [u32; 5] = [10, 20, 30, 40, 50];
/// Cheap and always 1 on the local cluster: Prometheus scrapes Traefik.
const QUERY: &str = "sum(up{job=\"traefik\"})";

#[tokio::main]
async fn main() {
    serin_e2e::ensure_crypto();
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("bench-scale failed: {e:#}");
        std::process::exit(1);
    }
}

/// One status of one Canary as the watch delivered it.
#[derive(Clone, Debug)]
struct Seen {
    at: SystemTime,
    phase: String,
    weight: u64,
    last_step: Option<DateTime<Utc>>,
}

type History = Arc<Mutex<HashMap<String, Vec<Seen>>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn canary_name(i: usize) -> String {
    format!("app-{i:04}")
}

async fn run(args: Args) -> Result<()> {
    let n = args.canaries;
    if n == 0 {
        bail!("--canaries must be at least 1");
    }
    let env = ClusterEnv::load().context("no cluster: run e2e/cluster.sh up first")?;
    let client = env.client().await?;
    preflight(&env, &client).await?;
    let ns = TestNamespace::create(&client, "bench-scale").await?;
    let result = bench(&args, &env, &client, &ns.name).await;
    if args.keep {
        eprintln!("namespace {} kept", ns.name);
        std::mem::forget(ns);
    } else {
        eprintln!("deleting namespace {}...", ns.name);
        if let Err(e) = ns.cleanup().await {
            eprintln!("cleanup: {e:#}");
        }
    }
    result
}

/// Fails with what is missing: the Istio CRDs (installed from e2e/crds when absent),
/// Prometheus answering the query, the API server's /metrics, and a simulator with
/// virtual pods.
async fn preflight(env: &ClusterEnv, client: &Client) -> Result<()> {
    let crds = repo_root().join("e2e/crds/istio.yaml");
    let out = tokio::process::Command::new("kubectl")
        .args(["apply", "-f"])
        .arg(&crds)
        .env("KUBECONFIG", &env.kubeconfig)
        .output()
        .await
        .context("missing: kubectl (to install the Istio CRDs)")?;
    if !out.status.success() {
        bail!(
            "missing: Istio CRDs ({}): {}",
            crds.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v = serin_e2e::prom_sum(&env.prometheus, QUERY)
        .await
        .with_context(|| format!("missing: Prometheus at {}", env.prometheus))?;
    if v < 1.0 {
        bail!(
            "missing: Prometheus' traefik target ({QUERY} = {v}); is Traefik up? (e2e/cluster.sh status)"
        );
    }
    apiserver_metrics(client)
        .await
        .context("missing: the API server's /metrics (admin token)")?;
    Ok(())
}

async fn apiserver_metrics(client: &Client) -> Result<String> {
    let req = http::Request::get("/metrics")
        .body(Vec::new())
        .context("building /metrics request")?;
    Ok(client.request_text(req).await?)
}

/// `name{labels} value` lines of one metric, as label maps and values.
fn samples(text: &str, metric: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let prefix = format!("{metric}{{");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| {
            let (head, value) = l.rsplit_once(' ')?;
            let body = head.strip_prefix(&prefix)?.strip_suffix('}')?;
            let mut labels = BTreeMap::new();
            let mut rest = body;
            while let Some(eq) = rest.find("=\"") {
                let key = rest[..eq].trim_start_matches(',').to_string();
                let after = &rest[eq + 2..];
                let end = after.find('"')?;
                labels.insert(key, after[..end].to_string());
                rest = &after[end + 1..];
            }
            Some((labels, value.parse().ok()?))
        })
        .collect()
}

type Counts = BTreeMap<(String, String), f64>;

/// The API server's request counts by (verb, resource[/subresource]).
fn apiserver_counts(text: &str) -> Counts {
    let mut out = Counts::new();
    for (l, v) in samples(text, "apiserver_request_total") {
        let verb = match l.get("verb").map(String::as_str).unwrap_or("") {
            "POST" => "create".to_string(),
            "PUT" => "update".to_string(),
            other => other.to_lowercase(),
        };
        let mut kind = l.get("resource").cloned().unwrap_or_default();
        if kind.is_empty() {
            continue;
        }
        if let Some(s) = l.get("subresource").filter(|s| !s.is_empty()) {
            kind = format!("{kind}/{s}");
        }
        *out.entry((verb, kind)).or_default() += v;
    }
    out
}

fn operator_counts(text: &str) -> Counts {
    let mut out = Counts::new();
    for (l, v) in samples(text, "serin_kube_api_requests_total") {
        let (Some(verb), Some(kind)) = (l.get("verb"), l.get("kind")) else {
            continue;
        };
        *out.entry((verb.clone(), kind.clone())).or_default() += v;
    }
    out
}

/// Cumulative `serin_reconcile_duration_seconds` buckets by upper bound.
fn reconcile_buckets(text: &str) -> Vec<(String, f64)> {
    samples(text, "serin_reconcile_duration_seconds_bucket")
        .into_iter()
        .filter_map(|(l, v)| Some((l.get("le")?.clone(), v)))
        .collect()
}

fn delta(after: &Counts, before: &Counts) -> Counts {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d > 0.0)
        .collect()
}

/// Peak RSS (VmHWM, KiB) and CPU seconds (user + system) of a process.
fn proc_usage(pid: u32) -> Option<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from field 3 on.
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((hwm, ticks / hz.max(1.0)))
}

fn deployment(ns: &str, name: &str, version: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {
                    "labels": {"app": name},
                    "annotations": {"serin.dev/e2e-virtual": "true"}
                },
                "spec": {"containers": [{
                    "name": "app", "image": "serin-sample-app",
                    "env": [{"name": "VERSION", "value": version}],
                    "ports": [{"name": "http", "containerPort": 8080}]
                }]}
            }
        }
    })
}

fn canary(ns: &str, name: &str, interval: u64, gate: &str, threshold: u32) -> Value {
    json!({
        "apiVersion": "serin.dev/v1beta1", "kind": "Canary",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "provider": "istio",
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "progressDeadlineSeconds": 3600,
            "service": {"port": 8080},
            "analysis": {
                "interval": format!("{interval}s"), "threshold": threshold,
                "stepWeights": STEPS,
                "metrics": [{"name": "traefik-up", "query": QUERY,
                             "thresholdRange": {"min": 1}}],
                "webhooks": [{"name": "gate", "url": gate, "timeout": "5s"}]
            }
        }
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn secs_between(a: SystemTime, b: SystemTime) -> f64 {
    match b.duration_since(a) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

fn to_system(t: DateTime<Utc>) -> SystemTime {
    SystemTime::from(t)
}

/// Canaries' status, recorded at every watch event.
fn watch_canaries(client: &Client, ns: &str, history: History) -> tokio::task::JoinHandle<()> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("serin.dev", "v1beta1", "Canary"),
        "canaries",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    tokio::spawn(async move {
        let mut stream = watcher::watcher(api, watcher::Config::default()).boxed();
        while let Some(ev) = stream.next().await {
            let obj = match ev {
                Ok(Event::Apply(o) | Event::InitApply(o)) => o,
                Ok(_) => continue,
                Err(e) => {
                    eprintln!("canary watch: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let s = &obj.data["status"];
            let seen = Seen {
                at: SystemTime::now(),
                phase: s["phase"].as_str().unwrap_or("").to_string(),
                weight: s["canaryWeight"].as_u64().unwrap_or(0),
                last_step: s["lastStepTime"]
                    .as_str()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc)),
            };
            let mut h = lock(&history);
            let v = h.entry(obj.name_any()).or_default();
            let same = v.last().is_some_and(|l| {
                l.phase == seen.phase && l.weight == seen.weight && l.last_step == seen.last_step
            });
            if !same {
                v.push(seen);
            }
        }
    })
}

/// The canary's weight in a VirtualService: the sum over routes to `<name>-canary`.
fn vs_canary_weight(vs: &DynamicObject, name: &str) -> u64 {
    let host = format!("{name}-canary");
    vs.data["spec"]["http"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|h| h["route"].as_array().into_iter().flatten())
        .filter(|r| r["destination"]["host"].as_str() == Some(host.as_str()))
        .map(|r| r["weight"].as_u64().unwrap_or(0))
        .sum()
}

/// Times the bad canary's VirtualService was seen with no canary weight.
fn watch_routes(
    client: &Client,
    ns: &str,
    name: String,
    primary_at: Arc<Mutex<Vec<(SystemTime, u64)>>>,
) -> tokio::task::JoinHandle<()> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("networking.istio.io", "v1beta1", "VirtualService"),
        "virtualservices",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    tokio::spawn(async move {
        let mut stream = watcher::watcher(api, cfg).boxed();
        while let Some(ev) = stream.next().await {
            if let Ok(Event::Apply(o) | Event::InitApply(o)) = ev {
                lock(&primary_at).push((SystemTime::now(), vs_canary_weight(&o, &name)));
            }
        }
    })
}

async fn for_all<F, Fut>(n: usize, concurrency: usize, what: &str, f: F) -> Result<()>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    futures::stream::iter(0..n)
        .map(|i| {
            let fut = f(i);
            async move {
                fut.await
                    .with_context(|| format!("{what} {}", canary_name(i)))
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

fn count_phase(history: &History, phase: &str) -> usize {
    lock(history)
        .values()
        .filter(|v| v.last().is_some_and(|s| s.phase == phase))
        .count()
}

async fn wait_count(
    history: &History,
    want: usize,
    phases: &[&str],
    timeout: Duration,
    what: &str,
) -> Result<Duration> {
    let start = Instant::now();
    let mut last_print = Instant::now();
    loop {
        let done: usize = phases.iter().map(|p| count_phase(history, p)).sum();
        if done >= want {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            bail!("{what}: only {done} of {want} after {timeout:?}");
        }
        if last_print.elapsed() > Duration::from_secs(15) {
            eprintln!(
                "  {what}: {done}/{want} after {:.0}s",
                start.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn bench(args: &Args, env: &ClusterEnv, client: &Client, ns: &str) -> Result<()> {
    let n = args.canaries;
    let interval = args.interval;
    let bad = canary_name(n / 2);

    // The simulator must know virtual pods, or 2N real processes would start.
    let probe = deployment(ns, "virtual-probe", "v1");
    apply_json(client, probe).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    wait_for(
        "a virtual pod Ready (does the kubelet simulator have virtual mode? rebuild and run e2e/cluster.sh up)",
        Duration::from_secs(60),
        || {
            let pods = pods.clone();
            async move {
                let list = pods.list(&Default::default()).await?;
                Ok(list
                    .items
                    .iter()
                    .find(|p| {
                        p.status
                            .as_ref()
                            .and_then(|s| s.container_statuses.as_ref())
                            .is_some_and(|c| {
                                c.iter().all(|c| {
                                    c.ready
                                        && c.container_id
                                            .as_deref()
                                            .is_some_and(|id| id.contains("virtual"))
                                })
                            })
                    })
                    .map(|_| ()))
            }
        },
    )
    .await?;
    Api::<Deployment>::namespaced(client.clone(), ns)
        .delete("virtual-probe", &Default::default())
        .await?;

    let gates = WebhookReceiver::start().await?;
    let extra: Vec<&str> = ["--provider", "istio"]
        .into_iter()
        .chain(args.operator_arg.iter().map(String::as_str))
        .collect();
    let op = Operator::start(env, ns, &extra).await?;
    let pid = op.pid().context("operator pid")?;
    let history: History = Arc::default();
    let watch = watch_canaries(client, ns, history.clone());
    let routes_seen: Arc<Mutex<Vec<(SystemTime, u64)>>> = Arc::default();
    let route_watch = watch_routes(client, ns, bad.clone(), routes_seen.clone());

    eprintln!(
        "creating {n} Deployments and Canaries ({} at once)...",
        args.concurrency
    );
    let created = Instant::now();
    for_all(n, args.concurrency, "creating", |i| {
        let client = client.clone();
        let name = canary_name(i);
        let gate = gates.url(&format!("/gate/{name}"));
        let threshold = if name == bad { 1 } else { 2 };
        async move {
            apply_json(&client, deployment(ns, &name, "v1")).await?;
            apply_json(&client, canary(ns, &name, interval, &gate, threshold)).await?;
            Ok(())
        }
    })
    .await?;
    let create_took = created.elapsed();
    let to_initialized = wait_count(
        &history,
        n,
        &["Initialized"],
        Duration::from_secs(args.timeout),
        "initialized",
    )
    .await?
        + create_took;
    eprintln!(
        "all {n} Initialized {:.1}s after the first create",
        to_initialized.as_secs_f64()
    );
    // Let the initialisation's trailing writes settle before counting.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let api_before = apiserver_counts(&apiserver_metrics(client).await?);
    let op_text = op.metrics().await?;
    let op_before = operator_counts(&op_text);
    let rec_before = reconcile_buckets(&op_text);
    let (_, cpu_before) = proc_usage(pid).context("operator /proc")?;
    let release_start = SystemTime::now();
    let released = Instant::now();
    eprintln!("new revision for all {n} targets...");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    for_all(n, args.concurrency, "patching", |i| {
        let deployments = deployments.clone();
        async move {
            let patch = json!({"spec": {"template": {"spec": {"containers": [
                {"name": "app", "env": [{"name": "VERSION", "value": "v2"}]}
            ]}}}});
            deployments
                .patch(
                    &canary_name(i),
                    &PatchParams::default(),
                    &Patch::Strategic(patch),
                )
                .await?;
            Ok(())
        }
    })
    .await?;
    let patch_took = released.elapsed();

    // The bad canary's gate fails right after its second step: the worst case, a
    // whole interval before the next check can see it.
    let mut breach: Option<SystemTime> = None;
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let mut last_print = Instant::now();
    loop {
        if breach.is_none() {
            let w = lock(&history)
                .get(&bad)
                .and_then(|v| v.last().map(|s| (s.phase.clone(), s.weight)));
            if let Some((phase, w)) = w
                && phase == "Progressing"
                && w >= STEPS[1] as u64
            {
                gates.set_status(&format!("/gate/{bad}"), 500);
                breach = Some(SystemTime::now());
                eprintln!("gate of {bad} fails from now on");
            }
        }
        let done = count_phase(&history, "Succeeded") + count_phase(&history, "Failed");
        if done >= n && breach.is_some() {
            break;
        }
        if Instant::now() > deadline {
            eprintln!("timed out: {done} of {n} finished");
            break;
        }
        if last_print.elapsed() > Duration::from_secs(15) {
            eprintln!(
                "  finished: {done}/{n} after {:.0}s",
                released.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let to_promoted = released.elapsed();
    let (rss_kib, cpu_after) = proc_usage(pid).context("operator /proc")?;
    let op_text = op.metrics().await?;
    let op_after = operator_counts(&op_text);
    let rec_after = reconcile_buckets(&op_text);
    let api_after = apiserver_counts(&apiserver_metrics(client).await?);
    watch.abort();
    route_watch.abort();

    // Lateness: each step after the first of a release is due one interval after the
    // step before it (its lastStepTime), while Progressing.
    let hist = lock(&history).clone();
    let mut stamped = Vec::new();
    let mut observed = Vec::new();
    let mut steps = 0usize;
    let (mut succeeded, mut failed) = (0, 0);
    for (name, seen) in &hist {
        let in_release: Vec<&Seen> = seen.iter().filter(|s| s.at >= release_start).collect();
        let mut prev: Option<(&Seen, DateTime<Utc>)> = None;
        for s in in_release {
            let Some(t) = s.last_step else { continue };
            if prev.is_some_and(|(_, pt)| pt == t) {
                continue;
            }
            if to_system(t) < release_start {
                continue;
            }
            steps += 1;
            if let Some((p, pt)) = prev
                && p.phase == "Progressing"
            {
                let due = to_system(pt) + Duration::from_secs(interval);
                stamped.push(secs_between(due, to_system(t)));
                observed.push(secs_between(due, s.at));
            }
            prev = Some((s, t));
        }
        match seen.last().map(|s| s.phase.as_str()) {
            Some("Succeeded") => succeeded += 1,
            Some("Failed") if *name != bad => failed += 1,
            _ => {}
        }
    }
    stamped.sort_by(f64::total_cmp);
    observed.sort_by(f64::total_cmp);

    let to_primary = breach.and_then(|b| {
        lock(&routes_seen)
            .iter()
            .find(|(at, w)| *at >= b && *w == 0)
            .map(|(at, _)| secs_between(b, *at))
    });
    let failed_seen = breach.and_then(|b| {
        hist.get(&bad)?
            .iter()
            .find(|s| s.phase == "Failed" && s.at >= b)
            .map(|s| secs_between(b, s.at))
    });

    println!();
    println!(
        "serin-bench-scale: {n} canaries, interval {interval}s, steps {STEPS:?}, provider istio, virtual pods"
    );
    println!(
        "created in {:.1}s; all Initialized {:.1}s after the first create",
        create_took.as_secs_f64(),
        to_initialized.as_secs_f64()
    );
    println!(
        "new revision patched into {n} targets in {:.1}s; all finished {:.1}s after the first patch \
         ({succeeded} Succeeded, {failed} good ones Failed, bad one {})",
        patch_took.as_secs_f64(),
        to_promoted.as_secs_f64(),
        hist.get(&bad)
            .and_then(|v| v.last())
            .map(|s| s.phase.as_str())
            .unwrap_or("?")
    );
    let fmt = |v: &[f64], p: f64| format!("{:.2}", percentile(v, p));
    println!(
        "step lateness over {} steps (s): stamped p50 {} p99 {} max {}; seen by a watch p50 {} p99 {} max {}",
        stamped.len(),
        fmt(&stamped, 50.0),
        fmt(&stamped, 99.0),
        fmt(&stamped, 100.0),
        fmt(&observed, 50.0),
        fmt(&observed, 99.0),
        fmt(&observed, 100.0),
    );
    println!(
        "breach -> 100% primary: {} (Failed seen after {}); threshold 1, gate failing right after a step",
        to_primary.map_or("not seen".into(), |s| format!("{s:.2}s")),
        failed_seen.map_or("not seen".into(), |s| format!("{s:.2}s")),
    );
    println!(
        "operator: peak RSS {:.1} MiB, CPU {:.1}s during the release ({:.1}s since start)",
        rss_kib as f64 / 1024.0,
        cpu_after - cpu_before,
        cpu_after
    );
    let rec: Vec<(String, f64)> = rec_after
        .iter()
        .map(|(le, v)| {
            let b = rec_before
                .iter()
                .find(|(l, _)| l == le)
                .map_or(0.0, |(_, b)| *b);
            (le.clone(), v - b)
        })
        .collect();
    let total_rec = rec.last().map_or(0.0, |(_, v)| *v);
    println!(
        "reconciles during the release: {total_rec} (cumulative share by duration: {})",
        rec.iter()
            .filter(|(le, _)| ["0.1", "0.5", "1.0", "2.5", "5.0", "10.0"].contains(&le.as_str()))
            .map(|(le, v)| format!("<={le}s {:.1}%", 100.0 * v / total_rec.max(1.0)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let api = delta(&api_after, &api_before);
    let opc = delta(&op_after, &op_before);
    let steps_f = steps.max(1) as f64;
    println!(
        "API requests during the release ({steps} steps stamped, i.e. {:.1} per release):",
        steps as f64 / n as f64
    );
    println!(
        "{:<8} {:<32} {:>10} {:>10} {:>10} {:>10}",
        "verb", "resource", "apiserver", "per step", "operator", "per step"
    );
    let mut keys: Vec<&(String, String)> = api.keys().chain(opc.keys()).collect();
    keys.sort();
    keys.dedup();
    let (mut op_reads, mut op_writes) = (0.0, 0.0);
    for k in keys {
        let a = api.get(k).copied().unwrap_or(0.0);
        let o = opc.get(k).copied().unwrap_or(0.0);
        println!(
            "{:<8} {:<32} {:>10} {:>10.2} {:>10} {:>10.2}",
            k.0,
            k.1,
            a,
            a / steps_f,
            o,
            o / steps_f
        );
        match k.0.as_str() {
            "get" | "list" => op_reads += o,
            "create" | "patch" | "update" | "delete" => op_writes += o,
            _ => {}
        }
    }
    let total: f64 = api.values().sum();
    println!(
        "all API requests {total} ({:.2} per step); operator: {:.2} reads and {:.2} writes per step",
        total / steps_f,
        op_reads / steps_f,
        op_writes / steps_f
    );
    drop(op);
    Ok(())
}
