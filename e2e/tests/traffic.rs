//! End-to-end tests of the routers on the local cluster: the real operator writes the
//! split, real Traefik carries the requests, and the tests count which version
//! answered each one.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use serde_json::{Value, json};
use serin_e2e::canary::{canaries, phase, release, status, wait_phase, weight};
use serin_e2e::load::{self, LoadSpec};
use serin_e2e::operator::Operator;
use serin_e2e::{ClusterEnv, SampleApp, TestNamespace, apply_json, wait_for};

fn http_routes(client: &Client, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        "httproutes",
    );
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// Follows a release to its end, measuring at every weighted step the share of >= 500
/// real requests the canary answered; `at_step` runs after each measurement. Returns
/// the final status and the weights measured.
async fn measure_steps<F, Fut>(
    api: &Api<DynamicObject>,
    name: &str,
    load_spec: &LoadSpec,
    canary_version: &str,
    stop_at: &[&str],
    op: &Operator,
    mut at_step: F,
) -> Result<(Value, BTreeSet<u64>)>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut checked = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let s = status(api, name).await?;
        let w = weight(&s);
        if stop_at.contains(&phase(&s)) {
            return Ok((s, checked));
        }
        if phase(&s) == "Progressing" && w > 0 && !checked.contains(&w) {
            // Traefik applies route changes within ~2-3 s (throttleDuration 1s, and
            // the Gateway provider was seen taking 2.4 s): measure after that.
            tokio::time::sleep(Duration::from_secs(3)).await;
            let report = load::run(load_spec).await?;
            let after = status(api, name).await?;
            // Only a measurement that started and ended on the same step counts.
            if weight(&after) == w && phase(&after) == "Progressing" {
                let got = 100.0 * report.version_share(canary_version);
                assert!(report.responses >= 500, "{report:?}");
                // The app-dark guard: a step's route is served in full.
                assert_eq!(report.dark(), 0, "at weight {w}: {:?}", report.dark_at);
                assert!(
                    (got - w as f64).abs() <= 5.0,
                    "at weight {w} the canary answered {got:.1}% of {} requests",
                    report.responses
                );
                checked.insert(w);
                at_step(w).await?;
            }
        }
        if Instant::now() > deadline {
            bail!("release did not end: {s}\n{}", op.log_tail(40));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The `traefik` provider: the split in the TraefikService is what real requests
/// see at every step, and a rollback puts all traffic back on the primary within
/// one analysis interval.
#[tokio::test]
async fn traefik_service_split_follows_weights_and_rolls_back() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("traefik_provider") else {
        return Ok(());
    };
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-tfk").await?;
    let tester = support::serve_tester().await?;
    let op = Operator::start(&env, &ns.name, &["--provider", "traefik"]).await?;
    let host = format!("{}.e2e.local", ns.name);
    let mut app = SampleApp::new(&ns.name, "web", &env.sample_app_command()).replicas(2);
    app.deploy(&client).await?;
    let interval = Duration::from_secs(12);
    apply_json(
        &client,
        json!({
            "apiVersion": "serin.dev/v1beta1", "kind": "Canary",
            "metadata": {"name": "web", "namespace": ns.name},
            "spec": {
                "provider": "traefik",
                "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "progressDeadlineSeconds": 60,
                "service": {"port": 8080},
                "analysis": {
                    "interval": "12s", "threshold": 1, "stepWeights": [20, 50],
                    // Traefik's built-ins (`...@kubernetescrd` series) on the
                    // traffic of each step.
                    "metrics": [
                        {"name": "request-success-rate", "interval": "30s",
                         "thresholdRange": {"min": 99}},
                        {"name": "request-duration", "interval": "30s",
                         "thresholdRange": {"max": 500}}
                    ],
                    "webhooks": [{
                        "name": "kill-switch", "type": "rollback",
                        "url": format!("http://{tester}/rollback/check")
                    }]
                }
            }
        }),
    )
    .await?;
    let api = canaries(&client, &ns.name);
    wait_phase(&api, "web", "Initialized", Duration::from_secs(60), &op).await?;
    // The user's IngressRoute sends the host to the TraefikService Serin owns.
    apply_json(
        &client,
        json!({
            "apiVersion": "traefik.io/v1alpha1", "kind": "IngressRoute",
            "metadata": {"name": "web", "namespace": ns.name},
            "spec": {
                "entryPoints": ["web"],
                "routes": [{
                    "match": format!("Host(`{host}`)"), "kind": "Rule",
                    "services": [{"name": "web", "kind": "TraefikService"}]
                }]
            }
        }),
    )
    .await?;
    let url = format!("{}/", env.gateway);
    serin_e2e::wait_route_serves(&url, &host, &["v1"], Duration::from_secs(30)).await?;

    let step_load = LoadSpec::new(&url).host(&host).requests(500, 250.0);
    // Through the whole release, the promotion included (the primary's pods are
    // replaced then): not one request may go unanswered.
    let bg = load::Steady::start(&url, &host, 20.0, Duration::from_secs(200));
    app = app.version("v2");
    release(&client, &app).await?;
    let (done, checked) = measure_steps(
        &api,
        "web",
        &step_load,
        "v2",
        &["Succeeded", "Failed"],
        &op,
        |_| async { Ok(()) },
    )
    .await?;
    assert_eq!(phase(&done), "Succeeded", "{done}\n{}", op.log_tail(40));
    assert_eq!(checked, BTreeSet::from([20, 50]), "both steps measured");
    for name in ["request-success-rate", "request-duration"] {
        let check = done["lastAnalysis"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == name);
        assert!(
            check.is_some_and(|c| c["verdict"] == "Pass" && c["value"].is_number()),
            "{name} measured on Traefik's series and passed: {done}"
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = load::run(&LoadSpec::new(&url).host(&host).requests(200, 200.0)).await?;
    assert_eq!(after.count("v2"), after.responses, "promoted: {after:?}");
    let through = bg.finish().await?;
    assert!(through.responses > 0, "{through:?}");
    assert_eq!(
        through.dark(),
        0,
        "requests unanswered during the release: {:?}",
        through.dark_at
    );

    // Next release: roll it back from the first step and time the return.
    app = app.version("v3");
    release(&client, &app).await?;
    // The status still says Succeeded until the operator sees the new revision.
    wait_phase(&api, "web", "Progressing", Duration::from_secs(30), &op).await?;
    let (rb_tester, rb_ns) = (tester, ns.name.clone());
    let (failed, _) = measure_steps(
        &api,
        "web",
        &step_load,
        "v3",
        &["Failed", "Succeeded"],
        &op,
        move |_| {
            let ns = rb_ns.clone();
            async move {
                reqwest::Client::new()
                    .post(format!("http://{rb_tester}/rollback/open"))
                    .json(&json!({"name": "web", "namespace": ns}))
                    .send()
                    .await?
                    .error_for_status()?;
                Ok(())
            }
        },
    )
    .await?;
    assert_eq!(phase(&failed), "Failed", "{failed}");
    let failed_at = Instant::now();
    // All traffic is back once 100 requests in a row are answered by the primary.
    let mut streak = 0;
    while streak < 100 {
        let r = load::run(&LoadSpec::new(&url).host(&host).requests(20, 200.0)).await?;
        if r.count("v2") == r.responses && r.responses == 20 {
            streak += 20;
        } else {
            streak = 0;
        }
        if failed_at.elapsed() > interval {
            bail!("traffic not back on the primary within {interval:?}: {r:?}");
        }
    }
    drop(op);
    ns.cleanup().await?;
    Ok(())
}

/// routeRef mode: Serin splits only the rule pointing at the apex Service of the
/// user's HTTPRoute; another rule, its filter and the route's annotations stay
/// exactly as written, and the split is what real requests see.
#[tokio::test]
async fn route_ref_splits_only_the_apex_rule() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("route_ref") else {
        return Ok(());
    };
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-rref").await?;
    let op = Operator::start(&env, &ns.name, &["--provider", "gatewayapi:v1"]).await?;
    let host = format!("{}.e2e.local", ns.name);
    let mut app = SampleApp::new(&ns.name, "web", &env.sample_app_command()).replicas(2);
    app.deploy(&client).await?;
    SampleApp::new(&ns.name, "extra", &env.sample_app_command())
        .version("x1")
        .deploy(&client)
        .await?;
    let extra_rule = json!({
        "matches": [{"headers": [{"type": "Exact", "name": "X-Extra", "value": "1"}],
                     "path": {"type": "PathPrefix", "value": "/"}}],
        "filters": [{"type": "RequestHeaderModifier",
                     "requestHeaderModifier": {"add": [{"name": "X-Via", "value": "extra"}]}}],
        "backendRefs": [{"group": "", "kind": "Service", "name": "extra", "port": 80, "weight": 1}]
    });
    let annotations = json!({"team.example.com/owner": "payments", "note": "hands off"});
    apply_json(
        &client,
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "web-route", "namespace": ns.name, "annotations": annotations},
            "spec": {
                "parentRefs": [{"name": env.gateway_name, "namespace": env.gateway_namespace}],
                "hostnames": [host],
                "rules": [
                    extra_rule,
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                     "backendRefs": [{"name": "web", "port": 8080}]}
                ]
            }
        }),
    )
    .await?;
    let routes = http_routes(&client, &ns.name);
    // What the API server stored (defaults filled in) is the reference.
    let written = routes.get("web-route").await?;
    let written_extra = written.data["spec"]["rules"][0].clone();
    let written_annotations = written.metadata.annotations.clone();
    assert_eq!(
        written_extra["filters"], extra_rule["filters"],
        "sanity: stored as sent"
    );
    apply_json(
        &client,
        json!({
            "apiVersion": "serin.dev/v1beta1", "kind": "Canary",
            "metadata": {"name": "web", "namespace": ns.name},
            "spec": {
                "provider": "gatewayapi:v1",
                "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "routeRef": {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                             "name": "web-route"},
                "progressDeadlineSeconds": 60,
                "service": {"port": 8080},
                "analysis": {
                    "interval": "12s", "threshold": 1, "stepWeights": [20, 50],
                    // Gateway API built-ins (`...@kubernetesgateway` series) on a
                    // route the user owns.
                    "metrics": [
                        {"name": "request-success-rate", "interval": "30s",
                         "thresholdRange": {"min": 99}},
                        {"name": "request-duration", "interval": "30s",
                         "thresholdRange": {"max": 500}}
                    ]
                }
            }
        }),
    )
    .await?;
    let api = canaries(&client, &ns.name);
    wait_phase(&api, "web", "Initialized", Duration::from_secs(60), &op).await?;
    let url = format!("{}/", env.gateway);
    serin_e2e::wait_route_serves(&url, &host, &["v1"], Duration::from_secs(30)).await?;

    let untouched = || async {
        let r = routes.get("web-route").await?;
        let rules = r.data["spec"]["rules"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(rules.len(), 2, "no rule added or removed: {rules:?}");
        assert_eq!(
            serde_json::to_string(&rules[0])?,
            serde_json::to_string(&written_extra)?,
            "the extra rule is byte-for-byte as written"
        );
        assert_eq!(
            r.metadata.annotations, written_annotations,
            "annotations kept"
        );
        // The extra rule still reaches its own Service through Traefik.
        let extra = load::run(
            &LoadSpec::new(&url)
                .host(&host)
                .header("X-Extra", "1")
                .requests(20, 100.0),
        )
        .await?;
        assert_eq!(extra.count("x1"), extra.responses, "extra rule: {extra:?}");
        anyhow::Ok(())
    };
    untouched().await?;

    app = app.version("v2");
    release(&client, &app).await?;
    let step_load = LoadSpec::new(&url).host(&host).requests(500, 250.0);
    let (done, checked) = measure_steps(
        &api,
        "web",
        &step_load,
        "v2",
        &["Succeeded", "Failed"],
        &op,
        |_| untouched(),
    )
    .await?;
    assert_eq!(phase(&done), "Succeeded", "{done}\n{}", op.log_tail(40));
    assert_eq!(checked, BTreeSet::from([20, 50]), "both steps measured");
    for name in ["request-success-rate", "request-duration"] {
        let check = done["lastAnalysis"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == name);
        assert!(
            check.is_some_and(|c| c["verdict"] == "Pass" && c["value"].is_number()),
            "{name} measured on Traefik's series and passed: {done}"
        );
    }
    untouched().await?;
    wait_for(
        "all traffic on the promoted primary",
        Duration::from_secs(10),
        || async {
            let r = load::run(&LoadSpec::new(&url).host(&host).requests(100, 200.0)).await?;
            Ok((r.count("v2") == r.responses).then_some(()))
        },
    )
    .await?;
    drop(op);
    ns.cleanup().await?;
    Ok(())
}
