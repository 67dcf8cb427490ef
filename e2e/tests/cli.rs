//! End-to-end tests of `kubectl-serin` on the local cluster: the real binary, run as
//! kubectl would run the plugin, against the real operator. `watch`'s exit codes,
//! `abort`, `pause`/`resume` and `retry` acting through annotations, and the one-line
//! errors of bad input.

use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Event;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use serde_json::{Value, json};
use serin_e2e::canary::{canaries, phase, release, status, wait_phase, weight};
use serin_e2e::operator::{Operator, bin_dir};
use serin_e2e::{ClusterEnv, SampleApp, TestNamespace, apply_json};

/// The analysis interval of every Canary here; "within one interval" is measured
/// against it.
const INTERVAL: Duration = Duration::from_secs(5);

/// Runs `kubectl-serin args...` as the cluster admin.
async fn cli(env: &ClusterEnv, args: &[&str]) -> Result<Output> {
    cli_with(&env.kubeconfig, args).await
}

async fn cli_with(kubeconfig: &std::path::Path, args: &[&str]) -> Result<Output> {
    let bin = bin_dir().join("kubectl-serin");
    if !bin.exists() {
        bail!(
            "{} not found: run `cargo build --workspace --bins` first",
            bin.display()
        );
    }
    tokio::process::Command::new(&bin)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running {}", bin.display()))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Fails with the command's output when it did not exit with `code`.
fn expect_code(out: &Output, code: i32, what: &str) -> Result<()> {
    if out.status.code() != Some(code) {
        bail!(
            "{what}: exit {:?}, want {code}\nstdout: {}\nstderr: {}",
            out.status.code(),
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    Ok(())
}

fn http_routes(client: &Client, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        "httproutes",
    );
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// The weight the HTTPRoute the operator wrote gives the canary Service.
async fn route_canary_weight(client: &Client, ns: &str) -> Result<u64> {
    let route = http_routes(client, ns).get("app").await?;
    let refs = route.data["spec"]["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["backendRefs"].as_array().into_iter().flatten());
    Ok(refs
        .filter(|b| b["name"] == "app-canary")
        .map(|b| b["weight"].as_u64().unwrap_or(1))
        .sum())
}

/// Deploys `app` and a weighted Gateway API Canary for it (five steps, no metrics:
/// every step passes) and waits for Initialized.
async fn setup(env: &ClusterEnv, client: &Client, ns: &str, op: &Operator) -> Result<SampleApp> {
    let app = SampleApp::new(ns, "app", &env.sample_app_command());
    app.deploy(client).await?;
    apply_json(
        client,
        json!({
            "apiVersion": "serin.dev/v1beta1", "kind": "Canary",
            "metadata": {"name": "app", "namespace": ns},
            "spec": {
                "provider": "gatewayapi:v1",
                "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "app"},
                "progressDeadlineSeconds": 20,
                "service": {
                    "port": 8080, "hosts": [format!("{ns}.e2e.local")],
                    "gatewayRefs": [{"name": env.gateway_name, "namespace": env.gateway_namespace}]
                },
                "analysis": {
                    "interval": format!("{}s", INTERVAL.as_secs()),
                    "threshold": 1, "stepWeights": [10, 20, 30, 40, 50]
                }
            }
        }),
    )
    .await?;
    wait_phase(
        &canaries(client, ns),
        "app",
        "Initialized",
        Duration::from_secs(60),
        op,
    )
    .await?;
    Ok(app)
}

/// Waits until the release is at a weight of at least `min`.
async fn wait_weight(api: &Api<DynamicObject>, min: u64, op: &Operator) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(api, "app").await?;
        if phase(&s) == "Progressing" && weight(&s) >= min {
            return Ok(s);
        }
        if Instant::now() > deadline {
            bail!("no weight {min}: {s}\n{}", op.log_tail(30));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn event_reasons(client: &Client, ns: &str) -> Result<Vec<String>> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    Ok(events
        .list(&ListParams::default().fields("involvedObject.name=app,involvedObject.kind=Canary"))
        .await?
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect())
}

/// `watch` is what a CI job runs after `kubectl apply`: 0 for a promoted release, 1
/// for a rolled-back one, 2 when it is still going at `--timeout`.
#[tokio::test]
async fn watch_exits_by_how_the_release_ended() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("cli_watch") else {
        return Ok(());
    };
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-cliw").await?;
    let op = Operator::start(&env, &ns.name, &["--provider", "gatewayapi:v1"]).await?;
    let mut app = setup(&env, &client, &ns.name, &op).await?;
    let api = canaries(&client, &ns.name);

    // Started right after the change, before the operator has noticed it: the
    // settled Initialized must not be taken for this release's result.
    app = app.version("v2");
    release(&client, &app).await?;
    let out = cli(&env, &["watch", "app", "-n", &ns.name, "--timeout", "120s"]).await?;
    expect_code(&out, 0, "watch of a good release")?;
    assert_eq!(phase(&status(&api, "app").await?), "Succeeded");
    assert!(
        text(&out.stdout).contains("release succeeded"),
        "{}",
        text(&out.stdout)
    );

    app = app.version("v3").env("CRASH", "1");
    release(&client, &app).await?;
    let out = cli(&env, &["watch", "app", "-n", &ns.name, "--timeout", "120s"]).await?;
    expect_code(&out, 1, "watch of a rolled-back release")?;
    assert_eq!(phase(&status(&api, "app").await?), "Failed");
    let err = text(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(last.contains("release failed"), "{err}");

    app = app.version("v4");
    app.env.retain(|(k, _)| k != "CRASH");
    release(&client, &app).await?;
    let out = cli(&env, &["watch", "app", "-n", &ns.name, "--timeout", "3s"]).await?;
    expect_code(&out, 2, "watch past its timeout")?;
    drop(op);
    ns.cleanup().await?;
    Ok(())
}

/// `abort` mid-release puts all traffic back on the primary within one interval,
/// without a spec change; `retry` then runs the same revision again to its end.
#[tokio::test]
async fn abort_returns_traffic_within_an_interval_and_retry_reruns() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("cli_abort") else {
        return Ok(());
    };
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-clia").await?;
    let op = Operator::start(&env, &ns.name, &["--provider", "gatewayapi:v1"]).await?;
    let mut app = setup(&env, &client, &ns.name, &op).await?;
    let api = canaries(&client, &ns.name);
    let generation = |c: &DynamicObject| c.metadata.generation;
    let before = generation(&api.get("app").await?);

    app = app.version("v2");
    release(&client, &app).await?;
    let mid = wait_weight(&api, 20, &op).await?;
    assert!(route_canary_weight(&client, &ns.name).await? > 0, "{mid}");
    let asked = Instant::now();
    let out = cli(&env, &["abort", "app", "-n", &ns.name]).await?;
    expect_code(&out, 0, "abort")?;
    let failed = loop {
        let s = status(&api, "app").await?;
        if phase(&s) == "Failed" && route_canary_weight(&client, &ns.name).await? == 0 {
            break s;
        }
        if asked.elapsed() > INTERVAL {
            bail!(
                "traffic not back on the primary within {INTERVAL:?} of abort: {s}\n{}",
                op.log_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(weight(&failed), 0, "{failed}");
    assert!(failed["lastAbort"].is_string(), "{failed}");
    assert_eq!(
        generation(&api.get("app").await?),
        before,
        "the spec was not touched"
    );
    let reasons = event_reasons(&client, &ns.name).await?;
    assert!(
        reasons.iter().any(|r| r == "AbortRequested"),
        "the CLI left an Event: {reasons:?}"
    );
    // A second abort has nothing to abort: one line, non-zero.
    let out = cli(&env, &["abort", "app", "-n", &ns.name]).await?;
    expect_code(&out, 1, "abort of a failed release")?;
    assert_eq!(
        text(&out.stderr).lines().count(),
        1,
        "{}",
        text(&out.stderr)
    );

    let out = cli(&env, &["retry", "app", "-n", &ns.name]).await?;
    expect_code(&out, 0, "retry")?;
    let out = cli(&env, &["watch", "app", "-n", &ns.name, "--timeout", "120s"]).await?;
    expect_code(&out, 0, "watch of the retried release")?;
    let done = status(&api, "app").await?;
    assert_eq!(phase(&done), "Succeeded", "{done}");
    assert_eq!(
        done["lastAppliedSpec"], failed["lastAppliedSpec"],
        "the same revision ran again"
    );
    assert!(done["lastRetry"].is_string(), "{done}");
    drop(op);
    ns.cleanup().await?;
    Ok(())
}

/// `pause` holds the weight for as long as asked (three intervals here, past
/// nothing else changing), `resume` continues from the same weight.
#[tokio::test]
async fn pause_holds_the_weight_and_resume_continues() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("cli_pause") else {
        return Ok(());
    };
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-clip").await?;
    let op = Operator::start(&env, &ns.name, &["--provider", "gatewayapi:v1"]).await?;
    let mut app = setup(&env, &client, &ns.name, &op).await?;
    let api = canaries(&client, &ns.name);

    app = app.version("v2");
    release(&client, &app).await?;
    wait_weight(&api, 10, &op).await?;
    // `get -w` prints the table, then a row per change (the pause is one).
    let mut watching = tokio::process::Command::new(bin_dir().join("kubectl-serin"))
        .args(["get", "app", "-w", "-n", &ns.name])
        .env("KUBECONFIG", &env.kubeconfig)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let out = cli(&env, &["pause", "app", "-n", &ns.name]).await?;
    expect_code(&out, 0, "pause")?;
    // The operator takes the pause at its next tick; from then on nothing moves.
    let held = loop {
        let s = status(&api, "app").await?;
        if s["holdReason"]
            .as_str()
            .is_some_and(|h| h.starts_with("paused"))
        {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let w = weight(&held);
    assert!(w < 50, "paused before the last step: {held}");
    let until = Instant::now() + 3 * INTERVAL;
    while Instant::now() < until {
        let s = status(&api, "app").await?;
        assert_eq!(phase(&s), "Progressing", "{s}");
        assert_eq!(weight(&s), w, "the weight holds while paused: {s}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(route_canary_weight(&client, &ns.name).await?, w);
    watching.start_kill()?;
    let watched = text(&watching.wait_with_output().await?.stdout);
    let lines: Vec<&str> = watched.lines().collect();
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("NAME")).count(),
        1,
        "one header: {watched}"
    );
    assert!(
        lines.len() >= 3 && lines.iter().skip(1).all(|l| l.starts_with("app ")),
        "the row, then a row per change: {watched}"
    );
    let shown = cli(&env, &["status", "app", "-n", &ns.name]).await?;
    expect_code(&shown, 0, "status")?;
    assert!(
        text(&shown.stdout).contains("Waiting:    paused"),
        "{}",
        text(&shown.stdout)
    );

    let out = cli(&env, &["resume", "app", "-n", &ns.name]).await?;
    expect_code(&out, 0, "resume")?;
    let resumed = Instant::now();
    loop {
        let s = status(&api, "app").await?;
        if weight(&s) > w || phase(&s) != "Progressing" {
            break;
        }
        if resumed.elapsed() > 2 * INTERVAL {
            bail!("no step after resume: {s}\n{}", op.log_tail(30));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let reasons = event_reasons(&client, &ns.name).await?;
    for r in ["PauseRequested", "Paused", "ResumeRequested", "Resumed"] {
        assert!(reasons.iter().any(|x| x == r), "no {r} Event: {reasons:?}");
    }
    drop(op);
    ns.cleanup().await?;
    Ok(())
}

/// Bad input gets one line on stderr and a non-zero exit: an unknown Canary, a
/// cluster that does not answer, a user without rights.
#[tokio::test]
async fn bad_input_is_one_line_and_a_failure() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("cli_bad_input") else {
        return Ok(());
    };
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-clib").await?;
    serin_e2e::operator::install(&env).await?;
    let one_line = |out: &Output, want: &str| {
        let err = text(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains(want), "want {want:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    };
    for cmd in ["get", "status", "watch", "abort", "promote", "pause"] {
        let out = cli(&env, &[cmd, "nope", "-n", &ns.name]).await?;
        one_line(&out, &format!("Canary {}/nope not found", ns.name));
    }
    let kubeconfig = |server: &str, token: &str| {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    certificate-authority: {}\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n",
            env.ca_file.display()
        )
    };
    let down = env.state_dir.join("cli-unreachable.kubeconfig");
    std::fs::write(&down, kubeconfig("https://127.0.0.1:9", "t"))?;
    let out = cli_with(&down, &["get", "-A"]).await?;
    one_line(&out, "cannot reach the cluster at https://127.0.0.1:9");
    let token = env.user_token.clone();
    let alice = env.state_dir.join("cli-alice.kubeconfig");
    std::fs::write(&alice, kubeconfig(&env.apiserver, &token))?;
    let out = cli_with(&alice, &["get", "-n", &ns.name]).await?;
    one_line(&out, "not allowed");
    let out = cli(&env, &["get", "--context", "nope"]).await?;
    one_line(&out, "kubeconfig");
    ns.cleanup().await?;
    Ok(())
}

/// The canary weights of the routes `plan` prints, in order.
fn planned_weights(plan: &str) -> Vec<u64> {
    plan.lines()
        .filter_map(|l| l.split_once("routes primary "))
        .filter_map(|(_, rest)| rest.split_once("/ canary "))
        .filter_map(|(_, w)| w.split_whitespace().next()?.parse().ok())
        .collect()
}

/// `plan` runs the operator's state machine offline: the routes it lists are the
/// ones the operator then writes, step by step, in the same order.
#[tokio::test]
async fn plan_matches_what_the_operator_then_does() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("cli_plan") else {
        return Ok(());
    };
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-clpl").await?;
    let op = Operator::start(&env, &ns.name, &["--provider", "gatewayapi:v1"]).await?;
    let mut app = setup(&env, &client, &ns.name, &op).await?;
    let api = canaries(&client, &ns.name);
    let mut manifest = serde_json::to_value(api.get("app").await?)?;
    if let Some(o) = manifest.as_object_mut() {
        o.remove("status");
    }
    let file = env.state_dir.join(format!("{}-plan.yaml", ns.name));
    std::fs::write(&file, serde_yaml::to_string(&manifest)?)?;
    let path = file.display().to_string();
    let out = cli(&env, &["plan", "-f", &path, "--no-objects"]).await?;
    expect_code(&out, 0, "plan")?;
    let plan = text(&out.stdout);
    let planned = planned_weights(&plan);
    assert_eq!(planned, [10, 20, 30, 40, 50, 100, 0], "{plan}");

    app = app.version("v2");
    release(&client, &app).await?;
    let started = Instant::now();
    let mut seen: Vec<u64> = Vec::new();
    loop {
        let w = route_canary_weight(&client, &ns.name).await?;
        if seen.last() != Some(&w) {
            seen.push(w);
        }
        let s = status(&api, "app").await?;
        if phase(&s) == "Succeeded" && w == 0 {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("release did not end: {s}\n{}", op.log_tail(30));
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // The route starts on the primary (weight 0) before the release.
    assert_eq!(seen.first(), Some(&0));
    assert_eq!(&seen[1..], planned.as_slice(), "operator vs plan:\n{plan}");
    let shortest = plan
        .lines()
        .find_map(|l| l.strip_prefix("Shortest possible duration: "))
        .unwrap_or("?");
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "plan: shortest {shortest}; the operator took {:.1}s",
        started.elapsed().as_secs_f64()
    );
    drop(op);
    ns.cleanup().await?;
    Ok(())
}

/// Prints (asserts nothing about) how long `get -A` and `status` take with 100
/// Canaries in the cluster.
#[tokio::test]
async fn measure_get_and_status_with_100_canaries() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("cli_measure") else {
        return Ok(());
    };
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-clim").await?;
    serin_e2e::operator::install(&env).await?;
    for i in 0..100 {
        apply_json(
            &client,
            json!({
                "apiVersion": "serin.dev/v1beta1", "kind": "Canary",
                "metadata": {"name": format!("c{i:03}"), "namespace": ns.name},
                "spec": {
                    "provider": "kubernetes",
                    "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": format!("c{i:03}")},
                    "service": {"port": 80},
                    "analysis": {"interval": "1m", "threshold": 5, "iterations": 5}
                }
            }),
        )
        .await?;
    }
    let mut report = String::new();
    for (what, args) in [
        ("get -A", vec!["get", "-A"]),
        ("status", vec!["status", "c050", "-n", &ns.name]),
    ] {
        let mut times = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let out = cli(&env, &args).await?;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            expect_code(&out, 0, what)?;
            if what == "get -A" {
                let rows = text(&out.stdout)
                    .lines()
                    .filter(|l| l.starts_with(&ns.name))
                    .count();
                assert_eq!(rows, 100, "sanity: every Canary listed");
            }
        }
        times.sort_by(f64::total_cmp);
        report.push_str(&format!(
            "kubectl-serin {what} with 100 canaries: median {:.0} ms, max {:.0} ms (5 runs, process start included)\n",
            times[2], times[4]
        ));
    }
    use std::io::Write;
    let _ = write!(std::io::stderr(), "{report}");
    ns.cleanup().await?;
    Ok(())
}

/// `convert` of every Flagger example the compatibility test uses: the API server
/// takes the output (server-side dry run, kubectl's validation on), and it is, object
/// for object, what that test applies and runs (the apiVersion swap), so it behaves
/// the same.
#[tokio::test]
async fn converted_flagger_examples_are_accepted_and_unchanged_in_meaning() -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let Some(env) = ClusterEnv::for_test("cli_convert") else {
        return Ok(());
    };
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-clic").await?;
    serin_e2e::operator::install(&env).await?;
    let dir = serin_e2e::operator::repo_root().join("e2e/testdata/flagger");
    let mut files: Vec<_> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "{files:?}");
    let docs = |text: &str| -> Result<Vec<serde_yaml::Value>> {
        let mut out = Vec::new();
        for d in serde_yaml::Deserializer::from_str(text) {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(d)?;
            if !v.is_null() {
                out.push(v);
            }
        }
        Ok(out)
    };
    for file in files {
        let path = file.display().to_string();
        let out = cli(&env, &["convert", "-f", &path]).await?;
        expect_code(&out, 0, &format!("convert {path}"))?;
        let converted = text(&out.stdout);
        assert!(!converted.contains("flagger.app/v1beta1"), "{path}");
        let swapped =
            std::fs::read_to_string(&file)?.replace("flagger.app/v1beta1", "serin.dev/v1beta1");
        assert_eq!(docs(&converted)?, docs(&swapped)?, "{path}");
        let mut child = tokio::process::Command::new("kubectl")
            .args([
                "apply",
                "--dry-run=server",
                "--validate=true",
                "-n",
                &ns.name,
                "-f",
                "-",
            ])
            .env("KUBECONFIG", &env.kubeconfig)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("running kubectl")?;
        let mut stdin = child.stdin.take().context("kubectl stdin")?;
        stdin.write_all(converted.as_bytes()).await?;
        drop(stdin);
        let applied = child.wait_with_output().await?;
        expect_code(&applied, 0, &format!("kubectl apply of converted {path}"))?;
    }
    ns.cleanup().await?;
    Ok(())
}
