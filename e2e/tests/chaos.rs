//! Issue #11 item 2: crash consistency. The real operator is killed with SIGKILL at
//! random moments (seeded; `SERIN_CHAOS_SEED` replays a run) and restarted each time,
//! while several Canaries release good and bad revisions under steady load through
//! Traefik. Every release must still end as it should, a run's canary weight never
//! goes down before its end, no request goes unanswered, and the target is never at
//! 0 replicas while a route sends it traffic.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use serde_json::{Value, json};
use serin_e2e::canary::{canaries, phase, release, status, weight};
use serin_e2e::load::{self, Steady};
use serin_e2e::operator::Operator;
use serin_e2e::webhook::WebhookReceiver;
use serin_e2e::{ClusterEnv, SampleApp, TestNamespace, apply_json, wait_for};
use tokio::sync::Mutex;

const CANARIES: usize = 5;
const RELEASES_EACH: usize = 4;
/// How long one release may take, operator restarts included.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(120);

/// SplitMix64: small, seedable, and the same on every machine, so a printed seed
/// replays the same schedule of kills and outcomes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[lo, hi)` milliseconds.
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo))
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn seed() -> u64 {
    std::env::var("SERIN_CHAOS_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

fn http_routes(client: &Client, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        "httproutes",
    );
    Api::namespaced_with(client.clone(), ns, &ar)
}

fn canary_spec(env: &ClusterEnv, ns: &str, name: &str, host: &str, gate: &str) -> Value {
    json!({
        "apiVersion": "serin.dev/v1beta1", "kind": "Canary",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "provider": "gatewayapi:v1",
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "progressDeadlineSeconds": 60,
            "service": {
                "port": 8080,
                "hosts": [host],
                "gatewayRefs": [{"name": env.gateway_name, "namespace": env.gateway_namespace}]
            },
            "analysis": {
                "interval": "2s", "threshold": 1, "stepWeights": [30, 60],
                "webhooks": [{"name": "gate", "type": "rollout", "url": gate, "timeout": "2s"}]
            }
        }
    })
}

/// The VERSION the primary's pod template runs.
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

#[derive(Debug, Clone)]
struct Outcome {
    canary: String,
    version: String,
    good: bool,
    phase: String,
    primary_version: String,
    secs: f64,
}

/// What one sample of a Canary saw, for the invariants over time.
#[derive(Debug, Clone)]
struct Sample {
    at: f64,
    phase: String,
    weight: u64,
    revision: String,
}

/// Samples every Canary's status, the targets' replicas and the routes' canary
/// weights until `stop`; returns the violations seen and each Canary's timeline.
async fn sample(
    client: Client,
    ns: String,
    names: Vec<String>,
    stop: Arc<AtomicBool>,
) -> Result<(Vec<String>, BTreeMap<String, Vec<Sample>>)> {
    let t0 = Instant::now();
    let cans = canaries(&client, &ns);
    let deps: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let routes = http_routes(&client, &ns);
    let mut violations = Vec::new();
    let mut timelines: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
    let active = |p: &str| matches!(p, "Progressing" | "WaitingPromotion" | "Promoting");
    while !stop.load(Ordering::Relaxed) {
        let at = t0.elapsed().as_secs_f64();
        // Deployments before routes: a target seen at 0 and then a route to it can
        // only mean the route sent traffic to no pods (scaling up and becoming
        // ready between the two reads takes far longer than they do).
        let (Ok(d), Ok(r), Ok(c)) = (
            deps.list(&ListParams::default()).await,
            routes.list(&ListParams::default()).await,
            cans.list(&ListParams::default()).await,
        ) else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        for name in &names {
            let replicas = d
                .items
                .iter()
                .find(|x| x.metadata.name.as_deref() == Some(name))
                .and_then(|x| x.spec.as_ref()?.replicas);
            let to_canary: i64 = r
                .items
                .iter()
                .flat_map(|x| {
                    x.data["spec"]["rules"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                })
                .flat_map(|rule| rule["backendRefs"].as_array().cloned().unwrap_or_default())
                .filter(|b| b["name"].as_str() == Some(&format!("{name}-canary")))
                .map(|b| b["weight"].as_i64().unwrap_or(1))
                .sum();
            if replicas == Some(0) && to_canary > 0 {
                violations.push(format!(
                    "{at:.1}s: {name} at 0 replicas while its route sends weight {to_canary} to it"
                ));
            }
            let Some(obj) = c
                .items
                .iter()
                .find(|x| x.metadata.name.as_deref() == Some(name))
            else {
                continue;
            };
            let s = obj.data.get("status").cloned().unwrap_or(Value::Null);
            let now = Sample {
                at,
                phase: phase(&s).to_string(),
                weight: weight(&s),
                revision: s["lastAppliedSpec"].as_str().unwrap_or("").to_string(),
            };
            let line = timelines.entry(name.clone()).or_default();
            if let Some(prev) = line.last()
                && prev.revision == now.revision
                && active(&prev.phase)
                && active(&now.phase)
                && now.weight < prev.weight
            {
                violations.push(format!(
                    "{at:.1}s: {name} weight went down within a run: {} ({}) -> {} ({})",
                    prev.weight, prev.phase, now.weight, now.phase
                ));
            }
            if line
                .last()
                .is_none_or(|p| p.phase != now.phase || p.weight != now.weight)
            {
                line.push(now);
            }
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    Ok((violations, timelines))
}

/// Kills the operator with SIGKILL after a random pause, restarts it at once, until
/// `stop`. Returns the last (running) operator and how many kills it did.
async fn chaos(
    env: ClusterEnv,
    ns: String,
    mut op: Operator,
    mut rng: Rng,
    stop: Arc<AtomicBool>,
    kills: Arc<AtomicU32>,
    logs: Arc<Mutex<Vec<std::path::PathBuf>>>,
) -> Result<Operator> {
    while !stop.load(Ordering::Relaxed) {
        // Short lives mostly (a kill lands inside a tick or a watch resync), a long
        // one now and then so the releases keep moving.
        let life = if rng.below(4) == 0 {
            rng.millis(4000, 9000)
        } else {
            rng.millis(300, 4000)
        };
        tokio::time::sleep(life).await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if let Some(st) = op.exited() {
            bail!("the operator exited by itself ({st}): {}", op.log_tail(40));
        }
        op.kill().await?;
        kills.fetch_add(1, Ordering::Relaxed);
        op = Operator::spawn(&env, &ns, &["--provider", "gatewayapi:v1"]).await?;
        logs.lock().await.push(op.log.clone());
    }
    op.wait_ready(Duration::from_secs(30)).await?;
    Ok(op)
}

/// One Canary's releases, one after another; each good or bad as `plan` says
/// (bad: its rollout webhook answers 500).
async fn releases(
    client: Client,
    mut app: SampleApp,
    gate: Arc<WebhookReceiver>,
    plan: Vec<bool>,
) -> Result<Vec<Outcome>> {
    let name = app.name.clone();
    let api = canaries(&client, &app.namespace);
    let deps: Api<Deployment> = Api::namespaced(client.clone(), &app.namespace);
    let path = format!("/gate/{name}");
    let mut out = Vec::new();
    for (i, good) in plan.into_iter().enumerate() {
        let version = format!("v{}", i + 2);
        gate.set_status(&path, if good { 200 } else { 500 });
        let before = status(&api, &name).await?;
        let before_rev = before["lastAppliedSpec"].as_str().unwrap_or("").to_string();
        app = app.version(&version);
        let t0 = Instant::now();
        release(&client, &app).await?;
        let end = wait_for(&format!("{name} {version} to end"), RELEASE_TIMEOUT, || {
            let api = api.clone();
            let (name, before_rev) = (name.clone(), before_rev.clone());
            async move {
                let s = status(&api, &name).await?;
                let rev = s["lastAppliedSpec"].as_str().unwrap_or("");
                let done = matches!(phase(&s), "Succeeded" | "Failed");
                Ok((rev != before_rev && done).then_some(s))
            }
        })
        .await
        .with_context(|| format!("{name} {version} (good: {good})"))?;
        let primary = deps.get(&format!("{name}-primary")).await?;
        let got = template_version(&primary).unwrap_or_default();
        out.push(Outcome {
            canary: name.clone(),
            version: version.clone(),
            good,
            phase: phase(&end).to_string(),
            primary_version: got,
            secs: t0.elapsed().as_secs_f64(),
        });
        // The next revision comes once this one has settled (target drained and at 0):
        // a revision pushed during the drain rolls the target's pods while the data
        // plane may still route to them, which is the user's doing, not a crash's.
        wait_for(
            &format!("{name} target back at 0 after {version}"),
            Duration::from_secs(60),
            || {
                let deps = deps.clone();
                let name = name.clone();
                async move {
                    let d = deps.get(&name).await?;
                    Ok((d.spec.and_then(|s| s.replicas) == Some(0)).then_some(()))
                }
            },
        )
        .await?;
        let last = out.last().map(|o| o.phase.as_str()).unwrap_or("");
        let want = if good { "Succeeded" } else { "Failed" };
        if last != want {
            // Stop this Canary here: the next release would start from a state the
            // assertion below reports anyway.
            eprintln!("{name}: release {i} ended {last}, want {want}: {end}");
            break;
        }
    }
    Ok(out)
}

#[tokio::test]
async fn sigkill_at_random_moments_every_release_ends_as_it_should() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("chaos") else {
        return Ok(());
    };
    let seed = seed();
    let mut rng = Rng(seed);
    // Printed first, so that a run that fails (or hangs) can be replayed.
    eprintln!("chaos: SERIN_CHAOS_SEED={seed}");
    let started = Instant::now();
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-chaos").await?;
    let gate = Arc::new(WebhookReceiver::start().await?);
    let op = Operator::start(&env, &ns.name, &["--provider", "gatewayapi:v1"]).await?;
    let logs = Arc::new(Mutex::new(vec![op.log.clone()]));
    let url = format!("{}/", env.gateway);

    let names: Vec<String> = (0..CANARIES).map(|i| format!("app{i}")).collect();
    let mut apps = Vec::new();
    for name in &names {
        let app = SampleApp::new(&ns.name, name, &env.sample_app_command()).replicas(2);
        app.deploy(&client).await?;
        let host = format!("{name}.{}.e2e.local", ns.name);
        apply_json(
            &client,
            canary_spec(
                &env,
                &ns.name,
                name,
                &host,
                &gate.url(&format!("/gate/{name}")),
            ),
        )
        .await?;
        apps.push((app, host));
    }
    let api = canaries(&client, &ns.name);
    for name in &names {
        wait_for(
            &format!("{name} Initialized"),
            Duration::from_secs(90),
            || async { Ok((phase(&status(&api, name).await?) == "Initialized").then_some(())) },
        )
        .await
        .with_context(|| op.log_tail(40))?;
    }
    for (_, host) in &apps {
        serin_e2e::wait_route_serves(&url, host, &["v1"], Duration::from_secs(30)).await?;
    }

    // Each Canary gets one bad release among good ones, at a seeded position.
    let plans: Vec<Vec<bool>> = (0..CANARIES)
        .map(|_| {
            let bad = rng.below(RELEASES_EACH);
            (0..RELEASES_EACH).map(|i| i != bad).collect()
        })
        .collect();
    let kill_rng = Rng(rng.next());

    let stop = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicU32::new(0));
    let loads: Vec<Steady> = apps
        .iter()
        .map(|(_, host)| Steady::start(&url, host, 8.0, Duration::from_secs(400)))
        .collect();
    let sampler = tokio::spawn(sample(
        client.clone(),
        ns.name.clone(),
        names.clone(),
        stop.clone(),
    ));
    let killer = tokio::spawn(chaos(
        env.clone(),
        ns.name.clone(),
        op,
        kill_rng,
        stop.clone(),
        kills.clone(),
        logs.clone(),
    ));
    let runs: Vec<_> = apps
        .iter()
        .zip(plans)
        .map(|((app, _), plan)| {
            tokio::spawn(releases(client.clone(), app.clone(), gate.clone(), plan))
        })
        .collect();
    let mut outcomes = Vec::new();
    let mut failures = Vec::new();
    for r in runs {
        match r.await.context("release task")? {
            Ok(o) => outcomes.extend(o),
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (violations, timelines) = sampler.await.context("sampler task")??;
    let op = killer.await.context("chaos task")?;
    let mut reports = Vec::new();
    for l in loads {
        reports.push(l.finish().await?);
    }

    let kills = kills.load(Ordering::Relaxed);
    eprintln!(
        "chaos: seed {seed}, {kills} SIGKILLs, {} releases in {:.0}s",
        outcomes.len(),
        started.elapsed().as_secs_f64()
    );
    for o in &outcomes {
        eprintln!(
            "  {} {} {}: {} in {:.1}s (primary runs {})",
            o.canary,
            o.version,
            if o.good { "good" } else { "bad " },
            o.phase,
            o.secs,
            o.primary_version
        );
    }
    let op = match op {
        Ok(op) => op,
        Err(e) => bail!("operator: {e:#}"),
    };
    let log_hint = format!(
        "seed {seed}; operator logs: {:?}\nlast log:\n{}",
        logs.lock().await,
        op.log_tail(30)
    );
    assert!(failures.is_empty(), "releases: {failures:?}\n{log_hint}");
    assert_eq!(
        outcomes.len(),
        CANARIES * RELEASES_EACH,
        "every release ran: {outcomes:?}\n{log_hint}"
    );
    assert!(kills >= 10, "the operator was killed often enough: {kills}");
    // Each release ends as it should, and the primary runs the last good version.
    let mut last_good: BTreeMap<String, String> = BTreeMap::new();
    for o in &outcomes {
        if o.good {
            last_good.insert(o.canary.clone(), o.version.clone());
        }
        let want_phase = if o.good { "Succeeded" } else { "Failed" };
        let want_primary = last_good.get(&o.canary).cloned().unwrap_or("v1".into());
        assert_eq!(o.phase, want_phase, "{o:?}\n{log_hint}");
        assert_eq!(
            o.primary_version, want_primary,
            "{o:?}: the primary runs the last good version\n{log_hint}"
        );
    }
    assert!(
        violations.is_empty(),
        "invariants broken: {violations:#?}\ntimelines: {:?}\n{log_hint}",
        timelines
            .iter()
            .map(|(n, l)| (
                n,
                l.iter()
                    .map(|s| (s.at as u64, s.phase.as_str(), s.weight))
                    .collect::<Vec<_>>()
            ))
            .collect::<Vec<_>>()
    );
    for (r, (_, host)) in reports.iter().zip(&apps) {
        eprintln!(
            "  load {host}: {} responses {:?}, {} errors, dark at {:?}",
            r.responses, r.by_status, r.errors, r.dark_at
        );
    }
    for (r, (_, host)) in reports.iter().zip(&apps) {
        assert!(r.responses > 100, "{host}: load ran: {r:?}");
        load::assert_not_dark(host, r, Duration::ZERO);
        assert_eq!(
            r.by_status.keys().copied().collect::<Vec<_>>(),
            vec![200],
            "{host}: every request answered 200: {:?} {:?}",
            r.by_status,
            r.dark_at
        );
    }
    drop(op);
    ns.cleanup().await?;
    Ok(())
}
