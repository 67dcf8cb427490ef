//! Security properties of the install and of the running operator: the
//! ServiceAccount's rights are exactly the written expectation, Secret values never
//! leave the Secret (logs, Events, Canary status, /metrics), and the operator's pod
//! meets the `restricted` Pod Security Standard.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use serin_e2e::canary::{canaries, release, wait_phase};
use serin_e2e::operator::{Operator, install, repo_root};
use serin_e2e::pss::{pod_templates, restricted_violations};
use serin_e2e::webhook::WebhookReceiver;
use serin_e2e::{ClusterEnv, SampleApp, TestNamespace, apply_json, unique_name};

fn kubectl(env: Option<&ClusterEnv>, args: &[&str]) -> Result<String> {
    let mut cmd = std::process::Command::new("kubectl");
    cmd.args(args).current_dir(repo_root());
    if let Some(env) = env {
        cmd.env("KUBECONFIG", &env.kubeconfig);
    }
    let out = cmd.output().context("running kubectl")?;
    if !out.status.success() {
        bail!(
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `kubectl kustomize` needs no cluster: this runs in every `cargo test`.
#[test]
fn operator_pod_meets_the_restricted_pod_security_standard() -> Result<()> {
    let t0 = Instant::now();
    let mut checked = 0;
    for dir in ["kustomize/operator", "kustomize"] {
        let rendered = kubectl(None, &["kustomize", dir])?;
        let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&rendered)
            .map(|d| serde::Deserialize::deserialize(d).map_err(anyhow::Error::from))
            .collect::<Result<_>>()?;
        let pods = pod_templates(&docs);
        assert!(!pods.is_empty(), "{dir}: no pod template rendered");
        for (name, meta, spec) in pods {
            let v = restricted_violations(&meta, &spec);
            assert!(
                v.is_empty(),
                "{dir}: {name} breaks the restricted policy:\n  {}",
                v.join("\n  ")
            );
            checked += 1;
        }
    }
    println!(
        "restricted PSS: {checked} pod templates clean in {:?}",
        t0.elapsed()
    );
    Ok(())
}

/// `kubectl auth can-i --list` as one sorted `resource: verbs` line a resource.
fn rights(env: &ClusterEnv, namespace: &str) -> Result<BTreeSet<String>> {
    let out = kubectl(
        Some(env),
        &[
            "auth",
            "can-i",
            "--list",
            "--as=system:serviceaccount:serin-system:serin",
            &format!("--namespace={namespace}"),
        ],
    )?;
    let mut by_thing: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in out.lines().skip(1) {
        // Columns: Resources, Non-Resource URLs, Resource Names, Verbs ("[get list]").
        let Some(open) = line.rfind('[') else {
            continue;
        };
        let verbs: Vec<&str> = line[open..]
            .trim_matches(|c| c == '[' || c == ']' || c == ' ')
            .split_whitespace()
            .collect();
        let cols: Vec<&str> = line[..open].split_whitespace().collect();
        let mut thing = String::new();
        for c in &cols {
            if *c != "[]" {
                thing = c.trim_matches(|c| c == '[' || c == ']').to_string();
                break;
            }
        }
        // Rights limited to named objects are a different right: keep the names.
        if let Some(names) = cols
            .iter()
            .skip(1)
            .find(|c| c.starts_with('[') && **c != "[]")
        {
            thing = format!("{thing} {names}");
        }
        if thing.is_empty() {
            continue;
        }
        by_thing
            .entry(thing)
            .or_default()
            .extend(verbs.iter().map(|v| v.to_string()));
    }
    Ok(by_thing
        .into_iter()
        .map(|(k, v)| format!("{k}: {}", v.into_iter().collect::<Vec<_>>().join(" ")))
        .collect())
}

/// The expectation file's sections, `+section` lines including another one.
fn expected_rights() -> Result<BTreeMap<String, BTreeSet<String>>> {
    let path = repo_root().join("kustomize/rbac/expected-rights.txt");
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let mut sections: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.to_string();
            continue;
        }
        let lines = match line.strip_prefix('+') {
            Some(other) => sections.get(other).cloned().unwrap_or_default(),
            None => BTreeSet::from([line.to_string()]),
        };
        sections.entry(current.clone()).or_default().extend(lines);
    }
    Ok(sections)
}

fn diff(want: &BTreeSet<String>, got: &BTreeSet<String>) -> String {
    let mut out = String::new();
    for l in want.difference(got) {
        out.push_str(&format!("\n  - {l}   (expected, not granted)"));
    }
    for l in got.difference(want) {
        out.push_str(&format!("\n  + {l}   (granted, not expected)"));
    }
    out
}

#[tokio::test]
async fn service_account_rights_match_the_written_expectation() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("rbac_rights") else {
        return Ok(());
    };
    let t0 = Instant::now();
    install(&env).await?;
    let client = env.client().await?;
    // A namespace with no Role of Serin's: what the ClusterRoles alone grant.
    let ns = TestNamespace::create(&client, "e2e-rbac").await?;
    let expected = expected_rights()?;
    for (section, namespace) in [
        ("any namespace", ns.name.as_str()),
        ("serin-system", "serin-system"),
    ] {
        let want = expected
            .get(section)
            .with_context(|| format!("no [{section}] in expected-rights.txt"))?;
        let got = rights(&env, namespace)?;
        assert!(
            want == &got,
            "rights of serin in {namespace} differ from [{section}]:{}",
            diff(want, &got)
        );
    }
    // The list is only as good as its parser: spot-check denials it implies.
    for (verb, resource) in [
        ("delete", "deployments.apps"),
        ("delete", "secrets"),
        ("create", "pods"),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
        ("impersonate", "serviceaccounts"),
    ] {
        let out = std::process::Command::new("kubectl")
            .args([
                "auth",
                "can-i",
                verb,
                resource,
                "--as=system:serviceaccount:serin-system:serin",
            ])
            .args(["--namespace", &ns.name])
            .env("KUBECONFIG", &env.kubeconfig)
            .output()?;
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "no",
            "serin may {verb} {resource}"
        );
    }
    ns.cleanup().await?;
    println!("rbac rights checked in {:?}", t0.elapsed());
    Ok(())
}

#[derive(Default)]
struct PromSeen {
    authorized: usize,
    refused: usize,
}

/// A Prometheus query API that answers only with the right bearer token.
async fn authed_prometheus(token: String) -> Result<(String, Arc<Mutex<PromSeen>>)> {
    let seen = Arc::new(Mutex::new(PromSeen::default()));
    let s = seen.clone();
    let app = Router::new().fallback(move |h: HeaderMap| {
        let s = s.clone();
        let token = token.clone();
        async move {
            let ok = h
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v == format!("Bearer {token}"));
            if let Ok(mut s) = s.lock() {
                if ok {
                    s.authorized += 1;
                } else {
                    s.refused += 1;
                }
            }
            if !ok {
                return (StatusCode::UNAUTHORIZED, "unauthorized".to_string()).into_response();
            }
            let now = chrono::Utc::now().timestamp() as f64;
            let body = json!({"status": "success", "data": {"resultType": "vector",
                "result": [{"metric": {}, "value": [now, "1"]}]}});
            axum::Json(body).into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((format!("http://{addr}"), seen))
}

fn b64(s: &str) -> String {
    use std::fmt::Write;
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk.iter().fold(0u32, |a, &x| (a << 8) | x as u32) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            let _ = write!(out, "{}", T[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// A release that uses every credential Serin handles: a webhook's auth header, an
/// AlertProvider's address and token, Prometheus auth, and a Secret the target
/// reads (copied to the primary). Each is used (the receivers saw it), and none
/// appears in the operator's log, the namespace's Events, the Canary or /metrics.
#[tokio::test]
async fn secret_values_never_reach_logs_events_status_or_metrics() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("secret_scan") else {
        return Ok(());
    };
    let t0 = Instant::now();
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-secrets").await?;
    let tag = unique_name("v");
    let secrets = BTreeMap::from([
        ("webhook token", format!("hooktok{tag}")),
        ("alert path", format!("alertpath{tag}")),
        ("alert token", format!("alerttok{tag}")),
        ("prometheus token", format!("promtok{tag}")),
        ("app password", format!("apppw{tag}")),
    ]);
    let (prom, prom_seen) = authed_prometheus(secrets["prometheus token"].clone()).await?;
    let rx = WebhookReceiver::start().await?;
    let alert_path = format!("/alert/{}", secrets["alert path"]);
    // A failing receiver: delivery errors are where addresses usually leak.
    rx.set_status(&alert_path, 500);

    let op = Operator::start(&env, &ns.name, &["--provider", "kubernetes"]).await?;
    for (name, data) in [
        (
            "hook-auth",
            json!({"Authorization": format!("Bearer {}", secrets["webhook token"])}),
        ),
        (
            "alert-creds",
            json!({"address": rx.url(&alert_path), "token": secrets["alert token"]}),
        ),
        ("prom-auth", json!({"token": secrets["prometheus token"]})),
        ("app-secret", json!({"PASSWORD": secrets["app password"]})),
    ] {
        apply_json(
            &client,
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": name, "namespace": ns.name}, "stringData": data}),
        )
        .await?;
    }
    apply_json(
        &client,
        json!({"apiVersion": "serin.dev/v1beta1", "kind": "MetricTemplate",
               "metadata": {"name": "authed", "namespace": ns.name},
               "spec": {"provider": {"type": "prometheus", "address": prom,
                                     "secretRef": {"name": "prom-auth"}},
                        "query": "authed_up{namespace=\"{{ namespace }}\"}"}}),
    )
    .await?;
    apply_json(
        &client,
        json!({"apiVersion": "serin.dev/v1beta1", "kind": "AlertProvider",
               "metadata": {"name": "team", "namespace": ns.name},
               "spec": {"type": "webhook", "secretRef": {"name": "alert-creds"}}}),
    )
    .await?;
    let mut app = SampleApp::new(&ns.name, "app", &env.sample_app_command()).env_json(json!({
        "name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "app-secret", "key": "PASSWORD"}}
    }));
    app.deploy(&client).await?;
    apply_json(
        &client,
        json!({
            "apiVersion": "serin.dev/v1beta1", "kind": "Canary",
            "metadata": {"name": "app", "namespace": ns.name},
            "spec": {
                "provider": "kubernetes",
                "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "app"},
                "service": {"port": 80, "targetPort": 8080},
                "analysis": {
                    "interval": "3s", "threshold": 2, "iterations": 2,
                    "metrics": [{"name": "authed", "templateRef": {"name": "authed"},
                                 "thresholdRange": {"min": 1}}],
                    "webhooks": [{"name": "gate", "type": "rollout", "url": rx.url("/gate"),
                                  "headersSecretRef": {"name": "hook-auth"}}],
                    "alerts": [{"name": "team", "providerRef": {"name": "team"}}]
                }
            }
        }),
    )
    .await?;
    let api = canaries(&client, &ns.name);
    wait_phase(&api, "app", "Initialized", Duration::from_secs(60), &op).await?;
    app = app.version("v2");
    release(&client, &app).await?;
    wait_phase(&api, "app", "Succeeded", Duration::from_secs(90), &op).await?;

    // Every credential was really used.
    let gate = rx.calls_to("/gate");
    let hook_auth = format!("Bearer {}", secrets["webhook token"]);
    assert!(
        gate.iter().any(|c| c
            .headers
            .iter()
            .any(|(k, v)| k == "authorization" && *v == hook_auth)),
        "the gate never got its auth header: {gate:?}"
    );
    let alerts = rx.calls_to(&alert_path);
    let alert_auth = format!("Bearer {}", secrets["alert token"]);
    assert!(
        alerts.iter().any(|c| c
            .headers
            .iter()
            .any(|(k, v)| k == "authorization" && *v == alert_auth)),
        "no alert reached the Secret's address with its token: {} calls",
        alerts.len()
    );
    let authorized = prom_seen
        .lock()
        .map(|s| (s.authorized, s.refused))
        .unwrap_or_default();
    assert!(
        authorized.0 > 0,
        "Prometheus never got the Secret's token: {authorized:?}"
    );

    // Everything the operator wrote or served.
    let log = std::fs::read_to_string(&op.log)?;
    let events = Api::<Event>::namespaced(client.clone(), &ns.name)
        .list(&ListParams::default())
        .await?;
    let events_text = serde_json::to_string(&events.items)?;
    let canary_text = serde_json::to_string(&api.get("app").await?)?;
    let metrics = op.metrics().await?;
    let mut leaks = Vec::new();
    for (what, value) in &secrets {
        for form in [value.clone(), b64(value)] {
            for (place, text) in [
                ("operator log", &log),
                ("Events", &events_text),
                ("Canary", &canary_text),
                ("/metrics", &metrics),
            ] {
                if text.contains(&form) {
                    leaks.push(format!("{what} ({form}) in {place}"));
                }
            }
        }
    }
    assert!(leaks.is_empty(), "secrets leaked: {leaks:?}");
    // The scan looked at real material: the alert failures were logged and evented.
    assert!(log.contains("alert"), "no alert line in the log");
    println!(
        "secret scan: {} values x 2 forms over {} log bytes, {} Events, status, {} metrics bytes: clean ({} alert deliveries refused with 500) in {:?}",
        secrets.len(),
        log.len(),
        events.items.len(),
        metrics.len(),
        alerts.len(),
        t0.elapsed()
    );
    drop(op);
    ns.cleanup().await?;
    Ok(())
}
