//! Issue #17 on the local Traefik 3.0.4: Serin knows what the data plane serves,
//! refuses what it cannot, encodes session affinity with what it has, and the app is
//! never taken dark. Every test sends steady load through the gateway for its whole
//! length and asserts that not one request went unanswered.

mod support;

use std::time::Duration;

use anyhow::{Context, Result, bail};
use kube::Client;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use serde_json::{Value, json};
use serin_e2e::canary::{canaries, phase, release, status, wait_phase, weight};
use serin_e2e::load::{self, LoadReport, LoadSpec};
use serin_e2e::operator::Operator;
use serin_e2e::{ClusterEnv, SampleApp, TestNamespace, apply_json, wait_for};

const COOKIE: &str = "flagger-cookie";

/// One test at a time: Traefik 3.0.4 drops a Gateway's whole configuration while any
/// route attached to it cannot load, so the forced rejection below would take every
/// other test's route through the shared gateway dark with it.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn http_routes(client: &Client, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        "httproutes",
    );
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// Steady load through the gateway for `secs`, in the background.
fn steady_load(url: &str, host: &str, secs: u64) -> tokio::task::JoinHandle<Result<LoadReport>> {
    let spec = LoadSpec::new(url)
        .host(host)
        .rate(40.0)
        .duration(Duration::from_secs(secs));
    tokio::spawn(async move { load::run(&spec).await })
}

/// The app-dark guard: never a 404 (a route the data plane dropped), and nothing
/// else unanswered outside one switch window. Pod rollovers on the 2-core simulator
/// can leave Traefik a moment on a withdrawn endpoint (a 502 or a timeout) while the
/// primary is updated; that is the window, routes are not.
fn assert_never_dark(what: &str, r: &LoadReport) {
    assert_eq!(
        r.by_status.get(&404).copied().unwrap_or(0),
        0,
        "{what}: the gateway answered 404: {:?}",
        r.dark_at
    );
    load::assert_not_dark(what, r, Duration::from_secs(3));
}

/// One answer through the gateway: (version, pod, the Set-Cookie value for `COOKIE`).
async fn ask(
    http: &reqwest::Client,
    url: &str,
    host: &str,
    cookie: Option<&str>,
) -> Result<(String, String, Option<String>)> {
    let mut req = http.get(url).header("Host", host);
    if let Some(c) = cookie {
        req = req.header("Cookie", c);
    }
    let resp = req.send().await?;
    let set = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{COOKIE}=")))
        .map(|v| v.split(';').next().unwrap_or("").to_string());
    let status = resp.status();
    let body: Value = resp.json().await.context("sample app answer")?;
    if !status.is_success() {
        bail!("{status}: {body}");
    }
    let field = |k: &str| {
        body.get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    Ok((field("version"), field("pod"), set))
}

/// A new client (no cookie) until one reaches `version` and gets the sticky cookie.
async fn canary_cookie(
    http: &reqwest::Client,
    url: &str,
    host: &str,
    version: &str,
) -> Result<String> {
    for _ in 0..200 {
        if let (v, _, Some(c)) = ask(http, url, host, None).await?
            && v == version
        {
            return Ok(c);
        }
    }
    bail!("no new client reached {version} in 200 tries")
}

/// Canary `web` on the Gateway with `analysis`; waits for Initialized and traffic.
async fn setup(
    env: &ClusterEnv,
    client: &Client,
    ns: &str,
    host: &str,
    analysis: Value,
    op: &Operator,
) -> Result<SampleApp> {
    let app = SampleApp::new(ns, "web", &env.sample_app_command()).replicas(2);
    app.deploy(client).await?;
    apply_json(
        client,
        json!({
            "apiVersion": "serin.dev/v1beta1", "kind": "Canary",
            "metadata": {"name": "web", "namespace": ns},
            "spec": {
                "provider": "gatewayapi:v1",
                "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "progressDeadlineSeconds": 60,
                "service": {
                    "port": 8080, "hosts": [host],
                    "gatewayRefs": [{"name": env.gateway_name, "namespace": env.gateway_namespace}]
                },
                "analysis": analysis
            }
        }),
    )
    .await?;
    wait_phase(
        &canaries(client, ns),
        "web",
        "Initialized",
        Duration::from_secs(60),
        op,
    )
    .await?;
    serin_e2e::wait_route_serves(
        &format!("{}/", env.gateway),
        host,
        &["v1"],
        Duration::from_secs(30),
    )
    .await?;
    Ok(app)
}

/// The scenario: session affinity with stepWeight 10 up to 50 through Traefik
/// 3.0.4. Serin encodes it as a sticky TraefikService (Traefik has no regex header
/// match); the release promotes, the steady load never sees a 404, a client that
/// reached the canary stays on it, and after promotion it lands on the new primary.
#[tokio::test]
async fn session_affinity_on_traefik_promotes_and_never_goes_dark() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("routes_affinity") else {
        return Ok(());
    };
    let _serial = SERIAL.lock().await;
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-aff").await?;
    let op = Operator::start(&env, &ns.name, &["--provider", "gatewayapi:v1"]).await?;
    let host = format!("{}.e2e.local", ns.name);
    let url = format!("{}/", env.gateway);
    let tester = support::serve_tester().await?;
    let analysis = json!({
        "interval": "8s", "threshold": 2, "stepWeight": 10, "maxWeight": 50,
        "sessionAffinity": {"cookieName": COOKIE, "maxAge": 600},
        "webhooks": [{"name": "kill-switch", "type": "rollback",
                      "url": format!("http://{tester}/rollback/check")}]
    });
    let app = setup(&env, &client, &ns.name, &host, analysis, &op).await?;
    let api = canaries(&client, &ns.name);

    let load = steady_load(&url, &host, 90);
    release(&client, &app.clone().version("v2")).await?;
    wait_for("weight 20", Duration::from_secs(60), || {
        let api = api.clone();
        async move {
            let s = status(&api, "web").await?;
            Ok((phase(&s) == "Progressing" && weight(&s) >= 20).then_some(()))
        }
    })
    .await?;
    // Traefik applies a change within ~2-3 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    // A new client reaches the canary at its weight; Traefik gives it the cookie.
    let cookie = canary_cookie(&http, &url, &host, "v2").await?;
    let mut on_canary = 0;
    for _ in 0..200 {
        if ask(&http, &url, &host, Some(&cookie)).await?.0 == "v2" {
            on_canary += 1;
        }
    }
    assert!(
        on_canary >= 198,
        "a client with the canary's cookie stayed on it for {on_canary}/200 requests"
    );
    // Clients without a cookie still split by weight (not all stuck on one side).
    let fresh = load::run(&LoadSpec::new(&url).host(&host).requests(200, 200.0)).await?;
    assert!(
        fresh.count("v1") > 0 && fresh.count("v2") > 0,
        "new clients split: {fresh:?}"
    );

    let done = wait_phase(&api, "web", "Succeeded", Duration::from_secs(120), &op).await?;
    assert_eq!(weight(&done), 0, "{done}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The canary left the split: the old cookie no longer names a backend, so the
    // client lands on the new primary and gets the primary's cookie instead.
    for _ in 0..20 {
        let (v, pod, set) = ask(&http, &url, &host, Some(&cookie)).await?;
        assert_eq!(v, "v2", "the new primary runs v2");
        assert!(pod.starts_with("web-primary-"), "answered by {pod}");
        if let Some(set) = set {
            assert_ne!(set, cookie, "the canary's cookie is replaced");
        }
    }
    let report = load.await??;
    assert_never_dark("steady load during the affinity release", &report);
    assert!(
        report.count("v2") > 0,
        "the canary took traffic: {report:?}"
    );

    // A rolled-back release: a client stuck on the canary lands on the primary.
    let load = steady_load(&url, &host, 60);
    release(&client, &app.clone().version("v3")).await?;
    wait_for("v3 at weight 20", Duration::from_secs(60), || {
        let api = api.clone();
        async move {
            let s = status(&api, "web").await?;
            Ok((phase(&s) == "Progressing" && weight(&s) >= 20).then_some(()))
        }
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cookie = canary_cookie(&http, &url, &host, "v3").await?;
    reqwest::Client::new()
        .post(format!("http://{tester}/rollback/open"))
        .json(&json!({"name": "web", "namespace": ns.name}))
        .send()
        .await?
        .error_for_status()?;
    wait_phase(&api, "web", "Failed", Duration::from_secs(60), &op).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for _ in 0..20 {
        let (v, pod, _) = ask(&http, &url, &host, Some(&cookie)).await?;
        assert_eq!(v, "v2", "after the rollback the client is on the primary");
        assert!(pod.starts_with("web-primary-"), "answered by {pod}");
    }
    let report = load.await??;
    assert_never_dark("steady load during the rolled-back release", &report);
    drop(op);
    ns.cleanup().await?;
    Ok(())
}

/// Asking Traefik 3.0 for a regex header match (A/B on a header regex) is refused
/// before anything is written: Ready=False and an Event name the feature and the
/// implementation, the route is left exactly as it was, and the app keeps serving.
#[tokio::test]
async fn unsupported_feature_is_refused_and_the_app_keeps_serving() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("routes_refuse") else {
        return Ok(());
    };
    let _serial = SERIAL.lock().await;
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-refuse").await?;
    let op = Operator::start(&env, &ns.name, &["--provider", "gatewayapi:v1"]).await?;
    let host = format!("{}.e2e.local", ns.name);
    let url = format!("{}/", env.gateway);
    let analysis = json!({"interval": "8s", "threshold": 2, "stepWeights": [20, 50]});
    let app = setup(&env, &client, &ns.name, &host, analysis, &op).await?;
    let api = canaries(&client, &ns.name);
    let routes = http_routes(&client, &ns.name);
    let before = routes.get("web").await?.data["spec"].clone();

    let load = steady_load(&url, &host, 25);
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"analysis": {
            "stepWeights": null, "iterations": 2,
            "match": [{"headers": {"x-user": {"regex": "^beta-.*"}}}]
        }}})),
    )
    .await?;
    release(&client, &app.clone().version("v2")).await?;
    let ready = wait_for(
        "Ready=False UnsupportedFeature",
        Duration::from_secs(30),
        || {
            let api = api.clone();
            async move {
                let s = status(&api, "web").await?;
                let c = s["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|c| c["type"] == "Ready" && c["reason"] == "UnsupportedFeature")
                    .cloned();
                Ok(c)
            }
        },
    )
    .await?;
    let msg = ready["message"].as_str().unwrap_or("").to_string();
    for part in ["HTTPRouteHeaderRegexMatch", "analysis.match", "Traefik 3.0"] {
        assert!(msg.contains(part), "{part} missing from {msg:?}");
    }
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), &ns.name);
    let ev = wait_for("UnsupportedFeature Event", Duration::from_secs(15), || {
        let events = events.clone();
        async move {
            Ok(events
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("UnsupportedFeature")))
        }
    })
    .await?;
    assert!(
        ev.message
            .unwrap_or_default()
            .contains("HTTPRouteHeaderRegexMatch"),
        "event names the feature"
    );
    // Several reconciles later nothing was written and no release started.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        routes.get("web").await?.data["spec"],
        before,
        "route untouched"
    );
    let s = status(&api, "web").await?;
    assert_eq!(weight(&s), 0, "{s}");
    let report = load.await??;
    assert_never_dark("steady load while refused", &report);
    assert_eq!(
        report.count("v1"),
        report.responses,
        "primary serves: {report:?}"
    );
    drop(op);
    ns.cleanup().await?;
    Ok(())
}

/// A route write the data plane rejects, forced: the operator is told (by the
/// `--gateway-features` override) that Traefik serves regex header matches, so the
/// session-affinity route it writes is one Traefik drops. The probe through the
/// gateway sees the 404s, the last confirmed route is restored within the bound, the
/// release fails with the reason, and the load loses no more than that window.
#[tokio::test]
async fn a_rejected_route_is_reverted_within_the_bound() -> Result<()> {
    let Some(env) = ClusterEnv::for_test("routes_revert") else {
        return Ok(());
    };
    let _serial = SERIAL.lock().await;
    let client = env.client().await?;
    let ns = TestNamespace::create(&client, "e2e-revert").await?;
    let lie = "traefik.io/gateway-controller=HTTPRouteHeaderRegexMatch,\
               HTTPRouteBackendResponseHeaderModification,\
               HTTPRouteRequestHeaderModification,TraefikServiceBackendRef";
    let bound = Duration::from_secs(10);
    let op = Operator::start(
        &env,
        &ns.name,
        &[
            "--provider",
            "gatewayapi:v1",
            "--gateway-features",
            lie,
            "--gateway-probe-url",
            &env.gateway,
            "--route-confirm-seconds",
            "10",
        ],
    )
    .await?;
    let host = format!("{}.e2e.local", ns.name);
    let url = format!("{}/", env.gateway);
    let analysis = json!({"interval": "8s", "threshold": 2, "stepWeights": [20, 50]});
    let app = setup(&env, &client, &ns.name, &host, analysis, &op).await?;
    let api = canaries(&client, &ns.name);
    let routes = http_routes(&client, &ns.name);
    // The plain route was confirmed through the gateway and recorded.
    let confirmed = wait_for("confirmed route", Duration::from_secs(20), || {
        let routes = routes.clone();
        async move {
            let r = routes.get("web").await?;
            Ok(r.metadata
                .annotations
                .and_then(|a| a.get("serin.dev/confirmed-spec").cloned()))
        }
    })
    .await?;
    let confirmed: Value = serde_json::from_str(&confirmed)?;
    assert_eq!(confirmed, routes.get("web").await?.data["spec"]);

    let load = steady_load(&url, &host, 45);
    tokio::time::sleep(Duration::from_secs(2)).await;
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"analysis": {
            "sessionAffinity": {"cookieName": COOKIE}
        }}})),
    )
    .await?;
    release(&client, &app.clone().version("v2")).await?;
    let failed = wait_phase(&api, "web", "Failed", Duration::from_secs(60), &op).await?;
    let msg = failed["routerMessage"].as_str().unwrap_or("").to_string();
    assert!(
        msg.contains("not confirmed within 10s") && msg.contains("restored"),
        "{failed}"
    );
    // The route is exactly the last confirmed one again (or the primary-only route
    // the rollback wrote with the features confirmed before).
    let now = routes.get("web").await?.data["spec"].clone();
    let regex = now.to_string().contains("RegularExpression");
    assert!(!regex, "no rejected rule left: {now}");
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), &ns.name);
    let failed_ev = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .find(|e| e.reason.as_deref() == Some("Failed"))
        .context("a Failed event")?;
    assert!(
        failed_ev
            .message
            .unwrap_or_default()
            .contains("not confirmed"),
        "the event (and alert) say why"
    );
    let report = load.await??;
    // The app went dark only while Traefik held the rejected route: from its apply to
    // the restore's apply, within the bound plus Traefik's apply time.
    let first = report.dark_at.iter().map(|d| d.0).fold(f64::MAX, f64::min);
    let last = report.dark_at.iter().map(|d| d.0).fold(0.0, f64::max);
    assert!(
        last - first <= bound.as_secs_f64() + 3.0,
        "dark for {:.1}s (bound {bound:?}): {:?}",
        last - first,
        report.dark_at
    );
    assert!(
        report.dark() > 0,
        "the forced rejection took the route down for a while: {report:?}"
    );
    // After the window the primary serves everything again.
    let after = load::run(&LoadSpec::new(&url).host(&host).requests(100, 100.0)).await?;
    assert_never_dark("after the revert", &after);
    drop(op);
    ns.cleanup().await?;
    Ok(())
}
